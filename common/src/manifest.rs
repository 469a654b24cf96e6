//! The app manifest, `_statiko.yaml` in a bundle's root: its serde model, its validation (every
//! error names the offending key, e.g. `rules[3].options.clientCaching: invalid duration "5x"`)
//! and its compiled form, built once per deploy so that a request never parses YAML or compiles
//! a regex.
//!
//! # Format
//!
//! Compatible with the original Statiko manifest:
//!
//! ```yaml
//! rules:
//!   - exact: /about.html            # one matcher per rule: exact, prefix, match or file
//!     options:
//!       headers: {X-Frame-Options: DENY}
//!   - prefix: /private/
//!     options: {deny: true}         # answers 404
//!   - match: '\.(?:map|bak)$'       # a regex, case-insensitive unless `caseSensitive: true`
//!     caseSensitive: false
//!     options: {deny: true}
//!   - file: js,css                  # extensions, or a group: _images, _videos, _audios, _fonts
//!     options: {clientCaching: 1M}  # Cache-Control max-age, Expires and Pragma
//! rewrite:                          # internal rewrites, tried in order; $1..$9 are captures
//!   '^/blog/(.*)$': /posts/$1
//! page404: 404.html                 # custom error pages from the bundle (a leading / is optional)
//! page403: 403.html
//! spa: true                         # an addition: single-page-app fallback to /index.html
//! conventions:                      # an addition: see `crate::conventions` (all default on)
//!   prettyUrls: false
//! ```
//!
//! Rule indexes in messages are zero-based (`rules[0]` is the first rule). Unknown keys are
//! errors, so a typo or an option Statiko does not support (such as the original's `proxy`)
//! fails the deploy instead of being silently ignored.
//!
//! # Precedence
//!
//! The options of exactly one rule apply to a request path, chosen as nginx chose locations:
//!
//! 1. an `exact` rule equal to the path;
//! 2. the longest `prefix` rule the path starts with (other than `/`); like nginx's `^~`, a
//!    matching prefix stops the search;
//! 3. the first `match` rule, in manifest order, whose regex matches;
//! 4. a `file` rule listing the path's extension;
//! 5. the `prefix: /` rule, which the original rendered as nginx's plain `location /`, the
//!    fallback when no regex location matches.
//!
//! When two rules have the same matcher (the same exact path, prefix or extension), the later
//! one wins, as a duplicated nginx location did in the original.

use std::collections::HashMap;
use std::fmt;

use http::header::{HeaderName, HeaderValue};
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// A manifest larger than this is refused.
pub const MAX_MANIFEST_LEN: usize = 1024 * 1024;

/// The manifest's file name in the bundle root. The edge reads it and never serves it.
pub const MANIFEST_FILE: &str = "_statiko.yaml";
/// Cached lifetimes are capped here, the largest `max-age` RFC 9111 §1.2.2 asks caches to keep
/// (2^31 seconds, about 68 years).
pub const MAX_CACHE_AGE: u64 = 1 << 31;

/// The extension groups of `file:` rules, as in the original.
pub const IMAGES: &[&str] = &[
    "jpg", "jpeg", "png", "gif", "ico", "svg", "svgz", "webp", "tif", "tiff", "dng", "psd", "heif",
    "bmp",
];
pub const VIDEOS: &[&str] = &[
    "mp4", "m4v", "mkv", "webm", "avi", "mpg", "mpeg", "ogg", "wmv", "flv", "mov",
];
pub const AUDIOS: &[&str] = &["mp3", "mp4", "aac", "m4a", "flac", "wav", "ogg", "wma"];
pub const FONTS: &[&str] = &["woff", "woff2", "eot", "otf", "ttf"];

/// Response headers a manifest may not set: hop-by-hop headers and the ones that frame the
/// body, which the server owns.
const FORBIDDEN_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-range",
    "upgrade",
    "te",
    "trailer",
];

const PRAGMA_PUBLIC: HeaderValue = HeaderValue::from_static("public");

