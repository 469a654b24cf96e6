//! `stk app upload`: packing a folder into a tar.gz, detecting an archive's format, hashing,
//! Ed25519 signing, and streaming the bundle (metadata first, then 64 KiB chunks).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};
use aws_lc_rs::digest;
use aws_lc_rs::signature::Ed25519KeyPair;
use flate2::Compression;
use flate2::write::GzEncoder;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;
use tokio::io::AsyncReadExt as _;

use statiko_proto::v1::upload_app_request::Data;
use statiko_proto::v1::{App, BundleFormat, UploadAppRequest, UploadMetadata};

use crate::connect::Api;
use crate::{usage_error, warn};

/// Size of each streamed chunk.
const CHUNK_SIZE: usize = 64 * 1024;

/// An archive ready to send: an open file positioned anywhere, its format, size and digest.
#[derive(Debug)]
pub(crate) struct Bundle {
    file: File,
    pub(crate) format: BundleFormat,
    pub(crate) size: u64,
    /// Raw SHA-256 of the archive bytes.
    pub(crate) sha256: Vec<u8>,
}

/// What the user asked to upload.
#[derive(Debug)]
pub(crate) struct UploadOptions {
    pub(crate) path: PathBuf,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) sign: Option<PathBuf>,
    pub(crate) show_progress: bool,
}

impl Bundle {
    /// Packs a folder, or opens an archive file, and hashes it. Blocking.
    pub(crate) fn prepare(path: &Path) -> anyhow::Result<Self> {
        let metadata =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        let (mut file, format) = if metadata.is_dir() {
            let mut file = tempfile::tempfile().context("cannot create a temporary file")?;
            pack_dir(path, &mut file)
                .with_context(|| format!("cannot pack folder {}", path.display()))?;
            (file, BundleFormat::TarGz)
        } else {
            let format = format_from_name(path)?;
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            (file, format)
        };
        file.seek(SeekFrom::Start(0))?;
        let (sha256, size) =
            sha256_of(&mut file).with_context(|| format!("cannot read {}", path.display()))?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Self {
            file,
            format,
            size,
            sha256,
        })
    }

    /// `sha256:<hex>`.
    pub(crate) fn digest_string(&self) -> String {
        format!("sha256:{}", hex(&self.sha256))
    }
}

/// A bundle with its metadata, ready to stream.
#[derive(Debug)]
pub(crate) struct PreparedUpload {
    bundle: Bundle,
    metadata: UploadMetadata,
    show_progress: bool,
}

/// Packs or opens the bundle, hashes and optionally signs it: everything that can fail
/// locally, done before connecting.
pub(crate) async fn prepare(options: UploadOptions) -> anyhow::Result<PreparedUpload> {
    let path = options.path.clone();
    let bundle = tokio::task::spawn_blocking(move || Bundle::prepare(&path))
        .await
        .context("packing task failed")??;
    let signature = match &options.sign {
        Some(key) => sign_digest(key, &bundle.sha256)?,
        None => Vec::new(),
    };
    let metadata = UploadMetadata {
        name: options.name,
        version: options.version,
        format: bundle.format as i32,
        signature,
        digest: bundle.digest_string(),
    };
    Ok(PreparedUpload {
        bundle,
        metadata,
        show_progress: options.show_progress,
    })
}

