//! Safe defaults: the public demo key and tokens of `deploy/` stop a process whose listener is
//! not loopback (exit 64, saying how to make a key) unless `allowDemoSecrets` is set, and only
//! warn on loopback; the files holding secrets or the desired state are owner-only, and are
//! tightened at start when found wider.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use statiko_tests::fixtures::site;
use statiko_tests::{
    Control, ControlOptions, Edge, EdgeOptions, OutputExt, StateStore, run_bin, secs, wait_until,
};

/// The demo key of `deploy/config/single-node.yaml`.
const DEMO_KEY: &str = "c3RhdGlrby1kZW1vLWtleS1DSEFOR0UtTUUtbm93ISE=";
/// The demo admin token of `deploy/config/single-node.yaml`.
const DEMO_TOKEN: &str = "statiko-dev-admin-token-change-me";

/// Runs `binary --config <config>` to completion (it is expected to refuse to start).
async fn run_with(binary: &str, config: &Value) -> Result<std::process::Output> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config.to_string())?;
    run_bin(
        binary,
        ["--config".as_ref(), path.as_os_str()],
        &[] as &[(&str, &str)],
    )
    .await
}

#[tokio::test]
async fn demo_secrets_on_a_public_listener_refuse_to_start() -> Result<()> {
    statiko_tests::init();
    let dir = tempfile::tempdir()?;
    let edge = json!({
        "nodeName": "exposed",
        "secretsEncryptionKey": DEMO_KEY,
        "state": {"store": "file", "file": {"path": dir.path().join("state")}},
        "repo": {"type": "local", "local": {"path": dir.path().join("repo")}},
        "edge": {
            "dataDir": dir.path().join("data"),
            "http": "0.0.0.0:0",
            "https": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
        },
    });
    let output = run_with("statiko-edge", &edge).await?;
    let stderr = output.stderr_text();
    output.assert_code(64);
    for needle in [
        "secretsEncryptionKey is the public demo key of deploy/config/single-node.yaml",
        "edge.http (0.0.0.0:0)",
        "openssl rand -base64 32",
        "allowDemoSecrets",
    ] {
        ensure!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }

    // Control checks its tokens too (here the key is not a demo one).
    let control = json!({
        "secretsEncryptionKey": statiko_tests::TEST_SECRETS_ENCRYPTION_KEY,
        "state": {"store": "file", "file": {"path": dir.path().join("state")}},
        "control": {
            "listen": "0.0.0.0:0",
            "metrics": "",
            "tls": {"enabled": true, "selfSignedDir": dir.path().join("tls")},
        },
        "auth": {"tokens": [{"name": "dev-admin", "token": DEMO_TOKEN, "role": "admin"}]},
        "repo": {"type": "local", "local": {"path": dir.path().join("repo")}},
    });
    let output = run_with("statiko-control", &control).await?;
    let stderr = output.stderr_text();
    output.assert_code(64);
    ensure!(
        stderr.contains("auth.tokens[0] (\"dev-admin\") is a public demo token")
            && stderr.contains("control.listen (0.0.0.0:0)")
            && stderr.contains("openssl rand -base64 32"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn demo_secrets_start_on_loopback_or_when_allowed_and_warn() -> Result<()> {
    statiko_tests::init();
    let control = Control::start(ControlOptions::default()).await?;
    let with_demo_key = |name: &str| {
        EdgeOptions::new(name, StateStore::TempFile, &control.repo_dir())
            .config(json!({"secretsEncryptionKey": DEMO_KEY}))
    };
    // Loopback listeners (the harness default): starts, warns.
    let local = Edge::start(with_demo_key("local")).await?;
    // A public listener, explicitly allowed through the environment: starts, warns.
    let allowed = Edge::start(
        with_demo_key("allowed")
            .config(json!({"edge": {"http": "0.0.0.0:0"}}))
            .env("STATIKO_ALLOW_DEMO_SECRETS", "true"),
    )
    .await?;
    for edge in [&local, &allowed] {
        wait_until(secs(10), async || {
            edge.log_tail().contains("DEMO SECRET IN USE")
        })
        .await
        .with_context(|| edge.log_tail())?;
    }
    Ok(())
}

fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .permissions()
        .mode()
        & 0o777)
}

fn widen(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

#[tokio::test]
async fn secrets_and_desired_state_files_are_owner_only() -> Result<()> {
    statiko_tests::init();
    let mut control = Control::start(ControlOptions::default()).await?;
    control
        .admin()
        .await?
        .sites()
        .create_site(site("private.test", &[]))
        .await?;
    let state_dir = control.state_dir();
    let state_file = state_dir.join("state.json");
    let tls_dir = control.dir().join("control-tls");
    let tls_key = tls_dir.join("key.pem");
    let mut edge = Edge::start(EdgeOptions::new(
        "private",
        StateStore::File(state_dir.clone()),
        &control.repo_dir(),
    ))
    .await?;
    let applied = edge.dir().join("data/applied");
    let desired = applied.join("desired.json");
    wait_until(secs(10), async || desired.exists()).await?;

    let expected = [
        (&state_dir, 0o700),
        (&state_file, 0o600),
        (&tls_dir, 0o700),
        (&tls_key, 0o600),
        (&applied, 0o700),
        (&desired, 0o600),
    ];
    for (path, want) in expected {
        assert_eq!(mode(path)?, want, "{}", path.display());
    }

    // Left wider (an earlier version, a loose umask): tightened at the next start.
    edge.kill().await?;
    control.terminate().await?;
    for (path, _) in expected {
        widen(path, if path.is_dir() { 0o755 } else { 0o644 })?;
    }
    control.restart().await?;
    edge.restart().await?;
    // The edge writes its ready file once bound, just before it loads the persisted state.
    wait_until(secs(10), async || {
        for (path, want) in expected {
            let mode = mode(path)?;
            ensure!(mode == want, "{} is {mode:o}", path.display());
        }
        anyhow::Ok(())
    })
    .await?;
    Ok(())
}
