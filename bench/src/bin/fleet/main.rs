//! Fleet benchmark: etcd, one control and N (default 200) real edge processes on this machine
//! (the harness's [`Fleet`]: small data dirs, ports from the OS, one runtime worker each), then:
//!
//! 1. `--deploys` atomic deploys (what `stk deploy` sends) of a staged bundle, one after the
//!    other: the time from the `Deploy` call returning to every edge serving the new bytes, by
//!    polling each edge over a keep-alive HTTP connection (p50 / p99 / max of the all-N time,
//!    and of the single edges); the same from the edges' own node records (watched in etcd);
//!    etcd's writes, bytes and watch events per deploy from its `/metrics`; the CPU per deploy
//!    of the leader edge, control, etcd and all edges (`/proc/PID/stat`);
//! 2. the same for `--immediate` immediate deploys;
//! 3. how long `stk cluster status` and `stk deploy --wait` take;
//! 4. `--kill` edges killed at once (SIGKILL) and started again: time to all of them serving;
//! 5. the leader killed: time until another edge holds the leader key.
//!
//! Run: `cargo run --release -p statiko-bench --bin fleet -- --edges 200` (builds the release
//! edge, control and `stk` first: `cargo build --release -p statiko-edge -p statiko-control
//! -p statiko-cli`).

mod measure;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use statiko_bench::{ms, percentile};
use statiko_common::keys::KeySchema;
use statiko_proto::v1::{DeployRequest, DeployStrategy};
use statiko_tests::cluster::KEY_PREFIX;
use statiko_tests::fixtures::{self, site};
use statiko_tests::{Fleet, OutputExt as _, Prober};

use crate::measure::{Cpu, EtcdMetrics, NodeReports};

/// Command-line options.
#[derive(Debug)]
struct Options {
    edges: usize,
    deploys: usize,
    immediate: usize,
    kill: usize,
    poll: Duration,
}

impl Options {
    fn parse() -> Result<Self> {
        let mut options = Self {
            edges: 200,
            deploys: 50,
            immediate: 20,
            kill: 50,
            poll: Duration::from_millis(10),
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            let number: u64 = value
                .parse()
                .with_context(|| format!("{flag}: {value:?} is not a number"))?;
            let count = usize::try_from(number)?;
            match flag.as_str() {
                "--edges" => options.edges = count,
                "--deploys" => options.deploys = count,
                "--immediate" => options.immediate = count,
                "--kill" => options.kill = count,
                "--poll-ms" => options.poll = Duration::from_millis(number),
                _ => bail!(
                    "unknown flag {flag} (--edges N, --deploys N, --immediate N, --kill N, --poll-ms MS)"
                ),
            }
        }
        if options.edges < 2 {
            bail!("--edges must be at least 2");
        }
        options.kill = options.kill.min(options.edges - 1);
        Ok(options)
    }
}

/// The measured site; `b.fleet` and `c.fleet` pin the two versions so both stay staged.
const SITE: &str = "a.fleet";

