//! `statiko-control`: hands over to `statiko_control::run` through the shared binary start-up
//! in `statiko_common::process` (command line, config, telemetry, runtime, exit code).

use std::process::ExitCode;

use anyhow::Context as _;
use statiko_common::process::{self, Binary, ReadyFile};

const BINARY: Binary = Binary {
    name: env!("CARGO_BIN_NAME"),
    role: "control plane",
    version: env!("CARGO_PKG_VERSION"),
    about: "The Statiko control plane: the gRPC management API",
};

fn main() -> ExitCode {
    process::main(
        BINARY,
        statiko_control::check_config,
        |config, ready_file| async move {
            let shutdown = statiko_common::shutdown::spawn_signal_handler();
            statiko_common::demo::check_at_start(
                &config,
                &[
                    ("control.listen", Some(config.control.listen)),
                    ("control.metrics", config.control.metrics),
                    ("control.console.listen", config.control.console.listen),
                ],
                true,
            )?;
            let listener = process::bind("control.listen", config.control.listen).await?;
            let local = listener.local_addr().context("listener address")?;
            // Bound before the ready file is written, so it can name the console's port too.
            let console = match config.control.console.listen {
                None => None,
                Some(addr) => Some(process::bind("control.console.listen", addr).await?),
            };
            if let Some(path) = &ready_file {
                let mut ready = ReadyFile::default().with("grpc", local);
                if let Some(console) = &console {
                    ready = ready.with("console", console.local_addr().context("console address")?);
                }
                ready.write(path)?;
            }
            statiko_control::run(config, listener, console, shutdown).await
        },
    )
}
