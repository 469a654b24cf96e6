//! Precompression: each file's metadata, and gzip and brotli variants of those worth it.

use std::fs::File;
use std::io::{self, BufWriter, Read as _, Seek as _, Write as _};
use std::path::Path;
use std::time::SystemTime;

use statiko_common::archive::Unpacked;
use statiko_common::crypto::{Digest, hex};

use super::content_type::{content_type_for, is_compressible};
use super::meta::{BundleMeta, FileMeta, VariantMeta};
use super::{BROTLI_DIR, CHUNK, GZIP_DIR, META_VERSION, ROOT_DIR, StageError, VARIANTS_DIR};

/// Files smaller than this are not precompressed.
pub const MIN_COMPRESS_LEN: u64 = 512;
const GZIP_LEVEL: u32 = 6;
const BROTLI_QUALITY: u32 = 5;
const BROTLI_WINDOW: u32 = 22;
/// A file larger than this is compressed only when its first `SAMPLE_LEN` bytes compress.
pub(super) const SAMPLE_LEN: usize = 64 * 1024;

/// Each unpacked file's metadata (its hash was taken while unpacking), and compressed variants
/// under `dir/variants` for the files worth compressing.
pub(super) fn precompute(
    dir: &Path,
    digest: Digest,
    unpacked: Unpacked,
) -> Result<BundleMeta, StageError> {
    let root = dir.join(ROOT_DIR);
    let variants = dir.join(VARIANTS_DIR);
    let mut files = Vec::with_capacity(unpacked.files.len());
    for file in unpacked.files {
        if super::SITE_FILES.contains(&file.path.as_str()) {
            continue;
        }
        let content_type = content_type_for(&file.path);
        let tag = hex(&file.sha256);
        let tag = &tag[..32];
        let (gzip, brotli) =
            if file.len >= MIN_COMPRESS_LEN && is_compressible(&content_type, &file.path) {
                compress_file(&root, &variants, &file.path, file.len, tag)
                    .map_err(|e| StageError::Io(format!("precomputing {:?}: {e}", file.path)))?
            } else {
                (None, None)
            };
        let mtime = file
            .mtime
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        files.push(FileMeta {
            path: file.path,
            len: file.len,
            content_type,
            etag: format!("\"{tag}\""),
            mtime_secs: mtime.as_secs(),
            mtime_nanos: mtime.subsec_nanos(),
            gzip,
            brotli,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut dirs = unpacked.dirs;
    dirs.push(String::new());
    dirs.sort();
    Ok(BundleMeta {
        version: META_VERSION,
        digest,
        files,
        dirs,
    })
}

/// Writes the gzip and brotli variants of one file, reading it once, and keeps those that pay
/// off. A large file whose first [`SAMPLE_LEN`] bytes do not compress is left alone: media,
/// archives and random data would cost a full pass for nothing.
pub(super) fn compress_file(
    root: &Path,
    variants: &Path,
    rel: &str,
    len: u64,
    tag: &str,
) -> io::Result<(Option<VariantMeta>, Option<VariantMeta>)> {
    let mut file = File::open(root.join(rel))?;
    let mut buf = vec![0u8; CHUNK.max(SAMPLE_LEN)];
    if len > SAMPLE_LEN as u64 {
        file.read_exact(&mut buf[..SAMPLE_LEN])?;
        if !compresses(&buf[..SAMPLE_LEN])? {
            return Ok((None, None));
        }
        file.rewind()?;
    }
    let gz_path = variants.join(GZIP_DIR).join(rel);
    let br_path = variants.join(BROTLI_DIR).join(rel);
    for path in [&gz_path, &br_path] {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
    }
    let mut gz = flate2::write::GzEncoder::new(
        BufWriter::new(File::create(&gz_path)?),
        flate2::Compression::new(GZIP_LEVEL),
    );
    let mut br = brotli::CompressorWriter::new(
        BufWriter::new(File::create(&br_path)?),
        CHUNK,
        BROTLI_QUALITY,
        BROTLI_WINDOW,
    );
    let mut read_len = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        read_len += n as u64;
        gz.write_all(&buf[..n])?;
        br.write_all(&buf[..n])?;
    }
    if read_len != len {
        return Err(io::Error::other("file changed while staging"));
    }
    // Synced by the bundle's seal, with everything else.
    gz.finish()?.flush()?;
    br.into_inner().flush()?;
    Ok((
        keep_variant(&gz_path, len, format!("\"{tag}-gz\""))?,
        keep_variant(&br_path, len, format!("\"{tag}-br\""))?,
    ))
}

/// Whether a fast gzip pass makes `sample` at least 5% smaller (the bar a variant must clear).
pub(super) fn compresses(sample: &[u8]) -> io::Result<bool> {
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(sample.len()),
        flate2::Compression::fast(),
    );
    gz.write_all(sample)?;
    let out = gz.finish()?;
    Ok(out.len() * 100 <= sample.len() * 95)
}

/// Keeps a variant only when it is at least 5% smaller than the original.
fn keep_variant(path: &Path, original: u64, etag: String) -> io::Result<Option<VariantMeta>> {
    let len = std::fs::metadata(path)?.len();
    if len.saturating_mul(100) <= original.saturating_mul(95) {
        Ok(Some(VariantMeta { len, etag }))
    } else {
        std::fs::remove_file(path)?;
        Ok(None)
    }
}
