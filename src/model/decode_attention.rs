//! croco's own attention kernel for the CPU's decode steps: one new token
//! per row over the row's KV cache, as ONNX Runtime's `GroupQueryAttention`
//! computes it (rotary on the new query and key, the new key and value
//! written into the cache in place at the row's position, causal attention
//! over the row's cached positions, an optional sliding window), registered
//! as the custom operator `ai.croco:DecodeAttention` with the same inputs,
//! outputs and attributes. The CPU's decode-step session has its
//! `GroupQueryAttention` nodes swapped for it on load
//! ([`super::onnx_proto::swap_operator`]); prefill keeps ONNX Runtime's.
//!
//! Why: at long contexts a decode step is mostly the reading of the cache,
//! and ONNX Runtime 1.31's CPU kernel reads it in two passes (keys for the
//! scores, then values) per query head, with loops built for 128-bit
//! vectors. This kernel reads each cached row once for all the query heads
//! that share its KV head, keys and values together, 16 rows at a time
//! with the softmax's running maximum (flash decoding), in AVX-512 where the
//! CPU has it (head dimensions of 64, 128 or 256, up to 8 query heads per KV
//! head; portable loops otherwise). Measured on a 2-core AVX-512 machine, a
//! ~0.5 B model's step at 2,048 cached tokens and 16 rows took 202–218 ms
//! against 258–333 ms with ONNX Runtime's kernel; at short contexts, where the
//! step is its matrix products, both are the same.
//!
//! Each (row, KV head) is one task of ONNX Runtime's intra-op thread pool,
//! and a row's result does not depend on the other rows or on the batch.

use std::cell::RefCell;

use ort::operator::{ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput};
use ort::value::{DynTensorValueType, TensorElementType, ValueRef, ValueRefMut};

/// The custom operator's domain, imported by the rewritten graph.
pub const DOMAIN: &str = "ai.croco";
/// The custom operator's type.
pub const OP_TYPE: &str = "DecodeAttention";
/// The domain's opset version.
pub const VERSION: u64 = 1;

/// Cached floats a call reads below which it runs on the calling thread
/// (1 MiB: what one core reads in a few tens of microseconds).
const SPREAD_FLOATS: usize = 1 << 18;

/// Lanes of one block: 512 bits of `f32`.
const LANES: usize = 16;

/// The operator domain to register with a session whose graph uses the kernel.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?.add(DecodeAttention)
}

/// `ai.croco:DecodeAttention`: `GroupQueryAttention`'s signature.
struct DecodeAttention;

impl Operator for DecodeAttention {
    type Kernel<'attr> = AttentionKernel;

    fn name(&self) -> &str {
        OP_TYPE
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let f32 = TensorElementType::Float32;
        let i32 = TensorElementType::Int32;
        [
            OperatorInput::required(f32), // query [B, 1, H × D]
            OperatorInput::required(f32), // key [B, 1, Hkv × D]
            OperatorInput::required(f32), // value [B, 1, Hkv × D]
            OperatorInput::required(f32), // past_key [B, Hkv, capacity, D]
            OperatorInput::required(f32), // past_value
            OperatorInput::required(i32), // seqlens_k [B]: each row's length minus one
            OperatorInput::required(i32), // total_sequence_length []
            OperatorInput::optional(f32), // cos_cache [positions, rotary_dim / 2]
            OperatorInput::optional(f32), // sin_cache
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        let f32 = TensorElementType::Float32;
        [OperatorOutput::required(f32), OperatorOutput::required(f32), OperatorOutput::required(f32)]
    }

    fn create_kernel<'attr>(&self, info: &KernelContext<'attr>) -> ort::Result<AttentionKernel> {
        let int = |name: &str, default: Option<i64>| {
            info.get::<i64>(name)
                .or(default)
                .ok_or_else(|| ort::Error::new(format!("{OP_TYPE}: attribute `{name}` is missing")))
        };
        let heads = int("num_heads", None)?;
        let kv_heads = int("kv_num_heads", None)?;
        if heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 {
            return Err(ort::Error::new(format!("{OP_TYPE}: {heads} heads over {kv_heads} KV heads")));
        }
        let window = int("local_window_size", Some(-1))?;
        Ok(AttentionKernel {
            heads: heads as usize,
            kv_heads: kv_heads as usize,
            scale: info.get::<f32>("scale").unwrap_or(0.0),
            rotary: int("do_rotary", Some(0))? == 1,
            interleaved: int("rotary_interleaved", Some(0))? == 1,
            window: usize::try_from(window).ok(),
        })
    }
}

