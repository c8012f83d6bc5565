//! The stage graph with content keys.
//!
//! A stage's output key is the hash of everything that determines its output:
//! the stage name, its resolved parameters, the keys of the table versions it
//! reads, fingerprints of the files it reads from outside the root, and the
//! schema version of its table. Keys chain through the graph, so changing one
//! parameter changes the keys of that stage and everything downstream, and
//! nothing else. A version whose manifest exists is current; old versions
//! stay, so two settings of one stage can be compared side by side in SQL.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::validate::LoadedSpec;
use crate::ids::{sha256_hex, stable_id};
use crate::model::bundle::{Bundle, BundleKind, Verify};
use crate::model::lora::{ADAPTER_CONFIG, ADAPTER_DIR, ADAPTER_WEIGHTS, checksum_of_files};
use crate::spec::generate::PromptSlice;
use crate::spec::{BASE_VARIANT, StageName};
use crate::stages::registry;
use crate::store::manifest::{self, ExternalInput, Manifest};
use crate::store::storage::{read_input_files, resolve_input};
use crate::store::{Storage, StoreError, Table};
use crate::vocab::roles::ModelRole;

/// Bumped when the way keys are derived changes, so old versions are not
/// mistaken for current ones.
const KEY_DERIVATION_VERSION: &str = "croco-key-1";

/// One stage of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStage {
    /// Which stage.
    pub stage: StageName,
    /// Content key of its output.
    pub key: String,
    /// Resolved parameters.
    pub params: serde_json::Value,
    /// Keys of the table versions it reads.
    #[serde(serialize_with = "by_table_name")]
    pub inputs: BTreeMap<Table, String>,
    /// Files it reads from outside the root.
    pub external: Vec<ExternalInput>,
    /// Model bundles it runs, by role name ([`ModelRole::name`]): their checksums.
    pub models: BTreeMap<String, String>,
}

/// Whether a stage's output is up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    /// A version with the current key is committed.
    Current,
    /// Versions exist, none with the current key.
    Stale,
    /// No version of the table exists.
    Missing,
}

/// A pipeline resolved against its storage root.
#[derive(Debug)]
pub struct Plan {
    /// The pipeline.
    pub loaded: LoadedSpec,
    /// Its storage root.
    pub storage: Storage,
    /// Configured stages in dependency order.
    pub stages: Vec<PlannedStage>,
    /// The plans of the file's `[variants.NAME]`, on the same storage root:
    /// a stage whose inputs and parameters a variant does not change has the
    /// base's key, so it is computed once for all.
    pub variants: Vec<(String, Plan)>,
    /// The later rounds whose previous round has committed its adapter (a
    /// round's keys depend on that adapter's checksum, so a round cannot be
    /// planned before the one it continues has run).
    pub rounds: Vec<Plan>,
}

/// Errors while planning.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Storage could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A model bundle named in `[models]` is unusable.
    #[error("{file}: `models.{role}`: {source}")]
    Model { file: String, role: String, source: crate::model::ModelError },
    /// An input file named in the pipeline cannot be read.
    #[error("{file}: `{key}`: cannot read `{location}`: {source}")]
    MissingInput { file: String, key: String, location: String, source: Box<dyn std::error::Error + Send + Sync> },
}

impl Plan {
    /// Opens the storage root of `loaded` and derives every stage's key, for
    /// the base pipeline and each variant.
    pub async fn build(mut loaded: LoadedSpec) -> Result<Plan, PlanError> {
        let variant_specs = std::mem::take(&mut loaded.variants);
        let mut plan = Plan::build_rounds(loaded.clone()).await?;
        for (name, spec) in variant_specs {
            let variant = LoadedSpec { spec, variants: vec![], ..loaded.clone() };
            plan.variants.push((name, Plan::build_rounds(variant).await?));
        }
        Ok(plan)
    }

    /// The base (`base`) and each variant, by name; each is its round 1.
    pub fn variants_and_base(&self) -> impl Iterator<Item = (&str, &Plan)> {
        std::iter::once((BASE_VARIANT, self)).chain(self.variants.iter().map(|(name, plan)| (name.as_str(), plan)))
    }

    /// Every plan of the file, named: `base`, its later rounds
    /// (`base.round2`, ...), then each variant and its rounds.
    pub fn all(&self) -> Vec<(String, &Plan)> {
        self.variants_and_base()
            .flat_map(|(name, plan)| {
                let later = plan.rounds.iter().map(move |round| (round.round_name(name), round));
                std::iter::once((name.to_string(), plan)).chain(later)
            })
            .collect()
    }

