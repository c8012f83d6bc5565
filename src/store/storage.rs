//! The storage root of a pipeline: one object store per URL scheme.
//!
//! Everything croco persists goes through `object_store`, so local disk, memory
//! and cloud buckets share one code path (and one set of tests). Following
//! Lance, the URL scheme picks the provider; credentials and endpoints come from
//! the standard environment of each provider (`AWS_*`, `GOOGLE_*`, `AZURE_*`).

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

use super::error::StoreError;

/// A storage root: an object store plus the prefix under which a pipeline
/// keeps its tables.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// `scheme://authority/`: the URL DataFusion resolves this store under.
    store_url: Url,
    /// The root inside the store.
    prefix: Path,
    /// The root as the user wrote it, resolved (for messages).
    display: String,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("root", &self.display).finish()
    }
}

/// In-memory stores live for the process, keyed by the URL's host, so that
/// every `Storage::open("memory://name")` in one process sees the same data.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let mut stores = STORES.get_or_init(Default::default).lock().expect("memory store registry");
    stores.entry(name.to_string()).or_insert_with(|| Arc::new(InMemory::new())).clone()
}

/// Provider options from the pipeline file (`[run.storage]`), e.g. `endpoint`,
/// `region`, `allow_http`; they override the environment. Names are the
/// provider's own config keys (object_store's `AmazonS3ConfigKey`, ...).
pub type StorageOptions = std::collections::BTreeMap<String, String>;

/// Retries of object-store requests (cloud roots): transient failures — 5xx
/// answers, resets, timeouts — are retried with exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    /// Retries per request (0 disables retrying).
    pub max_retries: usize,
    /// No retry starts later than this many seconds after the first attempt.
    pub retry_timeout_s: u64,
    /// First backoff, in milliseconds; it doubles up to `max_backoff_s`.
    pub init_backoff_ms: u64,
    /// Longest backoff, in seconds.
    pub max_backoff_s: u64,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec { max_retries: 10, retry_timeout_s: 180, init_backoff_ms: 100, max_backoff_s: 15 }
    }
}

impl RetrySpec {
    fn config(&self) -> object_store::RetryConfig {
        object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: std::time::Duration::from_millis(self.init_backoff_ms),
                max_backoff: std::time::Duration::from_secs(self.max_backoff_s),
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: std::time::Duration::from_secs(self.retry_timeout_s),
        }
    }
}

impl Storage {
    /// Opens the root `root`: a URL (`file://`, `memory://`, `s3://`, `gs://`,
    /// `az://`/`abfs://`) or a plain path, which is resolved against `base_dir`
    /// (the directory of the pipeline file).
    pub fn open(
        root: &str,
        base_dir: &FsPath,
        options: &StorageOptions,
        retry: &RetrySpec,
    ) -> Result<Self, StoreError> {
        match Url::parse(root) {
            Ok(url) if url.scheme().len() > 1 => Self::open_url(url, options, retry),
            // No scheme, or a Windows drive letter: a filesystem path.
            _ => Self::open_local(&base_dir.join(root)),
        }
    }

    fn open_url(url: Url, options: &StorageOptions, retry: &RetrySpec) -> Result<Self, StoreError> {
        let scheme = Scheme::named(url.scheme())
            .ok_or_else(|| StoreError::BadRoot { root: url.to_string(), reason: Scheme::unsupported(url.scheme()) })?;
        let Some(open) = scheme.open else {
            let path = file_url_path(&url).map_err(|reason| StoreError::BadRoot { root: url.to_string(), reason })?;
            return Self::open_local(&path);
        };
        if scheme.cloud && url.host_str().is_none_or(str::is_empty) {
            return Err(StoreError::BadRoot { root: url.to_string(), reason: "names no bucket".into() });
        }
        let store = open(&url, options, retry)?;
        let store_url =
            Url::parse(&format!("{}://{}/", url.scheme(), url.authority())).expect("scheme and authority form a URL");
        let prefix = Path::parse(url.path().trim_matches('/'))
            .map_err(|e| StoreError::BadRoot { root: url.to_string(), reason: e.to_string() })?;
        Ok(Storage { store, store_url, prefix, display: url.to_string() })
    }

