//! `_redirects` in a bundle's root: parsing, validation (every error names its line) and the
//! compiled rules the edge matches per request.
//!
//! # Syntax
//!
//! The format Netlify introduced and Cloudflare Pages and GitLab Pages adopted; Statiko
//! follows Netlify's semantics where the three differ:
//!
//! ```text
//! # comments start with "#", alone or after the fields
//! /old-page        /new-page                 # 301 by default
//! /blog/:year/*    /posts/:year/:splat  302  # named placeholders and a splat
//! /docs/*          https://docs.example.com/:splat 308
//! /app/*           /app/index.html      200  # rewrite inside the bundle
//! /gone            /410.html            410  # serve the target with that status
//! /moved/*         /new/:splat          301! # "!" forces the rule even over a file
//! ```
//!
//! One rule per line: `from to [status][!]`, fields separated by spaces or tabs. `from` is a
//! [`path_pattern`](crate::path_pattern) (`:name` placeholders, a trailing `*`); `to` is a path
//! or, for a redirect, an absolute `http://` or `https://` URL; it may use `from`'s
//! placeholders and `:splat`. Statuses: 301 (the default), 302, 303, 307 and 308 redirect; 200
//! rewrites to a path inside the bundle (the browser's URL does not change); 404 and 410 serve
//! the target with that status. Without `!`, a rule applies only when the request path does
//! not resolve to a file of the bundle (Netlify's "shadowing"); with `!` it always applies.
//! Rules apply in file order, first match wins; the request's query string is passed on to a
//! redirect's `Location`.
//!
//! Refused, with the line number and the reason: domain-level rules (a `from` URL), query or
//! condition fields (`id=:id`, `Country=us`), a 200 to an absolute URL (that would make
//! Statiko a proxy to another origin), a 200/404/410 target with `..` or a query (it must stay
//! inside the bundle), placeholders `to` uses but `from` does not define, a forced redirect
//! whose target its own `from` matches (it would always loop), and files over the size limits
//! below.
//!
//! A rule without `!` whose target its own `from` matches (`/docs/* /docs/ 301`) is fine while
//! the target exists (the file shadows the rule); when it does not, the target would be
//! answered by the same rule again, so [`Redirects::find`] answers [`Outcome::Loop`] (the edge
//! serves its not-found answer) instead of a redirect the browser would follow forever. A loop
//! across several rules (A to B, B to A) is not detected; the edge never follows a redirect
//! itself, so it costs the browser a few round trips and no server work.

use crate::path_pattern::{Match, Pattern, Router, is_name};

#[cfg(test)]
mod tests;

/// A `_redirects` file larger than this is refused.
pub const MAX_REDIRECTS_LEN: usize = 4 * 1024 * 1024;
/// Most rules in one `_redirects` file.
pub const MAX_RULES: usize = 20_000;
/// Longest line of a `_redirects` or `_headers` file, in bytes.
pub const MAX_LINE_LEN: usize = 2048;

/// Why a `_redirects` or `_headers` file was refused: `_redirects line 3: unknown status 399`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct SiteFileError {
    /// `_redirects` or `_headers`.
    pub file: &'static str,
    /// One-based; `None` for an error about the whole file.
    pub line: Option<usize>,
    pub message: String,
}

impl SiteFileError {
    pub fn at(file: &'static str, line: usize, message: impl Into<String>) -> Self {
        Self {
            file,
            line: Some(line),
            message: message.into(),
        }
    }
}

/// Checks a whole file's size and encoding, and gives its lines with their numbers (comments,
/// blank lines and over-long lines included, for the caller to judge).
pub(crate) fn text_of<'a>(
    file: &'static str,
    bytes: &'a [u8],
    max_len: usize,
) -> Result<&'a str, SiteFileError> {
    if bytes.len() > max_len {
        return Err(SiteFileError {
            file,
            line: None,
            message: format!(
                "the file is {} bytes, over the {max_len}-byte limit",
                bytes.len()
            ),
        });
    }
    std::str::from_utf8(bytes).map_err(|err| {
        let line = 1 + bytes[..err.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        SiteFileError::at(file, line, "not valid UTF-8")
    })
}

