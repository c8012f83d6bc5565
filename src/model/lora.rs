//! LoRA adapters in the PEFT format, and merging them into a bundle's weights.
//!
//! An adapter holds, for each adapted linear layer `W [out, in]` of the
//! policy, `A [r, in]` and `B [out, r]`; the adapted layer computes
//! `x Wᵀ + (α / r) · x Aᵀ Bᵀ`. Files are PEFT's: `adapter_model.safetensors`
//! with keys `base_model.model.<module path>.lora_A.weight` / `lora_B.weight`
//! and `adapter_config.json`, so `peft.PeftModel.from_pretrained` loads what
//! croco writes and croco loads what PEFT writes.
//!
//! Every module the bundle's training graph can adapt is present in memory
//! (the graph takes all of them, with one shared rank); modules the user did
//! not target stay exactly zero, are never updated and are not written.

use std::collections::BTreeMap;

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::ModelError;
use super::bundle::Bundle;
use super::tensors::{f32_values, safetensors_bytes};
use crate::ids::sha256_hex;

/// File name of the tensors in a PEFT adapter directory.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// File name of the configuration in a PEFT adapter directory.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The directory of the tuned adapter among a `train_log` version's
/// artifacts (a PEFT directory: [`ADAPTER_WEIGHTS`] and [`ADAPTER_CONFIG`]).
pub const ADAPTER_DIR: &str = "adapter";

/// The adapter settings, as PEFT's `adapter_config.json` spells them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Rank r.
    pub r: usize,
    /// α (the update is scaled by α / r).
    pub lora_alpha: f64,
    /// Dropout on the adapter's input while training.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Module names (`q_proj`, ...) that carry an adapter.
    pub target_modules: Vec<String>,
    /// Always `LORA`.
    #[serde(default = "lora")]
    pub peft_type: String,
    /// Always `CAUSAL_LM`.
    #[serde(default = "causal_lm")]
    pub task_type: String,
    /// Biases are not adapted.
    #[serde(default = "none")]
    pub bias: String,
    /// The base model (the bundle's name).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// rsLoRA scaling (α / √r) is not supported; kept so PEFT files round-trip.
    #[serde(default)]
    pub use_rslora: bool,
}

fn lora() -> String {
    "LORA".into()
}

fn causal_lm() -> String {
    "CAUSAL_LM".into()
}

fn none() -> String {
    "none".into()
}

/// One adapted linear layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraModule {
    /// The base weight it adapts, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub weight: String,
    /// Rows of the base weight.
    pub out_features: usize,
    /// Columns of the base weight.
    pub in_features: usize,
    /// `A`, row-major `[r, in]`.
    pub a: Vec<f32>,
    /// `B`, row-major `[out, r]`.
    pub b: Vec<f32>,
    /// Whether the user targeted this module (untargeted ones stay zero).
    pub trainable: bool,
}

impl LoraModule {
    /// The PEFT key of `A` (`lora_A`) or `B` (`lora_B`).
    pub fn key(&self, part: &str) -> String {
        format!("base_model.model.{}.{part}.weight", self.weight.trim_end_matches(".weight"))
    }

    /// The module name (`q_proj`, ...).
    pub fn module(&self) -> &str {
        self.weight.trim_end_matches(".weight").rsplit('.').next().unwrap_or_default()
    }
}

/// A LoRA adapter over every adaptable module of a policy bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    /// Its settings.
    pub config: AdapterConfig,
    /// One entry per adaptable weight, in the bundle's `[lora].target_weights` order.
    pub modules: Vec<LoraModule>,
}