/// The kernel, with its node's attributes.
struct AttentionKernel {
    heads: usize,
    kv_heads: usize,
    /// The scores' scale; 0 means `1 / sqrt(head_dim)`.
    scale: f32,
    rotary: bool,
    interleaved: bool,
    /// Keys attended to at most (the new one included), when set.
    window: Option<usize>,
}

/// Raw pointers shared by the tasks of one call; each task writes only its
/// own (row, KV head)'s cache positions and output heads.
#[derive(Clone, Copy)]
struct Buffers {
    query: *const f32,
    key: *const f32,
    value: *const f32,
    cache_key: *mut f32,
    cache_value: *mut f32,
    output: *mut f32,
    cos: *const f32,
    sin: *const f32,
}

// SAFETY: the tasks of a call touch disjoint parts of the mutable buffers
// (see `Buffers`), and the call outlives them (`par_for` returns when all end).
unsafe impl Send for Buffers {}
unsafe impl Sync for Buffers {}

/// The shape of one call.
#[derive(Clone, Copy)]
struct Dims {
    heads: usize,
    kv_heads: usize,
    dim: usize,
    capacity: usize,
    /// Rotary dimensions (0: none) and the positions the caches hold.
    rotary_dim: usize,
    rotary_positions: usize,
}

/// The data of a float tensor input.
fn pointer(value: ValueRef<'_>) -> ort::Result<*const f32> {
    Ok(value.downcast::<DynTensorValueType>()?.data_ptr().cast())
}

/// The data of a float tensor output.
fn pointer_mut(value: Option<ValueRefMut<'_>>) -> ort::Result<*mut f32> {
    let value = value.ok_or_else(|| error("an output is missing".into()))?;
    // ort hands out outputs as shared references; the data behind them is the kernel's to write.
    Ok(value.downcast::<DynTensorValueType>()?.data_ptr().cast_mut().cast())
}

fn error(message: String) -> ort::Error {
    ort::Error::new(format!("{OP_TYPE}: {message}"))
}

