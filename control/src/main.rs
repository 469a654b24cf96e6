//! `statiko-control`: parses the command line, loads the config, starts telemetry, binds the
//! listener and hands over to `statiko_control::run`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use statiko_common::config::Config;

/// Exit code for a bad config or command line (BSD `EX_USAGE`).
const EX_USAGE: u8 = 64;

/// The Statiko control plane: the gRPC management API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (default: $STATIKO_CONFIG, then /etc/statiko/node-config.yaml).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Validate the config, print it with secrets redacted, and exit.
    #[arg(long)]
    check_config: bool,
    /// Write `{"grpc": "<address>"}` to this file once listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = match Config::load(cli.config.as_deref(), &env) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: invalid configuration: {err}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let prepared = match statiko_control::prepare(&config) {
        Ok(prepared) => prepared,
        Err(err) => {
            eprintln!("error: invalid configuration: {err:#}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if cli.check_config {
        println!("{}", config.redacted().to_yaml_string());
        return ExitCode::SUCCESS;
    }
    let _telemetry = match statiko_common::telemetry::init(&config.log) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("error: telemetry: {err:#}");
            return ExitCode::from(EX_USAGE);
        }
    };
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
    match runtime.block_on(run(cli, config, prepared)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "control plane failed");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, config: Config, prepared: statiko_control::Prepared) -> anyhow::Result<()> {
    let shutdown = statiko_common::shutdown::spawn_signal_handler();
    let listener = tokio::net::TcpListener::bind(&config.control.listen)
        .await
        .with_context(|| format!("control.listen: bind {}", config.control.listen))?;
    let local = listener.local_addr().context("listener address")?;
    if let Some(path) = &cli.ready_file {
        let ready = serde_json::json!({ "grpc": local.to_string() });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, ready.to_string())
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    }
    statiko_control::run(config, prepared, listener, shutdown).await
}
