//! Files holding key material or the desired state (the file store's `state.json`, the edge's
//! `applied/desired.json`, control's self-signed TLS key): created 0600 in directories created
//! 0700, and tightened at start when an earlier version or a loose umask left them wider.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Owner read/write only.
pub const FILE_MODE: u32 = 0o600;
/// Owner only.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents) 0700, and tightens it to 0700 if it already existed.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    tighten(dir, DIR_MODE)
}

/// Opens `path` for writing, truncated, 0600 (also when it existed with wider permissions).
pub fn create_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Replaces `path` with `bytes` atomically (write a 0600 `.tmp` sibling, fsync, rename), in a
/// 0700 parent directory created if missing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("the path has no parent directory"))?;
    create_dir(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut file = create_file(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

/// Removes every permission beyond `mode` from `path` if it exists (a missing path is fine).
pub fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let current = match fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o777,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if current & !mode == 0 {
        return Ok(());
    }
    tracing::warn!(
        path = %path.display(),
        from = format!("{current:o}"),
        to = format!("{:o}", current & mode),
        "tightening the permissions of a file holding secrets or the desired state"
    );
    fs::set_permissions(path, Permissions::from_mode(current & mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_private_and_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);

        let file = dir.join("state.json");
        create_file(&file).unwrap().write_all(b"{}").unwrap();
        assert_eq!(mode(&file), 0o600);

        // An existing file or directory left wider is tightened.
        fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        create_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        fs::set_permissions(&file, Permissions::from_mode(0o664)).unwrap();
        tighten(&file, FILE_MODE).unwrap();
        assert_eq!(mode(&file), 0o600);
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        // Never loosened, and a missing path is fine.
        fs::set_permissions(&file, Permissions::from_mode(0o400)).unwrap();
        tighten(&file, FILE_MODE).unwrap();
        assert_eq!(mode(&file), 0o400);
        tighten(&dir.join("missing"), FILE_MODE).unwrap();
    }
}
