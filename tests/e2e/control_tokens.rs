//! Stored API tokens end to end, on two control replicas sharing one real etcd: `stk token
//! create/list/revoke`; a `deployer` token scoped to `*.team-a.test` uploads and deploys to
//! `www.team-a.test` and is refused (PERMISSION_DENIED naming the scope) everywhere else;
//! revocation reaches both replicas within a second; an expired token is refused; bad input names
//! the field; the secret never appears in etcd, in either control's log, or in `stk token list`.
//! The same lifecycle (create, use, revoke) on a single node with the file store.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use statiko_proto::v1::{
    CreateTokenRequest, GetSiteRequest, ImportCertificateRequest, ListAppsRequest,
    ListAppsResponse, ListNodesRequest, ListSitesRequest, ListTokensRequest, TokenRole,
};
use statiko_tests::fixtures::{
    Upload, assert_status, cert_pair, deploy, digest_of, site, site_bundle,
};
use statiko_tests::{
    Api, Control, ControlOptions, Edge, EdgeOptions, Etcd, OutputExt, StateStore, patience,
    require_tool, run_stk, secs, wait_until,
};
use tonic::Code;

use crate::control_common::{etcd_dump, list_sites};

const SCOPE_TEXT: &str = r#"token "ci-team-a" (deployer, scope *.team-a.test)"#;

/// `stk --output json token create ...` as admin: the parsed document.
async fn stk_create(control: &Control, args: &[&str]) -> Result<Value> {
    let mut full = vec!["token", "create"];
    full.extend_from_slice(args);
    control.stk_json(&full).await
}

/// Creates `www.team-a.test` and `team-b.test`, and a deployer token `ci-team-a` scoped to
/// `*.team-a.test` with `stk token create`; returns its secret.
async fn team_sites_and_deployer(control: &Control) -> Result<String> {
    let admin = control.admin().await?;
    admin
        .sites()
        .create_site(site("www.team-a.test", &[]))
        .await?;
    admin.sites().create_site(site("team-b.test", &[])).await?;
    let created = stk_create(
        control,
        &[
            "ci-team-a",
            "--role",
            "deployer",
            "--scope",
            "*.team-a.test",
        ],
    )
    .await?;
    Ok(created["secret"].as_str().context("secret")?.to_owned())
}

/// Asserts PERMISSION_DENIED naming the deployer's scope and each of `needles`.
#[track_caller]
fn denied<T: std::fmt::Debug>(result: Result<T, tonic::Status>, needles: &[&str]) {
    let mut all = vec![SCOPE_TEXT];
    all.extend_from_slice(needles);
    assert_status(result, Code::PermissionDenied, &all);
}

/// Whether `api` is refused as unauthenticated (the token is unknown or expired).
async fn refused(api: &Api) -> bool {
    api.sites()
        .list_sites(ListSitesRequest::default())
        .await
        .is_err_and(|s| s.code() == Code::Unauthenticated)
}

