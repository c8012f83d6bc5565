//! One ONNX graph of a bundle as a session whose weight inputs are bound
//! once (IoBinding) to the device's one copy of the weights ([`Weights`]),
//! in the variant of the weights' precision, or, for the CPU's decode
//! session, handed that copy as initializers its GEMMs pack once
//! ([`WeightFeed`]). Outputs can stay on the device
//! or be written into tensors the caller owns: the decode graph's KV cache
//! is bound as both an input and an output, and written in place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::AsPointer;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::PrepackedWeights;
use ort::session::{IoBinding, Session};
use ort::value::{DynValue, DynValueRefMut};

use super::ModelError;
use super::bundle::Bundle;
use super::decode_attention;
use super::onnx_proto::{Op, WeightInput, swap_operator, weights_as_initializers};
use super::precision::Precision;
use super::runtime::{Target, packed_session, session};
use super::weights::Weights;

/// How a session gets the bundle's weights.
#[derive(Debug, Clone, Copy)]
pub enum WeightFeed<'a> {
    /// Graph inputs, bound by reference to the device's one copy.
    Bound,
    /// Initializers supplied from that copy (the graph is rewritten on load,
    /// [`super::onnx_proto`]), which the CPU's GEMMs pack once instead of on
    /// every call: for graphs of few rows per call, such as a decode step
    /// (1.4× faster at 16 and 32 rows on a ~0.5 B model). The packed copies
    /// go into the container given, which the sessions of one model share:
    /// the weights' memory once more, whatever the number of sessions.
    Initializers(&'a PrepackedWeights),
    /// As `Initializers`, for the CPU's decode steps (one new token per
    /// row): attention runs in croco's decode-step kernel instead of ONNX
    /// Runtime's ([`super::decode_attention`]); calls of several tokens per
    /// row fail.
    DecodeSteps(&'a PrepackedWeights),
}

impl WeightFeed<'_> {
    /// Packed initializers (into `packed`) on the CPU; on CUDA, where
    /// nothing is packed, the weights bound as inputs.
    pub fn packed_on(target: Target, packed: &PrepackedWeights) -> WeightFeed<'_> {
        if target == Target::Cpu { WeightFeed::Initializers(packed) } else { WeightFeed::Bound }
    }
}

/// The session of the graph file at `path` with `weights` (graph inputs in
/// the file) turned into initializers that read the weights' memory, packed
/// into `packed`; each initializer takes its shape and element type from its
/// value. With `decode_attention`, the graph's `GroupQueryAttention` nodes
/// run croco's decode-step kernel instead ([`super::decode_attention`]).
fn initializer_session(
    path: &Path,
    weights: &[&(String, Arc<DynValue>)],
    threads: usize,
    packed: &PrepackedWeights,
    decode_attention: bool,
) -> Result<Session, ModelError> {
    let model = std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let inputs: Vec<WeightInput<'_>> = weights
        .iter()
        .map(|(name, value)| {
            let ty = value.dtype();
            WeightInput {
                name,
                dims: ty.tensor_shape().map_or(&[][..], |shape| &shape[..]),
                data_type: ty.tensor_type().map_or(0, |t| ort::sys::ONNXTensorElementDataType::from(t) as i32),
            }
        })
        .collect();
    let graph_error = |source| ModelError::Graph { path: path.to_path_buf(), source };
    let mut rewritten = weights_as_initializers(&model, &inputs).map_err(graph_error)?;
    if decode_attention {
        let gqa = Op { domain: "com.microsoft", op_type: "GroupQueryAttention" };
        let croco = Op { domain: decode_attention::DOMAIN, op_type: decode_attention::OP_TYPE };
        rewritten = swap_operator(&rewritten, gqa, croco, decode_attention::VERSION).map_err(graph_error)?.0;
    }
    let initializers: Vec<(String, Arc<DynValue>)> = weights.iter().map(|(n, v)| (n.clone(), Arc::clone(v))).collect();
    packed_session(path, &rewritten, Target::Cpu, threads, &initializers, Some(packed), decode_attention)
}

