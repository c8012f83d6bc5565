//! The pipeline file format (`pipelines/*.toml`): typed sections, their
//! defaults, and the value checks serde cannot express.
//!
//! Parsing with positions lives in [`super::validate`]; this module only says
//! what a valid pipeline is.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::eval_spec::{
    ChoiceColumns, ChoicePrompt, ChoiceTask, EvaluateParams, JudgeKind, JudgeParams, JudgePromptColumns, JudgePrompts,
    OptionFields, ReportParams,
};
use crate::stages::StageName;

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

/// `[run]`: what the pipeline is called, where its tables live, which languages it covers.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Name of the run (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Storage root: `file://…`, a path relative to the pipeline file, `memory://NAME`,
    /// `s3://bucket/prefix`, `gs://bucket/prefix` or `az://container/prefix`.
    pub root: String,
    /// ISO 639-1 codes of the languages the pipeline covers; prompts in other languages are dropped (and counted).
    pub languages: Vec<String>,
    /// Object-store options (`endpoint`, `region`, `allow_http`, ...) overriding the provider's
    /// environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`). Keep secrets in the environment, not here.
    #[serde(default)]
    pub storage: crate::store::storage::StorageOptions,
    /// Retries of object-store requests (cloud roots and inputs).
    #[serde(default)]
    pub retry: crate::store::storage::RetrySpec,
    /// Where model stages run: `auto` (CUDA when its provider loads, else CPU), `cpu` or `cuda`.
    /// Not part of any table key.
    #[serde(default)]
    pub device: crate::model::runtime::Device,
    /// CUDA device id.
    #[serde(default)]
    pub device_id: i32,
    /// Intra-op threads of each ONNX Runtime session (0: ONNX Runtime's default).
    #[serde(default)]
    pub threads: usize,
    /// Seconds after the last heartbeat when another run may take over this run's lock.
    #[serde(default = "default_lock_ttl_s")]
    pub lock_ttl_s: u64,
    /// Online preference optimisation: R rounds of generate (with the previous
    /// round's adapter) → score → pairs → ref_logps → tune (continuing from
    /// it) → evaluate, round r answering slice r of R of the training prompts,
    /// so R rounds see as many pairs as one offline round. 1 (the default) is offline.
    #[serde(default = "default_rounds")]
    pub rounds: u32,
}

fn default_rounds() -> u32 {
    1
}

fn default_lock_ttl_s() -> u64 {
    600
}

/// `[models]`: model bundle directories by role (paths relative to the pipeline file, or URLs).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelsSpec {
    /// The policy that generates and is tuned.
    pub policy: Option<String>,
    /// A LoRA adapter (PEFT directory: `adapter_model.safetensors` + `adapter_config.json`,
    /// a path or an object-store URL) applied to the policy wherever it runs: merged into its
    /// weights when the sessions are built. Its checksum enters every key that uses the policy.
    pub policy_adapter: Option<String>,
    /// The reward model that scores responses.
    pub reward: Option<String>,
    /// The reference policy of DPO (defaults to the policy).
    pub reference: Option<String>,
    /// A second policy whose responses are the off-policy source.
    pub off_policy: Option<String>,
    /// The policy bundle that judges open-ended responses pairwise
    /// (`[stages.evaluate.judge] kind = "pairwise"`).
    pub judge: Option<String>,
}

/// `[stages.*]`: the parameters of each stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StagesSpec {
    /// Prompt ingestion.
    pub prompts: Option<PromptsParams>,
    /// Response generation (or import).
    pub generate: Option<GenerateParams>,
    /// Reward scoring (or import).
    pub score: Option<ScoreParams>,
    /// Preference pairs.
    pub pairs: Option<PairsParams>,
    /// Reference log-probs of the pairs.
    pub ref_logps: Option<RefLogpsParams>,
    /// DPO tuning with LoRA.
    pub tune: Option<TuneParams>,
    /// Evaluation of the tuned policy against its base.
    pub evaluate: Option<EvaluateParams>,
    /// Metrics of the evaluation.
    pub report: Option<ReportParams>,
}