#[expect(clippy::print_stdout)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let options = Options::parse()?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "fleet: {} edges; load average at start: {}",
        options.edges,
        load.trim()
    );
    let started = Instant::now();
    let mut fleet = Fleet::start(options.edges, |o| {
        o.config(serde_json::json!({"edge": {"leaseTtl": 10}}))
    })
    .await?;
    println!(
        "started etcd, control and {} edges in {:.1} s; edge RSS (MiB) {}",
        options.edges,
        started.elapsed().as_secs_f64(),
        rss_summary(&fleet)
    );
    let api = fleet.control.admin().await?;
    for domain in [SITE, "b.fleet", "c.fleet"] {
        api.sites().create_site(site(domain, &[])).await?;
    }
    fixtures::upload_app(&api, "app", "1").await?;
    fixtures::upload_app(&api, "app", "2").await?;
    for (domain, version) in [("b.fleet", "1"), ("c.fleet", "2"), (SITE, "1")] {
        deploy(&api, domain, version, DeployStrategy::Atomic, true).await?;
    }
    let mut probers: Vec<Prober> = fleet
        .edges
        .iter()
        .map(|edge| Prober::new(edge.addrs().http))
        .collect();
    let body = |version: &str| fixtures::site_bundle_index(&format!("app@{version}"));
    wait_serving(&mut probers, SITE, &body("1"), options.poll).await?;
    println!(
        "all edges serve {SITE}; edge RSS (MiB) {}",
        rss_summary(&fleet)
    );

    let mut version = 1;
    for (strategy, count) in [
        (DeployStrategy::Atomic, options.deploys),
        (DeployStrategy::Immediate, options.immediate),
    ] {
        if count == 0 {
            continue;
        }
        let leader = leader_index(&fleet).await?;
        let cpu = Cpu::start(&fleet, leader);
        let etcd_before = EtcdMetrics::read(&fleet.etcd).await?;
        let mut reports = NodeReports::watch(&fleet.etcd, SITE).await?;
        let mut all = Vec::with_capacity(count);
        let mut single = Vec::with_capacity(count * options.edges);
        let mut reported = Vec::with_capacity(count);
        for _ in 0..count {
            version = 3 - version;
            let expected = body(&version.to_string());
            let app = format!("app@{version}");
            reports.expect(&app);
            deploy(&api, SITE, &version.to_string(), strategy, false).await?;
            let returned = Instant::now();
            let times = wait_serving(&mut probers, SITE, &expected, options.poll).await?;
            all.push(returned.elapsed());
            single.extend(times.iter().map(|t| t.saturating_duration_since(returned)));
            reported.push(reports.all_reported(options.edges, returned).await?);
        }
        // Let the last node-record writes land before the counters are read.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let etcd_after = EtcdMetrics::read(&fleet.etcd).await?;
        let cpu = cpu.stop(&fleet);
        let name = match strategy {
            DeployStrategy::Atomic => "atomic",
            _ => "immediate",
        };
        println!(
            "\n{name} deploys of a staged bundle: {count} to {} edges",
            options.edges
        );
        println!(
            "  deploy returned -> all edges serving (polled every {} ms): p50 {} / p99 {} / max {} ms",
            options.poll.as_millis(),
            ms(percentile(&mut all, 50.0)),
            ms(percentile(&mut all, 99.0)),
            ms(percentile(&mut all, 100.0)),
        );
        println!(
            "  deploy returned -> one edge serving: p50 {} / p99 {} / max {} ms",
            ms(percentile(&mut single, 50.0)),
            ms(percentile(&mut single, 99.0)),
            ms(percentile(&mut single, 100.0)),
        );
        println!(
            "  deploy returned -> every node record reports it: p50 {} / p99 {} / max {} ms",
            ms(percentile(&mut reported, 50.0)),
            ms(percentile(&mut reported, 99.0)),
            ms(percentile(&mut reported, 100.0)),
        );
        etcd_after.print_delta(&etcd_before, count, options.edges);
        cpu.print(count, options.edges);
    }

    // The CLI's answers.
    let mut status = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        fleet
            .control
            .stk(["cluster", "status"])
            .await?
            .assert_success();
        status.push(t.elapsed());
    }
    let mut waited = Vec::new();
    for _ in 0..5 {
        version = 3 - version;
        let t = Instant::now();
        fleet
            .control
            .stk(["deploy", SITE, &format!("app@{version}"), "--wait"])
            .await?
            .assert_success();
        waited.push(t.elapsed());
    }
    println!(
        "\nstk cluster status ({} nodes listed): p50 {} / max {} ms; stk deploy --wait: p50 {} / max {} ms (5 runs each, process start included)",
        options.edges,
        ms(percentile(&mut status, 50.0)),
        ms(percentile(&mut status, 100.0)),
        ms(percentile(&mut waited, 50.0)),
        ms(percentile(&mut waited, 100.0)),
    );

    // Kill `kill` edges at once (never the leader), then start them again.
    let leader = leader_index(&fleet).await?;
    let victims: Vec<usize> = (0..options.edges)
        .filter(|i| *i != leader)
        .take(options.kill)
        .collect();
    for &i in &victims {
        fleet.edges[i].kill().await?;
    }
    let t = Instant::now();
    fleet.restart(&victims).await?;
    let spawned = t.elapsed();
    let mut restarted: Vec<Prober> = victims
        .iter()
        .map(|&i| Prober::new(fleet.edges[i].addrs().http))
        .collect();
    wait_serving(
        &mut restarted,
        SITE,
        &body(&version.to_string()),
        options.poll,
    )
    .await?;
    println!(
        "\n{} edges killed (SIGKILL) and started again: all listening after {} ms, all serving after {} ms",
        victims.len(),
        ms(spawned),
        ms(t.elapsed()),
    );

    // Kill the leader.
    let leader = leader_index(&fleet).await?;
    let old = fleet.edges[leader].name().to_owned();
    fleet.edges[leader].kill().await?;
    let t = Instant::now();
    let new = loop {
        match leader_name(&fleet).await? {
            Some(name) if name != old => break name,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("no new leader within 120 s");
        }
    };
    println!(
        "leader {old} killed (SIGKILL): {new} leads after {} ms (edge.leaseTtl 10 s)",
        ms(t.elapsed())
    );
    Ok(())
}

