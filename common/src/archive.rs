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

/// Parent directories of a relative path, shortest first (`a/b/c` gives `a`, `a/b`).
fn ancestors(rel: &str) -> impl Iterator<Item = &str> {
    rel.match_indices('/').map(move |(i, _)| &rel[..i])
}

/// A manifest file's first bytes (up to one past the limit) and its length.
struct Captured {
    len: u64,
    bytes: Vec<u8>,
}

/// The files that may become the bundle's manifest, known only once flattening is: the one at
/// the root, and the one under the first top-level folder (dropped when a second folder has
/// one: then nothing is flattened). So at most two, each bounded.
#[derive(Default)]
struct ManifestCapture {
    root: Option<Captured>,
    nested_top: Option<String>,
    nested: Option<Captured>,
}

impl ManifestCapture {
    /// Whether the file `rel` is a candidate (and so must be captured).
    fn wants(&mut self, rel: &str) -> bool {
        if rel == MANIFEST_FILE {
            return true;
        }
        let Some((top, MANIFEST_FILE)) = rel.split_once('/') else {
            return false;
        };
        match &self.nested_top {
            None => {
                self.nested_top = Some(top.to_owned());
                true
            }
            Some(first) => {
                if first != top {
                    self.nested = None;
                }
                false
            }
        }
    }

    fn keep(&mut self, rel: &str, captured: Captured) {
        if rel == MANIFEST_FILE {
            self.root = Some(captured);
        } else {
            self.nested = Some(captured);
        }
    }
}

/// Walks entries, enforcing the limits and writing into `dest` when there is one.
struct Unpacker<'a> {
    dest: Option<&'a Path>,
    limits: &'a ArchiveLimits,
    entries: u64,
    bytes: u64,
    skipped: u64,
    /// Bytes of the distinct paths in `files` and `dirs`.
    name_bytes: u64,
    files: HashSet<String>,
    /// Every directory, explicit or implied.
    dirs: HashSet<String>,
    explicit_dirs: HashSet<String>,
    buf: Vec<u8>,
    /// Hash and list the files written (see [`Unpacker::recording`]).
    record: bool,
    written: Vec<UnpackedFile>,
    /// Set by [`check_upload`]: capture the manifest and check it at the end.
    manifest: Option<ManifestCapture>,
    /// Root files to keep in memory (see [`check_upload`]).
    keep: &'a [(&'a str, usize)],
    /// Where the kept files go.
    kept: Option<&'a RefCell<Vec<KeptFile>>>,
    /// The one top folder whose files `keep` may name one level down (they are root files if
    /// the bundle is flattened); a second top folder means no flattening, and then nothing
    /// below the root is kept, so memory stays bounded by one file per name and place.
    keep_top: KeepTop,
}

#[derive(Debug, Default)]
enum KeepTop {
    #[default]
    Unseen,
    One(String),
    Several,
}

impl<'a> Unpacker<'a> {
    /// The cap of `rel` when [`check_upload`] keeps it: a `keep` name at the root, or one level
    /// down in the bundle's only top folder (see [`Unpacker::keep_top`]).
    fn keep_cap(&mut self, rel: &str) -> Option<usize> {
        let kept = self.kept?;
        let (top, name) = match rel.split_once('/') {
            None => (None, rel),
            Some((top, name)) if !name.contains('/') => (Some(top), name),
            Some(_) => return None,
        };
        let cap = self.keep.iter().find(|(n, _)| *n == name)?.1;
        if let Some(top) = top {
            match &self.keep_top {
                KeepTop::Unseen => self.keep_top = KeepTop::One(top.to_owned()),
                KeepTop::One(first) if first == top => {}
                KeepTop::One(_) | KeepTop::Several => {
                    self.keep_top = KeepTop::Several;
                    kept.borrow_mut().retain(|(path, _)| !path.contains('/'));
                    return None;
                }
            }
        }
        Some(cap)
    }

    fn new(dest: Option<&'a Path>, limits: &'a ArchiveLimits) -> Self {
        Self {
            dest,
            limits,
            entries: 0,
            bytes: 0,
            skipped: 0,
            name_bytes: 0,
            files: HashSet::new(),
            dirs: HashSet::new(),
            explicit_dirs: HashSet::new(),
            buf: vec![0; CHUNK],
            record: false,
            written: Vec::new(),
            manifest: None,
            keep: &[],
            kept: None,
            keep_top: KeepTop::Unseen,
        }
    }

    /// Also hashes every file while writing it, and lists the files written.
    fn recording(mut self) -> Self {
        self.record = self.dest.is_some();
        self
    }