/// Refuses a line over [`MAX_LINE_LEN`].
pub(crate) fn check_line(
    file: &'static str,
    number: usize,
    line: &str,
) -> Result<(), SiteFileError> {
    if line.len() > MAX_LINE_LEN {
        return Err(SiteFileError::at(
            file,
            number,
            format!(
                "the line is {} bytes, over the {MAX_LINE_LEN}-byte limit",
                line.len()
            ),
        ));
    }
    Ok(())
}

const FILE: &str = "_redirects";

/// The bundle-root files control validates at upload, with their size caps (for
/// `archive::check_upload`).
pub const ROUTING_FILES: [(&str, usize); 2] = [
    (FILE, MAX_REDIRECTS_LEN),
    ("_headers", crate::headers_file::MAX_HEADERS_LEN),
];

/// Validates the `_redirects` and `_headers` among `files` (name, content) as staging will,
/// so a bundle the edges would refuse is refused at upload, with the line.
pub fn check_routing_files(files: &[(String, Vec<u8>)]) -> Result<(), SiteFileError> {
    for (name, bytes) in files {
        match name.as_str() {
            FILE => drop(Redirects::parse(bytes)?),
            "_headers" => drop(crate::headers_file::HeaderRules::parse(bytes)?),
            _ => {}
        }
    }
    Ok(())
}

/// A validated, compiled `_redirects`.
#[derive(Debug, Default)]
pub struct Redirects {
    rules: Vec<Rule>,
    /// Every rule.
    all: Router,
    /// The forced rules only, for a path that resolves to a file.
    forced: Router,
}

/// One rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// One-based line in the file.
    pub line: usize,
    pub status: u16,
    pub force: bool,
    /// A redirect whose target its own pattern matches (checked per request, see the module
    /// docs).
    may_loop: bool,
    target: Target,
}

#[derive(Debug, Clone)]
enum Target {
    /// A path: inside the bundle for 200/404/410 (decoded text), or a redirect's `Location`
    /// (as written, non-ASCII percent-encoded).
    Path(Vec<Part>),
    /// An absolute URL: the literal `scheme://authority`, then the rest.
    Url { origin: String, rest: Vec<Part> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// A placeholder, by its position in `from`.
    Placeholder(usize),
    Splat,
}

/// What a matching rule asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answer `status` with this `Location` (query string included).
    Redirect { status: u16, location: String },
    /// Serve this path of the bundle instead (decoded, starts with `/`), with a 200.
    Rewrite { path: String },
    /// Serve this path of the bundle with `status` (404 or 410).
    Serve { status: u16, path: String },
    /// The rule would redirect to a URL it answers again: answer "not found" instead.
    Loop,
}

impl Redirects {
    /// Parses and validates a `_redirects` file.
    pub fn parse(bytes: &[u8]) -> Result<Self, SiteFileError> {
        let text = text_of(FILE, bytes, MAX_REDIRECTS_LEN)?;
        let mut redirects = Redirects::default();
        for (i, line) in text.lines().enumerate() {
            let number = i + 1;
            check_line(FILE, number, line)?;
            let fields: Vec<&str> = line
                .split_whitespace()
                .take_while(|field| !field.starts_with('#'))
                .collect();
            if fields.is_empty() {
                continue;
            }
            if line.chars().any(|c| c.is_control() && c != '\t') {
                return Err(SiteFileError::at(
                    FILE,
                    number,
                    "control characters are not allowed",
                ));
            }
            if redirects.rules.len() == MAX_RULES {
                return Err(SiteFileError::at(
                    FILE,
                    number,
                    format!("more than {MAX_RULES} rules"),
                ));
            }
            let (pattern, rule) = parse_rule(number, &fields)
                .map_err(|message| SiteFileError::at(FILE, number, message))?;
            let index = redirects.rules.len();
            redirects.all.insert(&pattern, index);
            if rule.force {
                redirects.forced.insert(&pattern, index);
            }
            redirects.rules.push(rule);
        }
        Ok(redirects)
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule that applies to `path` (decoded, normalised) and what it asks for. `exists`
    /// says whether a path (decoded) resolves to a file of the bundle; it is asked only when
    /// the first matching rule is not forced. `query` is the request's query string, passed on
    /// to a redirect.
    pub fn find(
        &self,
        path: &str,
        query: Option<&str>,
        exists: impl Fn(&str) -> bool,
    ) -> Option<(&Rule, Outcome)> {
        let found = self.applying(path, &exists)?;
        let rule = &self.rules[found.index];
        if rule.may_loop
            && let Target::Path(parts) = &rule.target
        {
            let target = expand(parts, &found, true);
            let target = target.split(['?', '#']).next().unwrap_or_default();
            let target = percent_decode(target).unwrap_or_else(|| target.to_owned());
            if self
                .applying(&target, &exists)
                .is_some_and(|again| again.index == found.index)
            {
                return Some((rule, Outcome::Loop));
            }
        }
        Some((rule, rule.outcome(&found, query)))
    }

    /// The first rule that applies to `path`: the first match, or the first forced one when
    /// the path is a file.
    fn applying<'p>(&self, path: &'p str, exists: &impl Fn(&str) -> bool) -> Option<Match<'p>> {
        let found = self.all.first(path)?;
        if self.rules[found.index].force || !exists(path) {
            Some(found)
        } else {
            self.forced.first(path)
        }
    }
}

