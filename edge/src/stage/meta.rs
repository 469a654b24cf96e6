//! `meta.json` and the in-memory bundle built from it, at staging and after a restart.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use statiko_common::crypto::Digest;
use statiko_common::manifest::Manifest;

use super::site_files::RoutingFiles;
use super::{
    BROTLI_DIR, GZIP_DIR, META_FILE, META_VERSION, ROOT_DIR, VARIANTS_DIR, check_manifest_files,
    read_manifest,
};
use crate::bundle::{
    Body, HOT_FILE_MAX, HeaderText, LastModified, SiteRules, StagedBundle, StaticFile, Variant,
};

/// `meta.json`: what a restart needs to rebuild the `StagedBundle` without reading every file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BundleMeta {
    pub(super) version: u32,
    pub(super) digest: Digest,
    pub(super) files: Vec<FileMeta>,
    /// Relative directory paths (`""` for the root).
    pub(super) dirs: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FileMeta {
    /// Relative path under `root/`, `/`-separated.
    pub(super) path: String,
    pub(super) len: u64,
    pub(super) content_type: String,
    pub(super) etag: String,
    pub(super) mtime_secs: u64,
    pub(super) mtime_nanos: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) gzip: Option<VariantMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) brotli: Option<VariantMeta>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct VariantMeta {
    pub(super) len: u64,
    pub(super) etag: String,
}

pub(super) fn write_meta(dir: &Path, meta: &BundleMeta) -> io::Result<()> {
    let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
    let mut file = File::create(dir.join(META_FILE))?;
    file.write_all(&json)?;
    file.sync_all()
}

pub(super) fn load_bundle(dir: &Path, digest: &Digest) -> io::Result<StagedBundle> {
    let json = std::fs::read(dir.join(META_FILE))?;
    let meta: BundleMeta = serde_json::from_slice(&json).map_err(io::Error::other)?;
    if meta.version != META_VERSION || meta.digest != *digest {
        return Err(io::Error::other(
            "bundle metadata of another version or digest",
        ));
    }
    // A manifest this version refuses makes the bundle unusable: it is staged again, and the
    // staging reports why.
    let manifest =
        read_manifest(&dir.join(ROOT_DIR)).map_err(|e| io::Error::other(e.to_string()))?;
    if let Some(manifest) = &manifest {
        check_manifest_files(manifest, &meta).map_err(|e| io::Error::other(e.to_string()))?;
    }
    let rules = RoutingFiles::read(&dir.join(ROOT_DIR))
        .map_err(|e| io::Error::other(e.to_string()))?
        .into_rules(manifest.as_deref(), &meta);
    build_bundle(dir, &meta, manifest, rules)
}

/// The in-memory bundle for a complete bundle directory: hot files and variants are read into
/// memory, the rest is served from disk. Header values are built here, once; files of one
/// content type share its value.
pub(super) fn build_bundle(
    dir: &Path,
    meta: &BundleMeta,
    manifest: Option<Arc<Manifest>>,
    rules: SiteRules,
) -> io::Result<StagedBundle> {
    let root = dir.join(ROOT_DIR);
    let variants = dir.join(VARIANTS_DIR);
    let header = |text: &str| HeaderText::new(text).map_err(io::Error::other);
    let mut content_types: HashMap<&str, HeaderText> = HashMap::new();
    let mut files = HashMap::with_capacity(meta.files.len());
    for f in &meta.files {
        let path = root.join(&f.path);
        let body = body_for(path, f.len)?;
        let variant = |v: &Option<VariantMeta>, tree: &str| -> io::Result<Option<Variant>> {
            v.as_ref()
                .map(|v| {
                    let path = variants.join(tree).join(&f.path);
                    Ok(Variant {
                        len: v.len,
                        body: body_for(path, v.len)?,
                        etag: header(&v.etag)?,
                    })
                })
                .transpose()
        };
        let gzip = variant(&f.gzip, GZIP_DIR)?;
        let brotli = variant(&f.brotli, BROTLI_DIR)?;
        let content_type = match content_types.get(f.content_type.as_str()) {
            Some(value) => value.clone(),
            None => {
                let value = header(&f.content_type)?;
                content_types.insert(&f.content_type, value.clone());
                value
            }
        };
        let file = StaticFile {
            len: f.len,
            body,
            content_type,
            etag: header(&f.etag)?,
            last_modified: LastModified::new(
                SystemTime::UNIX_EPOCH
                    + Duration::new(f.mtime_secs, f.mtime_nanos.min(999_999_999)),
            ),
            gzip,
            brotli,
        };
        files.insert(format!("/{}", f.path), Arc::new(file));
    }
    let dirs = meta
        .dirs
        .iter()
        .map(|d| format!("/{d}"))
        .collect::<HashSet<_>>();
    Ok(StagedBundle {
        digest: meta.digest,
        root,
        files,
        dirs,
        manifest,
        rules,
    })
}

/// A body for a file of `len` bytes: in memory when small, else the path. The size on disk
/// must match, so a damaged copy is noticed.
fn body_for(path: PathBuf, len: u64) -> io::Result<Body> {
    if len <= HOT_FILE_MAX {
        let bytes = std::fs::read(&path)?;
        if bytes.len() as u64 != len {
            return Err(io::Error::other("staged file changed size"));
        }
        Ok(Body::Memory(Bytes::from(bytes)))
    } else {
        if std::fs::metadata(&path)?.len() != len {
            return Err(io::Error::other("staged file changed size"));
        }
        Ok(Body::Disk(path))
    }
}
