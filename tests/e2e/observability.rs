//! Observability end to end: the edge's admin `/metrics` and control's `/metrics` are scraped
//! after real traffic and API calls; control's spans reach a real OTLP/gRPC receiver running
//! in this test process.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use serde_json::json;
use statiko_proto::v1::{DeployRequest, ListSitesRequest};
use statiko_tests::fixtures::{self, app_ref, site};
use statiko_tests::{
    Control, ControlOptions, Edge, EdgeOptions, Etcd, StateStore, free_port, http_get,
    require_tool, secs, wait_until,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// Parses a Prometheus text exposition into `series (name{labels}) -> value`.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(addr: std::net::SocketAddr) -> Result<(String, HashMap<String, f64>)> {
    let reply = http_get(addr, "localhost", "/metrics").await?;
    ensure!(reply.status == 200, "/metrics on {addr}: {}", reply.status);
    ensure!(
        reply
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")),
        "content type {:?}",
        reply.header("content-type")
    );
    let text = reply.text();
    let parsed = parse_metrics(&text);
    Ok((text, parsed))
}

/// The series shapes of an exposition, one line each: `<binary> <type> <name>{<label names>}`,
/// with the type from the family's `# TYPE` line (`_bucket`, `_sum` and `_count` samples belong to
/// their histogram's family). Label values are left out: they depend on the traffic.
fn series_shapes(binary: &str, text: &str) -> Result<BTreeSet<String>> {
    let types: HashMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    let mut shapes = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, _value) = line
            .rsplit_once(' ')
            .with_context(|| format!("sample without a value: {line:?}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, label_names(labels.trim_end_matches('}'))?),
            None => (series, Vec::new()),
        };
        let family = ["", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| types.get(name.strip_suffix(suffix)?).copied())
            .with_context(|| format!("no # TYPE for {name}"))?;
        shapes.insert(format!("{binary} {family} {name}{{{}}}", labels.join(",")));
    }
    Ok(shapes)
}

/// The label names of `a="x",b="y\"z"`, sorted.
fn label_names(labels: &str) -> Result<Vec<&str>> {
    let mut names = Vec::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, value) = rest
            .split_once("=\"")
            .with_context(|| format!("malformed labels {labels:?}"))?;
        names.push(name);
        // The value ends at the first quote not escaped by a backslash.
        let mut escaped = false;
        let end = value
            .char_indices()
            .find(|&(_, c)| {
                let end = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                end
            })
            .map(|(i, _)| i)
            .with_context(|| format!("unterminated label value in {labels:?}"))?;
        rest = value[end + 1..].trim_start_matches(',');
    }
    names.sort_unstable();
    Ok(names)
}

