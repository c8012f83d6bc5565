//! The run lock: one `croco run` per storage root at a time.
//!
//! The lock is an object, `_lock.json`, at the root, created with a
//! conditional put (`PutMode::Create`), so two runs racing for it cannot both
//! win, on local disk or on a bucket. It names its holder and carries a
//! heartbeat that a background task renews; a lock whose heartbeat is older
//! than the pipeline's `lock_ttl_s` belongs to a dead run and is taken over
//! (logged), and so at once is a lock whose holder ran on this host under a
//! pid that no longer runs (a run killed before it could release it).
//! `croco unlock` removes a lock by hand.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::store::{Storage, StoreError};

/// Name of the lock object at the storage root.
pub const LOCK_FILE: &str = "_lock.json";

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The run's name.
    pub run: String,
    /// user@host of the holder.
    pub owner: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// When the run took the lock.
    pub started_at: DateTime<Utc>,
    /// Last renewal.
    pub heartbeat_at: DateTime<Utc>,
    /// Random token telling this holder's writes from another's.
    pub token: String,
}

/// Errors of the run lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live run holds the lock.
    #[error(
        "storage root {root} is locked by run `{}` ({}, pid {}) since {}, last heartbeat {}; \
         wait for it, or if it is dead run `croco unlock` (a lock older than lock_ttl_s is taken over automatically)",
        holder.run, holder.owner, holder.pid, holder.started_at.to_rfc3339(), holder.heartbeat_at.to_rfc3339()
    )]
    Held { root: String, holder: Box<LockRecord> },
    /// The lock object could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A held run lock; renewed in the background until released.
pub struct RunLock {
    storage: Storage,
    file: String,
    record: LockRecord,
    heartbeat: tokio::task::JoinHandle<()>,
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown-host".into())
}

impl RunLock {
    /// Takes the lock object `file` (normally [`LOCK_FILE`]; shards have their
    /// own) of `storage` for run `run`, taking over a lock whose heartbeat is
    /// older than `ttl`.
    pub async fn acquire(storage: &Storage, run: &str, ttl: Duration, file: &str) -> Result<RunLock, LockError> {
        let host = this_host();
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        let now = Utc::now();
        let record = LockRecord {
            run: run.to_string(),
            owner: format!("{user}@{host}"),
            host,
            pid: std::process::id(),
            started_at: now,
            heartbeat_at: now,
            token: crate::ids::stable_id(&[&now.to_rfc3339(), &std::process::id().to_string(), run]),
        };
        let path = storage.path(file);
        match create_retrying_transport_errors(storage, file, &record).await {
            Ok(()) => {}
            Err(object_store::Error::AlreadyExists { .. }) => take_over_if_stale(storage, file, &record, ttl).await?,
            Err(source) => return Err(storage.error(&path, source).into()),
        }
        let heartbeat = tokio::spawn(renew(storage.clone(), file.to_string(), record.clone(), ttl / 3));
        Ok(RunLock { storage: storage.clone(), file: file.to_string(), record, heartbeat })
    }

    /// Stops the heartbeat and removes the lock if it is still ours.
    pub async fn release(self) -> Result<(), LockError> {
        self.heartbeat.abort();
        if read_lock(&self.storage, &self.file).await?.is_some_and(|(held, _)| held.token == self.record.token) {
            self.storage.delete(&self.storage.path(&self.file)).await?;
        }
        Ok(())
    }
}