/// Uploads one app version and returns the stored app.
pub(crate) async fn upload(api: &Api, prepared: PreparedUpload) -> anyhow::Result<App> {
    let PreparedUpload {
        bundle,
        metadata,
        show_progress,
    } = prepared;
    let progress = if show_progress {
        let bar = ProgressBar::with_draw_target(Some(bundle.size), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .context("progress bar template")?,
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    // A read error cannot travel through the request stream; keep it and report it instead
    // of the server's complaint about the truncated upload.
    let read_error: Arc<Mutex<Option<io::Error>>> = Arc::default();
    let file = tokio::fs::File::from_std(bundle.file);
    let chunks = futures::stream::unfold(
        (file, progress.clone(), Arc::clone(&read_error)),
        |(mut file, progress, read_error)| async move {
            let mut buffer = vec![0; CHUNK_SIZE];
            let mut filled = 0;
            // Fill whole chunks (except the last) so the server sees regular message sizes.
            while filled < CHUNK_SIZE {
                match file.read(&mut buffer[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(err) => {
                        if let Ok(mut slot) = read_error.lock() {
                            *slot = Some(err);
                        }
                        return None;
                    }
                }
            }
            if filled == 0 {
                return None;
            }
            buffer.truncate(filled);
            progress.inc(filled as u64);
            let message = UploadAppRequest {
                data: Some(Data::Chunk(buffer)),
            };
            Some((message, (file, progress, read_error)))
        },
    );
    let first = UploadAppRequest {
        data: Some(Data::Metadata(metadata)),
    };
    let stream = futures::stream::iter([first]).chain(chunks);

    // Uploads have no call timeout: a large bundle on a slow link may take long.
    let result = api.apps().upload_app(stream).await;
    progress.finish_and_clear();
    if let Ok(mut slot) = read_error.lock()
        && let Some(err) = slot.take()
    {
        return Err(anyhow::Error::new(err).context("reading the bundle failed during upload"));
    }
    let response = result?.into_inner();
    response
        .app
        .context("the server returned no app in its response")
}

/// Archive format from the file name.
pub(crate) fn format_from_name(path: &Path) -> anyhow::Result<BundleFormat> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Ok(BundleFormat::TarGz)
    } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
        Ok(BundleFormat::TarZst)
    } else if name.ends_with(".zip") {
        Ok(BundleFormat::Zip)
    } else {
        Err(usage_error(format!(
            "cannot upload {}: expected a folder or a .tar.gz, .tgz, .tar.zst or .zip file",
            path.display()
        )))
    }
}

/// Writes `dir` as a gzip-compressed tar to `out`: paths relative to `dir`, regular files and
/// folders only, entries sorted so the same tree gives the same archive. Symlinks and special
/// files are skipped with a warning on stderr. Returns the number of files packed.
pub(crate) fn pack_dir(dir: &Path, out: &mut File) -> anyhow::Result<u64> {
    let encoder = GzEncoder::new(io::BufWriter::new(out), Compression::default());
    let mut builder = tar::Builder::new(encoder);
    let mut files = 0;
    pack_entries(&mut builder, dir, Path::new(""), &mut files)?;
    if files == 0 {
        bail!("the folder contains no files");
    }
    let encoder = builder.into_inner().context("finishing the tar archive")?;
    let mut writer = encoder.finish().context("finishing gzip")?;
    writer.flush().context("writing the archive")?;
    Ok(files)
}

fn pack_entries<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    relative: &Path,
    files: &mut u64,
) -> anyhow::Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let name = relative.join(entry.file_name());
        let metadata = std::fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let file_type = metadata.file_type();
        if file_type.is_symlink() {
            warn(&format!("skipping symbolic link {}", path.display()));
        } else if file_type.is_dir() {
            let mut header = entry_header(&metadata);
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, &name, io::empty())
                .with_context(|| format!("cannot add {}", path.display()))?;
            pack_entries(builder, &path, &name, files)?;
        } else if file_type.is_file() {
            let mut header = entry_header(&metadata);
            let mut file =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            builder
                .append_data(&mut header, &name, &mut file)
                .with_context(|| format!("cannot add {}", path.display()))?;
            *files += 1;
        } else {
            warn(&format!("skipping special file {}", path.display()));
        }
    }
    Ok(())
}

/// A header with no owner names or ids, the permission bits normalised, and the real mtime
/// (so that `Last-Modified` can mean something).
fn entry_header(metadata: &std::fs::Metadata) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(metadata, tar::HeaderMode::Deterministic);
    if let Ok(modified) = metadata.modified()
        && let Ok(since_epoch) = modified.duration_since(std::time::UNIX_EPOCH)
    {
        header.set_mtime(since_epoch.as_secs());
    }
    header
}

fn sha256_of(reader: &mut impl Read) -> io::Result<(Vec<u8>, u64)> {
    let mut context = digest::Context::new(&digest::SHA256);
    let mut buffer = vec![0; CHUNK_SIZE];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        context.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((context.finish().as_ref().to_vec(), size))
}

