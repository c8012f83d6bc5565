//! A reward bundle on ONNX Runtime: one scalar per (prompt, response), read
//! at the last real token of the chat template (left padding is harmless).

use ort::value::Tensor;

use super::bundle::{Bundle, BundleKind};
use super::graph::BoundGraph;
use super::runtime::{SessionConfig, resolve_target};
use super::tokenizer::ChatTokenizer;
use super::weights::Weights;
use super::{ModelError, tensor_error};

/// A loaded reward model.
pub struct RewardModel {
    /// The bundle.
    pub bundle: Bundle,
    /// Its tokenizer.
    pub tokenizer: ChatTokenizer,
    score: BoundGraph,
}

impl RewardModel {
    /// Loads the reward bundle: weights, tokenizer, the `score` session.
    pub fn load(bundle: Bundle, config: &SessionConfig) -> Result<RewardModel, ModelError> {
        bundle.expect_kind(BundleKind::Reward)?;
        let target = resolve_target(config)?;
        let weights = Weights::load(&bundle)?;
        let tokenizer = ChatTokenizer::load(&bundle)?;
        let score = BoundGraph::new(&bundle, "score", &weights, target, config.threads)?;
        Ok(RewardModel { bundle, tokenizer, score })
    }

    /// Scores token sequences (already encoded exchanges) in one batch.
    pub fn score_ids(&mut self, sequences: &[Vec<i64>]) -> Result<Vec<f32>, ModelError> {
        if sequences.is_empty() {
            return Ok(vec![]);
        }
        let width = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let pad = self.tokenizer.pad_token_id;
        let mut ids = Vec::with_capacity(sequences.len() * width);
        let mut mask = Vec::with_capacity(sequences.len() * width);
        for sequence in sequences {
            let padding = width - sequence.len();
            ids.extend(std::iter::repeat_n(pad, padding).chain(sequence.iter().copied()));
            mask.extend(std::iter::repeat_n(0i64, padding).chain(std::iter::repeat_n(1, sequence.len())));
        }
        let shape = [sequences.len(), width];
        let tensor = |data: Vec<i64>| {
            Tensor::from_array((shape, data)).map(|t| t.into_dyn()).map_err(|source| tensor_error("input", source))
        };
        let (ids, mask) = (tensor(ids)?, tensor(mask)?);
        let outputs = self.score.run(&[("input_ids", &ids), ("attention_mask", &mask)], &["score"])?;
        let (_, scores) =
            outputs["score"].try_extract_tensor::<f32>().map_err(|source| tensor_error("score", source))?;
        Ok(scores.to_vec())
    }

    /// Scores `(prompt, response)` texts in one batch.
    pub fn score(&mut self, exchanges: &[(&str, &str)]) -> Result<Vec<f32>, ModelError> {
        let sequences = exchanges
            .iter()
            .map(|(prompt, response)| self.tokenizer.encode_exchange(prompt, response).map(|(ids, _)| ids))
            .collect::<Result<Vec<_>, _>>()?;
        self.score_ids(&sequences)
    }
}