impl Kernel for AttentionKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let input = |i: usize| ctx.input(i)?.ok_or_else(|| error(format!("input {i} is missing")));
        let (query, key, value) = (input(0)?, input(1)?, input(2)?);
        let (past_key, past_value, seqlens) = (input(3)?, input(4)?, input(5)?);
        let (q_shape, _) = query.try_extract_tensor::<f32>()?;
        let (cache_shape, _) = past_key.try_extract_tensor::<f32>()?;
        let q_shape: Vec<usize> = q_shape.iter().map(|&d| d as usize).collect();
        let cache_shape: Vec<i64> = cache_shape.to_vec();
        let (rows, sequence) = (q_shape[0], q_shape[1]);
        if sequence != 1 {
            return Err(error(format!("takes one new token per row, got {sequence}")));
        }
        let [_, kv_heads, capacity, dim] = cache_shape[..] else {
            return Err(error(format!("the cache is {cache_shape:?}, not [rows, kv_heads, capacity, head_dim]")));
        };
        let (kv_heads, capacity, dim) = (kv_heads as usize, capacity as usize, dim as usize);
        if kv_heads != self.kv_heads || q_shape[2] != self.heads * dim {
            return Err(error(format!("query {q_shape:?} and cache {cache_shape:?} do not match the attributes")));
        }
        let (_, lengths) = seqlens.try_extract_tensor::<i32>()?;
        let lengths: Vec<usize> = lengths.iter().map(|&l| l.max(0) as usize).collect();
        if let Some(&position) = lengths.iter().find(|&&p| p >= capacity) {
            return Err(error(format!("position {position} is beyond the cache's {capacity}")));
        }
        let (mut cos, mut sin, mut rotary_dim, mut rotary_positions) = (std::ptr::null(), std::ptr::null(), 0, 0);
        let (cos_value, sin_value) = (ctx.input(7)?, ctx.input(8)?);
        if self.rotary {
            let (Some(cos_value), Some(sin_value)) = (&cos_value, &sin_value) else {
                return Err(error("do_rotary without cos_cache and sin_cache".into()));
            };
            let (shape, data) = cos_value.try_extract_tensor::<f32>()?;
            (rotary_positions, rotary_dim) = (shape[0] as usize, 2 * shape[1] as usize);
            if rotary_dim > dim || lengths.iter().any(|&p| p >= rotary_positions) {
                return Err(error(format!("rotary caches {shape:?} do not cover head_dim {dim} or the positions")));
            }
            cos = data.as_ptr();
            sin = sin_value.try_extract_tensor::<f32>()?.1.as_ptr();
        }
        let dims = Dims { heads: self.heads, kv_heads, dim, capacity, rotary_dim, rotary_positions };
        let output = ctx.output(0, vec![rows as i64, 1, (self.heads * dim) as i64])?;
        let present_key = ctx.output(1, cache_shape.clone())?;
        let present_value = ctx.output(2, cache_shape)?;
        let buffers = Buffers {
            query: pointer(query)?,
            key: pointer(key)?,
            value: pointer(value)?,
            cache_key: pointer_mut(present_key)?,
            cache_value: pointer_mut(present_value)?,
            output: pointer_mut(output)?,
            cos,
            sin,
        };
        let cache_len = rows * kv_heads * capacity * dim;
        // The cache is written in place when the past and present tensors are one buffer (croco binds
        // them so); otherwise the present starts as a copy of the past.
        for (past, present) in [(pointer(past_key)?, buffers.cache_key), (pointer(past_value)?, buffers.cache_value)] {
            if past != present.cast_const() {
                // SAFETY: both hold `cache_len` floats (same shape) and are distinct allocations.
                unsafe { std::ptr::copy_nonoverlapping(past, present, cache_len) };
            }
        }
        let (scale, window, interleaved) = (self.effective_scale(dim), self.window, self.interleaved);
        let floats: usize = lengths.iter().map(|&p| 2 * (p + 1) * dim * kv_heads).sum();
        let task = move |task: usize| {
            let (row, kv_head) = (task / kv_heads, task % kv_heads);
            // SAFETY: `task` writes only its row's KV head and that head's query heads.
            unsafe { attend(buffers, dims, row, kv_head, lengths[row], scale, window, interleaved) };
        };
        let tasks = rows * kv_heads;
        // Waking the pool's threads costs more than a small cache takes to read (measured on the demo
        // policy: one row of 494 tokens ran 1.6x slower spread over two threads).
        if floats < SPREAD_FLOATS {
            (0..tasks).for_each(task);
        } else {
            ctx.par_for(tasks, tasks, task)?;
        }
        Ok(())
    }
}

impl AttentionKernel {
    fn effective_scale(&self, dim: usize) -> f32 {
        if self.scale == 0.0 { 1.0 / (dim as f32).sqrt() } else { self.scale }
    }
}

