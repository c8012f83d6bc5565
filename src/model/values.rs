//! Host tensors in and out of ONNX Runtime: left-padded int64 batches and
//! float32 outputs.

use ort::value::{DynValue, Tensor};

use super::precision::Precision;
use super::{ModelError, tensor_error};

/// A left-padded batch of sequences.
pub(super) struct Padded {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub positions: Vec<i64>,
    pub rows: usize,
    pub width: usize,
}

/// Left-pads `sequences` with `pad` to the longest one.
pub(super) fn left_pad(sequences: &[&[i64]], pad: i64) -> Padded {
    let width = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut padded = Padded { ids: vec![], mask: vec![], positions: vec![], rows: sequences.len(), width };
    for sequence in sequences {
        let padding = width - sequence.len();
        padded.ids.extend(std::iter::repeat_n(pad, padding).chain(sequence.iter().copied()));
        padded.mask.extend(std::iter::repeat_n(0, padding).chain(std::iter::repeat_n(1, sequence.len())));
        // Padding positions are never attended to; the exporter uses 1 for them.
        padded.positions.extend(std::iter::repeat_n(1, padding).chain(0..sequence.len() as i64));
    }
    padded
}

pub(super) fn tensor_i64(shape: [usize; 2], data: Vec<i64>) -> Result<DynValue, ModelError> {
    Ok(Tensor::from_array((shape, data)).map_err(|source| tensor_error("input", source))?.into_dyn())
}

pub(super) fn tensor_i32(shape: &[usize], data: Vec<i32>) -> Result<DynValue, ModelError> {
    Ok(Tensor::from_array((shape.to_vec(), data)).map_err(|source| tensor_error("input", source))?.into_dyn())
}

/// Right-pads `sequences` with `pad` to the longest one: `(ids, rows,
/// width)`, row-major. The graphs of format 2 read each row's length from
/// `seqlens_k`, so positions are 0, 1, ... and padding is never attended to.
pub(super) fn right_pad(sequences: &[&[i64]], pad: i64) -> (Vec<i64>, usize, usize) {
    let width = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
    (right_pad_to(sequences, pad, width), sequences.len(), width)
}

/// Right-pads `sequences` with `pad` to `width` (at least the longest), row-major.
pub(super) fn right_pad_to(sequences: &[&[i64]], pad: i64, width: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(sequences.len() * width);
    for sequence in sequences {
        ids.extend(sequence.iter().copied().chain(std::iter::repeat_n(pad, width - sequence.len())));
    }
    ids
}

/// The `seqlens_k` and `total_sequence_length` inputs of a right-padded
/// batch without a cache: each row's length minus one, and the width.
pub(super) fn sequence_lengths(sequences: &[&[i64]], width: usize) -> Result<(DynValue, DynValue), ModelError> {
    let seqlens = sequences.iter().map(|s| s.len() as i32 - 1).collect();
    Ok((tensor_i32(&[sequences.len()], seqlens)?, tensor_i32(&[], vec![width as i32])?))
}

pub(super) fn host_f32(value: &DynValue) -> Result<(Vec<usize>, &[f32]), ModelError> {
    let (shape, data) = value.try_extract_tensor::<f32>().map_err(|source| tensor_error("output", source))?;
    Ok((shape.iter().map(|&d| d as usize).collect(), data))
}

/// The elements of a host tensor in `precision`, widened to float32.
pub(super) fn host_widened(value: &DynValue, precision: Precision) -> Result<Vec<f32>, ModelError> {
    let error = |source| tensor_error("output", source);
    Ok(match precision {
        Precision::Float32 => host_f32(value)?.1.to_vec(),
        Precision::BFloat16 => {
            value.try_extract_tensor::<half::bf16>().map_err(error)?.1.iter().map(|v| v.to_f32()).collect()
        }
        Precision::Float16 => {
            value.try_extract_tensor::<half::f16>().map_err(error)?.1.iter().map(|v| v.to_f32()).collect()
        }
    })
}
