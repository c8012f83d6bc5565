//! The statistics of the recipe's open-ended evaluation: win rate with ties
//! counted ½, the length-controlled win rate, and percentile-bootstrap
//! intervals. Pure functions over judged comparisons, so the evaluate stage
//! and the report compute the same numbers.
//!
//! Length control follows the recipe (and AlpacaEval's idea): a tuned model
//! that wins by writing longer answers should not get credit for the length.
//! Fit `P(win) = σ(θ + φ·tanh(Δlen / std(Δlen)))` by maximum likelihood with an
//! L2 penalty `λ·φ²/2` on the length coefficient only; the LC win rate is
//! `σ(θ)`, the win rate of a comparison with no length difference. Ties enter
//! the likelihood as half a win and half a loss.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How a judge decided one comparison of the tuned model against the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The tuned response is better.
    Win,
    /// Neither is better.
    Tie,
    /// The base response is better.
    Loss,
}

impl Outcome {
    /// The outcome as a score: win 1, tie ½, loss 0.
    pub fn score(self) -> f64 {
        match self {
            Outcome::Win => 1.0,
            Outcome::Tie => 0.5,
            Outcome::Loss => 0.0,
        }
    }

    /// The value of `eval_items.outcome`.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Win => "win",
            Outcome::Tie => "tie",
            Outcome::Loss => "loss",
        }
    }

    /// The outcome named `name` ([`Outcome::name`]).
    pub fn from_name(name: &str) -> Option<Outcome> {
        [Outcome::Win, Outcome::Tie, Outcome::Loss].into_iter().find(|o| o.name() == name)
    }
}

/// One judged comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judged {
    /// The verdict.
    pub outcome: Outcome,
    /// Tuned minus base response length, in tokens.
    pub length_delta: f64,
}

/// The penalty on the length coefficient the recipe uses.
pub const LC_LAMBDA: f64 = 1.0;

/// Win rate with ties counted ½; `NaN` for no comparisons.
pub fn win_rate(judged: &[Judged]) -> f64 {
    judged.iter().map(|j| j.outcome.score()).sum::<f64>() / judged.len() as f64
}

/// The length-controlled win rate `σ(θ)` (see the module doc), with L2
/// penalty `lambda` on φ. When the length differences do not vary
/// (std ≈ 0) or every comparison has the same outcome, it is the plain win rate.
pub fn lc_win_rate(judged: &[Judged], lambda: f64) -> f64 {
    let plain = win_rate(judged);
    if judged.is_empty() {
        return plain;
    }
    let n = judged.len() as f64;
    let mean = judged.iter().map(|j| j.length_delta).sum::<f64>() / n;
    let std = (judged.iter().map(|j| (j.length_delta - mean).powi(2)).sum::<f64>() / n).sqrt();
    let uniform = judged.iter().all(|j| j.outcome == judged[0].outcome);
    if std < 1e-9 || uniform {
        return plain;
    }
    let points: Vec<(f64, f64)> = judged.iter().map(|j| ((j.length_delta / std).tanh(), j.outcome.score())).collect();
    let (theta, _phi) = fit_logistic(&points, lambda);
    sigmoid(theta)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Newton's method on the penalised log-likelihood of `y ~ σ(θ + φ·x)` with
/// soft labels `y ∈ [0, 1]` and penalty `λ·φ²/2`. Two parameters: the
/// Hessian is a 2×2 matrix, inverted in closed form. Returns (θ, φ).
fn fit_logistic(points: &[(f64, f64)], lambda: f64) -> (f64, f64) {
    let (mut theta, mut phi) = (0.0f64, 0.0f64);
    for _ in 0..100 {
        let (mut g_theta, mut g_phi) = (0.0, -lambda * phi);
        let (mut h_tt, mut h_tp, mut h_pp) = (0.0, 0.0, lambda);
        for &(x, y) in points {
            let p = sigmoid(theta + phi * x);
            let w = p * (1.0 - p);
            g_theta += y - p;
            g_phi += (y - p) * x;
            h_tt += w;
            h_tp += w * x;
            h_pp += w * x * x;
        }
        let det = h_tt * h_pp - h_tp * h_tp;
        if det.abs() < 1e-12 {
            break;
        }
        let d_theta = (h_pp * g_theta - h_tp * g_phi) / det;
        let d_phi = (h_tt * g_phi - h_tp * g_theta) / det;
        theta += d_theta;
        phi += d_phi;
        if d_theta.abs().max(d_phi.abs()) < 1e-10 {
            break;
        }
    }
    (theta, phi)
}

/// A 95 % percentile-bootstrap interval of `statistic` over `items`
/// (`resamples` resamples with replacement, seeded). `(NaN, NaN)` for no items.
pub fn bootstrap_95<T: Copy>(items: &[T], statistic: impl Fn(&[T]) -> f64, resamples: usize, seed: u64) -> (f64, f64) {
    if items.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sample = Vec::with_capacity(items.len());
    let values: Vec<f64> = (0..resamples)
        .map(|_| {
            sample.clear();
            sample.extend((0..items.len()).map(|_| items[rng.random_range(0..items.len())]));
            statistic(&sample)
        })
        .collect();
    percentile_95(values)
}

/// The 2.5th and 97.5th percentiles of resampled statistics (nearest rank).
fn percentile_95(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.025), at(0.975))
}

