//! Wires the edge together: store sync, reconciler, node status, admin listener and the HTTP and
//! HTTPS servers, with the shutdown order of STYLE.md (stop accepting, drain, revoke the lease).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use statiko_common::config::NodeConfig;
use statiko_common::keys::KeySchema;
use statiko_common::notify::Notifier;
use statiko_common::process::InvalidConfig;
use statiko_common::repo::BundleRepo;
use statiko_common::store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::certs::CertJobs;
use crate::desired::Desired;
use crate::leader::{Election, Leadership};
use crate::metrics::EdgeMetrics;
use crate::reconcile::{Applied, Reconciler};
use crate::serve::tls::{CertResolver, server_config};
use crate::serve::{Handler, ServerOptions, http3, serve_http, serve_http3, serve_https};
use crate::stage::Stager;
use crate::status::{AdminState, NodeInfo, Publisher, serve_admin};
use crate::sync::Syncer;
use crate::table::{RoutingTable, SharedTable};

/// The edge's pre-bound listeners.
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    pub https: TcpListener,
    pub admin: TcpListener,
    /// The UDP twin of `https` for HTTP/3 (`edge.http3`); `None` serves no HTTP/3.
    pub h3: Option<std::net::UdpSocket>,
}

/// Least time between two saves of the applied state (a save writes the whole state).
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Saves each applied state to `edge.dataDir` (the newest when several came meanwhile), and
/// the last one once more at shutdown if it was not saved yet.
async fn save_applied(
    mut states: watch::Receiver<Option<Arc<Desired>>>,
    data_dir: PathBuf,
    shutdown: CancellationToken,
) {
    let save = |desired: Arc<Desired>| {
        let dir = data_dir.clone();
        async move {
            let saved = tokio::task::spawn_blocking(move || desired.save(&dir)).await;
            if let Ok(Err(err)) | Err(err) = saved.map_err(std::io::Error::other) {
                tracing::warn!(error = %err, "could not persist the applied state");
            }
        }
    };
    let mut saved: Option<Arc<Desired>> = None;
    loop {
        let stop = tokio::select! {
            () = shutdown.cancelled() => true,
            changed = states.changed() => changed.is_err(),
        };
        let newest = states.borrow_and_update().clone();
        if let Some(desired) = newest
            && !saved.as_ref().is_some_and(|s| Arc::ptr_eq(s, &desired))
        {
            save(desired.clone()).await;
            saved = Some(desired);
        }
        if stop {
            return;
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(SAVE_INTERVAL) => {}
        }
    }
}

