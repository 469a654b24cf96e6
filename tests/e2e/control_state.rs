//! StateService end to end: export from a file-store control and import into an etcd control
//! sharing the bundle repository and the secrets key (sites, aliases, apps, deploys and sealed
//! certificates all arrive); imports refused for a foreign secrets key, a missing bundle,
//! garbage, and colliding domains, each leaving the previous state untouched; and the same
//! round trip through `stk state get -o` / `stk state set -f`.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use statiko_proto::v1::{
    CreateSiteRequest, DeployRequest, ExportStateRequest, ImportCertificateRequest,
    ImportStateRequest, ListCertificatesRequest,
};
use statiko_tests::fixtures::{app_ref, assert_status, cert_pair, site, tls_imported, upload_app};
use statiko_tests::{Api, Control, ControlOptions, Etcd, OutputExt, StateStore, require_tool};
use tonic::Code;

use crate::control_common::{app_refs, get_site, list_sites};

/// A secrets key other than the harness's (base64 of the bytes 100..=131).
const OTHER_SECRETS_KEY: &str = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=";

/// Two sites (one with an imported certificate), one app deployed to one of them.
async fn populate(admin: &Api) -> Result<()> {
    let pair = cert_pair(&["shop.example.com"])?;
    admin
        .certificates()
        .import_certificate(ImportCertificateRequest {
            name: "shop".into(),
            certificate_pem: pair.cert_pem,
            key_pem: pair.key_pem,
            ..ImportCertificateRequest::default()
        })
        .await?;
    admin
        .sites()
        .create_site(CreateSiteRequest {
            tls: Some(tls_imported("shop")),
            ..site("shop.example.com", &["www.shop.example.com"])
        })
        .await?;
    admin
        .sites()
        .create_site(site("blog.example.com", &["news.example.com"]))
        .await?;
    upload_app(admin, "web", "1.0.0").await?;
    admin
        .deployments()
        .deploy(DeployRequest {
            domain: "www.shop.example.com".into(),
            app: Some(app_ref("web", "1.0.0")),
            ..DeployRequest::default()
        })
        .await?;
    Ok(())
}

async fn export(admin: &Api) -> Result<Vec<u8>> {
    Ok(admin
        .state()
        .export_state(ExportStateRequest::default())
        .await?
        .into_inner()
        .document)
}

async fn import(
    admin: &Api,
    document: Vec<u8>,
) -> Result<statiko_proto::v1::ImportStateResponse, tonic::Status> {
    Ok(admin
        .state()
        .import_state(ImportStateRequest { document })
        .await?
        .into_inner())
}

/// Checks that `admin` serves exactly the state [`populate`] made.
async fn assert_populated(admin: &Api) -> Result<()> {
    let domains: Vec<String> = list_sites(admin)
        .await?
        .into_iter()
        .map(|s| s.domain)
        .collect();
    assert_eq!(domains, ["blog.example.com", "shop.example.com"]);
    let shop = get_site(admin, "www.shop.example.com").await?;
    assert_eq!(shop.domain, "shop.example.com");
    assert_eq!(shop.app, Some(app_ref("web", "1.0.0")));
    assert_eq!(shop.tls, Some(tls_imported("shop")));
    assert_eq!(
        get_site(admin, "news.example.com").await?.domain,
        "blog.example.com"
    );
    assert_eq!(app_refs(admin).await?, ["web@1.0.0"]);
    let certs = admin
        .certificates()
        .list_certificates(ListCertificatesRequest::default())
        .await?
        .into_inner()
        .certificates;
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].name, "shop");
    assert_eq!(certs[0].used_by, ["shop.example.com"]);
    Ok(())
}

/// An etcd control that reads bundles from `repo` (another control's repository).
async fn etcd_control(
    etcd: &Etcd,
    repo: Option<&Control>,
    secrets_key: Option<&str>,
) -> Result<Control> {
    let mut options = ControlOptions::default().store(StateStore::etcd(etcd));
    if let Some(repo) = repo {
        options = options.config(json!({"repo": {"local": {"path": repo.repo_dir()}}}));
    }
    if let Some(key) = secrets_key {
        options = options.config(json!({"secretsEncryptionKey": key}));
    }
    Control::start(options).await
}