#[tokio::test]
async fn deployer_tokens_across_replicas() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let etcd = Etcd::start().await?;
    let a = Control::start(ControlOptions::default().store(StateStore::etcd(&etcd))).await?;
    let b = Control::start(ControlOptions::default().store(StateStore::etcd(&etcd))).await?;
    let admin = a.admin().await?;
    for (domain, aliases) in [
        ("www.team-a.test", &[][..]),
        ("team-b.test", &[][..]),
        ("mixed.team-a.test", &["shop.team-b.test"][..]),
    ] {
        admin.sites().create_site(site(domain, aliases)).await?;
    }

    // Create through stk; the secret is printed once, as a field with --output json.
    let created = stk_create(
        &a,
        &[
            "ci-team-a",
            "--role",
            "deployer",
            "--scope",
            "*.team-a.test",
            "--expires",
            "90d",
        ],
    )
    .await?;
    let secret = created["secret"].as_str().context("secret")?.to_owned();
    ensure!(secret.starts_with("stk_") && secret.len() > 60, "{created}");
    assert_eq!(created["token"]["role"], "deployer", "{created}");
    assert_eq!(created["token"]["scope"][0], "*.team-a.test", "{created}");
    ensure!(created["token"]["expires_at"].is_string(), "{created}");

    // Bad input names the field; nothing is written.
    let bad = |name: &str, role: TokenRole, scope: &[&str]| CreateTokenRequest {
        name: name.to_owned(),
        role: role as i32,
        scope: scope.iter().map(|s| (*s).to_owned()).collect(),
        expires_in: None,
    };
    let tokens = admin.tokens();
    for (request, code, needles) in [
        (
            bad("x", TokenRole::Unspecified, &[]),
            Code::InvalidArgument,
            &["role"][..],
        ),
        (
            CreateTokenRequest {
                role: 9,
                ..bad("x", TokenRole::Admin, &[])
            },
            Code::InvalidArgument,
            &["role", "unknown role 9"][..],
        ),
        (
            bad("x", TokenRole::Deployer, &[]),
            Code::InvalidArgument,
            &["scope:"][..],
        ),
        (
            bad("x", TokenRole::Deployer, &["a.*.test"]),
            Code::InvalidArgument,
            &["scope[0]", "a.*.test"][..],
        ),
        (
            bad("x", TokenRole::Admin, &["a.test"]),
            Code::InvalidArgument,
            &["scope:"][..],
        ),
        (
            bad("Bad Name", TokenRole::Admin, &[]),
            Code::InvalidArgument,
            &["name:"][..],
        ),
        (
            bad("ci-team-a", TokenRole::Deployer, &["b.test"]),
            Code::AlreadyExists,
            &["name:", "ci-team-a"][..],
        ),
        (
            bad("admin", TokenRole::Admin, &[]),
            Code::AlreadyExists,
            &["name:", "config"][..],
        ),
    ] {
        assert_status(tokens.clone().create_token(request).await, code, needles);
    }
    let unknown_role = a.stk(["token", "create", "x", "--role", "owner"]).await?;
    unknown_role.assert_fails_with(64, &["--role"]);
    let duplicate = a
        .stk([
            "token",
            "create",
            "ci-team-a",
            "--role",
            "deployer",
            "--scope",
            "x.test",
        ])
        .await?;
    duplicate.assert_fails_with(1, &["ALREADY_EXISTS"]);
    let listed = tokens
        .clone()
        .list_tokens(ListTokensRequest {})
        .await?
        .into_inner();
    assert_eq!(
        listed
            .tokens
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["ci-team-a"]
    );

    // The deployer uploads and deploys in its scope, on replica A.
    let deployer = a.api(&secret).await?;
    Upload::new("web", "1.0.0", site_bundle("team-a 1.0.0"))
        .send(&deployer)
        .await?;
    let deployed = deploy(&deployer, "www.team-a.test", "web", "1.0.0", false, secs(1)).await?;
    assert_eq!(
        deployed
            .site
            .and_then(|s| s.app)
            .map(|a| a.version)
            .as_deref(),
        Some("1.0.0")
    );
    // An app's users, as a deployer sees them, are only the sites in its scope.
    deploy(&admin, "mixed.team-a.test", "web", "1.0.0", false, secs(1)).await?;
    let used_by = |apps: ListAppsResponse| {
        apps.apps
            .into_iter()
            .find(|a| a.name == "web")
            .map(|a| a.used_by)
            .unwrap_or_default()
    };
    let all_users = used_by(
        admin
            .apps()
            .list_apps(ListAppsRequest::default())
            .await?
            .into_inner(),
    );
    assert_eq!(all_users, ["mixed.team-a.test", "www.team-a.test"]);
    let visible_users = used_by(
        deployer
            .apps()
            .list_apps(ListAppsRequest::default())
            .await?
            .into_inner(),
    );
    assert_eq!(visible_users, ["www.team-a.test"]);
    let visible: Vec<String> = list_sites(&deployer)
        .await?
        .into_iter()
        .map(|s| s.domain)
        .collect();
    assert_eq!(visible, ["www.team-a.test"]);

    // ... and is refused everywhere else, the message naming the scope it lacks.
    for (domain, needle) in [
        ("team-b.test", "may not deploy to team-b.test"),
        ("mixed.team-a.test", "also answers for shop.team-b.test"),
    ] {
        denied(
            deploy(&deployer, domain, "web", "1.0.0", false, secs(1))
                .await
                .map_err(|e| e.downcast::<tonic::Status>().expect("a gRPC status")),
            &[needle],
        );
    }
    denied(
        deployer
            .sites()
            .get_site(GetSiteRequest {
                domain: "team-b.test".into(),
            })
            .await,
        &["may not read team-b.test"],
    );
    denied(
        deployer
            .sites()
            .create_site(site("new.team-a.test", &[]))
            .await,
        &["CreateSite"],
    );
    let pair = cert_pair(&["www.team-a.test"])?;
    denied(
        deployer
            .certificates()
            .import_certificate(ImportCertificateRequest {
                name: "team-a".into(),
                certificate_pem: pair.cert_pem,
                key_pem: pair.key_pem,
                ..ImportCertificateRequest::default()
            })
            .await,
        &["ImportCertificate"],
    );
    denied(
        deployer.tokens().list_tokens(ListTokensRequest {}).await,
        &["ListTokens"],
    );
    denied(
        deployer.cluster().list_nodes(ListNodesRequest {}).await,
        &["ListNodes"],
    );
    assert_status(
        a.readonly()
            .await?
            .tokens()
            .list_tokens(ListTokensRequest {})
            .await,
        Code::PermissionDenied,
        &["admin tokens only"],
    );
    let cli_denied = a
        .stk_as(&secret, ["deploy", "team-b.test", "web@1.0.0"])
        .await?;
    cli_denied.assert_fails_with(4, &["PERMISSION_DENIED", "*.team-a.test"]);
    assert_eq!(
        list_sites(&admin)
            .await?
            .iter()
            .find(|s| s.domain == "team-b.test")
            .and_then(|s| s.app.clone()),
        None,
        "nothing was deployed to team-b.test"
    );

    // Replica B knows the token from its watch of tokens/.
    let deployer_b = b.api(&secret).await?;
    wait_until(secs(5), async || {
        deployer_b
            .sites()
            .get_site(GetSiteRequest {
                domain: "www.team-a.test".into(),
            })
            .await
            .map(|_| ())
    })
    .await?;

    // "Last used" is recorded (coarsely, in the background) and listed; the secret is not.
    let list = wait_until(secs(5), async || {
        let output = a.stk(["--output", "json", "token", "list"]).await?;
        output.assert_success();
        let doc: Value = serde_json::from_slice(&output.stdout)?;
        anyhow::Ok(
            doc["tokens"][0]["last_used_at"]
                .is_string()
                .then_some(output),
        )
    })
    .await?;
    let table = a.stk(["token", "list"]).await?;
    table.assert_success();
    for text in [list.stdout_text(), table.stdout_text()] {
        ensure!(
            text.contains("ci-team-a") && text.contains("*.team-a.test"),
            "{text}"
        );
        ensure!(!text.contains(&secret), "the secret is listed: {text}");
    }

    // An expired token is refused.
    let short = tokens
        .clone()
        .create_token(CreateTokenRequest {
            expires_in: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..bad("short-lived", TokenRole::Readonly, &[])
        })
        .await?
        .into_inner();
    let short_api = a.api(&short.secret).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_status(
        short_api
            .sites()
            .list_sites(ListSitesRequest::default())
            .await,
        Code::Unauthenticated,
        &["short-lived", "expired"],
    );

    // Revocation reaches both replicas within a second.
    let revoked_at = Instant::now();
    a.stk(["token", "revoke", "ci-team-a"])
        .await?
        .assert_success();
    wait_until(Duration::from_secs(1), async || {
        refused(&deployer).await && refused(&deployer_b).await
    })
    .await
    .context("the revoked token still works on a replica")?;
    let took = revoked_at.elapsed();
    ensure!(
        took <= patience(Duration::from_secs(1)) + Duration::from_millis(500),
        "revocation took {took:?}"
    );
    let missing = a.stk(["token", "revoke", "ci-team-a"]).await?;
    missing.assert_fails_with(1, &["NOT_FOUND"]);

    // Only the digest was ever stored; no log line holds a secret.
    let dump = etcd_dump(&etcd).await?;
    for (key, value) in &dump {
        for s in [&secret, &short.secret] {
            let hex = &s["stk_".len()..];
            ensure!(
                !key.contains(hex) && !value.contains(hex),
                "a secret is stored at {key}"
            );
        }
    }
    let short_record = dump
        .iter()
        .find(|(key, _)| key == "/statiko/v1/tokens/short-lived")
        .context("the short-lived token record")?;
    ensure!(
        short_record.1.contains(&digest_of(short.secret.as_bytes())),
        "{}",
        short_record.1
    );
    for control in [&a, &b] {
        let log = std::fs::read_to_string(control.log_path())?;
        for s in [&secret, &short.secret] {
            ensure!(
                !log.contains(&s["stk_".len()..]),
                "a secret is in {}",
                control.log_path().display()
            );
        }
    }
    Ok(())
}

