//! Propagation benchmark: etcd, one control and three edges on this machine (the test harness);
//! the time from a `Deploy` call returning to all three edges serving the new version, over
//! `N` deploys of a bundle that is already staged and `N` deploys of a fresh 10 MB bundle.
//!
//! "Serving" is detected by polling each edge's admin `/status` (plain HTTP, a fresh loopback
//! connection, about 0.2 ms per probe) until its applied revision reaches the deploy's; the edge
//! reports a revision only after swapping its routing table and saving its local copy, so this
//! is an upper bound. After each timed deploy, an HTTPS request checks the page (not timed).
//!
//! The edges log as JSON; after the fresh deploys, every edge's `bundle staged` and `bundle
//! sealed` lines (one per staging, with the time each step took) are summed up per step, so a
//! slow propagation shows where the staging time goes.
//!
//! Run (release binaries beside this one): `cargo build --release -p statiko-edge
//! -p statiko-control -p statiko-bench && target/release/propagation [N]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use statiko_bench::{ms, percentile};
use statiko_tests::fixtures::{self, Upload, site};
use statiko_tests::{Api, Control, ControlOptions, Edge, EdgeOptions, Etcd, StateStore, http_get};

#[expect(clippy::print_stdout)]
#[tokio::main]
async fn main() -> Result<()> {
    statiko_tests::init();
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("N must be a number")?
        .unwrap_or(100);
    let etcd = Etcd::start().await?;
    let control = Control::start(ControlOptions::default().store(StateStore::etcd(&etcd))).await?;
    let mut edges = Vec::new();
    for i in 0..3 {
        edges.push(
            Edge::start(
                EdgeOptions::new(
                    &format!("edge-{i}"),
                    StateStore::etcd(&etcd),
                    &control.repo_dir(),
                )
                .config(serde_json::json!({"log": {"format": "json"}})),
            )
            .await?,
        );
    }
    let api = control.admin().await?;
    // a.bench is measured; b and c pin v1 and v2, so both stay staged on every edge.
    for domain in ["a.bench", "b.bench", "c.bench"] {
        api.sites().create_site(site(domain, &[])).await?;
    }
    fixtures::upload_app(&api, "small", "1").await?;
    fixtures::upload_app(&api, "small", "2").await?;
    deploy(&api, "b.bench", "small", "1", true).await?;
    deploy(&api, "c.bench", "small", "2", true).await?;
    deploy(&api, "a.bench", "small", "1", true).await?;

    // Staged: alternate a.bench between v1 and v2.
    let mut staged = Vec::with_capacity(n);
    for i in 0..n {
        let version = if i % 2 == 0 { "2" } else { "1" };
        let (started, revision) = deploy(&api, "a.bench", "small", version, false).await?;
        wait_applied(&edges, revision).await?;
        staged.push(started.elapsed());
        check_served(&edges, "a.bench", &format!("small@{version}")).await?;
    }

    println!(
        "staged bundle, {n} deploys to 3 edges (deploy returned -> all applied): p50 {} ms, p99 {} ms, max {} ms",
        ms(percentile(&mut staged, 50.0)),
        ms(percentile(&mut staged, 99.0)),
        ms(percentile(&mut staged, 100.0)),
    );

    // Fresh: a new 10 MB bundle each time (upload not timed).
    let logs: Vec<PathBuf> = edges.iter().map(|e| e.dir().join("edge.log")).collect();
    let log_starts: Vec<u64> = logs
        .iter()
        .map(|path| std::fs::metadata(path).map_or(0, |m| m.len()))
        .collect();
    let mut fresh = Vec::with_capacity(n);
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    for i in 0..n {
        let version = format!("{i}");
        let mut big = vec![0u8; 10 * 1024 * 1024];
        fill_random(&mut big, &mut seed);
        let index = format!("<h1>big@{version}</h1>");
        let bundle = fixtures::tar_zst(&[("index.html", index.as_bytes()), ("10m.bin", &big)])?;
        Upload::new("big", &version, bundle).send(&api).await?;
        let (started, revision) = deploy(&api, "a.bench", "big", &version, false).await?;
        wait_applied(&edges, revision).await?;
        fresh.push(started.elapsed());
        check_served(&edges, "a.bench", &format!("big@{version}")).await?;
    }

    println!(
        "fresh 10 MB bundle, {n} deploys to 3 edges: p50 {} ms, p99 {} ms, max {} ms",
        ms(percentile(&mut fresh, 50.0)),
        ms(percentile(&mut fresh, 99.0)),
        ms(percentile(&mut fresh, 100.0)),
    );
    // The last bundles' seals run after their deploys were served.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let steps = staging_steps(&logs, &log_starts)?;
    if !steps.is_empty() {
        println!("fresh 10 MB bundle, staging steps on the edges (ms, p50 / p99 / max):");
    }
    for (step, mut samples) in steps {
        println!(
            "  {step:<16} {} / {} / {} (n = {})",
            ms(percentile(&mut samples, 50.0)),
            ms(percentile(&mut samples, 99.0)),
            ms(percentile(&mut samples, 100.0)),
            samples.len(),
        );
    }
    Ok(())
}