/// A tabular input file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// Newline-delimited JSON objects.
    Jsonl,
    /// Comma-separated values with a header line.
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// The format implied by a file name's extension.
    pub fn from_extension(location: &str) -> Option<FileFormat> {
        let lower = location.to_ascii_lowercase();
        if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") || lower.ends_with(".json") {
            Some(FileFormat::Jsonl)
        } else if lower.ends_with(".csv") {
            Some(FileFormat::Csv)
        } else if lower.ends_with(".parquet") {
            Some(FileFormat::Parquet)
        } else {
            None
        }
    }
}

/// `[stages.prompts]`: where prompts come from and how to read them.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptsParams {
    /// Input file: a path relative to the pipeline file, or an object-store URL.
    pub source: String,
    /// Input format; inferred from the extension when absent.
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// Which input columns hold the fields.
    #[serde(default)]
    pub columns: PromptColumns,
    /// Share of source prompts held out for evaluation, in [0, 1).
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
    /// Seed of the train/eval split.
    #[serde(default)]
    pub split_seed: u64,
}

fn default_eval_fraction() -> f64 {
    0.1
}

/// Column mapping of the prompt input.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PromptColumns {
    /// Column holding the prompt text.
    pub text: String,
    /// Column holding the ISO 639-1 language code.
    pub language: String,
    /// Column linking translations of one source prompt; without it each prompt is its own source.
    pub source_id: Option<String>,
}

impl Default for PromptColumns {
    fn default() -> Self {
        PromptColumns { text: "text".into(), language: "language".into(), source_id: None }
    }
}

/// Where a set of responses came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResponseSource {
    /// Sampled from the policy being tuned.
    #[default]
    OnPolicy,
    /// From another model or dataset.
    OffPolicy,
}

impl ResponseSource {
    /// The value stored in the `source` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseSource::OnPolicy => "on_policy",
            ResponseSource::OffPolicy => "off_policy",
        }
    }
}

/// One of `count` disjoint slices of the prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptSlice {
    /// 0-based index, below `count`.
    pub index: u32,
    /// Number of slices.
    pub count: u32,
}

impl PromptSlice {
    /// Whether `prompt_id` falls in this slice. The hash differs from the
    /// shards' so a round's slice spreads evenly over shards.
    pub fn contains(&self, prompt_id: &str) -> bool {
        let u = crate::ids::unit_interval(7, &format!("round-slice:{prompt_id}"));
        (u * f64::from(self.count)) as u32 == self.index
    }
}

/// Which bundle the generate stage samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SamplingModel {
    /// `models.policy` (with its adapter): on-policy responses.
    #[default]
    Policy,
    /// `models.off_policy`: another model's responses, `source = 'off_policy'`.
    OffPolicy,
}

impl SamplingModel {
    fn is_policy(&self) -> bool {
        *self == SamplingModel::Policy
    }
}

/// `[stages.generate]`: sampling parameters, or an import of existing responses.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    /// Import responses from a file instead of sampling the policy.
    #[serde(default)]
    pub import: Option<GenerationsImport>,
    /// Answer only this slice of the prompts (by a hash of `prompt_id`); the
    /// online rounds set it, round r answering slice r of R.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_slice: Option<PromptSlice>,
    /// Responses imported in addition to the sampled (or imported) ones, e.g.
    /// off-policy responses beside the policy's own for a mixed-pairs ablation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub also_import: Option<GenerationsImport>,
    /// Which bundle samples: `policy` (on-policy, the default) or `off_policy`
    /// (`models.off_policy`). Left out of keys when it is the default, so
    /// existing versions stay current.
    #[serde(default, skip_serializing_if = "SamplingModel::is_policy")]
    pub model: SamplingModel,
    /// Responses per prompt (the recipe: 64).
    #[serde(default = "default_samples")]
    pub samples: u32,
    /// Sampling temperature (the recipe: 1.0).
    #[serde(default = "one")]
    pub temperature: f64,
    /// Nucleus mass (the recipe: 1.0).
    #[serde(default = "one")]
    pub top_p: f64,
    /// Top-k cut-off (the recipe: none).
    #[serde(default)]
    pub top_k: Option<u32>,
    /// New-token limit (the recipe: 4096).
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: u32,
    /// Base seed; each (prompt, sample) derives its own.
    #[serde(default)]
    pub seed: u64,
    /// Prompts per batch (each expands to `samples` rows after prefill).
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Which prompts to answer: the `train` split (default), `eval`, or `all`.
    #[serde(default)]
    pub split: SplitFilter,
    /// Prompts per committed part: a crashed run resumes after the last committed part.
    #[serde(default = "default_prompts_per_part")]
    pub prompts_per_part: u32,
}

