//! Tokens kept in the store (`tokens/{name}`): a cache of the records that every control replica
//! fills from a snapshot and keeps current with a watch, so a revocation reaches every replica
//! as fast as etcd delivers the event. The store stays the source of truth: while the watch is
//! broken the cache is not trusted and stored tokens are refused with `UNAVAILABLE` (config
//! tokens keep working, so an operator is never locked out).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use statiko_common::crypto;
use statiko_common::keys::KeySchema;
use statiko_common::model::{self, TokenRecord};
use statiko_common::store::{Compare, KeyValue, Store, TxnOp, WatchEvent};
use tokio_util::sync::CancellationToken;

use super::scope::Scope;
use super::{AuthError, Caller, sha256};

/// "Last used" is written at most this often per token and replica.
const LAST_USED_EVERY_MS: i64 = 60_000;
/// Pause before re-reading the tokens after the watch broke.
const RESYNC_DELAY: Duration = Duration::from_millis(200);
/// Prefix of every generated secret, so a leaked one is recognisable (e.g. by secret scanners).
pub(crate) const SECRET_PREFIX: &str = "stk_";

/// A stored token as the cache keeps it.
#[derive(Debug, Clone)]
struct Entry {
    record: TokenRecord,
    scope: Scope,
}

#[derive(Debug, Default)]
struct Inner {
    /// By the SHA-256 of the secret.
    by_digest: RwLock<HashMap<[u8; 32], Entry>>,
    /// True while the cache reflects the store (snapshot loaded and watch running).
    synced: AtomicBool,
    /// When this replica last wrote each token's "last used".
    last_recorded: Mutex<HashMap<String, i64>>,
}

/// The watched cache of stored tokens; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct StoredTokens {
    inner: Arc<Inner>,
    store: Option<(Store, KeySchema)>,
}

/// A fresh secret: 256 bits from the operating system's CSPRNG, hex, with a recognisable prefix.
pub(crate) fn generate_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the random number generator failed"))?;
    Ok(format!("{SECRET_PREFIX}{}", crypto::hex(&bytes)))
}

/// `sha256:<hex>` of a secret, as stored.
pub(crate) fn digest_of(secret: &str) -> crypto::Digest {
    crypto::Digest::from(sha256(secret.as_bytes()))
}

fn entry(record: TokenRecord) -> Option<([u8; 32], Entry)> {
    let digest = *record.digest.bytes();
    let scope = Scope::parse("scope", &record.scope).ok()?;
    Some((digest, Entry { record, scope }))
}

impl StoredTokens {
    /// No stored tokens (unit tests, and nothing but config tokens).
    pub(crate) fn disabled() -> Self {
        Self {
            inner: Arc::default(),
            store: None,
        }
    }

    /// Starts the watch of `tokens/`; the cache is trusted once the first snapshot is loaded.
    pub(crate) fn watch(store: Store, keys: KeySchema, shutdown: CancellationToken) -> Self {
        let tokens = Self {
            inner: Arc::default(),
            store: Some((store, keys)),
        };
        tokio::spawn(tokens.clone().follow(shutdown));
        tokens
    }