/// Why a manifest was refused. The message names the offending key and is shown in node status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is {len} bytes, over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// Not YAML, or not the expected shape (unknown key, wrong type).
    #[error("{0}")]
    Syntax(String),
    /// A value that does not validate; `path` is the key, e.g. `rules[2].match`.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// A validated, compiled manifest. Matching allocates nothing.
#[derive(Debug, Default)]
pub struct Manifest {
    /// The options of every rule, by manifest index.
    options: Vec<RuleOptions>,
    exact: HashMap<String, usize>,
    /// Prefixes other than `/`, longest first.
    prefixes: Vec<(String, usize)>,
    /// The `prefix: /` rule, tried last.
    root_prefix: Option<usize>,
    /// Every `match` regex, for a one-pass "does any match" check.
    regex_set: Option<RegexSet>,
    /// The same regexes in manifest order, to find the first that matches.
    regexes: Vec<(Regex, usize)>,
    /// Lowercase extension to rule.
    extensions: HashMap<String, usize>,
    rewrites: Vec<Rewrite>,
    rewrite_set: Option<RegexSet>,
    page404: Option<String>,
    page403: Option<String>,
    spa: bool,
    conventions: Option<crate::conventions::Settings>,
}

/// What a matching rule does to a response.
#[derive(Debug, Clone, Default)]
pub struct RuleOptions {
    /// Headers to set, replacing any the server set with the same name.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub client_caching: Option<ClientCaching>,
    /// Answer 404, as if the path did not exist.
    pub deny: bool,
}

/// `clientCaching`: `Cache-Control: max-age=N, public`, `Expires: now + N` and `Pragma: public`.
#[derive(Debug, Clone)]
pub struct ClientCaching {
    /// Seconds, at most [`MAX_CACHE_AGE`].
    pub max_age: u64,
    /// `max-age=N, public`, the form the original's nginx configuration produced.
    pub cache_control: HeaderValue,
}

/// One compiled `rewrite` entry.
#[derive(Debug)]
struct Rewrite {
    regex: Regex,
    target: Vec<Part>,
}

/// A piece of a rewrite target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Group(usize),
}

impl Manifest {
    /// The manifest of a bundle from its file's bytes (`len` bytes in all; `bytes` may stop at
    /// [`MAX_MANIFEST_LEN`] + 1): at most that long, UTF-8, valid. The error is the reason shown
    /// after "invalid app manifest _statiko.yaml: ", by control at upload and edges at staging.
    pub fn from_bundle_file(bytes: &[u8], len: u64) -> Result<Self, String> {
        if len > MAX_MANIFEST_LEN as u64 {
            return Err(format!(
                "it is {len} bytes, over the {MAX_MANIFEST_LEN}-byte limit"
            ));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "it is not valid UTF-8".to_owned())?;
        Self::parse(text).map_err(|e| e.to_string())
    }

    /// The files the manifest names must be in the bundle: the error pages, and `index.html`
    /// for the single-page-app fallback. `exists` is asked for bundle-relative paths.
    pub fn check_files(&self, exists: impl Fn(&str) -> bool) -> Result<(), String> {
        let exists = |url_path: &str| {
            let rel = url_path.trim_start_matches('/');
            rel != MANIFEST_FILE && exists(rel)
        };
        for (key, page) in [("page404", self.page404()), ("page403", self.page403())] {
            if let Some(page) = page
                && !exists(page)
            {
                return Err(format!("{key}: {page:?} is not in the bundle"));
            }
        }
        if self.spa() && !exists("/index.html") {
            return Err("spa: the bundle has no index.html to fall back to".into());
        }
        Ok(())
    }

