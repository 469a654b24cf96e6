//! Footprint benchmark: one edge serving `SITES` sites (default 10) on a single node (file
//! store, as `bench/run.sh` runs it), measured from `/proc/PID/status`:
//!
//! - idle: RSS (anonymous and file-backed) and threads 15 s after the last deploy, once the
//!   runtime's idle blocking threads are gone (they linger 10 s);
//! - under load, if `wrk` is on `PATH`: peak RSS (`VmHWM`) over 10 s of `wrk -t2 -c64` on
//!   plain HTTP and on HTTPS (1 KB page), with the req/s wrk reports; then idle again;
//! - start to ready: a restart (persisted state) from spawn to `/readyz` 200.
//!
//! Run (release binaries beside this one): `cargo build --release -p statiko-edge
//! -p statiko-control -p statiko-bench && target/release/footprint [SITES] [WORKER_THREADS]`;
//! `WORKER_THREADS` sets `edge.workerThreads` (default: the edge's default). The edge inherits
//! this process's environment, so glibc's allocator knobs apply to it as set here (e.g.
//! `MALLOC_ARENA_MAX=1 target/release/footprint 10`); `STATIKO_BIN_DIR` picks the binaries.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use statiko_proto::v1::DeployStrategy;
use statiko_tests::fixtures::{self, Upload, site};
use statiko_tests::{Control, ControlOptions, Edge, EdgeOptions, Prober, StateStore, http_get};

#[expect(clippy::print_stdout)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    statiko_tests::init();
    let mut args = std::env::args().skip(1);
    let sites: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let workers: Option<u32> = args.next().map(|s| s.parse()).transpose()?;
    let dir = tempfile::tempdir()?;
    let store = StateStore::File(dir.path().join("state"));
    let control = Control::start(ControlOptions::default().store(store.clone())).await?;
    let mut edge_config = serde_json::json!({"edge": {"redirectHttp": false}});
    if let Some(workers) = workers {
        edge_config["edge"]["workerThreads"] = workers.into();
    }
    let mut edge = Edge::start(
        EdgeOptions::new("edge-footprint", store, &control.repo_dir())
            .config(edge_config)
            .env("RUST_LOG", "warn"),
    )
    .await?;
    let api = control.admin().await?;
    // A 1 KB page and a 100 KB asset per site, like the bench files.
    let page = vec![b'x'; 1024];
    let asset = vec![b'y'; 100 * 1024];
    let bundle = fixtures::tar_gz(&[("index.html", &page), ("100k.bin", &asset)])?;
    Upload::new("app", "1", bundle).send(&api).await?;
    let domains: Vec<String> = (0..sites).map(|i| format!("s{i}.footprint")).collect();
    for domain in &domains {
        api.sites().create_site(site(domain, &[])).await?;
        api.deployments()
            .deploy(statiko_proto::v1::DeployRequest {
                domain: domain.clone(),
                app: Some(fixtures::app_ref("app", "1")),
                wait: true,
                strategy: DeployStrategy::Atomic.into(),
                ..Default::default()
            })
            .await?;
    }
    for domain in &domains {
        let mut prober = Prober::new(edge.addrs().http);
        let t = Instant::now();
        while !prober.serves(domain, &page).await {
            if t.elapsed() > Duration::from_secs(30) {
                bail!("{domain} is not served");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let pid = edge.pid().context("edge pid")?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    println!("{sites} sites, idle: {}", memory(pid)?);

    if statiko_tests::tool_path("wrk").is_some() {
        for (name, url) in [
            ("plain-1k", format!("http://{}/", edge.addrs().http)),
            ("tls-1k", format!("https://{}/", edge.addrs().https)),
        ] {
            let output = tokio::process::Command::new("wrk")
                .args(["-t2", "-c64", "-d10s", "-H", "Host: s0.footprint", &url])
                .output()
                .await?;
            let text = String::from_utf8_lossy(&output.stdout);
            let rate = text
                .lines()
                .find(|l| l.starts_with("Requests/sec"))
                .unwrap_or("Requests/sec: ?")
                .trim()
                .to_owned();
            println!("under wrk -t2 -c64 10 s {name}: {rate}; {}", memory(pid)?);
        }
        tokio::time::sleep(Duration::from_secs(15)).await;
        println!("idle again: {}", memory(pid)?);
    } else {
        println!("wrk not found: no figures under load (apt-get install wrk)");
    }

    let mut ready = Vec::new();
    for _ in 0..5 {
        edge.terminate().await?;
        let t = Instant::now();
        edge.restart().await?;
        loop {
            let reply = http_get(edge.addrs().admin, "localhost", "/readyz").await;
            if reply.is_ok_and(|r| r.status.is_success()) {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("not ready after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ready.push(t.elapsed());
    }
    ready.sort();
    println!(
        "start to ready (restart with the persisted state; spawn -> /readyz 200), 5 runs: median {} ms, max {} ms",
        statiko_bench::ms(ready[2]),
        statiko_bench::ms(ready[4]),
    );
    Ok(())
}

/// `VmRSS (RssAnon + RssFile), Pss, Private_Dirty, peak VmHWM, Threads` of `pid`, from
/// `/proc/PID/status` and `/proc/PID/smaps_rollup`.
fn memory(pid: u32) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |text: &str, name: &str| -> String {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let mib = |text: &str, name: &str| -> String {
        let kib: f64 = field(text, name)
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap_or(0.0);
        format!("{:.1} MiB", kib / 1024.0)
    };
    Ok(format!(
        "RSS {} (anon {}, file {}), Pss {}, Private_Dirty {}, peak {}, {} threads",
        mib(&status, "VmRSS:"),
        mib(&status, "RssAnon:"),
        mib(&status, "RssFile:"),
        mib(&rollup, "Pss:"),
        mib(&rollup, "Private_Dirty:"),
        mib(&status, "VmHWM:"),
        field(&status, "Threads:")
    ))
}
