//! Release benchmarks on a real cluster (etcd, one control, three edges on this machine, through
//! the test harness), with the release binaries:
//!
//! - **window**: the mixed-version window. For each of `N` deploys of a fresh `MB`-megabyte
//!   bundle, three probes (one per edge) poll `/` over plain HTTP in a tight loop; the window is
//!   the time from the first answer of the new version on any edge to the first answer of the
//!   new version on the last edge. Atomic (the default of `stk deploy`) and immediate (the
//!   per-edge switch, `--immediate`) deploys, for contrast.
//! - **rollback**, as the issue defines it: from `stk deploy rollback SITE` (the process, without
//!   `--wait`) returning to the first answer of the old version on the last of the three edges,
//!   over `N` rollbacks. Every edge retains the old bundle, so each is a flip written by the
//!   call itself: an edge may serve it before stk has exited (counted as 0).
//! - **rss**: one edge's resident memory serving a 10,000-file site with 0, then 3, retained
//!   deployments of it (`edge.retainDeployments: 4`), then the **flip cost** of a rollback to
//!   one of them: call returned to served.
//!
//! A probe is a new loopback TCP connection per request (about 0.1-0.3 ms), so each figure is
//! exact to about one probe interval (printed).
//!
//! Run: `cargo build --release -j2 -p statiko-edge -p statiko-control -p statiko-bench &&
//! target/release/releases [N] [MB]` (defaults 20 and 50), or `... releases N MB window|rollback|rss`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use serde_json::json;
use statiko_bench::{ms, percentile};
use statiko_proto::v1::{DeployRequest, DeployStrategy, RollbackRequest};
use statiko_tests::cluster::Cluster;
use statiko_tests::fixtures::{self, Upload, site};
use statiko_tests::{Api, http_get, secs, wait_until};

/// One probe answer: when it came back and the version it showed.
type Sample = (Instant, String);

#[expect(clippy::print_stdout)]
#[tokio::main]
async fn main() -> Result<()> {
    statiko_tests::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map_or(Ok(20), |s| s.parse()).context("N")?;
    let mb: usize = args.get(1).map_or(Ok(50), |s| s.parse()).context("MB")?;
    let only = args.get(2).cloned();
    let wanted = |part: &str| only.as_deref().is_none_or(|o| o == part);
    println!("{}", load_line());
    if wanted("window") || wanted("rollback") {
        let cluster = Cluster::start_with(3, |options| {
            options.config(json!({"edge": {"redirectHttp": false}}))
        })
        .await?;
        cluster.settled().await?;
        let api = cluster.control.admin().await?;
        if wanted("window") {
            for strategy in [DeployStrategy::Atomic, DeployStrategy::Immediate] {
                let mut windows = window(&cluster, &api, strategy, n, mb).await?;
                println!(
                    "window, {:?}, {n} deploys of a fresh {mb} MB bundle to 3 edges: p50 {} ms, p99 {} ms, max {} ms",
                    strategy,
                    ms(percentile(&mut windows, 50.0)),
                    ms(percentile(&mut windows, 99.0)),
                    ms(percentile(&mut windows, 100.0)),
                );
                println!("  {}", load_line());
            }
        }
        if wanted("rollback") {
            let (mut served, mut calls) = rollback(&cluster, &api, n).await?;
            println!(
                "rollback, {n} rollbacks on 3 edges: call returned -> all 3 serve the old version: p50 {} ms, p99 {} ms, max {} ms (the call itself: p50 {} ms, p99 {} ms)",
                ms(percentile(&mut served, 50.0)),
                ms(percentile(&mut served, 99.0)),
                ms(percentile(&mut served, 100.0)),
                ms(percentile(&mut calls, 50.0)),
                ms(percentile(&mut calls, 99.0)),
            );
            println!("  {}", load_line());
        }
    }
    if wanted("rss") {
        rss().await?;
        println!("  {}", load_line());
    }
    Ok(())
}

