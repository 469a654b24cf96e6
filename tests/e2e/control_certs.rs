//! CertificateService end to end on etcd: import (listed with domains and expiry; the stored
//! record holds the key sealed as `v1:…`, never a PEM private key), refusals (key mismatch,
//! expired even with `force`, garbage PEM, duplicate name), `replace`, deletion refused while
//! a site uses the certificate (`stk site create --tls imported:<name>`), and import refused
//! without `secretsEncryptionKey`.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use statiko_proto::v1::{
    CertificateType, DeleteCertificateRequest, ImportCertificateRequest, ListCertificatesRequest,
    TlsType, UpdateSiteRequest,
};
use statiko_tests::fixtures::{CertPair, assert_status, cert_pair, expired_cert_pair, tls};
use statiko_tests::{Api, ControlOptions, OutputExt};
use tonic::Code;

use crate::control_common::{Backend, etcd_value, start};

fn import(name: &str, pair: &CertPair) -> ImportCertificateRequest {
    ImportCertificateRequest {
        name: name.to_owned(),
        certificate_pem: pair.cert_pem.clone(),
        key_pem: pair.key_pem.clone(),
        ..ImportCertificateRequest::default()
    }
}

async fn list(api: &Api) -> Result<Vec<statiko_proto::v1::Certificate>> {
    Ok(api
        .certificates()
        .list_certificates(ListCertificatesRequest::default())
        .await?
        .into_inner()
        .certificates)
}

#[tokio::test]
async fn import_list_replace_delete() -> Result<()> {
    let Some(running) = start(Backend::Etcd, ControlOptions::default()).await? else {
        return Ok(());
    };
    let control = &running.control;
    let etcd = running.etcd.as_ref().context("etcd")?;
    let admin = control.admin().await?;
    let mut certs = admin.certificates();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;

    let pair = cert_pair(&["example.com", "www.example.com"])?;
    let imported = certs
        .import_certificate(import("example", &pair))
        .await?
        .into_inner()
        .certificate
        .context("certificate")?;
    assert_eq!(imported.name, "example");
    assert_eq!(imported.r#type(), CertificateType::Imported);
    assert_eq!(imported.domains, ["example.com", "www.example.com"]);
    assert!(
        imported.fingerprint.starts_with("sha256:"),
        "{}",
        imported.fingerprint
    );
    let listed = list(&admin).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].domains, ["example.com", "www.example.com"]);
    assert!(
        listed[0]
            .not_after
            .as_ref()
            .is_some_and(|t| t.seconds > now),
        "{listed:?}"
    );
    assert!(
        listed[0]
            .not_before
            .as_ref()
            .is_some_and(|t| t.seconds < now),
        "{listed:?}"
    );
    assert!(listed[0].used_by.is_empty());

    // The stored record: sealed key, no PEM private key anywhere.
    let stored = etcd_value(etcd, "/statiko/v1/certificates/example")
        .await?
        .context("no certificate record in etcd")?;
    let text = String::from_utf8(stored)?;
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let record: Value = serde_json::from_str(&text)?;
    let key = record["key"].as_str().context("key field")?;
    assert!(key.starts_with("v1:"), "{key}");
    assert!(
        !key.contains(pair.key_pem.lines().nth(1).unwrap_or("MII")),
        "{key}"
    );

    // Refusals.
    let other = cert_pair(&["example.com"])?;
    let mismatched = CertPair {
        cert_pem: pair.cert_pem.clone(),
        key_pem: other.key_pem.clone(),
    };
    assert_status(
        certs
            .import_certificate(import("mismatch", &mismatched))
            .await,
        Code::InvalidArgument,
        &["key_pem"],
    );
    let expired = expired_cert_pair(&["old.example.com"])?;
    assert_status(
        certs.import_certificate(import("expired", &expired)).await,
        Code::InvalidArgument,
        &["certificate_pem"],
    );
    assert_status(
        certs
            .import_certificate(ImportCertificateRequest {
                force: true,
                ..import("expired", &expired)
            })
            .await,
        Code::InvalidArgument,
        &["certificate_pem"],
    );
    let garbage = CertPair {
        cert_pem: "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
            .into(),
        key_pem: "not a key".into(),
    };
    assert_status(
        certs.import_certificate(import("garbage", &garbage)).await,
        Code::InvalidArgument,
        &["certificate_pem"],
    );
    assert_status(
        certs.import_certificate(import("Bad_Name", &pair)).await,
        Code::InvalidArgument,
        &["name"],
    );
    assert_status(
        certs.import_certificate(import("example", &other)).await,
        Code::AlreadyExists,
        &["\"example\"", "replace"],
    );
    let still = list(&admin).await?;
    assert_eq!(still.len(), 1);
    assert_eq!(still[0].fingerprint, imported.fingerprint);

    // Replace rotates it.
    let rotated_pair = cert_pair(&["example.com", "api.example.com"])?;
    let rotated = certs
        .import_certificate(ImportCertificateRequest {
            replace: true,
            ..import("example", &rotated_pair)
        })
        .await?
        .into_inner()
        .certificate
        .context("certificate")?;
    assert_ne!(rotated.fingerprint, imported.fingerprint);
    assert_eq!(
        list(&admin).await?[0].domains,
        ["example.com", "api.example.com"]
    );

    // In use by a site (created with stk --tls imported:<name>): deletion refused.
    control
        .stk(["site", "create", "example.com", "--tls", "imported:example"])
        .await?
        .assert_success();
    let delete = || DeleteCertificateRequest {
        name: "example".into(),
    };
    assert_status(
        certs.delete_certificate(delete()).await,
        Code::FailedPrecondition,
        &["\"example\"", "example.com"],
    );
    assert_eq!(list(&admin).await?[0].used_by, ["example.com"]);
    // The stk error carries the server's code and message.
    let refused = control.stk(["cert", "delete", "example"]).await?;
    assert!(!refused.status.success());
    assert!(
        refused.stderr_text().contains("FAILED_PRECONDITION"),
        "{}",
        refused.stderr_text()
    );

    admin
        .sites()
        .update_site(UpdateSiteRequest {
            domain: "example.com".into(),
            tls: Some(tls(TlsType::Acme)),
            ..UpdateSiteRequest::default()
        })
        .await?;
    certs.delete_certificate(delete()).await?;
    assert!(list(&admin).await?.is_empty());
    assert_eq!(
        etcd_value(etcd, "/statiko/v1/certificates/example").await?,
        None
    );
    assert_status(
        certs.delete_certificate(delete()).await,
        Code::NotFound,
        &["\"example\""],
    );
    Ok(())
}

#[tokio::test]
async fn import_needs_secrets_key() -> Result<()> {
    let Some(running) = start(
        Backend::File,
        ControlOptions::default().config(json!({"secretsEncryptionKey": null})),
    )
    .await?
    else {
        return Ok(());
    };
    let admin = running.control.admin().await?;
    let pair = cert_pair(&["example.com"])?;
    assert_status(
        admin
            .certificates()
            .import_certificate(import("example", &pair))
            .await,
        Code::FailedPrecondition,
        &["secretsEncryptionKey"],
    );
    assert!(list(&admin).await?.is_empty());
    Ok(())
}
