//! The control plane on etcd specifically: every key a full workflow writes sits under
//! `{keyPrefix}/v1/` (default and custom prefix); two replicas racing on one site lose no
//! update and `expected_revision` lets exactly one of two writers win; etcd with TLS and client
//! certificates; and an etcd outage is UNAVAILABLE within the store timeout, with nothing
//! half-written, and recovers after etcd restarts.

use std::time::Instant;

use anyhow::{Context, Result};
use futures::future::join_all;
use statiko_proto::v1::{
    DeleteSiteRequest, DeployRequest, ImportCertificateRequest, UpdateSiteRequest,
};
use statiko_tests::fixtures::{app_ref, assert_status, cert_pair, site, tls_imported, upload_app};
use statiko_tests::{
    Control, ControlOptions, Etcd, Pki, StateStore, require_tool, secs, wait_until,
};
use tonic::Code;

use crate::control_common::{all_etcd_keys, get_site, list_sites};

/// Site, app, deploy and an imported certificate in use.
async fn full_workflow(control: &Control) -> Result<()> {
    let admin = control.admin().await?;
    let pair = cert_pair(&["flow.example.com"])?;
    admin
        .certificates()
        .import_certificate(ImportCertificateRequest {
            name: "flow".into(),
            certificate_pem: pair.cert_pem,
            key_pem: pair.key_pem,
            ..ImportCertificateRequest::default()
        })
        .await?;
    admin
        .sites()
        .create_site(statiko_proto::v1::CreateSiteRequest {
            tls: Some(tls_imported("flow")),
            ..site("flow.example.com", &["www.flow.example.com"])
        })
        .await?;
    upload_app(&admin, "web", "1.0.0").await?;
    admin
        .deployments()
        .deploy(DeployRequest {
            domain: "flow.example.com".into(),
            app: Some(app_ref("web", "1.0.0")),
            ..DeployRequest::default()
        })
        .await?;
    Ok(())
}

async fn keys_under(prefix: &str) -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let etcd = Etcd::start().await?;
    let store = if prefix == "/statiko" {
        StateStore::etcd(&etcd)
    } else {
        StateStore::etcd_with_prefix(&etcd, prefix)
    };
    let control = Control::start(ControlOptions::default().store(store)).await?;
    full_workflow(&control).await?;
    let keys = all_etcd_keys(&etcd).await?;
    let root = format!("{prefix}/v1/");
    for expected in [
        "sites/flow.example.com",
        "domains/flow.example.com",
        "domains/www.flow.example.com",
        "apps/web/1.0.0",
        "certificates/flow",
    ] {
        let key = format!("{root}{expected}");
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    let outside: Vec<&String> = keys.iter().filter(|key| !key.starts_with(&root)).collect();
    assert!(outside.is_empty(), "keys outside {root}: {outside:?}");
    Ok(())
}

#[tokio::test]
async fn every_key_under_default_prefix() -> Result<()> {
    keys_under("/statiko").await
}

#[tokio::test]
async fn every_key_under_custom_prefix() -> Result<()> {
    keys_under("/custom").await
}

