//! The file backend of the store: one JSON document per directory, written atomically under an
//! exclusive OS file lock, so several processes on one machine can share it.
//!
//! `dir/state.json` holds the revision, the leases, the keys and a bounded log of recent changes
//! (one entry per revision), which watchers poll and from which they can resume. `dir/state.lock`
//! serialises writers. Keys attached to an expired lease count as deleted at once; they are
//! removed (as one revision with delete events) by the next write or by a watcher.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::ops::Bound;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument as _;

use crate::private_files;

use super::{
    Compare, CompareOp, CompareTarget, KeyValue, Snapshot, StoreError, TxnOp, TxnResult,
    WatchBatch, WatchEvent, WatchStream,
};

/// How many revisions the change log keeps by default; a watcher further behind than this gets
/// `Compacted`.
const DEFAULT_CHANGE_LOG_LIMIT: usize = 1000;

/// How often a watcher checks the state file for changes.
const WATCH_POLL: Duration = Duration::from_millis(50);

/// A watcher re-reads the state file at least every this many polls even when its metadata
/// looks unchanged (an inode number can be reused within one timestamp tick).
const WATCH_FORCED_RELOAD_POLLS: u32 = 20;

const STATE_FILE: &str = "state.json";
const TMP_FILE: &str = "state.json.tmp";
const LOCK_FILE: &str = "state.lock";

/// The file backend. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    change_log_limit: usize,
}

/// The whole state document.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct State {
    revision: i64,
    /// The highest revision dropped from `changes`; watching from it or earlier is `Compacted`.
    compacted: i64,
    next_lease: i64,
    leases: BTreeMap<i64, StoredLease>,
    kvs: BTreeMap<String, StoredKv>,
    changes: VecDeque<Change>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredLease {
    ttl_ms: u64,
    expires_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKv {
    /// Base64 of the value bytes.
    value: String,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    #[serde(default)]
    lease: i64,
}

/// Every change made at one revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Change {
    revision: i64,
    events: Vec<StoredEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum StoredEvent {
    Put { key: String, kv: StoredKv },
    Delete { key: String },
}

/// What a watcher last saw of the state file, to skip re-reading an unchanged file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    len: u64,
    mtime_ns: (i64, i64),
    ctime_ns: (i64, i64),
}

