//! Table versions on storage: Parquet parts written as a stream, registered
//! for DataFusion, and checked against the table schema in both directions.
//!
//! Layout: `tables/<table>/<key>/part-<nonce>-<n>.parquet`. The parts of a
//! version are only ever found through the manifest that lists them (written
//! last, see [`super::manifest`]), so a crash mid-write leaves parts nobody
//! reads rather than a half-written table.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::error::StoreError;
use super::schema::Table;
use super::storage::Storage;

/// Rows per Parquet part: small enough that a resumed stage loses little,
/// large enough that part overhead stays negligible.
pub const DEFAULT_ROWS_PER_PART: usize = 250_000;
/// Rows per Parquet row group, at most.
const ROWS_PER_ROW_GROUP: usize = 16_384;

/// The directory (relative to the root) of one version of a table.
pub fn version_dir(table: Table, key: &str) -> String {
    format!("tables/{}/{key}", table.name())
}

/// One committed Parquet part of a table version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// File name inside the version directory.
    pub file: String,
    /// Rows in the part.
    pub rows: u64,
}

/// A file committed with a table version besides its parts (the tune
/// stage's adapter), listed in the manifest with its checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    /// Path inside the version directory (`/`-separated).
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// sha256 of the content.
    pub sha256: String,
}

/// Streams record batches of one table into Parquet parts of one version,
/// conforming every batch to the table schema first.
pub struct TableWriter {
    storage: Storage,
    table: Table,
    dir: String,
    nonce: String,
    rows_per_part: usize,
    current: Option<(AsyncArrowWriter<BufWriter>, String, u64)>,
    parts: Vec<PartInfo>,
    /// Parts before this index belong to committed chunks and survive an abort.
    checkpointed: usize,
    /// Subdirectory of the chunk markers: one per shard, `all` otherwise.
    scope: String,
    /// Files written besides the parts.
    artifacts: Vec<ArtifactInfo>,
}

/// Directory (inside a version directory) of chunk markers.
const CHUNKS_DIR: &str = "_chunks";
/// Directory (inside a version directory) of resume state besides chunk
/// markers (the tune stage's checkpoints). Not part of the committed version.
pub const RESUME_DIR: &str = "_resume";

/// The record that chunk `chunk` of a resumable stage is durably written.
#[derive(Debug, Serialize, Deserialize)]
struct ChunkMarker {
    chunk: u64,
    parts: Vec<PartInfo>,
}

impl TableWriter {
    /// A writer for version `key` of `table`. `nonce` makes part names unique
    /// per attempt, so a rerun never overwrites parts a manifest still lists.
    pub fn new(storage: &Storage, table: Table, key: &str, nonce: &str) -> Self {
        TableWriter {
            storage: storage.clone(),
            table,
            dir: version_dir(table, key),
            nonce: nonce.to_string(),
            rows_per_part: DEFAULT_ROWS_PER_PART,
            current: None,
            parts: Vec::new(),
            checkpointed: 0,
            scope: "all".into(),
            artifacts: Vec::new(),
        }
    }

    /// Keeps this writer's chunk markers apart from other writers of the same
    /// version (shards), so each resumes only its own work.
    pub fn with_scope(mut self, scope: &str) -> Self {
        self.scope = scope.to_string();
        self
    }

    /// Overrides the number of rows per part.
    pub fn with_rows_per_part(mut self, rows: usize) -> Self {
        self.rows_per_part = rows.max(1);
        self
    }

    /// The table this writer writes.
    pub fn table(&self) -> Table {
        self.table
    }

    /// Rows written so far, committed parts and the open one.
    pub fn rows(&self) -> u64 {
        self.parts.iter().map(|p| p.rows).sum::<u64>() + self.current.as_ref().map_or(0, |c| c.2)
    }

