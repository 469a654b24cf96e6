//! Console sessions, kept in the store so that every control replica knows every session: a
//! browser signed in on one replica is signed in on all of them, a sign-out on one ends the
//! session on all of them, and a replica's restart signs nobody out.
//!
//! A sign-in makes a random session id and a random session key (256 bits each, from the OS
//! CSPRNG) and writes a [`ConsoleSessionRecord`] under the SHA-256 of the id, holding the key and
//! the expiry, on a store lease that ends with the session. The token is not in the record: the
//! browser's cookie holds the id and the token sealed with the session key (AES-256-GCM,
//! `crypto::SecretBox`), in an `HttpOnly; Secure; SameSite=Strict` cookie. So neither the store
//! nor a copied cookie alone gives the token back, and once the record is gone (sign-out,
//! expiry) the cookie's copy cannot be opened by anyone. Each session's CSRF token is an HMAC of
//! its key, so every replica derives the same one without storing it; it is compared in
//! constant time.
//!
//! Sessions end at their lifetime (`control.console.sessionLifetime`, counted from sign-in), at
//! sign-out, or when the API stops accepting the token (revoked, expired).

use std::time::Duration;

use aws_lc_rs::hmac;
use statiko_common::crypto::{self, SecretBox};
use statiko_common::keys::KeySchema;
use statiko_common::model::{self, ConsoleSessionRecord};
use statiko_common::store::{Compare, Store, StoreError, TxnOp};

/// The session cookie. `__Host-` makes browsers insist on `Secure`, `Path=/` and no `Domain`.
pub(crate) const COOKIE: &str = "__Host-statiko-console";

/// Live sessions the cluster keeps at once; a sign-in beyond it is refused (503) until sessions
/// expire or sign out. Only a valid token can create one.
const MAX_SESSIONS: usize = 10_000;

/// The lease outlives the session by this much, so the record is still there (and says
/// "expired") when the session's last second is checked against a clock a little ahead.
const LEASE_SLACK: Duration = Duration::from_secs(60);

/// What the CSRF token is an HMAC of.
const CSRF_LABEL: &[u8] = b"statiko console csrf v1";

