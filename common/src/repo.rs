//! The bundle repository: content-addressed bundle archives in a local directory, S3 (or any
//! S3-compatible server), Azure Blob Storage or Google Cloud Storage, through `object_store`.
//!
//! Object keys are `<prefix>/bundles/sha256/<64 lowercase hex>`. Since the key is the content's
//! digest, writing the same key twice writes the same bytes, which makes uploads idempotent.
//!
//! Errors are [`RepoError`]: `NotFound`, `Unavailable` (network or server-side trouble: retry
//! later) and the rest. Error messages never include credentials.
//!
//! Bundles are read through [`BundleReader`], a blocking `Read` for `spawn_blocking` consumers
//! (hash, decompress and unpack in one pass): a local repository's file is read directly, and a
//! cloud object's body is forwarded by a task through a small bounded channel, so neither costs
//! a runtime round trip per chunk and memory stays bounded.

use std::fmt;
use std::io::{self, Read as _, Seek as _, Write as _};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::{Buf as _, Bytes};
use futures::StreamExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    GetResultPayload, ObjectStore, ObjectStoreExt as _, PutPayload, RetryConfig, WriteMultipart,
};
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;

use crate::config::{RepoConfig, RepoKind};
use crate::crypto::{Sha256Hasher, hex, parse_hex32};

/// Files larger than this are uploaded with a multipart upload.
pub const MULTIPART_THRESHOLD: u64 = 8 * 1024 * 1024;
/// Part size of multipart uploads (S3 requires at least 5 MiB for all but the last part).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded concurrently during a multipart upload.
const MULTIPART_CONCURRENCY: usize = 4;
/// Retries of a failed cloud request: 5, with exponential backoff from 100 ms, at most 60 s in
/// all, so an unreachable repository is reported in seconds rather than minutes.
fn retry_config() -> RetryConfig {
    RetryConfig {
        max_retries: 5,
        retry_timeout: std::time::Duration::from_secs(60),
        ..RetryConfig::default()
    }
}
/// Read buffer for streaming a local file into a multipart upload.
const READ_CHUNK: usize = 1024 * 1024;
/// Chunks of a cloud object's body buffered between the network and a [`BundleReader`].
const STREAM_CHUNKS: usize = 32;
/// Copy buffer of [`BundleRepo::download_to`].
const DOWNLOAD_CHUNK: usize = 256 * 1024;

/// Errors of the bundle repository. Messages never include credentials.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("invalid bundle repository configuration: {0}")]
    Config(String),
    #[error("invalid bundle digest {0:?}: expected 64 hex characters")]
    InvalidDigest(String),
    #[error("bundle sha256:{digest} not found in the repository")]
    NotFound { digest: String },
    #[error("bundle repository unavailable: {0}")]
    Unavailable(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle repository error: {0}")]
    Other(String),
}

impl RepoError {
    /// Worth retrying later (network trouble, server errors, throttling).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

fn io_err(action: &'static str, path: &FsPath) -> impl FnOnce(std::io::Error) -> RepoError {
    let path = path.to_path_buf();
    move |source| RepoError::Io {
        action,
        path,
        source,
    }
}

/// The bundle repository. Cheap to clone.
#[derive(Clone)]
pub struct BundleRepo {
    store: Arc<dyn ObjectStore>,
    /// `<prefix>/bundles/sha256`.
    base: Path,
    kind: RepoKind,
    /// Where, for logs and `Debug` (no credentials).
    location: String,
    /// Credential strings scrubbed from every error message.
    secrets: Arc<Vec<String>>,
}

impl fmt::Debug for BundleRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleRepo")
            .field("kind", &self.kind)
            .field("location", &self.location)
            .field("base", &self.base.as_ref())
            .finish_non_exhaustive()
    }
}

