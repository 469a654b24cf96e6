//! Leader election on one leased key (`{root}/v1/election/edge-leader/leader`).
//!
//! The recipe: grant a lease of `edge.leaseTtl`, then create the key with a transaction guarded
//! by "absent", attached to the lease. The winner keeps the lease alive every `ttl / 3` and checks
//! the key is still its own; everyone else waits for the key to disappear (watch, with a poll
//! every `ttl / 3` as a fallback) and campaigns again. Leadership ends the instant a keep-alive
//! fails or cannot finish before `last successful keep-alive + ttl`: the [`Leadership::token`]
//! is cancelled then, so leader-only jobs stop at once, and the leader never believes it leads
//! longer than the store does. On shutdown the leader revokes its lease (resigns), so another
//! edge takes over at once instead of after the TTL. Nodes with `disallowLeadership: true` never
//! campaign. Leader writes carry [`Leadership::fence`], a compare on the key's create revision,
//! so a deposed leader's late write fails instead of overwriting its successor's.
//!
//! On the file store (a single node) the node is always leader: see [`always_leader`].

use std::time::{Duration, Instant};

use futures::StreamExt;
use statiko_common::keys::KeySchema;
use statiko_common::store::{Compare, CompareOp, CompareTarget, Store, TxnOp, WatchEvent};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// This edge leads. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// Cancelled the moment leadership is lost (or the edge stops).
    pub token: CancellationToken,
    /// A compare that holds only while this term lasts; `None` on the file store.
    pub fence: Option<Compare>,
    /// "No state import is being written" (`meta/import` absent): a leader write waits until an
    /// import has ended, so it never lands between the import's batches.
    pub no_import: Compare,
}

impl Leadership {
    /// The fence and the no-import guard as a compare list, for a transaction.
    pub fn compares(&self) -> Vec<Compare> {
        self.fence
            .iter()
            .cloned()
            .chain(std::iter::once(self.no_import.clone()))
            .collect()
    }
}

/// Publishes leadership for a single node (the file store): leader until `shutdown`.
pub async fn always_leader(
    keys: KeySchema,
    tx: watch::Sender<Option<Leadership>>,
    shutdown: CancellationToken,
) {
    let token = shutdown.child_token();
    tracing::info!("file store: this node is the leader");
    let _ = tx.send(Some(Leadership {
        token: token.clone(),
        fence: None,
        no_import: Compare::absent(keys.meta_import()),
    }));
    shutdown.cancelled().await;
    token.cancel();
    let _ = tx.send(None);
}

/// The election for one node.
#[derive(Debug, Clone)]
pub struct Election {
    pub store: Store,
    pub keys: KeySchema,
    pub node: String,
    pub ttl: Duration,
    pub disallow_leadership: bool,
}

/// How a term ended.
enum TermEnd {
    Lost(String),
    Shutdown,
}