/// The pipeline of docs/ci.md, command for command, with a deployer token in a secret file:
/// `stk app upload` and `stk deploy --wait` succeed and an edge serves the build; a site outside
/// the scope exits 4; a deploy the edges do not all serve in time exits 3; the token is never
/// printed.
#[tokio::test]
async fn ci_pipeline_with_a_deployer_token_file() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let etcd = Etcd::start().await?;
    let control = Control::start(ControlOptions::default().store(StateStore::etcd(&etcd))).await?;
    let mut edge = Edge::start(
        EdgeOptions::new("edge-ci", StateStore::etcd(&etcd), &control.repo_dir())
            .config(json!({"edge": {"leaseTtl": 10}})),
    )
    .await?;
    let secret = team_sites_and_deployer(&control).await?;

    // What the CI runner has: a checkout with a build output, and the secret as a file.
    let work = tempfile::tempdir()?;
    let public = work.path().join("public");
    std::fs::create_dir_all(&public)?;
    std::fs::write(public.join("index.html"), "<h1>team a, build 1a2b3c</h1>")?;
    let token_file = work.path().join("statiko-token");
    std::fs::write(&token_file, format!("{secret}\n"))?;
    let mut env = vec![
        ("STATIKO_ENDPOINT".to_owned(), control.endpoint()),
        (
            "STATIKO_TOKEN_FILE".to_owned(),
            token_file.display().to_string(),
        ),
    ];
    if control.tls_enabled() {
        env.push((
            "STATIKO_CA".to_owned(),
            control.ca_path().display().to_string(),
        ));
    }
    let stk = async |args: &[&str]| {
        let output = run_stk(args, &env).await?;
        for text in [output.stdout_text(), output.stderr_text()] {
            ensure!(!text.contains(&secret), "stk printed the token: {text}");
        }
        anyhow::Ok(output)
    };
    let public_arg = public.display().to_string();
    stk(&[
        "app",
        "upload",
        &public_arg,
        "--name",
        "team-a-web",
        "--version",
        "1a2b3c",
    ])
    .await?
    .assert_success();
    let deployed = stk(&[
        "deploy",
        "www.team-a.test",
        "team-a-web@1a2b3c",
        "--wait",
        "--wait-timeout",
        "60s",
    ])
    .await?;
    deployed.assert_success();
    ensure!(
        deployed.stdout_text().contains("edge-ci"),
        "{}",
        deployed.stdout_text()
    );
    let page = edge.https_get("www.team-a.test", "/").await?;
    ensure!(
        page.status == 200 && page.text().contains("build 1a2b3c"),
        "{}",
        page.text()
    );

    let outside = stk(&["deploy", "team-b.test", "team-a-web@1a2b3c", "--wait"]).await?;
    outside.assert_code(4);
    ensure!(
        outside
            .stderr_text()
            .contains(r#"may not deploy to team-b.test"#),
        "{}",
        outside.stderr_text()
    );

    // An edge that stopped answering still holds its lease: the wait times out, exit code 3.
    std::fs::write(public.join("index.html"), "<h1>team a, build 4d5e6f</h1>")?;
    stk(&[
        "app",
        "upload",
        &public_arg,
        "--name",
        "team-a-web",
        "--version",
        "4d5e6f",
    ])
    .await?
    .assert_success();
    edge.kill().await?;
    let late = stk(&[
        "deploy",
        "www.team-a.test",
        "team-a-web@4d5e6f",
        "--wait",
        "--wait-timeout",
        "1s",
    ])
    .await?;
    late.assert_fails_with(3, &["DEADLINE_EXCEEDED"]);
    Ok(())
}