/// One signed-in browser.
#[derive(Clone)]
pub(crate) struct Session {
    /// The token it signed in with, sent as the bearer token of every API call.
    pub(crate) token: String,
    /// What forms carry back.
    pub(crate) csrf: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub(crate) fn csrf_matches(&self, presented: &str) -> bool {
        let (a, b) = (self.csrf.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Why no session was created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CreateError {
    #[error("too many console sessions; try again later")]
    Full,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The sessions in the store.
#[derive(Debug, Clone)]
pub(crate) struct Sessions {
    lifetime: Duration,
    store: Store,
    keys: KeySchema,
    /// [`MAX_SESSIONS`] (smaller in tests).
    max: usize,
}

impl Sessions {
    pub(crate) fn new(lifetime: Duration, store: Store, keys: KeySchema) -> Self {
        Self {
            lifetime,
            store,
            keys,
            max: MAX_SESSIONS,
        }
    }

    pub(crate) fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Starts a session for `token`; returns the cookie value and the session.
    pub(crate) async fn create(&self, token: String) -> Result<(String, Session), CreateError> {
        let now = model::now_ms();
        let live = self
            .store
            .snapshot(&self.keys.console_sessions())
            .await?
            .kvs
            .iter()
            .filter_map(|kv| model::decode::<ConsoleSessionRecord>(&kv.value).ok())
            .filter(|record| record.expires_at > now)
            .count();
        if live >= self.max {
            return Err(CreateError::Full);
        }

        let id = crypto::hex(&random32());
        let key = random32();
        let lease = self.store.grant_lease(self.lifetime + LEASE_SLACK).await?;
        let record = ConsoleSessionRecord {
            key: crypto::hex(&key),
            created_at: now,
            expires_at: now
                .saturating_add(i64::try_from(self.lifetime.as_millis()).unwrap_or(i64::MAX)),
            lease,
        };
        let at = self.record_key(&id);
        let written = self
            .store
            .txn(
                vec![Compare::absent(at.clone())],
                vec![TxnOp::Put {
                    key: at,
                    value: model::encode(&record),
                    lease,
                }],
            )
            .await?;
        if !written.succeeded {
            // Two random 256-bit ids collided: the OS random source is broken.
            return Err(StoreError::unavailable("a console session id was already taken").into());
        }
        let cookie = format!("{id}.{}", SecretBox::new(key).seal(token.as_bytes()));
        Ok((
            cookie,
            Session {
                token,
                csrf: csrf_of(&key),
            },
        ))
    }

    /// The live session this cookie value names: `None` when the value is malformed, the
    /// session is unknown, ended or expired, or the cookie's token does not open with its key.
    pub(crate) async fn get(&self, cookie: &str) -> Result<Option<Session>, StoreError> {
        let Some((id, sealed)) = split(cookie) else {
            return Ok(None);
        };
        let Some(kv) = self.store.get(&self.record_key(id)).await? else {
            return Ok(None);
        };
        let Ok(record) = model::decode::<ConsoleSessionRecord>(&kv.value) else {
            tracing::warn!(key = %kv.key, "an unreadable console session record; ignored");
            return Ok(None);
        };
        if record.expires_at <= model::now_ms() {
            return Ok(None);
        }
        let Ok(key) = crypto::parse_hex32(&record.key) else {
            return Ok(None);
        };
        let token = SecretBox::new(key)
            .open(sealed)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        Ok(token.map(|token| Session {
            token,
            csrf: csrf_of(&key),
        }))
    }

    /// Ends the session this cookie value names, on every replica; an unknown one is fine.
    pub(crate) async fn remove(&self, cookie: &str) -> Result<(), StoreError> {
        let Some((id, _)) = split(cookie) else {
            return Ok(());
        };
        let at = self.record_key(id);
        let lease = match self.store.get(&at).await? {
            Some(kv) => model::decode::<ConsoleSessionRecord>(&kv.value).map_or(0, |r| r.lease),
            None => return Ok(()),
        };
        self.store.txn(vec![], vec![TxnOp::delete(at)]).await?;
        if lease != 0 {
            // The record is gone, which is what ends the session; the lease would only linger
            // until its TTL.
            if let Err(err) = self.store.revoke_lease(lease).await {
                tracing::debug!(%err, "revoking a console session's lease");
            }
        }
        Ok(())
    }

    fn record_key(&self, id: &str) -> String {
        self.keys
            .console_session(&crypto::hex(&crypto::sha256(id.as_bytes())))
    }
}

/// `{id}.{sealed token}` → its parts, if the id is 64 hex characters.
fn split(cookie: &str) -> Option<(&str, &str)> {
    let (id, sealed) = cookie.split_once('.')?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !sealed.is_empty())
        .then_some((id, sealed))
}

fn csrf_of(key: &[u8; 32]) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), CSRF_LABEL);
    crypto::hex(tag.as_ref())
}

/// 32 bytes from the OS CSPRNG (aws-lc-rs).
fn random32() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    // aws-lc-rs's system random only fails when the OS has no entropy source at all; then no
    // session can be safe, and the process must not go on as if it were.
    aws_lc_rs::rand::fill(&mut bytes).expect("the OS random number generator failed");
    bytes
}

/// The session cookie's value in a `Cookie` header value, if any.
pub(crate) fn from_cookies(header: &str) -> Option<&str> {
    header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE && !value.is_empty()).then_some(value)
    })
}

