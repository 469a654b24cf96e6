//! Statiko control plane: a stateless tonic gRPC service that validates management calls and
//! writes the desired state to the store in transactions.
//!
//! # Layout
//!
//! - `server`: tonic server, TLS, health and reflection.
//! - `listen`: the gRPC listener's accept loop (connection caps, TLS handshake timeout, idle
//!   closing) as tonic's incoming stream.
//! - `auth`: bearer tokens and roles, as a tower layer.
//! - `api`: one file per `statiko.v1` service.
//! - `state`: typed desired-state reads and transactional writes over the store.
//! - `convert`: proto <-> model conversions; proto types stop there.
//! - `error`: `ControlError` and its mapping to gRPC codes.
//! - `metrics`: a span and a count per call; the Prometheus `/metrics` listener.
//! - `tls`: the control plane's own certificate.
//! - `console`: the web console (`control.console`), pages that call the API in-process.

mod api;
mod auth;
mod console;
mod convert;
mod error;
mod import;
mod listen;
pub mod metrics;
mod server;
mod state;
mod tls;

use anyhow::Context as _;
use statiko_common::config::NodeConfig;
use statiko_common::keys::KeySchema;
use statiko_common::process::InvalidConfig;
use statiko_common::repo::BundleRepo;
use statiko_common::store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::api::Api;
pub use crate::auth::AuthLayer;
pub use crate::error::ControlError;

/// The control-specific config checks, also run by `--check-config`.
pub fn check_config(config: &NodeConfig) -> anyhow::Result<()> {
    if config.codesign.required && config.codesign_key().is_none() {
        anyhow::bail!("codesign.required: needs codesign.publicKey");
    }
    if config.auth.tokens.is_empty() {
        tracing::warn!("auth.tokens is empty: every management call will be refused");
    }
    Ok(())
}

/// Runs the control plane on a bound listener until `shutdown` is cancelled.
pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    console: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = Store::open(&config.state)
        .await
        .context("open the state store")?;
    let keys = KeySchema::new(&config.state.etcd.key_prefix);
    let secrets = config.secret_box();
    if let Err(err) =
        statiko_common::secrets_check::verify_at_start(&store, &keys, secrets.as_ref()).await
    {
        // A wrong or missing key stops the process before it serves or seals anything with it.
        return Err(InvalidConfig(err.to_string()).into());
    }
    let repo = BundleRepo::from_config(&config.repo).context("open the bundle repository")?;
    let local = listener.local_addr().context("listener address")?;
    let identity = tls::identity(&config, local)?;
    let tokens = auth::StoredTokens::watch(store.clone(), keys.clone(), shutdown.clone());
    let state = state::StateStore::new(store, keys);
    let auth = AuthLayer::with_stored(&config.auth.tokens, tokens.clone(), Some(state.clone()));
    let api = Api::new(api::Context {
        state,
        auth: auth.clone(),
        tokens,
        repo,
        secrets,
        codesign_key: config.codesign_key(),
        codesign_required: config.codesign.required,
        limits: config.limits.clone(),
        deploy: config.deploy.clone(),
        // Hosts are lowercase without a trailing dot, as every stored domain.
        previews: statiko_common::config::PreviewsConfig {
            domain: config
                .previews
                .domain
                .trim()
                .trim_end_matches('.')
                .to_ascii_lowercase(),
            certificate: config.previews.certificate.clone(),
        },
        upload_dir: config.control.data_dir.join("uploads"),
    });
    let metrics = std::sync::Arc::new(metrics::ControlMetrics::default());
    statiko_common::http_admin::configure(statiko_common::http_admin::AdminLimits {
        idle_timeout: config.control.limits.idle_timeout,
        ..Default::default()
    });
    // Metrics are not worth refusing to serve the API for: a busy port is logged, not fatal.
    if let Some(address) = config.control.metrics {
        match statiko_common::process::bind("control.metrics", address).await {
            Ok(listener) => {
                if let Ok(addr) = listener.local_addr() {
                    tracing::info!(listen = %addr, "metrics serving");
                }
                tokio::spawn(metrics::serve(listener, metrics.clone(), shutdown.clone()));
            }
            Err(err) => tracing::warn!(error = format!("{err:#}"), "metrics listener not started"),
        }
    }
    let metrics = metrics::MetricsLayer::new(metrics);
    if let Some(listener) = console {
        // Validation requires control.tls for the console, so the identity is there.
        let tls = identity
            .as_ref()
            .context("control.console.listen: needs control.tls.enabled")?
            .server_config()?;
        let stack = (api.clone(), auth.clone(), metrics.clone());
        let (console_config, limits, shutdown) = (
            config.control.console.clone(),
            config.control.limits.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let (api, auth, metrics) = stack;
            console::serve(
                listener,
                &tls,
                (&api, auth, metrics),
                &console_config,
                &limits,
                shutdown,
            )
            .await;
        });
    }
    server::serve(
        api,
        auth,
        metrics,
        identity,
        &config.control.limits,
        listener,
        shutdown,
    )
    .await
}