/// Creates the lock object, retrying a few times when the request failed in
/// transport. object_store does not retry a conditional put whose request may
/// already have been sent (it is not idempotent), so a dropped connection
/// would otherwise fail the run. A retry after a create that did land finds
/// `AlreadyExists` with our own token, which `take_over_if_stale` treats as held.
async fn create_retrying_transport_errors(
    storage: &Storage,
    file: &str,
    record: &LockRecord,
) -> Result<(), object_store::Error> {
    const ATTEMPTS: u32 = 4;
    let mut attempt = 1;
    loop {
        match put(storage, file, record, PutMode::Create).await {
            Err(object_store::Error::Generic { source, .. }) if attempt < ATTEMPTS => {
                tracing::warn!(attempt, "creating the run lock failed in transport, retrying: {source}");
                crate::store::retries::record();
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn put(storage: &Storage, file: &str, record: &LockRecord, mode: PutMode) -> Result<(), object_store::Error> {
    let json = serde_json::to_vec_pretty(record).expect("lock records serialize");
    let options = PutOptions { mode, ..Default::default() };
    storage.store().put_opts(&storage.path(file), PutPayload::from_bytes(Bytes::from(json)), options).await?;
    Ok(())
}

/// The current run lock of the root and its version, if any.
pub async fn read(storage: &Storage) -> Result<Option<(LockRecord, UpdateVersion)>, StoreError> {
    read_lock(storage, LOCK_FILE).await
}

async fn read_lock(storage: &Storage, file: &str) -> Result<Option<(LockRecord, UpdateVersion)>, StoreError> {
    let path = storage.path(file);
    let result = match storage.store().get(&path).await {
        Ok(result) => result,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(source) => return Err(storage.error(&path, source)),
    };
    let version = UpdateVersion { e_tag: result.meta.e_tag.clone(), version: result.meta.version.clone() };
    let bytes = result.bytes().await.map_err(|source| storage.error(&path, source))?;
    let record =
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json { url: storage.url_of(&path), source })?;
    Ok(Some((record, version)))
}

/// Takes over a lock whose heartbeat is older than `ttl`: a conditional
/// update where the store supports it, else delete-then-create (local disk),
/// where the create still decides between racing takers.
async fn take_over_if_stale(
    storage: &Storage,
    file: &str,
    record: &LockRecord,
    ttl: Duration,
) -> Result<(), LockError> {
    let path = storage.path(file);
    let root = storage.display().to_string();
    let Some((held, version)) = read_lock(storage, file).await? else {
        return put(storage, file, record, PutMode::Create).await.map_err(|source| storage.error(&path, source).into());
    };
    // A create whose response was lost is retried by object_store and then
    // reports our own lock as existing: that lock is ours.
    if held.token == record.token {
        return Ok(());
    }
    let age = Utc::now().signed_duration_since(held.heartbeat_at);
    let dead_here = held.host == record.host && !process_runs(held.pid);
    if age.to_std().unwrap_or_default() < ttl && !dead_here {
        return Err(LockError::Held { root, holder: Box::new(held) });
    }
    let taken = match put(storage, file, record, PutMode::Update(version)).await {
        Err(object_store::Error::NotImplemented { .. }) => {
            storage.delete(&path).await?;
            put(storage, file, record, PutMode::Create).await
        }
        other => other,
    };
    match taken {
        Ok(()) => {
            let why = if dead_here {
                "its process no longer runs on this host"
            } else {
                "its heartbeat is older than lock_ttl_s"
            };
            tracing::warn!(run = %held.run, owner = %held.owner, pid = held.pid, heartbeat = %held.heartbeat_at, "took over a stale run lock: {why}");
            Ok(())
        }
        Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
            let holder = read_lock(storage, file).await?.map(|(h, _)| h).unwrap_or(held);
            Err(LockError::Held { root, holder: Box::new(holder) })
        }
        Err(source) => Err(storage.error(&path, source).into()),
    }
}

/// Whether process `pid` of this host runs. Where `/proc` cannot tell (not
/// Linux), every process is taken to run, and only the heartbeat's age
/// makes a lock stale.
fn process_runs(pid: u32) -> bool {
    let proc = std::path::Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Renews the heartbeat every `every` while the lock is still ours.
async fn renew(storage: Storage, file: String, mut record: LockRecord, every: Duration) {
    loop {
        tokio::time::sleep(every.max(Duration::from_secs(1))).await;
        match read_lock(&storage, &file).await {
            Ok(Some((held, _))) if held.token == record.token => {
                record.heartbeat_at = Utc::now();
                if let Err(e) = put(&storage, &file, &record, PutMode::Overwrite).await {
                    tracing::warn!("could not renew the run lock: {e}");
                }
            }
            Ok(_) => {
                tracing::error!("the run lock was taken by another run; this run no longer holds it");
                return;
            }
            Err(e) => tracing::warn!("could not read the run lock: {e}"),
        }
    }
}