/// The per-step durations (fields ending in `_ms`) of every staging logged after `starts`
/// (byte offsets into each log), by step name.
fn staging_steps(logs: &[PathBuf], starts: &[u64]) -> Result<BTreeMap<String, Vec<Duration>>> {
    let mut steps: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for (path, start) in logs.iter().zip(starts) {
        for line in read_from(path, *start)?.lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let Some(fields) = event["fields"].as_object() else {
                continue;
            };
            // `bundle staged` times the steps up to serving; `bundle sealed` the durability
            // work done after.
            let prefix = match fields.get("message").and_then(|m| m.as_str()) {
                Some("bundle staged") => "",
                Some("bundle sealed") => "sealed: ",
                _ => continue,
            };
            for (name, value) in fields {
                if let (Some(step), Some(ms)) = (name.strip_suffix("_ms"), value.as_f64()) {
                    steps
                        .entry(format!("{prefix}{step}"))
                        .or_default()
                        .push(Duration::from_secs_f64(ms / 1000.0));
                }
            }
        }
    }
    Ok(steps)
}

fn read_from(path: &Path, start: u64) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let start = usize::try_from(start)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    Ok(String::from_utf8_lossy(&bytes[start..]).into_owned())
}

/// Deploys; returns the instant the call returned and the deploy's store revision.
async fn deploy(
    api: &Api,
    domain: &str,
    name: &str,
    version: &str,
    wait: bool,
) -> Result<(Instant, i64)> {
    let reply = fixtures::deploy(api, domain, name, version, wait, Duration::from_secs(60)).await?;
    Ok((Instant::now(), reply.revision))
}

/// Until every edge reports `revision` applied, polling all three at once.
async fn wait_applied(edges: &[Edge], revision: i64) -> Result<()> {
    let probes = edges.iter().map(|edge| async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let reply = http_get(edge.addrs().admin, "localhost", "/status").await?;
            let status: serde_json::Value = serde_json::from_slice(&reply.body)?;
            if status["node"]["appliedRevision"]
                .as_i64()
                .is_some_and(|r| r >= revision)
            {
                return anyhow::Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "revision {revision} never applied on {}",
                edge.name()
            );
        }
    });
    futures::future::try_join_all(probes).await?;
    Ok(())
}

/// Every edge serves `tag` on `domain`'s index page.
async fn check_served(edges: &[Edge], domain: &str, tag: &str) -> Result<()> {
    for edge in edges {
        let reply = edge.https_get(domain, "/").await?;
        ensure!(
            reply.status == 200 && reply.text().contains(tag),
            "{} serves {} {:?}, not {tag}",
            edge.name(),
            reply.status,
            reply.text()
        );
    }
    Ok(())
}

/// xorshift64: incompressible filler without a random-number crate.
fn fill_random(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}
