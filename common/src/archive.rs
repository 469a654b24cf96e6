//! Safe unpacking of bundle archives (tar.gz, tar.zst, zip), shared by control (upload checks)
//! and the edge (staging): both run the same [`Unpacker`] rules, so whatever uploads stages.
//!
//! Every entry is checked before anything is written: no `..`, no absolute paths, no Windows
//! drive letters or backslashes, no NUL; only regular files and directories (links, devices and
//! fifos are refused); no path twice, in tar and zip alike; bounded entry count, path length and
//! total unpacked size, the size being counted while reading so a decompression bomb is stopped
//! early. `__MACOSX/` and AppleDouble `._*` entries are skipped, as are pax global headers. An
//! archive whose entries all live under one top-level folder is flattened, as the original does.
//!
//! Memory is bounded by the limits before anything is allocated: a tar header record (pax
//! extended header, GNU long name or long link) is refused when it declares more than
//! [`MAX_HEADER_RECORD`] bytes ([`tar_reader`]); a zip's end record is checked against
//! `limits.maxBundleEntries` before its central directory is read, one entry at a time
//! ([`zip_reader`]); the paths held while unpacking (files and directories, implied ones included) are
//! counted against the entry limit and a name budget of [`NAME_BYTES_PER_ENTRY`] bytes per
//! allowed entry.
//!
//! Every entry point is blocking; async callers use `spawn_blocking`. [`unpack_stream`] reads a
//! tar archive from any reader (a download in flight) and [`unpack_file`] any archive from a
//! file; both hash each file while writing it, so a caller never reads a file back for its hash.

mod tar_reader;
mod unpacker;
mod zip_reader;

use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::SystemTime;

use crate::config::LimitsConfig;
use crate::crypto::Sha256Hasher;
use crate::manifest::{MANIFEST_FILE, MAX_MANIFEST_LEN, Manifest};
use crate::model::BundleFormat;
use unpacker::{ManifestCapture, Unpacker};

/// Default cap on the length of one entry's path, in bytes.
pub const DEFAULT_MAX_PATH_LEN: usize = 1024;
/// Largest tar header record (pax extended header, GNU long name or long link) read into
/// memory. Real ones hold a path and a few times, at most a few KiB.
pub const MAX_HEADER_RECORD: u64 = 64 * 1024;
/// The paths held while unpacking may take this many bytes per allowed entry, on average.
pub const NAME_BYTES_PER_ENTRY: u64 = 256;
/// Longest single path component most filesystems accept.
const MAX_COMPONENT_LEN: usize = 255;
/// Entry names are cut to this many characters in error messages.
const NAME_IN_MESSAGE: usize = 200;
/// Copy buffer size.
const CHUNK: usize = 64 * 1024;

/// Limits applied while unpacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Most entries (files, directories and skipped entries alike); also the most
    /// directories, implied ones included.
    pub max_entries: u64,
    /// Most bytes of file data in all.
    pub max_unpacked_size: u64,
    /// Longest path of one entry, in bytes.
    pub max_path_len: usize,
    /// Most bytes of distinct paths (files and directories) held in memory while unpacking.
    pub max_name_bytes: u64,
}

impl ArchiveLimits {
    pub fn from_config(limits: &LimitsConfig) -> Self {
        Self {
            max_entries: limits.max_bundle_entries,
            max_unpacked_size: limits.max_unpacked_size,
            max_path_len: DEFAULT_MAX_PATH_LEN,
            max_name_bytes: limits
                .max_bundle_entries
                .saturating_mul(NAME_BYTES_PER_ENTRY)
                .max(1 << 20),
        }
    }
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self::from_config(&LimitsConfig::default())
    }
}

/// What an archive holds, after skipping and flattening.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Regular files.
    pub files: u64,
    /// Directories (explicit or implied by a file path), not counting the root.
    pub dirs: u64,
    /// Total bytes of file data.
    pub bytes: u64,
    /// Entries skipped (`__MACOSX/`, `._*`, pax global headers).
    pub skipped: u64,
    /// The single top-level folder that was flattened, if any.
    pub flattened: Option<String>,
}

/// One regular file written by [`unpack_stream`] or [`unpack_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedFile {
    /// Relative path under the destination, `/`-separated, after flattening.
    pub path: String,
    pub len: u64,
    /// The archived modification time, else the time the file was written.
    pub mtime: SystemTime,
    /// SHA-256 of the file's content, computed while it was written.
    pub sha256: [u8; 32],
}

