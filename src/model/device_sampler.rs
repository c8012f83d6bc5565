//! Sampling on the execution provider: the decode graph's logits stay on the
//! device and a small graph (built by `python -m tools.export sampler-graph`
//! and compiled in) applies temperature, top-k and top-p and draws each
//! row's token from one uniform per row, taken from that row's own RNG
//! stream. Two graphs, as the host sampler has two orders: with top-k or
//! top-p the candidates are sorted largest first (`sample_sorted.onnx`);
//! with temperature alone every token is a candidate in vocabulary order,
//! and nothing is sorted (`sample_index.onnx`). Only the token ids and their log-probs come back to the
//! host: `rows × 12` bytes a step instead of `rows × vocab × 4`.
//!
//! The rule is the host sampler's ([`super::sampling::next_token`]), in
//! float32: the same RNG draws, the same candidates; a draw that falls
//! within float32 rounding of a boundary may pick the neighbouring token.

use ort::session::Session;
use ort::value::{DynValue, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::runtime::{Target, session_from_memory};
use super::sampling::{Sampled, SamplingParams};
use super::values::host_f32;
use super::{ModelError, tensor_error};

/// The sampler graphs, compiled in.
const SORTED: (&str, &[u8]) = ("<croco>/src/model/sample_sorted.onnx", include_bytes!("sample_sorted.onnx"));
const INDEX: (&str, &[u8]) = ("<croco>/src/model/sample_index.onnx", include_bytes!("sample_index.onnx"));

/// Sessions of the sampler graphs on one device.
pub struct DeviceSampler {
    sorted: Session,
    index: Session,
    vocab: usize,
}

/// One row to draw for: its RNG stream, or `None` for a row whose draw is
/// not used (a free slot), which consumes no randomness.
pub type RowRng<'r> = Option<&'r mut ChaCha8Rng>;

impl DeviceSampler {
    /// The sampler for a vocabulary of `vocab` tokens on `target`.
    pub fn new(target: Target, threads: usize, vocab: usize) -> Result<DeviceSampler, ModelError> {
        let session = |(name, graph): (&str, &[u8])| session_from_memory(name, graph, target, threads);
        Ok(DeviceSampler { sorted: session(SORTED)?, index: session(INDEX)?, vocab })
    }

    /// Draws one token for each row of `logits` (`[rows, vocab]`, float32,
    /// on the device or the host) with `params`; rows without an RNG get
    /// `None`.
    pub fn draw(
        &mut self,
        logits: &DynValue,
        params: &SamplingParams,
        rngs: Vec<RowRng<'_>>,
    ) -> Result<Vec<Option<Sampled>>, ModelError> {
        let rows = rngs.len();
        let greedy = params.temperature <= 0.0;
        let drawing: Vec<bool> = rngs.iter().map(Option::is_some).collect();
        // One uniform per drawing row, as the host sampler draws (none when greedy).
        let uniforms: Vec<f32> = rngs
            .into_iter()
            .map(|rng| match (rng, greedy) {
                // f32 rounding must not reach 1: the draw would fall past the last candidate.
                (Some(rng), false) => (rng.random::<f64>() as f32).min(1.0 - f32::EPSILON / 2.0),
                _ => 0.0,
            })
            .collect();
        let inv_temperature = if greedy { 1.0 } else { (1.0 / params.temperature) as f32 };
        let top_k = params.top_k.map_or(self.vocab, |k| k.clamp(1, self.vocab)) as i64;
        let tensor =
            |result: ort::Result<Tensor<f32>>| result.map(Tensor::into_dyn).map_err(|e| tensor_error("input", e));
        let inv_temperature = tensor(Tensor::from_array(([rows], vec![inv_temperature; rows])))?;
        let top_p = tensor(Tensor::from_array((Vec::<usize>::new(), vec![params.top_p as f32])))?;
        let uniform = tensor(Tensor::from_array(([rows], uniforms)))?;
        let top_k = Tensor::from_array((Vec::<usize>::new(), vec![top_k])).map_err(|e| tensor_error("input", e))?;
        // The host sampler's condition for sorting (src/model/sampling.rs).
        let sorted = params.top_k.is_some() || params.top_p < 1.0;
        let (session, name) = if sorted { (&mut self.sorted, SORTED.0) } else { (&mut self.index, INDEX.0) };
        let error = |source| ModelError::Session { path: name.into(), source };
        let outputs = session
            .run(ort::inputs![
                "logits" => logits,
                "inv_temperature" => &inv_temperature,
                "top_k" => &top_k,
                "top_p" => &top_p,
                "uniform" => &uniform,
            ])
            .map_err(error)?;
        let ids = |name: &str| -> Result<Vec<i64>, ModelError> {
            Ok(outputs[name].try_extract_tensor::<i64>().map_err(|e| tensor_error(name, e))?.1.to_vec())
        };
        let (tokens, greedy_tokens) = (ids("token")?, ids("greedy")?);
        let logprobs = host_f32(&outputs["logprob"])?.1.to_vec();
        Ok((0..rows)
            .map(|r| match (drawing[r], greedy) {
                (false, _) => None,
                (true, true) => Some(Sampled { token: greedy_tokens[r], logprob: 0.0 }),
                (true, false) => Some(Sampled { token: tokens[r], logprob: f64::from(logprobs[r]) }),
            })
            .collect())
    }
}
