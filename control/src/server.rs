//! The tonic server: over our own incoming stream (`listen`: limits, TLS, idle closing), the
//! connection-tracking, metrics/tracing and authentication layers, every `statiko.v1`
//! service, gRPC health and server reflection (v1 and v1alpha, so grpcurl works).

use std::time::Duration;

use anyhow::Context as _;
use statiko_common::config::ControlLimitsConfig;
use statiko_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;

use crate::api::Api;
use crate::auth::AuthLayer;
use crate::listen::ConnTrackLayer;
use crate::metrics::MetricsLayer;
use crate::tls::Identity;

/// Every `statiko.v1` service on `api`: what the gRPC listener serves, and what the web console
/// calls in-process (`console::grpc`), so both reach the same handlers.
pub(crate) fn api_routes(api: &Api) -> Routes {
    Routes::new(pb::site_service_server::SiteServiceServer::new(api.clone()))
        .add_service(pb::app_service_server::AppServiceServer::new(api.clone()))
        .add_service(pb::deployment_service_server::DeploymentServiceServer::new(
            api.clone(),
        ))
        .add_service(pb::certificate_service_server::CertificateServiceServer::new(api.clone()))
        .add_service(pb::cluster_service_server::ClusterServiceServer::new(
            api.clone(),
        ))
        .add_service(pb::token_service_server::TokenServiceServer::new(
            api.clone(),
        ))
        .add_service(pb::state_service_server::StateServiceServer::new(
            api.clone(),
        ))
}

/// Serves the API on `listener` until `shutdown` is cancelled.
pub(crate) async fn serve(
    api: Api,
    auth: AuthLayer,
    metrics: MetricsLayer,
    identity: Option<Identity>,
    limits: &ControlLimitsConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::site_service_server::SiteServiceServer<Api>>()
        .await;
    health
        .set_serving::<pb::app_service_server::AppServiceServer<Api>>()
        .await;
    health
        .set_serving::<pb::deployment_service_server::DeploymentServiceServer<Api>>()
        .await;
    health
        .set_serving::<pb::certificate_service_server::CertificateServiceServer<Api>>()
        .await;
    health
        .set_serving::<pb::cluster_service_server::ClusterServiceServer<Api>>()
        .await;
    health
        .set_serving::<pb::state_service_server::StateServiceServer<Api>>()
        .await;
    health
        .set_serving::<pb::token_service_server::TokenServiceServer<Api>>()
        .await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(statiko_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().context("build reflection v1")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("build reflection v1alpha")?;

    let tls = identity
        .map(|identity| identity.server_config())
        .transpose()?
        .map(tokio_rustls::TlsAcceptor::from);
    let local = listener.local_addr().context("listener address")?;
    let incoming = crate::listen::incoming(listener, tls, limits, shutdown.clone());
    tracing::info!(listen = %local, "control plane serving");
    Server::builder()
        // PINGs move bytes, so a long call (a deploy waiting for edges) never looks idle.
        .http2_keepalive_interval(Some(Duration::from_secs(30).min(limits.idle_timeout / 2)))
        .layer(ConnTrackLayer)
        .layer(metrics)
        .layer(auth)
        .add_routes(api_routes(&api))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
        .context("serve gRPC")?;
    tracing::info!("control plane stopped");
    Ok(())
}