/// What [`unpack_stream`] and [`unpack_file`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub stats: UnpackStats,
    /// Every regular file, in archive order.
    pub files: Vec<UnpackedFile>,
    /// Every directory (explicit or implied), relative and after flattening, sorted; the
    /// destination itself is not listed.
    pub dirs: Vec<String>,
}

/// Why an archive was refused. Messages name the offending entry and never a host path.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("entry {entry:?} has a '..' path component")]
    ParentDir { entry: String },
    #[error("entry {entry:?} has an absolute path")]
    AbsolutePath { entry: String },
    #[error("entry {entry:?} has a windows drive letter or backslash in its path")]
    WindowsPath { entry: String },
    #[error("entry {entry:?} has a nul byte in its path")]
    NulInPath { entry: String },
    #[error("entry {entry:?} has a name that is not valid utf-8")]
    InvalidName { entry: String },
    #[error("entry {entry:?} has a path longer than {max} bytes (or a component over 255)")]
    PathTooLong { entry: String, max: usize },
    #[error("entry {entry:?} is a symbolic link; bundles may hold only files and directories")]
    Symlink { entry: String },
    #[error("entry {entry:?} is a hard link; bundles may hold only files and directories")]
    HardLink { entry: String },
    #[error("entry {entry:?} is a {kind}; bundles may hold only files and directories")]
    SpecialFile { entry: String, kind: &'static str },
    #[error("entry {entry:?} is encrypted")]
    Encrypted { entry: String },
    #[error("archive has more than {max} entries (limits.maxBundleEntries)")]
    TooManyEntries { max: u64 },
    #[error(
        "archive unpacks to more than {max} bytes (limits.maxUnpackedSize; stopped at entry {entry:?})"
    )]
    TooLarge { max: u64, entry: String },
    #[error(
        "archive paths add up to more than {max} bytes ({NAME_BYTES_PER_ENTRY} per entry of limits.maxBundleEntries)"
    )]
    TooManyNames { max: u64 },
    #[error(
        "tar {kind} record of {size} bytes is over the {MAX_HEADER_RECORD}-byte limit on header records"
    )]
    HeaderTooLarge { kind: &'static str, size: u64 },
    #[error("archive contains no files")]
    Empty,
    #[error("entry {entry:?} appears more than once")]
    Duplicate { entry: String },
    #[error("entry {entry:?} is both a file and a directory")]
    PathConflict { entry: String },
    /// Only from [`check_upload`]: the rules staging applies after unpacking.
    #[error("invalid app manifest {MANIFEST_FILE}: {0}")]
    Manifest(String),
    #[error("not a valid {format} archive: {detail}")]
    Corrupt {
        format: &'static str,
        detail: String,
    },
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
}

/// Unpacks `archive` into `dest`, a fresh empty directory, applying every rule of this module.
/// Files get mode 0644 and their archived modification time, directories 0755. On error,
/// `dest` may hold a partial tree: the caller removes it.
pub fn unpack(
    archive: &Path,
    format: BundleFormat,
    dest: &Path,
    limits: &ArchiveLimits,
) -> Result<UnpackStats, ArchiveError> {
    run(archive, format, Unpacker::new(Some(dest), limits)).map(|u| u.stats)
}

/// Like [`unpack`], also hashing every file as it is written and listing what was written.
pub fn unpack_file(
    archive: &Path,
    format: BundleFormat,
    dest: &Path,
    limits: &ArchiveLimits,
) -> Result<Unpacked, ArchiveError> {
    run(
        archive,
        format,
        Unpacker::new(Some(dest), limits).recording(),
    )
}

/// Like [`unpack_file`], reading a tar archive (`tar.gz` or `tar.zst`) from `reader` as it
/// comes, e.g. straight from a download. A zip archive needs random access: use
/// [`unpack_file`]. The reader is read up to the archive's end marker, not necessarily to
/// its own end.
pub fn unpack_stream<R: Read>(
    reader: R,
    format: BundleFormat,
    dest: &Path,
    limits: &ArchiveLimits,
) -> Result<Unpacked, ArchiveError> {
    let mut unpacker = Unpacker::new(Some(dest), limits).recording();
    match format {
        BundleFormat::Zip => {
            return Err(ArchiveError::Io {
                action: "unpacking a zip archive".into(),
                source: io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a zip archive cannot be read as a stream",
                ),
            });
        }
        BundleFormat::TarGz | BundleFormat::TarZst => {
            tar_reader::unpack(reader, format, &mut unpacker)?;
        }
    }
    unpacker.finish()
}