fn value(metrics: &HashMap<String, f64>, series: &str) -> f64 {
    metrics.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn edge_and_control_metrics_are_scraped() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    statiko_tests::init();
    let etcd = Etcd::start().await?;
    let metrics_port = free_port()?;
    let control = Control::start(
        ControlOptions::default()
            .store(StateStore::etcd(&etcd))
            .config(json!({"control": {"metrics": format!("127.0.0.1:{metrics_port}")}})),
    )
    .await?;
    let edge = Edge::start(EdgeOptions::new(
        "edge-0",
        StateStore::etcd(&etcd),
        &control.repo_dir(),
    ))
    .await?;
    let api = control.admin().await?;
    api.sites()
        .create_site(site("metrics.test", &["www.metrics.test"]))
        .await?;
    fixtures::upload_app(&api, "shop", "1").await?;
    api.deployments()
        .deploy(DeployRequest {
            domain: "metrics.test".to_owned(),
            app: Some(app_ref("shop", "1")),
            wait: true,
            wait_timeout: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
            ..DeployRequest::default()
        })
        .await?;
    api.sites().list_sites(ListSitesRequest::default()).await?;

    for _ in 0..3 {
        let page = edge.https_get("metrics.test", "/").await?;
        ensure!(page.status == 200, "metrics.test: {}", page.status);
    }
    let missing = edge.https_get("metrics.test", "/missing.html").await?;
    ensure!(missing.status == 404);
    let alias = edge.https_get("www.metrics.test", "/").await?;
    ensure!(alias.status == 301);
    let unknown = edge.https_get("nobody.test", "/").await?;
    ensure!(unknown.status == 404);

    let status = edge.status().await?;
    let applied = status["node"]["appliedRevision"]
        .as_i64()
        .context("appliedRevision in /status")?;
    let (text, m) = scrape(edge.addrs().admin).await?;
    let ok = value(
        &m,
        r#"statiko_edge_requests_total{site="metrics.test",code="2xx"}"#,
    );
    ensure!(ok >= 3.0, "2xx for metrics.test: {ok}\n{text}");
    ensure!(
        value(
            &m,
            r#"statiko_edge_requests_total{site="metrics.test",code="3xx"}"#
        ) >= 1.0
    );
    ensure!(
        value(
            &m,
            r#"statiko_edge_requests_total{site="metrics.test",code="4xx"}"#
        ) >= 1.0
    );
    ensure!(
        value(
            &m,
            r#"statiko_edge_requests_total{site="_unknown",code="4xx"}"#
        ) >= 1.0,
        "unknown host not counted\n{text}"
    );
    ensure!(
        value(
            &m,
            r#"statiko_edge_response_bytes_total{site="metrics.test"}"#
        ) > 0.0
    );
    ensure!(value(&m, r#"statiko_edge_request_duration_seconds_count"#) >= 6.0);
    ensure!(
        value(
            &m,
            r#"statiko_edge_request_duration_seconds_bucket{le="+Inf"}"#
        ) == value(&m, "statiko_edge_request_duration_seconds_count")
    );
    ensure!(
        value(&m, "statiko_edge_applied_revision") == applied as f64,
        "applied revision {applied}\n{text}"
    );
    ensure!(value(&m, "statiko_edge_sync_lag_revisions") == 0.0);
    ensure!(value(&m, r#"statiko_edge_tls_handshakes_total"#) >= 6.0);
    ensure!(
        value(
            &m,
            r#"statiko_edge_connections_accepted_total{listener="https"}"#
        ) >= 6.0
    );
    ensure!(value(&m, "statiko_edge_apply_duration_seconds_count") >= 1.0);
    ensure!(value(&m, "statiko_edge_sites") == 1.0);
    ensure!(m.contains_key("statiko_edge_staging_failures_total"));
    ensure!(m.contains_key("statiko_edge_leader"));
    // Counters only grow.
    edge.https_get("metrics.test", "/").await?;
    let (_, again) = scrape(edge.addrs().admin).await?;
    ensure!(
        value(
            &again,
            r#"statiko_edge_requests_total{site="metrics.test",code="2xx"}"#
        ) == ok + 1.0
    );

    let control_addr = std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let (text, m) = scrape(control_addr).await?;
    for (series, at_least) in [
        (
            r#"statiko_control_requests_total{method="/statiko.v1.SiteService/CreateSite",code="OK"}"#,
            1.0,
        ),
        (
            r#"statiko_control_requests_total{method="/statiko.v1.SiteService/ListSites",code="OK"}"#,
            1.0,
        ),
        (
            r#"statiko_control_requests_total{method="/statiko.v1.DeploymentService/Deploy",code="OK"}"#,
            1.0,
        ),
        (
            r#"statiko_control_request_duration_seconds_count{method="/statiko.v1.SiteService/ListSites"}"#,
            1.0,
        ),
        ("statiko_control_up", 1.0),
    ] {
        ensure!(
            value(&m, series) >= at_least,
            "{series} below {at_least}\n{text}"
        );
    }
    // A refused call is counted with its code.
    let anonymous = control.anonymous().await?;
    let refused = anonymous
        .sites()
        .list_sites(ListSitesRequest::default())
        .await;
    ensure!(refused.is_err());
    let (text, m) = scrape(control_addr).await?;
    ensure!(
        value(
            &m,
            r#"statiko_control_requests_total{method="/statiko.v1.SiteService/ListSites",code="UNAUTHENTICATED"}"#
        ) == 1.0,
        "{text}"
    );

    // The series both expose, by name and label names, are those checked into
    // tests/metrics-series.txt: a change of exposition (such as a port to another metrics
    // library) must keep them or change the list on purpose. The edge's certificate series
    // appears once the leader has made the site's self-signed certificate.
    let edge_text = wait_until(secs(30), async || {
        let (text, _) = scrape(edge.addrs().admin).await?;
        anyhow::Ok(
            text.contains("statiko_edge_certificate_expiry_timestamp_seconds{")
                .then_some(text),
        )
    })
    .await?;
    let mut shapes = series_shapes("edge", &edge_text)?;
    shapes.extend(series_shapes("control", &text)?);
    let expected: BTreeSet<String> = include_str!("../metrics-series.txt")
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let shown = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join("\n");
    ensure!(
        shapes == expected,
        "the exposed series differ from tests/metrics-series.txt\nmissing:\n{}\nnew:\n{}\nexposed now:\n{}",
        shown(&expected.difference(&shapes).cloned().collect()),
        shown(&shapes.difference(&expected).cloned().collect()),
        shown(&shapes),
    );
    Ok(())
}

/// A real OTLP/gRPC trace receiver: keeps `(service.name, span name)` of every span.
#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, String)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    AnyValue::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test]
async fn control_spans_reach_an_otlp_receiver() -> Result<()> {
    statiko_tests::init();
    let receiver = Receiver::default();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let control = Control::start(
        ControlOptions::default()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_SERVICE_NAME", "statiko-control-test")
            // Export every 100 ms instead of the default 5 s.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100"),
    )
    .await?;
    let api = control.admin().await?;
    api.sites().create_site(site("otel.test", &[])).await?;
    api.sites().list_sites(ListSitesRequest::default()).await?;

    let wanted = [
        "statiko.v1.SiteService/CreateSite",
        "statiko.v1.SiteService/ListSites",
    ];
    let result = wait_until(secs(20), async || {
        let spans = receiver
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let all = wanted.iter().all(|name| {
            spans
                .iter()
                .any(|(service, span)| service == "statiko-control-test" && span == name)
        });
        anyhow::Ok(all.then_some(spans))
    })
    .await;
    let spans = receiver
        .spans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    server.abort();
    result.with_context(|| {
        format!(
            "spans received: {spans:?}\ncontrol log:\n{}",
            control.log_tail()
        )
    })?;
    Ok(())
}
