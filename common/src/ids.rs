//! Validation of the names users choose: domains, app names and versions, certificate and node names.
//!
//! Every name that ends up inside a store key is validated here, so a key can never contain `/`
//! or any character outside a small ASCII set.

use std::fmt;

/// Most characters of a bad input quoted in an error message.
pub const QUOTE_CHARS: usize = 64;

/// `raw` fit for an error message: Debug-quoted and, past [`QUOTE_CHARS`] characters, cut
/// short with `…` and its full length, so that a huge input never makes a huge message (gRPC
/// carries it in a header; a 200 KB name must give `INVALID_ARGUMENT`, not a framing error).
pub fn quoted(raw: &str) -> String {
    match raw.char_indices().nth(QUOTE_CHARS) {
        None => format!("{raw:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &raw[..cut], raw.len()),
    }
}

/// A name that failed validation; `field` is the request field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidName {
    pub field: String,
    pub reason: String,
}

impl InvalidName {
    pub fn new(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

/// Normalises and validates a DNS name: lowercased, one trailing dot dropped, LDH labels of 1 to 63
/// characters, 253 characters at most, no wildcard. Internationalised names must be given in
/// punycode (`xn--`).
pub fn domain(field: &str, raw: &str) -> Result<String, InvalidName> {
    let name = raw
        .trim()
        .strip_suffix('.')
        .unwrap_or(raw.trim())
        .to_ascii_lowercase();
    let bad = |reason: String| {
        Err(InvalidName::new(
            field,
            format!("invalid domain {}: {reason}", quoted(raw)),
        ))
    };
    if name.is_empty() {
        return bad("empty".into());
    }
    if name.len() > 253 {
        return bad("longer than 253 characters".into());
    }
    if name == "_default" {
        return bad("reserved name".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("empty label".into());
        }
        if label.len() > 63 {
            return bad(format!(
                "label {} is longer than 63 characters",
                quoted(label)
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return bad(format!("character {c:?} is not allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad(format!("label {} starts or ends with '-'", quoted(label)));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return bad("an IP address is not a domain".into());
    }
    Ok(name)
}

/// App and certificate names: `^[a-z][a-z0-9.-]{0,62}$` (as in the original Statiko).
pub fn name(field: &str, raw: &str) -> Result<String, InvalidName> {
    let bad = |reason: &str| {
        Err(InvalidName::new(
            field,
            format!("invalid name {}: {reason}", quoted(raw)),
        ))
    };
    let mut chars = raw.chars();
    match chars.next() {
        None => return bad("empty"),
        Some(c) if !c.is_ascii_lowercase() => return bad("must start with a lowercase letter"),
        Some(_) => {}
    }
    if raw.len() > 63 {
        return bad("longer than 63 characters");
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.') {
        return bad("only a-z, 0-9, '.' and '-' are allowed");
    }
    Ok(raw.to_owned())
}

/// App versions: `^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$` (semver fits).
pub fn version(field: &str, raw: &str) -> Result<String, InvalidName> {
    let bad = |reason: &str| {
        Err(InvalidName::new(
            field,
            format!("invalid version {}: {reason}", quoted(raw)),
        ))
    };
    let mut chars = raw.chars();
    match chars.next() {
        None => return bad("empty"),
        Some(c) if !c.is_ascii_alphanumeric() => return bad("must start with a letter or digit"),
        Some(_) => {}
    }
    if raw.len() > 64 {
        return bad("longer than 64 characters");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '_' | '-')) {
        return bad("only letters, digits, '.', '+', '_' and '-' are allowed");
    }
    Ok(raw.to_owned())
}

/// Node names: like domains without the IP rule (`edge-1`, `host01.dc1`).
pub fn node_name(field: &str, raw: &str) -> Result<String, InvalidName> {
    let bad = |reason: &str| {
        Err(InvalidName::new(
            field,
            format!("invalid node name {}: {reason}", quoted(raw)),
        ))
    };
    if raw.is_empty() {
        return bad("empty");
    }
    if raw.len() > 253 {
        return bad("longer than 253 characters");
    }
    if !raw
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return bad("only letters, digits, '.', '-' and '_' are allowed");
    }
    Ok(raw.to_owned())
}

/// A new deployment id: `d`, the creation time as 13 decimal digits of Unix milliseconds, then 4
/// random base32 characters (`d1733600000000k7qa`). Ids sort by creation time as strings, are
/// lowercase DNS-label safe, and two deploys in the same millisecond almost never collide (the
/// create transaction requires the key to be absent anyway).
pub fn new_deployment_id(now_ms: i64) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut random = [0u8; 4];
    // A failing system RNG leaves zeros: the id is still unique by time in practice.
    let _ = aws_lc_rs::rand::fill(&mut random);
    let suffix: String = random
        .iter()
        .map(|b| ALPHABET[usize::from(b % 32)] as char)
        .collect();
    format!("d{:013}{suffix}", now_ms.clamp(0, 9_999_999_999_999))
}

/// Deployment ids as made by [`new_deployment_id`].
pub fn deployment_id(field: &str, raw: &str) -> Result<String, InvalidName> {
    let raw = raw.trim();
    let valid = raw.len() == 18
        && raw.starts_with('d')
        && raw[1..14].bytes().all(|b| b.is_ascii_digit())
        && raw[14..]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
    if !valid {
        return Err(InvalidName::new(
            field,
            format!(
                "invalid deployment id {raw:?}: expected d, 13 digits and 4 letters (see `stk deploy history`)"
            ),
        ));
    }
    Ok(raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_ids() {
        let a = new_deployment_id(1_733_600_000_000);
        let b = new_deployment_id(1_733_600_000_001);
        assert!(a < b, "{a} {b}");
        assert_eq!(deployment_id("to", &a).as_deref(), Ok(a.as_str()));
        assert!(domain("f", &format!("{a}.example.com")).is_ok());
        let err = deployment_id("to", "d123").unwrap_err();
        assert_eq!(err.field, "to");
        assert!(deployment_id("to", "D1733600000000abcd").is_err());
        assert!(deployment_id("to", "d1733600000000ab/d").is_err());
    }

    #[track_caller]
    fn check_domain(raw: &str, expected: Option<&str>) {
        assert_eq!(domain("f", raw).ok().as_deref(), expected, "{raw}");
    }

    #[test]
    fn domains() {
        check_domain("Example.COM", Some("example.com"));
        check_domain("www.example.com.", Some("www.example.com"));
        check_domain("xn--bcher-kva.example", Some("xn--bcher-kva.example"));
        check_domain("localhost", Some("localhost"));
        check_domain("", None);
        check_domain("a..b", None);
        check_domain("-a.com", None);
        check_domain("a-.com", None);
        check_domain("*.example.com", None);
        check_domain("exa mple.com", None);
        check_domain("a/b.com", None);
        check_domain("_default", None);
        check_domain("10.0.0.1", None);
        check_domain(&format!("{}.com", "a".repeat(64)), None);
        check_domain(&format!("{}.com", "a.".repeat(130)), None);
    }

    #[test]
    fn names_and_versions() {
        assert!(name("n", "web").is_ok());
        assert!(name("n", "my-app.v2").is_ok());
        assert!(name("n", "Web").is_err());
        assert!(name("n", "1web").is_err());
        assert!(name("n", "we/b").is_err());
        assert!(name("n", "").is_err());
        assert!(version("v", "1.4.0").is_ok());
        assert!(version("v", "1.4.0-rc.1+build_7").is_ok());
        assert!(version("v", "../1").is_err());
        assert!(version("v", "1/2").is_err());
        assert!(version("v", "").is_err());
        let err = domain("aliases[1]", "a..b").unwrap_err();
        assert_eq!(err.field, "aliases[1]");
        assert!(err.to_string().starts_with("aliases[1]: invalid domain"));
    }

    #[test]
    fn bad_inputs_are_quoted_short() {
        assert_eq!(quoted("web"), "\"web\"");
        assert_eq!(quoted(&"a".repeat(QUOTE_CHARS)).len(), QUOTE_CHARS + 2);
        let huge = "é".repeat(100_000);
        let shown = quoted(&huge);
        assert!(
            shown.starts_with(&format!("\"{}\"…", "é".repeat(QUOTE_CHARS))),
            "{shown}"
        );
        assert!(shown.ends_with("(200000 bytes)"), "{shown}");
        for err in [
            domain("domain", &"a".repeat(200_000)).unwrap_err(),
            domain("domain", &format!("{}.com", "b".repeat(200_000))).unwrap_err(),
            name("name", &"w".repeat(200_000)).unwrap_err(),
            version("version", &"1".repeat(200_000)).unwrap_err(),
            node_name("node", &"n".repeat(200_000)).unwrap_err(),
        ] {
            let message = err.to_string();
            assert!(message.len() < 300, "{} bytes: {message}", message.len());
            assert!(message.contains("…"), "{message}");
        }
    }
}