impl FileStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        // The state holds (sealed) secrets and the whole desired state: owner only.
        private_files::create_dir(dir)?;
        for file in [STATE_FILE, TMP_FILE, LOCK_FILE] {
            private_files::tighten(&dir.join(file), private_files::FILE_MODE)?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                change_log_limit: DEFAULT_CHANGE_LOG_LIMIT,
            }),
        })
    }

    /// Keeps at most `limit` (at least 1) revisions in the change log when this instance
    /// writes. Mainly for tests of compaction.
    pub fn with_change_log_limit(self, limit: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir: self.inner.dir.clone(),
                change_log_limit: limit.max(1),
            }),
        }
    }

    /// Reads one key.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.read(move |state, now| {
            let kv = state.kvs.get(&key).filter(|kv| state.live(kv, now));
            kv.map(|kv| to_key_value(&key, kv)).transpose()
        })
        .await
    }

    /// Reads every key under `prefix` at one revision, sorted by key.
    pub async fn snapshot(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let prefix = prefix.to_owned();
        self.read(move |state, now| {
            let kvs = state
                .kvs
                .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(&prefix))
                .filter(|(_, kv)| state.live(kv, now))
                .map(|(k, kv)| to_key_value(k, kv))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Snapshot {
                revision: state.revision,
                kvs,
            })
        })
        .await
    }

    /// Applies `ops` atomically if every compare holds.
    pub async fn txn(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<TxnResult, StoreError> {
        self.write(move |state, now| {
            if !compares.iter().all(|c| state.compare_holds(c)) {
                return Ok(TxnResult {
                    succeeded: false,
                    revision: state.revision,
                });
            }
            let revision = state.revision + 1;
            let mut events = Vec::new();
            for op in ops {
                match op {
                    TxnOp::Put { key, value, lease } => {
                        if lease != 0 && !state.lease_alive(lease, now) {
                            return Err(StoreError::Rejected(format!("lease {lease} not found")));
                        }
                        let kv = match state.kvs.get(&key) {
                            Some(old) => StoredKv {
                                value: BASE64.encode(&value),
                                create_revision: old.create_revision,
                                mod_revision: revision,
                                version: old.version + 1,
                                lease,
                            },
                            None => StoredKv {
                                value: BASE64.encode(&value),
                                create_revision: revision,
                                mod_revision: revision,
                                version: 1,
                                lease,
                            },
                        };
                        state.kvs.insert(key.clone(), kv.clone());
                        events.push(StoredEvent::Put { key, kv });
                    }
                    TxnOp::Delete { key } => {
                        if state.kvs.remove(&key).is_some() {
                            events.push(StoredEvent::Delete { key });
                        }
                    }
                    TxnOp::DeletePrefix { prefix } => {
                        let keys: Vec<String> = state
                            .kvs
                            .keys()
                            .filter(|k| k.starts_with(&prefix))
                            .cloned()
                            .collect();
                        for key in keys {
                            state.kvs.remove(&key);
                            events.push(StoredEvent::Delete { key });
                        }
                    }
                }
            }
            state.record(events);
            Ok(TxnResult {
                succeeded: true,
                revision: state.revision,
            })
        })
        .await
    }

    /// Watches every key under `prefix` from `start_revision` (inclusive; 0 or less means from
    /// the next revision). Polls the state file, so writes from other processes are seen too.
    pub async fn watch(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<WatchStream, StoreError> {
        let initial = self.read(|state, _| Ok(state.revision)).await?;
        let next = if start_revision <= 0 {
            initial + 1
        } else {
            start_revision
        };
        let (tx, rx) = mpsc::channel(64);
        let store = self.clone();
        let prefix = prefix.to_owned();
        let span = tracing::info_span!("file_store_watch", prefix = %prefix);
        tokio::spawn(
            async move {
                if let Err(e) = store.watch_loop(&prefix, next, &tx).await {
                    let _ = tx.send(Err(e)).await;
                }
            }
            .instrument(span),
        );
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// Grants a lease that expires `ttl` (at least one second) after its last keep-alive.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1000);
        self.write(move |state, now| {
            state.next_lease = state.next_lease.max(1);
            let id = state.next_lease;
            state.next_lease += 1;
            state.leases.insert(
                id,
                StoredLease {
                    ttl_ms,
                    expires_at_ms: now.saturating_add(ttl_ms),
                },
            );
            Ok(id)
        })
        .await
    }

    /// Refreshes a lease. False when it no longer exists.
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        self.write(move |state, now| {
            // Expired leases were already removed by `write`.
            Ok(match state.leases.get_mut(&lease) {
                Some(l) => {
                    l.expires_at_ms = now.saturating_add(l.ttl_ms);
                    true
                }
                None => false,
            })
        })
        .await
    }

    /// Revokes a lease and deletes its keys (one revision). A lease already gone is fine.
    pub async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        self.write(move |state, _| {
            state.remove_leases(&[lease]);
            Ok(())
        })
        .await
    }

    /// Runs `f` on the current state in a blocking task.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&State, u64) -> Result<T, StoreError> + Send + 'static,
    {
        let dir = self.inner.dir.clone();
        blocking(move || {
            let state = load(&dir)?;
            f(&state, now_ms())
        })
        .await
    }

    /// Runs `f` on the state under the exclusive lock and saves the result when the state
    /// changed. Expired leases are removed first.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut State, u64) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || {
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(private_files::FILE_MODE)
                .open(inner.dir.join(LOCK_FILE))?;
            lock.lock()?;
            let mut state = load(&inner.dir)?;
            let before = serde_json::to_vec(&state).map_err(json_error)?;
            let now = now_ms();
            state.expire_leases(now);
            let result = f(&mut state, now);
            let after_ops = serde_json::to_vec(&state).map_err(json_error)?;
            // On an error nothing from `f` is saved, but lease expiry still is.
            let result = match result {
                Ok(value) => {
                    if after_ops != before {
                        state.trim(inner.change_log_limit);
                        save(&inner.dir, &state)?;
                    }
                    Ok(value)
                }
                Err(e) => {
                    let mut fresh = load(&inner.dir)?;
                    fresh.expire_leases(now);
                    if serde_json::to_vec(&fresh).map_err(json_error)? != before {
                        fresh.trim(inner.change_log_limit);
                        save(&inner.dir, &fresh)?;
                    }
                    Err(e)
                }
            };
            lock.unlock()?;
            result
        })
        .await
    }

    /// Polls the state file and sends one batch per revision from `next` on.
    async fn watch_loop(
        &self,
        prefix: &str,
        mut next: i64,
        tx: &mpsc::Sender<Result<WatchBatch, StoreError>>,
    ) -> Result<(), StoreError> {
        let path = self.inner.dir.join(STATE_FILE);
        let mut last_stamp: Option<FileStamp> = None;
        let mut next_expiry: Option<u64> = None;
        let mut polls_since_reload = u32::MAX;
        let mut interval = tokio::time::interval(WATCH_POLL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = tx.closed() => return Ok(()),
            }
            // Keys on an expired lease are deleted by a write; do it so watchers see it even
            // when nobody else writes.
            let mut force = polls_since_reload >= WATCH_FORCED_RELOAD_POLLS;
            if next_expiry.is_some_and(|at| at <= now_ms()) {
                // A watcher without write access still works; the keys then go at the next
                // write by someone else (reads already hide them).
                if let Err(e) = self.write(|_, _| Ok(())).await {
                    tracing::warn!(error = %e, "cannot remove keys of an expired lease");
                }
                next_expiry = None;
                force = true;
            }
            if !force && file_stamp(&path)? == last_stamp {
                polls_since_reload = polls_since_reload.saturating_add(1);
                continue;
            }
            let (state, stamp) = {
                let dir = self.inner.dir.clone();
                blocking(move || {
                    // Stamp before reading: a change in between is seen on the next poll.
                    let stamp = file_stamp(&dir.join(STATE_FILE))?;
                    Ok((load(&dir)?, stamp))
                })
                .await?
            };
            last_stamp = stamp;
            polls_since_reload = 0;
            next_expiry = state.next_expiry();
            if state.revision < next {
                continue;
            }
            if next <= state.compacted {
                return Err(StoreError::Compacted {
                    requested: next,
                    compact_revision: state.compacted + 1,
                });
            }
            let from = next;
            for change in state.changes.iter().filter(|c| c.revision >= from) {
                let events = change
                    .events
                    .iter()
                    .filter(|e| e.key().starts_with(prefix))
                    .map(|e| e.to_watch_event(change.revision))
                    .collect::<Result<Vec<_>, _>>()?;
                next = change.revision + 1;
                if events.is_empty() {
                    continue;
                }
                let batch = WatchBatch {
                    revision: change.revision,
                    events,
                };
                if tx.send(Ok(batch)).await.is_err() {
                    return Ok(());
                }
            }
            next = next.max(state.revision + 1);
        }
    }
}

