//! The [`Unpacker`]: the rules every archive entry goes through (entry, size and name budgets,
//! duplicates, directories implied by files), the optional writing and hashing of each file,
//! the capture of the manifest and kept root files, and the flattening of a single top folder.
//! The tar and zip readers feed it one entry at a time.

use super::*;

/// Parent directories of a relative path, shortest first (`a/b/c` gives `a`, `a/b`).
pub(super) fn ancestors(rel: &str) -> impl Iterator<Item = &str> {
    rel.match_indices('/').map(move |(i, _)| &rel[..i])
}

/// A manifest file's first bytes (up to one past the limit) and its length.
pub(super) struct Captured {
    pub(super) len: u64,
    pub(super) bytes: Vec<u8>,
}

/// The files that may become the bundle's manifest, known only once flattening is: the one at
/// the root, and the one under the first top-level folder (dropped when a second folder has
/// one: then nothing is flattened). So at most two, each bounded.
#[derive(Default)]
pub(super) struct ManifestCapture {
    pub(super) root: Option<Captured>,
    pub(super) nested_top: Option<String>,
    pub(super) nested: Option<Captured>,
}

impl ManifestCapture {
    /// Whether the file `rel` is a candidate (and so must be captured).
    pub(super) fn wants(&mut self, rel: &str) -> bool {
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

    pub(super) fn keep(&mut self, rel: &str, captured: Captured) {
        if rel == MANIFEST_FILE {
            self.root = Some(captured);
        } else {
            self.nested = Some(captured);
        }
    }
}

/// Walks entries, enforcing the limits and writing into `dest` when there is one.
pub(super) struct Unpacker<'a> {
    pub(super) dest: Option<&'a Path>,
    pub(super) limits: &'a ArchiveLimits,
    pub(super) entries: u64,
    pub(super) bytes: u64,
    pub(super) skipped: u64,
    /// Bytes of the distinct paths in `files` and `dirs`.
    pub(super) name_bytes: u64,
    pub(super) files: HashSet<String>,
    /// Every directory, explicit or implied.
    pub(super) dirs: HashSet<String>,
    pub(super) explicit_dirs: HashSet<String>,
    pub(super) buf: Vec<u8>,
    /// Hash and list the files written (see [`Unpacker::recording`]).
    pub(super) record: bool,
    pub(super) written: Vec<UnpackedFile>,
    /// Set by [`check_upload`]: capture the manifest and check it at the end.
    pub(super) manifest: Option<ManifestCapture>,
    /// Root files to keep in memory (see [`check_upload`]).
    pub(super) keep: &'a [(&'a str, usize)],
    /// Where the kept files go.
    pub(super) kept: Option<&'a RefCell<Vec<KeptFile>>>,
    /// The one top folder whose files `keep` may name one level down (they are root files if
    /// the bundle is flattened); a second top folder means no flattening, and then nothing
    /// below the root is kept, so memory stays bounded by one file per name and place.
    pub(super) keep_top: KeepTop,
}

#[derive(Debug, Default)]
pub(super) enum KeepTop {
    #[default]
    Unseen,
    One(String),
    Several,
}

impl<'a> Unpacker<'a> {
    /// The cap of `rel` when [`check_upload`] keeps it: a `keep` name at the root, or one level
    /// down in the bundle's only top folder (see [`Unpacker::keep_top`]).
    pub(super) fn keep_cap(&mut self, rel: &str) -> Option<usize> {
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

    pub(super) fn new(dest: Option<&'a Path>, limits: &'a ArchiveLimits) -> Self {
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
    pub(super) fn recording(mut self) -> Self {
        self.record = self.dest.is_some();
        self
    }

    /// Counts one archive entry of any kind.
    pub(super) fn count_entry(&mut self) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                max: self.limits.max_entries,
            });
        }
        Ok(())
    }

    pub(super) fn skip(&mut self) {
        self.skipped += 1;
    }

    /// Counts a path about to be held in memory against the name budget.
    pub(super) fn hold_name(&mut self, rel: &str) -> Result<(), ArchiveError> {
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
    pub(super) fn new_dir(&mut self, rel: &str) -> Result<(), ArchiveError> {
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

    pub(super) fn too_large(&self, rel: &str) -> ArchiveError {
        ArchiveError::TooLarge {
            max: self.limits.max_unpacked_size,
            entry: display_name(rel.as_bytes()),
        }
    }

    /// Registers the parents of `rel`, refusing a parent that is a file.
    pub(super) fn add_parents(&mut self, rel: &str) -> Result<(), ArchiveError> {
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

    pub(super) fn add_dir(&mut self, rel: &str) -> Result<(), ArchiveError> {
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

    pub(super) fn add_file(
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
    pub(super) fn finish(self) -> Result<Unpacked, ArchiveError> {
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
    pub(super) fn check_manifest(
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
    pub(super) fn single_top_folder(&self) -> Option<String> {
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
    pub(super) fn flatten_staging(&self, top: &str) -> String {
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
