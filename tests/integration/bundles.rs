//! The committed demo bundles match their manifests (every file's size and
//! sha256), ship the parity fixtures of their kind, and a damaged bundle is
//! rejected naming the file.

use std::path::Path;

use croco::model::bundle::{Bundle, BundleKind, Verify};

use crate::util::repo;

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() { copy_dir(&path, &target) } else { std::fs::copy(&path, &target).map(|_| ()).unwrap() }
    }
}

#[test]
fn committed_bundles_match_their_checksums_and_ship_parity_fixtures() {
    for (name, kind) in [("policy", BundleKind::Policy), ("reward", BundleKind::Reward)] {
        let bundle =
            Bundle::open(&repo().join("data/models").join(name), Verify::Checksums).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bundle.manifest.kind, kind);
        for fixture in kind.required_fixtures() {
            let path = bundle.file(&format!("{}/{fixture}", bundle.manifest.parity.dir));
            let parsed: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            assert!(parsed.is_object(), "{} is a JSON object", path.display());
        }
    }
}

#[test]
fn the_checksums_file_lists_the_manifest_digests() {
    let listing = std::fs::read_to_string(repo().join("data/models/checksums")).unwrap();
    for name in ["policy", "reward"] {
        let bundle = Bundle::open(&repo().join("data/models").join(name), Verify::Sizes).unwrap();
        assert!(listing.contains(&format!("{}  {name}/croco-model.toml", bundle.checksum)), "{name}");
        for (file, entry) in &bundle.manifest.files {
            assert!(listing.contains(&format!("{}  {name}/{file}", entry.sha256)), "{name}/{file}");
        }
    }
}

#[test]
fn a_damaged_bundle_is_rejected_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("reward");
    copy_dir(&repo().join("data/models/reward"), &copy);

    let tokenizer = copy.join("tokenizer.json");
    let mut bytes = std::fs::read(&tokenizer).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&tokenizer, &bytes).unwrap();
    assert!(Bundle::open(&copy, Verify::Sizes).is_ok(), "a flipped bit keeps the size");
    let error = Bundle::open(&copy, Verify::Checksums).unwrap_err().to_string();
    assert!(error.contains("`tokenizer.json` has sha256"), "{error}");

    std::fs::remove_file(copy.join("score.float32.onnx")).unwrap();
    let error = Bundle::open(&copy, Verify::Sizes).unwrap_err().to_string();
    assert!(error.contains("score.float32.onnx") && error.contains("No such file"), "{error}");

    let manifest = copy.join("croco-model.toml");
    let text = std::fs::read_to_string(&manifest).unwrap().replace("graphs.score", "graphs.scorer");
    std::fs::write(&manifest, text).unwrap();
    let error = Bundle::open(&copy, Verify::Sizes).unwrap_err().to_string();
    assert!(error.contains("needs the `score` graph"), "{error}");
}