fn default_prompts_per_part() -> u32 {
    64
}

/// Which split of the prompts table a stage reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SplitFilter {
    /// Training prompts.
    #[default]
    Train,
    /// Held-out prompts.
    Eval,
    /// Every prompt.
    All,
}

impl SplitFilter {
    /// SQL condition on the split column `column` (e.g. `split`, `p.split`).
    pub fn sql(self, column: &str) -> String {
        match self {
            SplitFilter::Train => format!("{column} = 'train'"),
            SplitFilter::Eval => format!("{column} = 'eval'"),
            SplitFilter::All => "TRUE".into(),
        }
    }
}

fn default_samples() -> u32 {
    64
}
fn one() -> f64 {
    1.0
}
fn default_max_new_tokens() -> u32 {
    4096
}
fn default_batch_size() -> u32 {
    8
}

/// `[stages.generate.import]`: responses made elsewhere.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerationsImport {
    /// Input file: a path relative to the pipeline file, or an object-store URL.
    pub path: String,
    /// Input format; inferred from the extension when absent.
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// Which input columns hold the fields.
    #[serde(default)]
    pub columns: GenerationColumns,
    /// Whether these responses count as the policy's own.
    #[serde(default)]
    pub source: ResponseSource,
    /// Identity recorded in `policy_id` (default: `import:` + the file name).
    #[serde(default)]
    pub label: Option<String>,
}

/// Column mapping of a generations import.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationColumns {
    /// Column holding the prompt id (as computed by the prompts stage).
    pub prompt_id: String,
    /// Column holding the response text.
    pub text: String,
    /// Column holding the sample index.
    pub sample_idx: String,
}

impl Default for GenerationColumns {
    fn default() -> Self {
        GenerationColumns { prompt_id: "prompt_id".into(), text: "text".into(), sample_idx: "sample_idx".into() }
    }
}

/// `[stages.score]`: reward scoring, or an import of existing rewards.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreParams {
    /// Import rewards from a file instead of running the reward model.
    #[serde(default)]
    pub import: Option<ScoresImport>,
    /// Sequences per batch (batches are formed from sequences of similar length).
    #[serde(default = "default_score_batch_size")]
    pub batch_size: u32,
    /// Generations per committed part: a crashed run resumes after the last committed part.
    #[serde(default = "default_rows_per_part")]
    pub rows_per_part: u32,
}

fn default_rows_per_part() -> u32 {
    2048
}

fn default_score_batch_size() -> u32 {
    16
}

/// `[stages.score.import]`: rewards computed elsewhere, matched to generations
/// by (prompt_id, sample_idx).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoresImport {
    /// Input file: a path relative to the pipeline file, or an object-store URL.
    pub path: String,
    /// Input format; inferred from the extension when absent.
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// Which input columns hold the fields.
    #[serde(default)]
    pub columns: ScoreColumns,
    /// Identity recorded in `reward_model` (default: `import:` + the file name).
    #[serde(default)]
    pub label: Option<String>,
}

/// Column mapping of a scores import.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreColumns {
    /// Column holding the prompt id.
    pub prompt_id: String,
    /// Column holding the sample index.
    pub sample_idx: String,
    /// Column holding the reward.
    pub reward: String,
}

impl Default for ScoreColumns {
    fn default() -> Self {
        ScoreColumns { prompt_id: "prompt_id".into(), sample_idx: "sample_idx".into(), reward: "reward".into() }
    }
}