/// The 1-minute load average and the CPU count, to print beside the figures.
fn load_line() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    format!(
        "machine load (1/5/15 min): {} on {cpus} CPUs",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Probes every edge until `stop`; returns each edge's samples.
fn start_probes(
    cluster: &Cluster,
    domain: &str,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Result<Vec<Sample>>>> {
    cluster
        .edges
        .iter()
        .map(|edge| {
            let (addr, stop, domain) = (edge.addrs().http, stop.clone(), domain.to_owned());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let response = http_get(addr, &domain, "/").await?;
                    samples.push((Instant::now(), response.text()));
                }
                anyhow::Ok(samples)
            })
        })
        .collect()
}

/// Stops the probes once every edge answered `page`; returns each edge's first such answer and
/// the mean probe interval.
async fn first_answers(
    probes: Vec<tokio::task::JoinHandle<Result<Vec<Sample>>>>,
    stop: &Arc<AtomicBool>,
    cluster: &Cluster,
    domain: &str,
    page: &str,
) -> Result<(Vec<Instant>, Duration)> {
    for edge in &cluster.edges {
        wait_until(secs(120), async || {
            let response = http_get(edge.addrs().http, domain, "/").await?;
            anyhow::Ok((response.text() == page).then_some(()))
        })
        .await?;
    }
    stop.store(true, Ordering::Relaxed);
    let mut firsts = Vec::new();
    let mut intervals = Vec::new();
    for probe in probes {
        let samples = probe.await??;
        let first = samples
            .iter()
            .find(|(_, text)| text == page)
            .map(|(at, _)| *at)
            .context("a probe never saw the new version")?;
        firsts.push(first);
        if let (Some(a), Some(b)) = (samples.first(), samples.last())
            && samples.len() > 1
        {
            intervals.push((b.0 - a.0) / (samples.len() as u32 - 1));
        }
    }
    let interval = intervals.iter().sum::<Duration>() / intervals.len().max(1) as u32;
    Ok((firsts, interval))
}

fn page(tag: &str) -> String {
    format!("<h1>{tag}</h1>")
}

