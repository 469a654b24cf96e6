//! URL path patterns as `_redirects` and `_headers` write them (`/blog/:year/:slug`,
//! `/assets/*`), and a router that matches a request path against thousands of them without
//! trying them one by one.
//!
//! # Syntax
//!
//! A pattern is a path starting with `/`, cut into segments at `/`. A segment is literal text,
//! a named placeholder `:name` (one whole, non-empty segment), or, as the last segment only, a
//! splat `*` that matches the rest of the path, zero or more segments (`/news/*` matches
//! `/news`, `/news/` and `/news/2024/01/story`). A trailing slash is ignored on both sides, so
//! `/about` and `/about/` are the same pattern and match the same requests. Matching is
//! case-sensitive, like the bundle's file names, and works on the decoded, normalised path
//! (`files::clean_path` on the edge).
//!
//! # Router
//!
//! A trie over path segments: each node has a map of literal children, one placeholder child
//! and the patterns that end there or end with a splat there. Every trie edge consumes exactly
//! one path segment, so a node can only be reached at one depth of a given path and a lookup
//! visits each node at most once; it also skips every subtree whose lowest pattern index is not
//! below the best match found so far. The cost of a lookup follows the depth of the path and
//! the few patterns that share its prefixes, not the number of patterns: 10,000 rules answer
//! like 10. [`Router::first`] returns the lowest pattern index among all matches (first match
//! wins, as `_redirects` needs), [`Router::all`] every match in order (as `_headers` needs).
//! Router crates such as `matchit` refuse overlapping routes (`/blog/:slug` next to
//! `/blog/*`), which these files use all the time, so the trie is ours.

use std::collections::HashMap;

/// One segment of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `:name`.
    Placeholder(String),
}

/// A parsed pattern: its segments, and whether it ends with a splat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub segments: Vec<Segment>,
    pub splat: bool,
}

/// What a path matched: the pattern index, its placeholder values in pattern order, and the
/// splat's value (`2024/01/story`, empty when it matched nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match<'p> {
    pub index: usize,
    pub placeholders: Vec<&'p str>,
    pub splat: Option<&'p str>,
}

impl Pattern {
    /// Parses `text`, which must start with `/`. The error is a short reason.
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("{text:?} must be a path starting with \"/\""));
        }
        if text.contains(['?', '#']) {
            return Err(format!(
                "{text:?}: query strings and fragments cannot be matched"
            ));
        }
        let mut segments = Vec::new();
        let mut splat = false;
        let parts: Vec<&str> = text.split('/').filter(|s| !s.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            if *part == "*" {
                if i + 1 != parts.len() {
                    return Err(format!(
                        "{text:?}: \"*\" is allowed only as the last segment"
                    ));
                }
                splat = true;
            } else if part.contains('*') {
                return Err(format!("{text:?}: \"*\" must be a whole segment"));
            } else if let Some(name) = part.strip_prefix(':') {
                if !is_name(name) {
                    return Err(format!(
                        "{text:?}: placeholder {part:?} must be \":\" followed by letters, digits or \"_\""
                    ));
                }
                if name == "splat" {
                    return Err(format!(
                        "{text:?}: \":splat\" is the name of \"*\"'s value, not a placeholder"
                    ));
                }
                if segments
                    .iter()
                    .any(|s| matches!(s, Segment::Placeholder(n) if n == name))
                {
                    return Err(format!("{text:?}: placeholder \":{name}\" appears twice"));
                }
                segments.push(Segment::Placeholder(name.to_owned()));
            } else if matches!(*part, "." | "..") {
                return Err(format!(
                    "{text:?}: \".\" and \"..\" segments are not allowed"
                ));
            } else {
                segments.push(Segment::Literal((*part).to_owned()));
            }
        }
        Ok(Self { segments, splat })
    }

    /// Whether `path` matches this pattern alone (the router answers for many at once).
    pub fn matches(&self, path: &str) -> bool {
        let mut router = Router::default();
        router.insert(self, 0);
        router.first(path).is_some()
    }

    /// The position of placeholder `name` among this pattern's placeholders.
    pub fn placeholder_index(&self, name: &str) -> Option<usize> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Placeholder(n) => Some(n.as_str()),
                Segment::Literal(_) => None,
            })
            .position(|n| n == name)
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A trie of patterns; see the module docs.
#[derive(Debug, Default)]
pub struct Router {
    root: Node,
    len: usize,
}