/// Which responses form one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoolScope {
    /// One pool per (prompt, language).
    #[default]
    InLang,
    /// One pool per source prompt across all its languages.
    AllLang,
}

/// The reward the rejected response should be closest to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectedTarget {
    /// mean − 2·std (population std) of the pool: the recipe's rule.
    #[default]
    #[serde(rename = "mean_minus_2std")]
    MeanMinus2std,
    /// First quartile of the pool (linear interpolation, as numpy's default).
    Q1,
    /// The pool's minimum.
    Min,
}

/// `[stages.pairs]`: the pair rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PairsParams {
    /// Pool scope.
    #[serde(default)]
    pub pool: PoolScope,
    /// Target of the rejected response.
    #[serde(default)]
    pub rejected: RejectedTarget,
    /// Pairs whose reward gap is below this are dropped (and counted).
    #[serde(default)]
    pub min_margin: f64,
    /// Where the chosen response may come from (the mixed on/off-policy ablation).
    #[serde(default, skip_serializing_if = "SourceFilter::is_any")]
    pub chosen_source: SourceFilter,
    /// Where the rejected response may come from.
    #[serde(default, skip_serializing_if = "SourceFilter::is_any")]
    pub rejected_source: SourceFilter,
}

/// Which responses of a pool may take a role in its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceFilter {
    /// Every response (the recipe).
    #[default]
    Any,
    /// The policy's own.
    OnPolicy,
    /// Another model's or dataset's.
    OffPolicy,
}

impl SourceFilter {
    fn is_any(&self) -> bool {
        *self == SourceFilter::Any
    }

    /// The value `sql/pairs.sql` compares with the `source` column.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFilter::Any => "any",
            SourceFilter::OnPolicy => "on_policy",
            SourceFilter::OffPolicy => "off_policy",
        }
    }
}

/// `[stages.ref_logps]`: the reference model's log-probs of every pair, and
/// the truncation that the tune stage applies identically.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefLogpsParams {
    /// Longest sequence (prompt + response, in tokens). Longer pairs lose prompt tokens from
    /// the left first (down to `max_prompt_length`), then response tokens from the right.
    #[serde(default = "default_max_length")]
    pub max_length: u32,
    /// Prompt tokens kept when a sequence must be shortened.
    #[serde(default = "default_max_prompt_length")]
    pub max_prompt_length: u32,
    /// Sequences per batch (batches are formed from sequences of similar length).
    #[serde(default = "default_score_batch_size")]
    pub batch_size: u32,
    /// Pairs per committed part: a crashed run resumes after the last committed part.
    #[serde(default = "default_rows_per_part")]
    pub rows_per_part: u32,
}

fn default_max_length() -> u32 {
    1024
}

fn default_max_prompt_length() -> u32 {
    512
}

impl Default for RefLogpsParams {
    fn default() -> Self {
        RefLogpsParams {
            max_length: default_max_length(),
            max_prompt_length: default_max_prompt_length(),
            batch_size: default_score_batch_size(),
            rows_per_part: default_rows_per_part(),
        }
    }
}

/// The DPO loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DpoLoss {
    /// −log σ(β·h), with label smoothing ε: the recipe's loss (TRL `sigmoid`).
    #[default]
    Sigmoid,
    /// (h − 1/(2β))² on length-normalised log-probs (TRL `ipo`).
    Ipo,
}

/// How the learning rate moves over the run (after warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
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

/// `[stages.tune.lora]`: the adapter.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraParams {
    /// Rank r.
    #[serde(default = "default_lora_rank")]
    pub rank: u32,
    /// α; the update is scaled by α / r.
    #[serde(default = "default_lora_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter's input.
    #[serde(default = "default_lora_dropout")]
    pub dropout: f64,
    /// Modules that get an adapter (a subset of the bundle's `[lora].target_modules`).
    #[serde(default = "default_lora_targets")]
    pub target_modules: Vec<String>,
}

