//! Safe unpacking of bundle archives (tar.gz, tar.zst, zip), shared by control (upload checks)
//! and the edge (staging).
//!
//! Every entry is checked before anything is written: no `..`, no absolute paths, no Windows
//! drive letters or backslashes, no NUL; only regular files and directories (links, devices and
//! fifos are refused); bounded entry count, path length and total unpacked size, the size being
//! counted while reading so a decompression bomb is stopped early. `__MACOSX/` and AppleDouble
//! `._*` entries are skipped, as are pax global headers. An archive whose entries all live under
//! one top-level folder is flattened, as the original does.
//!
//! Every entry point is blocking; async callers use `spawn_blocking`. [`unpack_stream`] reads a
//! tar archive from any reader (a download in flight) and [`unpack_file`] any archive from a
//! file; both hash each file while writing it, so a caller never reads a file back for its hash.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use crate::config::LimitsConfig;
use crate::crypto::Sha256Hasher;
use crate::model::BundleFormat;

/// Default cap on the length of one entry's path, in bytes.
pub const DEFAULT_MAX_PATH_LEN: usize = 1024;
/// Longest single path component most filesystems accept.
const MAX_COMPONENT_LEN: usize = 255;
/// Entry names are cut to this many characters in error messages.
const NAME_IN_MESSAGE: usize = 200;
/// Copy buffer size.
const CHUNK: usize = 64 * 1024;
/// Decompressed bytes allowed per entry on top of the file data (headers, padding, long names).
const PER_ENTRY_OVERHEAD: u64 = 4096;

/// Limits applied while unpacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Most entries (files, directories and skipped entries alike).
    pub max_entries: u64,
    /// Most bytes of file data in all.
    pub max_unpacked_size: u64,
    /// Longest path of one entry, in bytes.
    pub max_path_len: usize,
}

impl ArchiveLimits {
    pub fn from_config(limits: &LimitsConfig) -> Self {
        Self {
            max_entries: limits.max_bundle_entries,
            max_unpacked_size: limits.max_unpacked_size,
            max_path_len: DEFAULT_MAX_PATH_LEN,
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
    #[error("archive has more than {max} entries")]
    TooManyEntries { max: u64 },
    #[error("archive unpacks to more than {max} bytes (stopped at entry {entry:?})")]
    TooLarge { max: u64, entry: String },
    #[error("archive contains no files")]
    Empty,
    #[error("entry {entry:?} appears more than once")]
    Duplicate { entry: String },
    #[error("entry {entry:?} is both a file and a directory")]
    PathConflict { entry: String },
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
            unpack_tar_format(reader, format, &mut unpacker)?;
        }
    }
    unpacker.finish()
}

/// Applies the same checks as [`unpack`] without writing anything.
pub fn inspect(
    archive: &Path,
    format: BundleFormat,
    limits: &ArchiveLimits,
) -> Result<UnpackStats, ArchiveError> {
    run(archive, format, Unpacker::new(None, limits)).map(|u| u.stats)
}

fn run(
    archive: &Path,
    format: BundleFormat,
    mut unpacker: Unpacker<'_>,
) -> Result<Unpacked, ArchiveError> {
    let file = File::open(archive).map_err(io_err("opening the archive"))?;
    match format {
        BundleFormat::TarGz | BundleFormat::TarZst => {
            unpack_tar_format(file, format, &mut unpacker)?;
        }
        BundleFormat::Zip => unpack_zip(io::BufReader::new(file), &mut unpacker)?,
    }
    unpacker.finish()
}

/// Decompresses and unpacks a `tar.gz` or `tar.zst` stream.
fn unpack_tar_format<R: Read>(
    reader: R,
    format: BundleFormat,
    unpacker: &mut Unpacker<'_>,
) -> Result<(), ArchiveError> {
    match format {
        BundleFormat::TarGz => {
            let decoder =
                flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(CHUNK, reader));
            unpack_tar(decoder, "tar.gz", unpacker)
        }
        BundleFormat::TarZst => {
            let decoder =
                zstd::stream::read::Decoder::new(reader).map_err(|e| corrupt("tar.zst", e))?;
            unpack_tar(decoder, "tar.zst", unpacker)
        }
        BundleFormat::Zip => Err(corrupt("zip", "not a tar archive")),
    }
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

/// Walks entries, enforcing the limits and writing into `dest` when there is one.
struct Unpacker<'a> {
    dest: Option<&'a Path>,
    limits: &'a ArchiveLimits,
    entries: u64,
    bytes: u64,
    skipped: u64,
    files: HashSet<String>,
    /// Every directory, explicit or implied.
    dirs: HashSet<String>,
    explicit_dirs: HashSet<String>,
    buf: Vec<u8>,
    /// Hash and list the files written (see [`Unpacker::recording`]).
    record: bool,
    written: Vec<UnpackedFile>,
}

