//! The element types of a bundle: weights are stored as the checkpoint
//! ships them (float32, bfloat16 or float16) and every graph comes in one
//! variant per precision it computes in (`docs/bundle-format.md`). A session
//! runs the variant its device supports: float32 on the CPU (half-precision
//! weights are widened once, at load), the bundle's half precision on CUDA.

use ort::value::{DynValue, Tensor, TensorElementType};

use super::ModelError;
use super::runtime::Target;

/// A floating-point element type of weights, caches and graph variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Precision {
    /// IEEE single precision: the CPU's variant.
    Float32,
    /// IEEE half precision.
    Float16,
    /// bfloat16: what most checkpoints ship and CUDA runs.
    BFloat16,
}

impl Precision {
    /// Every precision, in the order a CUDA session prefers its variant.
    const CUDA_PREFERENCE: [Precision; 3] = [Precision::BFloat16, Precision::Float16, Precision::Float32];

    /// The manifest's name of the precision.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Float32 => "float32",
            Precision::Float16 => "float16",
            Precision::BFloat16 => "bfloat16",
        }
    }

    /// ONNX Runtime's element type of the precision.
    pub fn element_type(self) -> TensorElementType {
        match self {
            Precision::Float32 => TensorElementType::Float32,
            Precision::Float16 => TensorElementType::Float16,
            Precision::BFloat16 => TensorElementType::Bfloat16,
        }
    }

    /// The precision a manifest names, if it is one.
    pub fn parse(name: &str) -> Option<Precision> {
        [Precision::Float32, Precision::Float16, Precision::BFloat16].into_iter().find(|p| p.name() == name)
    }

    /// Bytes of one element.
    pub fn bytes(self) -> usize {
        match self {
            Precision::Float32 => 4,
            Precision::Float16 | Precision::BFloat16 => 2,
        }
    }

    /// The graph variant `target` runs, among those a graph ships
    /// (`available`, manifest names): float32 on the CPU (ONNX Runtime's CPU
    /// kernels of the fused ops are float32), else the first of bfloat16,
    /// float16, float32 the graph has.
    pub fn for_target<'a>(target: Target, available: impl IntoIterator<Item = &'a str>) -> Option<Precision> {
        let available: Vec<Precision> = available.into_iter().filter_map(Precision::parse).collect();
        match target {
            Target::Cpu => available.contains(&Precision::Float32).then_some(Precision::Float32),
            Target::Cuda(_) => Self::CUDA_PREFERENCE.into_iter().find(|p| available.contains(p)),
        }
    }

    /// Little-endian elements of this precision, widened to float32.
    pub fn widen(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Precision::Float32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Precision::Float16 => {
                bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            Precision::BFloat16 => {
                bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
        }
    }

    /// An ONNX Runtime tensor of `shape` holding `values` in this precision
    /// (rounded to nearest even when narrower).
    pub fn tensor(self, shape: Vec<usize>, values: Vec<f32>) -> Result<DynValue, ModelError> {
        let error = |source| ModelError::Tensor { context: format!("{} tensor {shape:?}", self.name()), source };
        let value = match self {
            Precision::Float32 => Tensor::from_array((shape.clone(), values)).map(Tensor::into_dyn),
            Precision::Float16 => {
                let narrowed: Vec<half::f16> = values.into_iter().map(half::f16::from_f32).collect();
                Tensor::from_array((shape.clone(), narrowed)).map(Tensor::into_dyn)
            }
            Precision::BFloat16 => {
                let narrowed: Vec<half::bf16> = values.into_iter().map(half::bf16::from_f32).collect();
                Tensor::from_array((shape.clone(), narrowed)).map(Tensor::into_dyn)
            }
        };
        value.map_err(error)
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_runs_float32_and_cuda_the_half_precision() {
        let both = ["float32", "bfloat16"];
        assert_eq!(Precision::for_target(Target::Cpu, both), Some(Precision::Float32));
        assert_eq!(Precision::for_target(Target::Cuda(0), both), Some(Precision::BFloat16));
        assert_eq!(Precision::for_target(Target::Cuda(0), ["float32"]), Some(Precision::Float32));
        assert_eq!(Precision::for_target(Target::Cpu, ["bfloat16"]), None);
    }

    #[test]
    fn half_precision_bytes_widen_exactly() {
        let values = [1.0f32, -2.5, 0.15625, 65504.0];
        for precision in [Precision::Float16, Precision::BFloat16] {
            let bytes: Vec<u8> = values
                .iter()
                .flat_map(|&v| match precision {
                    Precision::Float16 => half::f16::from_f32(v).to_le_bytes(),
                    _ => half::bf16::from_f32(v).to_le_bytes(),
                })
                .collect();
            let widened = precision.widen(&bytes);
            for (w, v) in widened.iter().zip(values) {
                assert!((w - v).abs() <= v.abs() / 128.0, "{precision}: {w} vs {v}");
            }
        }
        assert_eq!(Precision::Float32.widen(&1.5f32.to_le_bytes()), vec![1.5]);
    }
}