    /// Conforms `batch` to the schema and appends it, rolling to a new part
    /// when the current one is full.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), StoreError> {
        let batch = self.table.schema().conform(batch)?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let room = self.rows_per_part - self.current.as_ref().map_or(0, |c| c.2 as usize);
            let take = room.min(batch.num_rows() - offset);
            self.append(&batch.slice(offset, take)).await?;
            offset += take;
            if self.current.as_ref().is_some_and(|c| c.2 as usize >= self.rows_per_part) {
                self.close_part().await?;
            }
        }
        Ok(())
    }

    async fn append(&mut self, batch: &RecordBatch) -> Result<(), StoreError> {
        if self.current.is_none() {
            self.open_part()?;
        }
        let (writer, file, rows) = self.current.as_mut().expect("a part is open");
        let url = self.storage.url_of(&self.storage.path(&format!("{}/{file}", self.dir)));
        writer.write(batch).await.map_err(|source| StoreError::Parquet { url, source })?;
        *rows += batch.num_rows() as u64;
        Ok(())
    }

    fn open_part(&mut self) -> Result<(), StoreError> {
        let file = format!("part-{}-{:05}.parquet", self.nonce, self.parts.len());
        let path = self.storage.path(&format!("{}/{file}", self.dir));
        let object = BufWriter::new(self.storage.store().clone(), path.clone());
        // Row groups of at most ROWS_PER_ROW_GROUP rows: the writer holds the open row group's pages in
        // memory, so a part of a quarter million rows would otherwise stay in memory until it closes.
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(ROWS_PER_ROW_GROUP))
            .build();
        let writer = AsyncArrowWriter::try_new(object, self.table.schema().arrow_schema(), Some(properties))
            .map_err(|source| StoreError::Parquet { url: self.storage.url_of(&path), source })?;
        self.current = Some((writer, file, 0));
        Ok(())
    }

    async fn close_part(&mut self) -> Result<(), StoreError> {
        if let Some((writer, file, rows)) = self.current.take() {
            let url = self.storage.url_of(&self.storage.path(&format!("{}/{file}", self.dir)));
            writer.close().await.map_err(|source| StoreError::Parquet { url, source })?;
            self.parts.push(PartInfo { file, rows });
        }
        Ok(())
    }

    /// Closes the open part and returns every part written. Nothing is visible
    /// to readers until a manifest lists these parts.
    pub async fn finish(mut self) -> Result<Vec<PartInfo>, StoreError> {
        self.close_part().await?;
        Ok(self.parts)
    }

    /// Loads the chunks an earlier, interrupted attempt at this version
    /// committed (see [`TableWriter::commit_chunk`]): their parts become part of
    /// this writer's output, and the stage skips their work.
    pub async fn resume_chunks(&mut self) -> Result<std::collections::BTreeSet<u64>, StoreError> {
        let dir = self.storage.path(&format!("{}/{CHUNKS_DIR}/{}", self.dir, self.scope));
        let mut markers = Vec::new();
        for object in self.storage.list(&dir).await? {
            let Some(bytes) = self.storage.get_if_exists(&object.location).await? else { continue };
            let marker: ChunkMarker = serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::Json { url: self.storage.url_of(&object.location), source })?;
            markers.push(marker);
        }
        markers.sort_by_key(|m| m.chunk);
        let done = markers.iter().map(|m| m.chunk).collect();
        self.parts.extend(markers.into_iter().flat_map(|m| m.parts));
        self.checkpointed = self.parts.len();
        Ok(done)
    }

    /// Closes the open part and durably records that chunk `chunk` is
    /// written: a rerun after a crash resumes after it. The marker is written
    /// after its parts, so a marker never names a missing part.
    pub async fn commit_chunk(&mut self, chunk: u64) -> Result<(), StoreError> {
        self.close_part().await?;
        let marker = ChunkMarker { chunk, parts: self.parts[self.checkpointed..].to_vec() };
        let path = self.storage.path(&format!("{}/{CHUNKS_DIR}/{}/{chunk:08}.json", self.dir, self.scope));
        let json = serde_json::to_vec(&marker)
            .map_err(|source| StoreError::Json { url: self.storage.url_of(&path), source })?;
        self.storage.put(&path, json.into()).await?;
        self.checkpointed = self.parts.len();
        Ok(())
    }

    /// Writes `bytes` as `file` (a path inside the version directory) and
    /// lists it as an artifact of the version. Like parts, it is invisible
    /// until the manifest names it.
    pub async fn put_artifact(&mut self, file: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let sha256 = crate::ids::sha256_hex(&bytes);
        let info = ArtifactInfo { file: file.to_string(), bytes: bytes.len() as u64, sha256 };
        self.storage.put(&self.storage.path(&format!("{}/{file}", self.dir)), bytes.into()).await?;
        self.artifacts.retain(|a| a.file != file);
        self.artifacts.push(info);
        Ok(())
    }

    /// The artifacts written so far.
    pub fn artifacts(&self) -> &[ArtifactInfo] {
        &self.artifacts
    }

    /// The location of resume-state file `file` of this writer's scope.
    pub fn resume_path(&self, file: &str) -> Path {
        self.storage.path(&format!("{}/{RESUME_DIR}/{}/{file}", self.dir, self.scope))
    }

    /// The storage this writer writes to.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The URL of artifact `file` of this version.
    pub fn url_of_artifact(&self, file: &str) -> String {
        self.storage.url_of(&self.storage.path(&format!("{}/{file}", self.dir)))
    }

    /// Best-effort removal of the parts written since the last committed
    /// chunk, after a failure: they are invisible anyway, this only saves
    /// space. Parts of committed chunks stay for the next attempt.
    pub async fn abort(mut self) {
        if let Some((writer, file, rows)) = self.current.take() {
            // Closing flushes the upload so it can be deleted like any part.
            if writer.close().await.is_ok() {
                self.parts.push(PartInfo { file, rows });
            }
        }
        let files =
            self.parts[self.checkpointed..].iter().map(|p| &p.file).chain(self.artifacts.iter().map(|a| &a.file));
        for file in files {
            let path = self.storage.path(&format!("{}/{file}", self.dir));
            if let Err(e) = self.storage.delete(&path).await {
                tracing::warn!("could not remove abandoned part: {e}");
            }
        }
    }
}

