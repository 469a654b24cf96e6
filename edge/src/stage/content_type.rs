//! Content types, and which of them are worth precompressing.

/// `Content-Type` for a path, with `; charset=utf-8` for text types.
pub fn content_type_for(path: &str) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let essence = mime.essence_str();
    let text = mime.type_() == mime_guess::mime::TEXT
        || matches!(
            essence,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "image/svg+xml"
                | "application/manifest+json"
                | "application/ld+json"
                | "application/xhtml+xml"
                | "application/rss+xml"
                | "application/atom+xml"
        );
    if text {
        format!("{essence}; charset=utf-8")
    } else {
        essence.to_owned()
    }
}

/// Whether precompressing a file of this type pays off.
pub(super) fn is_compressible(content_type: &str, path: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or(content_type)
        .trim();
    if essence.starts_with("text/") || essence.ends_with("+json") || essence.ends_with("+xml") {
        return true;
    }
    if matches!(
        essence,
        "application/javascript"
            | "application/x-javascript"
            | "application/json"
            | "application/xml"
            | "application/wasm"
            | "application/vnd.ms-fontobject"
            | "application/font-sfnt"
            | "application/x-font-ttf"
            | "application/x-font-otf"
            | "font/ttf"
            | "font/otf"
            | "image/x-icon"
            | "image/vnd.microsoft.icon"
            | "image/bmp"
    ) {
        return true;
    }
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    matches!(
        ext.as_deref(),
        Some("ttf" | "otf" | "eot" | "wasm" | "webmanifest" | "map")
    )
}
