//! Wires the edge together: store sync, reconciler, node status, admin listener and the HTTP and
//! HTTPS servers, with the shutdown order of STYLE.md (stop accepting, drain, revoke the lease).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use statiko_common::config::Config;
use statiko_common::crypto::{self, SecretBox};
use statiko_common::keys::KeySchema;
use statiko_common::repo::BundleRepo;
use statiko_common::store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::desired::Desired;
use crate::reconcile::{Applied, Reconciler};
use crate::serve::tls::{CertResolver, server_config};
use crate::serve::{Handler, ServerOptions, serve_http, serve_https};
use crate::stage::Stager;
use crate::status::{AdminState, NodeInfo, Publisher, serve_admin};
use crate::sync::Syncer;
use crate::table::{RoutingTable, SharedTable};

/// The edge's three pre-bound listeners.
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    pub https: TcpListener,
    pub admin: TcpListener,
}

/// Runs the edge until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let data_dir: PathBuf = config.edge.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("edge.dataDir: create {}", data_dir.display()))?;
    let store = Store::open(&config.state)
        .await
        .context("open the state store")?;
    let keys = KeySchema::new(&config.state.etcd.key_prefix);
    let repo = BundleRepo::from_config(&config.repo).context("open the bundle repository")?;
    let secrets = config.secrets_key().map(SecretBox::new);
    let codesign_key = if config.codesign.public_key.is_empty() {
        None
    } else {
        Some(
            crypto::parse_ed25519_public_key(&config.codesign.public_key)
                .context("codesign.publicKey")?,
        )
    };
    let stager = Stager::new(
        &data_dir,
        repo,
        config.limits.clone(),
        codesign_key,
        config.codesign.required,
    );
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
    let certs = Arc::new(CertResolver::new().context("make the default certificate")?);
    let mut reconciler = Reconciler::new(stager, table.clone(), certs.clone(), secrets);

    let info = NodeInfo {
        name: config.node_name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        disallow_leadership: config.disallow_leadership,
    };
    let (applied_tx, applied_rx) = watch::channel::<Option<Applied>>(None);
    let (connected_tx, connected_rx) = watch::channel(false);

    // Serve what this edge had before it stopped, before the store is even asked.
    let persisted = match Desired::load(&data_dir) {
        Ok(persisted) => persisted,
        Err(err) => {
            tracing::warn!(error = %err, "ignoring the persisted state");
            None
        }
    };
    let initial = Arc::new(persisted.clone().unwrap_or_default());
    if let Some(desired) = &persisted {
        let applied = reconciler.apply(desired).await;
        tracing::info!(
            revision = applied.revision,
            sites = desired.sites.len(),
            "serving the persisted state"
        );
        let _ = applied_tx.send(Some(applied));
    }
    let (desired_tx, mut desired_rx) = watch::channel(initial);
    desired_rx.mark_unchanged();

    let tasks = TaskTracker::new();
    let background = CancellationToken::new();
    tasks.spawn(
        Syncer::new(store.clone(), keys.clone(), desired_tx, connected_tx).run(background.clone()),
    );
    {
        let background = background.clone();
        let data_dir = data_dir.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = background.cancelled() => return,
                    changed = desired_rx.changed() => if changed.is_err() { return },
                }
                let desired = desired_rx.borrow_and_update().clone();
                let applied = reconciler.apply(&desired).await;
                tracing::info!(
                    revision = applied.revision,
                    sites = applied.sites.len(),
                    "applied desired state"
                );
                let dir = data_dir.clone();
                let saved = tokio::task::spawn_blocking(move || desired.save(&dir)).await;
                if let Ok(Err(err)) | Err(err) = saved.map_err(std::io::Error::other) {
                    tracing::warn!(error = %err, "could not persist the applied state");
                }
                let _ = applied_tx.send(Some(applied));
            }
        });
    }
    let publisher_token = CancellationToken::new();
    let publisher = tokio::spawn(
        Publisher {
            store,
            keys,
            info: info.clone(),
            ttl: Duration::from_secs(config.edge.lease_ttl),
            applied: applied_rx.clone(),
        }
        .run(publisher_token.clone()),
    );

    let https_port = listeners
        .https
        .local_addr()
        .context("https listener address")?
        .port();
    let handler = Handler::new(table).with_https_port(https_port);
    let options = ServerOptions::default();
    let servers = TaskTracker::new();
    servers.spawn(serve_admin(
        listeners.admin,
        AdminState {
            info,
            applied: applied_rx,
            store_connected: connected_rx,
        },
        shutdown.clone(),
    ));
    servers.spawn(serve_http(
        listeners.http,
        handler.clone(),
        options.clone(),
        shutdown.clone(),
    ));
    let tls = server_config(certs).context("build the TLS configuration")?;
    servers.spawn(serve_https(
        listeners.https,
        tls,
        handler,
        options,
        shutdown.clone(),
    ));
    servers.close();

    shutdown.cancelled().await;
    tracing::info!("shutting down: draining connections");
    servers.wait().await;
    background.cancel();
    tasks.close();
    tasks.wait().await;
    publisher_token.cancel();
    let _ = publisher.await;
    tracing::info!("edge stopped");
    Ok(())
}