/// A graph ready to run.
pub struct BoundGraph {
    path: PathBuf,
    session: Session,
    binding: IoBinding,
    target: Target,
    outputs: Vec<String>,
    /// Outputs bound to caller tensors ([`BoundGraph::bind_in_place`]).
    in_place: Vec<String>,
    precision: Precision,
}

impl BoundGraph {
    /// Builds the session of graph `name` in the weights' precision, checks
    /// its inputs and outputs against the manifest, and hands it the weights
    /// as `feed` says.
    pub fn new(
        bundle: &Bundle,
        name: &str,
        weights: &Weights,
        target: Target,
        threads: usize,
        feed: WeightFeed<'_>,
    ) -> Result<Self, ModelError> {
        let spec = bundle.graph(name)?;
        let precision = weights.precision;
        let file = spec.files.get(precision.name()).ok_or_else(|| ModelError::Invalid {
            dir: bundle.dir.clone(),
            problem: format!(
                "graph `{name}` has no {precision} variant (it has {:?}); re-export the bundle",
                spec.files.keys().collect::<Vec<_>>()
            ),
        })?;
        let path = bundle.file(file);
        if matches!(target, Target::Cuda(_))
            && precision == Precision::Float32
            && bundle.manifest.kind.required_graphs().contains(&name)
        {
            // ONNX Runtime 1.31 registers CUDA GroupQueryAttention for float16
            // and bfloat16 only: the session places it on the CPU, and every
            // call carries the cache across.
            tracing::warn!(
                graph = name,
                "float32 graph on CUDA: its attention runs on the CPU (ONNX Runtime's CUDA GroupQueryAttention is half precision only); the bundle of a bfloat16 checkpoint has bfloat16 graphs for CUDA"
            );
        }
        let graph_weights: Vec<&(String, Arc<DynValue>)> =
            weights.tensors.iter().filter(|(n, _)| spec.weight_inputs.includes(n)).collect();
        let session = match feed {
            WeightFeed::Bound => session(&path, target, threads)?,
            WeightFeed::Initializers(packed) => initializer_session(&path, &graph_weights, threads, packed, false)?,
            WeightFeed::DecodeSteps(packed) => initializer_session(&path, &graph_weights, threads, packed, true)?,
        };
        let bound_weights = match feed {
            WeightFeed::Bound => graph_weights.as_slice(),
            WeightFeed::Initializers(_) | WeightFeed::DecodeSteps(_) => &[],
        };
        let expected_inputs: Vec<&str> =
            spec.inputs.iter().map(|i| i.name.as_str()).chain(bound_weights.iter().map(|(n, _)| n.as_str())).collect();
        let found_inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        let expected_outputs: Vec<&str> = spec.outputs.iter().map(|o| o.name.as_str()).collect();
        let found_outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        for (what, expected, found) in
            [("inputs", &expected_inputs, &found_inputs), ("outputs", &expected_outputs, &found_outputs)]
        {
            if expected != found {
                let first = expected
                    .iter()
                    .zip(found.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(expected.len().min(found.len()));
                return Err(ModelError::Invalid {
                    dir: bundle.dir.clone(),
                    problem: format!(
                        "`{file}` {what} do not match the manifest: {} expected, {} found; first difference at #{first}: expected {:?}, found {:?}",
                        expected.len(),
                        found.len(),
                        expected.get(first),
                        found.get(first)
                    ),
                });
            }
        }
        let error = |source: ort::Error| ModelError::Session { path: path.clone(), source };
        let mut binding = session.create_binding().map_err(error)?;
        for (weight, value) in bound_weights {
            binding.bind_input(weight.as_str(), &**value).map_err(error)?;
        }
        let outputs = expected_outputs.iter().map(|s| s.to_string()).collect();
        Ok(BoundGraph { path, session, binding, target, outputs, in_place: Vec::new(), precision })
    }

    /// The precision the graph computes in (its weights' and cache's).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The execution target of the session.
    pub fn target(&self) -> Target {
        self.target
    }

    /// Binds `view` (memory the caller owns and keeps alive until the graph
    /// is bound again) as input `input` and as output `output`: the graph
    /// reads and writes the same memory (ONNX Runtime's `GroupQueryAttention`
    /// updates the KV cache in place). It stays bound, and out of
    /// [`BoundGraph::run`]'s results, until bound again.
    pub fn bind_in_place(&mut self, input: &str, output: &str, view: DynValueRefMut<'_>) -> Result<(), ModelError> {
        let error = |source: ort::Error| ModelError::Session { path: self.path.clone(), source };
        // ort's bind_input copies a tensor over borrowed memory (its guard against aliasing); aliasing is the
        // point here, so the input is bound through the C API, to the very value the output is bound to.
        let name = std::ffi::CString::new(input).expect("graph input names have no NUL");
        // SAFETY: the binding and the value are live ONNX Runtime objects; ONNX Runtime keeps its own reference
        // to the value, whose memory the caller keeps alive while it is bound.
        let status = unsafe { (ort::api().BindInput)(self.binding.ptr_mut(), name.as_ptr(), view.ptr()) };
        if !status.0.is_null() {
            // SAFETY: a non-null status is an error ONNX Runtime allocated; it is read, then released once.
            let message = unsafe {
                let text =
                    std::ffi::CStr::from_ptr((ort::api().GetErrorMessage)(status.0)).to_string_lossy().into_owned();
                (ort::api().ReleaseStatus)(status.0);
                text
            };
            return Err(error(ort::Error::new(format!("binding `{input}`: {message}"))));
        }
        self.binding.bind_output(output, view).map_err(error)?;
        if !self.in_place.iter().any(|name| name == output) {
            self.in_place.push(output.to_string());
        }
        Ok(())
    }

    /// Runs the graph on `inputs` (the data inputs; weights and in-place
    /// tensors are bound). Outputs named in `on_host` come back in host
    /// memory, the others stay where the execution provider put them.
    pub fn run(
        &mut self,
        inputs: &[(&str, &DynValue)],
        on_host: &[&str],
    ) -> Result<BTreeMap<String, DynValue>, ModelError> {
        let error = |source: ort::Error| ModelError::Session { path: self.path.clone(), source };
        for (name, value) in inputs {
            self.binding.bind_input(*name, *value).map_err(error)?;
        }
        for output in self.outputs.iter().filter(|o| !self.in_place.contains(o)) {
            let memory = memory_for(self.target, on_host.contains(&output.as_str())).map_err(error)?;
            self.binding.bind_output_to_device(output.as_str(), &memory).map_err(error)?;
        }
        let mut results = self.session.run_binding(&self.binding).map_err(error)?;
        let mut values = BTreeMap::new();
        for output in self.outputs.iter().filter(|o| !self.in_place.contains(o)) {
            if let Some(value) = results.remove(output) {
                values.insert(output.clone(), value);
            }
        }
        Ok(values)
    }

    /// An allocator on the session's device (for tensors bound with
    /// [`BoundGraph::run_into`]).
    pub fn allocator(&self) -> Result<ort::memory::Allocator, ModelError> {
        let error = |source: ort::Error| ModelError::Session { path: self.path.clone(), source };
        match self.target {
            Target::Cpu => Ok(ort::memory::Allocator::default()),
            Target::Cuda(_) => {
                let memory = memory_for(self.target, false).map_err(error)?;
                ort::memory::Allocator::new(&self.session, memory).map_err(error)
            }
        }
    }
}

fn memory_for(target: Target, on_host: bool) -> ort::Result<MemoryInfo<'static>> {
    match (target, on_host) {
        (Target::Cpu, _) => Ok(MemoryInfo::default()),
        (Target::Cuda(_), true) => {
            MemoryInfo::new(AllocationDevice::CUDA_PINNED, 0, AllocatorType::Device, MemoryType::CPUOutput)
        }
        (Target::Cuda(id), false) => {
            MemoryInfo::new(AllocationDevice::CUDA, id, AllocatorType::Device, MemoryType::Default)
        }
    }
}