    /// This plan's 0-based round of `run.rounds`: the slice its generate
    /// stage answers (0 for an offline pipeline).
    pub fn round(&self) -> u32 {
        self.loaded.spec.stages.generate.as_ref().and_then(|g| g.prompt_slice).map_or(0, |slice| slice.index)
    }

    /// The name of this round of variant `variant`: `variant.round<r>` (1-based).
    pub fn round_name(&self, variant: &str) -> String {
        format!("{variant}.round{}", self.round() + 1)
    }

    /// Round 1 of `loaded`, with the later rounds that can be planned.
    async fn build_rounds(loaded: LoadedSpec) -> Result<Plan, PlanError> {
        let mut first = Plan::build_one(round_spec(loaded, 0, None)).await?;
        loop {
            let previous = first.rounds.last().unwrap_or(&first);
            match previous.next_round().await? {
                Some(next) => first.rounds.push(next),
                None => return Ok(first),
            }
        }
    }

    /// The plan of the round after this one, once this round's tune stage has
    /// committed its adapter; `None` after the last round or before that.
    pub async fn next_round(&self) -> Result<Option<Plan>, PlanError> {
        let next = self.round() + 1;
        if next >= self.loaded.spec.run.rounds {
            return Ok(None);
        }
        let Some(tune) = self.stage(StageName::Tune) else { return Ok(None) };
        if self.current(tune).await?.is_none() {
            return Ok(None);
        }
        let dir = format!("{}/{}", crate::store::tables::version_dir(Table::TrainLog, &tune.key), ADAPTER_DIR);
        let adapter = self.storage.url_of(&self.storage.path(&dir));
        Ok(Some(Plan::build_one(round_spec(self.loaded.clone(), next, Some(adapter))).await?))
    }

    async fn build_one(loaded: LoadedSpec) -> Result<Plan, PlanError> {
        let storage =
            Storage::open(&loaded.spec.run.root, &loaded.base_dir, &loaded.spec.run.storage, &loaded.spec.run.retry)?;
        let mut stages: Vec<PlannedStage> = Vec::new();
        for &stage in StageName::ALL {
            let Some(params) = registry::stage(stage).params(&loaded.spec) else {
                continue;
            };
            let inputs: BTreeMap<Table, String> = stage
                .reads()
                .iter()
                .filter_map(|&table| {
                    let writer = StageName::writer_of(table)?;
                    stages.iter().find(|s| s.stage == writer).map(|s| (table, s.key.clone()))
                })
                .collect();
            let mut external = Vec::new();
            for (key, location) in registry::stage(stage).external_inputs(&loaded.spec) {
                external.push(fingerprint(&loaded, &key, &location).await?);
            }
            let models = bundle_checksums(&loaded, stage).await?;
            let key = content_key(stage, &params, &inputs, &external, &models);
            stages.push(PlannedStage { stage, key, params, inputs, external, models });
        }
        Ok(Plan { loaded, storage, stages, variants: vec![], rounds: vec![] })
    }

    /// The planned stage `stage`, if the pipeline configures it.
    pub fn stage(&self, stage: StageName) -> Option<&PlannedStage> {
        self.stages.iter().find(|s| s.stage == stage)
    }

    /// The manifest of `stage`'s current version, if committed.
    pub async fn current(&self, stage: &PlannedStage) -> Result<Option<Manifest>, StoreError> {
        manifest::read(&self.storage, stage.stage.writes(), &stage.key).await
    }

    /// The state of `stage` and, when current, its manifest.
    pub async fn state(&self, stage: &PlannedStage) -> Result<(StageState, Option<Manifest>), StoreError> {
        if let Some(current) = self.current(stage).await? {
            return Ok((StageState::Current, Some(current)));
        }
        let versions = manifest::list_versions(&self.storage, stage.stage.writes()).await?;
        Ok((if versions.is_empty() { StageState::Missing } else { StageState::Stale }, None))
    }
}

/// The pipeline of round `round` (0-based) of an online pipeline: generate
/// answers slice `round` of `run.rounds`, and from the second round on the
/// policy carries the previous round's adapter (tune continues from it, the
/// reference stays the base). A pipeline of one round is returned as it is.
fn round_spec(mut loaded: LoadedSpec, round: u32, adapter: Option<String>) -> LoadedSpec {
    let rounds = loaded.spec.run.rounds;
    if rounds <= 1 {
        return loaded;
    }
    if let Some(generate) = loaded.spec.stages.generate.as_mut() {
        generate.prompt_slice = Some(PromptSlice { index: round, count: rounds });
    }
    if let Some(adapter) = adapter {
        loaded.spec.models.policy_adapter = Some(adapter);
    }
    loaded
}