    /// Parses, validates and compiles a manifest. An empty document is an empty manifest.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        if text.len() > MAX_MANIFEST_LEN {
            return Err(ManifestError::TooLarge {
                len: text.len(),
                max: MAX_MANIFEST_LEN,
            });
        }
        let raw: Option<RawManifest> = deserialize(text)?;
        Self::compile(raw.unwrap_or_default())
    }

    /// The options of the rule that applies to `path` (decoded, normalised, with its trailing
    /// slash if the request had one), per the precedence in the module docs.
    pub fn options_for(&self, path: &str) -> Option<&RuleOptions> {
        self.matching_rule(path).map(|index| &self.options[index])
    }

    /// The manifest index of the rule that applies to `path`.
    pub fn matching_rule(&self, path: &str) -> Option<usize> {
        if let Some(&index) = self.exact.get(path) {
            return Some(index);
        }
        if let Some((_, index)) = self
            .prefixes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
        {
            return Some(*index);
        }
        if let Some(set) = &self.regex_set
            && set.is_match(path)
            && let Some((_, index)) = self.regexes.iter().find(|(regex, _)| regex.is_match(path))
        {
            return Some(*index);
        }
        if !self.extensions.is_empty()
            && let Some(ext) = extension(path)
        {
            let found = if ext.bytes().any(|b| b.is_ascii_uppercase()) {
                self.extensions.get(&ext.to_ascii_lowercase())
            } else {
                self.extensions.get(ext)
            };
            if let Some(&index) = found {
                return Some(index);
            }
        }
        self.root_prefix
    }

    /// Applies the first `rewrite` whose regex matches `path`: the new path (captures
    /// expanded, any query dropped), or `None` when no rewrite matches. Rewrites run once per
    /// request, like nginx's server-level `rewrite ... last`: the result is not rewritten
    /// again.
    pub fn rewrite(&self, path: &str) -> Option<String> {
        let set = self.rewrite_set.as_ref()?;
        if !set.is_match(path) {
            return None;
        }
        self.rewrites.iter().find_map(|rewrite| {
            let captures = rewrite.regex.captures(path)?;
            let mut out = String::with_capacity(path.len() + 16);
            for part in &rewrite.target {
                match part {
                    Part::Literal(text) => out.push_str(text),
                    Part::Group(n) => out.push_str(captures.get(*n).map_or("", |m| m.as_str())),
                }
            }
            if let Some(query) = out.find('?') {
                out.truncate(query);
            }
            Some(out)
        })
    }

    /// The custom 404 page's URL path (`/404.html`), if any.
    pub fn page404(&self) -> Option<&str> {
        self.page404.as_deref()
    }

    /// The custom 403 page's URL path, if any.
    pub fn page403(&self) -> Option<&str> {
        self.page403.as_deref()
    }

    /// Whether unknown navigation paths fall back to `/index.html`.
    pub fn spa(&self) -> bool {
        self.spa
    }

    /// The `conventions` key, when the manifest has one.
    pub fn conventions(&self) -> Option<&crate::conventions::Settings> {
        self.conventions.as_ref()
    }

    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        self.options.len()
    }

    fn compile(raw: RawManifest) -> Result<Self, ManifestError> {
        let mut manifest = Manifest {
            spa: raw.spa.unwrap_or(false),
            conventions: raw.conventions,
            ..Manifest::default()
        };
        let mut set_patterns = Vec::new();
        for (index, rule) in raw.rules.unwrap_or_default().into_iter().enumerate() {
            let at = format!("rules[{index}]");
            let matchers = [
                rule.exact.is_some(),
                rule.prefix.is_some(),
                rule.regex.is_some(),
                rule.file.is_some(),
            ];
            if matchers.iter().filter(|&&m| m).count() != 1 {
                return Err(invalid(
                    &at,
                    "a rule needs exactly one of exact, prefix, match or file",
                ));
            }
            if rule.case_sensitive.is_some() && rule.regex.is_none() {
                return Err(invalid(
                    &format!("{at}.caseSensitive"),
                    "applies only to match rules",
                ));
            }
            manifest
                .options
                .push(compile_options(&at, rule.options.unwrap_or_default())?);
            if let Some(path) = rule.exact {
                check_path(&format!("{at}.exact"), &path)?;
                manifest.exact.insert(path, index);
            } else if let Some(prefix) = rule.prefix {
                check_path(&format!("{at}.prefix"), &prefix)?;
                if prefix == "/" {
                    manifest.root_prefix = Some(index);
                } else if let Some(slot) = manifest.prefixes.iter_mut().find(|(p, _)| *p == prefix)
                {
                    slot.1 = index;
                } else {
                    manifest.prefixes.push((prefix, index));
                }
            } else if let Some(pattern) = rule.regex {
                let case_insensitive = !rule.case_sensitive.unwrap_or(false);
                let regex = RegexBuilder::new(&pattern)
                    .case_insensitive(case_insensitive)
                    .build()
                    .map_err(|err| invalid(&format!("{at}.match"), &regex_message(&err)))?;
                // A leading `(?i)` applies to the whole pattern, alternations included, so the
                // set matches exactly what the individual regex matches.
                set_patterns.push(if case_insensitive {
                    format!("(?i){pattern}")
                } else {
                    pattern
                });
                manifest.regexes.push((regex, index));
            } else if let Some(file) = rule.file {
                for ext in parse_extensions(&format!("{at}.file"), &file.0)? {
                    manifest.extensions.insert(ext, index);
                }
            }
        }
        manifest
            .prefixes
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        if !set_patterns.is_empty() {
            let set = RegexSetBuilder::new(&set_patterns)
                .build()
                .map_err(|err| invalid("rules", &regex_message(&err)))?;
            manifest.regex_set = Some(set);
        }

        let mut rewrite_patterns = Vec::new();
        for (pattern, target) in raw.rewrite.map(|m| m.0).unwrap_or_default() {
            let at = format!("rewrite[{pattern:?}]");
            let regex = Regex::new(&pattern).map_err(|err| invalid(&at, &regex_message(&err)))?;
            let target = parse_target(&target.0, regex.captures_len())
                .map_err(|message| invalid(&at, &message))?;
            rewrite_patterns.push(pattern);
            manifest.rewrites.push(Rewrite { regex, target });
        }
        if !rewrite_patterns.is_empty() {
            let set = RegexSet::new(&rewrite_patterns)
                .map_err(|err| invalid("rewrite", &regex_message(&err)))?;
            manifest.rewrite_set = Some(set);
        }

        manifest.page404 = raw
            .page404
            .map(|page| page_path("page404", &page.0))
            .transpose()?;
        manifest.page403 = raw
            .page403
            .map(|page| page_path("page403", &page.0))
            .transpose()?;
        Ok(manifest)
    }
}

