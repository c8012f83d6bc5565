//! Models: croco bundles (`docs/bundle-format.md`) and, on top of them, the
//! ONNX Runtime sessions that generate, score and compute log-probs.

pub mod batching;
pub mod bundle;
pub mod continuous;
pub mod decode_attention;
pub mod device_sampler;
pub mod dpo;
pub mod generation;
pub mod graph;
pub mod kv;
pub mod layerwise;
pub mod lora;
pub mod memory;
pub mod onnx_proto;
pub mod optim;
pub mod policy;
pub mod precision;
pub mod reward;
pub mod runtime;
pub mod sampling;
pub mod tensors;
pub mod tokenizer;
pub mod values;
pub mod weights;

use std::path::PathBuf;

/// A [`ModelError::Tensor`] about the tensor `context` names.
pub fn tensor_error(context: &str, source: ort::Error) -> ModelError {
    ModelError::Tensor { context: context.into(), source }
}

/// Errors at the model boundary. Each names the bundle file or key concerned.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A bundle file could not be read.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The manifest is not valid TOML of the bundle format.
    #[error("{}: {source}", path.display())]
    Manifest { path: PathBuf, source: toml::de::Error },
    /// Tokenizing or detokenizing failed.
    #[error("tokenizer: {source}")]
    Tokenizer { source: tokenizers::Error },
    /// The tokenizer does not fit the bundle's chat template.
    #[error("tokenizer: {0}")]
    Template(String),
    /// ONNX Runtime could not be found or started. The reason is a message:
    /// it is found once per process and reported to every caller.
    #[error("ONNX Runtime: {0}")]
    Unavailable(String),
    /// A tensor could not be handed to ONNX Runtime or read from its outputs.
    #[error("ONNX Runtime: {context}: {source}")]
    Tensor { context: String, source: ort::Error },
    /// A graph has no output of that name.
    #[error("{graph} graph: no output `{output}`")]
    MissingOutput { graph: String, output: String },
    /// A graph file could not be rewritten for its session.
    #[error("{}: {source}", path.display())]
    Graph { path: PathBuf, source: onnx_proto::ProtoError },
    /// A session could not be built or run.
    #[error("{}: {source}", path.display())]
    Session { path: PathBuf, source: ort::Error },
    /// A tensor of a safetensors file is not float32.
    #[error("tensor `{tensor}` is {dtype}, expected float32")]
    NotFloat32 { tensor: String, dtype: String },
    /// A safetensors file could not be read or written.
    #[error("safetensors: {context}: {source}")]
    Safetensors { context: String, source: safetensors::SafeTensorError },
    /// A JSON file of the bundle or an adapter could not be written.
    #[error("{context}: {source}")]
    Json { context: String, source: serde_json::Error },
    /// The bundle is readable but does not hold together.
    #[error("bundle {}: {problem}", dir.display())]
    Invalid { dir: PathBuf, problem: String },
}
