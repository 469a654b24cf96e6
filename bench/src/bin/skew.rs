//! Skew protection cost, in process: the edge's request handler (no sockets) on a site whose
//! live bundle and three retired bundles have 10,000 files each, against the same site with skew
//! protection off (no retired deployments). Per request, p50 / p99 / max of `Handler::handle`:
//!
//! - a hit on the live version (skew protection must add nothing here);
//! - a 404 (a path in no bundle): the live 404 plus the look-ups in the three retired ones;
//! - a hit on the oldest retired deployment (the worst case: two misses first), beside a live hit.
//!
//! Run: `cargo build --release -p statiko-bench && target/release/skew [ITERATIONS]`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use statiko_bench::{ms, percentile};
use statiko_common::crypto::Digest;
use statiko_edge::bundle::{Body, StagedBundle, StaticFile};
use statiko_edge::serve::{Handler, Scheme};
use statiko_edge::table::{Retired, Route, RoutingTable, SiteRoute};

const FILES: usize = 10_000;
const HOST: &str = "bench.test";

/// A bundle of [`FILES`] small scripts named after `version`, and an index page.
fn bundle(version: usize) -> Result<StagedBundle> {
    let mut files = HashMap::with_capacity(FILES + 1);
    let mut dirs = HashSet::from(["/".to_owned(), "/assets".to_owned()]);
    for i in 0..FILES {
        let body = Bytes::from(format!("console.log({i}, {version});\n"));
        let file = StaticFile::new(
            body.len() as u64,
            Body::Memory(body),
            "text/javascript; charset=utf-8",
            &format!("\"{version}-{i}\""),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )?;
        files.insert(asset(version, i), Arc::new(file));
    }
    dirs.insert("/assets".to_owned());
    Ok(StagedBundle {
        digest: Digest::from([u8::try_from(version).unwrap_or(u8::MAX); 32]),
        root: "/nonexistent".into(),
        files,
        dirs,
        manifest: None,
        rules: Default::default(),
    })
}

fn asset(version: usize, i: usize) -> String {
    format!("/assets/chunk-{i}-{version:08x}.js")
}

fn handler(live: &Arc<StagedBundle>, retired: &[Arc<StagedBundle>]) -> Result<Handler> {
    let retired: Vec<Retired> = retired
        .iter()
        .enumerate()
        .map(|(i, bundle)| {
            Ok(Retired {
                deployment: http::HeaderValue::from_str(&format!("d{i}"))?,
                bundle: bundle.clone(),
                until_ms: i64::MAX,
            })
        })
        .collect::<Result<_>>()?;
    let mut table = RoutingTable::default();
    table.hosts.insert(
        HOST.into(),
        Route::Site(Arc::new(SiteRoute {
            domain: HOST.into(),
            app: None,
            bundle: Some(live.clone()),
            counters: Default::default(),
            retired: retired.into(),
        })),
    );
    Ok(Handler::new(Arc::new(ArcSwap::from_pointee(table))))
}

/// Per-request latency of `path` over `n` requests (after `n / 10` of warm-up).
async fn measure(
    handler: &Handler,
    path: &str,
    n: usize,
    want: StatusCode,
) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let request = Request::get(path).header(header::HOST, HOST).body(())?;
        let started = Instant::now();
        let response = handler.handle(request, Scheme::Https).await;
        let took = started.elapsed();
        anyhow::ensure!(response.status() == want, "{path}: {}", response.status());
        if i >= n / 10 {
            samples.push(took);
        }
    }
    Ok(samples)
}

fn line(name: &str, mut samples: Vec<Duration>) -> String {
    format!(
        "{name:<44} p50 {} ms  p99 {} ms  max {} ms",
        ms(percentile(&mut samples, 50.0)),
        ms(percentile(&mut samples, 99.0)),
        ms(percentile(&mut samples, 100.0)),
    )
}

#[expect(clippy::print_stdout)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("ITERATIONS must be a number")?
        .unwrap_or(200_000);
    let live = Arc::new(bundle(4)?);
    let retired: Vec<Arc<StagedBundle>> = (1..=3)
        .rev()
        .map(|v| bundle(v).map(Arc::new))
        .collect::<Result<_>>()?;
    let off = handler(&live, &[])?;
    let on = handler(&live, &retired)?;
    let live_path = asset(4, 4_321);
    let oldest_path = asset(1, 4_321);
    let missing = "/assets/chunk-none.js";
    println!("{n} requests per row, {FILES} files per bundle, 3 retired deployments when on");
    for (name, handler, path, want) in [
        (
            "live hit, skew protection off",
            &off,
            live_path.as_str(),
            StatusCode::OK,
        ),
        (
            "live hit, 3 retired",
            &on,
            live_path.as_str(),
            StatusCode::OK,
        ),
        (
            "404, skew protection off",
            &off,
            missing,
            StatusCode::NOT_FOUND,
        ),
        (
            "404, 3 retired looked up",
            &on,
            missing,
            StatusCode::NOT_FOUND,
        ),
        (
            "hit on the oldest retired (2 misses first)",
            &on,
            oldest_path.as_str(),
            StatusCode::OK,
        ),
    ] {
        let samples = measure(handler, path, n, want).await?;
        println!("{}", line(name, samples));
    }
    Ok(())
}