    fn open_local(path: &FsPath) -> Result<Self, StoreError> {
        let absolute = absolute_lexical(path)?;
        let display = absolute.display().to_string();
        let prefix = Path::from_absolute_path(&absolute)
            .map_err(|e| StoreError::BadRoot { root: display.clone(), reason: e.to_string() })?;
        Ok(Storage {
            store: Arc::new(LocalFileSystem::new()),
            store_url: Url::parse("file:///").expect("static URL"),
            prefix,
            display,
        })
    }

    /// The root as a human reads it.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The underlying object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The object path of `relative` (slash-separated) under the root.
    pub fn path(&self, relative: &str) -> Path {
        relative.split('/').filter(|part| !part.is_empty()).fold(self.prefix.clone(), |path, part| path.join(part))
    }

    /// The URL DataFusion reads `path` under.
    pub fn url_of(&self, path: &Path) -> String {
        format!("{}{}", self.store_url, path)
    }

    /// Makes this store readable by `ctx` under its URL.
    pub fn register(&self, ctx: &SessionContext) {
        ctx.register_object_store(&self.store_url, self.store.clone());
    }

    /// Writes `bytes` at `path` in one atomic put.
    pub async fn put(&self, path: &Path, bytes: Bytes) -> Result<(), StoreError> {
        self.store.put(path, PutPayload::from_bytes(bytes)).await.map_err(|source| self.error(path, source))?;
        Ok(())
    }

    /// Reads the object at `path`; `Ok(None)` when it does not exist.
    pub async fn get_if_exists(&self, path: &Path) -> Result<Option<Bytes>, StoreError> {
        match self.store.get(path).await {
            Ok(result) => Ok(Some(result.bytes().await.map_err(|source| self.error(path, source))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(self.error(path, source)),
        }
    }

    /// Lists every object under `path` (recursively).
    pub async fn list(&self, path: &Path) -> Result<Vec<ObjectMeta>, StoreError> {
        self.store.list(Some(path)).try_collect().await.map_err(|source| self.error(path, source))
    }

    /// Deletes the object at `path` (missing objects are not an error).
    pub async fn delete(&self, path: &Path) -> Result<(), StoreError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(self.error(path, source)),
        }
    }

    /// Wraps an object-store error with the URL of the object it concerns.
    pub fn error(&self, path: &Path, source: object_store::Error) -> StoreError {
        StoreError::Object { url: self.url_of(path), source }
    }
}

/// Builds the object store of a root URL.
type OpenStore = fn(&Url, &StorageOptions, &RetrySpec) -> Result<Arc<dyn ObjectStore>, StoreError>;

/// A URL scheme a storage root may use: the one registry of schemes, after
/// Lance's one provider per scheme. A new scheme is one entry of [`SCHEMES`].
struct Scheme {
    /// The scheme and its aliases.
    names: &'static [&'static str],
    /// Builds the store; `None` for `file`, a directory on local disk.
    open: Option<OpenStore>,
    /// A cloud object store: it takes `[run.storage]` options and its URL
    /// must name a bucket (or container).
    cloud: bool,
}

const SCHEMES: [Scheme; 5] = [
    Scheme { names: &["file"], open: None, cloud: false },
    Scheme { names: &["memory"], open: Some(open_memory), cloud: false },
    Scheme { names: &["s3", "s3a"], open: Some(open_s3), cloud: true },
    Scheme { names: &["gs"], open: Some(open_gcs), cloud: true },
    Scheme { names: &["az", "abfs", "abfss", "azure"], open: Some(open_azure), cloud: true },
];

impl Scheme {
    fn named(name: &str) -> Option<&'static Scheme> {
        SCHEMES.iter().find(|scheme| scheme.names.contains(&name))
    }

    fn unsupported(name: &str) -> String {
        let names: Vec<&str> = SCHEMES.iter().flat_map(|scheme| scheme.names.iter().copied()).collect();
        format!("unsupported scheme `{name}` (use one of: {})", names.join(", "))
    }
}

