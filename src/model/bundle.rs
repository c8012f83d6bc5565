//! Reading and verifying a model bundle: one directory with a manifest
//! (`croco-model.toml`), a tokenizer, a safetensors weight file, ONNX graphs
//! and parity fixtures. The format is specified in `docs/bundle-format.md`;
//! `tools/export` writes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ModelError;
use super::precision::Precision;
use super::runtime::Target;
use crate::ids::sha256_hex;

/// File name of the manifest inside a bundle.
pub const MANIFEST_FILE: &str = "croco-model.toml";
/// The only `format` value of a bundle manifest.
const FORMAT: &str = "croco-model";
/// The `format_version` this build reads.
const FORMAT_VERSION: u32 = 2;

/// What a bundle is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleKind {
    /// A causal LM that generates and is tuned.
    Policy,
    /// A sequence classifier that scores (prompt, response).
    Reward,
}

impl std::fmt::Display for BundleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BundleKind::Policy => "policy",
            BundleKind::Reward => "reward",
        })
    }
}

impl BundleKind {
    /// Graphs a bundle of this kind must have.
    pub fn required_graphs(self) -> &'static [&'static str] {
        match self {
            BundleKind::Policy => &["decode", "logprob"],
            BundleKind::Reward => &["score"],
        }
    }

    /// Parity fixtures a bundle of this kind must ship (in its parity dir).
    pub fn required_fixtures(self) -> &'static [&'static str] {
        match self {
            BundleKind::Policy => &["tokenizer.json", "greedy.json", "logprob.json"],
            BundleKind::Reward => &["tokenizer.json", "score.json"],
        }
    }
}

/// `[architecture]`: the transformer's numbers.
#[derive(Debug, Clone, Deserialize)]
pub struct Architecture {
    /// Hugging Face `model_type`.
    pub family: String,
    /// Vocabulary size (last dim of `logits`).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Longest configured context.
    pub max_position_embeddings: usize,
}

/// `[tokenizer]`: special token ids.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizerSpec {
    /// The tokenizer file, relative to the bundle.
    pub file: String,
    /// End-of-sequence id.
    pub eos_token_id: i64,
    /// Padding id.
    pub pad_token_id: i64,
    /// Generation stops after any of these.
    pub stop_token_ids: Vec<i64>,
    /// Every special token and its id.
    pub special_tokens: BTreeMap<String, i64>,
}

/// `[chat]`: how a prompt and a response become text.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatSpec {
    /// The whole exchange, with `{prompt}` and `{response}`.
    pub template: String,
    /// `template` cut before `{response}`.
    pub prompt_template: String,
    /// Whether the tokenizer adds special tokens itself.
    pub add_special_tokens: bool,
}

/// One tensor of `[weights]`.
#[derive(Debug, Clone, Deserialize)]
pub struct TensorSpec {
    /// State-dict name.
    pub name: String,
    /// Element type.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
}

/// `[weights]`.
#[derive(Debug, Clone, Deserialize)]
pub struct WeightsSpec {
    /// The safetensors file.
    pub file: String,
    /// Element type of every tensor: `float32`, `bfloat16` or `float16`, as
    /// the checkpoint shipped it.
    pub dtype: String,
    /// Tensors in graph-input order.
    pub tensors: Vec<TensorSpec>,
}

/// One input or output of a graph.
#[derive(Debug, Clone, Deserialize)]
pub struct IoSpec {
    /// Name in the ONNX graph.
    pub name: String,
    /// Element type.
    pub dtype: String,
}

/// `[graphs.<name>]`: one graph, in one `.onnx` file per precision it
/// computes in; every variant has the same inputs and outputs (a dtype
/// `compute` is the variant's precision).
#[derive(Debug, Clone, Deserialize)]
pub struct GraphSpec {
    /// The `.onnx` file of each precision (`float32`, `bfloat16`, `float16`).
    pub files: BTreeMap<String, String>,
    /// Data inputs, in graph order (weight inputs follow).
    pub inputs: Vec<IoSpec>,
    /// Outputs, in graph order.
    pub outputs: Vec<IoSpec>,
    /// The weights bound as inputs after the data inputs: `"all"` (every
    /// tensor of `[weights]`, in manifest order) or their names, in graph
    /// order (none for the training graphs, whose layer weights are data
    /// inputs under generic names, bound per layer).
    #[serde(default = "all_weights")]
    pub weight_inputs: WeightInputs,
    /// The layer training graphs: how many chunks they cut the sequence
    /// into (one layer's working set is about `1 / sequence_chunks` of the
    /// sequence's); absent (one) in exports before chunking.
    #[serde(default)]
    pub sequence_chunks: Option<u32>,
}

/// `weight_inputs` of a graph.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum WeightInputs {
    /// `"all"`.
    All(String),
    /// The names, in graph order.
    Named(Vec<String>),
}