impl Adapter {
    /// A fresh adapter, initialised as PEFT does: `A` Kaiming-uniform
    /// (bound 1/√in), `B` zero, so the adapted model starts equal to the base.
    pub fn init(bundle: &Bundle, config: AdapterConfig, seed: u64) -> Result<Adapter, ModelError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut modules = adaptable(bundle, &config)?;
        for module in modules.iter_mut().filter(|m| m.trainable) {
            let bound = 1.0 / (module.in_features as f32).sqrt();
            module.a.iter_mut().for_each(|v| *v = rng.random_range(-bound..bound));
        }
        Ok(Adapter { config, modules })
    }

    /// α / r.
    pub fn scale(&self) -> f32 {
        (self.config.lora_alpha / self.config.r as f64) as f32
    }

    /// Reads a PEFT adapter for `bundle` from its two files' bytes.
    pub fn from_peft(bundle: &Bundle, weights: &[u8], config: &[u8]) -> Result<Adapter, ModelError> {
        let invalid = |problem: String| ModelError::Invalid { dir: bundle.dir.clone(), problem };
        let config: AdapterConfig = serde_json::from_slice(config)
            .map_err(|e| invalid(format!("adapter: `{ADAPTER_CONFIG}` is not a PEFT LoRA config: {e}")))?;
        if config.peft_type != "LORA" || config.use_rslora {
            return Err(invalid(format!(
                "adapter: `{ADAPTER_CONFIG}` has peft_type {:?}, use_rslora {}; croco reads plain LoRA",
                config.peft_type, config.use_rslora
            )));
        }
        let file =
            SafeTensors::deserialize(weights).map_err(|e| invalid(format!("adapter: `{ADAPTER_WEIGHTS}`: {e}")))?;
        let mut modules = adaptable(bundle, &config)?;
        let mut expected = 0;
        for module in modules.iter_mut().filter(|m| m.trainable) {
            let (rank, out, inp) = (config.r, module.out_features, module.in_features);
            module.a = read_tensor(&file, &module.key("lora_A"), &[rank, inp]).map_err(&invalid)?;
            module.b = read_tensor(&file, &module.key("lora_B"), &[out, rank]).map_err(&invalid)?;
            expected += 2;
        }
        if file.len() != expected {
            let known: Vec<String> =
                modules.iter().filter(|m| m.trainable).flat_map(|m| [m.key("lora_A"), m.key("lora_B")]).collect();
            let extra = file.names().into_iter().find(|n| !known.iter().any(|k| k == *n)).unwrap_or_default();
            return Err(invalid(format!(
                "adapter: `{ADAPTER_WEIGHTS}` holds `{extra}`, which is not a LoRA tensor of the targeted modules {:?}",
                config.target_modules
            )));
        }
        Ok(Adapter { config, modules })
    }

    /// The adapter as PEFT files: (`adapter_model.safetensors`, `adapter_config.json`).
    /// Only targeted modules are written.
    pub fn to_peft(&self) -> Result<(Vec<u8>, Vec<u8>), ModelError> {
        let tensors = self.named_tensors(|m| m.trainable);
        let bytes = safetensors_bytes(&tensors)?;
        let config = serde_json::to_vec_pretty(&self.config)
            .map_err(|source| ModelError::Json { context: ADAPTER_CONFIG.into(), source })?;
        Ok((bytes, config))
    }

    /// `(key, shape, values)` of the modules selected by `keep`, `A` before `B`.
    pub fn named_tensors(&self, keep: impl Fn(&LoraModule) -> bool) -> Vec<(String, Vec<usize>, &[f32])> {
        let r = self.config.r;
        self.modules
            .iter()
            .filter(|m| keep(m))
            .flat_map(|m| {
                [
                    (m.key("lora_A"), vec![r, m.in_features], m.a.as_slice()),
                    (m.key("lora_B"), vec![m.out_features, r], m.b.as_slice()),
                ]
            })
            .collect()
    }

    /// Checksum of the adapter: sha256 over its PEFT files.
    pub fn checksum(&self) -> Result<String, ModelError> {
        let (weights, config) = self.to_peft()?;
        Ok(checksum_of_files(&weights, &config))
    }

    /// Adds `(α / r) · B · A` to `weight` (row-major `[out, in]`) when this
    /// adapter adapts the tensor `name`.
    pub fn merge_into(&self, name: &str, weight: &mut [f32]) {
        let Some(module) = self.modules.iter().find(|m| m.weight == name && m.trainable) else {
            return;
        };
        let (r, inp, scale) = (self.config.r, module.in_features, self.scale());
        use rayon::prelude::*;
        weight.par_chunks_mut(inp).enumerate().for_each(|(o, row)| {
            for k in 0..r {
                let factor = scale * module.b[o * r + k];
                if factor != 0.0 {
                    let a = &module.a[k * inp..(k + 1) * inp];
                    row.iter_mut().zip(a).for_each(|(w, &a)| *w += factor * a);
                }
            }
        });
    }
}

/// The checksum of an adapter given its two PEFT files.
pub fn checksum_of_files(weights: &[u8], config: &[u8]) -> String {
    sha256_hex(format!("{}:{}", sha256_hex(weights), sha256_hex(config)).as_bytes())
}

/// Zeroed modules for every weight the bundle lets LoRA adapt, marked
/// trainable when their module is targeted.
fn adaptable(bundle: &Bundle, config: &AdapterConfig) -> Result<Vec<LoraModule>, ModelError> {
    let invalid = |problem: String| ModelError::Invalid { dir: bundle.dir.clone(), problem };
    let lora = bundle.manifest.lora.as_ref().ok_or_else(|| invalid("the bundle has no [lora] section".into()))?;
    if let Some(unknown) = config.target_modules.iter().find(|m| !lora.target_modules.contains(m)) {
        return Err(invalid(format!(
            "LoRA target module `{unknown}` is not adaptable in this bundle (it adapts {:?})",
            lora.target_modules
        )));
    }
    if config.r == 0 {
        return Err(invalid("adapter rank r must be at least 1".into()));
    }
    let shapes: BTreeMap<&str, &[usize]> =
        bundle.manifest.weights.tensors.iter().map(|t| (t.name.as_str(), t.shape.as_slice())).collect();
    lora.target_weights
        .iter()
        .map(|weight| {
            let shape = shapes
                .get(weight.as_str())
                .filter(|s| s.len() == 2)
                .ok_or_else(|| invalid(format!("[lora] target weight `{weight}` is not a matrix of the bundle")))?;
            let (out_features, in_features) = (shape[0], shape[1]);
            let mut module = LoraModule {
                weight: weight.clone(),
                out_features,
                in_features,
                a: vec![0.0; config.r * in_features],
                b: vec![0.0; out_features * config.r],
                trainable: false,
            };
            module.trainable = config.target_modules.iter().any(|m| m == module.module());
            Ok(module)
        })
        .collect()
}

fn read_tensor(file: &SafeTensors, key: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
    let view = file.tensor(key).map_err(|_| format!("adapter: `{ADAPTER_WEIGHTS}` lacks `{key}`"))?;
    if view.dtype() != Dtype::F32 || view.shape() != shape {
        return Err(format!(
            "adapter: `{key}` in `{ADAPTER_WEIGHTS}` is {:?} {:?}, expected float32 {shape:?} (from the bundle's \
             shapes and r in `{ADAPTER_CONFIG}`)",
            view.dtype(),
            view.shape()
        ));
    }
    Ok(f32_values(view.data()))
}
