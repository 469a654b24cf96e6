//! A staged bundle: an app version unpacked under `edge.dataDir`, with every file's serving
//! metadata computed once at staging (content type, strong ETag, compressed variants), so a
//! request never computes any of it. The response headers a file always sends
//! (`Content-Type`, `ETag`, `Last-Modified`) are ready `HeaderValue`s, shared by every response
//! (a clone shares the bytes).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;
use statiko_common::conventions::Conventions;
use statiko_common::crypto::Digest;
use statiko_common::headers_file::HeaderRules;
use statiko_common::manifest::Manifest;
use statiko_common::redirects::Redirects;

/// Files at or below this size are kept in memory and served without a filesystem call.
pub const HOT_FILE_MAX: u64 = 256 * 1024;

/// One unpacked, verified bundle, shared by every site that deploys the same digest.
#[derive(Debug)]
pub struct StagedBundle {
    /// The archive's digest.
    pub digest: Digest,
    /// Directory holding the unpacked files.
    pub root: PathBuf,
    /// Every regular file, keyed by its URL path: leading `/`, `/`-separated, no trailing slash,
    /// not percent-encoded (e.g. `/index.html`, `/docs/a b.html`).
    pub files: HashMap<String, Arc<StaticFile>>,
    /// Every directory, keyed like `files` (the root is `/`), for index and slash-redirect rules.
    pub dirs: HashSet<String>,
    /// The compiled app manifest (`_statiko.yaml`), when the bundle has one.
    pub manifest: Option<Arc<Manifest>>,
    /// `_redirects`, `_headers` and the conventions in force, compiled at staging.
    pub rules: SiteRules,
}

/// A bundle's `_redirects` and `_headers` (when it has them) and its conventions. The default
/// has none and every convention off: a bundle served as before the conventions existed.
#[derive(Debug)]
pub struct SiteRules {
    pub redirects: Option<Redirects>,
    pub headers: Option<HeaderRules>,
    pub conventions: Conventions,
}

impl StagedBundle {
    /// Bytes its files and their compressed variants take on disk: what keeping it staged
    /// costs (`edge.bundleDiskBudget`).
    pub fn disk_bytes(&self) -> u64 {
        self.files
            .values()
            .map(|file| {
                file.len
                    + file.gzip.as_ref().map_or(0, |v| v.len)
                    + file.brotli.as_ref().map_or(0, |v| v.len)
            })
            .sum()
    }
}

impl Default for SiteRules {
    fn default() -> Self {
        Self {
            redirects: None,
            headers: None,
            conventions: Conventions::OFF,
        }
    }
}

/// Where a response body comes from.
#[derive(Debug, Clone)]
pub enum Body {
    /// Small files: the bytes themselves.
    Memory(Bytes),
    /// Larger files: streamed from disk.
    Disk(PathBuf),
}

/// A precompressed representation of a file.
#[derive(Debug, Clone)]
pub struct Variant {
    pub len: u64,
    pub body: Body,
    /// Strong ETag of this representation (quoted), distinct from the identity one.
    pub etag: HeaderText,
}

impl Variant {
    /// A variant whose ETag is `etag` (quoted).
    pub fn new(len: u64, body: Body, etag: &str) -> Result<Self, InvalidHeaderText> {
        Ok(Self {
            len,
            body,
            etag: HeaderText::new(etag)?,
        })
    }
}

/// One servable file with everything a response needs.
#[derive(Debug, Clone)]
pub struct StaticFile {
    pub len: u64,
    pub body: Body,
    /// `Content-Type` value, with `; charset=utf-8` for text types.
    pub content_type: HeaderText,
    /// Strong ETag (quoted), from the content hash.
    pub etag: HeaderText,
    pub last_modified: LastModified,
    pub gzip: Option<Variant>,
    pub brotli: Option<Variant>,
}

impl StaticFile {
    /// A file without compressed variants. `content_type` and `etag` (quoted) must be valid
    /// header values made of ASCII text.
    pub fn new(
        len: u64,
        body: Body,
        content_type: &str,
        etag: &str,
        last_modified: SystemTime,
    ) -> Result<Self, InvalidHeaderText> {
        Ok(Self {
            len,
            body,
            content_type: HeaderText::new(content_type)?,
            etag: HeaderText::new(etag)?,
            last_modified: LastModified::new(last_modified),
            gzip: None,
            brotli: None,
        })
    }
}

/// A header value that is also ASCII text, so it can be compared with and shown as a `str`
/// (tests, logs, metadata) while responses use [`HeaderText::header`] as it is.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HeaderText(HeaderValue);

