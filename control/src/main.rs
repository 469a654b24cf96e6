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
