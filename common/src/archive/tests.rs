//! Unit tests of `archive`: every rule with the bad input that breaks it, bombs included.

use std::io::{Cursor, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

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
        max_name_bytes: 1 << 20,
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

/// Why `bytes` is refused, the same by every entry point.
fn refusal(bytes: &[u8], format: BundleFormat, limits: &ArchiveLimits) -> ArchiveError {
    unpack_bytes(bytes, format, limits).err().unwrap()
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
    let err = refusal(&bytes, BundleFormat::TarGz, &limits());
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
    let err = refusal(&bytes, BundleFormat::Zip, &limits());
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
    let err = refusal(&gz(&tar), BundleFormat::TarGz, &small);
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
    let err = refusal(&gz(&tar), BundleFormat::TarGz, &limits());
    assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
    let bytes = zip_of(|w| {
        w.start_file("bomb.bin", opts()).unwrap();
        w.write_all(&zeros).unwrap();
    });
    assert!(bytes.len() < 100 << 10);
    let err = refusal(&bytes, BundleFormat::Zip, &limits());
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
        ..limits()
    };
    let junk = vec![7u8; 1 << 20];
    let tar = tar_of(&[file("index.html", b"x"), file("__MACOSX/._big", &junk)]);
    let err = refusal(&gz(&tar), BundleFormat::TarGz, &small);
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
    let err = refusal(&bytes, BundleFormat::Zip, &limits());
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
    let err = refusal(b"not a gzip stream", BundleFormat::TarGz, &limits());
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
    let err = refusal(b"PK\x03\x04garbage", BundleFormat::Zip, &limits());
    assert!(
        matches!(err, ArchiveError::Corrupt { format: "zip", .. }),
        "{err}"
    );
    let err = refusal(b"garbage", BundleFormat::TarZst, &limits());
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
    let err = refusal(&bytes, BundleFormat::Zip, &limits());
    assert!(matches!(err, ArchiveError::Symlink { .. }), "{err}");
    let bytes = zip_of(|w| {
        w.start_file("../evil.txt", opts()).unwrap();
    });
    let err = refusal(&bytes, BundleFormat::Zip, &limits());
    assert!(matches!(err, ArchiveError::ParentDir { .. }), "{err}");
    let bytes = zip_of(|w| {
        w.start_file("/abs.txt", opts()).unwrap();
    });
    let err = refusal(&bytes, BundleFormat::Zip, &limits());
    assert!(matches!(err, ArchiveError::AbsolutePath { .. }), "{err}");
    let mut bytes = zip_of(|w| {
        w.start_file("fifo", opts().unix_permissions(0o644))
            .unwrap();
    });
    // The writer only makes files and links: patch the central directory's unix mode.
    let cd = bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    bytes[cd + 5] = 3;
    bytes[cd + 38..cd + 42].copy_from_slice(&(0o010644u32 << 16).to_le_bytes());
    let err = refusal(&bytes, BundleFormat::Zip, &limits());
    assert!(
        matches!(err, ArchiveError::SpecialFile { kind: "fifo", .. }),
        "{err}"
    );
}

#[test]
fn zip_times_are_utc() {
    let dt = zip::DateTime::from_date_and_time(2020, 9, 13, 12, 26, 40).unwrap();
    assert_eq!(
        zip_reader::zip_time(dt.datepart(), dt.timepart()),
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
    let listed = unpack_stream(&bytes[..], BundleFormat::TarZst, tmp.path(), &limits()).unwrap();
    assert_eq!(listed.files.len(), 1);
}

#[test]
fn limits_from_config() {
    let l = ArchiveLimits::from_config(&LimitsConfig {
        max_bundle_size: 1,
        max_unpacked_size: 2,
        max_bundle_entries: 3,
        ..LimitsConfig::default()
    });
    assert_eq!(
        l,
        ArchiveLimits {
            max_entries: 3,
            max_unpacked_size: 2,
            max_path_len: DEFAULT_MAX_PATH_LEN,
            max_name_bytes: 1 << 20,
        }
    );
}

/// A pax record `"<len> <key>=<value>\n"`, its length counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    assert_eq!(record.len(), len);
    record
}

/// A tar of one header record (kind, declared size, data) and the entry it describes; when
/// the record declares more than `data`, the archive stops after `data`.
fn tar_with_record(kind: EntryType, declared: u64, data: &[u8], then: Raw<'_>) -> Vec<u8> {
    let mut header = Header::new_gnu();
    header.as_old_mut().name[..9].copy_from_slice(b"@LongLink");
    header.set_entry_type(kind);
    header.set_size(declared);
    header.set_cksum();
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(data);
    if declared == data.len() as u64 {
        bytes.resize(bytes.len().div_ceil(512) * 512, 0);
        bytes.extend(tar_of(&[then]));
    }
    bytes
}

