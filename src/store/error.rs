//! The storage layer's error: every variant names the object, file or table.

use std::path::PathBuf;

use super::schema::SchemaError;

/// Errors at the storage boundary. Each names the object, file or table it
/// concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage root could not be understood.
    #[error("storage root `{root}`: {reason}")]
    BadRoot { root: String, reason: String },
    /// The provider for a root could not be built (bad credentials, region, ...).
    #[error("storage root `{root}`: {source}")]
    Open { root: String, source: object_store::Error },
    /// An object-store request failed.
    #[error("object `{url}`: {source}")]
    Object { url: String, source: object_store::Error },
    /// A local file-system operation failed.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// Writing or reading Parquet failed.
    #[error("parquet `{url}`: {source}")]
    Parquet { url: String, source: parquet::errors::ParquetError },
    /// A manifest or other JSON object could not be read or written.
    #[error("json `{url}`: {source}")]
    Json { url: String, source: serde_json::Error },
    /// A batch or file does not match its table's schema.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// DataFusion failed while reading or querying tables.
    #[error("{context}: {source}")]
    Query { context: String, source: datafusion::error::DataFusionError },
}

impl StoreError {
    /// Wraps a DataFusion error with `context`: the query, table or file it concerns.
    pub fn query(context: impl Into<String>) -> impl FnOnce(datafusion::error::DataFusionError) -> StoreError {
        let context = context.into();
        move |source| StoreError::Query { context, source }
    }
}