// Regression: etcd refuses a transaction whose puts fall inside one of its delete ranges, so an
// import must delete only the records the document does not have.
#[tokio::test]
async fn export_file_store_import_into_etcd() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let source = Control::start(ControlOptions::default()).await?;
    let source_admin = source.admin().await?;
    populate(&source_admin).await?;
    let document = export(&source_admin).await?;

    // The document: the advertised format, sealed keys only.
    let text = String::from_utf8(document.clone())?;
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let parsed: Value = serde_json::from_str(&text)?;
    assert_eq!(parsed["format"], "statiko-state");
    assert_eq!(parsed["version"], 1);
    assert_eq!(parsed["sites"].as_array().map(Vec::len), Some(2));
    let sealed = parsed["certificates"][0]["key"]
        .as_str()
        .context("sealed key")?;
    assert!(sealed.starts_with("v1:"), "{sealed}");

    let etcd = Etcd::start().await?;
    let target = etcd_control(&etcd, Some(&source), None).await?;
    let admin = target.admin().await?;
    let imported = import(&admin, document.clone()).await?;
    assert_eq!(
        (imported.sites, imported.apps, imported.certificates),
        (2, 1, 1)
    );
    assert!(imported.revision > 0);
    assert_populated(&admin).await?;
    // The key stays sealed in the store too.
    let stored = crate::control_common::etcd_value(&etcd, "/statiko/v1/certificates/shop")
        .await?
        .context("certificate record")?;
    assert!(!String::from_utf8_lossy(&stored).contains("PRIVATE KEY"));
    // Re-exporting from etcd gives the same records.
    let again: Value = serde_json::from_slice(&export(&admin).await?)?;
    assert_eq!(again["sites"], parsed["sites"]);
    assert_eq!(again["apps"], parsed["apps"]);
    assert_eq!(again["certificates"], parsed["certificates"]);
    let before = list_sites(&admin).await?;

    // Garbage and wrong documents are refused; the state is untouched.
    assert_status(
        import(&admin, b"not json".to_vec()).await,
        Code::InvalidArgument,
        &["document"],
    );
    assert_status(
        import(
            &admin,
            br#"{"format": "something-else", "version": 1}"#.to_vec(),
        )
        .await,
        Code::InvalidArgument,
        &["document.format"],
    );
    let mut colliding = parsed.clone();
    colliding["sites"][0]["aliases"] = json!(["shop.example.com"]);
    assert_status(
        import(&admin, serde_json::to_vec(&colliding)?).await,
        Code::AlreadyExists,
        &["shop.example.com"],
    );
    assert_eq!(list_sites(&admin).await?, before);
    assert_populated(&admin).await?;

    // A control with another secrets key cannot open the certificate keys.
    let foreign_etcd = Etcd::start().await?;
    let foreign = etcd_control(&foreign_etcd, Some(&source), Some(OTHER_SECRETS_KEY)).await?;
    let foreign_admin = foreign.admin().await?;
    foreign_admin
        .sites()
        .create_site(site("keep.example.com", &[]))
        .await?;
    assert_status(
        import(&foreign_admin, document.clone()).await,
        Code::InvalidArgument,
        &["certificates[0].key"],
    );
    // A control whose repository lacks the bundle.
    let no_bundle = Control::start(ControlOptions::default()).await?;
    let no_bundle_admin = no_bundle.admin().await?;
    no_bundle_admin
        .sites()
        .create_site(site("keep.example.com", &[]))
        .await?;
    assert_status(
        import(&no_bundle_admin, document.clone()).await,
        Code::FailedPrecondition,
        &["apps[0]", "web@1.0.0"],
    );
    for api in [&foreign_admin, &no_bundle_admin] {
        let domains: Vec<String> = list_sites(api)
            .await?
            .into_iter()
            .map(|s| s.domain)
            .collect();
        assert_eq!(domains, ["keep.example.com"]);
        assert!(app_refs(api).await?.is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn state_round_trip_with_stk() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let source = Control::start(ControlOptions::default()).await?;
    populate(&source.admin().await?).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("state.json");
    source
        .stk([
            "state".as_ref(),
            "get".as_ref(),
            "-o".as_ref(),
            file.as_os_str(),
        ])
        .await?
        .assert_success();
    // `stk state get` to stdout prints the same document.
    let stdout = source.stk(["state", "get"]).await?;
    stdout.assert_success();
    let from_file: Value = serde_json::from_slice(&std::fs::read(&file)?)?;
    let from_stdout: Value = serde_json::from_str(&stdout.stdout_text())?;
    assert_eq!(from_file["sites"], from_stdout["sites"]);

    let etcd = Etcd::start().await?;
    let target = etcd_control(&etcd, Some(&source), None).await?;
    target
        .admin()
        .await?
        .sites()
        .create_site(site("old.example.com", &[]))
        .await?;
    let stdout_file = dir.path().join("stdout.json");
    std::fs::write(&stdout_file, stdout.stdout_text())?;
    target
        .stk([
            "state".as_ref(),
            "set".as_ref(),
            "-f".as_ref(),
            stdout_file.as_os_str(),
        ])
        .await?
        .assert_success();
    // The import replaced the whole desired state.
    assert_populated(&target.admin().await?).await?;
    assert_status(
        get_site(&target.admin().await?, "old.example.com").await,
        Code::NotFound,
        &[],
    );
    // A garbage file fails with the server's message.
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{]")?;
    let refused = target
        .stk([
            "state".as_ref(),
            "set".as_ref(),
            "--file".as_ref(),
            garbage.as_os_str(),
        ])
        .await?;
    assert!(!refused.status.success());
    assert!(
        refused.stderr_text().contains("INVALID_ARGUMENT"),
        "{}",
        refused.stderr_text()
    );
    Ok(())
}