fn open_memory(url: &Url, _: &StorageOptions, _: &RetrySpec) -> Result<Arc<dyn ObjectStore>, StoreError> {
    Ok(memory_store(url.host_str().unwrap_or("")))
}

fn open_s3(url: &Url, options: &StorageOptions, retry: &RetrySpec) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let builder = configure(url, options, AmazonS3Builder::from_env(), AmazonS3Builder::with_config)?;
    Ok(Arc::new(builder.with_retry(retry.config()).build().map_err(|source| open_error(url, options, source))?))
}

fn open_gcs(url: &Url, options: &StorageOptions, retry: &RetrySpec) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let builder =
        configure(url, options, GoogleCloudStorageBuilder::from_env(), GoogleCloudStorageBuilder::with_config)?;
    Ok(Arc::new(builder.with_retry(retry.config()).build().map_err(|source| open_error(url, options, source))?))
}

fn open_azure(url: &Url, options: &StorageOptions, retry: &RetrySpec) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let builder = configure(url, options, MicrosoftAzureBuilder::from_env(), MicrosoftAzureBuilder::with_config)?;
    Ok(Arc::new(builder.with_retry(retry.config()).build().map_err(|source| open_error(url, options, source))?))
}

/// A provider's refusal to build a store. A value it cannot parse is named
/// only by the value (`failed to parse "perhaps" as boolean`): the option
/// holding it is named here.
fn open_error(url: &Url, options: &StorageOptions, source: object_store::Error) -> StoreError {
    let message = source.to_string();
    match options.iter().find(|(_, value)| message.contains(&format!("\"{value}\""))) {
        Some((name, value)) => StoreError::BadRoot {
            root: url.to_string(),
            reason: format!("storage option `{name}` = {value:?}: {message}"),
        },
        None => StoreError::Open { root: url.to_string(), source },
    }
}

/// Applies the provider options to a cloud builder (after `with_url`, so the
/// options win over what the URL implies).
fn configure<B, K: std::str::FromStr>(
    url: &Url,
    options: &StorageOptions,
    builder: B,
    set: impl Fn(B, K, String) -> B,
) -> Result<B, StoreError>
where
    B: UrlBuilder,
{
    let mut builder = builder.url(url.as_str());
    for (name, value) in options {
        let key = name.parse::<K>().map_err(|_| StoreError::BadRoot {
            root: url.to_string(),
            reason: format!("unknown storage option `{name}` for {}://", url.scheme()),
        })?;
        builder = set(builder, key, value.clone());
    }
    Ok(builder)
}

/// The `with_url` of each cloud builder, behind one name.
trait UrlBuilder {
    fn url(self, url: &str) -> Self;
}

impl UrlBuilder for AmazonS3Builder {
    fn url(self, url: &str) -> Self {
        self.with_url(url)
    }
}

impl UrlBuilder for GoogleCloudStorageBuilder {
    fn url(self, url: &str) -> Self {
        self.with_url(url)
    }
}

impl UrlBuilder for MicrosoftAzureBuilder {
    fn url(self, url: &str) -> Self {
        self.with_url(url)
    }
}

/// Where an input file named in a pipeline file lives: a URL, or a path that
/// is resolved against the pipeline file's directory. Object-store inputs use
/// the pipeline's storage options.
pub fn resolve_input(
    location: &str,
    base_dir: &FsPath,
    options: &StorageOptions,
    retry: &RetrySpec,
) -> Result<(Storage, Path), StoreError> {
    match Url::parse(location) {
        Ok(url) if url.scheme().len() > 1 && url.scheme() != "file" => {
            let path = Path::parse(url.path().trim_matches('/'))
                .map_err(|e| StoreError::BadRoot { root: location.to_string(), reason: e.to_string() })?;
            let mut root = url.clone();
            root.set_path("");
            Ok((Storage::open_url(root, options, retry)?, path))
        }
        Ok(url) if url.scheme() == "file" => {
            let file =
                file_url_path(&url).map_err(|reason| StoreError::BadRoot { root: location.to_string(), reason })?;
            local_input(&file)
        }
        _ => local_input(&base_dir.join(location)),
    }
}