impl RuleOptions {
    /// Whether these options set `Content-Encoding` (the file is stored encoded, so the server
    /// must not pick a compressed variant of its own).
    pub fn sets_content_encoding(&self) -> bool {
        self.headers
            .iter()
            .any(|(name, _)| name == http::header::CONTENT_ENCODING)
    }

    /// `Pragma: public`, sent with `clientCaching` as the original did.
    pub fn pragma(&self) -> HeaderValue {
        PRAGMA_PUBLIC
    }
}

fn invalid(path: &str, message: &str) -> ManifestError {
    ManifestError::Invalid {
        path: path.to_owned(),
        message: message.to_owned(),
    }
}

/// The extension of the last path segment (after its last dot), if any.
pub fn extension(path: &str) -> Option<&str> {
    let segment = path.rsplit('/').next().unwrap_or(path);
    let (_, ext) = segment.rsplit_once('.')?;
    (!ext.is_empty()).then_some(ext)
}

/// The one-line cause of a regex error (the crate's own message spans several lines).
fn regex_message(err: &regex::Error) -> String {
    match err {
        regex::Error::Syntax(text) => {
            let cause = text
                .lines()
                .find_map(|line| line.strip_prefix("error: "))
                .unwrap_or("syntax error");
            format!("invalid regex: {cause}")
        }
        regex::Error::CompiledTooBig(_) => "regex is too large".to_owned(),
        other => format!("invalid regex: {other}"),
    }
}

fn check_path(at: &str, path: &str) -> Result<(), ManifestError> {
    if !path.starts_with('/') {
        return Err(invalid(at, &format!("{path:?} must start with \"/\"")));
    }
    Ok(())
}

