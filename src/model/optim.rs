//! The optimizer side of a training step, in Rust: global-norm clipping,
//! AdamW and the learning-rate schedule, all as PyTorch / transformers define
//! them so a croco run and a TRL run with the same settings take the same steps.
//!
//! Why not inside the ONNX graph: the graph returns gradients of one
//! micro-batch; gradient accumulation over micro-batches needs them outside
//! anyway, and LoRA parameters are few (0.26 M on the demo policy at r = 16,
//! ~20 M on an 8 B model), so an update over them costs well under 1 % of a
//! forward + backward pass (measured in `croco bench tune`).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How the learning rate moves over the run (after warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Half a cosine from the peak to 0: the recipe's.
    #[default]
    Cosine,
    /// Straight line from the peak to 0.
    Linear,
    /// The peak throughout.
    Constant,
}

/// AdamW (decoupled weight decay, bias-corrected moments), as `torch.optim.AdamW`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε added to √v̂.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Updates taken so far.
    pub steps: u64,
    /// First moments, one vector per parameter tensor.
    #[serde(skip)]
    pub m: Vec<Vec<f32>>,
    /// Second moments.
    #[serde(skip)]
    pub v: Vec<Vec<f32>>,
}

impl AdamW {
    /// Zero moments for parameter tensors of these sizes; torch's default betas and ε.
    pub fn new(sizes: &[usize], weight_decay: f64) -> AdamW {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            steps: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    /// One update of `params` with `grads` (same order and sizes as `new`) at learning rate `lr`.
    pub fn update(&mut self, params: &mut [&mut [f32]], grads: &[Vec<f32>], lr: f64) {
        self.steps += 1;
        let t = self.steps as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let correction1 = 1.0 - b1.powi(t);
        let correction2 = 1.0 - b2.powi(t);
        let step_size = (lr / correction1) as f32;
        let decay = (1.0 - lr * self.weight_decay) as f32;
        let (b1, b2, eps) = (b1 as f32, b2 as f32, self.eps as f32);
        let sqrt_c2 = correction2.sqrt() as f32;
        params.par_iter_mut().zip(grads.par_iter()).zip(self.m.par_iter_mut().zip(self.v.par_iter_mut())).for_each(
            |((p, g), (m, v))| {
                for i in 0..p.len() {
                    p[i] *= decay;
                    m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                    v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                    p[i] -= step_size * m[i] / (v[i].sqrt() / sqrt_c2 + eps);
                }
            },
        );
    }
}

/// The global L2 norm of `grads`; when `max_norm > 0` and the norm exceeds it,
/// scales them by `max_norm / (norm + 1e-6)` (as `torch.nn.utils.clip_grad_norm_`).
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    let squares: f64 = grads.par_iter().map(|g| g.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>()).sum();
    let norm = squares.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let factor = (max_norm / (norm + 1e-6)) as f32;
        grads.par_iter_mut().for_each(|g| g.iter_mut().for_each(|x| *x *= factor));
    }
    norm
}

/// Steps spent warming up: `ceil(total · ratio)`, as transformers' `get_warmup_steps`.
pub fn warmup_steps(total: u64, ratio: f64) -> u64 {
    (total as f64 * ratio).ceil() as u64
}

/// The learning rate of optimizer step `step` (0-based) out of `total`, as
/// transformers' `get_{cosine,linear,constant}_schedule_with_warmup`: linear
/// from 0 over `warmup` steps, then the schedule down to 0 at `total`.
pub fn learning_rate(schedule: LrSchedule, peak: f64, step: u64, total: u64, warmup: u64) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
    match schedule {
        LrSchedule::Cosine => peak * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        LrSchedule::Linear => peak * (1.0 - progress).max(0.0),
        LrSchedule::Constant => peak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_matches_transformers() {
        // get_cosine_schedule_with_warmup(opt, 2, 10) multipliers, from transformers 5.24.
        let expected = [0.0, 0.5, 1.0, 0.9619398, 0.8535534, 0.6913417, 0.5, 0.3086583, 0.1464466, 0.0380602];
        for (step, want) in expected.iter().enumerate() {
            let got = learning_rate(LrSchedule::Cosine, 1.0, step as u64, 10, 2);
            assert!((got - want).abs() < 1e-6, "step {step}: {got} vs {want}");
        }
        assert_eq!(warmup_steps(40, 0.05), 2);
        assert_eq!(warmup_steps(41, 0.05), 3);
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr() {
        // With bias correction the first Adam step is lr·sign(g) (|g| ≫ ε), after decay.
        let mut params = vec![1.0f32, -2.0, 0.5];
        let grads = vec![vec![0.3f32, -4.0, 1e-3]];
        let mut adam = AdamW::new(&[3], 0.01);
        adam.update(&mut [params.as_mut_slice()], &grads, 0.1);
        let expected = [1.0 * 0.999 - 0.1, -2.0 * 0.999 + 0.1, 0.5 * 0.999 - 0.1];
        for (got, want) in params.iter().zip(expected) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_reports_the_norm_before() {
        let mut grads = vec![vec![3.0f32], vec![4.0f32]];
        let norm = clip_grad_norm(&mut grads, 1.0);
        assert!((norm - 5.0).abs() < 1e-9);
        let after: f64 = grads.iter().map(|g| f64::from(g[0]).powi(2)).sum::<f64>().sqrt();
        assert!((after - 1.0).abs() < 1e-5);
        let mut small = vec![vec![0.1f32]];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small[0][0], 0.1);
    }
}
