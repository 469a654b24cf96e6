//! One store interface with two backends: `etcd` (clusters) and `file` (a single node, no etcd).
//!
//! The interface is etcd's data model, reduced to what Statiko needs: revisions, a consistent
//! snapshot of a prefix, multi-key transactions guarded by compares, a watch from a revision, and
//! leases for liveness keys. Both backends pass the same test suite (`common/tests/store.rs`).

mod etcd;
mod file;

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;

pub use self::etcd::EtcdStore;
pub use self::file::FileStore;

/// A stored key and its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision at which the key was created (0 never appears for a present key).
    pub create_revision: i64,
    /// Revision of the last change to the key.
    pub mod_revision: i64,
    /// Number of changes since creation (1 after the create).
    pub version: i64,
    /// Lease the key is attached to, 0 when none.
    pub lease: i64,
}

/// Every key under a prefix, read at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The store revision the snapshot was read at; watch from `revision + 1`.
    pub revision: i64,
    /// Sorted by key.
    pub kvs: Vec<KeyValue>,
}

/// What a compare looks at. A key that does not exist has create, mod revision and version 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareTarget {
    CreateRevision(i64),
    ModRevision(i64),
    Version(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// A transaction guard over one key, or over every key in `[key, range_end)`. Over a range, the
/// compare holds when it holds for every key present, and an empty range compares as one absent
/// key (etcd's rule), so "no key in the range changed after revision R" is
/// `ModRevision(R + 1)` with `Less`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub range_end: Option<String>,
    pub target: CompareTarget,
    pub op: CompareOp,
}

impl Compare {
    /// The key does not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            range_end: None,
            target: CompareTarget::CreateRevision(0),
            op: CompareOp::Equal,
        }
    }

    /// The key exists.
    pub fn present(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            range_end: None,
            target: CompareTarget::CreateRevision(0),
            op: CompareOp::Greater,
        }
    }

    /// The key was last changed at exactly `revision`.
    pub fn unchanged_since(key: impl Into<String>, revision: i64) -> Self {
        Self {
            key: key.into(),
            range_end: None,
            target: CompareTarget::ModRevision(revision),
            op: CompareOp::Equal,
        }
    }

    /// No key under `prefix` was created or changed after `revision`.
    pub fn prefix_unchanged_since(prefix: &str, revision: i64) -> Self {
        Self {
            key: prefix.to_owned(),
            range_end: Some(crate::keys::prefix_end(prefix)),
            target: CompareTarget::ModRevision(revision + 1),
            op: CompareOp::Less,
        }
    }
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: String,
        value: Vec<u8>,
        /// Attach the key to this lease (0: none).
        lease: i64,
    },
    Delete {
        key: String,
    },
    /// Deletes every key starting with `prefix`.
    DeletePrefix {
        prefix: String,
    },
}

impl TxnOp {
    pub fn put(key: impl Into<String>, value: Vec<u8>) -> Self {
        Self::Put {
            key: key.into(),
            value,
            lease: 0,
        }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        Self::Delete { key: key.into() }
    }

    /// The key (or prefix) this operation writes.
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key } => key,
            Self::DeletePrefix { prefix } => prefix,
        }
    }

    /// Roughly what it adds to a request: its key and value.
    fn size(&self) -> usize {
        match self {
            Self::Put { key, value, .. } => key.len() + value.len(),
            Self::Delete { key } => key.len(),
            Self::DeletePrefix { prefix } => prefix.len(),
        }
    }
}

/// The most one transaction may carry (see [`Store::txn_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnLimits {
    /// Writes per transaction.
    pub ops: usize,
    /// Bytes of keys and values per transaction (a single larger write still goes alone).
    pub bytes: usize,
}

impl TxnLimits {
    /// Within etcd's defaults (128 operations, 1.5 MiB a request), with room for the compares
    /// and the few writes a caller adds to each batch.
    pub const ETCD_DEFAULT: Self = Self {
        ops: 100,
        bytes: 1 << 20,
    };
    /// No limit (the file store).
    pub const UNBOUNDED: Self = Self {
        ops: usize::MAX,
        bytes: usize::MAX,
    };

    /// Splits `ops` in order into batches that each fit these limits.
    pub fn split(&self, ops: Vec<TxnOp>) -> Vec<Vec<TxnOp>> {
        let mut batches: Vec<Vec<TxnOp>> = Vec::new();
        let mut bytes = 0usize;
        for op in ops {
            let size = op.size();
            match batches.last_mut() {
                Some(batch)
                    if batch.len() < self.ops && bytes.saturating_add(size) <= self.bytes =>
                {
                    bytes = bytes.saturating_add(size);
                    batch.push(op);
                }
                _ => {
                    bytes = size;
                    batches.push(vec![op]);
                }
            }
        }
        batches
    }
}

/// Outcome of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held and the ops were applied.
    pub succeeded: bool,
    /// Store revision after the transaction (unchanged when it did not succeed or wrote nothing).
    pub revision: i64,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, mod_revision: i64 },
}