/// Registers version `key` of `table`, made of `parts`, in `ctx` under `name`,
/// after checking every part's schema against the table schema.
pub async fn register_version(
    ctx: &SessionContext,
    storage: &Storage,
    table: Table,
    key: &str,
    parts: &[PartInfo],
    name: &str,
) -> Result<(), StoreError> {
    let schema = table.schema().arrow_schema();
    let dir = version_dir(table, key);
    let paths: Vec<Path> = parts.iter().map(|p| storage.path(&format!("{dir}/{}", p.file))).collect();
    storage.register(ctx);
    for path in &paths {
        check_part_schema(ctx, storage, table, path).await?;
    }
    let context = || format!("registering table `{name}` ({})", storage.url_of(&storage.path(&dir)));
    if paths.is_empty() {
        let empty = MemTable::try_new(schema, vec![vec![]])
            .map_err(|source| StoreError::Query { context: context(), source })?;
        ctx.register_table(name, Arc::new(empty)).map_err(|source| StoreError::Query { context: context(), source })?;
        return Ok(());
    }
    let urls: Vec<String> = paths.iter().map(|p| storage.url_of(p)).collect();
    let frame = ctx
        .read_parquet(urls, ParquetReadOptions::default().schema(&schema))
        .await
        .map_err(|source| StoreError::Query { context: context(), source })?;
    ctx.register_table(name, frame.into_view()).map_err(|source| StoreError::Query { context: context(), source })?;
    Ok(())
}

async fn check_part_schema(
    ctx: &SessionContext,
    storage: &Storage,
    table: Table,
    path: &Path,
) -> Result<(), StoreError> {
    // Reading a part as its own DataFrame reads only its footer, and gives the
    // schema the file really has (not the one we would impose).
    let url = storage.url_of(path);
    let frame = ctx
        .read_parquet(url.as_str(), ParquetReadOptions::default())
        .await
        .map_err(|source| StoreError::Query { context: format!("reading the schema of {url}"), source })?;
    table.schema().check_file_schema(frame.schema().as_arrow(), &url)?;
    Ok(())
}
