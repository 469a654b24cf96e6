//! A throwaway PKI for tests: a CA plus server and client certificates (rcgen, aws-lc-rs),
//! written as PEM files into a temp dir that lives as long as the [`Pki`].

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

/// A certificate and its private key, as PEM text and as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (leaf only) as PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key as PEM.
    pub key_pem: String,
    /// Where `cert_pem` is written.
    pub cert_path: PathBuf,
    /// Where `key_pem` is written.
    pub key_path: PathBuf,
}

/// A test CA with a server certificate for `localhost` + `127.0.0.1` and a client certificate,
/// all written as PEM files into the PKI's own temp dir.
pub struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_pem: String,
    ca_path: PathBuf,
    server: CertFiles,
    client: CertFiles,
}

/// What a certificate issued by [`Pki::issue`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertUsage {
    /// TLS server (also valid as a client: etcd dials itself with its server certificate).
    Server,
    /// TLS client authentication only.
    Client,
}

impl Pki {
    /// Creates the CA, `server.pem`/`server.key` (SANs `localhost`, `127.0.0.1`) and
    /// `client.pem`/`client.key` (CN `statiko-test-client`).
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("statiko-pki-")
            .tempdir()
            .context("create PKI temp dir")?;

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        ca_params.distinguished_name = common_name("Statiko Test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().context("generate CA key")?;
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("self-sign test CA")?;
        let ca_pem = ca.pem();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &ca_pem).context("write ca.pem")?;

        let server = issue(
            dir.path(),
            &ca,
            "server",
            &["localhost", "127.0.0.1"],
            CertUsage::Server,
        )?;
        let client = issue(dir.path(), &ca, "client", &[], CertUsage::Client)?;
        Ok(Self {
            dir,
            ca,
            ca_pem,
            ca_path,
            server,
            client,
        })
    }

    /// Issues a certificate signed by the CA and writes `<name>.pem` and `<name>.key`.
    ///
    /// `names` are DNS names or IP addresses; the first one (or `name`) is also the CN.
    pub fn issue(&self, name: &str, names: &[&str], usage: CertUsage) -> Result<CertFiles> {
        issue(self.dir.path(), &self.ca, name, names, usage)
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate file (`ca.pem`).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self) -> &CertFiles {
        &self.server
    }

    /// The client certificate (client-auth only).
    pub fn client(&self) -> &CertFiles {
        &self.client
    }

    /// The directory holding every PEM file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl fmt::Debug for Pki {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Pki")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut distinguished_name = DistinguishedName::new();
    distinguished_name.push(DnType::CommonName, name);
    distinguished_name
}

fn issue(
    dir: &Path,
    ca: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    names: &[&str],
    usage: CertUsage,
) -> Result<CertFiles> {
    let sans: Vec<String> = names.iter().map(|san| (*san).to_owned()).collect();
    let mut params =
        CertificateParams::new(sans).with_context(|| format!("certificate params for {name}"))?;
    let common = match (usage, names.first()) {
        (CertUsage::Server, Some(first)) => (*first).to_owned(),
        (CertUsage::Client, _) => format!("statiko-test-{name}"),
        (CertUsage::Server, None) => name.to_owned(),
    };
    params.distinguished_name = common_name(&common);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match usage {
        CertUsage::Server => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        CertUsage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    let key = KeyPair::generate().with_context(|| format!("generate key for {name}"))?;
    let cert = params
        .signed_by(&key, ca)
        .with_context(|| format!("sign certificate for {name}"))?;
    let files = CertFiles {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_path: dir.join(format!("{name}.pem")),
        key_path: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.cert_path, &files.cert_pem)
        .with_context(|| format!("write {}", files.cert_path.display()))?;
    std::fs::write(&files.key_path, &files.key_pem)
        .with_context(|| format!("write {}", files.key_path.display()))?;
    Ok(files)
}