fn all_weights() -> WeightInputs {
    WeightInputs::All("all".into())
}

impl WeightInputs {
    /// Whether the graph takes weight `name` (bound once).
    pub fn includes(&self, name: &str) -> bool {
        match self {
            WeightInputs::All(_) => true,
            WeightInputs::Named(names) => names.iter().any(|n| n == name),
        }
    }
}

impl GraphSpec {
    /// The variant `target` runs and its file, if the graph has one.
    pub fn variant_for(&self, target: Target) -> Option<(Precision, &str)> {
        let precision = Precision::for_target(target, self.files.keys().map(String::as_str))?;
        Some((precision, self.files[precision.name()].as_str()))
    }
}

/// `[parity]`.
#[derive(Debug, Clone, Deserialize)]
pub struct ParitySpec {
    /// Directory of the fixtures, relative to the bundle.
    pub dir: String,
    /// Absolute tolerance the fixtures hold to.
    pub atol: f64,
}

/// One entry of `[files]`.
#[derive(Debug, Clone, Deserialize)]
pub struct FileEntry {
    /// Hex sha256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// `[lora]`: which weights LoRA adapters may target.
#[derive(Debug, Clone, Deserialize)]
pub struct LoraSpec {
    /// Module names (`q_proj`, ...).
    pub target_modules: Vec<String>,
    /// The weight names those modules cover.
    pub target_weights: Vec<String>,
}

/// A parsed `croco-model.toml`.
#[derive(Debug, Clone, Deserialize)]
pub struct BundleManifest {
    /// Always `croco-model`.
    pub format: String,
    /// Format version.
    pub format_version: u32,
    /// Policy or reward.
    pub kind: BundleKind,
    /// Free-form name.
    pub name: String,
    /// The transformer's numbers.
    pub architecture: Architecture,
    /// Tokenizer file and special ids.
    pub tokenizer: TokenizerSpec,
    /// Chat template.
    pub chat: ChatSpec,
    /// Weight file and tensors.
    pub weights: WeightsSpec,
    /// LoRA targets (policies).
    #[serde(default)]
    pub lora: Option<LoraSpec>,
    /// Graphs by name.
    pub graphs: BTreeMap<String, GraphSpec>,
    /// Parity fixtures.
    pub parity: ParitySpec,
    /// Every file except the manifest, with its checksum.
    pub files: BTreeMap<String, FileEntry>,
}

/// How thoroughly [`Bundle::open`] checks the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The manifest alone, no file looked at (what validation reads: the
    /// plan opens the bundle again with `Sizes`).
    Manifest,
    /// Sizes only (cheap; every load).
    Sizes,
    /// Sizes and sha256 of every file.
    Checksums,
}

/// An opened, verified bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: BundleManifest,
    /// sha256 of the manifest file: the bundle's identity, since the manifest
    /// holds the checksum of every other file.
    pub checksum: String,
}