fn read_secret(
    value: &str,
    file: Option<&PathBuf>,
    what: &str,
) -> Result<Option<String>, RepoError> {
    if !value.is_empty() {
        return Ok(Some(value.to_owned()));
    }
    match file {
        Some(path) if !path.as_os_str().is_empty() => std::fs::read_to_string(path)
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|e| RepoError::Config(format!("reading {what} from {}: {e}", path.display()))),
        _ => Ok(None),
    }
}

fn base_path(prefix: &str) -> Result<Path, RepoError> {
    let trimmed = prefix.trim().trim_matches('/');
    let prefix = Path::parse(trimmed)
        .map_err(|e| RepoError::Config(format!("invalid prefix {trimmed:?}: {e}")))?;
    Ok(prefix.join("bundles").join("sha256"))
}

fn required<'a>(value: &'a str, what: &str) -> Result<&'a str, RepoError> {
    let v = value.trim();
    if v.is_empty() {
        Err(RepoError::Config(format!("{what} is required")))
    } else {
        Ok(v)
    }
}

impl BundleRepo {
    /// Builds the repository described by `config.kind`. The local directory is created if
    /// missing; cloud backends are not contacted until the first request.
    pub fn from_config(config: &RepoConfig) -> Result<Self, RepoError> {
        let mut secrets = Vec::new();
        let (store, base, location): (Arc<dyn ObjectStore>, Path, String) = match config.kind {
            RepoKind::Local => {
                let dir = &config.local.path;
                if dir.as_os_str().is_empty() {
                    return Err(RepoError::Config("repo.local.path is required".into()));
                }
                std::fs::create_dir_all(dir).map_err(io_err("creating directory", dir))?;
                let fs = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| RepoError::Config(format!("{}: {e}", dir.display())))?;
                (
                    Arc::new(fs),
                    base_path("")?,
                    format!("local:{}", dir.display()),
                )
            }
            RepoKind::S3 => {
                let c = &config.s3;
                let bucket = required(&c.bucket, "repo.s3.bucket")?;
                let region = if c.region.trim().is_empty() {
                    "us-east-1"
                } else {
                    c.region.trim()
                };
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_retry(retry_config());
                let endpoint = c.endpoint.trim().trim_end_matches('/');
                if !endpoint.is_empty() {
                    b = b
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                let secret = read_secret(
                    &c.secret_access_key,
                    c.secret_access_key_file.as_ref(),
                    "repo.s3.secretAccessKey",
                )?;
                if !c.access_key_id.is_empty() {
                    let Some(secret) = secret else {
                        return Err(RepoError::Config(
                            "repo.s3.accessKeyId is set but repo.s3.secretAccessKey(File) is not"
                                .into(),
                        ));
                    };
                    b = b
                        .with_access_key_id(&c.access_key_id)
                        .with_secret_access_key(&secret);
                    secrets.push(secret);
                    secrets.push(c.access_key_id.clone());
                }
                let store = b
                    .build()
                    .map_err(|e| RepoError::Config(scrub(&e.to_string(), &secrets)))?;
                let location = if endpoint.is_empty() {
                    format!("s3://{bucket}")
                } else {
                    format!("s3://{bucket} at {endpoint}")
                };
                (Arc::new(store), base_path(&c.prefix)?, location)
            }
            RepoKind::Azure => {
                let c = &config.azure;
                let account = required(&c.account, "repo.azure.account")?;
                let container = required(&c.container, "repo.azure.container")?;
                let mut b = MicrosoftAzureBuilder::from_env()
                    .with_account(account)
                    .with_container_name(container)
                    .with_retry(retry_config());
                let endpoint = c.endpoint.trim().trim_end_matches('/');
                if !endpoint.is_empty() {
                    b = b
                        .with_endpoint(endpoint.to_owned())
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(key) = read_secret(
                    &c.access_key,
                    c.access_key_file.as_ref(),
                    "repo.azure.accessKey",
                )? {
                    b = b.with_access_key(&key);
                    secrets.push(key);
                }
                let store = b
                    .build()
                    .map_err(|e| RepoError::Config(scrub(&e.to_string(), &secrets)))?;
                let location = if endpoint.is_empty() {
                    format!("azure://{account}/{container}")
                } else {
                    format!("azure://{account}/{container} at {endpoint}")
                };
                (Arc::new(store), base_path(&c.prefix)?, location)
            }
            RepoKind::Gcs => {
                let c = &config.gcs;
                let bucket = required(&c.bucket, "repo.gcs.bucket")?;
                let mut b = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry_config());
                if !c.service_account_path.trim().is_empty() {
                    b = b.with_service_account_path(c.service_account_path.trim());
                }
                let store = b
                    .build()
                    .map_err(|e| RepoError::Config(scrub(&e.to_string(), &secrets)))?;
                (
                    Arc::new(store),
                    base_path(&c.prefix)?,
                    format!("gs://{bucket}"),
                )
            }
        };
        secrets.retain(|s| !s.is_empty());
        Ok(Self {
            store,
            base,
            kind: config.kind,
            location,
            secrets: Arc::new(secrets),
        })
    }