/// `Deploy` of `app@version` to `domain`.
async fn deploy(
    api: &statiko_tests::Api,
    domain: &str,
    version: &str,
    strategy: DeployStrategy,
    wait: bool,
) -> Result<()> {
    api.deployments()
        .deploy(DeployRequest {
            domain: domain.to_owned(),
            app: Some(fixtures::app_ref("app", version)),
            wait,
            wait_timeout: Some(prost_types::Duration {
                seconds: 120,
                nanos: 0,
            }),
            strategy: strategy.into(),
        })
        .await
        .with_context(|| format!("deploy app@{version} to {domain}"))?;
    Ok(())
}

/// Polls every prober (all at once, each every `poll`) until each serves `expected` for
/// `host`; returns when each one first did.
async fn wait_serving(
    probers: &mut [Prober],
    host: &str,
    expected: &[u8],
    poll: Duration,
) -> Result<Vec<Instant>> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let probes = probers
        .iter_mut()
        .enumerate()
        .map(|(i, prober)| async move {
            loop {
                if prober.serves(host, expected).await {
                    return Ok(Instant::now());
                }
                if Instant::now() > deadline {
                    bail!("edge-{i} does not serve the expected bytes for {host} after 180 s");
                }
                tokio::time::sleep(poll).await;
            }
        });
    futures::future::try_join_all(probes).await
}

/// The leader's name from the election key.
async fn leader_name(fleet: &Fleet) -> Result<Option<String>> {
    let key = KeySchema::new(KEY_PREFIX).leader();
    let mut client = fleet.etcd.client().await?;
    let reply = client.get(key, None).await?;
    Ok(reply
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}

/// The index of the leader edge (`edge-{i}`), waiting for one to be elected.
async fn leader_index(fleet: &Fleet) -> Result<usize> {
    let t = Instant::now();
    loop {
        if let Some(name) = leader_name(fleet).await?
            && let Some(i) = fleet.edges.iter().position(|e| e.name() == name)
        {
            return Ok(i);
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("no leader elected");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Min / median / max resident set size of the running edges, in MiB.
fn rss_summary(fleet: &Fleet) -> String {
    let mut rss: Vec<f64> = fleet
        .edges
        .iter()
        .filter_map(|edge| edge.pid())
        .filter_map(|pid| measure::rss_kib(pid).ok())
        .map(|kib| kib as f64 / 1024.0)
        .collect();
    rss.sort_by(f64::total_cmp);
    match (rss.first(), rss.get(rss.len() / 2), rss.last()) {
        (Some(min), Some(median), Some(max)) => format!(
            "min {min:.1} / median {median:.1} / max {max:.1}, total {:.0} (Pss total {:.0})",
            rss.iter().sum::<f64>(),
            pss_total_mib(fleet)
        ),
        _ => "unknown".to_owned(),
    }
}

/// The edges' Pss added up (MiB): their memory together, shared code counted once.
fn pss_total_mib(fleet: &Fleet) -> f64 {
    let kib: u64 = fleet
        .edges
        .iter()
        .filter_map(|edge| edge.pid())
        .filter_map(|pid| measure::pss_kib(pid).ok())
        .sum();
    kib as f64 / 1024.0
}
