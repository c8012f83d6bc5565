//! `[stages.report]`: the metrics' bootstrap and length control.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Section, ValueProblem};

/// `[stages.report]`: how `eval_results` is computed from `eval_items`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// Bootstrap resamples behind every 95 % interval.
    #[serde(default = "default_bootstrap")]
    pub bootstrap: u32,
    /// Seed of the bootstrap.
    #[serde(default)]
    pub seed: u64,
    /// L2 penalty on the length coefficient of the length-controlled win rate.
    #[serde(default = "default_lc_lambda")]
    pub lc_lambda: f64,
}

fn default_bootstrap() -> u32 {
    1000
}

fn default_lc_lambda() -> f64 {
    crate::vocab::stats::LC_LAMBDA
}

impl Section for ReportParams {
    fn value_problems(&self, problems: &mut Vec<ValueProblem>) {
        if self.bootstrap < 100 {
            problems.push(("stages.report.bootstrap".into(), "must be at least 100 resamples".into()));
        }
        if !self.lc_lambda.is_finite() || self.lc_lambda < 0.0 {
            problems.push(("stages.report.lc_lambda".into(), "must be a finite number >= 0".into()));
        }
    }
}