/// Every change made at one store revision, delivered together so a watcher can apply a revision
/// as one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    pub revision: i64,
    pub events: Vec<WatchEvent>,
}

/// A stream of watch batches in revision order. It ends with an error when the watch breaks
/// (connection lost, `Compacted`); the caller takes a new snapshot or resumes from its revision.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchBatch, StoreError>> + Send>>;

/// What went wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached, or did not answer within the configured timeout. The
    /// message reads alone (it quotes the cause); the cause is kept as the error's source.
    #[error("state store unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The requested watch revision was compacted away; reload from a snapshot.
    #[error("revision {requested} was compacted (compact revision {compact_revision})")]
    Compacted {
        requested: i64,
        compact_revision: i64,
    },
    /// The store refused the request (too many operations, bad configuration, ...).
    #[error("state store refused the request: {0}")]
    Rejected(String),
    #[error("state store I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// [`StoreError::Unavailable`] with no underlying error (a timeout, a closed stream).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// [`StoreError::Unavailable`] caused by `source`.
    pub fn unavailable_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// The store, either backend. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Store {
    Etcd(EtcdStore),
    File(FileStore),
}

impl Store {
    /// Opens the backend chosen by `state.store`. The etcd backend connects lazily, so a control
    /// replica starts even while etcd is down and answers `UNAVAILABLE` until it is back.
    pub async fn open(config: &crate::config::StateConfig) -> Result<Self, StoreError> {
        match config.store {
            crate::config::StoreKind::Etcd => {
                Ok(Self::Etcd(EtcdStore::connect(&config.etcd).await?))
            }
            crate::config::StoreKind::File => Ok(Self::File(FileStore::open(&config.file.path)?)),
        }
    }

    /// Reads one key.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        match self {
            Self::Etcd(s) => s.get(key).await,
            Self::File(s) => s.get(key).await,
        }
    }

    /// Reads every key under `prefix` at one revision.
    pub async fn snapshot(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        match self {
            Self::Etcd(s) => s.snapshot(prefix).await,
            Self::File(s) => s.snapshot(prefix).await,
        }
    }

    /// How many writes one transaction may carry on this backend: etcd refuses a transaction
    /// of more than `--max-txn-ops` operations (default 128) or a request over
    /// `--max-request-bytes` (default 1.5 MiB); the file store has no limit.
    pub fn txn_limits(&self) -> TxnLimits {
        match self {
            Self::Etcd(_) => TxnLimits::ETCD_DEFAULT,
            Self::File(_) => TxnLimits::UNBOUNDED,
        }
    }

    /// Applies `ops` atomically if every compare holds.
    pub async fn txn(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<TxnResult, StoreError> {
        match self {
            Self::Etcd(s) => s.txn(compares, ops).await,
            Self::File(s) => s.txn(compares, ops).await,
        }
    }

    /// Watches every key under `prefix`, starting at `start_revision` (inclusive).
    pub async fn watch(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<WatchStream, StoreError> {
        match self {
            Self::Etcd(s) => s.watch(prefix, start_revision).await,
            Self::File(s) => s.watch(prefix, start_revision).await,
        }
    }

    /// Grants a lease that expires `ttl` after its last keep-alive.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        match self {
            Self::Etcd(s) => s.grant_lease(ttl).await,
            Self::File(s) => s.grant_lease(ttl).await,
        }
    }

    /// Refreshes a lease. Returns false when the lease no longer exists (it expired or was revoked).
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        match self {
            Self::Etcd(s) => s.keep_alive(lease).await,
            Self::File(s) => s.keep_alive(lease).await,
        }
    }

    /// Revokes a lease and deletes every key attached to it.
    pub async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        match self {
            Self::Etcd(s) => s.revoke_lease(lease).await,
            Self::File(s) => s.revoke_lease(lease).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_order_and_fits_both_limits() {
        let limits = TxnLimits { ops: 3, bytes: 10 };
        let ops = vec![
            TxnOp::put("a", vec![0; 2]),
            TxnOp::delete("b"),
            TxnOp::put("c", vec![0; 2]),
            TxnOp::put("d", vec![0; 2]),
            TxnOp::put("e", vec![0; 20]),
            TxnOp::delete("f"),
        ];
        let batches = limits.split(ops.clone());
        let keys: Vec<Vec<&str>> = batches
            .iter()
            .map(|batch| batch.iter().map(TxnOp::key).collect())
            .collect();
        // Three ops per batch at most; "e" alone exceeds the bytes and goes alone.
        assert_eq!(keys, [vec!["a", "b", "c"], vec!["d"], vec!["e"], vec!["f"]]);
        assert_eq!(batches.concat(), ops);
        assert_eq!(TxnLimits::UNBOUNDED.split(ops.clone()), vec![ops]);
        assert!(TxnLimits::ETCD_DEFAULT.split(Vec::new()).is_empty());
    }
}
