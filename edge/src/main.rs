//! `statiko-edge`: hands over to `statiko_edge::run` through the shared binary start-up in
//! `statiko_common::process` (command line, config, telemetry, runtime, exit code).

use std::process::ExitCode;

use anyhow::Context as _;
use statiko_common::process::{self, Binary, ReadyFile};

const BINARY: Binary = Binary {
    name: env!("CARGO_BIN_NAME"),
    role: "edge",
    version: env!("CARGO_PKG_VERSION"),
    about: "The Statiko edge: serves every site over HTTP, HTTPS and HTTP/3",
};

fn main() -> ExitCode {
    process::main_with_workers(
        BINARY,
        |config| config.edge.worker_threads as usize,
        |_| Ok(()),
        |config, ready_file| async move {
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
            let https = process::bind("edge.https", config.edge.https).await?;
            // HTTP/3 listens on the UDP port of the HTTPS listener (the port it got when `:0`).
            let h3 = if config.edge.http3 {
                let address = https.local_addr()?;
                let socket = std::net::UdpSocket::bind(address)
                    .with_context(|| format!("edge.http3: bind udp {address}"))?;
                socket.set_nonblocking(true)?;
                Some(socket)
            } else {
                None
            };
            let listeners = statiko_edge::Listeners {
                http: process::bind("edge.http", config.edge.http).await?,
                https,
                admin: process::bind("edge.admin", config.edge.admin).await?,
                h3,
            };
            if let Some(path) = &ready_file {
                let mut ready = ReadyFile::default()
                    .with("http", listeners.http.local_addr()?)
                    .with("https", listeners.https.local_addr()?)
                    .with("admin", listeners.admin.local_addr()?);
                if let Some(h3) = &listeners.h3 {
                    ready = ready.with("h3", h3.local_addr()?);
                }
                ready.write(path)?;
            }
            statiko_edge::run(config, listeners, shutdown).await
        },
    )
}
