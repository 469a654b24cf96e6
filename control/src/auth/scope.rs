//! A deployer token's scope: exact domains and `*.suffix` patterns, validated once when the token
//! is created and matched against a request's domain and the domains of the site it names.

use std::fmt;

use statiko_common::ids::{self, InvalidName};

/// One entry of a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// Exactly this domain.
    Exact(String),
    /// Any name ending in `.{suffix}` (any depth), not `suffix` itself.
    Suffix(String),
}

/// The domains a deployer token may act on. Empty for admin and read-only tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Scope {
    patterns: Vec<Pattern>,
}

impl Scope {
    /// Parses and normalises (lowercase, no trailing dot) the patterns of a scope; `field` names
    /// the request field in errors (`scope[1]: ...`).
    pub(crate) fn parse(field: &str, raw: &[String]) -> Result<Self, InvalidName> {
        let patterns = raw
            .iter()
            .enumerate()
            .map(|(i, pattern)| parse_pattern(&format!("{field}[{i}]"), pattern))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { patterns })
    }

    /// The patterns as stored (normalised).
    pub(crate) fn to_strings(&self) -> Vec<String> {
        self.patterns.iter().map(Pattern::to_string).collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `domain` (already normalised) is named by the scope.
    pub(crate) fn allows(&self, domain: &str) -> bool {
        self.patterns.iter().any(|p| match p {
            Pattern::Exact(exact) => domain == exact,
            Pattern::Suffix(suffix) => domain
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        })
    }
}

fn parse_pattern(field: &str, raw: &str) -> Result<Pattern, InvalidName> {
    let trimmed = raw.trim();
    if let Some(suffix) = trimmed.strip_prefix("*.") {
        if suffix.contains('*') {
            return Err(InvalidName::new(
                field,
                format!("invalid pattern {raw:?}: '*' may only be the whole first label"),
            ));
        }
        let suffix = ids::domain(field, suffix)?;
        return Ok(Pattern::Suffix(suffix));
    }
    if trimmed.contains('*') {
        return Err(InvalidName::new(
            field,
            format!(
                "invalid pattern {raw:?}: '*' may only be the whole first label, as in \"*.example.com\""
            ),
        ));
    }
    Ok(Pattern::Exact(ids::domain(field, trimmed)?))
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(domain) => f.write_str(domain),
            Self::Suffix(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_strings().join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(patterns: &[&str]) -> Scope {
        let raw: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        Scope::parse("scope", &raw).expect("valid scope")
    }

    #[test]
    fn matching() {
        let s = scope(&["*.team-a.test", "Team-C.test."]);
        assert!(s.allows("www.team-a.test"));
        assert!(s.allows("a.b.team-a.test"));
        assert!(!s.allows("team-a.test"));
        assert!(!s.allows("xteam-a.test"));
        assert!(!s.allows("team-b.test"));
        assert!(s.allows("team-c.test"));
        assert!(!s.allows("www.team-c.test"));
        assert_eq!(s.to_string(), "*.team-a.test, team-c.test");
        assert!(!Scope::default().allows("team-a.test"));
    }

    #[test]
    fn malformed_patterns_name_the_field() {
        for bad in [
            "a.*.test",
            "*",
            "*.",
            "**.a.test",
            "*.*.a.test",
            "a b.test",
            "",
        ] {
            let err =
                Scope::parse("scope", &["ok.test".to_owned(), bad.to_owned()]).expect_err(bad);
            assert_eq!(err.field, "scope[1]", "{bad}");
        }
    }
}
