//! Connection to the control API: plaintext for `http://`, rustls for `https://` (custom CA,
//! webpki roots, or no verification with `--insecure`), and the bearer-token interceptor.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use statiko_common::tls_client::AcceptAnyServerCert;
use statiko_proto::v1::app_service_client::AppServiceClient;
use statiko_proto::v1::certificate_service_client::CertificateServiceClient;
use statiko_proto::v1::cluster_service_client::ClusterServiceClient;
use statiko_proto::v1::deployment_service_client::DeploymentServiceClient;
use statiko_proto::v1::site_service_client::SiteServiceClient;
use statiko_proto::v1::state_service_client::StateServiceClient;
use statiko_proto::v1::token_service_client::TokenServiceClient;

use crate::cli::GlobalArgs;

/// Largest response the CLI accepts (state exports can be big).
const MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// A connected channel plus what every call needs: the token and the unary timeout.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    channel: Channel,
    auth: BearerAuth,
    timeout: Duration,
}

type Authed = InterceptedService<Channel, BearerAuth>;

/// The token from `--token` / `STATIKO_TOKEN`, else read from `--token-file` /
/// `STATIKO_TOKEN_FILE`; the error names the file, never the token.
fn token(args: &GlobalArgs) -> anyhow::Result<Option<String>> {
    match (&args.token, &args.token_file) {
        (Some(token), _) if !token.trim().is_empty() => Ok(Some(token.clone())),
        (_, Some(path)) => {
            // An unreadable token file is a mistake in how stk was called (exit code 64).
            let text = std::fs::read_to_string(path).map_err(|err| {
                crate::usage_error(format!(
                    "cannot read the token file {}: {err}",
                    path.display()
                ))
            })?;
            Ok(Some(text.trim_end().to_owned()))
        }
        (token, None) => Ok(token.clone()),
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub(crate) struct BearerAuth {
    header: Option<AsciiMetadataValue>,
}

impl Api {
    /// Connects to the endpoint in `args`; fails with a message naming the endpoint.
    pub(crate) async fn connect(args: &GlobalArgs) -> anyhow::Result<Self> {
        let auth = BearerAuth::new(token(args)?.as_deref())?;
        let channel = connect_channel(args)
            .await
            .with_context(|| format!("cannot connect to {}", args.endpoint))?;
        Ok(Self {
            channel,
            auth,
            timeout: args.timeout,
        })
    }

    pub(crate) fn sites(&self) -> SiteServiceClient<Authed> {
        SiteServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub(crate) fn apps(&self) -> AppServiceClient<Authed> {
        AppServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub(crate) fn deployments(&self) -> DeploymentServiceClient<Authed> {
        DeploymentServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub(crate) fn certificates(&self) -> CertificateServiceClient<Authed> {
        CertificateServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub(crate) fn cluster(&self) -> ClusterServiceClient<Authed> {
        ClusterServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub(crate) fn tokens(&self) -> TokenServiceClient<Authed> {
        TokenServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub(crate) fn state(&self) -> StateServiceClient<Authed> {
        StateServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// Wraps a unary request message with the call timeout (sent as `grpc-timeout`).
    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        self.request_with_timeout(message, self.timeout)
    }

    /// Like [`Api::request`] with an explicit timeout (e.g. a deploy that waits).
    pub(crate) fn request_with_timeout<T>(&self, message: T, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        request
    }

    /// The unary call timeout from `--timeout`.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs a unary call, also enforcing the timeout on the client side so that an unresponsive
    /// server cannot hang the CLI.
    pub(crate) async fn unary<T>(
        &self,
        timeout: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_elapsed) => Err(Status::deadline_exceeded(format!(
                "no response within {}",
                humantime::format_duration(timeout)
            ))),
        }
    }
}

impl BearerAuth {
    fn new(token: Option<&str>) -> anyhow::Result<Self> {
        let header = match token.map(str::trim).filter(|t| !t.is_empty()) {
            Some(token) => {
                let mut value: AsciiMetadataValue =
                    MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                        anyhow!("the token contains characters not allowed in a header")
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Self { header })
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

impl fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token.
        f.debug_struct("BearerAuth")
            .field("token", &self.header.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Host and port to dial, from the endpoint URI.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
}

async fn connect_channel(args: &GlobalArgs) -> anyhow::Result<Channel> {
    let uri: Uri = args
        .endpoint
        .parse()
        .with_context(|| format!("invalid endpoint {:?}", args.endpoint))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => bail!("the endpoint must start with http:// or https://"),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .context("the endpoint has no host")?;
    // IPv6 literals come bracketed from the URI; dialing and SNI want them bare.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let target = Target { host, port };

    // The channel's own URI is always http://, so that tonic does not look for its own TLS
    // layer: our connector does TLS itself. The origin keeps the real scheme for :scheme.
    let authority = uri
        .authority()
        .context("the endpoint has no host")?
        .as_str();
    let inner: Uri = format!("http://{authority}")
        .parse()
        .context("invalid endpoint")?;
    let endpoint = Endpoint::from(inner)
        .origin(uri.clone())
        .connect_timeout(args.timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("stk/", env!("CARGO_PKG_VERSION")))
        .context("invalid user agent")?;

    if !tls {
        let connector = tower::service_fn(move |_: Uri| {
            let target = target.clone();
            async move {
                let stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        return Ok(endpoint.connect_with_connector(connector).await?);
    }

    let config = Arc::new(client_config(args.ca.as_deref(), args.insecure)?);
    let server_name = ServerName::try_from(target.host.clone())
        .with_context(|| format!("invalid server name {:?}", target.host))?;
    let connector = tower::service_fn(move |_: Uri| {
        let target = target.clone();
        let tls = TlsConnector::from(Arc::clone(&config));
        let server_name = server_name.clone();
        async move {
            let stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
            stream.set_nodelay(true)?;
            let stream = tls.connect(server_name, stream).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector(connector).await?)
}

/// rustls client config: ALPN h2; roots from `ca` or webpki-roots; no verification if `insecure`.
fn client_config(ca: Option<&Path>, insecure: bool) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS setup")?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert::new(&provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match ca {
            Some(path) => {
                let mut count = 0;
                for cert in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("cannot read CA file {}", path.display()))?
                {
                    let cert =
                        cert.with_context(|| format!("cannot parse CA file {}", path.display()))?;
                    roots
                        .add(cert)
                        .with_context(|| format!("bad certificate in {}", path.display()))?;
                    count += 1;
                }
                if count == 0 {
                    bail!("no PEM certificate found in CA file {}", path.display());
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header() {
        let mut auth = BearerAuth::new(Some("s3cret")).unwrap();
        let request = auth.call(Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );
        assert!(!format!("{auth:?}").contains("s3cret"));

        let mut none = BearerAuth::new(None).unwrap();
        let request = none.call(Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
        assert!(BearerAuth::new(Some("bad\ntoken")).is_err());
    }

    #[test]
    fn tls_configs() {
        let config = client_config(None, true).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        client_config(None, false).unwrap();
        assert!(client_config(Some(Path::new("/nonexistent/ca.pem")), false).is_err());
    }
}
