//! Replaces the whole desired state (a state import) in a store whose transactions are bounded
//! (etcd: `--max-txn-ops`, default 128; `--max-request-bytes`, default 1.5 MiB), so that nobody
//! acts on it half-written:
//!
//! 1. **Begin**: one transaction, guarded by "no desired-state key changed since the snapshot the
//!    plan was computed from", puts the marker `meta/import`. From then on every other
//!    desired-state write is refused (`StateStore::txn` and the edge leader's writes compare
//!    the marker absent), and edges hold the state they serve (they do not publish a state read
//!    while the marker exists).
//! 2. **Batches**: the plan (deletes of the records the new state lacks, puts of those it adds or
//!    changes), split to fit the store's limits, each guarded by "the marker is still ours".
//! 3. **Commit**: one small transaction deletes the marker and touches `meta/state`; edges then
//!    apply the new state as one change.
//!
//! A failure after the begin reverts what was written (the previous values come from the
//! snapshot) and removes the marker. If even that fails (the store went away), the marker stays:
//! edges keep serving the previous state, other writes are refused with `UNAVAILABLE`, and the
//! next import takes the marker over and writes its whole document.

use std::collections::BTreeMap;

use serde::Serialize;
use statiko_common::model::now_ms;
use statiko_common::store::{Compare, TxnOp};

use crate::error::{ControlError, Result};
use crate::state::StateStore;

/// What the marker records (for an operator reading the store).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImportSummary {
    pub(crate) sites: usize,
    pub(crate) apps: usize,
    pub(crate) certificates: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Marker<'a> {
    started_at: i64,
    #[serde(flatten)]
    summary: &'a ImportSummary,
}

/// Makes the desired state exactly `records` (store key → encoded record, every key under one
/// of `KeySchema::desired_state_prefixes`). Returns the revision edges switch at.
pub(crate) async fn replace_desired_state(
    state: &StateStore,
    records: BTreeMap<String, Vec<u8>>,
    summary: &ImportSummary,
) -> Result<i64> {
    let keys = &state.keys;
    let marker_key = keys.meta_import();
    let prefixes = keys.desired_state_prefixes();
    // One snapshot of the root: every desired-state record and the marker at one revision.
    let snapshot = state.store.snapshot(keys.root()).await?;
    let mut before = BTreeMap::new();
    let mut stale_marker = None;
    for kv in snapshot.kvs {
        if kv.key == marker_key {
            stale_marker = Some(kv.mod_revision);
        } else if prefixes
            .iter()
            .any(|prefix| kv.key.starts_with(prefix.as_str()))
        {
            before.insert(kv.key, kv.value);
        }
    }
    // etcd refuses a transaction that deletes a range and puts keys inside it, so delete exactly
    // the records the new state lacks; records that stay the same are not rewritten.
    let mut plan: Vec<TxnOp> = before
        .keys()
        .filter(|key| !records.contains_key(*key))
        .map(|key| TxnOp::delete(key.clone()))
        .collect();
    plan.extend(
        records
            .into_iter()
            .filter(|(key, value)| before.get(key) != Some(value))
            .map(|(key, value)| TxnOp::put(key, value)),
    );

    let mut compares: Vec<Compare> = prefixes
        .iter()
        .map(|prefix| Compare::prefix_unchanged_since(prefix, snapshot.revision))
        .collect();
    compares.push(match stale_marker {
        Some(revision) => {
            tracing::warn!("an earlier state import did not finish; this import replaces it");
            Compare::unchanged_since(marker_key.clone(), revision)
        }
        None => Compare::absent(marker_key.clone()),
    });
    let marker = serde_json::to_vec(&Marker {
        started_at: now_ms(),
        summary,
    })
    .map_err(|err| ControlError::Internal(err.into()))?;
    let begun = state
        .store
        .txn(compares, vec![TxnOp::put(marker_key.clone(), marker)])
        .await?;
    if !begun.succeeded {
        return Err(ControlError::Conflict(
            "the state changed while the import was being prepared; retry".into(),
        ));
    }
    let ours = Compare::unchanged_since(marker_key.clone(), begun.revision);
    let batches = state.store.txn_limits().split(plan);
    tracing::info!(
        writes = batches.iter().map(Vec::len).sum::<usize>(),
        batches = batches.len(),
        "writing the imported state"
    );
    for (i, batch) in batches.iter().enumerate() {
        match state.store.txn(vec![ours.clone()], batch.clone()).await {
            Ok(result) if result.succeeded => {}
            Ok(_) => return Err(replaced()),
            Err(err) => {
                let at = format!(
                    "writing batch {} of {} (from {})",
                    i + 1,
                    batches.len(),
                    batch.first().map_or("", TxnOp::key)
                );
                return Err(revert(state, &ours, &before, &batches[..=i], &at, err.into()).await);
            }
        }
    }
    let commit = vec![
        TxnOp::delete(marker_key),
        TxnOp::put(keys.meta_state(), Vec::new()),
    ];
    match state.store.txn(vec![ours.clone()], commit).await {
        Ok(result) if result.succeeded => Ok(result.revision),
        Ok(_) => Err(replaced()),
        Err(err) => Err(revert(
            state,
            &ours,
            &before,
            &batches,
            "switching to it",
            err.into(),
        )
        .await),
    }
}

fn replaced() -> ControlError {
    ControlError::Conflict(
        "another state import took over while this one was being written; the state is that import's"
            .into(),
    )
}

/// Undoes the batches written (some perhaps only in part), removes the marker, and says what
/// failed and whether the previous state is back.
async fn revert(
    state: &StateStore,
    ours: &Compare,
    before: &BTreeMap<String, Vec<u8>>,
    written: &[Vec<TxnOp>],
    at: &str,
    err: ControlError,
) -> ControlError {
    let undo: Vec<TxnOp> = written
        .iter()
        .flatten()
        .map(|op| match before.get(op.key()) {
            Some(value) => TxnOp::put(op.key(), value.clone()),
            None => TxnOp::delete(op.key()),
        })
        .collect();
    let mut batches = state.store.txn_limits().split(undo);
    batches.push(vec![
        TxnOp::delete(state.keys.meta_import()),
        TxnOp::put(state.keys.meta_state(), Vec::new()),
    ]);
    for batch in batches {
        match state.store.txn(vec![ours.clone()], batch).await {
            Ok(result) if result.succeeded => {}
            Ok(_) => {
                return context(
                    err,
                    &format!("import failed while {at}"),
                    "; another state import took over meanwhile, the state is that import's",
                );
            }
            Err(undo_err) => {
                tracing::error!(error = %undo_err, "could not revert a failed state import");
                return context(
                    err,
                    &format!("import failed while {at}"),
                    "; the previous state could not be written back either, so edges keep serving it and other changes are refused until a state import succeeds: run `stk state set` again",
                );
            }
        }
    }
    tracing::warn!(at, error = %err, "state import failed; the previous state is restored");
    context(
        err,
        &format!("import failed while {at}"),
        "; nothing was imported, the previous state is in place",
    )
}

/// `err` with its message between `before: ` and `after`, keeping its kind (its gRPC code).
fn context(err: ControlError, before: &str, after: &'static str) -> ControlError {
    ControlError::During {
        before: before.to_owned(),
        after,
        source: Box::new(err),
    }
}
