//! Models: croco bundles (`docs/bundle-format.md`) and, on top of them, the
//! ONNX Runtime sessions that generate, score and compute log-probs.

pub mod bundle;
pub mod dpo;
pub mod graph;
pub mod lora;
pub mod optim;
pub mod policy;
pub mod reward;
pub mod runtime;
pub mod sampling;
pub mod tokenizer;
pub mod weights;

use std::path::PathBuf;

/// Errors at the model boundary. Each names the bundle file or key concerned.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A bundle file could not be read.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The manifest is not valid TOML of the bundle format.
    #[error("{}: {message}", path.display())]
    Manifest { path: PathBuf, message: String },
    /// Tokenizing or detokenizing failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// ONNX Runtime could not be found or started.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// A session could not be built or run.
    #[error("{}: {message}", path.display())]
    Session { path: PathBuf, message: String },
    /// The bundle is readable but does not hold together.
    #[error("bundle {}: {problem}", dir.display())]
    Invalid { dir: PathBuf, problem: String },
}
