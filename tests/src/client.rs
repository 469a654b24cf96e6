//! gRPC clients for the control plane: a TLS (or plain) tonic [`Channel`], a
//! [`BearerToken`] interceptor, and [`Api`], which hands out every `statiko.v1` client.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use statiko_proto::v1::app_service_client::AppServiceClient;
use statiko_proto::v1::certificate_service_client::CertificateServiceClient;
use statiko_proto::v1::cluster_service_client::ClusterServiceClient;
use statiko_proto::v1::deployment_service_client::DeploymentServiceClient;
use statiko_proto::v1::site_service_client::SiteServiceClient;
use statiko_proto::v1::state_service_client::StateServiceClient;
use statiko_proto::v1::token_service_client::TokenServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// Largest message the test clients send or accept (bundles, state exports).
const MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// A channel whose requests carry `authorization: Bearer <token>`.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer <token>` to every request; [`BearerToken::none`] adds nothing.
#[derive(Debug, Clone)]
pub struct BearerToken {
    header: Option<MetadataValue<Ascii>>,
}

impl BearerToken {
    /// An interceptor sending `token`.
    pub fn new(token: &str) -> Result<Self> {
        let header = format!("Bearer {token}")
            .parse()
            .context("the token is not a valid header value")?;
        Ok(Self {
            header: Some(header),
        })
    }

    /// An interceptor sending no `authorization` header (for unauthenticated calls).
    pub fn none() -> Self {
        Self { header: None }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// Connects to `endpoint` (`https://127.0.0.1:PORT`) trusting only the PEM certificate at
/// `ca_pem_path`, verified as `localhost` (the control's self-signed certificate covers
/// `localhost` and `127.0.0.1`).
pub async fn channel(endpoint: &str, ca_pem_path: &Path) -> Result<Channel> {
    let ca_pem = std::fs::read(ca_pem_path)
        .with_context(|| format!("read CA certificate {}", ca_pem_path.display()))?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    endpoint_for(endpoint)?
        .tls_config(tls)
        .context("configure TLS")?
        .connect()
        .await
        .with_context(|| format!("connect to {endpoint}"))
}

/// Connects to a plaintext `endpoint` (`http://127.0.0.1:PORT`), for `control.tls.enabled: false`.
pub async fn plain_channel(endpoint: &str) -> Result<Channel> {
    endpoint_for(endpoint)?
        .connect()
        .await
        .with_context(|| format!("connect to {endpoint}"))
}

fn endpoint_for(endpoint: &str) -> Result<Endpoint> {
    Ok(Channel::from_shared(endpoint.to_owned())
        .with_context(|| format!("invalid endpoint {endpoint:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60)))
}

/// One connection to the control plane plus a token: every `statiko.v1` client.
///
/// Clients are cheap to create; each call returns a fresh one sharing the channel.
#[derive(Debug, Clone)]
pub struct Api {
    channel: Channel,
    token: BearerToken,
}

impl Api {
    /// Clients on `channel` that send `token`.
    pub fn new(channel: Channel, token: &str) -> Result<Self> {
        Ok(Self {
            channel,
            token: BearerToken::new(token)?,
        })
    }

    /// Clients on `channel` that send no token.
    pub fn anonymous(channel: Channel) -> Self {
        Self {
            channel,
            token: BearerToken::none(),
        }
    }

    /// The same channel with another token.
    pub fn with_token(&self, token: &str) -> Result<Self> {
        Self::new(self.channel.clone(), token)
    }

    /// The underlying channel, e.g. for a health or reflection client.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The channel wrapped with the token interceptor, for any other generated client.
    pub fn auth_channel(&self) -> AuthChannel {
        InterceptedService::new(self.channel.clone(), self.token.clone())
    }

    /// `statiko.v1.SiteService`.
    pub fn sites(&self) -> SiteServiceClient<AuthChannel> {
        SiteServiceClient::new(self.auth_channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// `statiko.v1.DeploymentService`.
    pub fn deployments(&self) -> DeploymentServiceClient<AuthChannel> {
        DeploymentServiceClient::new(self.auth_channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// `statiko.v1.AppService`.
    pub fn apps(&self) -> AppServiceClient<AuthChannel> {
        AppServiceClient::new(self.auth_channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// `statiko.v1.CertificateService`.
    pub fn certificates(&self) -> CertificateServiceClient<AuthChannel> {
        CertificateServiceClient::new(self.auth_channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// `statiko.v1.ClusterService`.
    pub fn cluster(&self) -> ClusterServiceClient<AuthChannel> {
        ClusterServiceClient::new(self.auth_channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// `statiko.v1.StateService`.
    pub fn state(&self) -> StateServiceClient<AuthChannel> {
        StateServiceClient::new(self.auth_channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// `statiko.v1.TokenService`.
    pub fn tokens(&self) -> TokenServiceClient<AuthChannel> {
        TokenServiceClient::new(self.auth_channel())
    }
}
