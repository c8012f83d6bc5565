//! Shards: one model stage spread over N processes (Kubernetes Indexed Jobs,
//! Slurm job arrays, or anything that starts `croco run --shard I/N`).
//!
//! Shard I of N processes the prompts whose stable hash falls in its slice,
//! writes its parts into the stage's version directory, and commits them with
//! a shard record (`_shards/I-of-N.json`) instead of the manifest. A later
//! plain run finds the records and, once all N are there, commits one
//! manifest listing every shard's parts — one table version, no recompute.

use serde::{Deserialize, Serialize};

use super::error::StoreError;
use super::manifest::Stats;
use super::schema::Table;
use super::storage::Storage;
use super::tables::{PartInfo, version_dir};
use crate::ids::unit_interval;

/// Shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// 0-based index.
    pub index: u32,
    /// Number of shards.
    pub count: u32,
}

impl Shard {
    /// Parses `I/N` with `0 <= I < N`.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (index, count) = text.split_once('/').ok_or_else(|| format!("`{text}`: expected I/N, e.g. 0/4"))?;
        let parse = |s: &str| s.trim().parse::<u32>().map_err(|_| format!("`{text}`: expected I/N with whole numbers"));
        Shard::new(parse(index)?, parse(count)?)
    }

    fn new(index: u32, count: u32) -> Result<Shard, String> {
        match index < count {
            true => Ok(Shard { index, count }),
            false => Err(format!("shard {index} of {count}: the index must be below the count")),
        }
    }

    /// The shard a cluster scheduler assigned through the environment:
    /// Kubernetes Indexed Jobs (`JOB_COMPLETION_INDEX` with `CROCO_SHARD_COUNT`)
    /// or Slurm job arrays (`SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_COUNT`,
    /// `SLURM_ARRAY_TASK_MIN`).
    pub fn from_env() -> Result<Option<Shard>, String> {
        let var = |name: &str| std::env::var(name).ok();
        let number =
            |name: &str, value: String| value.parse::<u32>().map_err(|_| format!("{name}={value} is not a number"));
        if let Some(index) = var("JOB_COMPLETION_INDEX") {
            let count = var("CROCO_SHARD_COUNT")
                .ok_or("JOB_COMPLETION_INDEX is set: set CROCO_SHARD_COUNT to the job's completions")?;
            return Shard::new(number("JOB_COMPLETION_INDEX", index)?, number("CROCO_SHARD_COUNT", count)?).map(Some);
        }
        if let (Some(task), Some(count)) = (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT")) {
            let first = var("SLURM_ARRAY_TASK_MIN").map_or(Ok(0), |m| number("SLURM_ARRAY_TASK_MIN", m))?;
            let task = number("SLURM_ARRAY_TASK_ID", task)?;
            return Shard::new(task.saturating_sub(first), number("SLURM_ARRAY_TASK_COUNT", count)?).map(Some);
        }
        Ok(None)
    }

    /// Whether the prompt `prompt_id` belongs to this shard (stable hash, so
    /// every process agrees without coordination).
    pub fn contains(&self, prompt_id: &str) -> bool {
        (unit_interval(0, prompt_id) * f64::from(self.count)) as u32 == self.index
    }

    /// `I-of-N`, used in file names.
    pub fn name(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }
}

/// The commit record of one shard of a stage's version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Which shard.
    pub shard: Shard,
    /// Its parts.
    pub parts: Vec<PartInfo>,
    /// Its rows.
    pub rows: u64,
    /// Its stage counts.
    pub stats: Stats,
}

fn record_path(storage: &Storage, table: Table, key: &str, shard: Shard) -> object_store::path::Path {
    storage.path(&format!("{}/_shards/{}.json", version_dir(table, key), shard.name()))
}

/// Commits a shard's work (after its parts are written).
pub async fn write_record(storage: &Storage, table: Table, key: &str, record: &ShardRecord) -> Result<(), StoreError> {
    let path = record_path(storage, table, key, record.shard);
    let json =
        serde_json::to_vec_pretty(record).map_err(|source| StoreError::Json { url: storage.url_of(&path), source })?;
    storage.put(&path, json.into()).await
}

/// The record of `shard`, if committed.
pub async fn read_record(
    storage: &Storage,
    table: Table,
    key: &str,
    shard: Shard,
) -> Result<Option<ShardRecord>, StoreError> {
    let path = record_path(storage, table, key, shard);
    let Some(bytes) = storage.get_if_exists(&path).await? else { return Ok(None) };
    serde_json::from_slice(&bytes).map(Some).map_err(|source| StoreError::Json { url: storage.url_of(&path), source })
}

/// Every shard record of a version, by shard index.
pub async fn list_records(storage: &Storage, table: Table, key: &str) -> Result<Vec<ShardRecord>, StoreError> {
    let dir = storage.path(&format!("{}/_shards", version_dir(table, key)));
    let mut records = Vec::new();
    for object in storage.list(&dir).await? {
        if let Some(bytes) = storage.get_if_exists(&object.location).await? {
            let record: ShardRecord = serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::Json { url: storage.url_of(&object.location), source })?;
            records.push(record);
        }
    }
    records.sort_by_key(|r| r.shard.index);
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition_every_prompt_exactly_once() {
        assert_eq!(Shard::parse("1/3"), Ok(Shard { index: 1, count: 3 }));
        assert!(Shard::parse("3/3").is_err() && Shard::parse("x").is_err());
        let shards: Vec<Shard> = (0..3).map(|i| Shard { index: i, count: 3 }).collect();
        for id in ["a", "b", "c", "0123456789abcdef", "zz"] {
            assert_eq!(shards.iter().filter(|s| s.contains(id)).count(), 1, "{id}");
        }
    }
}
