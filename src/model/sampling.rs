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

/// A drawn token and its log-probability under the distribution it was
/// drawn from (temperature, top-k and top-p applied; 0 for greedy): the
/// behaviour policy's log-prob that off-policy corrections divide by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// The token id.
    pub token: i64,
    /// Its log-probability under the sampling distribution.
    pub logprob: f64,
}

/// Picks the next token id from one row of logits.
pub fn next_token(logits: &[f32], params: &SamplingParams, rng: &mut ChaCha8Rng) -> Sampled {
    if params.temperature <= 0.0 {
        return Sampled { token: argmax(logits) as i64, logprob: 0.0 };
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
    let chosen = |i: usize| Sampled { token: order[i] as i64, logprob: (weights[i] / kept_total).ln() };
    let mut draw = rng.random::<f64>() * kept_total;
    for (i, weight) in weights[..kept].iter().enumerate() {
        draw -= weight;
        if draw < 0.0 {
            return chosen(i);
        }
    }
    chosen(kept - 1)
}

/// Samples from the whole distribution in one pass over the vocabulary (the
/// recipe's setting: temperature 1, no top-k, top-p 1), without sorting.
fn sample_full(logits: &[f32], temperature: f64, rng: &mut ChaCha8Rng) -> Sampled {
    let best = f64::from(logits[argmax(logits)]);
    let scaled = |x: f32| (f64::from(x) - best) / temperature;
    let total: f64 = logits.iter().map(|&x| scaled(x).exp()).sum();
    let chosen = |i: usize| Sampled { token: i as i64, logprob: scaled(logits[i]) - total.ln() };
    let mut draw = rng.random::<f64>() * total;
    for (i, &x) in logits.iter().enumerate() {
        draw -= scaled(x).exp();
        if draw < 0.0 {
            return chosen(i);
        }
    }
    chosen(argmax(logits))
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
        assert_eq!(next_token(&[0.0, 5.0, 1.0], &SamplingParams::GREEDY, &mut rng), Sampled { token: 1, logprob: 0.0 });
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_reproduce() {
        let logits = [0.5, 0.4, 0.3, 2.0, 0.1];
        let params = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: Some(1) };
        assert_eq!(next_token(&logits, &params, &mut sequence_rng(9)), Sampled { token: 3, logprob: 0.0 });
        let free = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: None };
        let draw = |seed| {
            (0..20)
                .map(|_| 0)
                .scan(sequence_rng(seed), |rng, _| Some(next_token(&logits, &free, rng).token))
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
        assert!((0..200).all(|_| next_token(&logits, &params, &mut rng).token == 0));
        // Without the cut, other tokens appear.
        let open = SamplingParams { top_p: 1.0, ..params };
        assert!((0..200).any(|_| next_token(&logits, &open, &mut rng).token != 0));
    }

    #[test]
    fn the_logprob_is_the_sampling_distributions() {
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let log_softmax = |t: f64, keep: usize| -> Vec<f64> {
            let z: f64 = logits[..keep].iter().map(|&x| (f64::from(x) / t).exp()).sum();
            logits[..keep].iter().map(|&x| f64::from(x) / t - z.ln()).collect()
        };
        let mut rng = sequence_rng(3);
        for (params, keep) in [
            (SamplingParams { temperature: 1.0, top_p: 1.0, top_k: None }, 4),
            (SamplingParams { temperature: 0.7, top_p: 1.0, top_k: None }, 4),
            (SamplingParams { temperature: 1.0, top_p: 1.0, top_k: Some(2) }, 2),
        ] {
            let expected = log_softmax(params.temperature, keep);
            for _ in 0..50 {
                let drawn = next_token(&logits, &params, &mut rng);
                let want = expected[drawn.token as usize];
                assert!((drawn.logprob - want).abs() < 1e-12, "{params:?}: {drawn:?} vs {want}");
            }
        }
    }
}