impl Election {
    /// Campaigns, leads and follows until `shutdown`; publishes every change on `tx`.
    pub async fn run(self, tx: watch::Sender<Option<Leadership>>, shutdown: CancellationToken) {
        if self.disallow_leadership {
            tracing::info!("disallowLeadership: this node never leads");
            return;
        }
        let retry = self.ttl / 3;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match self.campaign().await {
                Ok(Some((lease, create_revision))) => {
                    let token = shutdown.child_token();
                    let leadership = Leadership {
                        token: token.clone(),
                        fence: Some(Compare {
                            key: self.keys.leader(),
                            range_end: None,
                            target: CompareTarget::CreateRevision(create_revision),
                            op: CompareOp::Equal,
                        }),
                        no_import: Compare::absent(self.keys.meta_import()),
                    };
                    tracing::info!(node = %self.node, "elected leader");
                    let _ = tx.send(Some(leadership));
                    let end = self.hold(lease, create_revision, &shutdown).await;
                    token.cancel();
                    let _ = tx.send(None);
                    // Resign (or clean up a lease that may still exist).
                    let _ = tokio::time::timeout(retry, self.store.revoke_lease(lease)).await;
                    match end {
                        TermEnd::Shutdown => {
                            tracing::info!("resigned leadership");
                            return;
                        }
                        TermEnd::Lost(reason) => {
                            tracing::warn!(reason = %reason, "lost leadership");
                        }
                    }
                }
                Ok(None) => self.wait_for_vacancy(&shutdown).await,
                Err(err) => {
                    tracing::debug!(error = %err, "campaign failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                }
            }
        }
    }

    /// One attempt: `Some((lease, create revision of the key))` when won.
    async fn campaign(&self) -> Result<Option<(i64, i64)>, statiko_common::store::StoreError> {
        let key = self.keys.leader();
        if self.store.get(&key).await?.is_some() {
            return Ok(None);
        }
        let lease = self.store.grant_lease(self.ttl).await?;
        let put = TxnOp::Put {
            key: key.clone(),
            value: self.node.clone().into_bytes(),
            lease,
        };
        match self.store.txn(vec![Compare::absent(key)], vec![put]).await {
            Ok(result) if result.succeeded => Ok(Some((lease, result.revision))),
            other => {
                let _ = self.store.revoke_lease(lease).await;
                other.map(|_| None)
            }
        }
    }

    /// Keeps the lease alive until it is lost or `shutdown`.
    async fn hold(
        &self,
        lease: i64,
        create_revision: i64,
        shutdown: &CancellationToken,
    ) -> TermEnd {
        let key = self.keys.leader();
        let mut deadline = Instant::now() + self.ttl;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return TermEnd::Shutdown,
                () = tokio::time::sleep(self.ttl / 3) => {}
            }
            let sent = Instant::now();
            let Some(remaining) = deadline.checked_duration_since(sent) else {
                return TermEnd::Lost("lease deadline passed".into());
            };
            let check = async {
                if !self.store.keep_alive(lease).await? {
                    return Ok::<_, statiko_common::store::StoreError>(Err(
                        "the lease expired".to_owned()
                    ));
                }
                match self.store.get(&key).await? {
                    Some(kv) if kv.create_revision == create_revision && kv.lease == lease => {
                        Ok(Ok(()))
                    }
                    _ => Ok(Err("the leader key is no longer ours".to_owned())),
                }
            };
            match tokio::time::timeout(remaining, check).await {
                Ok(Ok(Ok(()))) => deadline = sent + self.ttl,
                Ok(Ok(Err(reason))) => return TermEnd::Lost(reason),
                Ok(Err(err)) => return TermEnd::Lost(format!("keep-alive failed: {err}")),
                Err(_) => return TermEnd::Lost("keep-alive timed out".into()),
            }
        }
    }

    /// Returns when the leader key is (probably) gone, or after `ttl / 3` at most.
    async fn wait_for_vacancy(&self, shutdown: &CancellationToken) {
        let key = self.keys.leader();
        let poll = self.ttl / 3;
        let wait = async {
            let Ok(Some(kv)) = self.store.get(&key).await else {
                tokio::time::sleep(poll).await;
                return;
            };
            let Ok(mut stream) = self.store.watch(&key, kv.mod_revision + 1).await else {
                tokio::time::sleep(poll).await;
                return;
            };
            while let Some(Ok(batch)) = stream.next().await {
                if batch
                    .events
                    .iter()
                    .any(|e| matches!(e, WatchEvent::Delete { key: k, .. } if *k == key))
                {
                    return;
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => {}
            _ = tokio::time::timeout(poll, wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use statiko_common::store::FileStore;

    fn election(store: &Store, node: &str, disallow: bool) -> Election {
        Election {
            store: store.clone(),
            keys: KeySchema::new("/t"),
            node: node.into(),
            ttl: Duration::from_secs(2),
            disallow_leadership: disallow,
        }
    }

    async fn leader_of(store: &Store) -> Option<String> {
        let kv = store.get(&KeySchema::new("/t").leader()).await.unwrap()?;
        Some(String::from_utf8(kv.value).unwrap())
    }

    async fn wait_for(rx: &mut watch::Receiver<Option<Leadership>>, leading: bool) {
        tokio::time::timeout(Duration::from_secs(6), async {
            while rx.borrow_and_update().is_some() != leading {
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("leadership change in time");
    }

    #[tokio::test]
    async fn one_leader_then_failover_on_resign() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::File(FileStore::open(dir.path()).unwrap());
        let (tx_a, mut rx_a) = watch::channel(None);
        let (tx_b, mut rx_b) = watch::channel(None);
        let stop_a = CancellationToken::new();
        let stop_b = CancellationToken::new();
        let a = tokio::spawn(election(&store, "a", false).run(tx_a, stop_a.clone()));
        wait_for(&mut rx_a, true).await;
        let b = tokio::spawn(election(&store, "b", false).run(tx_b, stop_b.clone()));
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(rx_b.borrow().is_none(), "only one leader");
        assert_eq!(leader_of(&store).await.as_deref(), Some("a"));

        // a's token is cancelled when it resigns; b takes over well within the TTL.
        let token = rx_a.borrow().clone().unwrap().token;
        stop_a.cancel();
        a.await.unwrap();
        assert!(token.is_cancelled());
        wait_for(&mut rx_b, true).await;
        assert_eq!(leader_of(&store).await.as_deref(), Some("b"));
        stop_b.cancel();
        b.await.unwrap();
        assert_eq!(leader_of(&store).await, None, "resigning deletes the key");
    }

    #[tokio::test]
    async fn lost_lease_cancels_and_fences() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::File(FileStore::open(dir.path()).unwrap());
        let (tx, mut rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(election(&store, "a", false).run(tx, stop.clone()));
        wait_for(&mut rx, true).await;
        let first = rx.borrow().clone().unwrap();
        // Someone revokes the lease behind the leader's back (as an expiry would).
        let kv = store
            .get(&KeySchema::new("/t").leader())
            .await
            .unwrap()
            .unwrap();
        store.revoke_lease(kv.lease).await.unwrap();
        tokio::time::timeout(Duration::from_secs(3), first.token.cancelled())
            .await
            .expect("leadership lost within the TTL");
        // The old term's fence no longer holds, even once the node leads again.
        wait_for(&mut rx, true).await;
        let put = TxnOp::put("/t/v1/x", b"1".to_vec());
        let stale = store
            .txn(first.compares(), vec![put.clone()])
            .await
            .unwrap();
        assert!(!stale.succeeded);
        let current = rx.borrow().clone().unwrap();
        assert!(
            store
                .txn(current.compares(), vec![put])
                .await
                .unwrap()
                .succeeded
        );
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn disallowed_nodes_never_lead() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::File(FileStore::open(dir.path()).unwrap());
        let (tx, rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(election(&store, "x", true).run(tx, stop.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(rx.borrow().is_none());
        assert_eq!(leader_of(&store).await, None);
        stop.cancel();
        task.await.unwrap();
    }
}
