//! Manifests: the commit record of a table version.
//!
//! Commit protocol: a stage writes all its Parquet parts first, then one
//! `_manifest.json` in the version directory with a single atomic put. A
//! version exists for readers iff its manifest exists, and readers only read
//! the parts the manifest lists, so a crash at any point leaves either the old
//! state or the new one, plus unlisted parts that nothing reads.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::StoreError;
use super::schema::Table;
use super::storage::Storage;
use super::tables::{ArtifactInfo, PartInfo, version_dir};

/// Stage-specific counts recorded in the manifest (dropped rows, pools, ...).
pub type Stats = serde_json::Map<String, serde_json::Value>;

/// File name of the manifest inside a version directory.
pub const MANIFEST_FILE: &str = "_manifest.json";

/// An input file a stage read from outside the storage root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalInput {
    /// Pipeline key that names the file (`stages.prompts.source`).
    pub key: String,
    /// Where it was read from.
    pub url: String,
    /// Content fingerprint: `sha256:<hex>` of local files, `etag:`/`meta:` of remote objects.
    pub fingerprint: String,
}

/// The record of one committed table version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Table name.
    pub table: String,
    /// Content key of the version.
    pub key: String,
    /// Stage that wrote it.
    pub stage: String,
    /// Version of the table schema it conforms to.
    pub schema_version: u32,
    /// Resolved parameters of the stage.
    pub params: serde_json::Value,
    /// Keys of the table versions it was computed from.
    pub inputs: BTreeMap<String, String>,
    /// Files read from outside the root.
    pub external: Vec<ExternalInput>,
    /// Model bundles used, by role: the sha256 of each bundle's manifest.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// Committed Parquet parts.
    pub parts: Vec<PartInfo>,
    /// Files committed besides the parts (the tune stage's adapter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactInfo>,
    /// Total rows.
    pub rows: u64,
    /// Stage-specific counts (dropped rows, pools, ...).
    pub stats: Stats,
    /// Name of the run that wrote it.
    pub run: String,
    /// When the stage started (RFC 3339, UTC).
    pub started_at: String,
    /// When the manifest was written (RFC 3339, UTC).
    pub committed_at: String,
    /// croco version that wrote it.
    pub croco_version: String,
}

fn manifest_path(storage: &Storage, table: Table, key: &str) -> object_store::path::Path {
    storage.path(&format!("{}/{MANIFEST_FILE}", version_dir(table, key)))
}

/// Reads the manifest of version `key` of `table`; `Ok(None)` if not committed.
pub async fn read(storage: &Storage, table: Table, key: &str) -> Result<Option<Manifest>, StoreError> {
    let path = manifest_path(storage, table, key);
    let Some(bytes) = storage.get_if_exists(&path).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|source| StoreError::Json { url: storage.url_of(&path), source })
}

/// Commits `manifest`: one atomic put, after all its parts are written.
pub async fn commit(storage: &Storage, manifest: &Manifest) -> Result<(), StoreError> {
    let table = Table::from_name(&manifest.table).expect("manifests are written for known tables");
    let path = manifest_path(storage, table, &manifest.key);
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|source| StoreError::Json { url: storage.url_of(&path), source })?;
    storage.put(&path, Bytes::from(json)).await
}

/// Every committed version of `table`, oldest first.
pub async fn list_versions(storage: &Storage, table: Table) -> Result<Vec<Manifest>, StoreError> {
    let objects = storage.list(&storage.path(&format!("tables/{}", table.name()))).await?;
    let mut manifests = Vec::new();
    for object in objects.iter().filter(|o| o.location.filename() == Some(MANIFEST_FILE)) {
        let bytes = storage.get_if_exists(&object.location).await?;
        if let Some(bytes) = bytes {
            let manifest: Manifest = serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::Json { url: storage.url_of(&object.location), source })?;
            manifests.push(manifest);
        }
    }
    manifests.sort_by(|a, b| a.committed_at.cmp(&b.committed_at));
    Ok(manifests)
}
