//! The listeners under attack, against the real binaries over real sockets: 127.0.0.2 (and
//! 127.0.0.3) is the attacker, 127.0.0.1 the normal client. Short timeouts in the configs keep
//! the whole file to a few seconds per test.
//!
//! - the edge under idle connections (silent TCP on both listeners, silent TLS, PING-only
//!   HTTP/2, more than the per-client cap): normal requests keep getting 200 within a second,
//!   and the idle connections are closed within their timeouts; a duplicate `Host` gets 400;
//! - a request flood from one address gets 429 while another address is served;
//! - the PROXY protocol v1 and v2: the client address reaches the limits and the access log,
//!   a missing, malformed or untrusted header is dropped;
//! - control under 2,000 idle connections from one address answers within 2 s, uses no CPU while they
//!   sit, closes them after its handshake timeout, and does not spin when out of file
//!   descriptors (EMFILE); `Authorization: BEARER` works.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::json;
use statiko_common::tls_client::AcceptAnyServerCert;
use statiko_proto::v1::ListSitesRequest;
use statiko_proto::v1::site_service_client::SiteServiceClient;
use statiko_tests::fixtures::site;
use statiko_tests::{
    ADMIN_TOKEN, Control, ControlOptions, Edge, EdgeOptions, StateStore, millis, secs, wait_until,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const ATTACKER_2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const SITE: &str = "shop.test";

/// Lets this process hold thousands of sockets: the soft file limit up to the hard one.
fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

/// A TCP connection to `dst` from the loopback address `src`.
async fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let stream = tokio::time::timeout(secs(2), socket.connect(dst))
        .await
        .with_context(|| format!("connect {src} -> {dst} timed out"))?
        .with_context(|| format!("connect {src} -> {dst}"))?;
    Ok(stream)
}

/// `n` connections from `src`, opened 100 at a time, each sending `first` (one byte makes
/// sure the server has the connection even when its accept queue overflowed and SYN cookies
/// answered for it; a TLS record type byte alone keeps a handshake waiting).
async fn connect_many(
    src: Ipv4Addr,
    dst: SocketAddr,
    n: usize,
    first: &[u8],
) -> Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(n);
    for batch in (0..n).collect::<Vec<_>>().chunks(100) {
        let connects = batch.iter().map(|_| async {
            let mut stream = connect_from(src, dst).await?;
            stream.write_all(first).await?;
            anyhow::Ok(stream)
        });
        for stream in futures::future::join_all(connects).await {
            streams.push(stream?);
        }
    }
    Ok(streams)
}

/// Reads until the server closes (EOF or reset); the time it took, or `None` after `limit`.
async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|()| started.elapsed())
}

/// How many of `streams` the server closes within `limit` (checked concurrently).
async fn count_closed(streams: &mut [TcpStream], limit: Duration) -> usize {
    let checks = streams.iter_mut().map(|s| closed_within(s, limit));
    futures::future::join_all(checks)
        .await
        .into_iter()
        .filter(Option::is_some)
        .count()
}

fn tls_connector(alpn: &[u8]) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert::new(&provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn tls_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    alpn: &[u8],
) -> Result<TlsStream<S>> {
    let name = rustls_pki_types::ServerName::try_from(SITE)?;
    Ok(tls_connector(alpn).connect(name.to_owned(), stream).await?)
}

