//! One-shot runs of a workspace binary (`stk`, `statiko-control --check-config`), with a
//! deadline, and [`OutputExt`] for readable assertions on the result.

use std::ffi::OsStr;
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::process::Command;

use crate::bins::bin_path;
use crate::wait::patience;

/// How long a one-shot command may run (before patience).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the workspace binary `name` with `args` and extra `env`, stdin closed, and collects
/// its output. Inherited `STATIKO_*` variables are removed so the developer's shell cannot
/// change the outcome (`STATIKO_BIN_DIR` and `STATIKO_TEST_*` excepted).
pub async fn run_bin<A, K, V>(name: &str, args: A, env: &[(K, V)]) -> Result<Output>
where
    A: IntoIterator,
    A::Item: AsRef<OsStr>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut command = Command::new(bin_path(name));
    command.args(args);
    scrub_statiko_env(&mut command);
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let budget = patience(RUN_TIMEOUT);
    tokio::time::timeout(budget, command.output())
        .await
        .with_context(|| format!("`{name}` did not finish within {budget:?}"))?
        .with_context(|| format!("run `{name}`"))
}

/// Runs `stk` (see [`run_bin`]); `Control::stk` fills in endpoint, token and CA.
pub async fn run_stk<A, K, V>(args: A, env: &[(K, V)]) -> Result<Output>
where
    A: IntoIterator,
    A::Item: AsRef<OsStr>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    run_bin("stk", args, env).await
}

/// Removes inherited `STATIKO_*` variables except the harness's own settings.
pub(crate) fn scrub_statiko_env(command: &mut Command) {
    for (name, _value) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        let harness_setting =
            name_text == "STATIKO_BIN_DIR" || name_text.starts_with("STATIKO_TEST_");
        if name_text.starts_with("STATIKO_") && !harness_setting {
            command.env_remove(&name);
        }
    }
}

/// Readable accessors and assertions for a finished command's [`Output`].
pub trait OutputExt {
    /// stdout as UTF-8 (lossy).
    fn stdout_text(&self) -> String;
    /// stderr as UTF-8 (lossy).
    fn stderr_text(&self) -> String;
    /// Panics, showing stdout and stderr, unless the exit code is 0.
    #[track_caller]
    fn assert_success(&self) -> &Self;
    /// Panics, showing stdout and stderr, unless the exit code is `code`.
    #[track_caller]
    fn assert_code(&self, code: i32) -> &Self;
    /// Panics, showing stdout and stderr, unless the exit code is `code` and stderr contains
    /// every one of `needles`.
    #[track_caller]
    fn assert_fails_with(&self, code: i32, needles: &[&str]) -> &Self;
}

impl OutputExt for Output {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    #[track_caller]
    fn assert_success(&self) -> &Self {
        self.assert_code(0)
    }

    #[track_caller]
    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit code {code}, got {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout_text(),
            self.stderr_text()
        );
        self
    }

    #[track_caller]
    fn assert_fails_with(&self, code: i32, needles: &[&str]) -> &Self {
        self.assert_code(code);
        let stderr = self.stderr_text();
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "stderr lacks {needle:?}:\n{stderr}"
            );
        }
        self
    }
}