impl Rule {
    fn outcome(&self, found: &Match<'_>, query: Option<&str>) -> Outcome {
        match &self.target {
            Target::Path(parts) if matches!(self.status, 200 | 404 | 410) => {
                let path = expand(parts, found, false);
                if self.status == 200 {
                    Outcome::Rewrite { path }
                } else {
                    Outcome::Serve {
                        status: self.status,
                        path,
                    }
                }
            }
            Target::Path(parts) => Outcome::Redirect {
                status: self.status,
                location: with_query(expand(parts, found, true), query),
            },
            Target::Url { origin, rest } => {
                let mut location = origin.clone();
                location.push_str(&expand(rest, found, true));
                Outcome::Redirect {
                    status: self.status,
                    location: with_query(location, query),
                }
            }
        }
    }
}

/// Builds a target; `encode` percent-encodes the substituted values (for a `Location`).
fn expand(parts: &[Part], found: &Match<'_>, encode: bool) -> String {
    let mut out = String::new();
    for part in parts {
        let value = match part {
            Part::Literal(text) => {
                out.push_str(text);
                continue;
            }
            Part::Placeholder(i) => found.placeholders.get(*i).copied().unwrap_or_default(),
            Part::Splat => found.splat.unwrap_or_default(),
        };
        if encode {
            percent_encode(value, &mut out);
        } else {
            out.push_str(value);
        }
    }
    out
}

/// Appends the request's query to `location` (before any fragment; after the target's own
/// query with `&`).
fn with_query(mut location: String, query: Option<&str>) -> String {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return location;
    };
    let fragment = location.find('#').map(|at| location.split_off(at));
    location.push(if location.contains('?') { '&' } else { '?' });
    location.push_str(query);
    if let Some(fragment) = fragment {
        location.push_str(&fragment);
    }
    location
}

