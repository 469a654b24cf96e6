//! Leadership and certificates against real processes: etcd, control, three edges and pebble.
//! An ACME site gets a pebble-issued certificate on every edge, an added alias gets a
//! certificate covering it, killing the leader hands leadership to another edge within the
//! lease TTL and issuance goes on, `disallowLeadership` nodes never lead, self-signed
//! certificates cover the aliases on every edge, the store holds no private key in clear, a
//! failed issuance is retried, shown in status and notified, and a wrong secrets key stops
//! an edge at start.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use statiko_common::crypto::{format_digest, sha256};
use statiko_common::model::{self, CertificateKind, CertificateRecord};
use statiko_proto::v1::{AliasList, ListNodesRequest, TlsType, UpdateSiteRequest};
use statiko_tests::fixtures::{site, tls};
use statiko_tests::{
    Control, ControlOptions, Edge, EdgeOptions, Etcd, Pebble, StateStore, free_port, require_tool,
    run_bin, secs, wait_until,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `edge.leaseTtl` of the test edges.
const TTL: Duration = Duration::from_secs(3);

fn tools() -> bool {
    statiko_tests::init();
    require_tool("etcd") && require_tool("pebble") && require_tool("pebble-challtestsrv")
}

fn acme_config(pebble: &Pebble) -> Value {
    json!({"acme": {
        "directory": pebble.directory_url(),
        "caBundle": pebble.ca_bundle(),
        "email": "ops@statiko.test",
    }})
}

fn edge_options(name: &str, etcd: &Etcd, control: &Control) -> EdgeOptions {
    EdgeOptions::new(name, StateStore::etcd(etcd), &control.repo_dir())
        .config(json!({"edge": {"leaseTtl": TTL.as_secs()}}))
}

/// Names of the edges whose `/status` says they lead (edges that do not answer are skipped).
async fn leaders(edges: &[&Edge]) -> Vec<String> {
    let mut out = Vec::new();
    for edge in edges {
        if let Ok(status) = edge.status().await
            && status["node"]["leader"] == true
        {
            out.push(edge.name().to_owned());
        }
    }
    out
}

/// No private key, account key or CSR key is stored in clear.
async fn assert_no_clear_keys(etcd: &Etcd) -> Result<()> {
    let dump = crate::control_common::etcd_dump(etcd).await?;
    for (key, value) in &dump {
        ensure!(
            !value.contains("PRIVATE KEY") && !value.contains("key_pkcs8"),
            "{key} holds a private key in clear"
        );
    }
    let sealed: Vec<&String> = dump
        .iter()
        .filter(|(k, _)| k.contains("/certificates/") || k.ends_with("/acme/account"))
        .map(|(k, _)| k)
        .collect();
    ensure!(!sealed.is_empty(), "no certificate records at all");
    Ok(())
}

async fn leader_record(
    etcd: &Etcd,
    kind: CertificateKind,
    site: &str,
) -> Result<CertificateRecord> {
    let name = model::leader_certificate_name(kind, site);
    let mut client = etcd.client().await?;
    let response = client
        .get(format!("/statiko/v1/certificates/{name}"), None)
        .await?;
    let kv = response
        .kvs()
        .first()
        .with_context(|| format!("no certificate {name} yet"))?;
    Ok(model::decode(kv.value())?)
}

#[tokio::test]
async fn acme_certificates_reach_every_edge_and_survive_leader_failover() -> Result<()> {
    if !tools() {
        return Ok(());
    }
    let etcd = Etcd::start().await?;
    let control = Control::start(ControlOptions::default().store(StateStore::etcd(&etcd))).await?;
    // Validations go to edge-2, which may never lead: the leader is always another edge, so
    // the challenge responses reach edge-2 through the store.
    let validation_port = free_port()?;
    let pebble = Pebble::start(validation_port).await?;
    let mut edges = Vec::new();
    for i in 0..2 {
        edges.push(
            Edge::start(
                edge_options(&format!("edge-{i}"), &etcd, &control).config(acme_config(&pebble)),
            )
            .await?,
        );
    }
    edges.push(
        Edge::start(
            edge_options("edge-2", &etcd, &control)
                .config(acme_config(&pebble))
                .config(json!({
                    "disallowLeadership": true,
                    "edge": {"http": format!("127.0.0.1:{validation_port}")},
                })),
        )
        .await?,
    );
    let first_leader = wait_until(secs(10), async || {
        let all: Vec<&Edge> = edges.iter().collect();
        let leaders = leaders(&all).await;
        (leaders.len() == 1).then(|| leaders[0].clone())
    })
    .await?;
    ensure!(first_leader != "edge-2", "a disallowLeadership node leads");

    // `stk cluster status` (ListNodes) names the leader.
    let api = control.admin().await?;
    let nodes = api
        .cluster()
        .list_nodes(ListNodesRequest::default())
        .await?
        .into_inner()
        .nodes;
    let named: Vec<&str> = nodes
        .iter()
        .filter(|n| n.leader)
        .map(|n| n.name.as_str())
        .collect();
    wait_until(secs(10), async || {
        let nodes = api
            .cluster()
            .list_nodes(ListNodesRequest::default())
            .await?
            .into_inner()
            .nodes;
        let leaders: Vec<String> = nodes
            .iter()
            .filter(|n| n.leader)
            .map(|n| n.name.clone())
            .collect();
        anyhow::Ok(leaders == [first_leader.clone()])
    })
    .await
    .with_context(|| format!("cluster status leaders {named:?}"))?;

    // An ACME site: a pebble-issued certificate on every edge within 60 s.
    let mut request = site("shop.statiko.test", &[]);
    request.tls = Some(tls(TlsType::Acme));
    api.sites().create_site(request).await?;
    let started = Instant::now();
    for edge in &edges {
        wait_until(secs(60), async || {
            pebble
                .verify(edge.addrs().https, "shop.statiko.test")
                .await
                .map(|_| ())
        })
        .await
        .with_context(|| {
            format!(
                "{}: pebble certificate for shop.statiko.test\n{}",
                edge.name(),
                pebble.log_tail()
            )
        })?;
    }
    ensure!(
        started.elapsed() < secs(60),
        "issuance took {:?}",
        started.elapsed()
    );

    // An alias: a certificate covering it on every edge.
    api.sites()
        .update_site(UpdateSiteRequest {
            domain: "shop.statiko.test".into(),
            add_aliases: vec!["www.shop.statiko.test".into()],
            ..Default::default()
        })
        .await?;
    for edge in &edges {
        for host in ["www.shop.statiko.test", "shop.statiko.test"] {
            wait_until(secs(60), async || {
                pebble.verify(edge.addrs().https, host).await.map(|_| ())
            })
            .await
            .with_context(|| format!("{}: pebble certificate for {host}", edge.name()))?;
        }
    }
    let record = leader_record(&etcd, CertificateKind::Acme, "shop.statiko.test").await?;
    ensure!(record.covers(["shop.statiko.test", "www.shop.statiko.test"].into_iter()));

    // Kill the leader: another edge leads within the TTL, and issuance goes on.
    let index = edges
        .iter()
        .position(|e| e.name() == first_leader)
        .context("leader edge")?;
    let killed_at = Instant::now();
    edges[index].kill().await?;
    let survivors: Vec<&Edge> = edges
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, e)| e)
        .collect();
    let second_leader = wait_until(TTL + secs(5), async || {
        let leaders = leaders(&survivors).await;
        (leaders.len() == 1).then(|| leaders[0].clone())
    })
    .await?;
    let takeover = killed_at.elapsed();
    ensure!(second_leader != "edge-2", "a disallowLeadership node leads");
    // The lease expires at most one TTL after the kill; etcd checks expiries every 500 ms.
    ensure!(
        takeover <= TTL + Duration::from_millis(1500),
        "takeover took {takeover:?} (TTL {TTL:?})"
    );

    let mut request = site("blog.statiko.test", &["www.blog.statiko.test"]);
    request.tls = Some(tls(TlsType::Acme));
    api.sites().create_site(request).await?;
    for edge in &survivors {
        for host in ["blog.statiko.test", "www.blog.statiko.test"] {
            wait_until(secs(60), async || {
                pebble.verify(edge.addrs().https, host).await.map(|_| ())
            })
            .await
            .with_context(|| {
                format!(
                    "{}: pebble certificate for {host} after failover",
                    edge.name()
                )
            })?;
        }
    }
    // Until then and after, the other ACME site keeps its certificate.
    for edge in &survivors {
        pebble
            .verify(edge.addrs().https, "www.shop.statiko.test")
            .await?;
    }
    assert_no_clear_keys(&etcd).await?;
    let dump = crate::control_common::etcd_dump(&etcd).await?;
    ensure!(
        !dump
            .iter()
            .any(|(k, _)| k.contains("/acme/orders/") || k.contains("/acme/challenges/")),
        "orders or challenges left behind: {:?}",
        dump.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );

    // With every leader-capable edge gone, the disallowLeadership edge still never leads.
    let second = edges
        .iter()
        .position(|e| e.name() == second_leader)
        .context("second leader")?;
    edges[second].kill().await?;
    tokio::time::sleep(TTL + secs(2)).await;
    let last = edges
        .iter()
        .find(|e| e.name() == "edge-2")
        .context("edge-2")?;
    ensure!(leaders(&[last]).await.is_empty(), "edge-2 leads");
    let mut client = etcd.client().await?;
    let leader_key = client
        .get("/statiko/v1/election/edge-leader/leader", None)
        .await?;
    ensure!(leader_key.kvs().is_empty(), "someone holds the leader key");
    Ok(())
}