impl Bundle {
    /// Reads the manifest of the bundle in `dir` and verifies the bundle:
    /// format, the graphs and fixtures its kind needs, every listed file.
    pub fn open(dir: &Path, verify: Verify) -> Result<Bundle, ModelError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        let manifest: BundleManifest =
            toml::from_slice(&text).map_err(|source| ModelError::Manifest { path: path.clone(), source })?;
        let bundle = Bundle { dir: dir.to_path_buf(), manifest, checksum: sha256_hex(&text) };
        bundle.check_format()?;
        if verify != Verify::Manifest {
            bundle.check_files(verify)?;
        }
        Ok(bundle)
    }

    fn invalid(&self, problem: impl Into<String>) -> ModelError {
        ModelError::Invalid { dir: self.dir.clone(), problem: problem.into() }
    }

    fn check_format(&self) -> Result<(), ModelError> {
        let m = &self.manifest;
        if m.format != FORMAT {
            return Err(self.invalid(format!("`format` is `{}`, expected `{FORMAT}`", m.format)));
        }
        if m.format_version > FORMAT_VERSION {
            return Err(self.invalid(format!(
                "`format_version` {} is newer than this croco reads ({FORMAT_VERSION})",
                m.format_version
            )));
        }
        if m.format_version < FORMAT_VERSION {
            return Err(self.invalid(format!(
                "`format_version` {} is no longer read (its float32-only graphs copy the KV cache every step); \
                 re-export it from the same weights with `python -m tools.export rebundle {} --out NEW_DIR`, or \
                 from its checkpoint (tools/export/README.md)",
                m.format_version,
                self.dir.display()
            )));
        }
        for graph in m.kind.required_graphs() {
            if !m.graphs.contains_key(*graph) {
                return Err(self.invalid(format!("a {} bundle needs the `{graph}` graph ([graphs.{graph}])", m.kind)));
            }
        }
        self.check_weight_dtypes()?;
        self.check_token_ids()?;
        let listed = |file: &str| m.files.contains_key(file);
        let needed = [m.tokenizer.file.clone(), m.weights.file.clone()]
            .into_iter()
            .chain(m.graphs.values().flat_map(|g| g.files.values().cloned()))
            .chain(m.kind.required_fixtures().iter().map(|f| format!("{}/{f}", m.parity.dir)));
        for file in needed {
            if !listed(&file) {
                return Err(self.invalid(format!("`{file}` is not listed in [files]")));
            }
        }
        Ok(())
    }

    /// The weights are one of the three precisions, every tensor in it, and
    /// every graph file names a known precision.
    fn check_weight_dtypes(&self) -> Result<(), ModelError> {
        let weights = &self.manifest.weights;
        let Some(precision) = Precision::parse(&weights.dtype) else {
            return Err(
                self.invalid(format!("`weights.dtype` is `{}`: expected float32, bfloat16 or float16", weights.dtype))
            );
        };
        if let Some(odd) = weights.tensors.iter().find(|t| t.dtype != precision.name()) {
            return Err(self.invalid(format!(
                "tensor `{}` is `{}`, but `weights.dtype` is `{precision}`: one dtype for every tensor",
                odd.name, odd.dtype
            )));
        }
        for (name, graph) in &self.manifest.graphs {
            if let Some(odd) = graph.files.keys().find(|p| Precision::parse(p).is_none()) {
                return Err(self.invalid(format!("`graphs.{name}.files` has a variant `{odd}`: not a precision")));
            }
        }
        Ok(())
    }

    /// The precision the weights are stored in.
    pub fn weight_precision(&self) -> Precision {
        Precision::parse(&self.manifest.weights.dtype).expect("checked when the bundle was opened")
    }

    /// The precision of graph `name`'s variant for `target`, or an error
    /// naming what the bundle lacks.
    pub fn precision_for(&self, name: &str, target: Target) -> Result<Precision, ModelError> {
        let graph = self.graph(name)?;
        graph.variant_for(target).map(|(precision, _)| precision).ok_or_else(|| {
            self.invalid(format!(
                "graph `{name}` has no variant for {target:?} (it has {:?}); re-export the bundle",
                graph.files.keys().collect::<Vec<_>>()
            ))
        })
    }

    /// Graph `name`'s spec, or an error naming the missing `[graphs.NAME]`.
    pub fn graph(&self, name: &str) -> Result<&GraphSpec, ModelError> {
        self.manifest.graphs.get(name).ok_or_else(|| self.invalid(format!("no `{name}` graph ([graphs.{name}])")))
    }

    /// Every token id `[tokenizer]` names is inside the vocabulary.
    fn check_token_ids(&self) -> Result<(), ModelError> {
        let t = &self.manifest.tokenizer;
        let vocab = self.manifest.architecture.vocab_size as i64;
        let named = [("eos_token_id", t.eos_token_id), ("pad_token_id", t.pad_token_id)]
            .into_iter()
            .map(|(key, id)| (format!("tokenizer.{key}"), id))
            .chain(t.stop_token_ids.iter().map(|&id| ("tokenizer.stop_token_ids".to_string(), id)))
            .chain(t.special_tokens.iter().map(|(token, &id)| (format!("tokenizer.special_tokens.{token:?}"), id)));
        for (key, id) in named {
            if !(0..vocab).contains(&id) {
                return Err(self.invalid(format!(
                    "`{key}` holds token id {id}, outside the vocabulary (architecture.vocab_size = {vocab})"
                )));
            }
        }
        Ok(())
    }

    fn check_files(&self, verify: Verify) -> Result<(), ModelError> {
        for (name, entry) in &self.manifest.files {
            let path = self.dir.join(name);
            let found = std::fs::metadata(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
            if found.len() != entry.bytes {
                return Err(self.invalid(format!(
                    "`{name}` has {} bytes, the manifest says {}",
                    found.len(),
                    entry.bytes
                )));
            }
            if verify == Verify::Checksums {
                let bytes = std::fs::read(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
                let actual = sha256_hex(&bytes);
                if actual != entry.sha256 {
                    return Err(
                        self.invalid(format!("`{name}` has sha256 {actual}, the manifest says {}", entry.sha256))
                    );
                }
            }
        }
        Ok(())
    }

    /// Checks that this bundle is of `kind` (a reward bundle given as the
    /// policy is a configuration mistake worth naming).
    pub fn expect_kind(&self, kind: BundleKind) -> Result<(), ModelError> {
        if self.manifest.kind == kind {
            return Ok(());
        }
        Err(self.invalid(format!("is a {} bundle, a {kind} bundle is needed", self.manifest.kind)))
    }

    /// Path of a file of the bundle.
    pub fn file(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }
}
