//! `stk` against a real control: site create/list/get (by alias)/update/delete, app
//! upload/list, `--output json` that parses, and failures that exit non-zero with the server's
//! code and message on stderr (bad token, malformed domain, unknown site).

use anyhow::{Context, Result};
use serde_json::Value;
use statiko_tests::fixtures::site_bundle;
use statiko_tests::{ADMIN_TOKEN, ControlOptions, OutputExt, run_stk};

use crate::control_common::{Backend, start};

#[tokio::test]
async fn stk_sites_apps_and_errors() -> Result<()> {
    let Some(running) = start(Backend::File, ControlOptions::default()).await? else {
        return Ok(());
    };
    let control = &running.control;

    control
        .stk([
            "site",
            "create",
            "CLI.example.com",
            "--alias",
            "www.cli.example.com",
        ])
        .await?
        .assert_success();
    control
        .stk(["site", "create", "b.example.com"])
        .await?
        .assert_success();
    let table = control.stk(["site", "list"]).await?;
    table.assert_success();
    assert!(
        table.stdout_text().contains("cli.example.com"),
        "{}",
        table.stdout_text()
    );
    assert!(
        table.stdout_text().contains("www.cli.example.com"),
        "{}",
        table.stdout_text()
    );

    let got = control.stk(["site", "get", "WWW.cli.example.com"]).await?;
    got.assert_success();
    assert!(
        got.stdout_text().contains("cli.example.com"),
        "{}",
        got.stdout_text()
    );
    let got = control
        .stk_json(["site", "get", "www.cli.example.com"])
        .await?;
    assert_eq!(got["site"]["domain"], "cli.example.com", "{got}");

    control
        .stk([
            "site",
            "update",
            "cli.example.com",
            "--add-alias",
            "api.cli.example.com",
        ])
        .await?
        .assert_success();
    let listed = control.stk_json(["site", "list"]).await?;
    let sites = listed["sites"].as_array().context("sites array")?;
    let domains: Vec<&str> = sites.iter().filter_map(|s| s["domain"].as_str()).collect();
    assert_eq!(domains, ["b.example.com", "cli.example.com"]);
    assert_eq!(
        sites[1]["aliases"],
        serde_json::json!(["www.cli.example.com", "api.cli.example.com"])
    );

    control
        .stk(["site", "delete", "api.cli.example.com"])
        .await?
        .assert_success();
    let gone = control.stk(["site", "get", "cli.example.com"]).await?;
    assert!(!gone.status.success());
    assert!(
        gone.stderr_text().contains("NOT_FOUND"),
        "{}",
        gone.stderr_text()
    );
    assert!(
        gone.stderr_text().contains("cli.example.com"),
        "{}",
        gone.stderr_text()
    );

    // Apps.
    let dir = tempfile::tempdir()?;
    let bundle = dir.path().join("site.tar.gz");
    std::fs::write(&bundle, site_bundle("cli"))?;
    control
        .stk([
            "app".as_ref(),
            "upload".as_ref(),
            bundle.as_os_str(),
            "--name".as_ref(),
            "web".as_ref(),
            "--version".as_ref(),
            "1.0.0".as_ref(),
        ])
        .await?
        .assert_success();
    let apps = control.stk_json(["app", "list"]).await?;
    assert_eq!(apps["apps"][0]["name"], "web", "{apps}");
    assert_eq!(apps["apps"][0]["version"], "1.0.0", "{apps}");
    control
        .stk(["deploy", "b.example.com", "web@1.0.0"])
        .await?
        .assert_success();

    // A bad token: non-zero, the server's code and message.
    let denied = control.stk_as("wrong-token", ["site", "list"]).await?;
    assert!(!denied.status.success());
    assert!(
        denied.stderr_text().contains("UNAUTHENTICATED"),
        "{}",
        denied.stderr_text()
    );
    assert!(
        denied.stderr_text().contains("invalid bearer token"),
        "{}",
        denied.stderr_text()
    );
    // A read-only token may list but not create.
    let readonly = control
        .stk_as(
            statiko_tests::READONLY_TOKEN,
            ["site", "create", "ro.example.com"],
        )
        .await?;
    assert!(!readonly.status.success());
    assert!(
        readonly.stderr_text().contains("PERMISSION_DENIED"),
        "{}",
        readonly.stderr_text()
    );

    // A malformed domain.
    let bad = control.stk(["site", "create", "bad..domain"]).await?;
    assert!(!bad.status.success());
    assert!(
        bad.stderr_text().contains("INVALID_ARGUMENT"),
        "{}",
        bad.stderr_text()
    );
    assert!(
        bad.stderr_text().contains("domain"),
        "{}",
        bad.stderr_text()
    );
    let still: Value = serde_json::from_str(
        &control
            .stk(["--output", "json", "site", "list"])
            .await?
            .stdout_text(),
    )?;
    assert_eq!(still["sites"].as_array().map(Vec::len), Some(1), "{still}");
    Ok(())
}

/// `--token-file` / `STATIKO_TOKEN_FILE` (a CI secret mounted as a file): the token is read
/// from it (trailing newline trimmed) and never printed; an unreadable file is named in the
/// error; `--token` wins over the file.
#[tokio::test]
async fn stk_reads_the_token_from_a_file() -> Result<()> {
    let Some(running) = start(Backend::File, ControlOptions::default()).await? else {
        return Ok(());
    };
    let control = &running.control;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n"))?;
    let token_file = token_file.to_string_lossy().into_owned();
    let mut env: Vec<(String, String)> = control
        .stk_env(ADMIN_TOKEN)
        .into_iter()
        .filter(|(key, _)| key != "STATIKO_TOKEN")
        .collect();
    env.push(("STATIKO_TOKEN_FILE".to_owned(), token_file.clone()));

    let created = run_stk(["site", "create", "file-token.example.com"], &env).await?;
    created.assert_success();
    assert!(!created.stdout_text().contains(ADMIN_TOKEN));
    assert!(!created.stderr_text().contains(ADMIN_TOKEN));

    let without_file = &env[..env.len() - 1];
    let flag = run_stk(
        ["--token-file", token_file.as_str(), "site", "list"],
        without_file,
    )
    .await?;
    flag.assert_success();
    assert!(
        flag.stdout_text().contains("file-token.example.com"),
        "{}",
        flag.stdout_text()
    );

    let missing = dir.path().join("missing-token");
    let mut env_missing = env.clone();
    env_missing.pop();
    env_missing.push((
        "STATIKO_TOKEN_FILE".to_owned(),
        missing.to_string_lossy().into_owned(),
    ));
    let failed = run_stk(["site", "list"], &env_missing).await?;
    assert!(!failed.status.success());
    failed.assert_code(64);
    assert!(
        failed.stderr_text().contains("missing-token"),
        "{}",
        failed.stderr_text()
    );

    // An explicit --token wins over the file: a wrong one is refused.
    let wrong = run_stk(
        ["--token", "wrong-token-0123456789abcdef", "site", "list"],
        &env,
    )
    .await?;
    assert!(!wrong.status.success());
    assert!(
        wrong.stderr_text().contains("UNAUTHENTICATED"),
        "{}",
        wrong.stderr_text()
    );
    Ok(())
}
