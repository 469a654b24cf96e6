//! The node record: this edge's status kept in the store on a lease that dies with the edge.

use std::time::Duration;

use statiko_common::backoff::Backoff;
use statiko_common::keys::KeySchema;
use statiko_common::model::{self, NodeCertificateStatus, NodeStatusRecord, now_ms};
use statiko_common::store::{Store, TxnOp};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::reconcile::Applied;

/// Static facts about this node.
#[derive(Debug, Clone)]
pub(crate) struct NodeInfo {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) disallow_leadership: bool,
}

/// Sites and certificates the stored node record lists in full; beyond this it lists only the
/// sites that need attention and the certificates that expire first, so the record stays far
/// below etcd's request limit (1.5 MiB by default) at any number of sites.
pub(crate) const RECORD_LIST_MAX: usize = 1000;

/// Retries after a failed session: 200 ms doubling up to 5 s, plus up to 200 ms of jitter.
const RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5))
    .with_jitter(Duration::from_millis(200));

/// Builds the status record from the last applied state, listing at most `max` sites and
/// certificates (the admin listener's `/status` lists all).
pub(crate) fn record(
    info: &NodeInfo,
    applied: &Applied,
    leader: bool,
    max: usize,
) -> NodeStatusRecord {
    let (sites, sites_omitted) = if applied.sites.len() <= max {
        (applied.sites.values().cloned().collect(), 0)
    } else {
        let unhealthy: Vec<_> = applied.unhealthy().take(max).cloned().collect();
        let omitted = applied.sites.len() - unhealthy.len();
        (unhealthy, omitted)
    };
    let mut certificates: Vec<NodeCertificateStatus> = applied
        .certificates
        .iter()
        .map(|(name, not_after)| NodeCertificateStatus {
            name: name.clone(),
            not_after: *not_after,
        })
        .collect();
    let mut certificates_omitted = 0;
    if certificates.len() > max {
        certificates.sort_by_key(|c| c.not_after);
        certificates_omitted = certificates.len() - max;
        certificates.truncate(max);
        certificates.sort_by(|a, b| a.name.cmp(&b.name));
    }
    NodeStatusRecord {
        name: info.name.clone(),
        version: info.version.clone(),
        leader,
        disallow_leadership: info.disallow_leadership,
        applied_revision: applied.revision,
        updated_at: now_ms(),
        sites,
        sites_omitted: sites_omitted as u64,
        certificates,
        certificates_omitted: certificates_omitted as u64,
        staging: applied.staging.clone(),
    }
}

/// Keeps the node record in the store, on a lease that dies with this edge.
#[derive(Debug)]
pub(crate) struct Publisher {
    pub(crate) store: Store,
    pub(crate) keys: KeySchema,
    pub(crate) info: NodeInfo,
    pub(crate) ttl: Duration,
    pub(crate) applied: watch::Receiver<Option<Applied>>,
    /// Whether this edge leads now.
    pub(crate) leader: watch::Receiver<bool>,
}

impl Publisher {
    /// Runs until `shutdown`; then revokes the lease so the node disappears at once.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = RETRY;
        loop {
            match self.session(&shutdown, &mut backoff).await {
                Ok(()) => return,
                Err(err) => tracing::warn!(error = %err, "node status not published; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// One lease and the record on it, until shutdown or a store error; `backoff` is reset once
    /// the record is written.
    async fn session(
        &mut self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), statiko_common::store::StoreError> {
        let lease = self.store.grant_lease(self.ttl).await?;
        let key = self.keys.node(&self.info.name);
        let mut refresh = tokio::time::interval(self.ttl / 3);
        refresh.tick().await;
        let mut last_written: Option<NodeStatusRecord> = None;
        let mut leader_open = true;
        loop {
            let current = self.applied.borrow_and_update().clone();
            let leader = *self.leader.borrow_and_update();
            if let Some(applied) = current {
                let record = record(&self.info, &applied, leader, RECORD_LIST_MAX);
                let unchanged = last_written
                    .as_ref()
                    .is_some_and(|last| same_content(last, &record));
                if !unchanged {
                    let put = TxnOp::Put {
                        key: key.clone(),
                        value: model::encode(&record),
                        lease,
                    };
                    self.store.txn(Vec::new(), vec![put]).await?;
                    last_written = Some(record);
                    backoff.reset();
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = self.store.revoke_lease(lease).await;
                    return Ok(());
                }
                changed = self.applied.changed() => {
                    if changed.is_err() {
                        let _ = self.store.revoke_lease(lease).await;
                        return Ok(());
                    }
                }
                changed = self.leader.changed(), if leader_open => {
                    // A closed channel: the election ended; the last value stands.
                    leader_open = changed.is_ok();
                }
                _ = refresh.tick() => {
                    if !self.store.keep_alive(lease).await? {
                        return Err(statiko_common::store::StoreError::unavailable("node lease expired"));
                    }
                }
            }
        }
    }
}

/// Whether two records differ only in their timestamp.
fn same_content(a: &NodeStatusRecord, b: &NodeStatusRecord) -> bool {
    NodeStatusRecord {
        updated_at: 0,
        ..a.clone()
    } == NodeStatusRecord {
        updated_at: 0,
        ..b.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use statiko_common::model::NodeSiteStatus;

    fn applied(sites: usize, unhealthy: usize, certificates: usize) -> Applied {
        Applied {
            revision: 9,
            sites: (0..sites)
                .map(|i| {
                    let domain = format!("s{i:05}.test");
                    let status = NodeSiteStatus {
                        domain: domain.clone(),
                        app: None,
                        healthy: i >= unhealthy,
                        error: (i < unhealthy).then(|| "boom".to_owned()),
                        retained: Vec::new(),
                    };
                    (domain, status)
                })
                .collect(),
            // c00000 expires last, c{n-1} first.
            certificates: (0..certificates)
                .map(|i| (format!("c{i:05}"), 10_000_000 - i as i64))
                .collect(),
            staging: Default::default(),
        }
    }

    fn info() -> NodeInfo {
        NodeInfo {
            name: "edge-1".into(),
            version: "0".into(),
            disallow_leadership: false,
        }
    }

    #[test]
    fn small_records_list_everything() {
        let record = record(&info(), &applied(3, 1, 2), false, RECORD_LIST_MAX);
        assert_eq!(record.sites.len(), 3);
        assert_eq!(record.sites_omitted, 0);
        assert_eq!(record.certificates.len(), 2);
        assert_eq!(record.certificates_omitted, 0);
        let json = String::from_utf8(model::encode(&record)).unwrap();
        assert!(!json.contains("Omitted"), "{json}");
    }

    #[test]
    fn large_records_list_only_what_needs_attention() {
        let record = record(&info(), &applied(10_000, 2, 10_000), false, RECORD_LIST_MAX);
        let listed: Vec<&str> = record.sites.iter().map(|s| s.domain.as_str()).collect();
        assert_eq!(listed, ["s00000.test", "s00001.test"]);
        assert_eq!(record.sites_omitted, 9_998);
        assert_eq!(record.certificates.len(), RECORD_LIST_MAX);
        assert_eq!(record.certificates_omitted, 9_000);
        // The ones that expire first, listed by name.
        assert_eq!(record.certificates[0].name, "c09000");
        assert_eq!(record.certificates[999].name, "c09999");
        let bytes = model::encode(&record);
        assert!(bytes.len() < 200_000, "{} bytes", bytes.len());
        // The admin listener's view lists everything.
        let full = super::record(&info(), &applied(10_000, 2, 10), false, usize::MAX);
        assert_eq!((full.sites.len(), full.sites_omitted), (10_000, 0));
    }
}
