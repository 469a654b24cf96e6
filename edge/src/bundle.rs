//! A staged bundle: an app version unpacked under `edge.dataDir`, with every file's serving
//! metadata computed once at staging (content type, strong ETag, compressed variants), so a
//! request never computes any of it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use statiko_common::manifest::Manifest;

/// Files at or below this size are kept in memory and served without a filesystem call.
pub const HOT_FILE_MAX: u64 = 256 * 1024;

/// One unpacked, verified bundle, shared by every site that deploys the same digest.
#[derive(Debug)]
pub struct StagedBundle {
    /// `sha256:<hex>` of the archive.
    pub digest: String,
    /// Directory holding the unpacked files.
    pub root: PathBuf,
    /// Every regular file, keyed by its URL path: leading `/`, `/`-separated, no trailing slash,
    /// not percent-encoded (e.g. `/index.html`, `/docs/a b.html`).
    pub files: HashMap<String, Arc<StaticFile>>,
    /// Every directory, keyed like `files` (the root is `/`), for index and slash-redirect rules.
    pub dirs: HashSet<String>,
    /// The compiled app manifest (`_statiko.yaml`), when the bundle has one.
    pub manifest: Option<Arc<Manifest>>,
}

/// Where a response body comes from.
#[derive(Debug, Clone)]
pub enum Body {
    /// Small files: the bytes themselves.
    Memory(Bytes),
    /// Larger files: streamed from disk.
    Disk(PathBuf),
}

/// A precompressed representation of a file.
#[derive(Debug, Clone)]
pub struct Variant {
    pub len: u64,
    pub body: Body,
    /// Strong ETag of this representation (quoted), distinct from the identity one.
    pub etag: String,
}

/// One servable file with everything a response needs.
#[derive(Debug, Clone)]
pub struct StaticFile {
    pub len: u64,
    pub body: Body,
    /// `Content-Type` value, with `; charset=utf-8` for text types.
    pub content_type: String,
    /// Strong ETag (quoted), from the content hash.
    pub etag: String,
    pub last_modified: SystemTime,
    pub gzip: Option<Variant>,
    pub brotli: Option<Variant>,
}
