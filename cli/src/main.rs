//! `stk`: the Statiko command-line client, a thin wrapper over the `statiko.v1` gRPC API.
//!
//! Layout:
//! - `cli`: clap syntax (global flags with `STATIKO_*` variables, subcommands, value parsers).
//! - `connect`: the channel (plaintext or rustls), `--ca`/`--insecure`, the bearer interceptor.
//! - `commands`: one function per command; builds requests and prints results.
//! - `upload`: folder packing, archive detection, SHA-256, Ed25519 signing, chunked streaming.
//! - `output`: aligned tables, timestamps, JSON views of the proto messages.
//!
//! Exit codes, for scripts: 0 success, 1 runtime failure (including every gRPC error, printed
//! as `error: <CODE>: <message>`), 64 usage error (bad flags or arguments, unreadable input).

// Printing to stdout and stderr is this binary's whole job.
#![expect(clippy::print_stderr)]

mod cli;
mod commands;
mod connect;
mod deploy;
mod output;
mod upload;
mod watch;

use std::error::Error as _;
use std::fmt;
use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::Cli;

/// Exit code for usage errors (`EX_USAGE`).
const EXIT_USAGE: u8 = 64;
/// Exit code for every other failure.
const EXIT_FAILURE: u8 = 1;

/// An error caused by how stk was called rather than by the server or the network.
#[derive(Debug)]
struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Makes a usage error (exit code 64).
fn usage_error(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// Prints `warning: <message>` on stderr.
fn warn(message: &str) {
    eprintln!("warning: {message}");
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are "errors" that print to stdout and succeed.
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // Only aws-lc-rs is compiled in; installing it explicitly avoids any ambiguity.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            if let Some(hint) = hint(&err) {
                eprintln!("hint: {hint}");
            }
            if err.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}

/// `CODE: message` for gRPC errors (plus the transport cause, if any); the context chain otherwise.
fn describe(err: &anyhow::Error) -> String {
    if let Some(status) = err.downcast_ref::<tonic::Status>() {
        let mut text = statiko_common::grpc::code_name(status.code()).to_owned();
        if !status.message().is_empty() {
            text.push_str(": ");
            text.push_str(status.message());
        }
        let mut source = status.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.ends_with(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        return text;
    }
    let mut text = String::new();
    for cause in err.chain() {
        // Transport errors often repeat their cause's message; print each message once.
        let cause_text = cause.to_string();
        if text.is_empty() {
            text = cause_text;
        } else if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
    }
    text
}

/// A next step for errors that users commonly hit.
fn hint(err: &anyhow::Error) -> Option<&'static str> {
    let text = describe(err);
    if text.contains("invalid peer certificate") {
        Some(
            "pass --ca FILE (or STATIKO_CA) to trust the control's certificate, or --insecure to skip verification",
        )
    } else if let Some(status) = err.downcast_ref::<tonic::Status>() {
        (status.code() == tonic::Code::Unauthenticated)
            .then_some("pass a valid token with --token or STATIKO_TOKEN")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors() {
        let err = anyhow::Error::new(tonic::Status::not_found("site example.com not found"));
        assert_eq!(describe(&err), "NOT_FOUND: site example.com not found");
        assert!(hint(&err).is_none());
        let err = anyhow::Error::new(tonic::Status::unauthenticated(""));
        assert_eq!(describe(&err), "UNAUTHENTICATED");
        assert!(hint(&err).is_some());
        let err = usage_error("bad").context("while parsing");
        assert_eq!(describe(&err), "while parsing: bad");
        assert!(err.downcast_ref::<UsageError>().is_some());
    }
}