thread_local! {
    /// A task's scratch: its query heads' rotated queries, scores and outputs.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One (row, KV head): writes the new key and value at `position`, then
/// attends each query head of the group to the cached positions.
///
/// # Safety
/// `buffers` must hold the shapes `dims` describes, and no other task may
/// touch this row's KV head or its query heads at the same time.
#[allow(clippy::too_many_arguments)]
unsafe fn attend(
    buffers: Buffers,
    dims: Dims,
    row: usize,
    kv_head: usize,
    position: usize,
    scale: f32,
    window: Option<usize>,
    interleaved: bool,
) {
    let Dims { heads, kv_heads, dim, capacity, .. } = dims;
    let group = heads / kv_heads;
    let start = window.map_or(0, |w| (position + 1).saturating_sub(w));
    let keys = position + 1 - start;
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.resize(group * (2 * dim + keys), 0.0);
        let (queries, rest) = scratch.split_at_mut(group * dim);
        let (outputs, scores) = rest.split_at_mut(group * dim);
        // SAFETY (all blocks below): offsets stay within the shapes in `dims`; this task owns what it writes.
        unsafe {
            let head_base = (row * kv_heads + kv_head) * capacity * dim;
            let new_key = buffers.key.add((row * kv_heads + kv_head) * dim);
            let new_value = buffers.value.add((row * kv_heads + kv_head) * dim);
            let cached_key = std::slice::from_raw_parts_mut(buffers.cache_key.add(head_base + position * dim), dim);
            cached_key.copy_from_slice(std::slice::from_raw_parts(new_key, dim));
            rotate(cached_key, buffers, dims, position, interleaved);
            let cached_value = std::slice::from_raw_parts_mut(buffers.cache_value.add(head_base + position * dim), dim);
            cached_value.copy_from_slice(std::slice::from_raw_parts(new_value, dim));
            for g in 0..group {
                let head = kv_head * group + g;
                let query = &mut queries[g * dim..(g + 1) * dim];
                query.copy_from_slice(std::slice::from_raw_parts(buffers.query.add((row * heads + head) * dim), dim));
                rotate(query, buffers, dims, position, interleaved);
            }
            let keys_at = std::slice::from_raw_parts(buffers.cache_key.add(head_base + start * dim), keys * dim);
            let values_at = std::slice::from_raw_parts(buffers.cache_value.add(head_base + start * dim), keys * dim);
            kernels::attend_group(queries, keys_at, values_at, scores, outputs, dim, scale);
            for g in 0..group {
                let head = kv_head * group + g;
                let out = std::slice::from_raw_parts_mut(buffers.output.add((row * heads + head) * dim), dim);
                out.copy_from_slice(&outputs[g * dim..(g + 1) * dim]);
            }
        }
    });
}

/// Rotary embedding of one head's vector at `position` (the first
/// `rotary_dim` dimensions; halves paired, or neighbours when interleaved).
///
/// # Safety
/// The rotary caches in `buffers` must hold `dims.rotary_positions` rows.
unsafe fn rotate(x: &mut [f32], buffers: Buffers, dims: Dims, position: usize, interleaved: bool) {
    let half = dims.rotary_dim / 2;
    if half == 0 {
        return;
    }
    debug_assert!(position < dims.rotary_positions);
    // SAFETY: position < rotary_positions, checked by the caller.
    let (cos, sin) = unsafe {
        (
            std::slice::from_raw_parts(buffers.cos.add(position * half), half),
            std::slice::from_raw_parts(buffers.sin.add(position * half), half),
        )
    };
    for i in 0..half {
        let (a, b) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
        let (x1, x2) = (x[a], x[b]);
        x[a] = x1 * cos[i] - x2 * sin[i];
        x[b] = x2 * cos[i] + x1 * sin[i];
    }
}

/// The inner loops, compiled for the widest vectors the CPU has.
mod kernels {
    use super::LANES;