/// Runs the edge until `shutdown` is cancelled.
pub async fn run(
    config: NodeConfig,
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
    let secrets = config.secret_box();
    let secrets_check = config.secret_box();
    let notifier = Notifier::new(&config.notifications.webhook, &config.node_name);
    let stager = Stager::new(
        &data_dir,
        repo,
        config.limits.clone(),
        config.codesign_key(),
        config.codesign.required,
    );
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
    let certs = Arc::new(CertResolver::new().context("make the default certificate")?);
    let jobs = Arc::new(CertJobs::new(
        store.clone(),
        keys.clone(),
        config.secret_box(),
        config.acme.clone(),
        data_dir.clone(),
        config.node_name.clone(),
        notifier.clone(),
    ));
    let metrics = Arc::new(EdgeMetrics::default());
    let mut reconciler = Reconciler::new(stager, table.clone(), certs.clone(), secrets)
        .with_notifier(notifier)
        .with_retention(
            config.edge.retain_deployments,
            config.edge.bundle_disk_budget,
            Some(&data_dir),
        )
        .with_metrics(metrics.clone());

    let info = NodeInfo {
        name: config.node_name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        disallow_leadership: config.disallow_leadership,
    };
    let (applied_tx, applied_rx) = watch::channel::<Option<Applied>>(None);
    let (connected_tx, connected_rx) = watch::channel(false);

    // Serve what this edge had before it stopped, before the store is even asked: nothing
    // from here to the listeners waits on the store.
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
        if let Some(applied) = reconciler.settle(desired).await {
            let _ = applied_tx.send(Some(applied));
        }
    }
    let (desired_tx, mut desired_rx) = watch::channel(initial);
    desired_rx.mark_unchanged();
    let (leading_tx, leading_rx) = watch::channel(false);

    // The listeners stop on shutdown, or when the start-up key check below fails.
    let serving = shutdown.child_token();
    let https_port = listeners
        .https
        .local_addr()
        .context("https listener address")?
        .port();
    let handler = Handler::new(table)
        .with_https_port(https_port)
        .with_http_redirect(config.edge.redirect_http)
        .with_metrics(metrics.clone())
        .with_access_log(config.log.access_log);
    let (handler, options) = crate::serve::accept::options_from_config(&config, handler, &metrics);
    let servers = TaskTracker::new();
    servers.spawn(serve_admin(
        listeners.admin,
        AdminState {
            info: info.clone(),
            applied: applied_rx.clone(),
            store_connected: connected_rx,
            leader: leading_rx.clone(),
            desired: desired_tx.subscribe(),
            metrics: metrics.clone(),
        },
        serving.clone(),
    ));
    servers.spawn(serve_http(
        listeners.http,
        handler.clone(),
        ServerOptions {
            stats: metrics.http.clone(),
            ..options.clone()
        },
        serving.clone(),
    ));
    let mut alt_svc = None;
    if let Some(socket) = listeners.h3 {
        let port = socket.local_addr().context("http3 socket address")?.port();
        let h3_options = ServerOptions {
            stats: metrics.h3.clone(),
            ..options.clone()
        };
        let endpoint = http3::endpoint(socket, certs.clone(), &h3_options)
            .context("edge.http3: open the QUIC endpoint")?;
        servers.spawn(serve_http3(
            endpoint,
            handler.clone(),
            h3_options,
            serving.clone(),
        ));
        alt_svc = Some(http3::alt_svc(port));
    }
    let tls = server_config(certs).context("build the TLS configuration")?;
    servers.spawn(serve_https(
        listeners.https,
        tls,
        handler,
        ServerOptions {
            stats: metrics.https.clone(),
            alt_svc,
            ..options
        },
        serving.clone(),
    ));
    servers.close();

    // Follow the store and apply what it says; neither seals anything, so they need not wait
    // for the key check.
    let tasks = TaskTracker::new();
    let background = CancellationToken::new();
    let desired_for_jobs = desired_tx.subscribe();
    tasks.spawn(
        Syncer::new(store.clone(), keys.clone(), desired_tx, connected_tx).run(background.clone()),
    );
    // What was applied is saved in the background, at most once per SAVE_INTERVAL, off the
    // path that reports the revision applied.
    let (save_tx, save_rx) = watch::channel::<Option<Arc<Desired>>>(None);
    tasks.spawn(save_applied(save_rx, data_dir.clone(), background.clone()));
    {
        let background = background.clone();
        let metrics = metrics.clone();
        tasks.spawn(async move {
            loop {
                // A change, or a retry of what failed to stage (the same state applied again).
                let retry = reconciler.next_retry();
                tokio::select! {
                    () = background.cancelled() => return,
                    changed = desired_rx.changed() => if changed.is_err() { return },
                    () = async {
                        match retry {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => {}
                }
                let desired = desired_rx.borrow_and_update().clone();
                let started = std::time::Instant::now();
                let applied = reconciler
                    .apply(&desired)
                    .instrument(tracing::info_span!("apply", revision = desired.revision))
                    .await;
                metrics.applied(started.elapsed(), statiko_common::model::now_ms());
                tracing::info!(
                    revision = applied.revision,
                    sites = applied.sites.len(),
                    "applied desired state"
                );
                let _ = applied_tx.send(Some(applied));
                // After the swap and the report: nothing served waits on this bookkeeping.
                if let Some(applied) = reconciler.settle(&desired).await {
                    let _ = applied_tx.send(Some(applied));
                }
                let _ = save_tx.send(Some(desired));
            }
        });
    }

    // The key check asks the store, so it runs while the edge already serves. A wrong or
    // missing key stops the edge (exit 64) before it registers, leads or seals anything.
    let checked = tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        checked = statiko_common::secrets_check::verify_at_start(&store, &keys, secrets_check.as_ref()) => checked,
    };
    if let Err(err) = checked {
        tracing::error!(error = %err, "stopping: the secrets key check failed");
        serving.cancel();
        servers.wait().await;
        background.cancel();
        tasks.close();
        tasks.wait().await;
        return Err(InvalidConfig(err.to_string()).into());
    }
    let publisher_token = CancellationToken::new();
    let mut publisher = None;
    if !shutdown.is_cancelled() {
        let election = match &store {
            Store::File(_) => None,
            Store::Etcd(_) => Some(Election {
                store: store.clone(),
                keys: keys.clone(),
                node: config.node_name.clone(),
                ttl: config.edge.lease_ttl,
                disallow_leadership: config.disallow_leadership,
            }),
        };
        let cutover = crate::cutover::Cutover {
            store: store.clone(),
            keys: keys.clone(),
            stage_timeout: config.deploy.stage_timeout,
        };
        spawn_leadership(
            &tasks,
            election,
            keys.clone(),
            (jobs, cutover),
            desired_for_jobs,
            leading_tx,
            &background,
        );
        publisher = Some(tokio::spawn(
            Publisher {
                store,
                keys,
                info,
                ttl: config.edge.lease_ttl,
                applied: applied_rx,
                leader: leading_rx,
            }
            .run(publisher_token.clone()),
        ));
    }

    serving.cancelled().await;
    tracing::info!("shutting down: draining connections");
    servers.wait().await;
    background.cancel();
    tasks.close();
    tasks.wait().await;
    publisher_token.cancel();
    if let Some(publisher) = publisher {
        let _ = publisher.await;
    }
    tracing::info!("edge stopped");
    Ok(())
}