impl<'a> Unpacker<'a> {
    fn new(dest: Option<&'a Path>, limits: &'a ArchiveLimits) -> Self {
        Self {
            dest,
            limits,
            entries: 0,
            bytes: 0,
            skipped: 0,
            files: HashSet::new(),
            dirs: HashSet::new(),
            explicit_dirs: HashSet::new(),
            buf: vec![0; CHUNK],
            record: false,
            written: Vec::new(),
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
                self.dirs.insert(parent.to_owned());
                if let Some(dest) = self.dest {
                    make_dir(&dest.join(parent), parent)?;
                }
            }
        }
        Ok(())
    }

    fn add_dir(&mut self, rel: &str) -> Result<(), ArchiveError> {
        let entry = || display_name(rel.as_bytes());
        if self.files.contains(rel) {
            return Err(ArchiveError::PathConflict { entry: entry() });
        }
        if !self.explicit_dirs.insert(rel.to_owned()) {
            return Err(ArchiveError::Duplicate { entry: entry() });
        }
        self.add_parents(rel)?;
        if self.dirs.insert(rel.to_owned())
            && let Some(dest) = self.dest
        {
            make_dir(&dest.join(rel), rel)?;
        }
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
        if let (Some(top), Some(dest)) = (flattened.as_deref(), self.dest) {
            flatten(dest, top)?;
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

/// Moves the contents of `dest/top` up into `dest`.
fn flatten(dest: &Path, top: &str) -> Result<(), ArchiveError> {
    let action = "flattening the top-level folder";
    let mut staging: PathBuf = dest.join(".statiko-flatten");
    if top == ".statiko-flatten" {
        staging = dest.join(".statiko-flatten-2");
    }
    std::fs::rename(dest.join(top), &staging).map_err(io_err(action))?;
    for child in std::fs::read_dir(&staging).map_err(io_err(action))? {
        let child = child.map_err(io_err(action))?;
        std::fs::rename(child.path(), dest.join(child.file_name())).map_err(io_err(action))?;
    }
    std::fs::remove_dir(&staging).map_err(io_err(action))
}

/// Caps the decompressed stream, so that even skipped data cannot run forever.
struct CappedReader<R> {
    inner: R,
    remaining: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.remaining {
            self.exceeded.set(true);
            return Err(io::Error::other(
                "decompressed stream exceeds the size limit",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn unpack_tar<R: Read>(
    reader: R,
    format: &'static str,
    unpacker: &mut Unpacker<'_>,
) -> Result<(), ArchiveError> {
    let limits = unpacker.limits;
    let exceeded = Rc::new(Cell::new(false));
    let capped = CappedReader {
        inner: reader,
        remaining: limits.max_unpacked_size.saturating_add(
            limits
                .max_entries
                .saturating_add(2)
                .saturating_mul(PER_ENTRY_OVERHEAD),
        ),
        exceeded: exceeded.clone(),
    };
    let stream_error = |e: io::Error, entry: &str| {
        if exceeded.get() {
            ArchiveError::TooLarge {
                max: limits.max_unpacked_size,
                entry: entry.to_owned(),
            }
        } else {
            corrupt(format, e)
        }
    };
    let mut archive = tar::Archive::new(capped);
    let entries = archive.entries().map_err(|e| corrupt(format, e))?;
    let mut last = String::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| stream_error(e, &last))?;
        unpacker.count_entry()?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            unpacker.skip();
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        last = display_name(&raw);
        let Some(rel) = normalize(&raw, limits)? else {
            unpacker.skip();
            continue;
        };
        let named = || display_name(rel.as_bytes());
        // Old (v7) archives mark directories by a trailing slash on a regular entry.
        let old_style_dir = kind == tar::EntryType::Regular
            && raw.ends_with(b"/")
            && entry.header().size().unwrap_or(0) == 0;
        match kind {
            _ if old_style_dir => unpacker.add_dir(&rel)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().unwrap_or(0);
                let mtime = entry
                    .header()
                    .mtime()
                    .ok()
                    .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
                match unpacker.add_file(&rel, &mut entry, size, mtime) {
                    Err(ArchiveError::Io { source, .. }) if exceeded.get() => {
                        return Err(stream_error(source, &last));
                    }
                    other => other?,
                }
            }
            tar::EntryType::Directory => unpacker.add_dir(&rel)?,
            tar::EntryType::Symlink => return Err(ArchiveError::Symlink { entry: named() }),
            tar::EntryType::Link => return Err(ArchiveError::HardLink { entry: named() }),
            tar::EntryType::Char => {
                return Err(ArchiveError::SpecialFile {
                    entry: named(),
                    kind: "character device",
                });
            }
            tar::EntryType::Block => {
                return Err(ArchiveError::SpecialFile {
                    entry: named(),
                    kind: "block device",
                });
            }
            tar::EntryType::Fifo => {
                return Err(ArchiveError::SpecialFile {
                    entry: named(),
                    kind: "fifo",
                });
            }
            _ => {
                return Err(ArchiveError::SpecialFile {
                    entry: named(),
                    kind: "unsupported tar entry type",
                });
            }
        }
    }
    Ok(())
}

fn unpack_zip<R: Read + io::Seek>(
    reader: R,
    unpacker: &mut Unpacker<'_>,
) -> Result<(), ArchiveError> {
    const FORMAT: &str = "zip";
    const S_IFMT: u32 = 0o170000;
    let limits = unpacker.limits;
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| corrupt(FORMAT, e))?;
    if archive.len() as u64 > limits.max_entries {
        return Err(ArchiveError::TooManyEntries {
            max: limits.max_entries,
        });
    }
    for index in 0..archive.len() {
        unpacker.count_entry()?;
        let listed_name = archive
            .name_for_index(index)
            .map(|n| display_name(n.as_bytes()))
            .unwrap_or_default();
        let mut file = match archive.by_index(index) {
            Ok(file) => file,
            Err(zip::result::ZipError::UnsupportedArchive(msg))
                if msg == zip::result::ZipError::PASSWORD_REQUIRED =>
            {
                return Err(ArchiveError::Encrypted { entry: listed_name });
            }
            Err(e) => return Err(corrupt(FORMAT, e)),
        };
        if file.name_raw().contains(&0) {
            return Err(ArchiveError::NulInPath {
                entry: display_name(file.name_raw()),
            });
        }
        let raw = file.name().as_bytes().to_owned();
        let Some(rel) = normalize(&raw, limits)? else {
            unpacker.skip();
            continue;
        };
        let named = || display_name(rel.as_bytes());
        if file.enclosed_name().is_none() {
            return Err(ArchiveError::ParentDir { entry: named() });
        }
        if file.encrypted() {
            return Err(ArchiveError::Encrypted { entry: named() });
        }
        let file_type = file.unix_mode().map_or(0, |mode| mode & S_IFMT);
        match file_type {
            0o120000 => return Err(ArchiveError::Symlink { entry: named() }),
            0o040000 => unpacker.add_dir(&rel)?,
            0 | 0o100000 if file.is_dir() => unpacker.add_dir(&rel)?,
            0 | 0o100000 => {
                let mtime = file.last_modified().and_then(zip_time);
                let size = file.size();
                unpacker.add_file(&rel, &mut file, size, mtime)?;
            }
            other => {
                let kind = match other {
                    0o020000 => "character device",
                    0o060000 => "block device",
                    0o010000 => "fifo",
                    0o140000 => "socket",
                    _ => "special file",
                };
                return Err(ArchiveError::SpecialFile {
                    entry: named(),
                    kind,
                });
            }
        }
    }
    Ok(())
}

/// A zip (MS-DOS, no time zone) timestamp read as UTC.
fn zip_time(dt: zip::DateTime) -> Option<SystemTime> {
    let (y, m, d) = (
        i64::from(dt.year()),
        i64::from(dt.month()),
        i64::from(dt.day()),
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400
        + i64::from(dt.hour()) * 3600
        + i64::from(dt.minute()) * 60
        + i64::from(dt.second());
    u64::try_from(secs)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write as _};
    use std::os::unix::fs::PermissionsExt as _;

    use tar::{EntryType, Header};
    use zip::write::SimpleFileOptions;

    use super::*;

    /// One tar entry; the name is written raw into the header, bypassing the builder's checks.
    struct Raw<'a> {
        name: &'a [u8],
        kind: EntryType,
        data: &'a [u8],
    }

    fn file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
        Raw {
            name: name.as_bytes(),
            kind: EntryType::Regular,
            data,
        }
    }

    fn dir(name: &str) -> Raw<'_> {
        Raw {
            name: name.as_bytes(),
            kind: EntryType::Directory,
            data: b"",
        }
    }

    fn tar_of(entries: &[Raw<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for e in entries {
            let mut header = Header::new_gnu();
            let name = &mut header.as_old_mut().name;
            assert!(
                e.name.len() <= name.len(),
                "use a long-name builder instead"
            );
            name[..e.name.len()].copy_from_slice(e.name);
            header.set_entry_type(e.kind);
            header.set_size(e.data.len() as u64);
            header.set_mode(if e.kind == EntryType::Directory {
                0o755
            } else {
                0o600
            });
            header.set_mtime(1_600_000_000);
            if matches!(e.kind, EntryType::Symlink | EntryType::Link) {
                header.set_link_name_literal(b"target").unwrap();
            }
            header.set_cksum();
            builder.append(&header, e.data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn zip_of(build: impl FnOnce(&mut zip::ZipWriter<Cursor<Vec<u8>>>)) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        build(&mut w);
        w.finish().unwrap().into_inner()
    }

    fn opts() -> SimpleFileOptions {
        SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated)
    }

    fn limits() -> ArchiveLimits {
        ArchiveLimits {
            max_entries: 100,
            max_unpacked_size: 1 << 20,
            max_path_len: DEFAULT_MAX_PATH_LEN,
        }
    }

    struct Unpacked {
        _tmp: tempfile::TempDir,
        dest: PathBuf,
        stats: UnpackStats,
    }

    fn unpack_bytes(
        bytes: &[u8],
        format: BundleFormat,
        limits: &ArchiveLimits,
    ) -> Result<Unpacked, ArchiveError> {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("bundle");
        std::fs::write(&archive, bytes).unwrap();
        let dest = tmp.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        // inspect and unpack agree.
        let inspected = inspect(&archive, format, limits);
        let unpacked = unpack(&archive, format, &dest, limits);
        match (&inspected, &unpacked) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("inspect {inspected:?} vs unpack {unpacked:?}"),
        }
        // So do the hashing entry points, from a file and (tar) from a stream.
        let dest_file = tmp.path().join("out-file");
        std::fs::create_dir(&dest_file).unwrap();
        let listed = unpack_file(&archive, format, &dest_file, limits);
        same_outcome(&unpacked, &listed);
        if format != BundleFormat::Zip {
            let dest_stream = tmp.path().join("out-stream");
            std::fs::create_dir(&dest_stream).unwrap();
            let streamed = unpack_stream(bytes, format, &dest_stream, limits);
            same_outcome(&unpacked, &streamed);
            if let (Ok(a), Ok(b)) = (&listed, &streamed) {
                assert_eq!(a, b);
            }
        }
        if let Ok(listed) = &listed {
            check_listing(listed, &dest_file);
        }
        let stats = unpacked?;
        Ok(Unpacked {
            _tmp: tmp,
            dest,
            stats,
        })
    }

    fn same_outcome(
        plain: &Result<UnpackStats, ArchiveError>,
        listed: &Result<super::Unpacked, ArchiveError>,
    ) {
        match (plain, listed) {
            (Ok(a), Ok(b)) => assert_eq!(*a, b.stats),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("unpack {plain:?} vs {listed:?}"),
        }
    }

    /// The listing matches the tree on disk: paths, lengths, hashes and times.
    fn check_listing(listed: &super::Unpacked, dest: &Path) {
        let mut expected: Vec<String> = listed
            .files
            .iter()
            .map(|f| f.path.clone())
            .chain(listed.dirs.iter().map(|d| format!("{d}/")))
            .collect();
        expected.sort();
        assert_eq!(tree(dest), expected);
        assert_eq!(listed.files.len() as u64, listed.stats.files);
        assert_eq!(listed.dirs.len() as u64, listed.stats.dirs);
        for f in &listed.files {
            let path = dest.join(&f.path);
            let data = std::fs::read(&path).unwrap();
            assert_eq!(f.len, data.len() as u64, "{}", f.path);
            assert_eq!(f.sha256, crate::crypto::sha256(&data), "{}", f.path);
            assert_eq!(
                std::fs::metadata(&path).unwrap().modified().unwrap(),
                f.mtime,
                "{}",
                f.path
            );
        }
    }

    fn tgz(entries: &[Raw<'_>]) -> Result<Unpacked, ArchiveError> {
        unpack_bytes(&gz(&tar_of(entries)), BundleFormat::TarGz, &limits())
    }

    /// Relative paths under `dir`, `/`-separated, directories with a trailing `/`.
    fn tree(dir: &Path) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let rel = e
                    .path()
                    .strip_prefix(base)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                if e.file_type().unwrap().is_dir() {
                    out.push(format!("{rel}/"));
                    walk(base, &e.path(), out);
                } else {
                    out.push(rel);
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    #[test]
    fn tar_gz_unpacks_with_modes_and_times() {
        let u = tgz(&[
            file("index.html", b"<h1>hi</h1>"),
            dir("css/"),
            file("css/site.css", b"body{}"),
            file("./js/app.js", b"1"),
        ])
        .unwrap();
        assert_eq!(
            tree(&u.dest),
            ["css/", "css/site.css", "index.html", "js/", "js/app.js"]
        );
        assert_eq!(
            u.stats,
            UnpackStats {
                files: 3,
                dirs: 2,
                bytes: 11 + 6 + 1,
                skipped: 0,
                flattened: None,
            }
        );
        let meta = std::fs::metadata(u.dest.join("index.html")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(
            meta.modified().unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000)
        );
        let meta = std::fs::metadata(u.dest.join("css")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(
            std::fs::read(u.dest.join("index.html")).unwrap(),
            b"<h1>hi</h1>"
        );
    }

    #[test]
    fn tar_zst_unpacks() {
        let tar = tar_of(&[file("a.txt", b"hello")]);
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        let u = unpack_bytes(&zst, BundleFormat::TarZst, &limits()).unwrap();
        assert_eq!(std::fs::read(u.dest.join("a.txt")).unwrap(), b"hello");
    }

    #[test]
    fn multi_member_gzip_is_read_whole() {
        let tar = tar_of(&[file("a.txt", b"hello"), file("b.txt", b"world")]);
        let mut both = gz(&tar[..1024]);
        both.extend(gz(&tar[1024..]));
        let u = unpack_bytes(&both, BundleFormat::TarGz, &limits()).unwrap();
        assert_eq!(tree(&u.dest), ["a.txt", "b.txt"]);
    }

    #[test]
    fn single_top_folder_is_flattened() {
        let u = tgz(&[
            dir("site/"),
            file("site/index.html", b"x"),
            dir("site/site/"),
            file("site/site/inner.txt", b"y"),
        ])
        .unwrap();
        assert_eq!(tree(&u.dest), ["index.html", "site/", "site/inner.txt"]);
        assert_eq!(u.stats.flattened.as_deref(), Some("site"));
        assert_eq!(u.stats.dirs, 1);
        // Without an explicit directory entry too.
        let u = tgz(&[file("dist/a.txt", b"x"), file("dist/b/c.txt", b"y")]).unwrap();
        assert_eq!(tree(&u.dest), ["a.txt", "b/", "b/c.txt"]);
    }

    #[test]
    fn not_flattened_with_two_tops_or_a_single_file() {
        let u = tgz(&[file("site/index.html", b"x"), file("_statiko.yaml", b"y")]).unwrap();
        assert_eq!(u.stats.flattened, None);
        assert_eq!(tree(&u.dest), ["_statiko.yaml", "site/", "site/index.html"]);
        let u = tgz(&[file("only.txt", b"x")]).unwrap();
        assert_eq!(u.stats.flattened, None);
        assert_eq!(tree(&u.dest), ["only.txt"]);
        // Skipped entries do not prevent flattening.
        let u = tgz(&[
            file("site/index.html", b"x"),
            file("__MACOSX/site/._index.html", b"junk"),
        ])
        .unwrap();
        assert_eq!(tree(&u.dest), ["index.html"]);
    }

    #[test]
    fn parent_dir_is_refused() {
        for name in ["../evil.txt", "a/../../evil.txt", "a/.."] {
            let err = tgz(&[file("ok.txt", b"x"), file(name, b"x")])
                .err()
                .unwrap();
            assert!(
                matches!(err, ArchiveError::ParentDir { .. }),
                "{name}: {err}"
            );
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn absolute_path_is_refused() {
        let err = tgz(&[file("/etc/passwd", b"x")]).err().unwrap();
        assert!(matches!(err, ArchiveError::AbsolutePath { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "entry \"/etc/passwd\" has an absolute path"
        );
    }

    #[test]
    fn windows_tricks_are_refused() {
        for name in [
            "C:\\evil.txt",
            "c:evil.txt",
            "a\\..\\..\\evil.txt",
            "dir\\file",
        ] {
            let err = tgz(&[file(name, b"x")]).err().unwrap();
            assert!(
                matches!(err, ArchiveError::WindowsPath { .. }),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn nul_and_invalid_utf8_are_refused() {
        let err = normalize(b"a\0b", &limits()).unwrap_err();
        assert!(matches!(err, ArchiveError::NulInPath { .. }), "{err}");
        let err = tgz(&[Raw {
            name: b"caf\xe9.html",
            kind: EntryType::Regular,
            data: b"x",
        }])
        .err()
        .unwrap();
        assert!(matches!(err, ArchiveError::InvalidName { .. }), "{err}");
    }

    #[test]
    fn long_paths_are_refused() {
        let long = format!("{}/x.txt", "d".repeat(1100));
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = Header::new_gnu();
        header.set_size(1);
        builder.append_data(&mut header, &long, &b"x"[..]).unwrap();
        let bytes = gz(&builder.into_inner().unwrap());
        let err = unpack_bytes(&bytes, BundleFormat::TarGz, &limits())
            .err()
            .unwrap();
        assert!(
            matches!(err, ArchiveError::PathTooLong { max: 1024, .. }),
            "{err}"
        );
        assert!(err.to_string().contains('…'), "name is cut short: {err}");
        // A single component over 255 bytes.
        let err = normalize(format!("{}.txt", "a".repeat(300)).as_bytes(), &limits()).unwrap_err();
        assert!(matches!(err, ArchiveError::PathTooLong { .. }), "{err}");
    }

    #[test]
    fn links_and_special_files_are_refused() {
        let cases = [
            (EntryType::Symlink, "symbolic link"),
            (EntryType::Link, "hard link"),
            (EntryType::Char, "character device"),
            (EntryType::Block, "block device"),
            (EntryType::Fifo, "fifo"),
        ];
        for (kind, what) in cases {
            let err = tgz(&[
                file("index.html", b"x"),
                Raw {
                    name: b"thing",
                    kind,
                    data: b"",
                },
            ])
            .err()
            .unwrap();
            let msg = err.to_string();
            assert!(msg.contains(what) && msg.contains("\"thing\""), "{msg}");
        }
        let err = tgz(&[Raw {
            name: b"link",
            kind: EntryType::Symlink,
            data: b"",
        }])
        .err()
        .unwrap();
        assert!(matches!(err, ArchiveError::Symlink { .. }));
    }

    #[test]
    fn entry_count_is_capped() {
        let names: Vec<String> = (0..101).map(|i| format!("f{i}.txt")).collect();
        let entries: Vec<Raw<'_>> = names.iter().map(|n| file(n, b"x")).collect();
        let err = tgz(&entries).err().unwrap();
        assert!(
            matches!(err, ArchiveError::TooManyEntries { max: 100 }),
            "{err}"
        );
        assert!(tgz(&entries[..100]).is_ok());
        let bytes = zip_of(|w| {
            for n in &names {
                w.start_file(n.as_str(), opts()).unwrap();
            }
        });
        let err = unpack_bytes(&bytes, BundleFormat::Zip, &limits())
            .err()
            .unwrap();
        assert!(
            matches!(err, ArchiveError::TooManyEntries { max: 100 }),
            "{err}"
        );
    }

    #[test]
    fn unpacked_size_is_capped() {
        let small = ArchiveLimits {
            max_unpacked_size: 1000,
            ..limits()
        };
        let big = vec![0u8; 600];
        let tar = tar_of(&[file("a.bin", &big), file("b.bin", &big)]);
        let err = unpack_bytes(&gz(&tar), BundleFormat::TarGz, &small)
            .err()
            .unwrap();
        assert!(
            matches!(err, ArchiveError::TooLarge { max: 1000, ref entry } if entry == "b.bin"),
            "{err}"
        );
        // Exactly at the limit is fine.
        let tar = tar_of(&[file("a.bin", &big), file("b.bin", &big[..400])]);
        assert!(unpack_bytes(&gz(&tar), BundleFormat::TarGz, &small).is_ok());
    }

    #[test]
    fn bomb_is_stopped_while_reading() {
        // 16 MiB of zeros compresses to a few KiB.
        let zeros = vec![0u8; 16 << 20];
        let tar = tar_of(&[file("bomb.bin", &zeros)]);
        let err = unpack_bytes(&gz(&tar), BundleFormat::TarGz, &limits())
            .err()
            .unwrap();
        assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
        let bytes = zip_of(|w| {
            w.start_file("bomb.bin", opts()).unwrap();
            w.write_all(&zeros).unwrap();
        });
        assert!(bytes.len() < 100 << 10);
        let err = unpack_bytes(&bytes, BundleFormat::Zip, &limits())
            .err()
            .unwrap();
        assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn zip_size_is_counted_not_declared() {
        // The reader counts bytes as they come, so a cap under the data stops the copy.
        let small = ArchiveLimits {
            max_unpacked_size: 10,
            ..limits()
        };
        let mut unpacker = Unpacker::new(None, &small);
        let err = unpacker
            .add_file("x", &mut &[1u8; 64][..], 1, None)
            .unwrap_err();
        assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn skipped_data_is_capped_too() {
        let small = ArchiveLimits {
            max_entries: 4,
            max_unpacked_size: 1000,
            max_path_len: DEFAULT_MAX_PATH_LEN,
        };
        let junk = vec![7u8; 1 << 20];
        let tar = tar_of(&[file("index.html", b"x"), file("__MACOSX/._big", &junk)]);
        let err = unpack_bytes(&gz(&tar), BundleFormat::TarGz, &small)
            .err()
            .unwrap();
        assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn macos_junk_and_pax_globals_are_skipped() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut global = Header::new_ustar();
        global.set_entry_type(EntryType::XGlobalHeader);
        let pax = b"18 comment=hello\n";
        global.set_size(pax.len() as u64);
        global.set_cksum();
        builder.append(&global, &pax[..]).unwrap();
        let mut bytes = builder.into_inner().unwrap();
        // Strip the end-of-archive blocks and add the rest.
        bytes.truncate(bytes.len() - 1024);
        bytes.extend(tar_of(&[
            file("index.html", b"x"),
            dir("__MACOSX/"),
            file("__MACOSX/._index.html", b"junk"),
            file("css/._site.css", b"junk"),
            file("css/site.css", b"y"),
        ]));
        let u = unpack_bytes(&gz(&bytes), BundleFormat::TarGz, &limits()).unwrap();
        assert_eq!(tree(&u.dest), ["css/", "css/site.css", "index.html"]);
        assert_eq!(u.stats.skipped, 4);
        assert_eq!(u.stats.files, 2);
    }

    #[test]
    fn empty_archives_are_refused() {
        let err = tgz(&[]).err().unwrap();
        assert!(matches!(err, ArchiveError::Empty), "{err}");
        assert_eq!(err.to_string(), "archive contains no files");
        let err = tgz(&[dir("a/"), dir("a/b/")]).err().unwrap();
        assert!(matches!(err, ArchiveError::Empty), "{err}");
        let err = tgz(&[file("__MACOSX/x", b"x")]).err().unwrap();
        assert!(matches!(err, ArchiveError::Empty), "{err}");
        let bytes = zip_of(|_| {});
        let err = unpack_bytes(&bytes, BundleFormat::Zip, &limits())
            .err()
            .unwrap();
        assert!(matches!(err, ArchiveError::Empty), "{err}");
    }

    #[test]
    fn duplicates_and_conflicts_are_refused() {
        let err = tgz(&[file("a.txt", b"1"), file("./a.txt", b"2")])
            .err()
            .unwrap();
        assert!(matches!(err, ArchiveError::Duplicate { .. }), "{err}");
        assert_eq!(err.to_string(), "entry \"a.txt\" appears more than once");
        let err = tgz(&[dir("d/"), file("x", b"1"), dir("d")]).err().unwrap();
        assert!(matches!(err, ArchiveError::Duplicate { .. }), "{err}");
        let err = tgz(&[file("a", b"1"), file("a/b", b"2")]).err().unwrap();
        assert!(matches!(err, ArchiveError::PathConflict { .. }), "{err}");
        let err = tgz(&[file("a/b", b"1"), file("a", b"2")]).err().unwrap();
        assert!(matches!(err, ArchiveError::PathConflict { .. }), "{err}");
        // A directory entry after files inside it is fine.
        assert!(tgz(&[file("a/b", b"1"), dir("a/")]).is_ok());
        // So is a v7-style directory (a regular entry with a trailing slash).
        let u = tgz(&[file("x/", b""), file("x/y.txt", b"1"), file("z", b"2")]).unwrap();
        assert_eq!(tree(&u.dest), ["x/", "x/y.txt", "z"]);
    }

    #[test]
    fn corrupt_archives_are_reported() {
        let err = unpack_bytes(b"not a gzip stream", BundleFormat::TarGz, &limits())
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                ArchiveError::Corrupt {
                    format: "tar.gz",
                    ..
                }
            ),
            "{err}"
        );
        let err = unpack_bytes(b"PK\x03\x04garbage", BundleFormat::Zip, &limits())
            .err()
            .unwrap();
        assert!(
            matches!(err, ArchiveError::Corrupt { format: "zip", .. }),
            "{err}"
        );
        let err = unpack_bytes(b"garbage", BundleFormat::TarZst, &limits())
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                ArchiveError::Corrupt {
                    format: "tar.zst",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn zip_unpacks_and_flattens() {
        let bytes = zip_of(|w| {
            w.add_directory("site/", opts()).unwrap();
            w.start_file("site/index.html", opts()).unwrap();
            w.write_all(b"<p>zip</p>").unwrap();
            w.start_file("site/css/a.css", opts()).unwrap();
            w.write_all(b"a{}").unwrap();
            w.start_file("__MACOSX/site/._index.html", opts()).unwrap();
            w.write_all(b"junk").unwrap();
        });
        let u = unpack_bytes(&bytes, BundleFormat::Zip, &limits()).unwrap();
        assert_eq!(tree(&u.dest), ["css/", "css/a.css", "index.html"]);
        assert_eq!(u.stats.flattened.as_deref(), Some("site"));
        assert_eq!(
            std::fs::read(u.dest.join("index.html")).unwrap(),
            b"<p>zip</p>"
        );
        let mode = std::fs::metadata(u.dest.join("index.html"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn zip_symlinks_and_traversal_are_refused() {
        let bytes = zip_of(|w| {
            w.start_file("index.html", opts()).unwrap();
            w.add_symlink("link", "/etc/passwd", opts()).unwrap();
        });
        let err = unpack_bytes(&bytes, BundleFormat::Zip, &limits())
            .err()
            .unwrap();
        assert!(matches!(err, ArchiveError::Symlink { .. }), "{err}");
        let bytes = zip_of(|w| {
            w.start_file("../evil.txt", opts()).unwrap();
        });
        let err = unpack_bytes(&bytes, BundleFormat::Zip, &limits())
            .err()
            .unwrap();
        assert!(matches!(err, ArchiveError::ParentDir { .. }), "{err}");
        let bytes = zip_of(|w| {
            w.start_file("/abs.txt", opts()).unwrap();
        });
        let err = unpack_bytes(&bytes, BundleFormat::Zip, &limits())
            .err()
            .unwrap();
        assert!(matches!(err, ArchiveError::AbsolutePath { .. }), "{err}");
        let mut bytes = zip_of(|w| {
            w.start_file("fifo", opts().unix_permissions(0o644))
                .unwrap();
        });
        // The writer only makes files and links: patch the central directory's unix mode.
        let cd = bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
        bytes[cd + 5] = 3;
        bytes[cd + 38..cd + 42].copy_from_slice(&(0o010644u32 << 16).to_le_bytes());
        let err = unpack_bytes(&bytes, BundleFormat::Zip, &limits())
            .err()
            .unwrap();
        assert!(
            matches!(err, ArchiveError::SpecialFile { kind: "fifo", .. }),
            "{err}"
        );
    }

    #[test]
    fn zip_times_are_utc() {
        let dt = zip::DateTime::from_date_and_time(2020, 9, 13, 12, 26, 40).unwrap();
        assert_eq!(
            zip_time(dt),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000))
        );
    }

    #[test]
    fn inspect_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("b.tgz");
        std::fs::write(&archive, gz(&tar_of(&[file("site/a.txt", b"x")]))).unwrap();
        let stats = inspect(&archive, BundleFormat::TarGz, &limits()).unwrap();
        assert_eq!(stats.files, 1);
        assert_eq!(stats.flattened.as_deref(), Some("site"));
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn listing_is_flattened_and_hashed() {
        let bytes = gz(&tar_of(&[
            dir("site/"),
            file("site/index.html", b"<h1>hi</h1>"),
            file("site/css/a.css", b"a{}"),
            dir("site/empty/"),
        ]));
        let tmp = tempfile::tempdir().unwrap();
        let listed = unpack_stream(&bytes[..], BundleFormat::TarGz, tmp.path(), &limits()).unwrap();
        let paths: Vec<&str> = listed.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["index.html", "css/a.css"]);
        assert_eq!(listed.dirs, ["css", "empty"]);
        assert_eq!(
            listed.files[0].sha256,
            crate::crypto::sha256(b"<h1>hi</h1>")
        );
        assert_eq!(
            listed.files[0].mtime,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000)
        );
        check_listing(&listed, tmp.path());
    }

    #[test]
    fn streaming_refuses_zip_and_stops_at_the_end_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let err = unpack_stream(&b"PK"[..], BundleFormat::Zip, tmp.path(), &limits()).unwrap_err();
        assert!(err.to_string().contains("zip"), "{err}");
        // Whatever follows the tar end marker inside the compressed stream is not read as
        // entries; the caller still reads (and hashes) its reader to the end.
        let mut tar = tar_of(&[file("a.txt", b"a")]);
        tar.extend_from_slice(&[7u8; 4096]);
        let bytes = zstd::encode_all(&tar[..], 3).unwrap();
        let listed =
            unpack_stream(&bytes[..], BundleFormat::TarZst, tmp.path(), &limits()).unwrap();
        assert_eq!(listed.files.len(), 1);
    }

    #[test]
    fn limits_from_config() {
        let l = ArchiveLimits::from_config(&LimitsConfig {
            max_bundle_size: 1,
            max_unpacked_size: 2,
            max_bundle_entries: 3,
        });
        assert_eq!(
            l,
            ArchiveLimits {
                max_entries: 3,
                max_unpacked_size: 2,
                max_path_len: DEFAULT_MAX_PATH_LEN
            }
        );
    }
}
