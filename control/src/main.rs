//! `statiko-control`: parses the command line and hands over to `statiko_control::run` through
//! the shared binary start-up in `statiko_common::process`.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use statiko_common::process::{self, CommonArgs, ReadyFile};

/// The Statiko control plane: the gRPC management API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ready_file = cli.common.ready_file.clone();
    process::main(
        cli.common,
        "control plane",
        statiko_control::check_config,
        |config| async move {
            let shutdown = statiko_common::shutdown::spawn_signal_handler();
            statiko_common::demo::check_at_start(
                &config,
                &[
                    ("control.listen", Some(config.control.listen)),
                    ("control.metrics", config.control.metrics),
                ],
                true,
            )?;
            let listener = process::bind("control.listen", config.control.listen).await?;
            let local = listener.local_addr().context("listener address")?;
            if let Some(path) = &ready_file {
                ReadyFile::default().with("grpc", local).write(path)?;
            }
            statiko_control::run(config, listener, shutdown).await
        },
    )
}