fn default_lora_rank() -> u32 {
    16
}

fn default_lora_alpha() -> f64 {
    32.0
}

fn default_lora_dropout() -> f64 {
    0.05
}

fn default_lora_targets() -> Vec<String> {
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map(String::from).to_vec()
}

impl Default for LoraParams {
    fn default() -> Self {
        LoraParams {
            rank: default_lora_rank(),
            alpha: default_lora_alpha(),
            dropout: default_lora_dropout(),
            target_modules: default_lora_targets(),
        }
    }
}

/// `[stages.tune]`: offline DPO with LoRA. Defaults are the recipe's.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TuneParams {
    /// Loss.
    #[serde(default)]
    pub loss: DpoLoss,
    /// β of DPO.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Label smoothing ε of the sigmoid loss (conservative DPO); 0 = plain DPO.
    #[serde(default)]
    pub label_smoothing: f64,
    /// The adapter.
    #[serde(default)]
    pub lora: LoraParams,
    /// Peak learning rate.
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    /// Schedule after warm-up.
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Share of the optimizer steps spent warming up linearly from 0.
    #[serde(default = "default_warmup_ratio")]
    pub warmup_ratio: f64,
    /// AdamW's decoupled weight decay.
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Gradients are clipped to this global L2 norm (0: no clipping).
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    /// Passes over the pairs.
    #[serde(default = "default_epochs")]
    pub epochs: u32,
    /// Pairs per forward/backward pass.
    #[serde(default = "default_micro_batch")]
    pub micro_batch: u32,
    /// Micro-batches per optimizer step: the effective batch is `micro_batch × grad_accumulation`.
    #[serde(default = "default_grad_accumulation")]
    pub grad_accumulation: u32,
    /// Seed of the adapter's initialisation, the shuffling and the dropout masks.
    #[serde(default)]
    pub seed: u64,
    /// Optimizer steps between checkpoints (a killed run resumes from the last one).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u32,
}

fn default_beta() -> f64 {
    0.1
}

fn default_learning_rate() -> f64 {
    5e-6
}

fn default_warmup_ratio() -> f64 {
    0.05
}

fn default_weight_decay() -> f64 {
    0.01
}

fn default_max_grad_norm() -> f64 {
    1.0
}

fn default_epochs() -> u32 {
    1
}

fn default_micro_batch() -> u32 {
    1
}

fn default_grad_accumulation() -> u32 {
    8
}

fn default_checkpoint_every() -> u32 {
    50
}

impl TuneParams {
    fn check(&self, problems: &mut Vec<ValueProblem>) {
        let mut require = |key: &str, ok: bool, message: &str| {
            if !ok {
                problems.push((format!("stages.tune.{key}"), message.into()));
            }
        };
        require("beta", self.beta.is_finite() && self.beta > 0.0, "must be a finite number > 0");
        require("label_smoothing", (0.0..0.5).contains(&self.label_smoothing), "must be in [0, 0.5)");
        require("learning_rate", self.learning_rate.is_finite() && self.learning_rate > 0.0, "must be > 0");
        require("warmup_ratio", (0.0..=1.0).contains(&self.warmup_ratio), "must be in [0, 1]");
        require("weight_decay", self.weight_decay.is_finite() && self.weight_decay >= 0.0, "must be >= 0");
        require("max_grad_norm", self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0, "must be >= 0");
        require("lora.alpha", self.lora.alpha.is_finite() && self.lora.alpha > 0.0, "must be > 0");
        require("lora.dropout", (0.0..1.0).contains(&self.lora.dropout), "must be in [0, 1)");
        require("lora.target_modules", !self.lora.target_modules.is_empty(), "name at least one module");
        for (key, value) in [
            ("lora.rank", self.lora.rank),
            ("epochs", self.epochs),
            ("micro_batch", self.micro_batch),
            ("grad_accumulation", self.grad_accumulation),
            ("checkpoint_every", self.checkpoint_every),
        ] {
            positive(&format!("stages.tune.{key}"), value, problems);
        }
    }
}

