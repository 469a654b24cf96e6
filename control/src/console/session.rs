//! Console sessions, kept in this control replica's memory: a sign-in stores the token under a
//! random session id (256 bits from the OS CSPRNG), and the browser only ever holds that id, in
//! an `HttpOnly; Secure; SameSite=Strict` cookie. Each session has its own CSRF token (256 bits)
//! that every form carries back. Sessions end at their lifetime (`control.console.
//! sessionLifetime`, counted from sign-in), at sign-out, when the API stops accepting the token
//! (revoked, expired), or when the replica restarts.
//!
//! The map is keyed by the SHA-256 of the id, so a lookup's timing says nothing about stored
//! ids; the CSRF token is compared in constant time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{SHA256, digest};

/// The session cookie. `__Host-` makes browsers insist on `Secure`, `Path=/` and no `Domain`.
pub(crate) const COOKIE: &str = "__Host-statiko-console";

/// Signed-in sessions one replica keeps at once; a sign-in beyond it is refused (503) until
/// sessions expire or sign out. Only a valid token can create one.
const MAX_SESSIONS: usize = 10_000;

/// One signed-in browser.
#[derive(Clone)]
pub(crate) struct Session {
    /// The token it signed in with, sent as the bearer token of every API call.
    pub(crate) token: String,
    /// What forms carry back.
    pub(crate) csrf: String,
    expires: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("expires", &self.expires)
            .finish_non_exhaustive()
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// The sessions of this replica.
#[derive(Debug)]
pub(crate) struct Sessions {
    lifetime: Duration,
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    pub(crate) fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Starts a session for `token`; returns its id (for the cookie) and the session.
    pub(crate) fn create(&self, token: String) -> Result<(String, Session), Full> {
        let id = random_hex();
        let session = Session {
            token,
            csrf: random_hex(),
            expires: Instant::now() + self.lifetime,
        };
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            let now = Instant::now();
            map.retain(|_, s| s.expires > now);
            if map.len() >= MAX_SESSIONS {
                return Err(Full);
            }
        }
        map.insert(key(&id), session.clone());
        Ok((id, session))
    }

    /// The live session with this id; an expired one is removed and not returned.
    pub(crate) fn get(&self, id: &str) -> Option<Session> {
        let key = key(id);
        let mut map = self.lock();
        match map.get(&key) {
            Some(session) if session.expires > Instant::now() => Some(session.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session with this id, if any.
    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(&key(id));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding the lock cannot leave the map half-updated (one insert or
        // remove), so a poisoned lock is still usable.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn key(id: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, id.as_bytes()).as_ref());
    out
}

/// 32 bytes from the OS CSPRNG (aws-lc-rs), hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    // aws-lc-rs's system random only fails when the OS has no entropy source at all; then no
    // session can be safe, and the process must not go on as if it were.
    aws_lc_rs::rand::fill(&mut bytes).expect("the OS random number generator failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The session id in a `Cookie` header value, if any.
pub(crate) fn id_from_cookies(header: &str) -> Option<&str> {
    header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE && !value.is_empty()).then_some(value)
    })
}

/// The `Set-Cookie` value that stores a session id for `lifetime`.
pub(crate) fn set_cookie(id: &str, lifetime: Duration) -> String {
    format!(
        "{COOKIE}={id}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        lifetime.as_secs()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_end() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (id, session) = sessions.create("tok".into()).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, session.csrf);
        assert_eq!(sessions.get(&id).unwrap().token, "tok");
        assert!(sessions.get("nope").is_none());
        sessions.remove(&id);
        assert!(sessions.get(&id).is_none());

        let short = Sessions::new(Duration::ZERO);
        let (id, _) = short.create("tok".into()).unwrap();
        assert!(short.get(&id).is_none(), "expired at once");
        assert!(
            short.lock().is_empty(),
            "an expired session is dropped when seen"
        );
    }

    #[test]
    fn csrf_compare() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (_, session) = sessions.create("tok".into()).unwrap();
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
            id_from_cookies("a=b; __Host-statiko-console=abc; c=d"),
            Some("abc")
        );
        assert_eq!(id_from_cookies("__Host-statiko-console="), None);
        assert_eq!(id_from_cookies("x-statiko-console=abc"), None);
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