/// `js`, `.js`, `jpg,png`, `_images`, or a mix: the lowercase extensions.
fn parse_extensions(at: &str, value: &str) -> Result<Vec<String>, ManifestError> {
    let mut out = Vec::new();
    for item in value.split(',') {
        let item = item.trim();
        let group = match item {
            "_images" => Some(IMAGES),
            "_videos" => Some(VIDEOS),
            "_audios" => Some(AUDIOS),
            "_fonts" => Some(FONTS),
            _ => None,
        };
        if let Some(group) = group {
            out.extend(group.iter().map(|&ext| ext.to_owned()));
            continue;
        }
        if item.starts_with('_') {
            return Err(invalid(
                at,
                &format!("unknown group {item:?} (expected _images, _videos, _audios or _fonts)"),
            ));
        }
        let ext = item.strip_prefix('.').unwrap_or(item);
        if ext.is_empty()
            || !ext
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(at, &format!("invalid extension {item:?}")));
        }
        out.push(ext.to_ascii_lowercase());
    }
    Ok(out)
}

/// `ms|s|m|h|d|w|M|y` durations as nginx's `expires` reads them (`M` is 30 days, `y` 365), in
/// whole seconds capped at [`MAX_CACHE_AGE`].
pub fn parse_duration(value: &str) -> Option<u64> {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    if number.is_empty() || number.starts_with('0') {
        return None;
    }
    // Only digits are left, so the one possible failure is overflow: saturate, then cap.
    let number: u64 = number.parse().unwrap_or(u64::MAX);
    let seconds = match unit {
        "ms" => number / 1000,
        "s" => number,
        "m" => number.saturating_mul(60),
        "h" => number.saturating_mul(3600),
        "d" => number.saturating_mul(86_400),
        "w" => number.saturating_mul(7 * 86_400),
        "M" => number.saturating_mul(30 * 86_400),
        "y" => number.saturating_mul(365 * 86_400),
        _ => return None,
    };
    Some(seconds.min(MAX_CACHE_AGE))
}

/// A response header name a manifest or `_headers` may set: valid, and neither hop-by-hop nor
/// framing (the server owns those).
pub fn settable_header(name: &str) -> Result<HeaderName, &'static str> {
    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| "invalid header name")?;
    let lower = header.as_str();
    if FORBIDDEN_HEADERS.contains(&lower) || lower.starts_with("proxy-") {
        return Err("hop-by-hop and framing headers cannot be set");
    }
    Ok(header)
}

fn compile_options(at: &str, raw: RawOptions) -> Result<RuleOptions, ManifestError> {
    let mut options = RuleOptions {
        deny: raw.deny.unwrap_or(false),
        ..RuleOptions::default()
    };
    for (name, value) in raw.headers.map(|m| m.0).unwrap_or_default() {
        let key = format!("{at}.options.headers.{name}");
        let header = settable_header(&name).map_err(|message| invalid(&key, message))?;
        let value = HeaderValue::from_str(&value.0).map_err(|_| {
            invalid(
                &key,
                "invalid header value (control characters are not allowed)",
            )
        })?;
        options.headers.retain(|(existing, _)| *existing != header);
        options.headers.push((header, value));
    }
    if let Some(value) = raw.client_caching {
        let key = format!("{at}.options.clientCaching");
        let max_age = parse_duration(&value.0).ok_or_else(|| {
            invalid(
                &key,
                &format!(
                    "invalid duration {:?} (expected a positive number followed by ms, s, m, h, d, w, M or y)",
                    value.0
                ),
            )
        })?;
        let cache_control = HeaderValue::try_from(format!("max-age={max_age}, public"))
            .map_err(|_| invalid(&key, "invalid duration"))?;
        options.client_caching = Some(ClientCaching {
            max_age,
            cache_control,
        });
    }
    Ok(options)
}