#[test]
fn oversized_header_records_are_refused_before_they_are_read() {
    // Each declares far more than follows (nothing does): refused on the declared size alone.
    let cases = [
        (EntryType::XHeader, 1_200_000_000, "pax extended header"),
        (
            EntryType::XGlobalHeader,
            MAX_HEADER_RECORD + 1,
            "pax global header",
        ),
        (EntryType::GNULongName, 300 << 20, "GNU long name"),
        (EntryType::GNULongLink, 300 << 20, "GNU long link"),
    ];
    for (kind, declared, what) in cases {
        let bytes = tar_with_record(kind, declared, b"", file("index.html", b"x"));
        let err = refusal(&gz(&bytes), BundleFormat::TarGz, &limits());
        assert!(
            matches!(err, ArchiveError::HeaderTooLarge { kind, size } if kind == what && size == declared),
            "{what}: {err}"
        );
        assert!(err.to_string().contains("65536-byte limit"), "{err}");
    }
}

#[test]
fn header_records_up_to_the_limit_apply_to_the_next_entry() {
    // A pax header of exactly MAX_HEADER_RECORD bytes: a path and a comment filling the rest.
    let path = pax_record("path", b"site/from-pax.html");
    let filler = MAX_HEADER_RECORD as usize - path.len();
    let mut comment = pax_record("comment", &vec![b'c'; filler - 20]);
    let mut n = filler - 20;
    while comment.len() != filler {
        n = n + filler - comment.len();
        comment = pax_record("comment", &vec![b'c'; n]);
    }
    let mut record = path;
    record.extend(comment);
    assert_eq!(record.len() as u64, MAX_HEADER_RECORD);
    let bytes = tar_with_record(
        EntryType::XHeader,
        record.len() as u64,
        &record,
        file("short", b"pax"),
    );
    let u = unpack_bytes(&gz(&bytes), BundleFormat::TarGz, &limits()).unwrap();
    assert_eq!(tree(&u.dest), ["from-pax.html"]);
    // A GNU long name (with its NUL) names the next entry.
    let bytes = tar_with_record(
        EntryType::GNULongName,
        9,
        b"long.txt\0",
        file("short", b"gnu"),
    );
    let u = unpack_bytes(&gz(&bytes), BundleFormat::TarGz, &limits()).unwrap();
    assert_eq!(tree(&u.dest), ["long.txt"]);
    // An archive may not end on a header record.
    let mut bytes = tar_with_record(EntryType::GNULongName, 0, b"", file("x", b"x"));
    bytes.truncate(512);
    bytes.extend([0u8; 1024]);
    let err = refusal(&gz(&bytes), BundleFormat::TarGz, &limits());
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err}");
}

#[test]
fn pax_size_must_agree_with_the_header() {
    let record = pax_record("size", b"3");
    let bytes = tar_with_record(
        EntryType::XHeader,
        record.len() as u64,
        &record,
        file("a.txt", b"hello"),
    );
    let err = refusal(&gz(&bytes), BundleFormat::TarGz, &limits());
    assert!(err.to_string().contains("disagrees"), "{err}");
}

#[test]
fn implied_directories_count_as_entries() {
    // Each file implies 41 directories of its own.
    let deep: Vec<String> = (0..3)
        .map(|i| format!("d{i}/{}f.txt", "a/".repeat(40)))
        .collect();
    let entries: Vec<Raw<'_>> = deep.iter().map(|n| file(n, b"x")).collect();
    let err = tgz(&entries).err().unwrap();
    assert!(
        matches!(err, ArchiveError::TooManyEntries { max: 100 }),
        "{err}"
    );
    assert!(tgz(&entries[..1]).is_ok());
}

#[test]
fn paths_held_are_counted_against_the_name_budget() {
    let small = ArchiveLimits {
        max_entries: 10_000,
        max_name_bytes: 10_000,
        ..limits()
    };
    let names: Vec<String> = (0..20)
        .map(|i| format!("{i:0>200}/{i:0>200}/{i:0>190}"))
        .collect();
    let entries: Vec<Raw<'_>> = names.iter().map(|n| file(n, b"x")).collect();
    let mut builder = tar::Builder::new(Vec::new());
    for e in &entries {
        let mut header = Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, std::str::from_utf8(e.name).unwrap(), e.data)
            .unwrap();
    }
    let bytes = gz(&builder.into_inner().unwrap());
    let err = refusal(&bytes, BundleFormat::TarGz, &small);
    assert!(
        matches!(err, ArchiveError::TooManyNames { max: 10_000 }),
        "{err}"
    );
    assert!(err.to_string().contains("limits.maxBundleEntries"), "{err}");
    // The budget scales with the entry limit, with a floor.
    let l = ArchiveLimits::from_config(&LimitsConfig::default());
    assert_eq!(l.max_name_bytes, 100_000 * NAME_BYTES_PER_ENTRY);
}

