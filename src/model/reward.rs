//! A reward bundle on ONNX Runtime: one scalar per (prompt, response), read
//! at the last real token of the chat template (rows are right-padded and
//! carry their length, so padding changes nothing).

use super::ModelError;
use super::bundle::{Bundle, BundleKind};
use super::graph::{BoundGraph, WeightFeed};
use super::runtime::{SessionConfig, resolve_target};
use super::tokenizer::ChatTokenizer;
use super::values::{host_f32, right_pad, sequence_lengths, tensor_i64};
use super::weights::Weights;

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
        let precision = bundle.precision_for("score", target)?;
        let weights = Weights::load(&bundle, precision, target)?;
        let tokenizer = ChatTokenizer::load(&bundle)?;
        let score = BoundGraph::new(&bundle, "score", &weights, target, config.threads, WeightFeed::Bound)?;
        Ok(RewardModel { bundle, tokenizer, score })
    }

    /// Scores token sequences (already encoded exchanges) in one batch.
    pub fn score_ids(&mut self, sequences: &[Vec<i64>]) -> Result<Vec<f32>, ModelError> {
        if sequences.is_empty() {
            return Ok(vec![]);
        }
        let rows: Vec<&[i64]> = sequences.iter().map(Vec::as_slice).collect();
        let (ids, count, width) = right_pad(&rows, self.tokenizer.pad_token_id);
        let (seqlens, total) = sequence_lengths(&rows, width)?;
        let ids = tensor_i64([count, width], ids)?;
        let inputs = [("input_ids", &ids), ("seqlens_k", &seqlens), ("total_sequence_length", &total)];
        let outputs = self.score.run(&inputs, &["score"])?;
        Ok(host_f32(&outputs["score"])?.1.to_vec())
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