/// A value problem found after the types were read: the dotted key and what is wrong.
pub type ValueProblem = (String, String);

impl RunSpec {
    /// Checks the values serde cannot: the name, the root's scheme, the language codes.
    pub fn value_problems(&self) -> Vec<ValueProblem> {
        let mut problems = Vec::new();
        let name_ok = !self.name.is_empty()
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            problems.push((
                "run.name".into(),
                format!("`{}` must be non-empty letters, digits, `-`, `_` or `.`", self.name),
            ));
        }
        if let Some(reason) = crate::store::storage::root_problem(&self.root) {
            problems.push(("run.root".into(), reason));
        } else if !self.storage.is_empty() && !crate::store::storage::is_cloud_root(&self.root) {
            problems.push(("run.storage".into(), "storage options apply to s3://, gs:// and az:// roots only".into()));
        }
        if self.rounds == 0 {
            problems.push(("run.rounds".into(), "must be at least 1".into()));
        } else if self.rounds > 1 && self.root.starts_with("memory://") {
            // Round r reads round r-1's adapter back by URL, which an in-process memory store cannot serve.
            problems.push((
                "run.rounds".into(),
                "rounds need a persistent root (a path, file://, s3://, gs://, az://)".into(),
            ));
        }
        if self.lock_ttl_s < 3 {
            problems.push(("run.lock_ttl_s".into(), "must be at least 3 seconds".into()));
        }
        if self.languages.is_empty() {
            problems.push(("run.languages".into(), "at least one language is needed".into()));
        }
        for (i, code) in self.languages.iter().enumerate() {
            if !crate::langs::is_iso_639_1(code) {
                problems.push((format!("run.languages[{i}]"), format!("`{code}` is not an ISO 639-1 language code")));
            } else if self.languages[..i].contains(code) {
                problems.push((format!("run.languages[{i}]"), format!("`{code}` is listed twice")));
            }
        }
        problems
    }
}

impl StagesSpec {
    /// Checks each configured stage's values (ranges, formats).
    pub fn value_problems(&self) -> Vec<ValueProblem> {
        let mut problems = Vec::new();
        if let Some(prompts) = &self.prompts {
            if !(0.0..1.0).contains(&prompts.eval_fraction) {
                problems.push(("stages.prompts.eval_fraction".into(), "must be in [0, 1)".into()));
            }
            check_format("stages.prompts", &prompts.source, prompts.format, &mut problems);
        }
        if let Some(generate) = &self.generate {
            generate.check(&mut problems);
        }
        if let Some(score) = &self.score {
            if let Some(import) = &score.import {
                check_format("stages.score.import", &import.path, import.format, &mut problems);
            }
            positive("stages.score.batch_size", score.batch_size, &mut problems);
            positive("stages.score.rows_per_part", score.rows_per_part, &mut problems);
        }
        if let Some(pairs) = &self.pairs
            && (!pairs.min_margin.is_finite() || pairs.min_margin < 0.0)
        {
            problems.push(("stages.pairs.min_margin".into(), "must be a finite number >= 0".into()));
        }
        if let Some(reference) = &self.ref_logps {
            positive("stages.ref_logps.batch_size", reference.batch_size, &mut problems);
            positive("stages.ref_logps.rows_per_part", reference.rows_per_part, &mut problems);
            positive("stages.ref_logps.max_prompt_length", reference.max_prompt_length, &mut problems);
            if reference.max_length <= reference.max_prompt_length {
                problems.push((
                    "stages.ref_logps.max_length".into(),
                    format!("must exceed max_prompt_length ({})", reference.max_prompt_length),
                ));
            }
        }
        if let Some(tune) = &self.tune {
            tune.check(&mut problems);
        }
        if let Some(evaluate) = &self.evaluate {
            evaluate.check(&mut problems);
        }
        if let Some(report) = &self.report {
            report.check(&mut problems);
        }
        problems
    }