#[derive(Debug)]
struct Node {
    literals: HashMap<Box<str>, Node>,
    placeholder: Option<Box<Node>>,
    /// The lowest index of a pattern ending here, and every such index in order.
    end: Vec<usize>,
    /// Patterns ending with a splat here, in order.
    splat: Vec<usize>,
    /// The lowest pattern index anywhere in this subtree, for pruning.
    min: usize,
}

impl Default for Node {
    fn default() -> Self {
        Self {
            literals: HashMap::new(),
            placeholder: None,
            end: Vec::new(),
            splat: Vec::new(),
            min: usize::MAX,
        }
    }
}

impl Router {
    /// Adds `pattern` as number `index`. Indexes must be added in increasing order.
    pub fn insert(&mut self, pattern: &Pattern, index: usize) {
        let mut node = &mut self.root;
        node.min = node.min.min(index);
        for segment in &pattern.segments {
            node = match segment {
                Segment::Literal(text) => node.literals.entry(text.as_str().into()).or_default(),
                Segment::Placeholder(_) => node.placeholder.get_or_insert_with(Box::default),
            };
            node.min = node.min.min(index);
        }
        if pattern.splat {
            node.splat.push(index);
        } else {
            node.end.push(index);
        }
        self.len += 1;
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The match with the lowest pattern index, if any pattern matches `path`.
    pub fn first<'p>(&self, path: &'p str) -> Option<Match<'p>> {
        let segments = split(path);
        let mut best: Option<Match<'p>> = None;
        let mut captured = Vec::new();
        first_in(&self.root, path, &segments, 0, &mut captured, &mut best);
        best
    }

    /// The indexes of every pattern matching `path`, in increasing order.
    pub fn all(&self, path: &str) -> Vec<usize> {
        let segments = split(path);
        let mut out = Vec::new();
        all_in(&self.root, &segments, 0, &mut out);
        out.sort_unstable();
        out
    }
}

/// The segments of a path with their byte offsets, so a splat can be sliced out whole.
fn split(path: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut offset = 0;
    for part in path.split('/') {
        if !part.is_empty() {
            out.push((offset, part));
        }
        offset += part.len() + 1;
    }
    out
}

fn first_in<'p>(
    node: &Node,
    path: &'p str,
    segments: &[(usize, &'p str)],
    depth: usize,
    captured: &mut Vec<&'p str>,
    best: &mut Option<Match<'p>>,
) {
    let bound = best.as_ref().map_or(usize::MAX, |m| m.index);
    if node.min >= bound {
        return;
    }
    if let Some(&index) = node.splat.first()
        && index < best.as_ref().map_or(usize::MAX, |m| m.index)
    {
        let rest = segments
            .get(depth)
            .map_or("", |&(offset, _)| path[offset..].trim_end_matches('/'));
        *best = Some(Match {
            index,
            placeholders: captured.clone(),
            splat: Some(rest),
        });
    }
    let Some(&(_, segment)) = segments.get(depth) else {
        if let Some(&index) = node.end.first()
            && index < best.as_ref().map_or(usize::MAX, |m| m.index)
        {
            *best = Some(Match {
                index,
                placeholders: captured.clone(),
                splat: None,
            });
        }
        return;
    };
    if let Some(child) = node.literals.get(segment) {
        first_in(child, path, segments, depth + 1, captured, best);
    }
    if let Some(child) = &node.placeholder {
        captured.push(segment);
        first_in(child, path, segments, depth + 1, captured, best);
        captured.pop();
    }
}

fn all_in(node: &Node, segments: &[(usize, &str)], depth: usize, out: &mut Vec<usize>) {
    out.extend_from_slice(&node.splat);
    let Some(&(_, segment)) = segments.get(depth) else {
        out.extend_from_slice(&node.end);
        return;
    };
    if let Some(child) = node.literals.get(segment) {
        all_in(child, segments, depth + 1, out);
    }
    if let Some(child) = &node.placeholder {
        all_in(child, segments, depth + 1, out);
    }
}

#[cfg(test)]
mod tests;
