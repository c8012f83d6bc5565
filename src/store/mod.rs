//! Storage: object stores by URL scheme, table versions as Parquet parts plus
//! a manifest (and shard records), schema checks, DataFusion sessions over
//! them, and reading query results in chunks.

pub mod error;
pub mod lines;
pub mod manifest;
pub mod retries;
pub mod rows;
pub mod schema;
pub mod session;
pub mod shard;
pub mod storage;
pub mod tables;

pub use error::StoreError;
pub use schema::{SchemaError, Table, TableSchema};
pub use storage::Storage;
