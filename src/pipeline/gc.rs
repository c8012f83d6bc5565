//! Garbage collection of a storage root: objects no manifest references.
//!
//! What is garbage, per table version directory:
//! - committed version (manifest present): every file the manifest does not
//!   list — parts of failed attempts, chunk markers the manifest superseded;
//! - uncommitted version (no manifest: a run crashed or is resuming): parts
//!   that no chunk marker names; marked parts are resume state and are kept
//!   until every object of the version is older than the age limit;
//! - with `versions`: whole committed versions that the pipeline's current
//!   plan does not use and whose manifest is older than the age limit.
//!
//! Collection runs under the run lock, so it never races a run.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use object_store::ObjectMeta;
use object_store::path::Path;
use serde::Serialize;

use super::plan::Plan;
use crate::store::manifest::{MANIFEST_FILE, Manifest};
use crate::store::tables::RESUME_DIR;
use crate::store::{StoreError, Table};

/// What to collect.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Also remove committed versions the current plan does not use.
    pub versions: bool,
    /// Only objects (and versions) older than this are collected.
    pub older_than: chrono::Duration,
}

/// One object found to be garbage.
#[derive(Debug, Clone, Serialize)]
pub struct Garbage {
    /// Its URL.
    pub url: String,
    /// Its size.
    pub bytes: u64,
    /// Why it is garbage.
    pub reason: &'static str,
}

/// Lists the garbage of `plan`'s storage root.
pub async fn find(plan: &Plan, options: GcOptions) -> Result<Vec<(Path, Garbage)>, StoreError> {
    let cutoff = Utc::now() - options.older_than;
    // Versions any variant of the file uses are in use.
    let current: BTreeSet<(Table, String)> =
        plan.all().into_iter().flat_map(|(_, p)| p.stages.iter()).map(|s| (s.stage.writes(), s.key.clone())).collect();
    let mut garbage = Vec::new();
    for &table in Table::ALL {
        let table_dir = plan.storage.path(&format!("tables/{}", table.name()));
        let objects = plan.storage.list(&table_dir).await?;
        for (key, objects) in by_version(&table_dir, &objects) {
            let manifest = crate::store::manifest::read(&plan.storage, table, &key).await?;
            let unused = options.versions && !current.contains(&(table, key.clone()));
            let found = match &manifest {
                Some(m) if unused && parse_time(&m.committed_at) < cutoff => whole_version(&objects),
                Some(m) => unlisted(m, &objects),
                None => unmarked(plan, &objects, cutoff).await?,
            };
            garbage.extend(found.into_iter().filter(|(meta, _)| meta.last_modified < cutoff).map(|(meta, reason)| {
                let url = plan.storage.url_of(&meta.location);
                (meta.location.clone(), Garbage { url, bytes: meta.size, reason })
            }));
        }
    }
    Ok(garbage)
}

/// Deletes the objects `find` returned.
pub async fn delete(plan: &Plan, garbage: &[(Path, Garbage)]) -> Result<(), StoreError> {
    for (path, _) in garbage {
        plan.storage.delete(path).await?;
    }
    Ok(())
}

fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).unwrap_or_else(|_| Utc::now())
}

/// Objects under a table's directory `table_dir`, grouped by version key
/// (the first path segment below it).
fn by_version<'a>(table_dir: &Path, objects: &'a [ObjectMeta]) -> BTreeMap<String, Vec<&'a ObjectMeta>> {
    let mut versions: BTreeMap<String, Vec<&ObjectMeta>> = BTreeMap::new();
    for object in objects {
        if let Some(key) = object.location.prefix_match(table_dir).and_then(|mut rest| rest.next()) {
            versions.entry(key.as_ref().to_string()).or_default().push(object);
        }
    }
    versions
}

fn file_name(meta: &ObjectMeta) -> &str {
    meta.location.filename().unwrap_or_default()
}

/// Chunk markers, shard records and checkpoints: the bookkeeping of
/// resumable and sharded stages, superseded once the manifest is written.
fn in_chunks_dir(meta: &ObjectMeta) -> bool {
    is_marker(meta) || meta.location.parts().any(|p| p.as_ref() == RESUME_DIR)
}

/// Chunk markers and shard records: JSON files that name parts.
fn is_marker(meta: &ObjectMeta) -> bool {
    meta.location.parts().any(|p| matches!(p.as_ref(), "_chunks" | "_shards"))
}

fn whole_version<'a>(objects: &[&'a ObjectMeta]) -> Vec<(&'a ObjectMeta, &'static str)> {
    objects.iter().map(|m| (*m, "version not used by the current pipeline")).collect()
}

fn unlisted<'a>(manifest: &Manifest, objects: &[&'a ObjectMeta]) -> Vec<(&'a ObjectMeta, &'static str)> {
    let artifacts = manifest.artifacts.iter().map(|a| a.file.rsplit('/').next().unwrap_or_default());
    let listed: BTreeSet<&str> = manifest.parts.iter().map(|p| p.file.as_str()).chain(artifacts).collect();
    objects
        .iter()
        .filter(|m| file_name(m) != MANIFEST_FILE)
        .filter(|m| in_chunks_dir(m) || !listed.contains(file_name(m)))
        .map(|m| (*m, if in_chunks_dir(m) { "chunk marker of a committed version" } else { "part no manifest lists" }))
        .collect()
}

async fn unmarked<'a>(
    plan: &Plan,
    objects: &[&'a ObjectMeta],
    cutoff: DateTime<Utc>,
) -> Result<Vec<(&'a ObjectMeta, &'static str)>, StoreError> {
    if objects.iter().all(|m| m.last_modified < cutoff) {
        return Ok(objects.iter().map(|m| (*m, "abandoned uncommitted version")).collect());
    }
    let mut marked: BTreeSet<String> = BTreeSet::new();
    for marker in objects.iter().filter(|m| is_marker(m)) {
        if let Some(bytes) = plan.storage.get_if_exists(&marker.location).await? {
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::Json { url: plan.storage.url_of(&marker.location), source })?;
            let files = value["parts"].as_array().into_iter().flatten().filter_map(|p| p["file"].as_str());
            marked.extend(files.map(str::to_string));
        }
    }
    Ok(objects
        .iter()
        .filter(|m| !in_chunks_dir(m) && !marked.contains(file_name(m)))
        .map(|m| (*m, "part of a failed attempt"))
        .collect())
}
