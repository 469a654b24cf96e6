//! Tracing subscriber set-up: one `fmt` layer on stderr, text or JSON, filtered by `RUST_LOG`
//! or `log.level`; plus, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, a `tracing-opentelemetry`
//! layer exporting spans over OTLP/gRPC (service name from `OTEL_SERVICE_NAME`, else the
//! executable's name).
//!
//! The exporter runs on a small runtime of its own ("otel" thread), because the subscriber is
//! installed before the server's runtime exists and must outlive it: the guard flushes the
//! batch of spans and shuts the exporter down when dropped at the end of `main`.

use std::collections::HashMap;
use std::io::IsTerminal as _;

use anyhow::{Context as _, anyhow};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{LogConfig, LogFormat};

/// The standard variable naming the OTLP collector (`http://host:4317`); unset: no export.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The standard variable naming this service in exported spans.
pub const SERVICE_NAME_ENV: &str = "OTEL_SERVICE_NAME";
/// The `tracing` target of the access log (one line per request, at info).
pub const ACCESS_LOG_TARGET: &str = "statiko::access";

/// Keeps telemetry alive; hold it until the process ends. Dropping it flushes the spans not
/// yet exported and stops the exporter.
#[must_use = "telemetry stops when the guard is dropped"]
pub struct TelemetryGuard {
    otlp: Option<(SdkTracerProvider, tokio::runtime::Runtime)>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("otlp", &self.otlp.is_some())
            .finish()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some((provider, runtime)) = self.otlp.take() {
            if let Err(err) = provider.shutdown() {
                // The subscriber may be gone already; stderr is the only place left.
                #[expect(clippy::print_stderr)]
                {
                    eprintln!("telemetry: flushing spans failed: {err}");
                }
            }
            runtime.shutdown_background();
        }
    }
}

/// Where spans go, read from the standard OpenTelemetry variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    pub endpoint: String,
    pub service_name: String,
}

impl OtlpSettings {
    /// `Some` when `OTEL_EXPORTER_OTLP_ENDPOINT` is set and non-empty.
    pub fn from_env(env: &HashMap<String, String>, default_service: &str) -> Option<Self> {
        let endpoint = env.get(OTLP_ENDPOINT_ENV)?.trim();
        if endpoint.is_empty() {
            return None;
        }
        let service_name = env
            .get(SERVICE_NAME_ENV)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .unwrap_or(default_service)
            .to_owned();
        Some(Self {
            endpoint: endpoint.to_owned(),
            service_name,
        })
    }
}

/// Installs the global tracing subscriber from the process environment: filter from `RUST_LOG`
/// when set, else `log.level`; format per `log.format`; output to stderr; OTLP export when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Fails if a subscriber is already installed.
pub fn init(log: &LogConfig) -> anyhow::Result<TelemetryGuard> {
    let env: HashMap<String, String> = std::env::vars().collect();
    init_with_env(log, &env)
}

/// [`init`] with the environment passed in.
pub fn init_with_env(
    log: &LogConfig,
    env: &HashMap<String, String>,
) -> anyhow::Result<TelemetryGuard> {
    let filter = filter_from(log, env.get("RUST_LOG").map(String::as_str))?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match log.format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => fmt.json().with_ansi(false).boxed(),
    };
    let fmt = fmt.with_filter(tracing_subscriber::filter::dynamic_filter_fn(|meta, _| {
        throttle_rustls(meta)
    }));
    let otlp = OtlpSettings::from_env(env, &default_service_name())
        .map(|settings| otlp_pipeline(&settings))
        .transpose()?;
    let otel_layer = otlp.as_ref().map(|(provider, _)| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer("statiko"))
    });
    tracing_subscriber::registry()
        .with(otel_layer)
        .with(fmt)
        .with(filter)
        .try_init()
        .map_err(|err| anyhow!("install tracing subscriber: {err}"))?;
    Ok(TelemetryGuard { otlp })
}

