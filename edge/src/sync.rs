//! Follows the store: a snapshot at revision R, then a watch from R + 1, resumed after a dropped
//! connection and reloaded after a compaction. Each desired-state change is published whole
//! (an O(1) clone of persistent maps, carrying the log of what changed).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use statiko_common::backoff::Backoff;
use statiko_common::keys::KeySchema;
use statiko_common::store::{Store, StoreError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::desired::Desired;

/// Retries after a broken session: 200 ms doubling up to 5 s, plus up to 200 ms of jitter.
const RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5))
    .with_jitter(Duration::from_millis(200));

/// Follows the store and publishes every new desired state on `tx`.
#[derive(Debug)]
pub struct Syncer {
    store: Store,
    keys: KeySchema,
    tx: watch::Sender<Arc<Desired>>,
    /// Whether the store is currently reachable (for status and readiness).
    connected: watch::Sender<bool>,
}

impl Syncer {
    pub fn new(
        store: Store,
        keys: KeySchema,
        tx: watch::Sender<Arc<Desired>>,
        connected: watch::Sender<bool>,
    ) -> Self {
        Self {
            store,
            keys,
            tx,
            connected,
        }
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = RETRY;
        // Resume point: after a dropped watch, continue from what was seen instead of reloading.
        let mut resume: Option<Desired> = None;
        loop {
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                outcome = self.follow(resume.take()) => outcome,
            };
            if self.connected.send_replace(false) {
                // The session had connected: the next failure is a new one.
                backoff.reset();
            }
            match outcome {
                Ok(()) => return,
                Err((err, last)) => {
                    resume = match err {
                        StoreError::Compacted { .. } => {
                            tracing::info!(error = %err, "watch fell behind a compaction; reloading a snapshot");
                            None
                        }
                        _ => {
                            tracing::warn!(error = %err, "store sync interrupted; resuming");
                            last
                        }
                    };
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// One session: snapshot (unless resuming), then watch until the stream breaks. Returns the
    /// error with the last state seen, so the caller can resume from it.
    async fn follow(&self, resume: Option<Desired>) -> Result<(), (StoreError, Option<Desired>)> {
        let mut desired = match resume {
            Some(desired) => desired,
            None => {
                let snapshot = self
                    .store
                    .snapshot(self.keys.root())
                    .instrument(tracing::info_span!("sync.snapshot"))
                    .await
                    .map_err(|e| (e, None))?;
                let desired = Desired::from_snapshot(&self.keys, &snapshot);
                tracing::info!(
                    revision = desired.revision,
                    seen = desired.seen_revision,
                    sites = desired.sites.len(),
                    "loaded state snapshot"
                );
                // The store answered: say so before the state is applied, so an edge that reports
                // ready (applied) never reports the store unreachable for the same snapshot.
                let _ = self.connected.send(true);
                self.publish(&desired);
                desired
            }
        };
        let mut stream = match self
            .store
            .watch(self.keys.root(), desired.seen_revision + 1)
            .await
        {
            Ok(stream) => stream,
            Err(err) => return Err((err, Some(desired))),
        };
        let _ = self.connected.send(true);
        while let Some(batch) = stream.next().await {
            let batch = match batch {
                Ok(batch) => batch,
                Err(err) => return Err((err, Some(desired))),
            };
            let span = tracing::info_span!("sync.watch_batch", revision = batch.revision);
            if span.in_scope(|| desired.apply(&self.keys, &batch)) {
                tracing::debug!(revision = batch.revision, "desired state changed");
                self.publish(&desired);
            }
        }
        Err((StoreError::unavailable("watch stream ended"), Some(desired)))
    }

    /// Publishes a complete state; a state in the middle of an import is held back (the edge
    /// keeps serving the last complete one until the import's marker goes).
    fn publish(&self, desired: &Desired) {
        if desired.importing() {
            tracing::debug!(
                revision = desired.revision,
                "a state import is being written; holding the served state"
            );
            return;
        }
        let _ = self.tx.send(Arc::new(desired.clone()));
    }
}