impl State {
    /// Whether `kv` is visible at `now` (its lease, if any, has not expired).
    fn live(&self, kv: &StoredKv, now: u64) -> bool {
        kv.lease == 0 || self.lease_alive(kv.lease, now)
    }

    fn lease_alive(&self, lease: i64, now: u64) -> bool {
        self.leases
            .get(&lease)
            .is_some_and(|l| l.expires_at_ms > now)
    }

    /// The earliest expiry of a lease that still has keys.
    fn next_expiry(&self) -> Option<u64> {
        self.kvs
            .values()
            .filter(|kv| kv.lease != 0)
            .filter_map(|kv| self.leases.get(&kv.lease).map(|l| l.expires_at_ms))
            .min()
    }

    /// Removes expired leases and their keys.
    fn expire_leases(&mut self, now: u64) {
        let expired: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires_at_ms <= now)
            .map(|(id, _)| *id)
            .collect();
        // Keys whose lease vanished (should not happen) are dropped too.
        let orphaned = self
            .kvs
            .values()
            .any(|kv| kv.lease != 0 && !self.leases.contains_key(&kv.lease));
        if !expired.is_empty() || orphaned {
            self.remove_leases(&expired);
        }
    }

    /// Removes `leases` and every key attached to them (or to no existing lease), recording
    /// the deletes as one revision.
    fn remove_leases(&mut self, leases: &[i64]) {
        for id in leases {
            self.leases.remove(id);
        }
        let keys: Vec<String> = self
            .kvs
            .iter()
            .filter(|(_, kv)| kv.lease != 0 && !self.leases.contains_key(&kv.lease))
            .map(|(k, _)| k.clone())
            .collect();
        let mut events = Vec::new();
        for key in keys {
            self.kvs.remove(&key);
            events.push(StoredEvent::Delete { key });
        }
        self.record(events);
    }

    /// Records `events` as the next revision (nothing when there are none).
    fn record(&mut self, events: Vec<StoredEvent>) {
        if events.is_empty() {
            return;
        }
        self.revision += 1;
        self.changes.push_back(Change {
            revision: self.revision,
            events,
        });
    }

    /// Drops the oldest changes beyond `limit`.
    fn trim(&mut self, limit: usize) {
        while self.changes.len() > limit {
            if let Some(dropped) = self.changes.pop_front() {
                self.compacted = self.compacted.max(dropped.revision);
            }
        }
    }

    /// etcd's compare semantics; over a range, every present key must satisfy it and an empty
    /// range compares as one absent key.
    fn compare_holds(&self, compare: &Compare) -> bool {
        let targets: Vec<Option<&StoredKv>> = match &compare.range_end {
            None => vec![self.kvs.get(&compare.key)],
            Some(end) => {
                let upper = if end == "\0" {
                    Bound::Unbounded
                } else {
                    Bound::Excluded(end.as_str())
                };
                if matches!(upper, Bound::Excluded(e) if e <= compare.key.as_str()) {
                    vec![None]
                } else {
                    let found: Vec<Option<&StoredKv>> = self
                        .kvs
                        .range::<str, _>((Bound::Included(compare.key.as_str()), upper))
                        .map(|(_, kv)| Some(kv))
                        .collect();
                    if found.is_empty() { vec![None] } else { found }
                }
            }
        };
        targets.into_iter().all(|kv| {
            let (actual, wanted) = match compare.target {
                CompareTarget::CreateRevision(r) => (kv.map_or(0, |kv| kv.create_revision), r),
                CompareTarget::ModRevision(r) => (kv.map_or(0, |kv| kv.mod_revision), r),
                CompareTarget::Version(v) => (kv.map_or(0, |kv| kv.version), v),
            };
            match compare.op {
                CompareOp::Equal => actual == wanted,
                CompareOp::NotEqual => actual != wanted,
                CompareOp::Less => actual < wanted,
                CompareOp::Greater => actual > wanted,
            }
        })
    }
}

