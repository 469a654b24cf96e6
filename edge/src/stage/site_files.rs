//! `_redirects` and `_headers` at staging: read from the bundle root, compiled once with
//! `statiko_common`, and joined with the conventions in force into the bundle's `SiteRules`.
//! Like `_statiko.yaml`, neither file is ever served.

use std::io::{self, Read as _};
use std::path::Path;

use statiko_common::conventions::{Conventions, is_content_hashed};
use statiko_common::headers_file::{HeaderRules, MAX_HEADERS_LEN};
use statiko_common::manifest::Manifest;
use statiko_common::redirects::{MAX_REDIRECTS_LEN, Redirects};

use super::StageError;
use super::meta::BundleMeta;
use crate::bundle::SiteRules;

/// The redirect rules in the bundle root.
const REDIRECTS_FILE: &str = "_redirects";
/// The header rules in the bundle root.
const HEADERS_FILE: &str = "_headers";

/// `_redirects` and `_headers`, parsed; checked before the costly compression, so a bad one
/// fails fast.
pub(super) struct RoutingFiles {
    redirects: Option<Redirects>,
    headers: Option<HeaderRules>,
}

impl RoutingFiles {
    pub(super) fn read(root: &Path) -> Result<Self, StageError> {
        let redirects = read_file(root, REDIRECTS_FILE, MAX_REDIRECTS_LEN)?
            .map(|bytes| Redirects::parse(&bytes))
            .transpose()
            .map_err(|e| StageError::SiteFile(e.to_string()))?;
        let headers = read_file(root, HEADERS_FILE, MAX_HEADERS_LEN)?
            .map(|bytes| HeaderRules::parse(&bytes))
            .transpose()
            .map_err(|e| StageError::SiteFile(e.to_string()))?;
        Ok(Self { redirects, headers })
    }

    /// The bundle's rules, with the conventions `manifest` and its file names call for.
    pub(super) fn into_rules(self, manifest: Option<&Manifest>, meta: &BundleMeta) -> SiteRules {
        let hashed = meta.files.iter().any(|f| is_content_hashed(&f.path));
        SiteRules {
            redirects: self.redirects,
            headers: self.headers,
            conventions: Conventions::resolve(manifest, hashed),
        }
    }
}

/// The bytes of `root/name`, if it exists; a file over `max` bytes (plus one, for the
/// parser's own message) is not read whole.
fn read_file(root: &Path, name: &str, max: usize) -> Result<Option<Vec<u8>>, StageError> {
    let path = root.join(name);
    let stat = match std::fs::symlink_metadata(&path) {
        Ok(stat) => stat,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StageError::io(&format!("reading {name}"), &e)),
    };
    if !stat.is_file() {
        return Err(StageError::SiteFile(format!("{name}: it is not a file")));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|file| file.take(max as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| StageError::io(&format!("reading {name}"), &e))?;
    Ok(Some(bytes))
}
