//! The example configs in `deploy/config/` pass `statiko-control --check-config` (every `*.yaml`
//! there, so new examples are covered), and bad configs exit 64 naming the offending key.

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
    let dir = root.join("deploy").join("config");
    let mut examples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    examples.sort();
    assert!(
        !examples.is_empty(),
        "no example configs in {}",
        dir.display()
    );
    for example in examples {
        // The examples use paths relative to the repository root, so run from there.
        let mut command = tokio::process::Command::new(bin_path("statiko-control"));
        command
            .arg("--check-config")
            .arg("--config")
            .arg(&example)
            .current_dir(&root)
            .kill_on_drop(true);
        for (name, _value) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("STATIKO_") {
                command.env_remove(name);
            }
        }
        let output = command.output().await.context("run statiko-control")?;
        assert_eq!(
            output.status.code(),
            Some(0),
            "{} does not pass --check-config:\n{}",
            example.display(),
            output.stderr_text()
        );
        // Secrets are redacted in the printed config.
        assert!(
            !output.stdout_text().contains("statiko-dev-admin-token"),
            "{} printed a token",
            example.display()
        );
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