/// A file kept by [`check_upload`]: its path and its first bytes.
pub type KeptFile = (String, Vec<u8>);

/// Applies the same checks as [`unpack`] without writing anything.
pub fn inspect(
    archive: &Path,
    format: BundleFormat,
    limits: &ArchiveLimits,
) -> Result<UnpackStats, ArchiveError> {
    run(archive, format, Unpacker::new(None, limits)).map(|u| u.stats)
}

/// What control checks at upload, in one pass: [`inspect`], plus the rules staging applies to
/// the unpacked bundle (a `_statiko.yaml` at its root, after flattening, must be a valid
/// manifest whose pages are in the bundle), so that whatever uploads stages. Writes nothing.
/// Also returns the content of the files of the archive's root (after flattening) that `keep`
/// names, each cut at its cap plus one byte: the other bundle files control validates at upload
/// (`_redirects`, `_headers`).
pub fn check_upload(
    archive: &Path,
    format: BundleFormat,
    limits: &ArchiveLimits,
    keep: &[(&str, usize)],
) -> Result<(UnpackStats, Vec<KeptFile>), ArchiveError> {
    let kept = RefCell::new(Vec::new());
    let mut unpacker = Unpacker::new(None, limits);
    unpacker.manifest = Some(ManifestCapture::default());
    unpacker.keep = keep;
    unpacker.kept = Some(&kept);
    let stats = run(archive, format, unpacker)?.stats;
    let prefix = stats.flattened.as_ref().map(|top| format!("{top}/"));
    let root_files = kept
        .into_inner()
        .into_iter()
        .filter_map(|(path, bytes)| {
            let path = match &prefix {
                Some(prefix) => path.strip_prefix(prefix.as_str())?.to_owned(),
                None => path,
            };
            (!path.contains('/')).then_some((path, bytes))
        })
        .collect();
    Ok((stats, root_files))
}

fn run(
    archive: &Path,
    format: BundleFormat,
    mut unpacker: Unpacker<'_>,
) -> Result<Unpacked, ArchiveError> {
    let file = File::open(archive).map_err(io_err("opening the archive"))?;
    match format {
        BundleFormat::TarGz | BundleFormat::TarZst => {
            tar_reader::unpack(file, format, &mut unpacker)?
        }
        BundleFormat::Zip => zip_reader::unpack(io::BufReader::new(file), &mut unpacker)?,
    }
    unpacker.finish()
}

fn io_err(action: &str) -> impl FnOnce(io::Error) -> ArchiveError {
    let action = action.to_owned();
    move |source| ArchiveError::Io { action, source }
}

fn corrupt(format: &'static str, err: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Corrupt {
        format,
        detail: err.to_string(),
    }
}

/// An entry name fit for a message: lossy UTF-8, cut short.
fn display_name(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    if text.chars().count() > NAME_IN_MESSAGE {
        let mut cut: String = text.chars().take(NAME_IN_MESSAGE).collect();
        cut.push('…');
        cut
    } else {
        text.into_owned()
    }
}

/// Checks and normalises an entry name into a relative `/`-separated path. `Ok(None)` means
/// the entry is skipped (the root itself, `__MACOSX/`, `._*`).
fn normalize(raw: &[u8], limits: &ArchiveLimits) -> Result<Option<String>, ArchiveError> {
    let entry = || display_name(raw);
    if raw.contains(&0) {
        return Err(ArchiveError::NulInPath { entry: entry() });
    }
    let Ok(text) = std::str::from_utf8(raw) else {
        return Err(ArchiveError::InvalidName { entry: entry() });
    };
    if text.len() > limits.max_path_len {
        return Err(ArchiveError::PathTooLong {
            entry: entry(),
            max: limits.max_path_len,
        });
    }
    let bytes = text.as_bytes();
    if text.contains('\\')
        || (bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':')
    {
        return Err(ArchiveError::WindowsPath { entry: entry() });
    }
    if text.starts_with('/') {
        return Err(ArchiveError::AbsolutePath { entry: entry() });
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(ArchiveError::ParentDir { entry: entry() }),
            _ if part.len() > MAX_COMPONENT_LEN => {
                return Err(ArchiveError::PathTooLong {
                    entry: entry(),
                    max: limits.max_path_len,
                });
            }
            _ => parts.push(part),
        }
    }
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return Ok(None);
    };
    if *first == "__MACOSX" || last.starts_with("._") {
        return Ok(None);
    }
    Ok(Some(parts.join("/")))
}

#[cfg(test)]
mod tests;
