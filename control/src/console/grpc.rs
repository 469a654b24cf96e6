//! The console's only way to the state: the generated tonic clients over an in-process tower
//! stack that is the gRPC listener's minus the network. The same metrics layer, the same auth
//! layer (token, role, deployer scope) and the same service implementations
//! ([`crate::server::api_routes`]) see every console call, with the session's token in the
//! `authorization` metadata, so no rule is written twice and a token can do in the console
//! exactly what it can do over gRPC.

use statiko_proto::v1 as pb;
use tonic::metadata::MetadataValue;
use tonic::service::Routes;
use tower::Layer as _;

use crate::api::Api;
use crate::auth::{Auth, AuthLayer};
use crate::metrics::{Metered, MetricsLayer};

/// The service stack the clients call: metrics, then auth, then the routes.
pub(crate) type Stack = Metered<Auth<Routes>>;

/// Builds clients that call the API in-process as a given token.
#[derive(Debug, Clone)]
pub(crate) struct InProcess {
    stack: Stack,
}

impl InProcess {
    pub(crate) fn new(api: &Api, auth: AuthLayer, metrics: MetricsLayer) -> Self {
        let routes = crate::server::api_routes(api).prepare();
        Self {
            stack: metrics.layer(auth.layer(routes)),
        }
    }

    /// The clients, each request carrying `token` as its bearer token.
    pub(crate) fn as_token<'a>(&self, token: &'a str) -> Calls<'a> {
        Calls {
            stack: self.stack.clone(),
            token,
        }
    }
}

/// The `statiko.v1` clients for one token.
#[derive(Debug, Clone)]
pub(crate) struct Calls<'a> {
    stack: Stack,
    token: &'a str,
}

impl Calls<'_> {
    /// `message` as a request with the token in its metadata, like any gRPC client sends it.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        // A token that is not a valid header value cannot be valid either: sent without one,
        // the call is refused as unauthenticated by the auth layer, like a missing header.
        if let Ok(mut value) = MetadataValue::try_from(format!("Bearer {}", self.token)) {
            value.set_sensitive(true);
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    pub(crate) fn sites(&self) -> pb::site_service_client::SiteServiceClient<Stack> {
        pb::site_service_client::SiteServiceClient::new(self.stack.clone())
    }

    pub(crate) fn deployments(
        &self,
    ) -> pb::deployment_service_client::DeploymentServiceClient<Stack> {
        pb::deployment_service_client::DeploymentServiceClient::new(self.stack.clone())
    }

    pub(crate) fn certificates(
        &self,
    ) -> pb::certificate_service_client::CertificateServiceClient<Stack> {
        pb::certificate_service_client::CertificateServiceClient::new(self.stack.clone())
    }

    pub(crate) fn apps(&self) -> pb::app_service_client::AppServiceClient<Stack> {
        pb::app_service_client::AppServiceClient::new(self.stack.clone())
    }

    pub(crate) fn cluster(&self) -> pb::cluster_service_client::ClusterServiceClient<Stack> {
        pb::cluster_service_client::ClusterServiceClient::new(self.stack.clone())
    }

    pub(crate) fn tokens(&self) -> pb::token_service_client::TokenServiceClient<Stack> {
        pb::token_service_client::TokenServiceClient::new(self.stack.clone())
    }
}