/// Percent-encodes everything but unreserved characters, `/` and the sub-delimiters a path
/// keeps (RFC 3986 `pchar`): a path as it goes into a `Location` header. The edge's own
/// redirects (slashes, aliases, pretty URLs) use it too.
pub fn percent_encode(value: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'/' | b'-'
                    | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            )
        {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

fn parse_rule(line: usize, fields: &[&str]) -> Result<(Pattern, Rule), String> {
    let from = fields[0];
    if from.contains("://") {
        return Err(format!(
            "{from:?}: domain rules are not supported; \"from\" must be a path (Statiko already redirects aliases and plain HTTP to the primary domain)"
        ));
    }
    let pattern = Pattern::parse(from).map_err(|reason| format!("from {reason}"))?;
    let Some(&to) = fields.get(1) else {
        return Err(format!(
            "{from:?} has no target: expected \"from to [status][!]\""
        ));
    };
    if let Some(extra) = fields.get(3) {
        return Err(format!(
            "unexpected field {extra:?}: only \"from to [status][!]\" is supported (no query or condition matching)"
        ));
    }
    let (status, force) = match fields.get(2) {
        None => (301, false),
        Some(&field) => parse_status(field)?,
    };
    let internal = matches!(status, 200 | 404 | 410);
    let target = if to.starts_with("http://") || to.starts_with("https://") {
        if internal {
            return Err(if status == 200 {
                format!(
                    "200 to {to:?} would proxy to another origin, and Statiko is not a proxy: use a 301, 302, 307 or 308 redirect, or a path inside the bundle"
                )
            } else {
                format!(
                    "a {status} rule serves a file of the bundle: its target must be a path, not {to:?}"
                )
            });
        }
        let after_scheme = to.find("://").map_or(0, |at| at + 3);
        let origin_end = to[after_scheme..]
            .find(['/', '?', '#'])
            .map_or(to.len(), |at| after_scheme + at);
        if origin_end == after_scheme {
            return Err(format!("target {to:?} has no host"));
        }
        Target::Url {
            origin: ascii(&to[..origin_end]),
            rest: parse_parts(&to[origin_end..], &pattern)?,
        }
    } else if to.starts_with("//") {
        return Err(format!(
            "target {to:?} must be a path starting with a single \"/\" or an absolute http(s) URL"
        ));
    } else if to.starts_with('/') {
        if internal {
            if to.contains(['?', '#']) {
                return Err(format!(
                    "a {status} target is a file of the bundle: {to:?} cannot carry a query string or fragment"
                ));
            }
            let decoded = percent_decode(to)
                .ok_or_else(|| format!("target {to:?} has invalid percent-encoding"))?;
            if decoded
                .split('/')
                .any(|segment| matches!(segment, "." | ".."))
                || decoded.contains(['\\', '\0'])
            {
                return Err(format!(
                    "target {to:?} leaves the bundle: \".\" and \"..\" segments are not allowed"
                ));
            }
            Target::Path(parse_parts(&decoded, &pattern)?)
        } else {
            Target::Path(parse_parts(&ascii(to), &pattern)?)
        }
    } else {
        return Err(format!(
            "target {to:?} must be a path starting with \"/\" or an absolute http(s) URL"
        ));
    };
    let mut rule = Rule {
        line,
        status,
        force,
        may_loop: false,
        target,
    };
    if !internal && let Target::Path(parts) = &rule.target {
        // The target with every placeholder and the splat filled in: when the rule's own
        // pattern matches it, each answer would redirect to a URL answered the same way.
        let sample: String = parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => text.as_str(),
                Part::Placeholder(_) | Part::Splat => "x",
            })
            .collect();
        let sample_path = sample.split(['?', '#']).next().unwrap_or_default();
        let decoded = percent_decode(sample_path).unwrap_or_else(|| sample_path.to_owned());
        if pattern.matches(&decoded) {
            if force {
                return Err(format!(
                    "{from:?} redirects to {to:?}, which the same forced rule matches again: a redirect loop"
                ));
            }
            rule.may_loop = true;
        }
    }
    Ok((pattern, rule))
}

/// `301`, `302!`, `!` (the default status, forced).
fn parse_status(field: &str) -> Result<(u16, bool), String> {
    let (code, force) = match field.strip_suffix('!') {
        Some(code) => (code, true),
        None => (field, false),
    };
    if code.is_empty() {
        return Ok((301, force));
    }
    match code.parse::<u16>() {
        Ok(status @ (200 | 301 | 302 | 303 | 307 | 308 | 404 | 410)) => Ok((status, force)),
        Ok(status) => Err(format!(
            "unsupported status {status} (expected 301, 302, 303, 307, 308, 200, 404 or 410)"
        )),
        Err(_) => Err(format!(
            "unexpected field {field:?}: expected a status such as 301 or 200!, (query and condition matching are not supported)"
        )),
    }
}

/// Splits a target into literal text, `:placeholder`s of `pattern` and `:splat`.
fn parse_parts(target: &str, pattern: &Pattern) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = target;
    while let Some(colon) = rest.find(':') {
        literal.push_str(&rest[..colon]);
        let after = &rest[colon + 1..];
        let len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let name = &after[..len];
        if !is_name(name) {
            literal.push(':');
            rest = after;
            continue;
        }
        let part = if name == "splat" {
            if !pattern.splat {
                return Err(format!(
                    "target {target:?} uses \":splat\" but from has no \"*\""
                ));
            }
            Part::Splat
        } else {
            Part::Placeholder(pattern.placeholder_index(name).ok_or_else(|| {
                format!("target uses \":{name}\", which is not a placeholder of from")
            })?)
        };
        if !literal.is_empty() {
            parts.push(Part::Literal(std::mem::take(&mut literal)));
        }
        parts.push(part);
        rest = &after[len..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(parts)
}

/// Non-ASCII bytes percent-encoded, so a `Location` is always a valid header.
fn ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0; 4];
            for &b in c.encode_utf8(&mut buf).as_bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` when malformed or not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