    /// Wraps an existing store (tests, in-memory repositories).
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Self, RepoError> {
        Ok(Self {
            location: store.to_string(),
            store,
            base: base_path(prefix)?,
            kind: RepoKind::Local,
            secrets: Arc::new(Vec::new()),
        })
    }

    /// The backend kind.
    pub fn kind(&self) -> RepoKind {
        self.kind
    }

    /// Human-readable location (no credentials), e.g. `s3://bucket at http://host:9000`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Object key of a bundle, `<prefix>/bundles/sha256/<hex>`.
    pub fn object_key(&self, digest_hex: &str) -> Result<String, RepoError> {
        Ok(self.path_for(digest_hex)?.1.to_string())
    }

    /// Validated lowercase hex and object path.
    fn path_for(&self, digest_hex: &str) -> Result<(String, Path), RepoError> {
        let hex_digest = digest_hex.strip_prefix("sha256:").unwrap_or(digest_hex);
        let bytes = parse_hex32(hex_digest).map_err(|_| {
            RepoError::InvalidDigest(digest_hex.chars().take(80).collect::<String>())
        })?;
        let hex_digest = hex(&bytes);
        let path = self.base.clone().join(hex_digest.as_str());
        Ok((hex_digest, path))
    }

    fn map_err(&self, digest: &str, err: object_store::Error) -> RepoError {
        if let object_store::Error::NotFound { .. } = err {
            return RepoError::NotFound {
                digest: digest.to_owned(),
            };
        }
        let message = scrub(&err.to_string(), &self.secrets);
        if is_unavailable(&err) {
            RepoError::Unavailable(format!("{}: {message}", self.location))
        } else {
            RepoError::Other(format!("{}: {message}", self.location))
        }
    }