impl StoredEvent {
    fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key } => key,
        }
    }

    fn to_watch_event(&self, revision: i64) -> Result<WatchEvent, StoreError> {
        Ok(match self {
            Self::Put { key, kv } => WatchEvent::Put(to_key_value(key, kv)?),
            Self::Delete { key } => WatchEvent::Delete {
                key: key.clone(),
                mod_revision: revision,
            },
        })
    }
}

fn to_key_value(key: &str, kv: &StoredKv) -> Result<KeyValue, StoreError> {
    let value = BASE64.decode(&kv.value).map_err(|e| {
        StoreError::Io(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("state file: value of {key} is not base64: {e}"),
        ))
    })?;
    Ok(KeyValue {
        key: key.to_owned(),
        value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    })
}

/// Reads the state file; a missing file is the empty state.
fn load(dir: &Path) -> Result<State, StoreError> {
    match fs::read(dir.join(STATE_FILE)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::Io(std::io::Error::new(
                ErrorKind::InvalidData,
                format!("{}: {e}", dir.join(STATE_FILE).display()),
            ))
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e.into()),
    }
}

/// Writes the state file atomically and durably: temp file, fsync, rename, fsync the directory.
fn save(dir: &Path, state: &State) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(state).map_err(json_error)?;
    let tmp = dir.join(TMP_FILE);
    // The state holds (sealed) secrets: readable by the owner only.
    let mut file = private_files::create_file(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(STATE_FILE))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn file_stamp(path: &Path) -> Result<Option<FileStamp>, StoreError> {
    use std::os::unix::fs::MetadataExt as _;
    match fs::metadata(path) {
        Ok(meta) => Ok(Some(FileStamp {
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: (meta.mtime(), meta.mtime_nsec()),
            ctime_ns: (meta.ctime(), meta.ctime_nsec()),
        })),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn json_error(e: serde_json::Error) -> StoreError {
    StoreError::Io(std::io::Error::new(ErrorKind::InvalidData, e))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(format!("store task failed: {e}"))))?
}