/// Sends a raw HTTP/1.1 request (`Connection: close`) and returns the status code, or `None`
/// when the server closed without answering.
async fn raw_request<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, head: &str) -> Option<u16> {
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn get_head(host: &str) -> String {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

/// A control on the file store with one site, and an edge following it with `edge_config`.
async fn control_and_edge(edge_config: serde_json::Value) -> Result<(Control, Edge)> {
    let control = Control::start(ControlOptions::default()).await?;
    control
        .admin()
        .await?
        .sites()
        .create_site(site(SITE, &[]))
        .await?;
    let edge = Edge::start(
        EdgeOptions::new(
            "edge-0",
            StateStore::File(control.state_dir()),
            &control.repo_dir(),
        )
        .config(edge_config),
    )
    .await?;
    Ok((control, edge))
}

/// One normal HTTPS and one HTTP request from 127.0.0.1: 200 each, within a second each.
async fn served_promptly(edge: &Edge) -> Result<()> {
    for https in [true, false] {
        let started = Instant::now();
        let reply = tokio::time::timeout(secs(1), async {
            if https {
                edge.https_get(SITE, "/").await
            } else {
                edge.http_get(SITE, "/").await
            }
        })
        .await
        .context("a normal request took over a second")??;
        ensure!(reply.status == 200, "normal request: {}", reply.status);
        ensure!(started.elapsed() < secs(1));
    }
    Ok(())
}

#[tokio::test]
async fn edge_serves_others_while_one_address_holds_idle_connections() -> Result<()> {
    statiko_tests::init();
    raise_nofile();
    let (_control, edge) = control_and_edge(json!({"edge": {
        "redirectHttp": false,
        "limits": {
            "headerReadTimeout": 1500,
            "idleTimeout": 2500,
            "tlsHandshakeTimeout": 1500,
            "perClient": {"maxConnections": 50},
        },
    }}))
    .await?;
    wait_until(secs(15), async || {
        anyhow::Ok(edge.https_get(SITE, "/").await?.status == 200)
    })
    .await?;
    let addrs = edge.addrs();

    // Silent TCP, more than the per-client cap, on both listeners.
    let mut silent_http = connect_many(ATTACKER, addrs.http, 120, b"").await?;
    let mut silent_https = connect_many(ATTACKER, addrs.https, 120, b"").await?;
    let opened = Instant::now();
    // Silent TLS: a finished handshake, then nothing.
    let mut silent_tls = Vec::new();
    for _ in 0..10 {
        let tcp = connect_from(ATTACKER_2, addrs.https).await?;
        silent_tls.push(tls_over(tcp, b"http/1.1").await?);
    }
    // PING-only HTTP/2: one with no request at all, one idle after a request.
    let mut pinging = Vec::new();
    for request_first in [false, true] {
        let tls = tls_over(connect_from(ATTACKER_2, addrs.https).await?, b"h2").await?;
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(millis(200))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await?;
        let conn = tokio::spawn(conn);
        if request_first {
            let request =
                http::Request::get(format!("https://{SITE}/")).body(Empty::<Bytes>::new())?;
            ensure!(sender.send_request(request).await?.status() == 200);
        }
        pinging.push((Instant::now(), request_first, conn, sender));
    }

    // Over the per-client cap: closed at once (50 held per listener).
    let refused_http = count_closed(&mut silent_http, millis(500)).await;
    let refused_https = count_closed(&mut silent_https, millis(500)).await;
    ensure!(
        refused_http >= 70 && refused_https >= 70,
        "connections over the per-client cap closed at once: http {refused_http}, https {refused_https}"
    );
    for _ in 0..5 {
        served_promptly(&edge).await?;
        tokio::time::sleep(millis(150)).await;
    }

    // The held ones are closed within their timeouts (1.5 s, checked 4 times per period).
    let limit = millis(1500 * 5 / 4 + 1500).saturating_sub(opened.elapsed());
    let http_closed = count_closed(&mut silent_http, limit).await;
    let https_closed = count_closed(&mut silent_https, limit).await;
    ensure!(
        http_closed == 120 && https_closed == 120,
        "silent TCP closed within {limit:?}: http {http_closed}/120, https {https_closed}/120"
    );
    for tls in &mut silent_tls {
        ensure!(
            closed_within(tls, secs(3)).await.is_some(),
            "silent TLS still open"
        );
    }
    for (started, request_first, conn, _sender) in pinging {
        let limit = if request_first { 2500 } else { 1500 };
        tokio::time::timeout(millis(limit * 5 / 4 + 1500), conn)
            .await
            .with_context(|| format!("PING-only h2 (request first: {request_first}) still open"))?
            .ok();
        let held = started.elapsed();
        // The edge's timer starts when it has sent the response, a little before `started` is
        // taken here (seen: 2.49 s for a 2.5 s idle timeout under load); 150 ms of slack still
        // tells the idle timeout from the 1.5 s header timeout.
        ensure!(
            held + millis(150) >= millis(limit),
            "PING-only h2 closed too early: {held:?}"
        );
    }
    served_promptly(&edge).await?;

    // A duplicate Host is refused (RFC 9112).
    let mut tcp = TcpStream::connect(addrs.http).await?;
    let status = raw_request(
        &mut tcp,
        &format!("GET / HTTP/1.1\r\nHost: {SITE}\r\nHost: other.test\r\nConnection: close\r\n\r\n"),
    )
    .await;
    ensure!(status == Some(400), "duplicate Host: {status:?}");

    let limited = edge
        .metric("statiko_edge_limited_total{reason=\"client_connections\"}")
        .await?;
    ensure!(
        limited >= 140.0,
        "client_connections refusals counted: {limited}"
    );
    Ok(())
}

#[tokio::test]
async fn request_flood_from_one_address_gets_429_while_another_is_served() -> Result<()> {
    statiko_tests::init();
    let (_control, edge) = control_and_edge(json!({"edge": {
        "redirectHttp": false,
        "limits": {"perClient": {
            "requestsPerSecond": 10, "requestBurst": 20,
            "handshakesPerSecond": 5, "handshakeBurst": 10,
        }},
    }}))
    .await?;
    wait_until(secs(15), async || {
        anyhow::Ok(edge.http_get(SITE, "/").await?.status == 200)
    })
    .await?;
    let tcp = connect_from(ATTACKER, edge.addrs().http).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let (mut ok, mut limited) = (0, 0);
    for i in 0..100 {
        let request = http::Request::get("/")
            .header(http::header::HOST, SITE)
            .body(Empty::<Bytes>::new())?;
        match sender.send_request(request).await?.status().as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            other => bail!("flood request: {other}"),
        }
        if i % 20 == 0 {
            // Another address keeps being served.
            let reply = edge.http_get(SITE, "/").await?;
            ensure!(
                reply.status == 200,
                "normal client during the flood: {}",
                reply.status
            );
        }
    }
    ensure!(
        ok >= 10 && limited >= 40,
        "flood: {ok} served, {limited} limited"
    );
    let counted = edge
        .metric("statiko_edge_limited_total{reason=\"client_requests\"}")
        .await?;
    ensure!(counted >= f64::from(limited), "counted {counted}");

    // New TLS connections over the per-client rate are closed before the handshake.
    let started = Instant::now();
    let (mut done, mut refused) = (0u32, 0u32);
    for _ in 0..100 {
        let tcp = connect_from(ATTACKER, edge.addrs().https).await?;
        match tls_over(tcp, b"http/1.1").await {
            Ok(_) => done += 1,
            Err(_) => refused += 1,
        }
    }
    let elapsed = started.elapsed();
    let reply = edge.https_get(SITE, "/").await?;
    ensure!(
        reply.status == 200,
        "normal client during the handshake flood: {}",
        reply.status
    );
    let allowed = 10.0 + 5.0 * elapsed.as_secs_f64() + 1.0;
    ensure!(
        f64::from(done) <= allowed && refused >= 50,
        "handshakes: {done} done, {refused} refused in {elapsed:?}"
    );
    let counted = edge
        .metric("statiko_edge_limited_total{reason=\"client_handshakes\"}")
        .await?;
    ensure!(counted >= f64::from(refused), "counted {counted}");
    // The figures in bench/RESULTS.md (shown with --no-capture).
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "edge: flood of 100 requests: {ok} served, {limited} got 429; 100 TLS connections \
             in {elapsed:?}: {done} handshakes, {refused} refused ({:.0}/s refused)",
            f64::from(refused) / elapsed.as_secs_f64()
        );
    }
    Ok(())
}

