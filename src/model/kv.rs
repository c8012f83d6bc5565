//! The decode graph's KV cache: one tensor per layer and K/V, `[rows,
//! kv_heads, capacity, head_dim]` in the graph's precision, allocated once
//! on the session's device at its planned length and bound as both
//! `past_key_values.*` and `present.*`, so `GroupQueryAttention` writes each
//! row's new positions into it in place. Each row holds one sequence; its
//! cached tokens are positions `0..len` of its row.
//!
//! The only copies are of whole prefixes between buffers: a prompt's cache,
//! prefilled once, into each row its samples take, and live rows into a
//! smaller buffer when few remain. On the CPU they are `memcpy`s of the
//! cached positions; on CUDA, device-to-device copies through ONNX Runtime.

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::value::{DynTensor, PrimitiveTensorElementType, Shape, TensorRefMut};

use super::graph::BoundGraph;
use super::precision::Precision;
use super::runtime::Target;
use super::{ModelError, tensor_error};

/// The shape of one cache tensor, less its row count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CacheShape {
    /// Cache tensors: 2 × layers.
    pub tensors: usize,
    /// Key/value heads.
    pub heads: usize,
    /// Head dimension.
    pub dim: usize,
}

/// A KV cache of `rows` rows of `capacity` positions.
pub(super) struct KvBuffer {
    tensors: Vec<DynTensor>,
    shape: CacheShape,
    rows: usize,
    capacity: usize,
    precision: Precision,
    target: Target,
}

impl KvBuffer {
    /// A zeroed cache on `graph`'s device, in its precision.
    pub fn new(graph: &BoundGraph, shape: CacheShape, rows: usize, capacity: usize) -> Result<KvBuffer, ModelError> {
        let allocator = graph.allocator()?;
        let precision = graph.precision();
        let dims = [rows, shape.heads, capacity, shape.dim];
        let tensors = (0..shape.tensors)
            .map(|_| {
                DynTensor::new(&allocator, precision.element_type(), dims).map_err(|e| tensor_error("KV cache", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut buffer = KvBuffer { tensors, shape, rows, capacity, precision, target: graph.target() };
        if let Target::Cuda(_) = buffer.target {
            buffer.zero_device_rows()?;
        }
        Ok(buffer)
    }

    /// Positions per row.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Binds every cache tensor to `graph` as `(input, output)` of `names`.
    pub fn bind(&mut self, graph: &mut BoundGraph, names: &[(String, String)]) -> Result<(), ModelError> {
        for ((input, output), tensor) in names.iter().zip(&mut self.tensors) {
            graph.bind_in_place(input, output, tensor)?;
        }
        Ok(())
    }

    /// Copies positions `0..len` of row `from` of `source` into row `to`.
    pub fn copy_row(&mut self, to: usize, source: &KvBuffer, from: usize, len: usize) -> Result<(), ModelError> {
        assert!(len <= self.capacity && len <= source.capacity, "a prefix longer than the cache");
        let (heads, dim, bytes) = (self.shape.heads, self.shape.dim, self.precision.bytes());
        for (target, origin) in self.tensors.iter_mut().zip(&source.tensors) {
            for h in 0..heads {
                let at = |capacity: usize, row: usize| ((row * heads + h) * capacity) * dim * bytes;
                let dst = at(self.capacity, to);
                let src = at(source.capacity, from);
                copy_bytes(self.target, self.precision, origin, src, target, dst, len * dim)?;
            }
        }
        Ok(())
    }

    /// CUDA memory is not zeroed at allocation; a row's unwritten positions
    /// are never attended to, but zeros keep a stray read finite.
    fn zero_device_rows(&mut self) -> Result<(), ModelError> {
        let per_row = self.shape.heads * self.capacity * self.shape.dim;
        let zeros = DynTensor::new(
            &ort::memory::Allocator::default(),
            self.precision.element_type(),
            [1, self.shape.heads, self.capacity, self.shape.dim],
        )
        .map_err(|e| tensor_error("KV cache", e))?;
        let bytes = self.precision.bytes();
        for t in 0..self.tensors.len() {
            for row in 0..self.rows {
                let (target, precision) = (self.target, self.precision);
                copy_bytes(target, precision, &zeros, 0, &mut self.tensors[t], row * per_row * bytes, per_row)?;
            }
        }
        Ok(())
    }
}

/// Copies `elements` elements from byte offset `src` of `from` to byte
/// offset `dst` of `to`.
fn copy_bytes(
    target: Target,
    precision: Precision,
    from: &DynTensor,
    src: usize,
    to: &mut DynTensor,
    dst: usize,
    elements: usize,
) -> Result<(), ModelError> {
    let count = elements * precision.bytes();
    match (target, from.memory_info().allocation_device() == AllocationDevice::CPU) {
        (Target::Cpu, _) => {
            // SAFETY: both ranges lie inside their tensors (the offsets come
            // from rows < rows and positions < capacity of each buffer), and
            // the tensors are distinct allocations, so they do not overlap.
            unsafe {
                let from = (from.data_ptr() as *const u8).add(src);
                let to = (to.data_ptr_mut() as *mut u8).add(dst);
                std::ptr::copy_nonoverlapping(from, to, count);
            }
            Ok(())
        }
        (Target::Cuda(device), host_source) => match precision {
            Precision::Float32 => device_copy::<f32>(from, src, to, dst, elements, device, host_source),
            Precision::Float16 => device_copy::<half::f16>(from, src, to, dst, elements, device, host_source),
            Precision::BFloat16 => device_copy::<half::bf16>(from, src, to, dst, elements, device, host_source),
        },
    }
}

/// A copy into CUDA memory (from the device, or from the host) through ONNX
/// Runtime's tensor copy, over views of the two ranges.
fn device_copy<T: PrimitiveTensorElementType + std::fmt::Debug>(
    from: &DynTensor,
    src: usize,
    to: &mut DynTensor,
    dst: usize,
    elements: usize,
    device: i32,
    host_source: bool,
) -> Result<(), ModelError> {
    let error = |e| tensor_error("KV cache copy", e);
    let memory = |on_host: bool| match on_host {
        true => MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default),
        false => MemoryInfo::new(AllocationDevice::CUDA, device, AllocatorType::Device, MemoryType::Default),
    };
    let shape = Shape::new([elements as i64]);
    // SAFETY: the ranges lie inside the tensors (see copy_bytes), which
    // outlive the views; the views are dropped before this returns.
    unsafe {
        let source_ptr = (from.data_ptr() as *mut u8).add(src).cast();
        let source = TensorRefMut::<T>::from_raw(memory(host_source).map_err(error)?, source_ptr, shape.clone())
            .map_err(error)?;
        let target_ptr = (to.data_ptr_mut() as *mut u8).add(dst).cast();
        let target = TensorRefMut::<T>::from_raw(memory(false).map_err(error)?, target_ptr, shape).map_err(error)?;
        source.copy_into(target).map_err(error)
    }
}
