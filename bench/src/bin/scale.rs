//! Scale benchmark: `N` sites (default 10,000), each with its own imported certificate, written
//! straight into etcd (records as control writes them, keys sealed with the cluster's
//! `secretsEncryptionKey`), all serving one small app; then one edge is started cold.
//!
//! Prints: cold start to ready (process spawn to `/readyz` 200 with every site applied),
//! resident memory (`/proc/PID/status` VmRSS) once ready, and the time to apply one changed
//! site (an alias added), measured from the etcd put returning to the new alias being routed
//! (plain HTTP 301), plus the edge's own apply time from `/metrics`, over `CHANGES` changes.
//!
//! Run (release binaries beside this one): `cargo build --release -p statiko-edge
//! -p statiko-control -p statiko-bench && target/release/scale [N] [CHANGES]`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use etcd_client::PutOptions;
use futures::{StreamExt as _, TryStreamExt as _};
use statiko_bench::{ms, percentile};
use statiko_common::crypto::{self, SecretBox};
use statiko_common::keys::KeySchema;
use statiko_common::model::{
    self, AppRef, CertificateKind, CertificateRecord, SiteRecord, TlsChoice,
};
use statiko_tests::{
    Control, ControlOptions, Edge, EdgeOptions, Etcd, StateStore, TEST_SECRETS_ENCRYPTION_KEY,
    fixtures, http_get,
};