#[test]
fn zip_entry_count_is_checked_before_the_directory_is_read() {
    let mut bytes = zip_of(|w| {
        w.start_file("index.html", opts()).unwrap();
        w.write_all(b"x").unwrap();
    });
    // Claim 65535 entries in the end record: refused by the limit, not by what follows.
    let eocd = bytes.len() - 22;
    assert_eq!(&bytes[eocd..eocd + 4], b"PK\x05\x06");
    bytes[eocd + 8..eocd + 12].copy_from_slice(&[0xff; 4]);
    let err = refusal(&bytes, BundleFormat::Zip, &limits());
    assert!(
        matches!(err, ArchiveError::TooManyEntries { max: 100 }),
        "{err}"
    );
    assert!(err.to_string().contains("limits.maxBundleEntries"), "{err}");
}

#[test]
fn zip64_end_records_are_read() {
    // Over 65535 entries, the writer adds a zip64 end record.
    let n = 70_000;
    let bytes = zip_of(|w| {
        let stored = SimpleFileOptions::default();
        for i in 0..n {
            w.start_file(format!("{i}"), stored).unwrap();
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("big.zip");
    std::fs::write(&archive, &bytes).unwrap();
    let many = ArchiveLimits {
        max_entries: 100_000,
        ..limits()
    };
    let stats = inspect(&archive, BundleFormat::Zip, &many).unwrap();
    assert_eq!(stats.files, n);
    let err = inspect(&archive, BundleFormat::Zip, &limits()).unwrap_err();
    assert!(
        matches!(err, ArchiveError::TooManyEntries { max: 100 }),
        "{err}"
    );
}

#[test]
fn zip_duplicates_are_refused_like_tar() {
    let mut bytes = zip_of(|w| {
        w.start_file("a.txt", opts()).unwrap();
        w.write_all(b"first").unwrap();
        w.start_file("b.txt", opts()).unwrap();
        w.write_all(b"second").unwrap();
    });
    // Rename b.txt to a.txt in the central directory (the writer refuses duplicates).
    let second = bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"PK\x01\x02")
        .nth(1)
        .unwrap()
        .0;
    assert_eq!(&bytes[second + 46..second + 51], b"b.txt");
    bytes[second + 46] = b'a';
    let err = refusal(&bytes, BundleFormat::Zip, &limits());
    assert!(matches!(err, ArchiveError::Duplicate { .. }), "{err}");
    assert_eq!(err.to_string(), "entry \"a.txt\" appears more than once");
}

#[test]
fn zip_checksums_and_methods_are_checked() {
    let mut bytes = zip_of(|w| {
        w.start_file(
            "a.txt",
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
        )
        .unwrap();
        w.write_all(b"hello").unwrap();
    });
    let data = bytes.windows(5).position(|w| w == b"hello").unwrap();
    bytes[data] = b'j';
    let err = refusal(&bytes, BundleFormat::Zip, &limits());
    assert!(err.to_string().contains("checksum"), "{err}");
    bytes[data] = b'h';
    let cd = bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    bytes[cd + 10] = 12; // bzip2
    let err = refusal(&bytes, BundleFormat::Zip, &limits());
    assert!(err.to_string().contains("compression method 12"), "{err}");
}

#[test]
fn flattening_cannot_collide_with_its_own_names() {
    let u = tgz(&[
        file("top/.statiko-flatten/x.txt", b"1"),
        file("top/.statiko-flatten-1", b"2"),
        file("top/index.html", b"3"),
    ])
    .unwrap();
    assert_eq!(u.stats.flattened.as_deref(), Some("top"));
    assert_eq!(
        tree(&u.dest),
        [
            ".statiko-flatten-1",
            ".statiko-flatten/",
            ".statiko-flatten/x.txt",
            "index.html"
        ]
    );
    let u = tgz(&[
        file(".statiko-flatten/.statiko-flatten/a", b"1"),
        file(".statiko-flatten/b", b"2"),
    ])
    .unwrap();
    assert_eq!(
        tree(&u.dest),
        [".statiko-flatten/", ".statiko-flatten/a", "b"]
    );
}

/// `check_upload` (and `inspect`) on a `.tar.gz` of `entries`.
fn check_upload_tgz(
    entries: &[Raw<'_>],
    limits: &ArchiveLimits,
) -> (
    Result<UnpackStats, ArchiveError>,
    Result<UnpackStats, ArchiveError>,
) {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("b.tgz");
    std::fs::write(&archive, gz(&tar_of(entries))).unwrap();
    let checked = check_upload(&archive, BundleFormat::TarGz, limits, &[]).map(|(stats, _)| stats);
    let inspected = inspect(&archive, BundleFormat::TarGz, limits);
    // Nothing written next to the archive.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    (checked, inspected)
}

#[test]
fn upload_check_applies_the_manifest_rules_of_staging() {
    // Fine: the manifest's pages exist after flattening.
    let ok = check_upload_tgz(
        &[
            file("site/index.html", b"x"),
            file("site/404.html", b"x"),
            file("site/_statiko.yaml", b"page404: /404.html\nspa: true\n"),
        ],
        &limits(),
    )
    .0
    .unwrap();
    assert_eq!(ok.flattened.as_deref(), Some("site"));
    let cases: [(&[Raw<'_>], &str); 5] = [
        (
            &[
                file("site/404.html", b"x"),
                file("site/_statiko.yaml", b"spa: true\n"),
            ],
            "spa: the bundle has no index.html",
        ),
        (
            &[
                file("index.html", b"x"),
                file("_statiko.yaml", b"page404: /missing.html\n"),
            ],
            "page404: \"/missing.html\" is not in the bundle",
        ),
        (
            &[
                file("index.html", b"x"),
                file("_statiko.yaml", b"nope: 1\n"),
            ],
            "nope",
        ),
        (
            &[file("index.html", b"x"), file("_statiko.yaml", b"\xff\xfe")],
            "not valid UTF-8",
        ),
        (
            &[file("index.html", b"x"), dir("_statiko.yaml/")],
            "it is not a file",
        ),
    ];
    for (entries, reason) in cases {
        let (checked, inspected) = check_upload_tgz(entries, &limits());
        let err = checked.unwrap_err();
        assert!(matches!(err, ArchiveError::Manifest(_)), "{err}");
        let message = err.to_string();
        assert!(
            message.starts_with("invalid app manifest _statiko.yaml: ") && message.contains(reason),
            "{message}"
        );
        // inspect alone (and so unpacking) does not look at manifests: the edge does, after.
        assert!(inspected.is_ok(), "{inspected:?}");
    }
    // Too large, by its length (only the first MAX_MANIFEST_LEN + 1 bytes are held).
    let big = vec![b'#'; crate::manifest::MAX_MANIFEST_LEN + 10];
    let roomy = ArchiveLimits {
        max_unpacked_size: 4 << 20,
        ..limits()
    };
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("b.tgz");
    std::fs::write(
        &archive,
        gz(&tar_of(&[
            file("index.html", b"x"),
            file("_statiko.yaml", &big),
        ])),
    )
    .unwrap();
    let err = check_upload(&archive, BundleFormat::TarGz, &roomy, &[]).unwrap_err();
    assert!(
        err.to_string().contains("over the 1048576-byte limit"),
        "{err}"
    );
    // With two top-level folders each holding one, neither is the root's: nothing to check.
    check_upload_tgz(
        &[
            file("a/_statiko.yaml", b"spa: true\n"),
            file("b/_statiko.yaml", b"spa: true\n"),
        ],
        &limits(),
    )
    .0
    .unwrap();
}

/// The files `check_upload` keeps for control's checks (`_redirects`, `_headers`): root files,
/// or the only top folder's when the bundle is flattened; with several top folders nothing
/// below the root is kept, so memory stays bounded by one file per name and place.
#[test]
fn upload_check_keeps_root_files_only() {
    let keep = [("_redirects", 64)];
    let run = |entries: &[Raw<'_>]| {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("b.tgz");
        std::fs::write(&archive, gz(&tar_of(entries))).unwrap();
        check_upload(&archive, BundleFormat::TarGz, &limits(), &keep)
            .unwrap()
            .1
    };
    let flattened = run(&[
        file("site/index.html", b"x"),
        file("site/_redirects", b"/a /b 301\n"),
    ]);
    assert_eq!(
        flattened,
        vec![("_redirects".to_owned(), b"/a /b 301\n".to_vec())]
    );
    let several_tops = run(&[
        file("a/_redirects", b"/a /b\n"),
        file("b/_redirects", b"/c /d\n"),
        file("c/_redirects", b"/e /f\n"),
        file("index.html", b"x"),
    ]);
    assert!(several_tops.is_empty(), "{several_tops:?}");
    let root = run(&[
        file("_redirects", b"/x /y\n"),
        file("docs/_redirects", b"/nested /no\n"),
        file("index.html", b"x"),
    ]);
    assert_eq!(root, vec![("_redirects".to_owned(), b"/x /y\n".to_vec())]);
    // Longer than its cap: kept up to the cap plus one byte, so the reader sees it is too long.
    let long = vec![b'#'; 200];
    let cut = run(&[file("_redirects", &long)]);
    assert_eq!(cut[0].1.len(), 65);
}