/// A string that cannot be a [`HeaderText`]: not ASCII, or holding control characters.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not a valid header value: {0:?}")]
pub struct InvalidHeaderText(String);

impl HeaderText {
    pub fn new(text: &str) -> Result<Self, InvalidHeaderText> {
        if !text.is_ascii() {
            return Err(InvalidHeaderText(text.to_owned()));
        }
        HeaderValue::from_str(text)
            .map(Self)
            .map_err(|_| InvalidHeaderText(text.to_owned()))
    }

    /// The value to put in a response (cloning it shares the bytes).
    pub fn header(&self) -> &HeaderValue {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn as_str(&self) -> &str {
        // ASCII without control characters, checked in `new`.
        self.0.to_str().unwrap_or_default()
    }
}

impl Deref for HeaderText {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for HeaderText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for HeaderText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for HeaderText {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for HeaderText {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<String> for HeaderText {
    fn eq(&self, other: &String) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// 9999-12-31T23:59:59Z, the last time an HTTP date can show.
const LAST_HTTP_DATE: u64 = 253_402_300_799;

/// A file's modification time with its `Last-Modified` value, formatted once.
#[derive(Clone)]
pub struct LastModified {
    time: SystemTime,
    /// Whole seconds since the epoch, as HTTP dates carry them.
    secs: u64,
    header: HeaderValue,
}

impl LastModified {
    pub fn new(time: SystemTime) -> Self {
        // HTTP dates run from 1970 to 9999 (an archive may claim any time).
        let secs = time
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs()
            .min(LAST_HTTP_DATE);
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
        // An HTTP date is plain ASCII; the fallback is never used.
        let header = HeaderValue::try_from(date)
            .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
        Self { time, secs, header }
    }

    pub fn time(&self) -> SystemTime {
        self.time
    }

    /// Whole seconds since the epoch (what conditional requests compare).
    pub fn secs(&self) -> u64 {
        self.secs
    }

    /// The `Last-Modified` value.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }
}

impl fmt::Debug for LastModified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LastModified").field(&self.header).finish()
    }
}

impl PartialEq for LastModified {
    fn eq(&self, other: &Self) -> bool {
        self.time == other.time
    }
}

impl Eq for LastModified {}

impl PartialEq<SystemTime> for LastModified {
    fn eq(&self, other: &SystemTime) -> bool {
        self.time == *other
    }
}

impl From<SystemTime> for LastModified {
    fn from(time: SystemTime) -> Self {
        Self::new(time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_is_text_and_a_header() {
        let etag = HeaderText::new("\"abc\"").unwrap();
        assert_eq!(etag, "\"abc\"");
        assert_eq!(etag, String::from("\"abc\""));
        assert_eq!(etag.header(), "\"abc\"");
        assert_eq!(etag.trim_end_matches('"'), "\"abc");
        assert_eq!(format!("{etag} {etag:?}"), "\"abc\" \"\\\"abc\\\"\"");
        assert!(HeaderText::new("caf\u{e9}").is_err());
        assert!(HeaderText::new("a\nb").is_err());
        assert!(HeaderText::new("").is_ok());
    }

    #[test]
    fn last_modified_is_formatted_once() {
        let time = UNIX_EPOCH + Duration::new(1_700_000_000, 500);
        let modified = LastModified::new(time);
        assert_eq!(modified, time);
        assert_eq!(modified.secs(), 1_700_000_000);
        assert_eq!(modified.header(), "Tue, 14 Nov 2023 22:13:20 GMT");
        let early = LastModified::new(UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(early.secs(), 0);
        assert_eq!(early.header(), "Thu, 01 Jan 1970 00:00:00 GMT");
        let late = LastModified::new(UNIX_EPOCH + Duration::from_secs(1 << 40));
        assert_eq!(late.header(), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn files_are_built_from_text() {
        let file = StaticFile::new(
            3,
            Body::Memory(Bytes::from_static(b"abc")),
            "text/plain; charset=utf-8",
            "\"e\"",
            UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(file.content_type, "text/plain; charset=utf-8");
        assert_eq!(file.etag.header(), "\"e\"");
        assert!(file.gzip.is_none() && file.brotli.is_none());
        assert!(
            StaticFile::new(0, Body::Memory(Bytes::new()), "x\r\n", "\"e\"", UNIX_EPOCH).is_err()
        );
        assert_eq!(
            Variant::new(1, Body::Memory(Bytes::new()), "\"e-gz\"")
                .unwrap()
                .etag,
            "\"e-gz\""
        );
    }
}
