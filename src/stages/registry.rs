//! The one registry of stages: every [`StageName`] mapped to the [`Stage`]
//! that implements it. The stage graph (what each stage reads and writes)
//! is the spec's; what a stage needs and does is its own file's. Adding a
//! stage adds one line to [`stage`].

use futures::future::LocalBoxFuture;

use super::stage::{Stage, StageError, StageInput};
use super::{evaluate, generate, pairs, prompts, ref_logps, report, score, tune};
use crate::spec::{PipelineSpec, StageName};
use crate::store::manifest::Stats;
use crate::store::tables::TableWriter;
use crate::vocab::roles::ModelRole;

/// The implementation of `name`.
pub fn stage(name: StageName) -> &'static dyn Registered {
    match name {
        StageName::Prompts => &prompts::Prompts,
        StageName::Generate => &generate::Generate,
        StageName::Score => &score::Score,
        StageName::Pairs => &pairs::Pairs,
        StageName::RefLogps => &ref_logps::RefLogps,
        StageName::Tune => &tune::Tune,
        StageName::Evaluate => &evaluate::Evaluate,
        StageName::Report => &report::Report,
    }
}

/// A [`Stage`] behind a uniform, object-safe face, for the planner and runner.
pub trait Registered: Sync {
    /// The stage's resolved parameters as JSON (for keys and manifests), or
    /// `None` when the pipeline does not configure it.
    fn params(&self, spec: &PipelineSpec) -> Option<serde_json::Value>;

    /// The bundles the stage runs, by role.
    fn models(&self, spec: &PipelineSpec) -> Vec<(ModelRole, String)>;

    /// The files the stage reads from outside the storage root, with the
    /// pipeline key that names each.
    fn external_inputs(&self, spec: &PipelineSpec) -> Vec<(String, String)>;

    /// Whether the stage is split over shards of prompts in a sharded run:
    /// a stage that may be, when it runs a model.
    fn shardable(&self, spec: &PipelineSpec) -> bool;

    /// Resolves the stage's parameters from `spec` and runs it.
    fn run<'a>(
        &'a self,
        spec: &'a PipelineSpec,
        input: &'a StageInput<'a>,
        sink: &'a mut TableWriter,
    ) -> LocalBoxFuture<'a, Result<Stats, StageError>>;
}

impl<S: Stage> Registered for S {
    fn params(&self, spec: &PipelineSpec) -> Option<serde_json::Value> {
        S::params(spec).map(|params| serde_json::to_value(params).expect("stage parameters serialize to JSON"))
    }

    fn models(&self, spec: &PipelineSpec) -> Vec<(ModelRole, String)> {
        S::models(spec)
    }

    fn external_inputs(&self, spec: &PipelineSpec) -> Vec<(String, String)> {
        S::external_inputs(spec)
    }

    fn shardable(&self, spec: &PipelineSpec) -> bool {
        S::SHARDS && !S::models(spec).is_empty()
    }

    fn run<'a>(
        &'a self,
        spec: &'a PipelineSpec,
        input: &'a StageInput<'a>,
        sink: &'a mut TableWriter,
    ) -> LocalBoxFuture<'a, Result<Stats, StageError>> {
        Box::pin(async move {
            let params = S::params(spec).ok_or_else(|| StageError::Input {
                file: format!("[stages.{}]", S::NAME),
                problem: "the pipeline does not configure this stage".into(),
            })?;
            S::run(input, &params, sink).await
        })
    }
}
