//! A child process owned by a test: output appended to a log file, SIGTERM with a bounded
//! wait, readiness polling that fails fast when the process dies, and SIGKILL on drop.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use crate::bins::notice;
use crate::wait::patience;

/// How many log lines [`ChildProcess::log_tail`] shows by default.
pub const LOG_TAIL_LINES: usize = 60;
/// How long [`ChildProcess::terminate`] waits after SIGTERM before SIGKILL (before patience).
const TERMINATE_GRACE: Duration = Duration::from_secs(10);

/// A running (or exited) child process whose stdout and stderr go to one log file.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    exit_status: Option<ExitStatus>,
}

impl ChildProcess {
    /// Spawns `command` with stdin closed and stdout + stderr appended to `log_path`.
    ///
    /// The log is appended to, so a restarted process keeps its predecessor's output.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> Result<Self> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("open log file {}", log_path.display()))?;
        let log_for_stderr = log.try_clone().context("duplicate log file handle")?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_for_stderr))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("spawn {name} ({:?})", command.as_std().get_program()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log_path: log_path.to_owned(),
            exit_status: None,
        })
    }

    /// The name given at spawn, used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id, while the process has not been reaped.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The process's peak resident set size so far (`VmHWM` in `/proc/<pid>/status`), in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let pid = self
            .id()
            .with_context(|| format!("{} has exited", self.name))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("read /proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmHWM in /proc/{pid}/status"))
    }

    /// The log file holding stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last [`LOG_TAIL_LINES`] lines of the log, with a header naming the file.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path, LOG_TAIL_LINES)
    }

    /// The exit status if the process has exited, without blocking.
    pub fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit_status.is_none() {
            self.exit_status = self
                .child
                .try_wait()
                .with_context(|| format!("poll {} for exit", self.name))?;
        }
        Ok(self.exit_status)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_exit_status(), Ok(None))
    }

    /// Waits for the process to exit by itself, for at most `patience(limit)`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exit_status {
            return Ok(status);
        }
        let budget = patience(limit);
        match timeout(budget, self.child.wait()).await {
            Ok(status) => {
                let status = status.with_context(|| format!("wait for {}", self.name))?;
                self.exit_status = Some(status);
                Ok(status)
            }
            Err(_elapsed) => bail!(
                "{} did not exit within {budget:?}\n{}",
                self.name,
                self.log_tail()
            ),
        }
    }

    /// Sends SIGTERM and waits for the exit status (the test asserts on it).
    ///
    /// If the process is still running after the grace period it is killed and this fails,
    /// since a graceful shutdown was expected.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_exit_status()? {
            return Ok(status);
        }
        self.signal("TERM").await?;
        let grace = patience(TERMINATE_GRACE);
        match timeout(grace, self.child.wait()).await {
            Ok(status) => {
                let status = status.with_context(|| format!("wait for {}", self.name))?;
                self.exit_status = Some(status);
                Ok(status)
            }
            Err(_elapsed) => {
                let killed = self.kill().await;
                bail!(
                    "{} did not exit within {grace:?} of SIGTERM and was killed ({killed:?})\n{}",
                    self.name,
                    self.log_tail()
                )
            }
        }
    }

    /// Sends SIGKILL and reaps the process.
    pub async fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_exit_status()? {
            return Ok(status);
        }
        self.child
            .kill()
            .await
            .with_context(|| format!("kill {}", self.name))?;
        let status = self
            .child
            .wait()
            .await
            .with_context(|| format!("reap {}", self.name))?;
        self.exit_status = Some(status);
        Ok(status)
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`, `STOP`, `CONT`, ...) through `sh -c kill`,
    /// which keeps the harness free of `unsafe` and of a libc dependency.
    pub async fn signal(&mut self, signal: &str) -> Result<()> {
        let Some(pid) = self.child.id() else {
            bail!("{} has already exited; cannot send SIG{signal}", self.name);
        };
        let status = Command::new("sh")
            .arg("-c")
            .arg("kill -s \"$1\" \"$2\"")
            .arg("sh")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .await
            .context("run `kill`")?;
        if !status.success() {
            bail!(
                "`kill -s {signal} {pid}` for {} failed: {status}",
                self.name
            );
        }
        Ok(())
    }

    /// Polls `probe` until it succeeds, failing fast (with the log tail) if the process exits
    /// and failing with the log tail after `patience(limit)`.
    pub async fn wait_ready<T>(
        &mut self,
        limit: Duration,
        mut probe: impl AsyncFnMut() -> Result<T>,
    ) -> Result<T> {
        let budget = patience(limit);
        let deadline = Instant::now() + budget;
        let mut interval = Duration::from_millis(10);
        loop {
            if let Some(status) = self.try_exit_status()? {
                bail!(
                    "{} exited with {status} before it was ready\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let last_error = match timeout(remaining.max(Duration::from_millis(500)), probe()).await
            {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => format!("{error:#}"),
                Err(_elapsed) => "readiness probe hung".to_owned(),
            };
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "{} was not ready within {budget:?}; last probe error: {last_error}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            sleep(interval.min(deadline - now)).await;
            interval = (interval * 2).min(Duration::from_millis(200));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            notice(&format!(
                "test failed; {} log:\n{}",
                self.name,
                self.log_tail()
            ));
        }
        if self.exit_status.is_none() {
            // `kill_on_drop` would do this too; doing it here also covers a process that
            // was already reaped, which `start_kill` reports as an error we ignore.
            let _already_gone = self.child.start_kill();
        }
    }
}

/// The last `lines` lines of the file at `path`, with a header naming it.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            format!(
                "--- last {} of {} lines of {} ---\n{}\n--- end of log ---",
                all.len() - start,
                all.len(),
                path.display(),
                all[start..].join("\n")
            )
        }
        Err(error) => format!("--- log {} unreadable: {error} ---", path.display()),
    }
}