    /// Checks that model stages have their bundle: `generate` without an
    /// import needs `models.policy`, `score` without an import `models.reward`.
    pub fn model_problems(&self, models: &ModelsSpec) -> Vec<ValueProblem> {
        let mut problems = Vec::new();
        let sampled = self.generate.as_ref().filter(|g| g.import.is_none());
        if sampled.is_some_and(|g| g.model == SamplingModel::OffPolicy) && models.off_policy.is_none() {
            problems.push((
                "stages.generate.model".into(),
                "`off_policy` samples another model: set `off_policy` in [models]".into(),
            ));
        }
        if sampled.is_some_and(|g| g.model == SamplingModel::Policy) && models.policy.is_none() {
            problems.push((
                "stages.generate".into(),
                "samples the policy: set `policy` in [models] (or import responses)".into(),
            ));
        }
        if self.score.as_ref().is_some_and(|s| s.import.is_none()) && models.reward.is_none() {
            problems.push((
                "stages.score".into(),
                "runs the reward model: set `reward` in [models] (or import rewards)".into(),
            ));
        }
        if self.ref_logps.is_some() && models.reference.is_none() && models.policy.is_none() {
            problems.push((
                "stages.ref_logps".into(),
                "runs the reference model: set `reference` (or `policy`) in [models]".into(),
            ));
        }
        if self.tune.is_some() && models.policy.is_none() {
            problems.push(("stages.tune".into(), "tunes the policy: set `policy` in [models]".into()));
        }
        if let Some(evaluate) = &self.evaluate {
            evaluate.model_problems(models, self.tune.is_some(), &mut problems);
        }
        problems
    }

    /// Checks that every configured stage has the stages it reads from.
    pub fn dependency_problems(&self) -> Vec<ValueProblem> {
        let present = |stage: StageName| match stage {
            StageName::Prompts => self.prompts.is_some(),
            StageName::Generate => self.generate.is_some(),
            StageName::Score => self.score.is_some(),
            StageName::Pairs => self.pairs.is_some(),
            StageName::RefLogps => self.ref_logps.is_some(),
            StageName::Tune => self.tune.is_some(),
            StageName::Evaluate => self.evaluate.is_some(),
            StageName::Report => self.report.is_some(),
        };
        let mut problems = Vec::new();
        for stage in StageName::ALL.into_iter().filter(|s| present(*s)) {
            for needed in stage.required_reads().iter().filter_map(|t| StageName::writer_of(*t)) {
                if !present(needed) {
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

impl GenerateParams {
    fn check(&self, problems: &mut Vec<ValueProblem>) {
        if let Some(import) = &self.import {
            check_format("stages.generate.import", &import.path, import.format, problems);
        }
        if let Some(import) = &self.also_import {
            check_format("stages.generate.also_import", &import.path, import.format, problems);
        }
        if let Some(slice) = self.prompt_slice
            && slice.index >= slice.count
        {
            problems.push(("stages.generate.prompt_slice".into(), "index must be below count".into()));
        }
        positive("stages.generate.samples", self.samples, problems);
        positive("stages.generate.max_new_tokens", self.max_new_tokens, problems);
        positive("stages.generate.batch_size", self.batch_size, problems);
        positive("stages.generate.prompts_per_part", self.prompts_per_part, problems);
        if let Some(top_k) = self.top_k {
            positive("stages.generate.top_k", top_k, problems);
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            problems.push(("stages.generate.temperature".into(), "must be a finite number >= 0 (0 = greedy)".into()));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            problems.push(("stages.generate.top_p".into(), "must be in (0, 1]".into()));
        }
    }
}

pub(super) fn positive(key: &str, value: u32, problems: &mut Vec<ValueProblem>) {
    if value == 0 {
        problems.push((key.into(), "must be at least 1".into()));
    }
}

pub(super) fn check_format(
    section: &str,
    location: &str,
    format: Option<FileFormat>,
    problems: &mut Vec<ValueProblem>,
) {
    if format.is_none() && FileFormat::from_extension(location).is_none() {
        problems.push((
            format!("{section}.format"),
            format!("cannot infer the format of `{location}` from its extension: set format = \"jsonl\", \"csv\" or \"parquet\""),
        ));
    }
}