/// A bundle with an index naming `tag` and `mb` megabytes of random bytes.
fn big_bundle(tag: &str, mb: usize, seed: &mut u64) -> Result<Vec<u8>> {
    let mut big = vec![0u8; mb * 1024 * 1024];
    for chunk in big.chunks_mut(8) {
        // xorshift64: incompressible, cheap.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let bytes = seed.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    fixtures::tar_zst(&[("index.html", page(tag).as_bytes()), ("big.bin", &big)])
}

#[expect(clippy::print_stdout)]
async fn window(
    cluster: &Cluster,
    api: &Api,
    strategy: DeployStrategy,
    n: usize,
    mb: usize,
) -> Result<Vec<Duration>> {
    let domain = format!("{}.window.bench", format!("{strategy:?}").to_lowercase());
    api.sites().create_site(site(&domain, &[])).await?;
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ strategy as u64;
    let mut windows = Vec::with_capacity(n);
    let mut intervals = Vec::with_capacity(n);
    for i in 0..=n {
        let tag = format!("{strategy:?}-{i}");
        Upload::new("big", &tag, big_bundle(&tag, mb, &mut seed)?)
            .send(api)
            .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let probes = start_probes(cluster, &domain, &stop);
        api.deployments()
            .deploy(DeployRequest {
                domain: domain.clone(),
                app: Some(fixtures::app_ref("big", &tag)),
                wait: false,
                strategy: strategy as i32,
                ..DeployRequest::default()
            })
            .await?;
        let (firsts, interval) =
            first_answers(probes, &stop, cluster, &domain, &page(&tag)).await?;
        // The first deploy only puts the site on a version.
        if i > 0 {
            let first = firsts.iter().min().context("three edges")?;
            let last = firsts.iter().max().context("three edges")?;
            windows.push(*last - *first);
            intervals.push(interval);
        }
    }
    println!(
        "  probe interval: p50 {} ms",
        ms(percentile(&mut intervals, 50.0))
    );
    Ok(windows)
}

async fn rollback(
    cluster: &Cluster,
    api: &Api,
    n: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let domain = "back.bench";
    api.sites().create_site(site(domain, &[])).await?;
    for version in ["1", "2"] {
        Upload::new(
            "small",
            version,
            fixtures::tar_gz(&[("index.html", page(version).as_bytes())])?,
        )
        .send(api)
        .await?;
        api.deployments()
            .deploy(DeployRequest {
                domain: domain.into(),
                app: Some(fixtures::app_ref("small", version)),
                wait: true,
                strategy: DeployStrategy::Atomic as i32,
                ..DeployRequest::default()
            })
            .await?;
    }
    let mut served = Vec::with_capacity(n);
    let mut calls = Vec::with_capacity(n);
    let mut live = "2";
    for _ in 0..n {
        let target = if live == "2" { "1" } else { "2" };
        let stop = Arc::new(AtomicBool::new(false));
        let probes = start_probes(cluster, domain, &stop);
        let called = Instant::now();
        let cli = cluster.control.stk(["deploy", "rollback", domain]).await?;
        let returned = Instant::now();
        ensure!(cli.status.success(), "stk deploy rollback failed: {cli:?}");
        let (firsts, _) = first_answers(probes, &stop, cluster, domain, &page(target)).await?;
        let last = firsts.iter().max().context("three edges")?;
        served.push(last.saturating_duration_since(returned));
        calls.push(returned - called);
        live = target;
        // Let the rollback's records settle (the next rollback needs it superseded).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((served, calls))
}

/// Resident memory (`VmRSS`) of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")
}

#[expect(clippy::print_stdout)]
async fn rss() -> Result<()> {
    let cluster = Cluster::start_with(1, |options| {
        options.config(json!({"edge": {"retainDeployments": 4, "redirectHttp": false}}))
    })
    .await?;
    let api = cluster.control.admin().await?;
    let domain = "files.bench";
    api.sites().create_site(site(domain, &[])).await?;
    let edge = &cluster.edges[0];
    let pid = edge.pid().context("the edge's pid")?;
    let mut readings = Vec::new();
    for version in 1..=4 {
        let names: Vec<String> = (0..10_000)
            .map(|i| format!("assets/chunk-{i}-{version:08x}.js"))
            .collect();
        let bodies: Vec<String> = (0..10_000)
            .map(|i| format!("console.log({i}, {version}); // {}\n", "x".repeat(900)))
            .collect();
        let index = page(&format!("files@{version}"));
        let mut files: Vec<(&str, &[u8])> = vec![("index.html", index.as_bytes())];
        files.extend(
            names
                .iter()
                .map(String::as_str)
                .zip(bodies.iter().map(String::as_bytes)),
        );
        Upload::new("files", &version.to_string(), fixtures::tar_gz(&files)?)
            .send(&api)
            .await?;
        api.deployments()
            .deploy(DeployRequest {
                domain: domain.into(),
                app: Some(fixtures::app_ref("files", &version.to_string())),
                wait: true,
                strategy: DeployStrategy::Atomic as i32,
                ..DeployRequest::default()
            })
            .await?;
        let response = http_get(edge.addrs().http, domain, "/").await?;
        ensure!(response.text() == index, "{}", response.text());
        // Let the seal and the background eviction settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        readings.push((version - 1, rss_kib(pid)?));
    }
    for (retained, kib) in readings {
        println!(
            "rss, one edge, a 10,000-file site (about 10 MB) with {retained} retained deployment(s): {:.1} MiB",
            kib as f64 / 1024.0
        );
    }
    // The flip cost: back to files@3, retained.
    let called = Instant::now();
    api.deployments()
        .rollback(RollbackRequest {
            domain: domain.into(),
            ..RollbackRequest::default()
        })
        .await?;
    let returned = Instant::now();
    let old = page("files@3");
    wait_until(secs(30), async || {
        let response = http_get(edge.addrs().http, domain, "/").await?;
        anyhow::Ok((response.text() == old).then_some(()))
    })
    .await?;
    let served = returned.elapsed();
    println!(
        "flip to a retained 10,000-file deployment: call {} ms, returned -> served {} ms (upper bound: one probe after another); rss after: {:.1} MiB",
        ms(returned - called),
        ms(served),
        rss_kib(pid)? as f64 / 1024.0
    );
    Ok(())
}