    /// Uploads a finished local file as the bundle `digest_hex`. Skipped when an object of the
    /// same size already exists under that digest. Files over 8 MiB use a multipart upload.
    /// The caller is responsible for `digest_hex` being the file's SHA-256.
    pub async fn put_file(&self, digest_hex: &str, path: &FsPath) -> Result<(), RepoError> {
        let (digest, location) = self.path_for(digest_hex)?;
        let size = tokio::fs::metadata(path)
            .await
            .map_err(io_err("reading", path))?
            .len();
        match self.store.head(&location).await {
            Ok(meta) if meta.size == size => {
                tracing::debug!(digest, size, "bundle already in the repository");
                return Ok(());
            }
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.map_err(&digest, e)),
        }
        if size <= MULTIPART_THRESHOLD {
            let data = tokio::fs::read(path)
                .await
                .map_err(io_err("reading", path))?;
            self.store
                .put(&location, PutPayload::from(data))
                .await
                .map_err(|e| self.map_err(&digest, e))?;
        } else {
            self.put_multipart(&digest, &location, path).await?;
        }
        tracing::debug!(digest, size, repo = %self.location, "bundle uploaded");
        Ok(())
    }

    async fn put_multipart(
        &self,
        digest: &str,
        location: &Path,
        path: &FsPath,
    ) -> Result<(), RepoError> {
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(io_err("opening", path))?;
        let upload = self
            .store
            .put_multipart(location)
            .await
            .map_err(|e| self.map_err(digest, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    // Best effort: the upload is abandoned either way.
                    let _ = writer.abort().await;
                    return Err(io_err("reading", path)(e));
                }
            };
            if let Err(e) = writer.wait_for_capacity(MULTIPART_CONCURRENCY).await {
                let _ = writer.abort().await;
                return Err(self.map_err(digest, e));
            }
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(|e| self.map_err(digest, e))?;
        Ok(())
    }

    /// Whether the bundle exists.
    pub async fn exists(&self, digest_hex: &str) -> Result<bool, RepoError> {
        let (digest, location) = self.path_for(digest_hex)?;
        match self.store.head(&location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.map_err(&digest, e)),
        }
    }

    /// Deletes the bundle; a missing bundle is not an error.
    pub async fn delete(&self, digest_hex: &str) -> Result<(), RepoError> {
        let (digest, location) = self.path_for(digest_hex)?;
        match self.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err(&digest, e)),
        }
    }

    /// Opens the bundle for reading. A missing bundle fails here, before any byte is read.
    pub async fn open(&self, digest_hex: &str) -> Result<BundleReader, RepoError> {
        let (digest, location) = self.path_for(digest_hex)?;
        let result = self
            .store
            .get(&location)
            .await
            .map_err(|e| self.map_err(&digest, e))?;
        let size = result.range.end.saturating_sub(result.range.start);
        let source = match result.payload {
            GetResultPayload::File(mut file, path) => {
                // A seek on a regular file does not block.
                file.seek(io::SeekFrom::Start(result.range.start))
                    .map_err(io_err("reading", &path))?;
                Source::File { file, path }
            }
            GetResultPayload::Stream(mut stream) => {
                let (sender, chunks) = mpsc::channel(STREAM_CHUNKS);
                let repo = self.clone();
                let pump_digest = digest.clone();
                let pump = tokio::spawn(async move {
                    while let Some(item) = stream.next().await {
                        let item = item.map_err(|e| repo.map_err(&pump_digest, e));
                        let failed = item.is_err();
                        if sender.send(item).await.is_err() || failed {
                            break;
                        }
                    }
                });
                Source::Stream {
                    chunks,
                    current: Bytes::new(),
                    pump,
                }
            }
        };
        Ok(BundleReader {
            location: self.location.clone(),
            size,
            read: 0,
            source,
        })
    }

    /// Streams the bundle to `dest` (written as `<dest>.partial`, synced, renamed when
    /// complete) while hashing it, and returns the SHA-256 of what was written. The caller
    /// compares it with the expected digest.
    pub async fn download_to(
        &self,
        digest_hex: &str,
        dest: &FsPath,
    ) -> Result<[u8; 32], RepoError> {
        let reader = self.open(digest_hex).await?;
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let partial = partial_path(&dest);
            match copy_hashed(reader, &partial) {
                Ok(hash) => {
                    std::fs::rename(&partial, &dest).map_err(io_err("renaming into", &dest))?;
                    Ok(hash)
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| RepoError::Other(format!("download task failed: {e}")))?
    }

    /// Digests (lowercase hex) of every bundle in the repository, sorted. Objects under the
    /// bundle prefix whose name is not a digest are ignored.
    pub async fn list_digests(&self) -> Result<Vec<String>, RepoError> {
        let mut stream = self.store.list(Some(&self.base));
        let mut digests = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = match meta {
                Ok(meta) => meta,
                // A prefix that does not exist yet lists as empty.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.map_err("*", e)),
            };
            let mut parts = meta.location.prefix_match(&self.base).into_iter().flatten();
            let (Some(name), None) = (parts.next(), parts.next()) else {
                continue;
            };
            if let Ok(bytes) = parse_hex32(name.as_ref()) {
                digests.push(hex(&bytes));
            }
        }
        digests.sort();
        digests.dedup();
        Ok(digests)
    }
}

