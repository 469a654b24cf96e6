//! Leader-only: drives every atomic deployment out of `staging`.
//!
//! While a deployment is staging, every live edge stages its bundle and reports it in its node
//! record (`releases.rs`). The leader decides, for each one:
//! - every live node (a node record present) reports it staged: **cutover**, one transaction
//!   that points the site at the new app, marks the deployment `live` and the previous live one
//!   `superseded`;
//! - a node reports an error: **failed**, naming the node and its error; the site is untouched;
//! - the stage deadline (`deploy.stageTimeout` from `createdAt`) passed: **failed**, naming the
//!   nodes that did not report.
//!
//! Every write carries the leadership fence and compares on the records it was decided from
//! (the deployment, the site and the site's deployment history at the revision read), so a
//! deposed leader or a decision on stale records changes nothing. Because the elected leader
//! drives it, neither a client that disconnects nor a control replica that dies can leave a
//! deployment stuck; a new leader resumes from the records.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use statiko_common::keys::KeySchema;
use statiko_common::model::{
    self, DeploymentRecord, DeploymentState, NodeStatusRecord, SiteRecord, now_ms,
};
use statiko_common::store::{
    Compare, KeyValue, Store, StoreError, TxnOp, WatchBatch, WatchEvent, WatchStream,
};
use tokio::sync::watch;

use crate::desired::Desired;
use crate::leader::Leadership;

/// How often node reports are read while a deployment is staging when no report came (node
/// records are not desired state, so the edge's watched copy does not carry them; a watch on
/// them wakes the leader sooner).
const POLL: Duration = Duration::from_millis(250);

/// The leader's cutover job.
#[derive(Debug, Clone)]
pub(crate) struct Cutover {
    pub(crate) store: Store,
    pub(crate) keys: KeySchema,
    /// `deploy.stageTimeout`.
    pub(crate) stage_timeout: Duration,
}

/// What the leader decides for one staging deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Some live nodes have not reported yet.
    Wait,
    /// Every live node staged it (their names).
    Cutover(Vec<String>),
    /// Reason and the nodes to blame.
    Fail(String, Vec<String>),
}

/// Decides from the live nodes' reports.
pub(crate) fn decide<'a>(
    deployment: &DeploymentRecord,
    nodes: impl IntoIterator<Item = &'a NodeStatusRecord>,
    now: i64,
    stage_timeout: Duration,
) -> Decision {
    let mut staged = Vec::new();
    let mut errors = Vec::new();
    let mut pending = Vec::new();
    let mut live = 0;
    for node in nodes {
        live += 1;
        match node.staging.get(&deployment.id) {
            Some(report) if report.ok => staged.push(node.name.clone()),
            Some(report) => errors.push((
                node.name.clone(),
                report
                    .error
                    .clone()
                    .unwrap_or_else(|| "unknown error".into()),
            )),
            None => pending.push(node.name.clone()),
        }
    }
    if !errors.is_empty() {
        let reason = errors
            .iter()
            .map(|(node, error)| format!("edge {node}: {error}"))
            .collect::<Vec<_>>()
            .join("; ");
        return Decision::Fail(reason, errors.into_iter().map(|(n, _)| n).collect());
    }
    let deadline = deployment.created_at + stage_timeout.as_millis() as i64;
    if now >= deadline && (!pending.is_empty() || live == 0) {
        let reason = if pending.is_empty() {
            format!(
                "no live edge staged it within the stage deadline ({}s)",
                stage_timeout.as_secs()
            )
        } else {
            format!(
                "stage deadline ({}s) passed; not staged by edge(s): {}",
                stage_timeout.as_secs(),
                pending.join(", ")
            )
        };
        return Decision::Fail(reason, pending);
    }
    if pending.is_empty() && !staged.is_empty() {
        Decision::Cutover(staged)
    } else {
        Decision::Wait
    }
}