    /// Counts one archive entry of any kind.
    fn count_entry(&mut self) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                max: self.limits.max_entries,
            });
        }
        Ok(())
    }

    fn skip(&mut self) {
        self.skipped += 1;
    }

    /// Counts a path about to be held in memory against the name budget.
    fn hold_name(&mut self, rel: &str) -> Result<(), ArchiveError> {
        self.name_bytes += rel.len() as u64;
        if self.name_bytes > self.limits.max_name_bytes {
            return Err(ArchiveError::TooManyNames {
                max: self.limits.max_name_bytes,
            });
        }
        Ok(())
    }

    /// Registers a new directory (explicit or implied), counted against the limits before it
    /// is held, and makes it on disk.
    fn new_dir(&mut self, rel: &str) -> Result<(), ArchiveError> {
        if self.dirs.len() as u64 >= self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                max: self.limits.max_entries,
            });
        }
        self.hold_name(rel)?;
        self.dirs.insert(rel.to_owned());
        if let Some(dest) = self.dest {
            make_dir(&dest.join(rel), rel)?;
        }
        Ok(())
    }

    fn too_large(&self, rel: &str) -> ArchiveError {
        ArchiveError::TooLarge {
            max: self.limits.max_unpacked_size,
            entry: display_name(rel.as_bytes()),
        }
    }

    /// Registers the parents of `rel`, refusing a parent that is a file.
    fn add_parents(&mut self, rel: &str) -> Result<(), ArchiveError> {
        for parent in ancestors(rel) {
            if self.files.contains(parent) {
                return Err(ArchiveError::PathConflict {
                    entry: display_name(parent.as_bytes()),
                });
            }
            if !self.dirs.contains(parent) {
                self.new_dir(parent)?;
            }
        }
        Ok(())
    }

    fn add_dir(&mut self, rel: &str) -> Result<(), ArchiveError> {
        let entry = || display_name(rel.as_bytes());
        if self.files.contains(rel) {
            return Err(ArchiveError::PathConflict { entry: entry() });
        }
        if self.explicit_dirs.contains(rel) {
            return Err(ArchiveError::Duplicate { entry: entry() });
        }
        self.add_parents(rel)?;
        if !self.dirs.contains(rel) {
            self.new_dir(rel)?;
        }
        self.explicit_dirs.insert(rel.to_owned());
        Ok(())
    }

    fn add_file(
        &mut self,
        rel: &str,
        reader: &mut dyn Read,
        declared_size: u64,
        mtime: Option<SystemTime>,
    ) -> Result<(), ArchiveError> {
        let entry = || display_name(rel.as_bytes());
        if self.files.contains(rel) {
            return Err(ArchiveError::Duplicate { entry: entry() });
        }
        if self.dirs.contains(rel) {
            return Err(ArchiveError::PathConflict { entry: entry() });
        }
        // Early refusal on the declared size; the real check counts bytes as they are read.
        if declared_size > self.limits.max_unpacked_size.saturating_sub(self.bytes) {
            return Err(self.too_large(rel));
        }
        self.add_parents(rel)?;
        self.hold_name(rel)?;
        self.files.insert(rel.to_owned());
        let mut out = match self.dest {
            Some(dest) => Some(
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(dest.join(rel))
                    .map_err(io_err(&format!("creating {:?}", entry())))?,
            ),
            None => None,
        };
        let mut hasher = self.record.then(Sha256Hasher::new);
        let mut capture = self
            .manifest
            .as_mut()
            .is_some_and(|m| m.wants(rel))
            .then(Vec::new);
        // A file `keep` names at the root or one level down (the root once flattened), kept up
        // to its cap plus one byte so the reader can tell it is too large.
        let mut kept = self.keep_cap(rel).map(|cap| (cap + 1, Vec::new()));
        let mut len = 0u64;
        loop {
            let n = match reader.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(&format!("reading {:?}", entry()))(e)),
            };
            self.bytes += n as u64;
            len += n as u64;
            if self.bytes > self.limits.max_unpacked_size {
                return Err(self.too_large(rel));
            }
            if let Some(out) = out.as_mut() {
                out.write_all(&self.buf[..n])
                    .map_err(io_err(&format!("writing {:?}", entry())))?;
            }
            if let Some(hasher) = hasher.as_mut() {
                hasher.update(&self.buf[..n]);
            }
            if let Some(capture) = capture.as_mut() {
                let room = (MAX_MANIFEST_LEN + 1).saturating_sub(capture.len());
                capture.extend_from_slice(&self.buf[..n.min(room)]);
            }
            if let Some((cap, bytes)) = kept.as_mut() {
                let room = cap.saturating_sub(bytes.len()).min(n);
                bytes.extend_from_slice(&self.buf[..room]);
            }
        }
        if let (Some(bytes), Some(manifest)) = (capture, self.manifest.as_mut()) {
            manifest.keep(rel, Captured { len, bytes });
        }
        if let (Some((_, bytes)), Some(into)) = (kept, self.kept) {
            into.borrow_mut().push((rel.to_owned(), bytes));
        }
        if let Some(out) = out {
            let action = format!("finishing {:?}", entry());
            out.set_permissions(Permissions::from_mode(0o644))
                .map_err(io_err(&action))?;
            if let Some(mtime) = mtime {
                out.set_modified(mtime).map_err(io_err(&action))?;
            }
            if let Some(hasher) = hasher {
                let mtime = match mtime {
                    Some(mtime) => mtime,
                    None => out
                        .metadata()
                        .and_then(|m| m.modified())
                        .map_err(io_err(&action))?,
                };
                self.written.push(UnpackedFile {
                    path: rel.to_owned(),
                    len,
                    mtime,
                    sha256: hasher.finish(),
                });
            }
        }
        Ok(())
    }

    /// Applies the end-of-archive rules (empty archive, single top-level folder).
    fn finish(self) -> Result<Unpacked, ArchiveError> {
        if self.files.is_empty() {
            return Err(ArchiveError::Empty);
        }
        let flattened = self.single_top_folder();
        if let Some(capture) = &self.manifest {
            self.check_manifest(capture, flattened.as_deref())?;
        }
        if let (Some(top), Some(dest)) = (flattened.as_deref(), self.dest) {
            flatten(dest, top, &self.flatten_staging(top))?;
        }
        let stats = UnpackStats {
            files: self.files.len() as u64,
            dirs: self.dirs.len() as u64 - u64::from(flattened.is_some()),
            bytes: self.bytes,
            skipped: self.skipped,
            flattened: flattened.clone(),
        };
        // Paths as they are after flattening.
        let prefix = flattened.map(|top| format!("{top}/"));
        // `None` for the top folder itself: it is now the destination.
        let unflatten = |path: String| match &prefix {
            Some(prefix) => path.strip_prefix(prefix.as_str()).map(str::to_owned),
            None => Some(path),
        };
        let mut dirs: Vec<String> = self.dirs.into_iter().filter_map(&unflatten).collect();
        dirs.sort();
        let mut files = self.written;
        for file in &mut files {
            if let Some(path) = unflatten(std::mem::take(&mut file.path)) {
                file.path = path;
            }
        }
        Ok(Unpacked { stats, files, dirs })
    }

    /// The manifest rules staging applies to the unpacked (and flattened) bundle.
    fn check_manifest(
        &self,
        capture: &ManifestCapture,
        top: Option<&str>,
    ) -> Result<(), ArchiveError> {
        let prefix = top.map(|top| format!("{top}/")).unwrap_or_default();
        if self.dirs.contains(&format!("{prefix}{MANIFEST_FILE}")) {
            return Err(ArchiveError::Manifest("it is not a file".into()));
        }
        let captured = match top {
            Some(_) => capture.nested.as_ref(),
            None => capture.root.as_ref(),
        };
        let Some(captured) = captured else {
            return Ok(());
        };
        Manifest::from_bundle_file(&captured.bytes, captured.len)
            .and_then(|manifest| {
                manifest.check_files(|rel| self.files.contains(&format!("{prefix}{rel}")))
            })
            .map_err(ArchiveError::Manifest)
    }

    /// The folder every entry lives under, when there is exactly one.
    fn single_top_folder(&self) -> Option<String> {
        let mut top: Option<&str> = None;
        for path in self.files.iter().chain(self.explicit_dirs.iter()) {
            let first = path.split('/').next().unwrap_or(path);
            match top {
                None => top = Some(first),
                Some(t) if t == first => {}
                Some(_) => return None,
            }
        }
        let top = top?;
        // A top-level file is not a folder.
        (!self.files.contains(top)).then(|| top.to_owned())
    }

    /// A name for moving `top` aside while flattening: neither `top` nor any of its children,
    /// so flattening cannot fail on a name the archive chose (and the upload check, which
    /// writes nothing, accepts exactly what stages).
    fn flatten_staging(&self, top: &str) -> String {
        let taken = |name: &str| {
            let child = format!("{top}/{name}");
            name == top || self.dirs.contains(&child) || self.files.contains(&child)
        };
        let mut name = ".statiko-flatten".to_owned();
        let mut n = 0u64;
        while taken(&name) {
            n += 1;
            name = format!(".statiko-flatten-{n}");
        }
        name
    }
}