#[expect(clippy::print_stdout)]
#[tokio::main]
async fn main() -> Result<()> {
    statiko_tests::init();
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let changes: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(50);

    let etcd = Etcd::start().await?;
    let control = Control::start(ControlOptions::default().store(StateStore::etcd(&etcd))).await?;
    let api = control.admin().await?;
    fixtures::upload_app(&api, "shared", "1").await?;
    let keys = KeySchema::new("/statiko");
    let sealer = SecretBox::from_base64(TEST_SECRETS_ENCRYPTION_KEY)?;

    let t = Instant::now();
    let mut puts = Vec::with_capacity(2 * n);
    let now = model::now_ms();
    for i in 0..n {
        let domain = site_domain(i);
        let name = format!("cert-{i}");
        let (cert_pem, key_pem) = crypto::self_signed(std::slice::from_ref(&domain), 365)?;
        let cert = CertificateRecord {
            name: name.clone(),
            kind: CertificateKind::Imported,
            certificate_pem: cert_pem,
            key: sealer.seal(key_pem.as_bytes()),
            domains: vec![domain.clone()],
            not_before: now - 3_600_000,
            not_after: now + 365 * 86_400_000,
            fingerprint: format!("bench-{i}"),
            created_at: now,
            site: None,
        };
        let site = SiteRecord {
            domain: domain.clone(),
            aliases: Vec::new(),
            tls: TlsChoice::Imported {
                certificate: name.clone(),
            },
            app: Some(AppRef {
                name: "shared".into(),
                version: "1".into(),
            }),
            created_at: now,
            updated_at: now,
            deployed_at: Some(now),
            deployment: None,
            skew_protection_ms: None,
        };
        puts.push((keys.certificate(&name), model::encode(&cert)));
        puts.push((keys.site(&domain), model::encode(&site)));
    }
    let client = etcd.client().await?;
    futures::stream::iter(puts)
        .map(|(key, value)| {
            let mut client = client.clone();
            async move { client.put(key, value, None::<PutOptions>).await }
        })
        .buffer_unordered(64)
        .try_for_each(|_| futures::future::ok(()))
        .await?;
    let mut kv = client.clone();
    kv.put(keys.meta_state(), Vec::<u8>::new(), None).await?;
    println!(
        "wrote {n} sites + {n} certificates in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Cold start.
    let started = Instant::now();
    let mut options = EdgeOptions::new("edge-scale", StateStore::etcd(&etcd), &control.repo_dir());
    if std::env::var_os("SCALE_NO_LEADER").is_some() {
        options = options.config(serde_json::json!({"disallowLeadership": true}));
    }
    let edge = Edge::start(options).await?;
    let listening = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ready = http_get(edge.addrs().admin, "localhost", "/readyz").await?;
        if ready.status == 200 {
            let probe = http_get(edge.addrs().http, &site_domain(n - 1), "/").await?;
            if probe.status == 301 {
                break;
            }
        }
        ensure!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready = started.elapsed();
    let pid = pid_listening(edge.addrs().admin.port())?;
    let rss_ready = vm_rss_kib(pid)?;
    println!(
        "cold start: listening after {} ms, ready (all {n} sites routed) after {} ms; RSS {:.1} MiB",
        ms(listening),
        ms(ready),
        rss_ready as f64 / 1024.0
    );

    // One changed site at a time.
    let mut end_to_end = Vec::with_capacity(changes);
    let mut internal = Vec::with_capacity(changes);
    let mut kv = client.clone();
    for c in 0..changes {
        let i = (c * 7919) % n;
        let domain = site_domain(i);
        let alias = format!("alias-{c}.{domain}");
        let site = SiteRecord {
            domain: domain.clone(),
            aliases: vec![alias.clone()],
            tls: TlsChoice::Imported {
                certificate: format!("cert-{i}"),
            },
            app: Some(AppRef {
                name: "shared".into(),
                version: "1".into(),
            }),
            created_at: now,
            updated_at: model::now_ms(),
            deployed_at: Some(now),
            deployment: None,
            skew_protection_ms: None,
        };
        let (sum0, count0) = apply_stats(&edge).await?;
        kv.put(keys.site(&domain), model::encode(&site), None)
            .await?;
        kv.put(keys.meta_state(), Vec::<u8>::new(), None).await?;
        let t = Instant::now();
        loop {
            let probe = http_get(edge.addrs().http, &alias, "/").await?;
            if probe.status == 301 {
                break;
            }
            ensure!(
                t.elapsed() < Duration::from_secs(60),
                "{alias} never routed"
            );
        }
        end_to_end.push(t.elapsed());
        // The apply finishes (metrics, status) right after the swap the probe saw.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (sum1, count1) = apply_stats(&edge).await?;
        if count1 > count0 {
            internal.push(Duration::from_secs_f64((sum1 - sum0) / (count1 - count0)));
        }
    }
    let rss_after = vm_rss_kib(pid)?;
    end_to_end.sort_unstable();
    let slow = end_to_end
        .iter()
        .filter(|d| **d > Duration::from_millis(10))
        .count();
    println!(
        "put -> routed: p90 {} ms, max {} ms, {slow} of {changes} over 10 ms",
        ms(percentile(&mut end_to_end, 90.0)),
        ms(end_to_end.last().copied().unwrap_or_default()),
    );
    println!(
        "one changed site ({changes} changes): put -> routed p50 {} ms, p99 {} ms; edge apply p50 {} ms, p99 {} ms; RSS after {:.1} MiB",
        ms(percentile(&mut end_to_end, 50.0)),
        ms(percentile(&mut end_to_end, 99.0)),
        ms(percentile(&mut internal, 50.0)),
        ms(percentile(&mut internal, 99.0)),
        rss_after as f64 / 1024.0
    );
    Ok(())
}

fn site_domain(i: usize) -> String {
    format!("site-{i}.scale.test")
}

/// `statiko_edge_apply_duration_seconds` sum and count.
async fn apply_stats(edge: &Edge) -> Result<(f64, f64)> {
    let reply = http_get(edge.addrs().admin, "localhost", "/metrics").await?;
    let text = reply.text();
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((
        get("statiko_edge_apply_duration_seconds_sum "),
        get("statiko_edge_apply_duration_seconds_count "),
    ))
}

fn pid_listening(port: u16) -> Result<u32> {
    let out = std::process::Command::new("ss")
        .args(["-ltnpH", &format!("( sport = :{port} )")])
        .output()
        .context("run ss")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text
        .split("pid=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no process listens on {port}: {text}"))?;
    Ok(pid)
}

fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}
