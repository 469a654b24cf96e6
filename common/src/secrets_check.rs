//! The start-up check of `secretsEncryptionKey`: a known constant is sealed under
//! `{root}/v1/meta/secrets-check` at the first start, and every start opens it. A wrong key or a
//! missing one (while the cluster has sealed secrets) stops the process with a clear message,
//! instead of failing later on each private key. A store that cannot be reached skips the check
//! (an edge must start and serve its local copy while etcd is down).

use crate::crypto::{self, SecretBox};
use crate::keys::KeySchema;
use crate::store::{Compare, Store, StoreError, TxnOp};

const CHECK_VALUE: &[u8] = b"statiko secrets check v1";

/// Why the configured key cannot be used with this cluster.
#[derive(Debug, thiserror::Error)]
pub enum SecretsCheckError {
    #[error(
        "secretsEncryptionKey is not configured, but this cluster's secrets are sealed with key id {0}; configure the cluster's key"
    )]
    Missing(String),
    #[error(
        "secretsEncryptionKey (key id {configured}) does not open this cluster's secrets (sealed with key id {sealed}); configure the cluster's key"
    )]
    WrongKey { configured: String, sealed: String },
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Checks (and on first use records) that `secrets` opens this cluster's secrets.
pub async fn verify(
    store: &Store,
    keys: &KeySchema,
    secrets: Option<&SecretBox>,
) -> Result<(), SecretsCheckError> {
    let key = keys.secrets_check();
    let existing = store.get(&key).await?;
    match (existing, secrets) {
        (None, None) => Ok(()),
        (None, Some(secrets)) => {
            let put = TxnOp::put(key.clone(), secrets.seal(CHECK_VALUE).into_bytes());
            let result = store
                .txn(vec![Compare::absent(key.clone())], vec![put])
                .await?;
            if result.succeeded {
                tracing::info!(key_id = secrets.key_id(), "recorded the secrets key check");
                return Ok(());
            }
            // Another process recorded it first: check against theirs.
            Box::pin(verify(store, keys, Some(secrets))).await
        }
        (Some(kv), None) => {
            let sealed = String::from_utf8_lossy(&kv.value).into_owned();
            Err(SecretsCheckError::Missing(
                crypto::sealed_key_id(&sealed).unwrap_or("?").to_owned(),
            ))
        }
        (Some(kv), Some(secrets)) => {
            let sealed = String::from_utf8_lossy(&kv.value).into_owned();
            match secrets.open(&sealed) {
                Ok(plain) if plain == CHECK_VALUE => Ok(()),
                _ => Err(SecretsCheckError::WrongKey {
                    configured: secrets.key_id().to_owned(),
                    sealed: crypto::sealed_key_id(&sealed).unwrap_or("?").to_owned(),
                }),
            }
        }
    }
}

/// Runs [`verify`] at start: a store error is only logged; a key problem is returned.
pub async fn verify_at_start(
    store: &Store,
    keys: &KeySchema,
    secrets: Option<&SecretBox>,
) -> Result<(), SecretsCheckError> {
    match verify(store, keys, secrets).await {
        Err(SecretsCheckError::Store(err)) => {
            tracing::warn!(error = %err, "secrets key not checked: the store is unavailable");
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_start_records_then_checks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::File(crate::store::FileStore::open(dir.path()).unwrap());
        let keys = KeySchema::new("/statiko");
        verify(&store, &keys, None).await.unwrap();
        let good = SecretBox::new([1; 32]);
        verify(&store, &keys, Some(&good)).await.unwrap();
        verify(&store, &keys, Some(&good)).await.unwrap();
        let bad = SecretBox::new([2; 32]);
        assert!(matches!(
            verify(&store, &keys, Some(&bad)).await,
            Err(SecretsCheckError::WrongKey { .. })
        ));
        assert!(matches!(
            verify(&store, &keys, None).await,
            Err(SecretsCheckError::Missing(_))
        ));
    }
}
