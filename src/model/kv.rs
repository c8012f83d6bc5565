//! The decode graph's KV cache: one tensor per layer and K/V, `[rows,
//! kv_heads, capacity, head_dim]` in the graph's precision, allocated once
//! on the session's device at its planned length and bound as both
//! `past_key_values.*` and `present.*`, so `GroupQueryAttention` writes each
//! row's new positions into it in place. Each row holds one sequence; its
//! cached tokens are positions `0..len` of its row.
//!
//! A call runs over the first `active` rows: the graph is bound to views of
//! them, so when few sequences remain they move to the lowest rows of the
//! same buffer and the calls shrink with them, without a second buffer.
//!
//! The only copies are of prefixes: a prompt's cache, prefilled once, into
//! each row its samples take, and a running row into a lower one. On the CPU
//! they are `memcpy`s of the cached positions; on CUDA, device-to-device
//! copies through ONNX Runtime.

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::value::{DynTensor, DynValueRefMut, PrimitiveTensorElementType, Shape, TensorRefMut};

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
    /// The rows the graph runs over: `0..active`.
    active: usize,
    capacity: usize,
    precision: Precision,
    target: Target,
}

/// Where a copy reads: a cache tensor and a byte offset in it.
#[derive(Clone, Copy)]
struct At {
    base: *mut u8,
    offset: usize,
    on_host: bool,
}

impl KvBuffer {
    /// A zeroed cache on `graph`'s device, in its precision, every row active.
    pub fn new(graph: &BoundGraph, shape: CacheShape, rows: usize, capacity: usize) -> Result<KvBuffer, ModelError> {
        let allocator = graph.allocator()?;
        let precision = graph.precision();
        let dims = [rows, shape.heads, capacity, shape.dim];
        let tensors = (0..shape.tensors)
            .map(|_| {
                DynTensor::new(&allocator, precision.element_type(), dims).map_err(|e| tensor_error("KV cache", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut buffer = KvBuffer { tensors, shape, rows, active: rows, capacity, precision, target: graph.target() };
        if let Target::Cuda(_) = buffer.target {
            buffer.zero_device_rows()?;
        }
        Ok(buffer)
    }

    /// Runs the next calls over rows `0..active` only.
    pub fn set_active(&mut self, active: usize) {
        assert!((1..=self.rows).contains(&active), "active rows within the buffer");
        self.active = active;
    }

    /// Binds the active rows of every cache tensor to `graph` as `(input,
    /// output)` of `names`.
    pub fn bind(&mut self, graph: &mut BoundGraph, names: &[(String, String)]) -> Result<(), ModelError> {
        let dims = [self.active, self.shape.heads, self.capacity, self.shape.dim];
        for ((input, output), tensor) in names.iter().zip(&mut self.tensors) {
            let memory = memory_of(self.target).map_err(|e| tensor_error("KV cache", e))?;
            // SAFETY: the view covers the first `active` rows of the tensor, which this buffer owns and keeps
            // alive while the graph is bound to it (the scheduler rebinds before every call).
            let view = unsafe { view(self.precision, memory, tensor.data_ptr_mut().cast(), &dims)? };
            graph.bind_in_place(input, output, view)?;
        }
        Ok(())
    }

    /// Copies positions `0..len` of row `from` of `source` into row `to`.
    pub fn copy_row(&mut self, to: usize, source: &KvBuffer, from: usize, len: usize) -> Result<(), ModelError> {
        assert!(len <= self.capacity && len <= source.capacity, "a prefix longer than the cache");
        assert!(to < self.rows && from < source.rows, "rows inside the caches");
        for t in 0..self.tensors.len() {
            let origin = source.tensors[t].data_ptr() as *mut u8;
            let base = self.tensors[t].data_ptr_mut() as *mut u8;
            self.copy_heads(At { base: origin, offset: 0, on_host: false }, source.capacity, from, base, to, len)?;
        }
        Ok(())
    }

    /// Moves positions `0..len` of row `from` to row `to` of this buffer.
    pub fn move_row(&mut self, from: usize, to: usize, len: usize) -> Result<(), ModelError> {
        assert!(from != to && from < self.rows && to < self.rows && len <= self.capacity, "distinct rows inside");
        for t in 0..self.tensors.len() {
            let base = self.tensors[t].data_ptr_mut() as *mut u8;
            self.copy_heads(At { base, offset: 0, on_host: false }, self.capacity, from, base, to, len)?;
        }
        Ok(())
    }

    /// Copies `len` positions of every head of row `from` of a tensor at
    /// `origin` (rows of `origin_capacity` positions) into row `to` of the
    /// tensor at `target` (this buffer's shape).
    fn copy_heads(
        &self,
        origin: At,
        origin_capacity: usize,
        from: usize,
        target: *mut u8,
        to: usize,
        len: usize,
    ) -> Result<(), ModelError> {
        let (heads, dim, bytes) = (self.shape.heads, self.shape.dim, self.precision.bytes());
        let at = |capacity: usize, row: usize, h: usize| ((row * heads + h) * capacity) * dim * bytes;
        for h in 0..heads {
            let src = At { offset: at(origin_capacity, from, h), ..origin };
            let dst = At { base: target, offset: at(self.capacity, to, h), on_host: false };
            copy(self.target, self.precision, src, dst, len * dim)?;
        }
        Ok(())
    }

    /// CUDA memory is not zeroed at allocation; a row's unwritten positions
    /// are never attended to, but zeros keep a stray read finite.
    fn zero_device_rows(&mut self) -> Result<(), ModelError> {
        let per_row = self.shape.heads * self.capacity * self.shape.dim;
        let mut zeros = DynTensor::new(
            &ort::memory::Allocator::default(),
            self.precision.element_type(),
            [1, self.shape.heads, self.capacity, self.shape.dim],
        )
        .map_err(|e| tensor_error("KV cache", e))?;
        let source = At { base: zeros.data_ptr_mut() as *mut u8, offset: 0, on_host: true };
        let bytes = self.precision.bytes();
        for t in 0..self.tensors.len() {
            let base = self.tensors[t].data_ptr_mut() as *mut u8;
            for row in 0..self.rows {
                let target = At { base, offset: row * per_row * bytes, on_host: false };
                copy(self.target, self.precision, source, target, per_row)?;
            }
        }
        Ok(())
    }
}

/// Copies `elements` elements from `from` to `to` (ranges that do not overlap).
fn copy(target: Target, precision: Precision, from: At, to: At, elements: usize) -> Result<(), ModelError> {
    match target {
        Target::Cpu => {
            // SAFETY: both ranges lie inside their tensors (offsets of rows and positions within each buffer's
            // shape) and are distinct rows, so they do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    from.base.add(from.offset),
                    to.base.add(to.offset),
                    elements * precision.bytes(),
                )
            };
            Ok(())
        }
        Target::Cuda(_) => {
            let memory = |on_host| memory_of(if on_host { Target::Cpu } else { target });
            let error = |e| tensor_error("KV cache copy", e);
            let dims = [elements];
            // SAFETY: as above; the views live for this copy only.
            let (source, destination) = unsafe {
                let source = view(precision, memory(from.on_host).map_err(error)?, from.base.add(from.offset), &dims)?;
                let destination = view(precision, memory(to.on_host).map_err(error)?, to.base.add(to.offset), &dims)?;
                (source, destination)
            };
            device_copy(source, destination)
        }
    }
}

/// The memory a cache lives in on `target`.
fn memory_of(target: Target) -> ort::Result<MemoryInfo<'static>> {
    match target {
        Target::Cpu => MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default),
        Target::Cuda(id) => MemoryInfo::new(AllocationDevice::CUDA, id, AllocatorType::Device, MemoryType::Default),
    }
}

