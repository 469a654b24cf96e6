//! How the console writes times and sizes for people: `2026-12-07 23:10:05 UTC`, `5 min ago`,
//! `in 89 days`, `1.4 MiB`.

use std::time::{Duration, SystemTime};

/// Certificates expiring within this are highlighted.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// "in 89 days" or "expired 2 days ago", and the class that colours it.
pub(super) fn expiry(not_after: Option<SystemTime>, now: SystemTime) -> (String, &'static str) {
    let Some(not_after) = not_after else {
        return ("unknown".to_owned(), "muted");
    };
    match not_after.duration_since(now) {
        Ok(left) if left < EXPIRY_WARNING => (relative(not_after, now), "warn"),
        Ok(_) => (relative(not_after, now), "ok"),
        Err(_) => (format!("expired {}", relative(not_after, now)), "bad"),
    }
}

pub(super) fn to_time(ts: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    let ts = ts?;
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos).unwrap_or(0);
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// `2026-12-07 23:10:05 UTC`.
pub(super) fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

/// "12 s ago", "5 min ago", "in 89 days".
pub(super) fn relative(t: SystemTime, now: SystemTime) -> String {
    let (span, future) = match t.duration_since(now) {
        Ok(ahead) => (ahead, true),
        Err(err) => (err.duration(), false),
    };
    let secs = span.as_secs();
    let text = match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86_400 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// Bytes for people: `812 B`, `1.4 MiB`.
pub(super) fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[expect(clippy::cast_precision_loss, reason = "a display value")]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(relative(now - Duration::from_secs(5), now), "5 s ago");
        assert_eq!(relative(now - Duration::from_secs(300), now), "5 min ago");
        assert_eq!(relative(now + Duration::from_secs(7200), now), "in 2 h");
        assert_eq!(
            relative(now + Duration::from_secs(89 * 86_400 + 5), now),
            "in 89 days"
        );
        assert_eq!(
            expiry(Some(now - Duration::from_secs(172_800)), now),
            ("expired 2 days ago".to_owned(), "bad")
        );
        assert_eq!(
            expiry(Some(now + Duration::from_secs(86_400)), now).1,
            "warn"
        );
        assert_eq!(
            expiry(Some(now + Duration::from_secs(30 * 86_400)), now).1,
            "ok"
        );
        assert_eq!(
            timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(86_400)),
            "1970-01-02 00:00:00 UTC"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(size(812), "812 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1024 * 1024), "3.0 MiB");
    }
}
