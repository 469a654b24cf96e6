//! What both server binaries do before and around their own `run`: the shared command-line
//! flags, config loading with exit code 64 on a bad config, `--check-config`, telemetry, the
//! rustls crypto provider, the runtime, the ready file and the exit code.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::Config;

/// Exit code for a bad config or command line (BSD `EX_USAGE`).
pub const EX_USAGE: u8 = 64;

/// An error found only once the binary runs (e.g. a `secretsEncryptionKey` that does not open
/// the cluster's secrets) that is still a configuration mistake: [`main`] exits with
/// [`EX_USAGE`] for it, as for a bad config file.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct InvalidConfig(pub String);

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

/// Runs a server binary: loads and validates the config (`prepare` adds the binary's own checks
/// and runs for `--check-config` too), then starts telemetry and a multi-threaded runtime and
/// runs `serve` to completion. Returns the process exit code.
#[expect(clippy::print_stdout, clippy::print_stderr)]
pub fn main<P, F, Fut>(
    args: CommonArgs,
    name: &str,
    prepare: impl FnOnce(&Config) -> anyhow::Result<P>,
    serve: F,
) -> ExitCode
where
    F: FnOnce(Config, P) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = match Config::load(args.config.as_deref(), &env) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: invalid configuration: {err}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let prepared = match prepare(&config) {
        Ok(prepared) => prepared,
        Err(err) => {
            eprintln!("error: invalid configuration: {err:#}");
            return ExitCode::from(EX_USAGE);
        }
    };
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, prepared)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "{name} failed");
            eprintln!("error: {err:#}");
            if err.chain().any(|cause| cause.is::<InvalidConfig>()) {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Binds a listener; the error names the config key.
pub async fn bind(key: &str, address: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("{key}: bind {address}"))
}

/// Writes the ready file atomically (write, then rename), so a reader never sees half of it.
pub fn write_ready_file(path: &Path, addresses: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, addresses.to_string())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}
