//! Choosing the next token from logits: greedy, or temperature / top-k /
//! top-p sampling with a seeded RNG per (prompt, sample), so a rerun draws
//! the same tokens whatever else is in the batch.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sampling parameters (the recipe: temperature 1, top_p 1, no top_k).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus mass in (0, 1].
    pub top_p: f64,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
}

impl SamplingParams {
    /// Greedy decoding.
    pub const GREEDY: SamplingParams = SamplingParams { temperature: 0.0, top_p: 1.0, top_k: None };
}

/// The RNG of one sequence.
pub fn sequence_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Picks the next token id from one row of logits.
pub fn next_token(logits: &[f32], params: &SamplingParams, rng: &mut ChaCha8Rng) -> i64 {
    if params.temperature <= 0.0 {
        return argmax(logits) as i64;
    }
    if params.top_k.is_none() && params.top_p >= 1.0 {
        return sample_full(logits, params.temperature, rng);
    }
    // Candidates sorted by logit, best first; ties keep the lower id.
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if let Some(k) = params.top_k {
        order.truncate(k.max(1));
    }
    let best = f64::from(logits[order[0]]);
    let weights: Vec<f64> = order.iter().map(|&i| ((f64::from(logits[i]) - best) / params.temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut kept = weights.len();
    if params.top_p < 1.0 {
        let mut mass = 0.0;
        let last = weights.iter().position(|w| {
            mass += w / total;
            mass >= params.top_p
        });
        kept = last.map_or(weights.len(), |i| i + 1);
    }
    let kept_total: f64 = weights[..kept].iter().sum();
    let mut draw = rng.random::<f64>() * kept_total;
    for (i, weight) in weights[..kept].iter().enumerate() {
        draw -= weight;
        if draw < 0.0 {
            return order[i] as i64;
        }
    }
    order[kept - 1] as i64
}

/// Samples from the whole distribution in one pass over the vocabulary (the
/// recipe's setting: temperature 1, no top-k, top-p 1), without sorting.
fn sample_full(logits: &[f32], temperature: f64, rng: &mut ChaCha8Rng) -> i64 {
    let best = f64::from(logits[argmax(logits)]);
    let weight = |x: f32| ((f64::from(x) - best) / temperature).exp();
    let total: f64 = logits.iter().map(|&x| weight(x)).sum();
    let mut draw = rng.random::<f64>() * total;
    for (i, &x) in logits.iter().enumerate() {
        draw -= weight(x);
        if draw < 0.0 {
            return i as i64;
        }
    }
    argmax(logits) as i64
}

/// Index of the largest logit; the first one on ties (as torch's argmax).
pub fn argmax(logits: &[f32]) -> usize {
    logits.iter().enumerate().fold(0, |best, (i, &x)| if x > logits[best] { i } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        let mut rng = sequence_rng(0);
        assert_eq!(next_token(&[0.0, 5.0, 1.0], &SamplingParams::GREEDY, &mut rng), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_reproduce() {
        let logits = [0.5, 0.4, 0.3, 2.0, 0.1];
        let params = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: Some(1) };
        assert_eq!(next_token(&logits, &params, &mut sequence_rng(9)), 3);
        let free = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: None };
        let draw = |seed| {
            (0..20)
                .map(|_| 0)
                .scan(sequence_rng(seed), |rng, _| Some(next_token(&logits, &free, rng)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(4), draw(4));
        assert_ne!(draw(4), draw(5));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Token 0 holds ~88% of the mass: top_p 0.5 must always pick it.
        let logits = [3.0, 1.0, 0.0, -1.0];
        let params = SamplingParams { temperature: 1.0, top_p: 0.5, top_k: None };
        let mut rng = sequence_rng(1);
        assert!((0..200).all(|_| next_token(&logits, &params, &mut rng) == 0));
        // Without the cut, other tokens appear.
        let open = SamplingParams { top_p: 1.0, ..params };
        assert!((0..200).any(|_| next_token(&logits, &open, &mut rng) != 0));
    }
}
