//! `statiko-edge`: parses the command line and hands over to `statiko_edge::run` through the
//! shared binary start-up in `statiko_common::process`.

use std::process::ExitCode;

use clap::Parser;
use statiko_common::process::{self, CommonArgs, ReadyFile};

/// The Statiko edge: serves every site over HTTP and HTTPS.
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
        "edge",
        |_| Ok(()),
        |config| async move {
            let shutdown = statiko_common::shutdown::spawn_signal_handler();
            statiko_common::demo::check_at_start(
                &config,
                &[
                    ("edge.http", Some(config.edge.http)),
                    ("edge.https", Some(config.edge.https)),
                    ("edge.admin", Some(config.edge.admin)),
                ],
                false,
            )?;
            let listeners = statiko_edge::Listeners {
                http: process::bind("edge.http", config.edge.http).await?,
                https: process::bind("edge.https", config.edge.https).await?,
                admin: process::bind("edge.admin", config.edge.admin).await?,
            };
            if let Some(path) = &ready_file {
                ReadyFile::default()
                    .with("http", listeners.http.local_addr()?)
                    .with("https", listeners.https.local_addr()?)
                    .with("admin", listeners.admin.local_addr()?)
                    .write(path)?;
            }
            statiko_edge::run(config, listeners, shutdown).await
        },
    )
}
