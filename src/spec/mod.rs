//! The pipeline file format (`pipelines/*.toml`): the document root, one
//! file per section (`[run]`, `[models]`, one per stage, mirroring
//! `src/stages/`), each with its types, defaults and value checks, and the
//! stage graph: which stages exist, which table each writes and which it
//! reads.
//!
//! Parsing with positions lives in `pipeline::validate`; this layer only
//! says what a valid pipeline is.

pub mod common;
pub mod evaluate;
pub mod generate;
pub mod models;
pub mod pairs;
pub mod prompts;
pub mod ref_logps;
pub mod report;
pub mod run;
pub mod score;
pub mod tune;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use self::common::{Section, ValueProblem};
use self::models::ModelsSpec;
use self::run::RunSpec;
use crate::store::Table;
use crate::vocab::roles::ModelRole;

/// The name of the pipeline without its `[variants.NAME]` overlays, beside
/// the variants' names (a variant may not take it).
pub const BASE_VARIANT: &str = "base";

/// A whole pipeline file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Run identity, storage root and languages.
    pub run: RunSpec,
    /// Model bundles by role.
    #[serde(default)]
    pub models: ModelsSpec,
    /// One section per stage; a stage without a section is not part of the pipeline.
    pub stages: StagesSpec,
}

/// Reads one `[stages.NAME]` section, typed; `pipeline::validate` reads
/// them from a spanned document so that each mistake keeps its position.
pub trait SectionReader {
    /// The section at dotted `key` (`stages.tune`): `None` when it is absent
    /// or could not be read (the reader records why).
    fn section<T: DeserializeOwned>(&mut self, key: &str) -> Option<T>;
}

/// The stages: one entry each, in dependency order, naming the stage, its
/// section (`[stages.<field>]`, whose name is the stage's name), the table
/// it writes and the tables it reads. This is the only list of stages in
/// the spec layer; `stages::registry` maps each name to its implementation.
macro_rules! stage_sections {
    ($(
        $(#[$variant_doc:meta])*
        $variant:ident {
            $(#[$field_doc:meta])*
            $field:ident: $params:ty,
            writes: $writes:ident,
            reads: [$($reads:ident),*] $(,)?
        }
    )*) => {
        /// The stages, in dependency order.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum,
        )]
        #[serde(rename_all = "snake_case")]
        pub enum StageName {
            $($(#[$variant_doc])* $variant,)*
        }

        impl StageName {
            /// Every stage, in dependency order.
            pub const ALL: &'static [StageName] = &[$(StageName::$variant),*];

            /// The stage's name in pipeline files and messages.
            pub fn name(self) -> &'static str {
                match self {
                    $(StageName::$variant => stringify!($field),)*
                }
            }

            /// The table the stage writes.
            pub fn writes(self) -> Table {
                match self {
                    $(StageName::$variant => Table::$writes,)*
                }
            }

            /// The tables the stage reads, each written by an earlier stage.
            pub fn reads(self) -> &'static [Table] {
                match self {
                    $(StageName::$variant => &[$(Table::$reads),*],)*
                }
            }
        }

        /// `[stages.*]`: the parameters of each stage.
        #[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct StagesSpec {
            $($(#[$field_doc])* pub $field: Option<$params>,)*
        }

        impl StagesSpec {
            /// Reads every stage section through `reader`.
            pub fn read(reader: &mut impl SectionReader) -> StagesSpec {
                StagesSpec { $($field: reader.section(concat!("stages.", stringify!($field))),)* }
            }

            /// The configured sections, in dependency order.
            fn sections(&self) -> Vec<(StageName, &dyn Section)> {
                let mut sections: Vec<(StageName, &dyn Section)> = Vec::new();
                $(if let Some(section) = &self.$field {
                    sections.push((StageName::$variant, section));
                })*
                sections
            }
        }
    };
}

stage_sections! {
    /// Ingest prompts.
    Prompts {
        /// Prompt ingestion.
        prompts: prompts::PromptsParams,
        writes: Prompts,
        reads: [],
    }
    /// Generate (or import) responses.
    Generate {
        /// Response generation (or import).
        generate: generate::GenerateParams,
        writes: Generations,
        reads: [Prompts],
    }
    /// Score (or import rewards for) responses.
    Score {
        /// Reward scoring (or import).
        score: score::ScoreParams,
        writes: Scores,
        reads: [Prompts, Generations],
    }
    /// Build preference pairs.
    Pairs {
        /// Preference pairs.
        pairs: pairs::PairsParams,
        writes: Pairs,
        reads: [Prompts, Generations, Scores],
    }
    /// Reference log-probs of the pairs.
    RefLogps {
        /// Reference log-probs of the pairs.
        ref_logps: ref_logps::RefLogpsParams,
        writes: RefLogps,
        reads: [Pairs],
    }
    /// DPO with LoRA on the pairs.
    Tune {
        /// DPO tuning with LoRA.
        tune: tune::TuneParams,
        writes: TrainLog,
        reads: [Pairs, RefLogps],
    }
    /// Base against tuned: multiple-choice tasks and judged open-ended answers.
    Evaluate {
        /// Evaluation of the tuned policy against its base.
        evaluate: evaluate::EvaluateParams,
        writes: EvalItems,
        reads: [Prompts, TrainLog],
    }
    /// Metrics with intervals from the evaluation's items.
    Report {
        /// Metrics of the evaluation.
        report: report::ReportParams,
        writes: EvalResults,
        reads: [EvalItems],
    }
}

impl StageName {
    /// The tables the stage cannot run without. Evaluate reads the prompts
    /// only for its judge and the tuned adapter from `train_log` only when
    /// the pipeline tunes (else `models.policy_adapter` names it); those
    /// cases are checked in [`StagesSpec::dependency_problems`].
    pub fn required_reads(self) -> &'static [Table] {
        match self {
            StageName::Evaluate => &[],
            _ => self.reads(),
        }
    }

    /// The stage that writes `table`.
    pub fn writer_of(table: Table) -> Option<StageName> {
        StageName::ALL.iter().copied().find(|stage| stage.writes() == table)
    }
}

