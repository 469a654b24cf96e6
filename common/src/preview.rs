//! Preview deploys: the host a preview is served at, its time-to-live bounds, and its password
//! (HTTP basic auth), kept only as an argon2id hash.
//!
//! # Host format
//!
//! A preview of site `www.example.com` with deployment id `d1765148400000k7qa` under
//! `previews.domain` `preview.example.com` is served at
//! `d1765148400000k7qa--www-example-com.preview.example.com`: one DNS label under the wildcard,
//! so a `*.preview.example.com` certificate and DNS record cover every preview.
//!
//! The label is `<id>--<slug>`. The id (18 characters, no `-`) comes first and identifies the
//! preview on its own: control reserves it cluster-wide (`previews/{id}`, created only when
//! absent), so two previews never share a host. The slug is for people: the site's primary
//! domain with every `.` made `-`; when it would push the label past 63 characters it is cut and
//! followed by `-` and 6 hex characters of sha256(domain), so long domains stay distinct to the
//! eye too. Everything up to the first `--` is the id, whatever the slug holds.

use std::time::Duration;

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::ids::InvalidName;

/// A preview's time to live when the request names none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(72 * 3600);
/// The shortest time to live (short enough for tests and quick checks).
pub const MIN_TTL: Duration = Duration::from_secs(5);
/// The longest time to live: a preview is not a second site.
pub const MAX_TTL: Duration = Duration::from_secs(90 * 86_400);
/// The longest password accepted (basic auth credentials travel in one header).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The longest DNS label.
const MAX_LABEL: usize = 63;
/// Hex characters of sha256(domain) appended to a cut slug.
const SLUG_HASH_HEX: usize = 6;

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// The DNS label of a preview: `<id>--<slug>` (see the module docs).
pub fn label(id: &str, site: &str) -> String {
    let slug = site.to_ascii_lowercase().replace('.', "-");
    let budget = MAX_LABEL.saturating_sub(id.len() + 2);
    if slug.len() <= budget {
        return format!("{id}--{slug}");
    }
    let hash = crate::crypto::hex(&crate::crypto::sha256(site.as_bytes()));
    let keep = budget.saturating_sub(SLUG_HASH_HEX + 1);
    let cut = slug[..keep].trim_end_matches('-');
    format!("{id}--{cut}-{}", &hash[..SLUG_HASH_HEX])
}

/// The host of preview `id` of site `site` under `previews_domain`.
pub fn host(id: &str, site: &str, previews_domain: &str) -> String {
    format!("{}.{previews_domain}", label(id, site))
}

/// The deployment id a preview host names, if it is one under `previews_domain`.
pub fn id_of_host<'a>(host: &'a str, previews_domain: &str) -> Option<&'a str> {
    let label = host.strip_suffix(previews_domain)?.strip_suffix('.')?;
    let (id, _) = label.split_once("--")?;
    crate::ids::deployment_id("host", id).ok().map(|_| id)
}

/// Validates a requested time to live (`None`: the default).
pub fn ttl(field: &str, requested: Option<Duration>) -> Result<Duration, InvalidName> {
    let Some(ttl) = requested else {
        return Ok(DEFAULT_TTL);
    };
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(InvalidName::new(
            field,
            format!(
                "{}s is out of bounds: a preview lives between {}s and {} days",
                ttl.as_secs(),
                MIN_TTL.as_secs(),
                MAX_TTL.as_secs() / 86_400
            ),
        ));
    }
    Ok(ttl)
}

/// Validates a requested password (empty: no password).
pub fn password(field: &str, password: &str) -> Result<(), InvalidName> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(InvalidName::new(
            field,
            format!("longer than {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    if password.chars().any(char::is_control) {
        return Err(InvalidName::new(
            field,
            "contains a control character (a trailing newline from a file?)",
        ));
    }
    Ok(())
}

/// argon2id with the OWASP baseline (19 MiB, 2 passes, 1 lane): a guess costs ~20 ms of CPU.
fn argon2() -> Argon2<'static> {
    // The parameters are constants within argon2's bounds.
    #[allow(clippy::expect_used)]
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) of `password`, with a random
/// 16-byte salt. CPU-heavy: call it off the async workers.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| HashError("no randomness for a salt".into()))?;
    argon2()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `password` matches the PHC string `hash` (false for an unreadable hash). The
/// parameters come from the hash itself. CPU-heavy: call it off the async workers.
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    argon2().verify_password(password, hash).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "d1765148400000k7qa";

    #[test]
    fn hosts_are_one_label_and_name_their_id() {
        assert_eq!(
            label(ID, "www.Example.com"),
            format!("{ID}--www-example-com")
        );
        let host = host(ID, "a.test", "preview.example.com");
        assert_eq!(host, format!("{ID}--a-test.preview.example.com"));
        assert_eq!(id_of_host(&host, "preview.example.com"), Some(ID));
        assert_eq!(id_of_host(&host, "other.example.com"), None);
        assert_eq!(
            id_of_host("www.preview.example.com", "preview.example.com"),
            None
        );
        // Long domains are cut and told apart by a hash of the whole name.
        let long_a = format!("{}.a.example.com", "x".repeat(60));
        let long_b = format!("{}.b.example.com", "x".repeat(60));
        let (a, b) = (label(ID, &long_a), label(ID, &long_b));
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b);
        assert!(
            crate::ids::domain("h", &format!("{a}.p.test")).is_ok(),
            "{a}"
        );
        // Dashes in the site's name do not confuse the id.
        let dashed = super::host(ID, "my--site.test", "p.test");
        assert_eq!(id_of_host(&dashed, "p.test"), Some(ID));
    }

    #[test]
    fn ttl_bounds() {
        assert_eq!(ttl("ttl", None).unwrap(), DEFAULT_TTL);
        assert_eq!(
            ttl("ttl", Some(Duration::from_secs(60))).unwrap(),
            Duration::from_secs(60)
        );
        let err = ttl("preview.ttl", Some(Duration::from_secs(1))).unwrap_err();
        assert_eq!(err.field, "preview.ttl");
        assert!(ttl("t", Some(MAX_TTL + Duration::from_secs(1))).is_err());
        assert!(password("p", &"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        assert!(password("p", "secret\n").is_err());
        assert!(password("p", "correct horse: battery").is_ok());
    }

    #[test]
    fn passwords_are_stored_as_argon2id_hashes() {
        let hash = hash_password("hunter2").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("hunter2"));
        assert!(verify_password(&hash, b"hunter2"));
        assert!(!verify_password(&hash, b"hunter3"));
        assert!(!verify_password("not a hash", b"hunter2"));
        // A fresh salt each time.
        assert_ne!(hash, hash_password("hunter2").unwrap());
        // The stored shape: parameters, a 16-byte salt and a 32-byte hash, both unpadded base64.
        let parts: Vec<&str> = hash.split('$').collect();
        assert_eq!(
            parts[..4],
            ["", "argon2id", "v=19", "m=19456,t=2,p=1"],
            "{hash}"
        );
        assert_eq!((parts[4].len(), parts[5].len()), (22, 43), "{hash}");
    }

    #[test]
    fn hashes_stored_before_keep_verifying() {
        // The RFC 9106 reference vector as a PHC string, as earlier releases (argon2 0.5) stored
        // them: the parameters in the string win over the ones new hashes are made with.
        let stored =
            "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4";
        assert!(verify_password(stored, b"password"));
        assert!(!verify_password(stored, b"passwore"));
    }
}
