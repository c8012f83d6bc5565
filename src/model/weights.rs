//! A bundle's weights as ONNX Runtime values, loaded once and bound to every
//! graph of the bundle (the graphs take the weights as inputs).

use ort::value::{DynValue, Tensor};
use safetensors::{Dtype, SafeTensors};

use super::ModelError;
use super::bundle::Bundle;
use super::lora::Adapter;
use super::tensors::f32_values;

/// Named weight tensors in the manifest's (graph-input) order.
pub struct Weights {
    /// (name, value) pairs.
    pub tensors: Vec<(String, DynValue)>,
}

impl Weights {
    /// Reads the bundle's safetensors file and checks that it holds exactly
    /// the manifest's tensors, with the manifest's shapes, as float32.
    pub fn load(bundle: &Bundle) -> Result<Weights, ModelError> {
        Weights::load_merged(bundle, None)
    }

    /// Like [`Weights::load`], with `adapter` merged into the weights it adapts
    /// (`W + (α / r)·B·A`): a tuned policy runs on the same graphs as its base.
    pub fn load_merged(bundle: &Bundle, adapter: Option<&Adapter>) -> Result<Weights, ModelError> {
        let spec = &bundle.manifest.weights;
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
            if view.dtype() != Dtype::F32 || view.shape() != tensor.shape.as_slice() {
                return Err(invalid(format!(
                    "tensor `{}` is {:?} {:?} in `{}`, the manifest says float32 {:?}",
                    tensor.name,
                    view.dtype(),
                    view.shape(),
                    spec.file,
                    tensor.shape
                )));
            }
            let mut values = f32_values(view.data());
            if let Some(adapter) = adapter {
                adapter.merge_into(&tensor.name, &mut values);
            }
            let value = Tensor::from_array((tensor.shape.clone(), values))
                .map_err(|e| invalid(format!("tensor `{}`: {e}", tensor.name)))?;
            tensors.push((tensor.name.clone(), value.into_dyn()));
        }
        Ok(Weights { tensors })
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