#[tokio::test]
async fn two_replicas_race_without_lost_updates() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let etcd = Etcd::start().await?;
    let replica_a =
        Control::start(ControlOptions::default().store(StateStore::etcd(&etcd))).await?;
    let replica_b =
        Control::start(ControlOptions::default().store(StateStore::etcd(&etcd))).await?;
    let api_a = replica_a.admin().await?;
    let api_b = replica_b.admin().await?;
    api_a
        .sites()
        .create_site(site("race.example.com", &[]))
        .await?;

    // 2 replicas x 20 concurrent add_aliases, distinct aliases, no expected_revision.
    let calls = (0..40).map(|i| {
        let api = if i % 2 == 0 {
            api_a.clone()
        } else {
            api_b.clone()
        };
        async move {
            api.sites()
                .update_site(UpdateSiteRequest {
                    domain: "race.example.com".into(),
                    add_aliases: vec![format!("a{i}.race.example.com")],
                    ..UpdateSiteRequest::default()
                })
                .await
        }
    });
    let results = join_all(calls).await;
    let failures: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(i, result)| {
            result
                .as_ref()
                .err()
                .map(|status| format!("call {i}: {:?} {}", status.code(), status.message()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "concurrent add_aliases failed: {failures:#?}"
    );
    let site_now = get_site(&api_b, "race.example.com").await?;
    let mut aliases = site_now.aliases.clone();
    aliases.sort();
    let mut expected: Vec<String> = (0..40).map(|i| format!("a{i}.race.example.com")).collect();
    expected.sort();
    assert_eq!(aliases, expected, "lost update");
    for i in [0, 17, 39] {
        assert_eq!(
            get_site(&api_a, &format!("a{i}.race.example.com"))
                .await?
                .domain,
            "race.example.com"
        );
    }

    // expected_revision: the same value on both replicas, exactly one wins.
    let revision = site_now.revision;
    let guarded = |api: statiko_tests::Api, alias: &'static str| async move {
        api.sites()
            .update_site(UpdateSiteRequest {
                domain: "race.example.com".into(),
                add_aliases: vec![alias.to_owned()],
                expected_revision: revision,
                ..UpdateSiteRequest::default()
            })
            .await
    };
    let (first, second) = tokio::join!(
        guarded(api_a.clone(), "x.race.example.com"),
        guarded(api_b.clone(), "y.race.example.com")
    );
    let outcomes = [&first, &second];
    let won = outcomes.iter().filter(|result| result.is_ok()).count();
    assert_eq!(
        won, 1,
        "exactly one guarded update wins: {first:?} / {second:?}"
    );
    let loser = outcomes
        .iter()
        .find_map(|result| result.as_ref().err())
        .context("a loser")?;
    assert_eq!(loser.code(), Code::Aborted, "{}", loser.message());
    assert!(
        loser.message().contains("race.example.com"),
        "{}",
        loser.message()
    );
    let final_site = get_site(&api_a, "race.example.com").await?;
    assert_eq!(final_site.aliases.len(), 41);
    Ok(())
}

#[tokio::test]
async fn crud_on_tls_etcd_with_client_certificates() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let pki = Pki::new()?;
    let etcd = Etcd::start_tls(&pki).await?;
    let control = Control::start(ControlOptions::default().store(StateStore::etcd(&etcd))).await?;
    let admin = control.admin().await?;
    full_workflow(&control).await?;
    admin
        .sites()
        .create_site(site("tls.example.com", &["www.tls.example.com"]))
        .await?;
    assert_eq!(
        get_site(&admin, "www.tls.example.com").await?.domain,
        "tls.example.com"
    );
    admin
        .sites()
        .update_site(UpdateSiteRequest {
            domain: "tls.example.com".into(),
            add_aliases: vec!["api.tls.example.com".into()],
            ..UpdateSiteRequest::default()
        })
        .await?;
    admin
        .sites()
        .delete_site(DeleteSiteRequest {
            domain: "api.tls.example.com".into(),
        })
        .await?;
    let domains: Vec<String> = list_sites(&admin)
        .await?
        .into_iter()
        .map(|s| s.domain)
        .collect();
    assert_eq!(domains, ["flow.example.com"]);
    // The data really is in the TLS etcd.
    let keys = all_etcd_keys(&etcd).await?;
    assert!(
        keys.contains(&"/statiko/v1/sites/flow.example.com".to_owned()),
        "{keys:?}"
    );
    Ok(())
}

#[tokio::test]
async fn etcd_outage_is_unavailable_and_recovers() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let mut etcd = Etcd::start().await?;
    let control = Control::start(ControlOptions::default().store(StateStore::etcd(&etcd))).await?;
    let admin = control.admin().await?;
    admin
        .sites()
        .create_site(site("before.example.com", &[]))
        .await?;

    etcd.stop().await?;
    let started = Instant::now();
    let status = assert_status(
        admin
            .sites()
            .create_site(site("during.example.com", &["www.during.example.com"]))
            .await,
        Code::Unavailable,
        &["store"],
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed < secs(15),
        "UNAVAILABLE took {elapsed:?}: {}",
        status.message()
    );

    etcd.restart().await?;
    // The control reconnects on its own; retry the same call until etcd answers again.
    wait_until(secs(30), async || {
        admin
            .sites()
            .create_site(site("during.example.com", &["www.during.example.com"]))
            .await
            .map(|_| ())
            .map_err(|status| {
                assert_ne!(
                    status.code(),
                    Code::AlreadyExists,
                    "the failed call was half-written: {}",
                    status.message()
                );
                anyhow::anyhow!("{:?}: {}", status.code(), status.message())
            })
    })
    .await?;
    let domains: Vec<String> = list_sites(&admin)
        .await?
        .into_iter()
        .map(|s| s.domain)
        .collect();
    assert_eq!(domains, ["before.example.com", "during.example.com"]);
    assert_eq!(
        get_site(&admin, "www.during.example.com").await?.domain,
        "during.example.com"
    );
    Ok(())
}