/// A v2 header: PROXY over TCP/IPv4 from `src`.
fn proxy_v2(src: Ipv4Addr, dst: SocketAddr) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&[127, 0, 0, 1]);
    out.extend_from_slice(&40000u16.to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

/// A v1 header from `src`.
fn proxy_v1(src: &str, dst: SocketAddr) -> Vec<u8> {
    format!("PROXY TCP4 {src} 127.0.0.1 40000 {}\r\n", dst.port()).into_bytes()
}

/// Plain HTTP over a connection from `from` that starts with `header`.
async fn proxied_http(from: Ipv4Addr, dst: SocketAddr, header: &[u8]) -> Result<Option<u16>> {
    let mut tcp = connect_from(from, dst).await?;
    tcp.write_all(header).await?;
    Ok(raw_request(&mut tcp, &get_head(SITE)).await)
}

#[tokio::test]
async fn proxy_protocol_reaches_limits_and_access_log() -> Result<()> {
    statiko_tests::init();
    let (_control, edge) = control_and_edge(json!({
        "log": {"accessLog": true},
        "edge": {
            "redirectHttp": false,
            "proxyProtocol": {"enabled": true, "trustedProxies": ["127.0.0.1/32"], "headerTimeout": 1000},
            "limits": {"perClient": {"requestsPerSecond": 0.5, "requestBurst": 2}},
        },
    }))
    .await?;
    let (http, https) = (edge.addrs().http, edge.addrs().https);
    let lb = Ipv4Addr::LOCALHOST;
    // Wait for the site, as a load balancer health check would (v1 UNKNOWN: the peer's address).
    wait_until(secs(15), async || {
        anyhow::Ok(proxied_http(lb, http, b"PROXY UNKNOWN\r\n").await? == Some(200))
    })
    .await?;

    // v1: the claimed client gets its burst of 2, then 429; another client is served.
    let header = proxy_v1("203.0.113.7", http);
    let statuses = [
        proxied_http(lb, http, &header).await?,
        proxied_http(lb, http, &header).await?,
        proxied_http(lb, http, &header).await?,
    ];
    ensure!(
        statuses == [Some(200), Some(200), Some(429)],
        "v1 client: {statuses:?}"
    );
    let other = proxied_http(lb, http, &proxy_v1("203.0.113.8", http)).await?;
    ensure!(
        other == Some(200),
        "another client behind the same proxy: {other:?}"
    );
    // v2 on plain HTTP and, before the TLS handshake, on HTTPS.
    let v2 = proxied_http(lb, http, &proxy_v2(Ipv4Addr::new(203, 0, 113, 9), http)).await?;
    ensure!(v2 == Some(200), "v2 over HTTP: {v2:?}");
    let mut tcp = connect_from(lb, https).await?;
    tcp.write_all(&proxy_v2(Ipv4Addr::new(203, 0, 113, 10), https))
        .await?;
    let mut tls = tls_over(tcp, b"http/1.1").await?;
    let status = raw_request(&mut tls, &get_head(SITE)).await;
    ensure!(status == Some(200), "v2 over HTTPS: {status:?}");

    // Dropped: no header, a malformed one, one from an untrusted peer, one that never ends.
    for (from, header) in [
        (lb, &b""[..]),
        (lb, b"PROXY TCP4 203.0.113.7 nonsense\r\n"),
        (lb, b"PROXY TCP9 203.0.113.7 127.0.0.1 1 2\r\n"),
        (ATTACKER, &proxy_v1("203.0.113.11", http)[..]),
    ] {
        let status = proxied_http(from, http, header).await?;
        ensure!(
            status.is_none(),
            "{:?} from {from}: answered {status:?}",
            String::from_utf8_lossy(header)
        );
    }
    let mut late = connect_from(lb, http).await?;
    late.write_all(b"PROXY TCP4 203.0.113.7").await?;
    ensure!(
        closed_within(&mut late, secs(3)).await.is_some(),
        "an unfinished header is dropped"
    );

    // The client addresses reached the access log.
    let log_path = edge.dir().join("edge.log");
    wait_until(secs(5), async || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        ["203.0.113.7", "203.0.113.8", "203.0.113.9", "203.0.113.10"]
            .iter()
            .all(|ip| {
                log.lines()
                    .any(|l| l.contains("statiko::access") && l.contains(ip))
            })
    })
    .await
    .context("client addresses in the access log")?;
    let log = std::fs::read_to_string(&log_path)?;
    ensure!(
        !log.contains("203.0.113.11"),
        "an untrusted peer's claim was served"
    );
    for (reason, least) in [
        ("proxy_header", 4.0),
        ("proxy_untrusted", 1.0),
        ("client_requests", 1.0),
    ] {
        let n = edge
            .metric(&format!(
                "statiko_edge_limited_total{{reason=\"{reason}\"}}"
            ))
            .await?;
        ensure!(n >= least, "{reason}: {n}");
    }
    Ok(())
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// Resident memory of `pid`, in MiB.
fn rss_mib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib / 1024)
}

