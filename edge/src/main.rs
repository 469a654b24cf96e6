//! `statiko-edge`: parses the command line, loads the config, starts telemetry, binds the
//! listeners and hands over to `statiko_edge::run`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use statiko_common::config::Config;

/// Exit code for a bad config or command line (BSD `EX_USAGE`).
const EX_USAGE: u8 = 64;

/// The Statiko edge: serves every site over HTTP and HTTPS.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (default: $STATIKO_CONFIG, then /etc/statiko/node-config.yaml).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Validate the config, print it with secrets redacted, and exit.
    #[arg(long)]
    check_config: bool,
    /// Write `{"http": .., "https": .., "admin": ..}` to this file once listening.
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
    if !config.codesign.public_key.is_empty()
        && let Err(err) =
            statiko_common::crypto::parse_ed25519_public_key(&config.codesign.public_key)
    {
        eprintln!("error: invalid configuration: codesign.publicKey: {err}");
        return ExitCode::from(EX_USAGE);
    }
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
    match runtime.block_on(run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "edge failed");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bind(key: &str, address: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("{key}: bind {address}"))
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    let shutdown = statiko_common::shutdown::spawn_signal_handler();
    let listeners = statiko_edge::Listeners {
        http: bind("edge.http", &config.edge.http).await?,
        https: bind("edge.https", &config.edge.https).await?,
        admin: bind("edge.admin", &config.edge.admin).await?,
    };
    if let Some(path) = &cli.ready_file {
        let ready = serde_json::json!({
            "http": listeners.http.local_addr()?.to_string(),
            "https": listeners.https.local_addr()?.to_string(),
            "admin": listeners.admin.local_addr()?.to_string(),
        });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, ready.to_string())
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    }
    statiko_edge::run(config, listeners, shutdown).await
}
