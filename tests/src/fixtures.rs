//! Test data built in memory: app bundles (`.tar.gz`, `.tar.zst`, `.zip`), certificate and key
//! PEM pairs (rcgen), Ed25519 signing keys, and small helpers that drive the control API
//! (chunked uploads, site requests, leased fake edge status records in etcd).

use std::io::Write as _;

use anyhow::{Context, Result};
use statiko_common::crypto;
use statiko_proto::v1::{
    self as pb, App, BundleFormat, CreateSiteRequest, DeployRequest, DeployResponse, TlsConfig,
    TlsType, UploadAppRequest, UploadMetadata, upload_app_request::Data,
};
use tonic::Status;

use crate::client::Api;

/// Size of one upload chunk sent by [`upload`].
const CHUNK: usize = 16 * 1024;

/// A plain (uncompressed) tar of `files` (`(path, content)`).
pub fn tar(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, path, *content)
            .with_context(|| format!("tar entry {path}"))?;
    }
    builder.into_inner().context("finish tar")
}

/// A `.tar.gz` of `files`.
pub fn tar_gz(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&tar(files)?)?;
    encoder.finish().context("finish gzip")
}

/// A `.tar.zst` of `files`.
pub fn tar_zst(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    zstd::encode_all(tar(files)?.as_slice(), 3).context("zstd")
}

/// A `.zip` of `files` (deflated), written with the `zip` crate.
pub fn zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for (path, content) in files {
        writer
            .start_file(*path, options)
            .expect("in-memory zip entry");
        writer.write_all(content).expect("in-memory zip write");
    }
    writer.finish().expect("in-memory zip").into_inner()
}

/// A small site bundle (`index.html` and one asset) as `.tar.gz`; `tag` varies the content
/// (and so the digest).
pub fn site_bundle(tag: &str) -> Vec<u8> {
    let index = site_bundle_index(tag);
    tar_gz(&[
        ("index.html", &index),
        ("assets/app.js", b"console.log('statiko');\n"),
    ])
    .expect("an in-memory tar.gz cannot fail")
}

/// The `index.html` of [`site_bundle`]`(tag)`: what its site serves at `/`.
pub fn site_bundle_index(tag: &str) -> Vec<u8> {
    format!("<!doctype html><title>{tag}</title><h1>{tag}</h1>\n").into_bytes()
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    crypto::format_digest(&crypto::sha256(bytes))
}

/// The raw SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    crypto::sha256(bytes)
}

/// A certificate and key PEM pair.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

/// A self-signed certificate for `names`, valid from 1975 to 4096 (rcgen's defaults).
pub fn cert_pair(names: &[&str]) -> Result<CertPair> {
    let params = rcgen::CertificateParams::new(
        names
            .iter()
            .map(|name| (*name).to_owned())
            .collect::<Vec<_>>(),
    )?;
    self_signed(params)
}

/// A self-signed certificate for `names` that expired in 2001.
pub fn expired_cert_pair(names: &[&str]) -> Result<CertPair> {
    let mut params = rcgen::CertificateParams::new(
        names
            .iter()
            .map(|name| (*name).to_owned())
            .collect::<Vec<_>>(),
    )?;
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    self_signed(params)
}

