//! The control plane's own TLS identity: configured PEM files, or a self-signed certificate made
//! at first start and kept in `control.tls.selfSignedDir` so clients can pin it across restarts;
//! and the rustls configuration the gRPC listener serves it with (TLS 1.2 and 1.3, ALPN `h2`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use statiko_common::config::Config;
use statiko_common::crypto;
use statiko_common::private_files;

/// A PEM certificate chain and its PEM private key.
#[derive(Debug)]
pub(crate) struct Identity {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Identity {
    fn from_pem(cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
        }
    }

    /// The listener's rustls configuration: aws-lc-rs, TLS 1.2 and 1.3, ALPN `h2` (gRPC).
    pub(crate) fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .context("control.tls.certificate: invalid PEM")?;
        anyhow::ensure!(
            !chain.is_empty(),
            "control.tls.certificate: no certificate in the PEM"
        );
        let key =
            PrivateKeyDer::from_pem_slice(&self.key).context("control.tls.key: invalid PEM")?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("control.tls: protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("control.tls: bad certificate or key")?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Loads or makes the identity; `None` when `control.tls.enabled` is false.
pub(crate) fn identity(config: &Config, listen: SocketAddr) -> anyhow::Result<Option<Identity>> {
    let tls = &config.control.tls;
    if !tls.enabled {
        return Ok(None);
    }
    if !tls.certificate.is_empty() {
        let cert = std::fs::read(&tls.certificate)
            .with_context(|| format!("control.tls.certificate: read {}", tls.certificate))?;
        let key = std::fs::read(&tls.key)
            .with_context(|| format!("control.tls.key: read {}", tls.key))?;
        return Ok(Some(Identity::from_pem(cert, key)));
    }
    let dir = &tls.self_signed_dir;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert_path.exists() && key_path.exists() {
        // Made 0600 in a 0700 directory; tightened if an earlier version left them wider.
        private_files::tighten(dir, private_files::DIR_MODE)
            .and_then(|()| private_files::tighten(&key_path, private_files::FILE_MODE))
            .with_context(|| format!("restrict the permissions of {}", key_path.display()))?;
        let cert =
            std::fs::read(&cert_path).with_context(|| format!("read {}", cert_path.display()))?;
        let key =
            std::fs::read(&key_path).with_context(|| format!("read {}", key_path.display()))?;
        return Ok(Some(Identity::from_pem(cert, key)));
    }
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !config.node_name.is_empty() {
        names.push(config.node_name.clone());
    }
    if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
        names.push(listen.ip().to_string());
    }
    let (cert, key) =
        crypto::self_signed(&names, 3650).context("make the self-signed control certificate")?;
    private_files::create_dir(dir).with_context(|| format!("create {}", dir.display()))?;
    private_files::create_file(&key_path)
        .and_then(|mut file| file.write_all(key.as_bytes()))
        .with_context(|| format!("write {}", key_path.display()))?;
    std::fs::write(&cert_path, cert.as_bytes())
        .with_context(|| format!("write {}", cert_path.display()))?;
    tracing::info!(certificate = %cert_path.display(), "made a self-signed control certificate");
    Ok(Some(Identity::from_pem(cert, key)))
}
