//! One ONNX graph of a bundle as a session whose weight inputs are bound
//! once (IoBinding): on CUDA the weights are copied to the device once, and
//! outputs that feed the next call (the KV cache) can stay on the device.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::DynValue;

use super::ModelError;
use super::bundle::Bundle;
use super::runtime::{Target, session};
use super::weights::Weights;

/// A graph ready to run.
pub struct BoundGraph {
    path: PathBuf,
    session: Session,
    binding: IoBinding,
    target: Target,
    outputs: Vec<String>,
}

impl BoundGraph {
    /// Builds the session of graph `name`, checks its inputs and outputs
    /// against the manifest, and binds the weights.
    pub fn new(
        bundle: &Bundle,
        name: &str,
        weights: &Weights,
        target: Target,
        threads: usize,
    ) -> Result<Self, ModelError> {
        let spec = bundle
            .manifest
            .graphs
            .get(name)
            .ok_or_else(|| ModelError::Invalid { dir: bundle.dir.clone(), problem: format!("no `{name}` graph") })?;
        let path = bundle.file(&spec.file);
        let session = session(&path, target, threads)?;
        let expected_inputs: Vec<&str> = spec
            .inputs
            .iter()
            .map(|i| i.name.as_str())
            .chain(weights.tensors.iter().map(|(n, _)| n.as_str()))
            .collect();
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
                        "`{}` {what} do not match the manifest: {} expected, {} found; first difference at #{first}: expected {:?}, found {:?}",
                        spec.file,
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
        for (weight, value) in &weights.tensors {
            binding.bind_input(weight.as_str(), value).map_err(error)?;
        }
        let outputs = expected_outputs.iter().map(|s| s.to_string()).collect();
        Ok(BoundGraph { path, session, binding, target, outputs })
    }

    /// Runs the graph on `inputs` (the data inputs; weights are bound).
    /// Outputs named in `on_host` come back in host memory, the others stay
    /// where the execution provider put them.
    pub fn run(
        &mut self,
        inputs: &[(&str, &DynValue)],
        on_host: &[&str],
    ) -> Result<BTreeMap<String, DynValue>, ModelError> {
        let error = |source: ort::Error| ModelError::Session { path: self.path.clone(), source };
        for (name, value) in inputs {
            self.binding.bind_input(*name, *value).map_err(error)?;
        }
        for output in &self.outputs {
            let memory = memory_for(self.target, on_host.contains(&output.as_str())).map_err(error)?;
            self.binding.bind_output_to_device(output.as_str(), &memory).map_err(error)?;
        }
        let mut results = self.session.run_binding(&self.binding).map_err(error)?;
        let mut values = BTreeMap::new();
        for output in &self.outputs {
            if let Some(value) = results.remove(output) {
                values.insert(output.clone(), value);
            }
        }
        Ok(values)
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
