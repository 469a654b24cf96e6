//! Observability of the API: a tower layer that opens a tracing span for every call (exported
//! over OTLP when configured) and counts calls by method and gRPC status, and the plain-HTTP
//! listener serving those counters as Prometheus text on `/metrics` (`control.metrics`).
//!
//! Control handles management calls, not traffic, so a mutex around the per-method table is
//! fine here. Label cardinality is bounded: at most [`MAX_METHODS`] distinct paths get their own
//! series (a client may send any path); the rest count under `_other`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};
use tracing::Instrument as _;

/// Distinct method paths with their own series.
pub const MAX_METHODS: usize = 256;

/// Latency buckets (seconds): 100 µs to 60 s (uploads and imports are slow).
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0, 60.0,
];

#[derive(Debug, Default)]
struct MethodStats {
    /// Calls by gRPC status code name.
    codes: BTreeMap<&'static str, u64>,
    /// Non-cumulative bucket counts, `BUCKETS.len() + 1` (the last is `+Inf`).
    buckets: Vec<u64>,
    sum: f64,
}

/// The counters, shared by the layer and the `/metrics` listener.
#[derive(Debug, Default)]
pub struct ControlMetrics {
    methods: Mutex<BTreeMap<String, MethodStats>>,
    in_flight: AtomicU64,
}

impl ControlMetrics {
    fn record(&self, path: &str, code: &'static str, elapsed: Duration) {
        let mut methods = self
            .methods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = if methods.contains_key(path) || methods.len() < MAX_METHODS {
            path
        } else {
            "_other"
        };
        let stats = methods.entry(key.to_owned()).or_default();
        *stats.codes.entry(code).or_default() += 1;
        if stats.buckets.is_empty() {
            stats.buckets = vec![0; BUCKETS.len() + 1];
        }
        let secs = elapsed.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        stats.buckets[i] += 1;
        stats.sum += secs;
    }

    /// The text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let methods = self
            .methods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP statiko_control_up 1 while control serves.\n# TYPE statiko_control_up gauge\nstatiko_control_up 1\n");
        let _ = writeln!(
            out,
            "# HELP statiko_control_build_info Version of this control.\n# TYPE statiko_control_build_info gauge\nstatiko_control_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            out,
            "# HELP statiko_control_requests_in_flight gRPC calls being served.\n# TYPE statiko_control_requests_in_flight gauge\nstatiko_control_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out.push_str("# HELP statiko_control_requests_total gRPC calls by method and status code.\n# TYPE statiko_control_requests_total counter\n");
        for (method, stats) in methods.iter() {
            for (code, n) in &stats.codes {
                let _ = writeln!(
                    out,
                    "statiko_control_requests_total{{method=\"{}\",code=\"{code}\"}} {n}",
                    escape(method)
                );
            }
        }
        out.push_str("# HELP statiko_control_request_duration_seconds Time from the request to the response head.\n# TYPE statiko_control_request_duration_seconds histogram\n");
        for (method, stats) in methods.iter() {
            let method = escape(method);
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += stats.buckets[i];
                let _ = writeln!(
                    out,
                    "statiko_control_request_duration_seconds_bucket{{method=\"{method}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += stats.buckets[BUCKETS.len()];
            let _ = writeln!(
                out,
                "statiko_control_request_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {cumulative}\n\
                 statiko_control_request_duration_seconds_sum{{method=\"{method}\"}} {}\n\
                 statiko_control_request_duration_seconds_count{{method=\"{method}\"}} {cumulative}",
                stats.sum
            );
        }
        out
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The gRPC status of a response: `grpc-status` in the head (errors, trailers-only), else OK.
/// A streaming call that fails after its head was sent reports its status in the trailers,
/// which this does not see; every `statiko.v1` call that can fail late is unary.
fn response_code_name<B>(response: &Response<B>) -> &'static str {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    statiko_common::grpc::code_name(tonic::Code::from_i32(code))
}

/// The tower layer: one span and one count per call.
#[derive(Debug, Clone, Default)]
pub struct MetricsLayer {
    metrics: Arc<ControlMetrics>,
}

impl MetricsLayer {
    pub fn new(metrics: Arc<ControlMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metered {
            metrics: self.metrics.clone(),
            inner,
        }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct Metered<S> {
    metrics: Arc<ControlMetrics>,
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for Metered<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let rpc = path.trim_start_matches('/');
        let (service, method) = rpc.split_once('/').unwrap_or((rpc, ""));
        let span = tracing::info_span!(
            "rpc",
            otel.name = %rpc,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let metrics = self.metrics.clone();
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                let result = future.await;
                metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                let code = match &result {
                    Ok(response) => response_code_name(response),
                    Err(_) => "INTERNAL",
                };
                tracing::Span::current().record("rpc.grpc.status_code", code);
                metrics.record(&path, code, started.elapsed());
                result
            }
            .instrument(span),
        )
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled (plain HTTP/1.1).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<ControlMetrics>,
    shutdown: CancellationToken,
) {
    statiko_common::http_admin::serve(
        listener,
        "metrics",
        move |req| respond(&metrics, req),
        shutdown,
    )
    .await;
}

fn respond<B>(metrics: &ControlMetrics, req: &Request<B>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (&Method::GET | &Method::HEAD, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".to_owned(),
        ),
    };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_method_and_code_with_a_cap() {
        let m = ControlMetrics::default();
        m.record(
            "/statiko.v1.SiteService/ListSites",
            "OK",
            Duration::from_millis(2),
        );
        m.record(
            "/statiko.v1.SiteService/ListSites",
            "OK",
            Duration::from_millis(3),
        );
        m.record(
            "/statiko.v1.SiteService/GetSite",
            "NOT_FOUND",
            Duration::from_micros(50),
        );
        for i in 0..MAX_METHODS + 3 {
            m.record(&format!("/x.Y/M{i}"), "UNIMPLEMENTED", Duration::ZERO);
        }
        let text = m.render();
        for line in [
            "statiko_control_requests_total{method=\"/statiko.v1.SiteService/ListSites\",code=\"OK\"} 2",
            "statiko_control_requests_total{method=\"/statiko.v1.SiteService/GetSite\",code=\"NOT_FOUND\"} 1",
            "statiko_control_request_duration_seconds_count{method=\"/statiko.v1.SiteService/ListSites\"} 2",
            "statiko_control_request_duration_seconds_bucket{method=\"/statiko.v1.SiteService/GetSite\",le=\"0.0001\"} 1",
            "statiko_control_requests_total{method=\"_other\",code=\"UNIMPLEMENTED\"} 5",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