#[tokio::test]
async fn self_signed_certificates_cover_aliases_on_every_edge() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let etcd = Etcd::start().await?;
    let control = Control::start(ControlOptions::default().store(StateStore::etcd(&etcd))).await?;
    let mut edges = Vec::new();
    for i in 0..3 {
        edges.push(Edge::start(edge_options(&format!("edge-{i}"), &etcd, &control)).await?);
    }
    let api = control.admin().await?;
    api.sites()
        .create_site(site("self.statiko.test", &["www.self.statiko.test"]))
        .await?;

    let served_by_leader = async |names: &[&str]| -> Result<()> {
        let record = leader_record(&etcd, CertificateKind::SelfSigned, "self.statiko.test").await?;
        ensure!(
            record.covers(names.iter().copied()),
            "the leader's certificate names {:?}",
            record.domains
        );
        for edge in &edges {
            for host in names {
                let (_, leaf) = edge.https_get_with(host, "/", &[]).await?;
                ensure!(
                    format_digest(&sha256(&leaf)) == record.fingerprint,
                    "{} presents another certificate for {host}",
                    edge.name()
                );
            }
        }
        Ok(())
    };
    wait_until(secs(20), async || {
        served_by_leader(&["self.statiko.test", "www.self.statiko.test"]).await
    })
    .await?;

    // A new alias: a new certificate covering it, on every edge, without a restart.
    api.sites()
        .update_site(UpdateSiteRequest {
            domain: "self.statiko.test".into(),
            aliases: Some(AliasList {
                aliases: vec![
                    "www.self.statiko.test".into(),
                    "new.self.statiko.test".into(),
                ],
            }),
            ..Default::default()
        })
        .await?;
    wait_until(secs(20), async || {
        served_by_leader(&[
            "self.statiko.test",
            "www.self.statiko.test",
            "new.self.statiko.test",
        ])
        .await
    })
    .await?;
    let all: Vec<&Edge> = edges.iter().collect();
    ensure!(leaders(&all).await.len() == 1, "exactly one leader");
    assert_no_clear_keys(&etcd).await?;
    Ok(())
}