/// Parses a rewrite target: literal text and `$N` / `${N}` captures (`N` at most the number of
/// groups). It must be a path, so it starts with `/` or a capture.
fn parse_target(target: &str, captures_len: usize) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = target;
    while let Some(dollar) = rest.find('$') {
        literal.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        let (digits, after) = if let Some(braced) = rest.strip_prefix('{') {
            let close = braced
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" in target {target:?}"))?;
            (&braced[..close], &braced[close + 1..])
        } else {
            let len = rest.bytes().take(1).take_while(u8::is_ascii_digit).count();
            (&rest[..len], &rest[len..])
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "target {target:?}: only captures ($1 to $9) can follow \"$\""
            ));
        }
        let group: usize = digits
            .parse()
            .map_err(|_| format!("target {target:?}: invalid capture"))?;
        if group >= captures_len {
            return Err(format!(
                "target {target:?} uses ${group} but the regex has {} capture group(s)",
                captures_len - 1
            ));
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(std::mem::take(&mut literal)));
        }
        parts.push(Part::Group(group));
        rest = after;
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    match parts.first() {
        Some(Part::Group(_)) => {}
        Some(Part::Literal(text)) if text.starts_with('/') => {}
        _ => {
            return Err(format!(
                "target {target:?} must be a path starting with \"/\""
            ));
        }
    }
    Ok(parts)
}

/// `404.html` or `/404.html` to `/404.html`; no `.`/`..` segments.
fn page_path(at: &str, value: &str) -> Result<String, ManifestError> {
    let trimmed = value.trim_start_matches('/');
    if trimmed.is_empty()
        || trimmed.ends_with('/')
        || trimmed
            .split('/')
            .any(|segment| matches!(segment, "" | "." | ".."))
        || trimmed.contains(['\\', '\0', '?', '#'])
    {
        return Err(invalid(at, &format!("{value:?} is not a file path")));
    }
    Ok(format!("/{trimmed}"))
}

/// Deserialises with key paths in errors (`rules[2].options: unknown field ...`).
fn deserialize(text: &str) -> Result<Option<RawManifest>, ManifestError> {
    let mut path = None;
    let result = serde_saphyr::with_deserializer_from_str(text, |deserializer| {
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            path = Some(err.path().to_string());
            err.into_inner()
        })
    });
    result.map_err(|err| {
        let location = err.location().filter(|l| l.line() > 0);
        let message = err.without_snippet().to_string();
        let mut message = message.lines().next().unwrap_or_default().to_owned();
        if let Some(location) = location {
            let suffix = format!(" at line {}, column {}", location.line(), location.column());
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_owned();
            }
            message = format!(
                "{message} (line {}, column {})",
                location.line(),
                location.column()
            );
        }
        match path.filter(|p| p != ".") {
            Some(path) => ManifestError::Syntax(format!("{path}: {message}")),
            None => ManifestError::Syntax(message),
        }
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename = "manifest", deny_unknown_fields)]
struct RawManifest {
    rules: Option<Vec<RawRule>>,
    rewrite: Option<OrderedMap>,
    page404: Option<Scalar>,
    page403: Option<Scalar>,
    spa: Option<bool>,
    conventions: Option<crate::conventions::Settings>,
}

#[derive(Debug, Deserialize)]
#[serde(rename = "rule", deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    exact: Option<String>,
    prefix: Option<String>,
    #[serde(rename = "match")]
    regex: Option<String>,
    file: Option<Scalar>,
    case_sensitive: Option<bool>,
    options: Option<RawOptions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename = "options", deny_unknown_fields, rename_all = "camelCase")]
struct RawOptions {
    headers: Option<OrderedMap>,
    client_caching: Option<Scalar>,
    deny: Option<bool>,
}

/// A YAML scalar read as text (`clientCaching: 0` or `X-Count: 5` are numbers in YAML).
#[derive(Debug)]
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// A mapping of text to scalars, in document order (rewrites are tried in that order).
#[derive(Debug, Default)]
struct OrderedMap(Vec<(String, Scalar)>);

impl<'de> Deserialize<'de> for OrderedMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = OrderedMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedMap, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<Scalar, Scalar>()? {
                    if entries.iter().any(|(k, _): &(String, Scalar)| *k == key.0) {
                        return Err(de::Error::custom(format!("duplicate key {:?}", key.0)));
                    }
                    entries.push((key.0, value));
                }
                Ok(OrderedMap(entries))
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

#[cfg(test)]
mod tests;
