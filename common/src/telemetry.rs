//! Tracing subscriber set-up: one `fmt` layer on stderr, text or JSON, filtered by `RUST_LOG`
//! or `log.level`.
//!
//! OpenTelemetry export (a `tracing-opentelemetry` layer sending OTLP, configured by a future
//! `telemetry` config section) is a later issue. When it lands, [`init`] adds that layer and
//! [`TelemetryGuard`] gains the tracer provider, flushing and shutting it down on drop; callers
//! already keep the guard alive until the end of `main`, so their code will not change.

use std::io::IsTerminal as _;

use anyhow::{Context as _, anyhow};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Keeps telemetry alive; hold it until the process ends (dropping it will flush exporters
/// once there are any).
#[derive(Debug)]
#[must_use = "telemetry stops when the guard is dropped"]
pub struct TelemetryGuard {
    _private: (),
}

/// Installs the global tracing subscriber: filter from `RUST_LOG` when set, else `log.level`;
/// format per `log.format`; output to stderr. Fails if a subscriber is already installed.
pub fn init(log: &LogConfig) -> anyhow::Result<TelemetryGuard> {
    let filter = filter(log)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match log.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    installed.map_err(|err| anyhow!("install tracing subscriber: {err}"))?;
    Ok(TelemetryGuard { _private: () })
}

/// The filter `init` uses: `RUST_LOG` when set and non-empty, else `log.level`.
pub fn filter(log: &LogConfig) -> anyhow::Result<EnvFilter> {
    match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .with_context(|| format!("invalid RUST_LOG {directives:?}")),
        _ => EnvFilter::try_new(&log.level).context("log.level: invalid filter directive"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_filter_parses() {
        let log = LogConfig {
            level: "info,statiko=debug".into(),
            ..LogConfig::default()
        };
        assert!(EnvFilter::try_new(&log.level).is_ok());
    }
}