/// A one-shot webhook receiver: the bodies of the POSTs it gets.
async fn webhook() -> Result<(String, tokio::sync::mpsc::UnboundedReceiver<String>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buffer).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            let _ = tx.send(body.to_owned());
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok((url, rx))
}

#[tokio::test]
async fn failed_issuance_is_retried_shown_and_notified() -> Result<()> {
    statiko_tests::init();
    if !require_tool("pebble") || !require_tool("pebble-challtestsrv") {
        return Ok(());
    }
    // Pebble validates on a port where nothing listens: every attempt fails.
    let pebble = Pebble::start(free_port()?).await?;
    let (url, mut hooks) = webhook().await?;
    let control = Control::start(ControlOptions::default()).await?;
    let edge = Edge::start(
        EdgeOptions::new(
            "solo",
            StateStore::File(control.state_dir()),
            &control.repo_dir(),
        )
        .config(acme_config(&pebble))
        .config(json!({"notifications": {"webhook": {"url": url, "payloadKey": "text"}}})),
    )
    .await?;
    // On the file store the single node is leader.
    wait_until(secs(10), async || leaders(&[&edge]).await.len() == 1).await?;

    let api = control.admin().await?;
    let mut request = site("fail.statiko.test", &[]);
    request.tls = Some(tls(TlsType::Acme));
    api.sites().create_site(request).await?;
    let error = wait_until(secs(30), async || {
        let served = edge.served("fail.statiko.test").await?;
        anyhow::Ok(
            served
                .filter(|(_, error)| error.contains("acme:"))
                .map(|(_, e)| e),
        )
    })
    .await?;
    let message = tokio::time::timeout(secs(30), hooks.recv())
        .await
        .context("no webhook call")?
        .context("webhook closed")?;
    let body: Value = serde_json::from_str(&message)?;
    let text = body["text"].as_str().context("payload key")?;
    ensure!(
        text.starts_with("[statiko] (solo)") && text.contains("fail.statiko.test"),
        "webhook text {text:?} (status error {error:?})"
    );
    // Until issued, the site is served with its self-signed certificate.
    let (_, leaf) = edge.https_get_with("fail.statiko.test", "/", &[]).await?;
    ensure!(!leaf.is_empty());
    // It is retried (with backoff): a second attempt is notified too.
    tokio::time::timeout(secs(30), hooks.recv())
        .await
        .context("no retry")?
        .context("webhook closed")?;
    Ok(())
}

#[tokio::test]
async fn a_wrong_secrets_key_stops_the_edge_at_start() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let etcd = Etcd::start().await?;
    // Control records the check value sealed with the cluster's key.
    let _control = Control::start(ControlOptions::default().store(StateStore::etcd(&etcd))).await?;
    let dir = tempfile::tempdir()?;
    let other_key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    let config = json!({
        "nodeName": "wrong-key",
        "secretsEncryptionKey": other_key,
        "state": {"store": "etcd", "etcd": {"address": etcd.endpoint(), "keyPrefix": "/statiko"}},
        "repo": {"type": "local", "local": {"path": dir.path().join("repo")}},
        "edge": {
            "dataDir": dir.path().join("data"),
            "http": "127.0.0.1:0",
            "https": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
        },
    });
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config.to_string())?;
    let output = run_bin(
        "statiko-edge",
        ["--config".as_ref(), path.as_os_str()],
        &[] as &[(&str, &str)],
    )
    .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(64),
        "exit {:?}: {stderr}",
        output.status
    );
    ensure!(
        stderr.contains("secretsEncryptionKey") && stderr.contains("does not open"),
        "{stderr}"
    );
    Ok(())
}
