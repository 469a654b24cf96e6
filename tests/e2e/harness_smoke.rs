//! Smoke tests of the harness itself: a plain etcd and a TLS etcd with client-certificate
//! auth start, answer put/get through etcd-client, and restart with their data; a control
//! starts, answers an authenticated call (and refuses an anonymous one), and exits 0 on SIGTERM.

use anyhow::Result;
use etcd_client::{Client, ConnectOptions, TlsOptions};
use statiko_proto::v1::ListSitesRequest;
use statiko_tests::{
    Control, ControlOptions, Etcd, Moto, OutputExt, Pki, StateStore, require_tool, secs, wait_until,
};

#[tokio::test]
async fn plain_etcd_put_get_and_restart() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let mut etcd = Etcd::start().await?;
    assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));

    let mut client = etcd.client().await?;
    client.put("/statiko-test/greeting", "hello", None).await?;
    let response = client.get("/statiko-test/greeting", None).await?;
    let values: Vec<&[u8]> = response.kvs().iter().map(|kv| kv.value()).collect();
    assert_eq!(values, [b"hello".as_slice()]);

    // Same ports and data dir after a restart: the key survives and the endpoint is unchanged.
    let endpoint = etcd.endpoint();
    etcd.restart().await?;
    assert_eq!(etcd.endpoint(), endpoint);
    let mut client = etcd.client().await?;
    let value = wait_until(secs(10), async || {
        let response = client.get("/statiko-test/greeting", None).await?;
        anyhow::Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    })
    .await?;
    assert_eq!(value, b"hello");

    etcd.stop().await?;
    assert!(!etcd.is_running());
    Ok(())
}

#[tokio::test]
async fn tls_etcd_requires_client_certificate() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let pki = Pki::new()?;
    let etcd = Etcd::start_tls(&pki).await?;
    assert!(etcd.endpoint().starts_with("https://127.0.0.1:"));
    let tls = etcd.tls().expect("a TLS etcd has TLS files");
    assert!(tls.ca_path.is_file() && tls.client_cert_path.is_file());

    let mut client = etcd.client().await?;
    client.put("/statiko-test/secure", "yes", None).await?;
    let response = client.get("/statiko-test/secure", None).await?;
    assert_eq!(response.kvs()[0].value(), b"yes");

    // Trusting the CA without presenting a client certificate must be refused.
    let without_identity = ConnectOptions::new()
        .with_connect_timeout(secs(2))
        .with_timeout(secs(3))
        .with_tls(
            TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(pki.ca_pem()))
                .domain_name("localhost"),
        );
    let refused = async {
        let mut client = Client::connect([etcd.endpoint()], Some(without_identity)).await?;
        client.get("/statiko-test/secure", None).await?;
        anyhow::Ok(())
    }
    .await;
    assert!(
        refused.is_err(),
        "etcd with --client-cert-auth accepted a client without a certificate"
    );
    Ok(())
}

#[tokio::test]
async fn control_starts_serves_and_exits_cleanly() -> Result<()> {
    statiko_tests::init();
    let mut control = Control::start(ControlOptions::default()).await?;
    assert!(control.endpoint().starts_with("https://127.0.0.1:"));
    assert!(control.ca_path().is_file());

    let admin = control.admin().await?;
    admin
        .sites()
        .list_sites(ListSitesRequest::default())
        .await?;
    let anonymous = control.anonymous().await?;
    let status = anonymous
        .sites()
        .list_sites(ListSitesRequest::default())
        .await
        .expect_err("a call without a token is refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    control.stk(["site", "list"]).await?.assert_success();

    let exit = control.terminate().await?;
    assert_eq!(exit.code(), Some(0), "{}", control.log_tail());
    Ok(())
}

#[tokio::test]
async fn control_runs_on_tls_etcd() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let pki = Pki::new()?;
    let etcd = Etcd::start_tls(&pki).await?;
    let mut control =
        Control::start(ControlOptions::default().store(StateStore::etcd(&etcd))).await?;
    let readonly = control.readonly().await?;
    readonly
        .sites()
        .list_sites(ListSitesRequest::default())
        .await?;
    let exit = control.terminate().await?;
    assert_eq!(exit.code(), Some(0), "{}", control.log_tail());
    Ok(())
}

#[tokio::test]
async fn moto_creates_buckets() -> Result<()> {
    statiko_tests::init();
    if !require_tool("moto_server") {
        return Ok(());
    }
    let moto = Moto::start().await?;
    moto.create_bucket("statiko-smoke").await?;
    assert_eq!(moto.get_object("statiko-smoke", "missing").await?, None);
    Ok(())
}
