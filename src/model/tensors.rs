//! Float32 tensors in safetensors files: decoding their little-endian bytes,
//! reading a whole file by name, writing one.

use std::collections::BTreeMap;

use safetensors::{Dtype, SafeTensors};

use super::ModelError;

/// Little-endian float32 bytes as values.
pub fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// Serialises float32 tensors `(name, shape, values)` as a safetensors file.
pub fn safetensors_bytes(tensors: &[(String, Vec<usize>, &[f32])]) -> Result<Vec<u8>, ModelError> {
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, values)| values.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), bytes)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|source| ModelError::Safetensors { context: format!("tensor `{name}`"), source })
        })
        .collect::<Result<_, _>>()?;
    safetensors::serialize(views, None)
        .map_err(|source| ModelError::Safetensors { context: "serializing".into(), source })
}

/// Float32 tensors by name: (shape, values).
pub type NamedTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Reads every float32 tensor of a safetensors file by name.
pub fn read_f32_tensors(bytes: &[u8]) -> Result<NamedTensors, ModelError> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|source| ModelError::Safetensors { context: "reading".into(), source })?;
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            if view.dtype() != Dtype::F32 {
                return Err(ModelError::NotFloat32 { tensor: name, dtype: format!("{:?}", view.dtype()) });
            }
            Ok((name, (view.shape().to_vec(), f32_values(view.data()))))
        })
        .collect()
}