/// Stored tokens on a single node (`state.store: file`, no etcd): `stk token create`, the token
/// uploads and deploys in its scope and is refused outside it, `stk token revoke` stops it
/// within a second (the file store's watch), it is gone from `stk token list`, and its secret
/// is nowhere in `state.json`.
#[tokio::test]
async fn stored_tokens_on_the_file_store() -> Result<()> {
    statiko_tests::init();
    let control = Control::start(ControlOptions::default()).await?;
    let secret = team_sites_and_deployer(&control).await?;

    // Use: upload and deploy in scope; refused (naming the scope) outside it.
    let deployer = control.api(&secret).await?;
    Upload::new("web", "1.0.0", site_bundle("single 1.0.0"))
        .send(&deployer)
        .await?;
    deploy(&deployer, "www.team-a.test", "web", "1.0.0", false, secs(1)).await?;
    let outside = deploy(&deployer, "team-b.test", "web", "1.0.0", false, secs(1))
        .await
        .expect_err("a deploy outside the scope");
    let outside = format!("{outside:#}");
    ensure!(
        outside.contains("scope *.team-a.test) may not deploy to team-b.test"),
        "{outside}"
    );

    // Revoke: refused within a second, and no longer listed.
    let revoked_at = Instant::now();
    control
        .stk(["token", "revoke", "ci-team-a"])
        .await?
        .assert_success();
    wait_until(Duration::from_secs(1), async || refused(&deployer).await)
        .await
        .context("the revoked token still works")?;
    let took = revoked_at.elapsed();
    ensure!(
        took <= patience(Duration::from_secs(1)) + Duration::from_millis(500),
        "revocation took {took:?}"
    );
    let listed = control.stk(["--output", "json", "token", "list"]).await?;
    listed.assert_success();
    ensure!(
        !String::from_utf8_lossy(&listed.stdout).contains("ci-team-a"),
        "still listed: {}",
        String::from_utf8_lossy(&listed.stdout)
    );
    let state = std::fs::read_to_string(control.state_dir().join("state.json"))
        .context("read state.json")?;
    ensure!(!state.contains(&secret), "the secret is in state.json");
    let log = std::fs::read_to_string(control.log_path()).context("read the control log")?;
    ensure!(!log.contains(&secret), "the secret is in the log");
    Ok(())
}