    /// Attends `queries` (`group` rows of `dim`) to `keys` and `values`
    /// (`keys.len() / dim` rows each): `outputs` gets each query's softmax-
    /// weighted values; `scores` is scratch for `group × rows` floats (the
    /// portable loops'; the AVX-512 kernel needs only 16 at a time, its own).
    pub fn attend_group(
        queries: &[f32],
        keys: &[f32],
        values: &[f32],
        scores: &mut [f32],
        outputs: &mut [f32],
        dim: usize,
        scale: f32,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            let group = queries.len() / dim;
            if matches!(dim, 64 | 128 | 256)
                && group <= avx512::MAX_GROUP
                && std::arch::is_x86_feature_detected!("avx512f")
            {
                let args = (queries, keys, values, outputs, scale);
                // SAFETY: the CPU has AVX-512F; the slices hold what `attend_group` documents.
                return unsafe {
                    match dim {
                        64 => avx512::attend::<4>(args),
                        128 => avx512::attend::<8>(args),
                        _ => avx512::attend::<16>(args),
                    }
                };
            }
        }
        attend_portable(queries, keys, values, scores, outputs, dim, scale)
    }

    /// The AVX-512 kernel for head dimensions of `BLOCKS` × 16: a query's
    /// dot product with a key is `BLOCKS` FMAs and one reduction, the
    /// weighted values accumulate in registers, and the softmax's `exp`
    /// runs 16 lanes at a time.
    #[cfg(target_arch = "x86_64")]
    mod avx512 {
        use std::arch::x86_64::*;

        use super::LANES;

        type Args<'a> = (&'a [f32], &'a [f32], &'a [f32], &'a mut [f32], f32);

        /// Query heads per KV head, at most.
        pub const MAX_GROUP: usize = 8;

        #[target_feature(enable = "avx512f")]
        pub unsafe fn attend<const BLOCKS: usize>((queries, keys, values, outputs, scale): Args<'_>) {
            let dim = BLOCKS * LANES;
            let (group, rows) = (queries.len() / dim, keys.len() / dim);
            assert!(group <= MAX_GROUP && outputs.len() >= group * dim && values.len() == keys.len());
            // One pass over the keys and values, 16 rows at a time, for every query head of the group, with
            // the softmax's running maximum (flash decoding): each row is read once, keys and values together.
            let mut max = [f32::NEG_INFINITY; MAX_GROUP];
            let mut sum = [0.0f32; MAX_GROUP];
            let mut acc = [[_mm512_setzero_ps(); BLOCKS]; MAX_GROUP];
            let mut block = [0.0f32; LANES];
            // SAFETY (all blocks): every offset below stays within the lengths asserted above.
            unsafe {
                for start in (0..rows).step_by(LANES) {
                    let n = (rows - start).min(LANES);
                    let mask: __mmask16 = if n == LANES { 0xffff } else { (1u16 << n) - 1 };
                    for g in 0..group {
                        let query = queries.as_ptr().add(g * dim);
                        for (j, score) in block.iter_mut().enumerate().take(n) {
                            let key = keys.as_ptr().add((start + j) * dim);
                            let mut dot = _mm512_mul_ps(_mm512_loadu_ps(query), _mm512_loadu_ps(key));
                            for b in 1..BLOCKS {
                                let (qb, kb) =
                                    (_mm512_loadu_ps(query.add(b * LANES)), _mm512_loadu_ps(key.add(b * LANES)));
                                dot = _mm512_fmadd_ps(qb, kb, dot);
                            }
                            *score = _mm512_reduce_add_ps(dot) * scale;
                        }
                        let scores = _mm512_maskz_loadu_ps(mask, block.as_ptr());
                        let block_max = _mm512_mask_reduce_max_ps(mask, scores);
                        let acc = &mut acc[g];
                        if block_max > max[g] {
                            let shrink = super::exp(max[g] - block_max);
                            let factor = _mm512_set1_ps(shrink);
                            acc.iter_mut().for_each(|a| *a = _mm512_mul_ps(*a, factor));
                            sum[g] *= shrink;
                            max[g] = block_max;
                        }
                        let weights = _mm512_maskz_mov_ps(mask, exp(_mm512_sub_ps(scores, _mm512_set1_ps(max[g]))));
                        sum[g] += _mm512_reduce_add_ps(weights);
                        _mm512_storeu_ps(block.as_mut_ptr(), weights);
                        for (j, &w) in block.iter().enumerate().take(n) {
                            let p = _mm512_set1_ps(w);
                            let value = values.as_ptr().add((start + j) * dim);
                            for (b, a) in acc.iter_mut().enumerate() {
                                *a = _mm512_fmadd_ps(p, _mm512_loadu_ps(value.add(b * LANES)), *a);
                            }
                        }
                    }
                }
                for g in 0..group {
                    let inverse = _mm512_set1_ps(1.0 / sum[g]);
                    let out = outputs.as_mut_ptr().add(g * dim);
                    for (b, a) in acc[g].iter().enumerate() {
                        _mm512_storeu_ps(out.add(b * LANES), _mm512_mul_ps(*a, inverse));
                    }
                }
            }
        }

        /// [`super::exp`], 16 lanes at a time.
        #[target_feature(enable = "avx512f")]
        fn exp(x: __m512) -> __m512 {
            let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
            let scaled = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(scaled);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_HI), x);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_LO), r);
            let mut p = _mm512_set1_ps(super::EXP_POLY[0]);
            for &c in &super::EXP_POLY[1..] {
                p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
            }
            let e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0));
            let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)));
            _mm512_mul_ps(e, _mm512_castsi512_ps(bits))
        }
    }

    #[inline(always)]
    fn attend_portable(
        queries: &[f32],
        keys: &[f32],
        values: &[f32],
        scores: &mut [f32],
        outputs: &mut [f32],
        dim: usize,
        scale: f32,
    ) {
        let group = queries.len() / dim;
        let rows = keys.len() / dim;
        for t in 0..rows {
            let key = &keys[t * dim..(t + 1) * dim];
            for g in 0..group {
                scores[g * rows + t] = dot(&queries[g * dim..(g + 1) * dim], key) * scale;
            }
        }
        outputs.fill(0.0);
        for g in 0..group {
            let row_scores = &mut scores[g * rows..(g + 1) * rows];
            let max = row_scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum = exp_in_place(row_scores, max);
            let out = &mut outputs[g * dim..(g + 1) * dim];
            for (t, &p) in row_scores.iter().enumerate() {
                axpy(out, p, &values[t * dim..(t + 1) * dim]);
            }
            let inverse = 1.0 / sum;
            out.iter_mut().for_each(|x| *x *= inverse);
        }
    }

    /// `a · b`, summed in `LANES` independent lanes so that it vectorises.
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut lanes = [0.0f32; LANES];
        let (a_blocks, a_tail) = a.split_at(a.len() / LANES * LANES);
        let (b_blocks, b_tail) = b.split_at(a_blocks.len());
        for (x, y) in a_blocks.chunks_exact(LANES).zip(b_blocks.chunks_exact(LANES)) {
            for l in 0..LANES {
                lanes[l] += x[l] * y[l];
            }
        }
        let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
        sum_lanes(lanes) + tail
    }

    #[inline(always)]
    fn sum_lanes(lanes: [f32; LANES]) -> f32 {
        let mut width = LANES;
        let mut lanes = lanes;
        while width > 1 {
            width /= 2;
            for l in 0..width {
                lanes[l] += lanes[l + width];
            }
        }
        lanes[0]
    }

    /// `out += p × x`.
    #[inline(always)]
    fn axpy(out: &mut [f32], p: f32, x: &[f32]) {
        for (o, &x) in out.iter_mut().zip(x) {
            *o += p * x;
        }
    }

    /// `x ← exp(x − max)`; returns the sum.
    #[inline(always)]
    fn exp_in_place(x: &mut [f32], max: f32) -> f32 {
        let mut lanes = [0.0f32; LANES];
        let (blocks, tail) = x.split_at_mut(x.len() / LANES * LANES);
        for block in blocks.chunks_exact_mut(LANES) {
            for l in 0..LANES {
                block[l] = exp(block[l] - max);
                lanes[l] += block[l];
            }
        }
        let mut sum = 0.0;
        for v in tail {
            *v = exp(*v - max);
            sum += *v;
        }
        sum_lanes(lanes) + sum
    }

    /// `e^x` for `x ≤ 0` (scores less their maximum), branch-free so that it
    /// vectorises: `x = n ln 2 + r`, `e^r` by Cephes' `expf` polynomial
    /// (within ~2 ulp), `2^n` put into the exponent bits; below ~-87.3
    /// (where `e^x` is subnormal) it returns ~1e-38, which a sum of at
    /// least one 1 (the maximum's) cannot tell from 0.
    #[inline(always)]
    pub(super) fn exp(x: f32) -> f32 {
        // Adding and subtracting 1.5 × 2^23 rounds to the nearest integer without a call to `roundf`.
        const ROUND: f32 = 12_582_912.0;
        let x = x.max(-87.0);
        let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
        let r = x - n * LN2_HI - n * LN2_LO;
        let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, &c| p * r + c);
        let e = p * (r * r) + r + 1.0;
        e * f32::from_bits(((n as i32 + 127) as u32) << 23)
    }

    /// `ln 2` in two parts, for the range reduction.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    /// Cephes' `expf` polynomial: `e^r ≈ 1 + r + r² p(r)` on `|r| ≤ ln 2 / 2`.
    const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
}