impl Cutover {
    /// Runs while `lead` lasts. While something is staging, the node records are followed by a
    /// watch ([`NodeReports`]): each report wakes the leader at once (a burst of them is taken
    /// as one), so the cutover does not wait out a poll interval. [`POLL`] stays as the clock
    /// for deadlines and as the retry while the watch cannot be opened.
    pub(crate) async fn run(self, lead: Leadership, mut desired: watch::Receiver<Arc<Desired>>) {
        let mut reports: Option<NodeReports> = None;
        loop {
            let staging: Vec<DeploymentRecord> = desired
                .borrow_and_update()
                .staging
                .values()
                .cloned()
                .collect();
            if staging.is_empty() {
                reports = None;
            } else {
                if reports.is_none() {
                    match NodeReports::open(&self.store, &self.keys).await {
                        Ok(opened) => reports = Some(opened),
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot read the node records; retrying")
                        }
                    }
                }
                if let Some(nodes) = &reports
                    && let Err(err) = self.pass(&lead, &staging, &nodes.records).await
                {
                    tracing::warn!(error = %err, "cutover pass failed; retrying");
                }
            }
            let broken = tokio::select! {
                () = lead.token.cancelled() => return,
                changed = desired.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    None
                }
                followed = NodeReports::next(&mut reports) => followed.err(),
                () = tokio::time::sleep(POLL), if !staging.is_empty() => None,
            };
            if let Some(err) = broken {
                tracing::warn!(error = %err, "node record watch broke; reading them again");
                reports = None;
            }
        }
    }

    /// One decision per staging deployment.
    async fn pass(
        &self,
        lead: &Leadership,
        staging: &[DeploymentRecord],
        nodes: &BTreeMap<String, NodeStatusRecord>,
    ) -> Result<(), StoreError> {
        for deployment in staging {
            if lead.token.is_cancelled() {
                return Ok(());
            }
            match decide(deployment, nodes.values(), now_ms(), self.stage_timeout) {
                Decision::Wait => {}
                Decision::Cutover(staged) => self.cut_over(lead, deployment, staged).await?,
                Decision::Fail(reason, failed) => {
                    self.fail(lead, deployment, reason, failed).await?;
                }
            }
        }
        Ok(())
    }

    /// The deployment as stored now, if it is still staging, with its revision.
    async fn current(
        &self,
        deployment: &DeploymentRecord,
    ) -> Result<Option<(DeploymentRecord, i64)>, StoreError> {
        let key = self.keys.deployment(&deployment.site, &deployment.id);
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(None);
        };
        Ok(model::decode::<DeploymentRecord>(&kv.value)
            .ok()
            .filter(|d| d.state == DeploymentState::Staging)
            .map(|d| (d, kv.mod_revision)))
    }

    async fn cut_over(
        &self,
        lead: &Leadership,
        deployment: &DeploymentRecord,
        staged: Vec<String>,
    ) -> Result<(), StoreError> {
        let Some((mut deployment, deployment_revision)) = self.current(deployment).await? else {
            return Ok(());
        };
        let domain = deployment.site.clone();
        let site_key = self.keys.site(&domain);
        let Some(site_kv) = self.store.get(&site_key).await? else {
            return self
                .fail(lead, &deployment, "the site was deleted".into(), Vec::new())
                .await;
        };
        let mut site: SiteRecord = match model::decode(&site_kv.value) {
            Ok(site) => site,
            Err(err) => {
                tracing::warn!(site = %domain, error = %err, "unreadable site record; not cutting over");
                return Ok(());
            }
        };
        let history = self.store.snapshot(&self.keys.deployments(&domain)).await?;
        let now = now_ms();
        let mut ops = Vec::new();
        for kv in &history.kvs {
            let Ok(mut old) = model::decode::<DeploymentRecord>(&kv.value) else {
                continue;
            };
            if old.state == DeploymentState::Live && old.id != deployment.id {
                old.state = DeploymentState::Superseded;
                old.superseded_at = Some(now);
                ops.push(TxnOp::put(kv.key.clone(), model::encode(&old)));
            }
        }
        site.app = Some(deployment.app.clone());
        site.deployment = Some(deployment.id.clone());
        site.deployed_at = Some(now);
        site.updated_at = now;
        ops.push(TxnOp::put(site_key.clone(), model::encode(&site)));
        deployment.state = DeploymentState::Live;
        deployment.live_at = Some(now);
        deployment.staged_nodes = staged;
        ops.push(TxnOp::put(
            self.keys.deployment(&domain, &deployment.id),
            model::encode(&deployment),
        ));
        ops.push(TxnOp::put(self.keys.meta_state(), Vec::new()));
        let mut compares = lead.compares();
        // Never in the middle of a state import (it replaces sites).
        compares.push(Compare::absent(self.keys.meta_import()));
        compares.push(Compare::unchanged_since(site_key, site_kv.mod_revision));
        compares.push(Compare::unchanged_since(
            self.keys.deployment(&domain, &deployment.id),
            deployment_revision,
        ));
        compares.push(Compare::prefix_unchanged_since(
            &self.keys.deployments(&domain),
            history.revision,
        ));
        let result = self.store.txn(compares, ops).await?;
        if result.succeeded {
            tracing::info!(site = %domain, deployment = %deployment.id, app = %deployment.app,
                revision = result.revision, "deployment live");
        }
        Ok(())
    }

    async fn fail(
        &self,
        lead: &Leadership,
        deployment: &DeploymentRecord,
        reason: String,
        failed_nodes: Vec<String>,
    ) -> Result<(), StoreError> {
        let Some((mut deployment, revision)) = self.current(deployment).await? else {
            return Ok(());
        };
        let key = self.keys.deployment(&deployment.site, &deployment.id);
        deployment.state = DeploymentState::Failed;
        deployment.reason = Some(reason);
        deployment.failed_nodes = failed_nodes;
        deployment.failed_at = Some(now_ms());
        let mut compares = lead.compares();
        compares.push(Compare::unchanged_since(key.clone(), revision));
        let ops = vec![
            TxnOp::put(key, model::encode(&deployment)),
            TxnOp::put(self.keys.meta_state(), Vec::new()),
        ];
        let result = self.store.txn(compares, ops).await?;
        if result.succeeded {
            tracing::warn!(site = %deployment.site, deployment = %deployment.id,
                reason = deployment.reason.as_deref().unwrap_or_default(), "deployment failed");
        }
        Ok(())
    }
}