impl std::fmt::Display for StageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl StagesSpec {
    /// Whether the pipeline configures `stage`.
    pub fn configured(&self, stage: StageName) -> bool {
        self.sections().iter().any(|(name, _)| *name == stage)
    }

    /// The truncation shared by `ref_logps` and `tune`: the tune stage cuts
    /// every pair exactly as the reference log-probs were computed.
    pub fn truncation(&self) -> ref_logps::RefLogpsParams {
        self.ref_logps.clone().unwrap_or_default()
    }

    /// Checks each configured stage's values (ranges, formats).
    pub fn value_problems(&self) -> Vec<ValueProblem> {
        let mut problems = Vec::new();
        for (_, section) in self.sections() {
            section.value_problems(&mut problems);
        }
        problems
    }

    /// Checks that every stage has the bundles it runs (`generate` without
    /// an import needs `models.policy`, `score` without one `models.reward`,
    /// ...), and that evaluate has a tuned policy to compare.
    pub fn model_problems(&self, models: &ModelsSpec) -> Vec<ValueProblem> {
        let mut problems = Vec::new();
        for (_, section) in self.sections() {
            section.model_problems(models, &mut problems);
        }
        if self.evaluate.is_some() && self.tune.is_none() && models.policy_adapter.is_none() {
            problems.push((
                "stages.evaluate".into(),
                "compares a tuned policy with its base: add a [stages.tune] section or set `policy_adapter` in [models]"
                    .into(),
            ));
        }
        problems
    }

    /// Checks every token budget against the context of the bundle it runs
    /// on (`contexts`: the bundles whose manifest could be read): new tokens
    /// must leave room for a prompt, and the DPO truncation's `max_length`
    /// must fit the policy and the reference.
    pub fn context_problems(&self, contexts: &common::ModelContexts) -> Vec<ValueProblem> {
        let mut problems = Vec::new();
        for (_, section) in self.sections() {
            section.context_problems(contexts, &mut problems);
        }
        if self.ref_logps.is_some() || self.tune.is_some() {
            let max_length = self.truncation().max_length as usize;
            for role in [ModelRole::Policy, ModelRole::Reference] {
                if let Some(&context) = contexts.get(&role)
                    && max_length > context
                {
                    problems.push((
                        "stages.ref_logps.max_length".into(),
                        format!(
                            "{max_length} tokens exceed the `{role}` bundle's context of {context} positions \
                             (architecture.max_position_embeddings)"
                        ),
                    ));
                }
            }
        }
        problems
    }

    /// Checks that every configured stage has the stages it reads from.
    pub fn dependency_problems(&self) -> Vec<ValueProblem> {
        let mut problems = Vec::new();
        for (stage, _) in self.sections() {
            for needed in stage.required_reads().iter().filter_map(|t| StageName::writer_of(*t)) {
                if !self.configured(needed) {
                    problems.push((
                        format!("stages.{stage}"),
                        format!("needs the `{needed}` stage: add a [stages.{needed}] section"),
                    ));
                }
            }
        }
        let judge = self.evaluate.as_ref().and_then(|e| e.judge.as_ref());
        if judge.is_some_and(|j| j.prompts.is_none()) && self.prompts.is_none() {
            problems.push((
                "stages.evaluate.judge".into(),
                "answers the prompts' eval split: add a [stages.prompts] section (or [stages.evaluate.judge.prompts])"
                    .into(),
            ));
        }
        problems
    }
}