/// The mean over strata of each stratum's mean (a stratum with no values is
/// left out); `NaN` when every stratum is empty.
pub fn mean_of_means(strata: &[Vec<f64>]) -> f64 {
    let means: Vec<f64> =
        strata.iter().filter(|s| !s.is_empty()).map(|s| s.iter().sum::<f64>() / s.len() as f64).collect();
    means.iter().sum::<f64>() / means.len() as f64
}

/// Percentile-bootstrap 95 % interval of [`mean_of_means`], resampling each
/// stratum on its own (its size kept), so every task weighs the same in
/// every resample as it does in the estimate.
pub fn stratified_bootstrap_95(strata: &[Vec<f64>], resamples: usize, seed: u64) -> (f64, f64) {
    if strata.iter().all(Vec::is_empty) {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sample: Vec<Vec<f64>> = strata.iter().map(|s| Vec::with_capacity(s.len())).collect();
    let values: Vec<f64> = (0..resamples)
        .map(|_| {
            for (drawn, stratum) in sample.iter_mut().zip(strata) {
                drawn.clear();
                drawn.extend((0..stratum.len()).map(|_| stratum[rng.random_range(0..stratum.len())]));
            }
            mean_of_means(&sample)
        })
        .collect();
    percentile_95(values)
}

/// What a 95 % interval says of a claim `value ≥ threshold` (or `>` when
/// `strict`): `Yes` when the whole interval satisfies it, `No` when none of
/// it does, `Unclear` when it straddles the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The interval lies wholly on the claim's side.
    Yes,
    /// The interval lies wholly on the other side.
    No,
    /// The interval contains the threshold.
    Unclear,
}

impl Verdict {
    /// The verdict of the interval `(low, high)` on `value ≥ threshold`
    /// (`value > threshold` when `strict`).
    pub fn of_interval((low, high): (f64, f64), threshold: f64, strict: bool) -> Verdict {
        let holds = |x: f64| if strict { x > threshold } else { x >= threshold };
        match (holds(low), holds(high)) {
            (true, true) => Verdict::Yes,
            (false, false) => Verdict::No,
            _ => Verdict::Unclear,
        }
    }

    /// `yes`, `no` or `unclear`.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Yes => "yes",
            Verdict::No => "no",
            Verdict::Unclear => "unclear",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(outcome: Outcome, length_delta: f64) -> Judged {
        Judged { outcome, length_delta }
    }

    #[test]
    fn all_ties_is_one_half_and_all_wins_is_one() {
        let ties: Vec<Judged> = (0..10).map(|i| judged(Outcome::Tie, i as f64)).collect();
        assert_eq!(win_rate(&ties), 0.5);
        assert_eq!(lc_win_rate(&ties, LC_LAMBDA), 0.5);
        let wins: Vec<Judged> = (0..10).map(|i| judged(Outcome::Win, i as f64 - 3.0)).collect();
        assert_eq!(win_rate(&wins), 1.0);
        assert_eq!(lc_win_rate(&wins, LC_LAMBDA), 1.0);
    }