/// The `Set-Cookie` value that stores a session's cookie value for `lifetime`.
pub(crate) fn set_cookie(value: &str, lifetime: Duration) -> String {
    format!(
        "{COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        lifetime.as_secs()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

#[cfg(test)]
mod tests {
    use statiko_common::store::FileStore;

    use super::*;

    fn sessions(dir: &tempfile::TempDir, lifetime: Duration) -> Sessions {
        let store = Store::File(FileStore::open(dir.path()).unwrap());
        Sessions::new(lifetime, store, KeySchema::new("/statiko"))
    }

    #[tokio::test]
    async fn a_session_is_shared_through_the_store_and_ends_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        // Two replicas: two `Sessions` over one store.
        let a = sessions(&dir, Duration::from_secs(60));
        let b = sessions(&dir, Duration::from_secs(60));
        let (cookie, session) = a.create("stk_tok".into()).await.unwrap();
        let seen = b
            .get(&cookie)
            .await
            .unwrap()
            .expect("the other replica knows it");
        assert_eq!(seen.token, "stk_tok");
        assert_eq!(
            seen.csrf, session.csrf,
            "every replica derives the same CSRF token"
        );
        assert_eq!(session.csrf.len(), 64);

        // Neither the store nor the cookie holds the token or the id in the clear.
        let state = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        let (id, sealed) = split(&cookie).unwrap();
        assert!(!state.contains("stk_tok") && !state.contains(id), "{state}");
        assert!(!cookie.contains("stk_tok"));

        // A cookie with another session's sealed token, or a tampered one, opens nothing.
        let (other, _) = a.create("stk_other".into()).await.unwrap();
        let (other_id, other_sealed) = split(&other).unwrap();
        assert!(
            a.get(&format!("{id}.{other_sealed}"))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            a.get(&format!("{other_id}.{sealed}"))
                .await
                .unwrap()
                .is_none()
        );
        let mut tampered = sealed.to_owned().into_bytes();
        let middle = tampered.len() / 2;
        tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
        let tampered = format!("{id}.{}", String::from_utf8(tampered).unwrap());
        assert!(a.get(&tampered).await.unwrap().is_none());
        for bad in [
            "",
            "nope",
            ".",
            "ab.cd",
            &format!("{id}."),
            &format!("{}.x", "z".repeat(64)),
        ] {
            assert!(a.get(bad).await.unwrap().is_none(), "{bad:?}");
        }

        // Sign-out on one replica ends it on the other; removing it twice is fine.
        b.remove(&cookie).await.unwrap();
        assert!(a.get(&cookie).await.unwrap().is_none());
        b.remove(&cookie).await.unwrap();
        assert!(
            a.get(&other).await.unwrap().is_some(),
            "the other session lives on"
        );
    }

    #[tokio::test]
    async fn sign_ins_beyond_the_cap_are_refused_until_one_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut two = sessions(&dir, Duration::from_secs(60));
        two.max = 2;
        let (first, _) = two.create("a".into()).await.unwrap();
        two.create("b".into()).await.unwrap();
        assert!(matches!(
            two.create("c".into()).await,
            Err(CreateError::Full)
        ));
        two.remove(&first).await.unwrap();
        two.create("c".into()).await.unwrap();
    }

    #[tokio::test]
    async fn sessions_expire() {
        let dir = tempfile::tempdir().unwrap();
        let short = sessions(&dir, Duration::ZERO);
        let (cookie, _) = short.create("stk_tok".into()).await.unwrap();
        assert!(
            short.get(&cookie).await.unwrap().is_none(),
            "expired at once"
        );
    }

    #[test]
    fn csrf_compare() {
        let session = Session {
            token: "t".into(),
            csrf: csrf_of(&[7; 32]),
        };
        assert_ne!(session.csrf, csrf_of(&[8; 32]));
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&session.csrf[1..]));
        let mut wrong = session.csrf.clone().into_bytes();
        wrong[0] = if wrong[0] == b'a' { b'b' } else { b'a' };
        assert!(!session.csrf_matches(std::str::from_utf8(&wrong).unwrap()));
    }

    #[test]
    fn cookies() {
        assert_eq!(
            from_cookies("a=b; __Host-statiko-console=abc; c=d"),
            Some("abc")
        );
        assert_eq!(from_cookies("__Host-statiko-console="), None);
        assert_eq!(from_cookies("x-statiko-console=abc"), None);
        let set = set_cookie("abc", Duration::from_secs(3600));
        for part in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Max-Age=3600",
            "Path=/",
        ] {
            assert!(set.contains(part), "{set}");
        }
        assert!(clear_cookie().contains("Max-Age=0"));
    }
}