    async fn follow(self, shutdown: CancellationToken) {
        let Some((store, keys)) = self.store.clone() else {
            return;
        };
        let prefix = keys.tokens();
        while !shutdown.is_cancelled() {
            let result = tokio::select! {
                result = self.sync_once(&store, &prefix) => result,
                () = shutdown.cancelled() => return,
            };
            self.inner.synced.store(false, Ordering::SeqCst);
            if let Err(err) = result {
                tracing::warn!(error = %err, "token watch broken; stored tokens refused until it resumes");
            }
            tokio::select! {
                () = tokio::time::sleep(RESYNC_DELAY) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Loads a snapshot and applies the watch until it breaks.
    async fn sync_once(&self, store: &Store, prefix: &str) -> Result<(), String> {
        let snapshot = store.snapshot(prefix).await.map_err(|e| e.to_string())?;
        let mut watch = store
            .watch(prefix, snapshot.revision + 1)
            .await
            .map_err(|e| e.to_string())?;
        let map = snapshot.kvs.iter().filter_map(decode).collect();
        *self.write() = map;
        self.inner.synced.store(true, Ordering::SeqCst);
        tracing::debug!(revision = snapshot.revision, "stored tokens loaded");
        while let Some(batch) = watch.next().await {
            let batch = batch.map_err(|e| e.to_string())?;
            let mut map = self.write();
            for event in batch.events {
                match event {
                    WatchEvent::Put(kv) => {
                        let name = kv.key.rsplit('/').next().unwrap_or_default().to_owned();
                        map.retain(|_, e| e.record.name != name);
                        map.extend(decode(&kv));
                    }
                    WatchEvent::Delete { key, .. } => {
                        let name = key.rsplit('/').next().unwrap_or_default();
                        map.retain(|_, e| e.record.name != name);
                    }
                }
            }
        }
        Err("the watch ended".into())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<[u8; 32], Entry>> {
        self.inner
            .by_digest
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes a token created by this replica usable here at once (others follow their watch).
    pub(crate) fn remember(&self, record: TokenRecord) {
        if let Some((digest, entry)) = entry(record) {
            let mut map = self.write();
            map.retain(|_, e| e.record.name != entry.record.name);
            map.insert(digest, entry);
        }
    }

    /// Makes a revoked token unusable here at once (others follow their watch).
    pub(crate) fn forget(&self, name: &str) {
        self.write().retain(|_, e| e.record.name != name);
    }

    /// The caller for a presented secret's digest, if it is a stored token. A `HashMap` lookup
    /// is not constant-time, but what it could leak is about a SHA-256 digest of a 256-bit
    /// random secret, which does not help anyone guess a secret.
    pub(crate) fn authenticate(&self, digest: &[u8; 32]) -> Result<Option<Caller>, AuthError> {
        if self.store.is_none() {
            return Ok(None);
        }
        if !self.inner.synced.load(Ordering::SeqCst) {
            return Err(AuthError::StoredTokensUnavailable);
        }
        let found = self
            .inner
            .by_digest
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(digest)
            .cloned();
        let Some(entry) = found else { return Ok(None) };
        let now = model::now_ms();
        if let Some(expires_at) = entry.record.expires_at
            && expires_at <= now
        {
            return Err(AuthError::Expired(entry.record.name));
        }
        self.record_use(&entry.record.name, now);
        Ok(Some(Caller {
            name: entry.record.name.clone(),
            role: entry.record.role,
            scope: entry.scope,
        }))
    }

    /// Writes "last used" in the background, at most once a minute per token on this replica.
    fn record_use(&self, name: &str, now: i64) {
        let Some((store, keys)) = self.store.clone() else {
            return;
        };
        {
            let mut last = self
                .inner
                .last_recorded
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match last.get(name) {
                Some(at) if now - at < LAST_USED_EVERY_MS => return,
                _ => last.insert(name.to_owned(), now),
            };
        }
        let key = keys.token(name);
        tokio::spawn(async move {
            // A token revoked or rewritten meanwhile is left alone (the compare fails).
            let Ok(Some(kv)) = store.get(&key).await else {
                return;
            };
            let Ok(mut record) = model::decode::<TokenRecord>(&kv.value) else {
                return;
            };
            record.last_used_at = Some(now);
            let put = TxnOp::put(key.clone(), model::encode(&record));
            if let Err(err) = store
                .txn(
                    vec![Compare::unchanged_since(&key, kv.mod_revision)],
                    vec![put],
                )
                .await
            {
                tracing::debug!(error = %err, "last-used not recorded");
            }
        });
    }
}

fn decode(kv: &KeyValue) -> Option<([u8; 32], Entry)> {
    match model::decode::<TokenRecord>(&kv.value) {
        Ok(record) => {
            let decoded = entry(record);
            if decoded.is_none() {
                tracing::warn!(key = %kv.key, "ignoring a token record with a bad digest or scope");
            }
            decoded
        }
        Err(err) => {
            tracing::warn!(key = %kv.key, error = %err, "ignoring an unreadable token record");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_only_their_digest_is_kept() {
        let a = generate_secret().expect("secret");
        let b = generate_secret().expect("secret");
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(a.len(), SECRET_PREFIX.len() + 64);
        let digest = digest_of(&a);
        assert!(!digest.to_string().contains(&a[SECRET_PREFIX.len()..]));
        assert_eq!(digest.bytes(), &sha256(a.as_bytes()));
        // Stored as `sha256:<hex>`, the JSON the records had when the digest was a string.
        let json = serde_json::to_string(&digest).expect("json");
        assert_eq!(
            json,
            format!("\"sha256:{}\"", crypto::hex(&sha256(a.as_bytes())))
        );
    }
}