#[cfg(test)]
mod tests {
    use super::kernels;

    #[test]
    fn the_vectorised_exp_is_within_a_few_ulp_of_the_library_one() {
        let mut worst = 0.0f64;
        for i in 0..200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (got, want) = (kernels::exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "worst relative error {worst:e}");
        assert_eq!(kernels::exp(0.0), 1.0);
        assert!(kernels::exp(-200.0) < 1e-37);
    }

    #[test]
    fn a_group_attends_as_the_textbook_softmax_does() {
        for (dim, rows, group) in [(20, 37, 2), (64, 37, 2), (128, 70, 4), (64, 16, 1)] {
            attends_as_the_textbook_softmax_does(dim, rows, group);
        }
    }

    fn attends_as_the_textbook_softmax_does(dim: usize, rows: usize, group: usize) {
        // Scores rise along the keys now and then, so that the running maximum moves between blocks.
        let value = |i: usize| ((i * 7919 % 101) as f32 / 50.0) - 1.0 + (i / (3 * dim)) as f32 * 0.05;
        let queries: Vec<f32> = (0..group * dim).map(value).collect();
        let keys: Vec<f32> = (0..rows * dim).map(|i| value(i + 3)).collect();
        let values: Vec<f32> = (0..rows * dim).map(|i| value(i + 11)).collect();
        let (mut scores, mut outputs) = (vec![0.0; group * rows], vec![0.0; group * dim]);
        kernels::attend_group(&queries, &keys, &values, &mut scores, &mut outputs, dim, 0.3);
        for g in 0..group {
            let logits: Vec<f64> = (0..rows)
                .map(|t| (0..dim).map(|d| (queries[g * dim + d] * keys[t * dim + d]) as f64).sum::<f64>() * 0.3)
                .collect();
            let max = logits.iter().copied().fold(f64::MIN, f64::max);
            let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for d in 0..dim {
                let want: f64 = (0..rows).map(|t| weights[t] * values[t * dim + d] as f64).sum::<f64>() / total;
                assert!(
                    (outputs[g * dim + d] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
                    "{dim}: head {g}, dim {d}"
                );
            }
        }
    }
}