/// The live nodes' records while something is staging: a snapshot, then a watch that patches
/// it, so a burst of N reports costs N decodes rather than N reads of all N records.
struct NodeReports {
    /// By store key; a node whose lease expired is deleted, so it no longer counts as live.
    records: BTreeMap<String, NodeStatusRecord>,
    changes: WatchStream,
}

impl NodeReports {
    async fn open(store: &Store, keys: &KeySchema) -> Result<Self, StoreError> {
        let snapshot = store.snapshot(&keys.nodes()).await?;
        let changes = store.watch(&keys.nodes(), snapshot.revision + 1).await?;
        let mut reports = Self {
            records: BTreeMap::new(),
            changes,
        };
        for kv in &snapshot.kvs {
            reports.put(kv);
        }
        Ok(reports)
    }

    fn put(&mut self, kv: &KeyValue) {
        match model::decode::<NodeStatusRecord>(&kv.value) {
            Ok(record) => {
                self.records.insert(kv.key.clone(), record);
            }
            Err(err) => {
                tracing::warn!(key = %kv.key, error = %err, "ignoring an unreadable node record");
                self.records.remove(&kv.key);
            }
        }
    }

    fn apply(&mut self, batch: &WatchBatch) {
        for event in &batch.events {
            match event {
                WatchEvent::Put(kv) => self.put(kv),
                WatchEvent::Delete { key, .. } => {
                    self.records.remove(key);
                }
            }
        }
    }

    /// Waits for the next change of `reports` and applies it with every change already
    /// delivered; pending forever without a watch, an error when the watch broke.
    async fn next(reports: &mut Option<Self>) -> Result<(), StoreError> {
        let Some(reports) = reports else {
            return std::future::pending().await;
        };
        let first = reports
            .changes
            .next()
            .await
            .unwrap_or_else(|| Err(StoreError::unavailable("node record watch ended")))?;
        reports.apply(&first);
        while let Some(Some(more)) = reports.changes.next().now_or_never() {
            reports.apply(&more?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use statiko_common::model::{AppRef, DeployStrategy, StageReport};

    fn deployment() -> DeploymentRecord {
        let app = AppRef {
            name: "web".into(),
            version: "2".into(),
        };
        DeploymentRecord::new(
            "d0000000001000aaaa".into(),
            "a.test".into(),
            app,
            DeployStrategy::Atomic,
            1_000,
        )
    }

    fn node(name: &str, report: Option<Result<(), &str>>) -> NodeStatusRecord {
        let mut node = NodeStatusRecord {
            name: name.into(),
            ..NodeStatusRecord::default()
        };
        if let Some(report) = report {
            node.staging.insert(
                "d0000000001000aaaa".into(),
                StageReport {
                    ok: report.is_ok(),
                    error: report.err().map(str::to_owned),
                },
            );
        }
        node
    }

    #[test]
    fn decisions() {
        let d = deployment();
        let timeout = Duration::from_secs(10);
        let all = [node("a", Some(Ok(()))), node("b", Some(Ok(())))];
        assert_eq!(
            decide(&d, &all, 2_000, timeout),
            Decision::Cutover(vec!["a".into(), "b".into()])
        );
        let one_pending = [node("a", Some(Ok(()))), node("b", None)];
        assert_eq!(decide(&d, &one_pending, 2_000, timeout), Decision::Wait);
        let Decision::Fail(reason, nodes) = decide(&d, &one_pending, 11_000, timeout) else {
            panic!("the deadline fails it");
        };
        assert_eq!(nodes, ["b"]);
        assert!(
            reason.contains("deadline") && reason.contains('b'),
            "{reason}"
        );
        let failed = [node("a", Some(Ok(()))), node("b", Some(Err("disk full")))];
        let Decision::Fail(reason, nodes) = decide(&d, &failed, 2_000, timeout) else {
            panic!("an error fails it");
        };
        assert_eq!(nodes, ["b"]);
        assert_eq!(reason, "edge b: disk full");
        assert_eq!(decide(&d, &[], 2_000, timeout), Decision::Wait);
        assert!(matches!(
            decide(&d, &[], 11_000, timeout),
            Decision::Fail(_, _)
        ));
    }
}