/// Signs the raw 32-byte SHA-256 digest with an Ed25519 PKCS#8 PEM key.
pub(crate) fn sign_digest(key_path: &Path, sha256: &[u8]) -> anyhow::Result<Vec<u8>> {
    let der = PrivatePkcs8KeyDer::from_pem_file(key_path).with_context(|| {
        format!(
            "cannot read a PKCS#8 PEM private key from {}",
            key_path.display()
        )
    })?;
    let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
        .map_err(|err| anyhow::anyhow!("{err}"))
        .with_context(|| format!("{} is not an Ed25519 private key", key_path.display()))?;
    Ok(key.sign(sha256).as_ref().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use aws_lc_rs::signature::{ED25519, KeyPair as _, UnparsedPublicKey};

    use super::*;

    /// Made with `openssl genpkey -algorithm ed25519` (PKCS#8 v1, no public key).
    const OPENSSL_ED25519_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIGABnoxGH3gtanZGaix12QJgVmJ2RwrCCNetyWo6Ug/5
-----END PRIVATE KEY-----
";

    fn unpack(file: &mut File) -> BTreeMap<String, Option<Vec<u8>>> {
        file.seek(SeekFrom::Start(0)).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut seen = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            assert!(!path.starts_with('/') && !path.contains(".."), "{path}");
            let content = match entry.header().entry_type() {
                tar::EntryType::Directory => None,
                tar::EntryType::Regular => {
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data).unwrap();
                    Some(data)
                }
                other => panic!("unexpected entry type {other:?} for {path}"),
            };
            seen.insert(path, content);
        }
        seen
    }

    #[test]
    fn pack_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("index.html"), b"<h1>hi</h1>").unwrap();
        std::fs::create_dir_all(root.join("assets/img")).unwrap();
        std::fs::write(root.join("assets/app.js"), b"console.log(1)").unwrap();
        std::fs::write(root.join("assets/img/logo.svg"), vec![7u8; 200_000]).unwrap();
        std::fs::create_dir(root.join("empty")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();

        let mut out = tempfile::tempfile().unwrap();
        assert_eq!(pack_dir(root, &mut out).unwrap(), 3);
        let seen = unpack(&mut out);
        let expected: BTreeMap<String, Option<Vec<u8>>> = [
            ("assets", None),
            ("assets/app.js", Some(b"console.log(1)".to_vec())),
            ("assets/img", None),
            ("assets/img/logo.svg", Some(vec![7u8; 200_000])),
            ("empty", None),
            ("index.html", Some(b"<h1>hi</h1>".to_vec())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(seen, expected);

        // The same tree packs to the same bytes, hence the same digest.
        let first = Bundle::prepare(root).unwrap();
        let second = Bundle::prepare(root).unwrap();
        assert_eq!(first.format, BundleFormat::TarGz);
        assert_eq!(first.sha256, second.sha256);
        assert_eq!(first.size, out.metadata().unwrap().len());
        assert!(first.digest_string().starts_with("sha256:"));
        assert_eq!(first.digest_string().len(), 7 + 64);
    }

    #[test]
    fn empty_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut out = tempfile::tempfile().unwrap();
        assert!(pack_dir(dir.path(), &mut out).is_err());
    }

    #[test]
    fn archive_files_are_sent_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.tar.zst");
        std::fs::write(&path, b"abc").unwrap();
        let bundle = Bundle::prepare(&path).unwrap();
        assert_eq!(bundle.format, BundleFormat::TarZst);
        assert_eq!(bundle.size, 3);
        assert_eq!(
            bundle.digest_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(Bundle::prepare(&dir.path().join("missing.zip")).is_err());
    }

    #[test]
    fn formats_from_names() {
        #[track_caller]
        fn check(name: &str, expected: Option<BundleFormat>) {
            assert_eq!(format_from_name(Path::new(name)).ok(), expected, "{name}");
        }
        check("dist.tar.gz", Some(BundleFormat::TarGz));
        check("DIST.TGZ", Some(BundleFormat::TarGz));
        check("a/b/dist.tar.zst", Some(BundleFormat::TarZst));
        check("dist.zip", Some(BundleFormat::Zip));
        check("dist.tar", None);
        check("dist.gz", None);
        check("dist", None);
    }

    #[test]
    fn signs_the_raw_digest() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("key.pem");
        std::fs::write(&key_path, OPENSSL_ED25519_KEY).unwrap();
        let sha256 = digest::digest(&digest::SHA256, b"bundle").as_ref().to_vec();
        let signature = sign_digest(&key_path, &sha256).unwrap();
        assert_eq!(signature.len(), 64);

        let der = PrivatePkcs8KeyDer::from_pem_slice(OPENSSL_ED25519_KEY.as_bytes()).unwrap();
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der()).unwrap();
        UnparsedPublicKey::new(&ED25519, key.public_key().as_ref())
            .verify(&sha256, &signature)
            .unwrap();

        std::fs::write(&key_path, "not a key").unwrap();
        assert!(sign_digest(&key_path, &sha256).is_err());
    }

    #[test]
    fn hex_encoding() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
    }
}
