//! A bundle's weights as ONNX Runtime values, loaded once per device and
//! bound by reference to every graph of the bundle that runs there (the
//! graphs take the weights as inputs): decode, log-probs, sampling and the
//! judge share one copy.

use std::sync::Arc;

use ort::memory::AllocationDevice;
use ort::value::{DynTensorValueType, DynValue};
use safetensors::{Dtype, SafeTensors};

use super::ModelError;
use super::bundle::Bundle;
use super::lora::Adapter;
use super::precision::Precision;
use super::runtime::Target;

/// Named weight tensors in the manifest's (graph-input) order, all in one
/// precision, on one device.
pub struct Weights {
    /// (name, value) pairs; a session that takes the weights as
    /// initializers ([`super::graph::WeightFeed::Initializers`]) holds them too.
    pub tensors: Vec<(String, Arc<DynValue>)>,
    /// The element type of every tensor: the precision of the graph variant
    /// they are bound to.
    pub precision: Precision,
}

impl Weights {
    /// The bundle's weights in `precision`, where `target` computes: checks
    /// that the safetensors file holds exactly the manifest's tensors, shapes
    /// and dtype, and converts each tensor (bfloat16 → float32 for the CPU's
    /// graphs, say) as it is decoded. On CUDA each tensor is copied to the
    /// device as soon as it is decoded and its host copy dropped: the host
    /// holds one tensor at a time, and every session of the device binds
    /// the same device memory.
    pub fn load(bundle: &Bundle, precision: Precision, target: Target) -> Result<Weights, ModelError> {
        Weights::load_merged(bundle, None, precision, target)
    }

    /// Like [`Weights::load`], with `adapter` merged into the weights it adapts
    /// (`W + (α / r)·B·A`, in float32): a tuned policy runs on the same graphs
    /// as its base.
    pub fn load_merged(
        bundle: &Bundle,
        adapter: Option<&Adapter>,
        precision: Precision,
        target: Target,
    ) -> Result<Weights, ModelError> {
        let spec = &bundle.manifest.weights;
        let stored = bundle.weight_precision();
        let path = bundle.file(&spec.file);
        let bytes = map_file(&path)?;
        let invalid = |problem: String| ModelError::Invalid { dir: bundle.dir.clone(), problem };
        let file = SafeTensors::deserialize(&bytes).map_err(|e| invalid(format!("`{}`: {e}", spec.file)))?;
        if let Some(extra) = file.names().into_iter().find(|name| !spec.tensors.iter().any(|t| t.name == *name)) {
            return Err(invalid(format!("`{}` holds tensor `{extra}`, which the manifest does not list", spec.file)));
        }
        let mut tensors = Vec::with_capacity(spec.tensors.len());
        for tensor in &spec.tensors {
            let view = file
                .tensor(&tensor.name)
                .map_err(|_| invalid(format!("`{}` lacks tensor `{}`", spec.file, tensor.name)))?;
            if view.dtype() != safetensors_dtype(stored) || view.shape() != tensor.shape.as_slice() {
                return Err(invalid(format!(
                    "tensor `{}` is {:?} {:?} in `{}`, the manifest says {stored} {:?}",
                    tensor.name,
                    view.dtype(),
                    view.shape(),
                    spec.file,
                    tensor.shape
                )));
            }
            let mut values = stored.widen(view.data());
            if let Some(adapter) = adapter {
                adapter.merge_into(&tensor.name, &mut values);
            }
            let value = precision.tensor(tensor.shape.clone(), values)?;
            tensors.push((tensor.name.clone(), Arc::new(on_device(&tensor.name, value, target)?)));
        }
        Ok(Weights { tensors, precision })
    }
}

/// `value` where `target` computes: unchanged on the CPU, copied to the
/// device on CUDA (the host copy is dropped on return).
fn on_device(name: &str, value: DynValue, target: Target) -> Result<DynValue, ModelError> {
    let Target::Cuda(device) = target else { return Ok(value) };
    let error = |source| ModelError::Tensor { context: format!("weight `{name}` to CUDA"), source };
    let tensor = value.downcast::<DynTensorValueType>().map_err(error)?;
    Ok(tensor.to(AllocationDevice::CUDA, device).map_err(error)?.into_dyn())
}

fn safetensors_dtype(precision: Precision) -> Dtype {
    match precision {
        Precision::Float32 => Dtype::F32,
        Precision::Float16 => Dtype::F16,
        Precision::BFloat16 => Dtype::BF16,
    }
}

/// The file at `path`, memory-mapped: each tensor is decoded from the
/// mapping into its own buffer, so loading holds the weights once in
/// memory, not twice (a file read whole, then its tensors).
fn map_file(path: &std::path::Path) -> Result<memmap2::Mmap, ModelError> {
    let io = |source| ModelError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: a bundle's files are written once by the exporter and never
    // modified in place (its manifest holds their sizes and checksums); the
    // mapping is read during this call only and dropped before it returns.
    unsafe { memmap2::Mmap::map(&file) }.map_err(io)
}
