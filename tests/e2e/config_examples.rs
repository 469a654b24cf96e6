//! The example configs in `deploy/config/` and the compose cluster's `deploy/compose/` pass
//! `statiko-control --check-config` and `statiko-edge --check-config` (every `*.yaml` there, so
//! new examples are covered), and bad configs exit 64 naming the offending key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use statiko_tests::{Control, ControlOptions, OutputExt, bin_path};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

#[tokio::test]
async fn every_example_config_checks() -> Result<()> {
    statiko_tests::init();
    let root = workspace_root();
    let mut examples = Vec::new();
    for dir in [
        root.join("deploy").join("config"),
        root.join("deploy").join("compose"),
    ] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("read {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                path.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
            })
            .collect();
        found.sort();
        assert!(!found.is_empty(), "no example configs in {}", dir.display());
        examples.extend(found);
    }
    for (example, binary) in examples
        .iter()
        .flat_map(|example| ["statiko-control", "statiko-edge"].map(|binary| (example, binary)))
    {
        // The examples use paths relative to the repository root, so run from there.
        let mut command = tokio::process::Command::new(bin_path(binary));
        command
            .arg("--check-config")
            .arg("--config")
            .arg(example)
            .current_dir(&root)
            .kill_on_drop(true);
        for (name, _value) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("STATIKO_") {
                command.env_remove(name);
            }
        }
        let output = command
            .output()
            .await
            .with_context(|| format!("run {binary}"))?;
        assert_eq!(
            output.status.code(),
            Some(0),
            "{} does not pass {binary} --check-config:\n{}",
            example.display(),
            output.stderr_text()
        );
        // Secrets are redacted in the printed config.
        let stdout = output.stdout_text();
        for secret in [
            "statiko-dev-admin-token",
            "change-me-cluster-admin-token",
            "change-me-systemd-admin-token",
            "statiko-compose-admin-token",
        ] {
            assert!(
                !stdout.contains(secret),
                "{binary} --check-config printed a token of {}",
                example.display()
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn unknown_key_exits_64_naming_it() -> Result<()> {
    statiko_tests::init();
    for overrides in [
        json!({"state": {"bogusKey": 1}}),
        json!({"limits": {"bogusKey": 1}}),
        json!({"bogusKey": true}),
    ] {
        let (output, _dir) =
            Control::check_config(&ControlOptions::default().config(overrides.clone())).await?;
        output.assert_code(64);
        assert!(
            output.stderr_text().contains("bogusKey"),
            "{overrides}: {}",
            output.stderr_text()
        );
    }
    Ok(())
}

#[tokio::test]
async fn bad_value_exits_64_naming_the_key() -> Result<()> {
    statiko_tests::init();
    let cases = [
        (
            json!({"limits": {"maxBundleSize": 0}}),
            "limits.maxBundleSize",
        ),
        (
            json!({"state": {"etcd": {"timeout": "soon"}}}),
            "state.etcd.timeout",
        ),
        (json!({"state": {"store": "floppy"}}), "state.store"),
        (
            json!({"secretsEncryptionKey": "too-short"}),
            "secretsEncryptionKey",
        ),
    ];
    for (overrides, key) in cases {
        let (output, _dir) =
            Control::check_config(&ControlOptions::default().config(overrides.clone())).await?;
        output.assert_code(64);
        assert!(
            output.stderr_text().contains(key),
            "{overrides}: {}",
            output.stderr_text()
        );
    }
    // The harness's own config passes.
    let (output, _dir) = Control::check_config(&ControlOptions::default()).await?;
    output.assert_success();
    Ok(())
}