/// A bundle being read from the repository (see [`BundleRepo::open`]). Its reads block: use
/// it from `spawn_blocking` or a thread of its own, never on an async task.
///
/// A failed read is an `io::Error` wrapping the [`RepoError`] (see [`BundleReader::repo_error`]),
/// so a consumer that wraps the reader can still tell a failed download from a bad archive.
/// The bundle must have exactly the size the repository announced: ending early is an error.
pub struct BundleReader {
    location: String,
    size: u64,
    read: u64,
    source: Source,
}

enum Source {
    File {
        file: std::fs::File,
        path: PathBuf,
    },
    Stream {
        chunks: mpsc::Receiver<Result<Bytes, RepoError>>,
        current: Bytes,
        pump: tokio::task::JoinHandle<()>,
    },
}

impl fmt::Debug for BundleReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleReader")
            .field("location", &self.location)
            .field("size", &self.size)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl BundleReader {
    /// The bundle's size in bytes, as the repository reported it.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The repository error behind a read error of this reader, if it is one.
    pub fn repo_error(err: &io::Error) -> Option<&RepoError> {
        err.get_ref()?.downcast_ref::<RepoError>()
    }

    fn read_source(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.source {
            Source::File { file, path } => loop {
                match file.read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io::Error::other(io_err("reading", path)(e))),
                }
            },
            Source::Stream {
                chunks, current, ..
            } => {
                while current.is_empty() {
                    match chunks.blocking_recv() {
                        Some(Ok(chunk)) => *current = chunk,
                        Some(Err(e)) => return Err(io::Error::other(e)),
                        None => return Ok(0),
                    }
                }
                let n = buf.len().min(current.len());
                buf[..n].copy_from_slice(&current[..n]);
                current.advance(n);
                Ok(n)
            }
        }
    }
}

impl io::Read for BundleReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.size - self.read;
        if left == 0 || buf.is_empty() {
            // A local file may have grown since: the announced size is the object.
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.read_source(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                // No location: the message may be shown to users, and a local one is a path.
                RepoError::Unavailable(format!(
                    "the bundle ended after {} of {} bytes",
                    self.read, self.size
                )),
            ));
        }
        self.read += n as u64;
        Ok(n)
    }
}

impl Drop for BundleReader {
    fn drop(&mut self) {
        if let Source::Stream { pump, .. } = &self.source {
            pump.abort();
        }
    }
}

/// Copies `reader` into a new file at `path` while hashing it; syncs the file.
fn copy_hashed(mut reader: BundleReader, path: &FsPath) -> Result<[u8; 32], RepoError> {
    let mut file = std::fs::File::create(path).map_err(io_err("creating", path))?;
    let mut hasher = Sha256Hasher::new();
    let mut buf = vec![0u8; DOWNLOAD_CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let text = e.to_string();
                return Err(match e.into_inner().map(|e| e.downcast::<RepoError>()) {
                    Some(Ok(repo)) => *repo,
                    _ => RepoError::Other(text),
                });
            }
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(io_err("writing", path))?;
    }
    file.sync_all().map_err(io_err("syncing", path))?;
    Ok(hasher.finish())
}

fn partial_path(dest: &FsPath) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    dest.with_file_name(name)
}

/// Replaces every credential string in `message` with `<redacted>`.
fn scrub(message: &str, secrets: &[String]) -> String {
    let mut out = message.to_owned();
    for s in secrets {
        if s.len() >= 4 {
            out = out.replace(s.as_str(), "<redacted>");
        }
    }
    out
}

/// Network-level failures, server errors and throttling: worth retrying later.
fn is_unavailable(err: &object_store::Error) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(http) = e.downcast_ref::<HttpError>()
            && matches!(
                http.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            )
        {
            return true;
        }
        // The retry layer's status errors are not public types; match their message.
        let text = e.to_string();
        if text.contains("non-2xx status code: 5") || text.contains("non-2xx status code: 429") {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests;