/// CPU ticks `pid` used over `window`.
async fn cpu_over(pid: u32, window: Duration) -> Result<u64> {
    let before = cpu_ticks(pid)?;
    tokio::time::sleep(window).await;
    Ok(cpu_ticks(pid)? - before)
}

#[tokio::test]
async fn control_answers_under_thousands_of_idle_connections() -> Result<()> {
    statiko_tests::init();
    raise_nofile();
    let mut control = Control::start(ControlOptions::default().config(
        json!({"control": {"limits": {
            "maxConnections": 5000,
            "maxConnectionsPerClient": 2000,
            // Far longer than opening the 2,000 takes, even on a busy CI machine (8.2 s seen
            // there): the first ones must not time out and free slots before the 100 over the
            // cap are sent.
            "tlsHandshakeTimeout": 20000,
            "idleTimeout": 20000,
        }}}),
    ))
    .await?;
    let pid = control
        .process()
        .and_then(|p| p.id())
        .context("control pid")?;
    let addr = control.grpc_addr();

    // 2,000 silent connections from one address (its cap), then 100 more: closed at once.
    let started = Instant::now();
    let mut idle = connect_many(ATTACKER, addr, 2000, &[0x16]).await?;
    let opened = started.elapsed();
    // Let control take them all from its accept queue first.
    tokio::time::sleep(secs(1)).await;
    let mut over = connect_many(ATTACKER, addr, 100, &[0x16]).await?;
    // "At once": after control has accepted them (a debug build on a busy machine accepts a
    // few hundred per second), far before the 20 s timeouts.
    let refused = count_closed(&mut over, secs(3)).await;
    ensure!(
        refused == 100,
        "over the per-client cap: {refused}/100 closed at once (the 2,000 opened in {opened:?})"
    );
    let idle_cpu = cpu_over(pid, secs(2)).await?;
    ensure!(
        idle_cpu <= 10,
        "control used {idle_cpu} ticks over 2 s with idle connections"
    );
    let rss = rss_mib(pid)?;
    let call = Instant::now();
    let api = tokio::time::timeout(secs(2), async {
        let api = control.admin().await?;
        api.sites().list_sites(ListSitesRequest::default()).await?;
        anyhow::Ok(api)
    })
    .await
    .context("a gRPC call took over 2 s")??;
    let took = call.elapsed();
    drop(api);
    // Closed by the handshake timeout (20 s after they were accepted).
    let limit = millis(20_000 + 2500).saturating_sub(started.elapsed()) + opened;
    let closed = count_closed(&mut idle, limit).await;
    ensure!(
        closed == idle.len(),
        "closed {closed}/{} within the handshake timeout",
        idle.len()
    );
    drop(idle);

    // `BEARER` is the same scheme as `Bearer`.
    let mut sites = SiteServiceClient::with_interceptor(
        control.channel().await?,
        |mut request: tonic::Request<()>| {
            let value = format!("BEARER {ADMIN_TOKEN}")
                .parse()
                .expect("header value");
            request.metadata_mut().insert("authorization", value);
            Ok(request)
        },
    );
    sites.list_sites(ListSitesRequest::default()).await?;

    // Out of file descriptors: accept backs off instead of spinning, and control recovers.
    let status = tokio::process::Command::new("prlimit")
        .args(["--nofile=256:256", "--pid", &pid.to_string()])
        .status()
        .await?;
    ensure!(status.success(), "prlimit failed");
    let mut flood = Vec::new();
    for _ in 0..600 {
        match connect_from(ATTACKER_2, addr).await {
            Ok(stream) => flood.push(stream),
            Err(_) => break, // the backlog is full
        }
    }
    let cpu = cpu_over(pid, secs(2)).await?;
    ensure!(
        cpu <= 20,
        "control used {cpu} ticks over 2 s out of file descriptors"
    );
    // The accepted ones are closed by the handshake timeout (20 s), then the queued ones get in.
    let recovered = Instant::now();
    wait_until(secs(45), async || {
        control
            .admin()
            .await?
            .sites()
            .list_sites(ListSitesRequest::default())
            .await?;
        anyhow::Ok(())
    })
    .await
    .context("control did not recover after EMFILE")?;
    // The figures in bench/RESULTS.md (shown with --no-capture).
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "control: 2,000 idle connections opened in {opened:?}, {idle_cpu} CPU ticks over 2 s, \
             RSS {rss} MiB, \
             call answered in {took:?}; out of file descriptors with {} connections queued: \
             {cpu} CPU ticks over 2 s, then answered in {:?}",
            flood.len(),
            recovered.elapsed()
        );
    }
    Ok(())
}
