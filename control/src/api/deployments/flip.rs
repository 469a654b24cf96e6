//! The flip: an atomic deployment of a bundle that every live edge already retains (a rollback,
//! or a deploy of a recent version) needs no staging round. Control switches the site in the
//! transaction that creates the deployment, so the edges only apply one watch event, from
//! their local copies, all at the same store revision.
//!
//! What each edge retains comes from its node record (`NodeSiteStatus::retained`, deployment
//! ids per site). The transaction compares the node records unchanged since they were read (a
//! new edge, or an edge that stopped retaining the bundle, makes it retry), alongside the
//! site and its deployment history. When some live edge does not retain the bundle, or its
//! record does not list the site (an edge serving more sites than its record lists), the
//! deployment takes the staged path: `staging`, then the leader's cutover.

use std::collections::HashSet;

use statiko_common::crypto::Digest;
use statiko_common::model::{self, DeploymentRecord, NodeStatusRecord};

use super::Api;
use crate::error::Result;
use crate::state::Versioned;

/// Every live edge retains the bundle: their names, and the revision they were read at.
#[derive(Debug)]
pub(super) struct Retaining {
    pub(super) nodes: Vec<String>,
    pub(super) revision: i64,
}

impl Api {
    /// Whether every live edge retains `digest` for site `domain` (a retained deployment of it,
    /// by id, among `history`).
    pub(super) async fn retained_everywhere(
        &self,
        domain: &str,
        digest: &Digest,
        history: &[Versioned<DeploymentRecord>],
    ) -> Result<Option<Retaining>> {
        let state = &self.ctx.state;
        let snapshot = state.store.snapshot(&state.keys.nodes()).await?;
        let mut nodes = Vec::with_capacity(snapshot.kvs.len());
        for kv in &snapshot.kvs {
            match model::decode::<NodeStatusRecord>(&kv.value) {
                Ok(node) => nodes.push(node),
                // A record we cannot read: we cannot say it retains anything.
                Err(_) => return Ok(None),
            }
        }
        Ok(
            retained_by_all(&nodes, domain, digest, history).map(|nodes| Retaining {
                nodes,
                revision: snapshot.revision,
            }),
        )
    }
}

/// The names of `nodes` when there is at least one and each retains a deployment of `digest`
/// for `domain`.
fn retained_by_all(
    nodes: &[NodeStatusRecord],
    domain: &str,
    digest: &Digest,
    history: &[Versioned<DeploymentRecord>],
) -> Option<Vec<String>> {
    if nodes.is_empty() {
        return None;
    }
    let ids: HashSet<&str> = history
        .iter()
        .filter(|d| d.record.digest.as_ref() == Some(digest))
        .map(|d| d.record.id.as_str())
        .collect();
    nodes
        .iter()
        .map(|node| {
            let site = node.sites.iter().find(|s| s.domain == domain)?;
            site.retained
                .iter()
                .any(|id| ids.contains(id.as_str()))
                .then(|| node.name.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use statiko_common::model::{AppRef, DeployStrategy, NodeSiteStatus};

    use super::*;

    fn deployment(id: &str, digest: u8) -> Versioned<DeploymentRecord> {
        let app = AppRef {
            name: "web".into(),
            version: digest.to_string(),
        };
        let mut record =
            DeploymentRecord::new(id.into(), "a.test".into(), app, DeployStrategy::Atomic, 1);
        record.digest = Some(Digest::from([digest; 32]));
        Versioned {
            record,
            mod_revision: 1,
        }
    }

    fn node(name: &str, domain: &str, retained: &[&str]) -> NodeStatusRecord {
        NodeStatusRecord {
            name: name.into(),
            sites: vec![NodeSiteStatus {
                domain: domain.into(),
                retained: retained.iter().map(|id| (*id).to_owned()).collect(),
                ..NodeSiteStatus::default()
            }],
            ..NodeStatusRecord::default()
        }
    }

    #[test]
    fn a_flip_needs_every_live_node_to_retain_the_bundle() {
        let history = [
            deployment("d0000000000001aaaa", 0x11),
            deployment("d0000000000002aaaa", 0x22),
            // The same bundle deployed again: either id will do.
            deployment("d0000000000003aaaa", 0x11),
        ];
        let check = |nodes: &[NodeStatusRecord], digest: u8| {
            retained_by_all(nodes, "a.test", &Digest::from([digest; 32]), &history)
        };
        let both = [
            node("e0", "a.test", &["d0000000000001aaaa"]),
            node(
                "e1",
                "a.test",
                &["d0000000000003aaaa", "d0000000000002aaaa"],
            ),
        ];
        assert_eq!(
            check(&both, 0x11),
            Some(vec!["e0".to_owned(), "e1".to_owned()])
        );
        // e0 does not retain web@22.
        assert_eq!(check(&both, 0x22), None);
        // A node whose record does not list the site, or no node at all: staged path.
        let unlisted = [
            node("e0", "a.test", &["d0000000000001aaaa"]),
            node("e1", "b.test", &["d0000000000001aaaa"]),
        ];
        assert_eq!(check(&unlisted, 0x11), None);
        assert_eq!(check(&[], 0x11), None);
        // A deployment id the history no longer has says nothing about the bundle.
        assert_eq!(
            check(&[node("e0", "a.test", &["d0000000000009aaaa"])], 0x11),
            None
        );
        // A bundle no deployment in the history has.
        assert_eq!(check(&both, 0x33), None);
    }
}