    #[test]
    fn hand_computed_win_rate_counts_ties_as_half() {
        let mixed = [
            judged(Outcome::Win, 0.0),
            judged(Outcome::Tie, 0.0),
            judged(Outcome::Loss, 0.0),
            judged(Outcome::Win, 0.0),
        ];
        assert_eq!(win_rate(&mixed), 0.625);
        assert_eq!(lc_win_rate(&mixed, LC_LAMBDA), 0.625, "no length variation: LC equals the plain rate");
    }

    #[test]
    fn wins_bought_with_length_are_discounted() {
        // The tuned model wins whenever it is longer, loses when it is shorter,
        // and is longer 3 times out of 4; at equal length it is a coin flip. Raw: (30 + 5) / 50 = 0.7.
        let mut confounded = Vec::new();
        for i in 0..30 {
            confounded.push(judged(Outcome::Win, 20.0 + i as f64));
            if i % 3 == 0 {
                confounded.push(judged(Outcome::Loss, -20.0 - i as f64));
            }
        }
        for i in 0..10 {
            confounded.push(judged(if i % 2 == 0 { Outcome::Win } else { Outcome::Loss }, 0.0));
        }
        let raw = win_rate(&confounded);
        let lc = lc_win_rate(&confounded, LC_LAMBDA);
        assert_eq!(raw, 0.7);
        assert!(lc < raw - 0.1, "LC {lc} must fall well below the raw {raw}");
    }

    #[test]
    fn the_fit_recovers_a_known_intercept_without_length_effect() {
        // Wins 70 % at every length, lengths spread: φ ≈ 0, σ(θ) ≈ 0.7.
        let judged: Vec<Judged> = (0..200)
            .map(|i| judged(if i % 10 < 7 { Outcome::Win } else { Outcome::Loss }, ((i * 37) % 101) as f64 - 50.0))
            .collect();
        let lc = lc_win_rate(&judged, LC_LAMBDA);
        assert!((lc - 0.7).abs() < 0.03, "{lc}");
    }

    #[test]
    fn bootstrap_interval_brackets_the_estimate_and_is_reproducible() {
        let items: Vec<Judged> =
            (0..100).map(|i| judged(if i % 4 == 0 { Outcome::Loss } else { Outcome::Win }, 0.0)).collect();
        let (lo, hi) = bootstrap_95(&items, win_rate, 1000, 7);
        assert!(lo < 0.75 && 0.75 < hi && hi - lo < 0.25, "({lo}, {hi})");
        assert_eq!((lo, hi), bootstrap_95(&items, win_rate, 1000, 7));
        assert!(bootstrap_95::<Judged>(&[], win_rate, 10, 0).0.is_nan());
    }

    #[test]
    fn verdicts_follow_the_whole_interval() {
        // The demo's old pooled win rate, 53.3 % [46.7, 59.4], is not a win.
        assert_eq!(Verdict::of_interval((0.467, 0.594), 0.5, true), Verdict::Unclear);
        assert_eq!(Verdict::of_interval((0.51, 0.6), 0.5, true), Verdict::Yes);
        // All ties: [50, 50] is not above one half.
        assert_eq!(Verdict::of_interval((0.5, 0.5), 0.5, true), Verdict::No);
        assert_eq!(Verdict::of_interval((0.3, 0.45), 0.5, true), Verdict::No);
        // Held (Δ ≥ 0): no change at all holds; an interval reaching below 0 is unclear.
        assert_eq!(Verdict::of_interval((0.0, 0.0), 0.0, false), Verdict::Yes);
        assert_eq!(Verdict::of_interval((-0.01, 0.02), 0.0, false), Verdict::Unclear);
        assert_eq!(Verdict::of_interval((-0.05, -0.01), 0.0, false), Verdict::No);
    }

    #[test]
    fn mean_of_means_weighs_every_stratum_alike() {
        let strata = vec![vec![1.0, 0.0, 0.0, 0.0], vec![1.0], vec![]];
        assert_eq!(mean_of_means(&strata), 0.625);
        let (low, high) = stratified_bootstrap_95(&strata, 500, 3);
        // The second stratum never varies, so every resample is at least ½.
        assert!(low >= 0.5 && high <= 1.0 && low <= 0.625 && 0.625 <= high, "{low} {high}");
        let constant = vec![vec![0.0; 5], vec![0.0; 3]];
        assert_eq!(stratified_bootstrap_95(&constant, 100, 0), (0.0, 0.0));
    }
}
