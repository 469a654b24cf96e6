//! `_headers` in a bundle's root: parsing, validation (every error names its line) and the
//! compiled blocks the edge applies per response.
//!
//! # Syntax
//!
//! The format of Netlify's and Cloudflare Pages' `_headers` (GitLab Pages has none):
//!
//! ```text
//! # comments start with "#"
//! /*
//!   X-Frame-Options: DENY
//!   Referrer-Policy: strict-origin-when-cross-origin
//! /assets/*
//!   Cache-Control: public, max-age=31536000, immutable
//! /embed/:widget
//!   ! X-Frame-Options
//! ```
//!
//! A line starting at the first column is a path pattern (see
//! [`path_pattern`](crate::path_pattern): `:name` placeholders, a trailing `*`); the indented
//! lines under it are `Name: value` headers, or `! Name` to remove a header an earlier block
//! (or the server's conventions) set. Every block whose pattern matches the request path
//! applies, in file order; a later block's value for a header replaces an earlier one's (as a
//! more specific block usually means; Cloudflare Pages would join them), and a name repeated
//! inside one block joins its values with ", ". Header names are checked as in `_statiko.yaml`:
//! hop-by-hop and framing headers are refused. Host patterns (`https://example.com/*`) are
//! refused: a bundle is served on its site's domains only.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::manifest::settable_header;
use crate::path_pattern::{Pattern, Router};
use crate::redirects::{SiteFileError, check_line, text_of};

#[cfg(test)]
mod tests;

/// A `_headers` file larger than this is refused.
pub const MAX_HEADERS_LEN: usize = 1024 * 1024;
/// Most path blocks in one `_headers` file.
pub const MAX_BLOCKS: usize = 5_000;

const FILE: &str = "_headers";

/// A validated, compiled `_headers`.
#[derive(Debug, Default)]
pub struct HeaderRules {
    blocks: Vec<Block>,
    router: Router,
}

/// One path block.
#[derive(Debug, Clone)]
pub struct Block {
    /// One-based line of the path pattern.
    pub line: usize,
    pub ops: Vec<HeaderOp>,
}

/// One header line of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    Set(HeaderName, HeaderValue),
    Remove(HeaderName),
}

impl HeaderRules {
    /// Parses and validates a `_headers` file.
    pub fn parse(bytes: &[u8]) -> Result<Self, SiteFileError> {
        let text = text_of(FILE, bytes, MAX_HEADERS_LEN)?;
        let mut rules = HeaderRules::default();
        let mut current: Option<(Pattern, Block)> = None;
        for (i, line) in text.lines().enumerate() {
            let number = i + 1;
            check_line(FILE, number, line)?;
            let content = line.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let err = |message: String| SiteFileError::at(FILE, number, message);
            if line.chars().any(|c| c.is_control() && c != '\t') {
                return Err(err("control characters are not allowed".into()));
            }
            if !line.starts_with([' ', '\t']) {
                if let Some((pattern, block)) = current.take() {
                    rules.push(&pattern, block);
                }
                if rules.blocks.len() == MAX_BLOCKS {
                    return Err(err(format!("more than {MAX_BLOCKS} path blocks")));
                }
                if content.contains("://") {
                    return Err(err(format!(
                        "{content:?}: host patterns are not supported; a block starts with a path"
                    )));
                }
                let pattern = Pattern::parse(content).map_err(|reason| {
                    err(format!(
                        "path pattern {reason} (header lines must be indented)"
                    ))
                })?;
                current = Some((
                    pattern,
                    Block {
                        line: number,
                        ops: Vec::new(),
                    },
                ));
                continue;
            }
            let Some((_, block)) = current.as_mut() else {
                return Err(err(format!(
                    "{content:?} comes before any path pattern (a block starts with an unindented path such as /*)"
                )));
            };
            block.ops.push(parse_op(content).map_err(err)?);
            join_repeated(&mut block.ops);
        }
        if let Some((pattern, block)) = current.take() {
            rules.push(&pattern, block);
        }
        Ok(rules)
    }

    fn push(&mut self, pattern: &Pattern, block: Block) {
        self.router.insert(pattern, self.blocks.len());
        self.blocks.push(block);
    }

    /// Number of path blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The blocks matching `path` (decoded, normalised), in file order.
    pub fn matching(&self, path: &str) -> impl Iterator<Item = &Block> {
        self.router
            .all(path)
            .into_iter()
            .map(|index| &self.blocks[index])
    }

    /// Applies every block matching `path` to `headers`, in file order.
    pub fn apply(&self, path: &str, headers: &mut HeaderMap) {
        for block in self.matching(path) {
            for op in &block.ops {
                match op {
                    HeaderOp::Set(name, value) => {
                        headers.insert(name.clone(), value.clone());
                    }
                    HeaderOp::Remove(name) => {
                        headers.remove(name);
                    }
                }
            }
        }
    }
}

/// `Name: value` or `! Name`.
fn parse_op(content: &str) -> Result<HeaderOp, String> {
    if let Some(name) = content.strip_prefix('!') {
        let name = name.trim();
        let header = settable_header(name).map_err(|reason| format!("{name:?}: {reason}"))?;
        return Ok(HeaderOp::Remove(header));
    }
    let Some((name, value)) = content.split_once(':') else {
        return Err(format!(
            "{content:?} is not a \"Name: value\" header line or a \"! Name\" removal"
        ));
    };
    let (name, value) = (name.trim(), value.trim());
    let header = settable_header(name).map_err(|reason| format!("{name:?}: {reason}"))?;
    if value.is_empty() {
        return Err(format!(
            "{name}: empty value (\"! {name}\" removes a header)"
        ));
    }
    let value = HeaderValue::from_str(value)
        .ok()
        .filter(|_| value.is_ascii())
        .ok_or_else(|| format!("{name}: invalid header value (ASCII text only)"))?;
    Ok(HeaderOp::Set(header, value))
}

/// A name set twice in one block: one header with both values joined by ", ".
fn join_repeated(ops: &mut Vec<HeaderOp>) {
    let Some(HeaderOp::Set(name, value)) = ops.last() else {
        return;
    };
    let earlier = ops[..ops.len() - 1]
        .iter()
        .rposition(|op| matches!(op, HeaderOp::Set(n, _) if n == name));
    let Some(at) = earlier else {
        return;
    };
    if ops[at..]
        .iter()
        .any(|op| matches!(op, HeaderOp::Remove(n) if n == name))
    {
        return;
    }
    let (name, value) = (name.clone(), value.clone());
    if let HeaderOp::Set(_, first) = &ops[at] {
        let mut joined = first.as_bytes().to_vec();
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(value.as_bytes());
        if let Ok(joined) = HeaderValue::from_bytes(&joined) {
            ops[at] = HeaderOp::Set(name, joined);
            ops.pop();
        }
    }
}
