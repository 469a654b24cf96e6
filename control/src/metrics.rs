//! Observability of the API: a tower layer that opens a tracing span for every call (exported
//! over OTLP when configured) and counts calls by method and gRPC status on `prometheus-client`,
//! and the plain-HTTP listener serving those counters as Prometheus text on `/metrics`
//! (`control.metrics`).
//!
//! Label cardinality is bounded: at most [`MAX_METHODS`] distinct paths get their own series (a
//! client may send any path); the rest count under `_other`.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCodeLabels {
    method: String,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

type Durations = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// The counters, shared by the layer and the `/metrics` listener.
#[derive(Debug)]
pub struct ControlMetrics {
    registry: Registry,
    requests: Family<MethodCodeLabels, Counter>,
    durations: Durations,
    in_flight: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Methods with series of their own; locked across "is this method known or is there
    /// room" and adding it.
    admitted: Mutex<usize>,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        // Help texts without their final period: the registry adds it.
        let mut registry = Registry::with_prefix("statiko_control");
        let up = Gauge::<i64>::default();
        up.set(1);
        registry.register("up", "1 while control serves", up);
        registry.register(
            "build",
            "Version of this control",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "gRPC calls being served",
            in_flight.clone(),
        );
        let requests = Family::default();
        registry.register(
            "requests",
            "gRPC calls by method and status code",
            requests.clone(),
        );
        let durations: Durations = Family::new_with_constructor(|| Histogram::new(BUCKETS));
        registry.register(
            "request_duration_seconds",
            "Time from the request to the response head",
            durations.clone(),
        );
        Self {
            registry,
            requests,
            durations,
            in_flight,
            admitted: Mutex::new(0),
        }
    }
}

impl ControlMetrics {
    fn record(&self, path: &str, code: &'static str, elapsed: Duration) {
        let mut method = MethodLabels {
            method: path.to_owned(),
        };
        {
            let mut admitted = self
                .admitted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.durations.get(&method).is_none() {
                if *admitted < MAX_METHODS {
                    *admitted += 1;
                } else {
                    "_other".clone_into(&mut method.method);
                }
            }
            self.durations
                .get_or_create(&method)
                .observe(elapsed.as_secs_f64());
        }
        self.requests
            .get_or_create(&MethodCodeLabels {
                method: method.method,
                code,
            })
            .inc();
    }

    /// The text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
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
        metrics.in_flight.inc();
        let started = Instant::now();
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                let result = future.await;
                metrics.in_flight.dec();
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
            prometheus_text::CONTENT_TYPE,
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