/// A tensor of `dims` over `data`, in `precision`.
///
/// # Safety
/// `data` must hold `dims`' elements of `precision` in `memory`, alive as long as the view is used.
unsafe fn view(
    precision: Precision,
    memory: MemoryInfo<'static>,
    data: *mut u8,
    dims: &[usize],
) -> Result<DynValueRefMut<'static>, ModelError> {
    let shape = Shape::new(dims.iter().map(|&d| d as i64));
    let error = |e| tensor_error("KV cache view", e);
    // SAFETY: forwarded to the caller.
    unsafe {
        match precision {
            Precision::Float32 => typed_view::<f32>(memory, data, shape).map_err(error),
            Precision::Float16 => typed_view::<half::f16>(memory, data, shape).map_err(error),
            Precision::BFloat16 => typed_view::<half::bf16>(memory, data, shape).map_err(error),
        }
    }
}

unsafe fn typed_view<T: PrimitiveTensorElementType + std::fmt::Debug>(
    memory: MemoryInfo<'static>,
    data: *mut u8,
    shape: Shape,
) -> ort::Result<DynValueRefMut<'static>> {
    // SAFETY: forwarded to the caller of `view`.
    unsafe { TensorRefMut::<T>::from_raw(memory, data.cast(), shape).map(|view| view.into_dyn()) }
}

/// One device copy through ONNX Runtime's tensor copy.
fn device_copy(from: DynValueRefMut<'_>, to: DynValueRefMut<'_>) -> Result<(), ModelError> {
    let from = from.downcast::<ort::value::DynTensorValueType>().map_err(|e| tensor_error("KV cache copy", e))?;
    let to = to.downcast::<ort::value::DynTensorValueType>().map_err(|e| tensor_error("KV cache copy", e))?;
    from.copy_into(to).map_err(|e| tensor_error("KV cache copy", e))
}