/// Reads the whole input file at `location` (resolved as [`resolve_input`]
/// does); a missing file is an error naming its URL.
pub async fn read_input_file(
    location: &str,
    base_dir: &FsPath,
    options: &StorageOptions,
    retry: &RetrySpec,
) -> Result<Bytes, StoreError> {
    let (storage, path) = resolve_input(location, base_dir, options, retry)?;
    storage.get_if_exists(&path).await?.ok_or_else(|| StoreError::Object {
        url: storage.url_of(&path),
        source: object_store::Error::NotFound { path: path.to_string(), source: "no such file".into() },
    })
}

/// Reads the files `names` of the directory at `location` (resolved as
/// [`resolve_input`] does), in the order of `names`.
pub async fn read_input_files(
    location: &str,
    names: &[&str],
    base_dir: &FsPath,
    options: &StorageOptions,
    retry: &RetrySpec,
) -> Result<Vec<Bytes>, StoreError> {
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let file = format!("{}/{name}", location.trim_end_matches('/'));
        files.push(read_input_file(&file, base_dir, options, retry).await?);
    }
    Ok(files)
}

fn local_input(file: &FsPath) -> Result<(Storage, Path), StoreError> {
    let storage = Storage::open_local(FsPath::new("/"))?;
    let absolute = absolute_lexical(file)?;
    let path = Path::from_absolute_path(&absolute)
        .map_err(|e| StoreError::BadRoot { root: absolute.display().to_string(), reason: e.to_string() })?;
    Ok((storage, path))
}

/// `path` made absolute with `.` and `..` resolved by name (object-store paths
/// have no such segments). Symbolic links are not followed, as a shell would not.
fn absolute_lexical(path: &FsPath) -> Result<PathBuf, StoreError> {
    let absolute = std::path::absolute(path).map_err(|source| StoreError::Io { path: path.to_path_buf(), source })?;
    let mut normal = PathBuf::new();
    for component in absolute.components() {
        match component {
            std::path::Component::ParentDir => {
                normal.pop();
            }
            std::path::Component::CurDir => {}
            other => normal.push(other),
        }
    }
    Ok(normal)
}

/// Whether `root` names a cloud object store (the roots storage options apply to).
pub fn is_cloud_root(root: &str) -> bool {
    Url::parse(root).is_ok_and(|url| Scheme::named(url.scheme()).is_some_and(|scheme| scheme.cloud))
}

/// The local path a `file://` URL names; a URL with a host names another
/// machine's file, which is a mistake worth spelling out.
fn file_url_path(url: &Url) -> Result<PathBuf, String> {
    match url.host_str() {
        Some(host) if !host.is_empty() && host != "localhost" => Err(format!(
            "a file:// URL names a path on this machine, and `{host}` is read as a host name; write \
             file:///{host}{} for the path /{host}{}",
            url.path(),
            url.path()
        )),
        _ => url.to_file_path().map_err(|()| "a file:// URL needs an absolute path".to_string()),
    }
}

/// Why `root` cannot be a storage root, without opening it (for validation).
pub fn root_problem(root: &str) -> Option<String> {
    if root.trim().is_empty() {
        return Some("the storage root is empty".into());
    }
    let url = Url::parse(root).ok().filter(|url| url.scheme().len() > 1)?;
    match Scheme::named(url.scheme()) {
        None => Some(Scheme::unsupported(url.scheme())),
        Some(scheme) if scheme.cloud && url.host_str().is_none_or(str::is_empty) => {
            Some(format!("`{root}` names no bucket"))
        }
        Some(scheme) if scheme.open.is_none() => file_url_path(&url).err(),
        Some(_) => None,
    }
}