fn self_signed(params: rcgen::CertificateParams) -> Result<CertPair> {
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// An Ed25519 signing key: (PKCS#8 PEM private key, SPKI PEM public key).
pub fn ed25519_key() -> Result<(String, String)> {
    let (private_pem, public) =
        crypto::generate_ed25519_key().map_err(|err| anyhow::anyhow!("{err}"))?;
    Ok((private_pem, crypto::ed25519_public_key_pem(&public)))
}

/// The Ed25519 signature of `bundle` (over its raw SHA-256) with `private_pem`.
pub fn sign(private_pem: &str, bundle: &[u8]) -> Result<Vec<u8>> {
    crypto::sign_bundle_digest(private_pem, &sha256(bundle)).map_err(|err| anyhow::anyhow!("{err}"))
}

/// What an upload sends: metadata plus the archive bytes.
#[derive(Debug, Clone, Default)]
pub struct Upload {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.version`.
    pub version: String,
    /// `metadata.format`.
    pub format: BundleFormat,
    /// `metadata.signature`.
    pub signature: Vec<u8>,
    /// `metadata.digest`.
    pub digest: String,
    /// The archive.
    pub bytes: Vec<u8>,
}

impl Upload {
    /// An upload of `bytes` as `name@version`, no format, signature or digest declared.
    pub fn new(name: &str, version: &str, bytes: Vec<u8>) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            bytes,
            ..Self::default()
        }
    }

    /// The request stream: metadata first, then chunks of [`CHUNK`] bytes.
    pub fn messages(&self) -> Vec<UploadAppRequest> {
        let mut messages = vec![UploadAppRequest {
            data: Some(Data::Metadata(UploadMetadata {
                name: self.name.clone(),
                version: self.version.clone(),
                format: self.format as i32,
                signature: self.signature.clone(),
                digest: self.digest.clone(),
            })),
        }];
        messages.extend(self.bytes.chunks(CHUNK).map(|chunk| UploadAppRequest {
            data: Some(Data::Chunk(chunk.to_vec())),
        }));
        messages
    }

    /// Streams the upload; the server's status on refusal.
    pub async fn send(&self, api: &Api) -> Result<App, Status> {
        send_messages(api, self.messages()).await
    }
}

/// Streams raw upload messages (for malformed streams) and returns the uploaded app.
pub async fn send_messages(api: &Api, messages: Vec<UploadAppRequest>) -> Result<App, Status> {
    let response = api
        .apps()
        .upload_app(tokio_stream::iter(messages))
        .await?
        .into_inner();
    response
        .app
        .ok_or_else(|| Status::internal("UploadAppResponse without app"))
}

/// Uploads [`site_bundle`]`(name@version)` as `name@version`, panicking on refusal.
pub async fn upload_app(api: &Api, name: &str, version: &str) -> Result<App> {
    let bytes = site_bundle(&format!("{name}@{version}"));
    Upload::new(name, version, bytes)
        .send(api)
        .await
        .with_context(|| format!("upload {name}@{version}"))
}

/// Deploys `name@version` to `domain`; with `wait`, the call returns once every live edge
/// serves it, or fails after `wait_timeout`.
pub async fn deploy(
    api: &Api,
    domain: &str,
    name: &str,
    version: &str,
    wait: bool,
    wait_timeout: std::time::Duration,
) -> Result<DeployResponse> {
    let response = api
        .deployments()
        .deploy(DeployRequest {
            domain: domain.to_owned(),
            app: Some(app_ref(name, version)),
            wait,
            wait_timeout: Some(prost_types::Duration {
                seconds: i64::try_from(wait_timeout.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            }),
            ..DeployRequest::default()
        })
        .await
        .with_context(|| format!("deploy {name}@{version} to {domain}"))?;
    Ok(response.into_inner())
}

/// A `CreateSiteRequest` for `domain` with `aliases`, TLS unset (self-signed).
pub fn site(domain: &str, aliases: &[&str]) -> CreateSiteRequest {
    CreateSiteRequest {
        domain: domain.to_owned(),
        aliases: aliases.iter().map(|alias| (*alias).to_owned()).collect(),
        tls: None,
        skew_protection: None,
    }
}

/// A `TlsConfig` for an imported certificate.
pub fn tls_imported(name: &str) -> TlsConfig {
    TlsConfig {
        r#type: TlsType::Imported as i32,
        certificate: name.to_owned(),
    }
}

/// A `TlsConfig` of `kind` with no certificate.
pub fn tls(kind: TlsType) -> TlsConfig {
    TlsConfig {
        r#type: kind as i32,
        certificate: String::new(),
    }
}

/// `pb::AppRef`.
pub fn app_ref(name: &str, version: &str) -> pb::AppRef {
    pb::AppRef {
        name: name.to_owned(),
        version: version.to_owned(),
    }
}

/// Asserts `result` failed with `code` and a message containing every one of `needles`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: tonic::Code,
    needles: &[&str],
) -> Status {
    let status = match result {
        Ok(value) => panic!("expected {code:?} {needles:?}, got OK: {value:?}"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        code,
        "expected {code:?} {needles:?}, got {:?}: {}",
        status.code(),
        status.message()
    );
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "{code:?} message {:?} does not mention {needle:?}",
            status.message()
        );
    }
    status
}

/// Writes a leased fake edge status record `{root}/status/v1/nodes/<name>` (JSON per
/// `NodeStatusRecord`) and returns the lease id (revoke it to make the node disappear).
pub async fn put_node_status(
    client: &mut etcd_client::Client,
    key_prefix: &str,
    status: &serde_json::Value,
    lease: Option<i64>,
) -> Result<i64> {
    let name = status["name"]
        .as_str()
        .context("the node status needs a name")?;
    let lease = match lease {
        Some(lease) => lease,
        None => client.lease_grant(60, None).await?.id(),
    };
    let key = statiko_common::keys::KeySchema::new(key_prefix).node(name);
    client
        .put(
            key,
            serde_json::to_vec(status)?,
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await?;
    Ok(lease)
}