/// Leadership: the election (`None` on the file store, where this edge always leads), and the
/// leader-only jobs (certificates, deployment cutovers, expired previews), which run for as long as each term lasts.
fn spawn_leadership(
    tasks: &TaskTracker,
    election: Option<Election>,
    keys: KeySchema,
    (jobs, cutover): (Arc<CertJobs>, crate::cutover::Cutover),
    desired: watch::Receiver<Arc<Desired>>,
    leading_tx: watch::Sender<bool>,
    background: &CancellationToken,
) {
    let (leader_tx, mut leader_rx) = watch::channel::<Option<Leadership>>(None);
    match election {
        None => {
            tasks.spawn(crate::leader::always_leader(
                keys,
                leader_tx,
                background.clone(),
            ));
        }
        Some(election) => {
            tasks.spawn(election.run(leader_tx, background.clone()));
        }
    }
    tasks.spawn(async move {
        loop {
            let lead = leader_rx
                .borrow_and_update()
                .clone()
                .filter(|lead| !lead.token.is_cancelled());
            let _ = leading_tx.send(lead.is_some());
            if let Some(lead) = lead {
                let previews = crate::previews::Collector {
                    store: cutover.store.clone(),
                    keys: cutover.keys.clone(),
                };
                tokio::join!(
                    jobs.clone().run(lead.clone(), desired.clone()),
                    cutover.clone().run(lead.clone(), desired.clone()),
                    previews.run(lead, desired.clone()),
                );
                continue;
            }
            if leader_rx.changed().await.is_err() {
                let _ = leading_tx.send(false);
                return;
            }
        }
    });
}