impl PlannedStage {
    /// The keys of its inputs by table name, as manifests record them.
    pub fn input_keys_by_name(&self) -> BTreeMap<String, String> {
        self.inputs.iter().map(|(table, key)| (table.name().to_string(), key.clone())).collect()
    }
}

/// Serializes a map by table as a map by table name, in name order (the
/// order content keys were first derived in).
fn by_table_name<S: serde::Serializer>(inputs: &BTreeMap<Table, String>, serializer: S) -> Result<S::Ok, S::Error> {
    let by_name: BTreeMap<&str, &str> = inputs.iter().map(|(table, key)| (table.name(), key.as_str())).collect();
    serializer.collect_map(by_name)
}

fn content_key(
    stage: StageName,
    params: &serde_json::Value,
    inputs: &BTreeMap<Table, String>,
    external: &[ExternalInput],
    models: &BTreeMap<String, String>,
) -> String {
    let table: Table = stage.writes();
    let fingerprints: Vec<&str> = external.iter().map(|e| e.fingerprint.as_str()).collect();
    let inputs: BTreeMap<&str, &str> = inputs.iter().map(|(table, key)| (table.name(), key.as_str())).collect();
    let material = serde_json::json!({
        "derivation": KEY_DERIVATION_VERSION,
        "stage": stage.name(),
        "params": params,
        "inputs": inputs,
        "external": fingerprints,
        "models": models,
        "table": table.name(),
        "schema_version": table.schema().version,
    });
    stable_id(&[&material.to_string()])
}

/// The checksums of the bundles `stage` runs (cheap: the manifest's sha256
/// and the files' sizes; the stage verifies more when it loads them). A
/// policy with `models.policy_adapter` is identified by both checksums.
async fn bundle_checksums(loaded: &LoadedSpec, stage: StageName) -> Result<BTreeMap<String, String>, PlanError> {
    let mut checksums = BTreeMap::new();
    for (role, location) in registry::stage(stage).models(&loaded.spec) {
        let failed =
            |source| PlanError::Model { file: loaded.file.display().to_string(), role: role.to_string(), source };
        let bundle = Bundle::open(&loaded.base_dir.join(&location), Verify::Sizes).map_err(failed)?;
        // The reward model scores; every other role generates or is tuned.
        let kind = if role == ModelRole::Reward { BundleKind::Reward } else { BundleKind::Policy };
        bundle.expect_kind(kind).map_err(failed)?;
        let checksum = match (&loaded.spec.models.policy_adapter, role) {
            (Some(adapter), ModelRole::Policy) => {
                let (run, names) = (&loaded.spec.run, [ADAPTER_WEIGHTS, ADAPTER_CONFIG]);
                let files = read_input_files(adapter, &names, &loaded.base_dir, &run.storage, &run.retry).await;
                let files = files.map_err(|e| PlanError::MissingInput {
                    file: loaded.file.display().to_string(),
                    key: "models.policy_adapter".into(),
                    location: adapter.clone(),
                    source: e.into(),
                })?;
                format!("{}+adapter:{}", bundle.checksum, checksum_of_files(&files[0], &files[1]))
            }
            _ => bundle.checksum,
        };
        checksums.insert(role.to_string(), checksum);
    }
    Ok(checksums)
}

/// Fingerprints an input file: the sha256 of a local file's content, the
/// ETag (or size and modification time) of a remote object, so that editing
/// the file makes the stage stale and merely touching it does not.
async fn fingerprint(loaded: &LoadedSpec, key: &str, location: &str) -> Result<ExternalInput, PlanError> {
    let missing = |source: Box<dyn std::error::Error + Send + Sync>| PlanError::MissingInput {
        file: loaded.file.display().to_string(),
        key: key.to_string(),
        location: location.to_string(),
        source,
    };
    let (storage, path) = resolve_input(location, &loaded.base_dir, &loaded.spec.run.storage, &loaded.spec.run.retry)
        .map_err(|e| missing(e.into()))?;
    let url = storage.url_of(&path);
    let fingerprint = if url.starts_with("file://") {
        let local = Path::new("/").join(path.as_ref());
        let bytes =
            std::fs::read(&local).map_err(|source| missing(StoreError::Io { path: local.clone(), source }.into()))?;
        format!("sha256:{}", sha256_hex(&bytes))
    } else {
        use object_store::ObjectStoreExt;
        let meta = storage.store().head(&path).await.map_err(|e| missing(e.into()))?;
        match meta.e_tag {
            Some(tag) => format!("etag:{tag}"),
            None => format!("meta:{}:{}", meta.size, meta.last_modified.to_rfc3339()),
        }
    };
    Ok(ExternalInput { key: key.to_string(), url, fingerprint })
}
