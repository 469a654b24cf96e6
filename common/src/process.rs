//! What both server binaries do before and around their own `run`: the shared command-line
//! flags, config loading with exit code 64 on a bad config, `--check-config`, telemetry, the
//! rustls crypto provider, the runtime, the ready file and the exit code.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::NodeConfig;

/// Exit code for a bad config or command line (BSD `EX_USAGE`).
pub const EX_USAGE: u8 = 64;

/// An error found only once the binary runs (e.g. a `secretsEncryptionKey` that does not open
/// the cluster's secrets) that is still a configuration mistake: [`main`] exits with
/// [`EX_USAGE`] for it, as for a bad config file.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct InvalidConfig(pub String);

/// A server binary's name, version and one-line description, for `--help` and `--version`.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    /// The executable's name, e.g. `statiko-edge`.
    pub name: &'static str,
    /// What the logs call it when it fails, e.g. `edge`.
    pub role: &'static str,
    pub version: &'static str,
    pub about: &'static str,
}

impl Binary {
    /// The command line, parsed (`--help` and `--version` print and exit here).
    fn parse_args(&self) -> CommonArgs {
        use clap::{Args as _, FromArgMatches as _};
        // `augment_args` sets the struct's doc comment as the about text: set ours after it.
        let matches = CommonArgs::augment_args(clap::Command::new(self.name))
            .version(self.version)
            .about(self.about)
            .get_matches();
        CommonArgs::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
    }
}

/// Flags shared by `statiko-control` and `statiko-edge`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Config file (default: $STATIKO_CONFIG, then /etc/statiko/node-config.yaml).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Validate the config, print it with secrets redacted, and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Write the bound addresses as JSON to this file once listening.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

/// Runs a server binary: parses the command line, loads the config into a [`NodeConfig`]
/// (`check` adds the binary's own checks and runs for `--check-config` too), then starts
/// telemetry and a multi-threaded runtime and runs `serve` with the config and the
/// `--ready-file` path to completion. Returns the process exit code.
pub fn main<F, Fut>(
    binary: Binary,
    check: impl FnOnce(&NodeConfig) -> anyhow::Result<()>,
    serve: F,
) -> ExitCode
where
    F: FnOnce(NodeConfig, Option<PathBuf>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    main_with_workers(binary, |_| 0, check, serve)
}

/// [`main`] with the number of runtime worker threads taken from the config (`0`: one per
/// CPU core, tokio's default), e.g. `edge.workerThreads`.
#[expect(clippy::print_stdout, clippy::print_stderr)]
pub fn main_with_workers<F, Fut>(
    binary: Binary,
    workers: impl FnOnce(&NodeConfig) -> usize,
    check: impl FnOnce(&NodeConfig) -> anyhow::Result<()>,
    serve: F,
) -> ExitCode
where
    F: FnOnce(NodeConfig, Option<PathBuf>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let args = binary.parse_args();
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = match NodeConfig::load(args.config.as_deref(), &env) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: invalid configuration: {err}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Err(err) = check(&config) {
        eprintln!("error: invalid configuration: {err:#}");
        return ExitCode::from(EX_USAGE);
    }
    if args.check_config {
        println!("{}", config.redacted().to_yaml_string());
        return ExitCode::SUCCESS;
    }
    let _telemetry = match crate::telemetry::init(&config.log) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("error: telemetry: {err:#}");
            return ExitCode::from(EX_USAGE);
        }
    };
    // One process-wide rustls provider (aws-lc-rs); a second install attempt is harmless.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match workers(&config) {
        0 => {}
        n => {
            builder.worker_threads(n);
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, args.ready_file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "{} failed", binary.role);
            eprintln!("error: {err:#}");
            if err.chain().any(|cause| cause.is::<InvalidConfig>()) {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Binds a listener on a configured address; the error names the config key.
pub async fn bind(key: &str, address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("{key}: bind {address}"))
}

/// The ready file (`--ready-file`): each listener's bound address by name, as one JSON object
/// (`{"http": "127.0.0.1:8080", "https": ...}`), written once the binary listens. The test
/// harness waits for it and reads the addresses back with [`ReadyFile::read`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ReadyFile(BTreeMap<String, SocketAddr>);

impl ReadyFile {
    /// Adds the address of the listener `name`.
    #[must_use]
    pub fn with(mut self, name: &str, address: SocketAddr) -> Self {
        self.0.insert(name.to_owned(), address);
        self
    }

    /// The address of the listener `name`.
    pub fn address(&self, name: &str) -> anyhow::Result<SocketAddr> {
        self.0
            .get(name)
            .copied()
            .with_context(|| format!("ready file has no {name:?} address"))
    }

    /// Writes the file atomically (write, then rename), so a reader never sees half of it.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_string(self).context("encode the ready file")?;
        std::fs::write(&tmp, json).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
    }

    /// Reads a ready file; an error while it is not there (yet).
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).context("no ready file yet")?;
        serde_json::from_str(&text)
            .with_context(|| format!("ready file is not the addresses JSON (yet): {text:?}"))
    }
}