/// The exporter's runtime, the OTLP/gRPC exporter built inside it, and a batching provider.
fn otlp_pipeline(
    settings: &OtlpSettings,
) -> anyhow::Result<(SdkTracerProvider, tokio::runtime::Runtime)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otel")
        .enable_all()
        .build()
        .context("start the OTLP exporter's runtime")?;
    let exporter = {
        let _entered = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .build()
            .with_context(|| format!("{OTLP_ENDPOINT_ENV}: {:?}", settings.endpoint))?
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    Ok((provider, runtime))
}

/// rustls logs a WARN line for some malformed handshakes (an IP address or a duplicate name as
/// SNI, a warning alert), which any client can send as often as it likes: at most one rustls
/// line below ERROR passes per 10 s, so a client cannot flood the log (the listeners count
/// failed handshakes in their metrics). Used through `dynamic_filter_fn`: a plain `filter_fn`
/// caches its first answer per callsite, which would let every later line through.
fn throttle_rustls(meta: &tracing::Metadata<'_>) -> bool {
    static THROTTLE: std::sync::OnceLock<crate::listener::Throttle> = std::sync::OnceLock::new();
    if !meta.is_event()
        || !meta.target().starts_with("rustls")
        || *meta.level() == tracing::Level::ERROR
    {
        return true;
    }
    THROTTLE
        .get_or_init(|| crate::listener::Throttle::new(std::time::Duration::from_secs(10)))
        .ready()
        .is_some()
}

/// The executable's file name (`statiko-control`, `statiko-edge`), the default service name.
fn default_service_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "statiko".to_owned())
}

/// The filter `init` uses: `RUST_LOG` when set and non-empty, else `log.level`.
pub fn filter(log: &LogConfig) -> anyhow::Result<EnvFilter> {
    filter_from(log, std::env::var("RUST_LOG").ok().as_deref())
}

fn filter_from(log: &LogConfig, rust_log: Option<&str>) -> anyhow::Result<EnvFilter> {
    match rust_log {
        Some(directives) if !directives.trim().is_empty() => EnvFilter::try_new(directives)
            .with_context(|| format!("invalid RUST_LOG {directives:?}")),
        _ => EnvFilter::try_new(&log.level).context("log.level: invalid filter directive"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_warnings_are_throttled() {
        use std::io::Write;
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_filter(tracing_subscriber::filter::dynamic_filter_fn(|meta, _| {
                throttle_rustls(meta)
            }));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..50 {
                tracing::warn!(target: "rustls::msgs::handshake", "Illegal SNI hostname received");
                tracing::warn!(target: "statiko_edge", "ours");
            }
            tracing::error!(target: "rustls::server", "errors always pass");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("Illegal SNI").count(), 1, "{text}");
        assert_eq!(text.matches("ours").count(), 50);
        assert_eq!(text.matches("errors always pass").count(), 1);
    }

    #[test]
    fn level_filter_parses() {
        let log = LogConfig {
            level: "info,statiko=debug".into(),
            ..LogConfig::default()
        };
        assert!(EnvFilter::try_new(&log.level).is_ok());
    }

    #[test]
    fn otlp_settings_follow_the_standard_variables() {
        let mut env = HashMap::new();
        assert_eq!(OtlpSettings::from_env(&env, "statiko-edge"), None);
        env.insert(OTLP_ENDPOINT_ENV.to_owned(), " ".to_owned());
        assert_eq!(OtlpSettings::from_env(&env, "statiko-edge"), None);
        env.insert(
            OTLP_ENDPOINT_ENV.to_owned(),
            "http://collector:4317".to_owned(),
        );
        let settings = OtlpSettings::from_env(&env, "statiko-edge").expect("set");
        assert_eq!(settings.service_name, "statiko-edge");
        env.insert(SERVICE_NAME_ENV.to_owned(), "edge-eu-1".to_owned());
        let settings = OtlpSettings::from_env(&env, "statiko-edge").expect("set");
        assert_eq!(settings.endpoint, "http://collector:4317");
        assert_eq!(settings.service_name, "edge-eu-1");
    }
}