fn make_dir(path: &Path, rel: &str) -> Result<(), ArchiveError> {
    let action = || format!("creating directory {:?}", display_name(rel.as_bytes()));
    match DirBuilder::new().mode(0o755).create(path) {
        Ok(()) => {}
        // Only directories this unpacker made exist under the fresh destination.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(path).map_err(io_err(&action()))?;
            if !meta.is_dir() {
                return Err(io_err(&action())(e));
            }
        }
        Err(e) => return Err(io_err(&action())(e)),
    }
    std::fs::set_permissions(path, Permissions::from_mode(0o755)).map_err(io_err(&action()))
}

/// Moves the contents of `dest/top` up into `dest`, through `dest/staging`.
fn flatten(dest: &Path, top: &str, staging: &str) -> Result<(), ArchiveError> {
    let action = "flattening the top-level folder";
    let staging = dest.join(staging);
    std::fs::rename(dest.join(top), &staging).map_err(io_err(action))?;
    for child in std::fs::read_dir(&staging).map_err(io_err(action))? {
        let child = child.map_err(io_err(action))?;
        std::fs::rename(child.path(), dest.join(child.file_name())).map_err(io_err(action))?;
    }
    std::fs::remove_dir(&staging).map_err(io_err(action))
}

#[cfg(test)]
mod tests;
