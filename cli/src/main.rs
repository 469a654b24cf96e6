//! `stk`: the Statiko command-line client, a thin wrapper over the `statiko.v1` gRPC API.
//!
//! Layout:
//! - `cli`: clap syntax (global flags with `STATIKO_*` variables, subcommands, value parsers).
//! - `connect`: the channel (plaintext or rustls), `--ca`/`--insecure`, the bearer interceptor.
//! - `commands`: one function per command; builds requests and prints results.
//! - `upload`: folder packing, archive detection, SHA-256, Ed25519 signing, chunked streaming.
//! - `output`: aligned tables, timestamps, JSON views of the proto messages.
//!
//! Exit codes, for scripts and CI (see `exit_code`; documented in docs/ci.md): 0 success,
//! 1 any other failure (every gRPC error not listed here, printed as `error: <CODE>: <message>`),
//! 3 `DEADLINE_EXCEEDED` (a waiting deploy not served by every edge in time, or a call timeout),
//! 4 `UNAUTHENTICATED` / `PERMISSION_DENIED` (token missing, wrong, expired, revoked or out of
//! scope), 5 `UNAVAILABLE` (control answered that its store is unreachable: worth a retry),
//! 64 usage error (bad flags or arguments, unreadable input). Failing to connect at all
//! (refused, TLS verification) is 1: the message says `cannot connect to <endpoint>`.

// Printing to stdout and stderr is this binary's whole job.
#![expect(clippy::print_stderr)]

mod cli;
mod commands;
mod connect;
mod deploy;
mod output;
mod preview;
mod token;
mod upload;
mod watch;

use std::error::Error as _;
use std::fmt;
use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::Cli;
use crate::commands::Printer;

/// Exit code for usage errors (`EX_USAGE`).
const EXIT_USAGE: u8 = 64;
/// Exit code for every other failure.
const EXIT_FAILURE: u8 = 1;
/// A deadline passed: a waiting deploy that edges did not all serve in time, or a call timeout.
const EXIT_DEADLINE: u8 = 3;
/// The token was refused (missing, wrong, expired, revoked) or lacks the permission or scope.
const EXIT_AUTH: u8 = 4;
/// Control reported `UNAVAILABLE` (its store cannot be reached); retrying later may succeed.
const EXIT_UNAVAILABLE: u8 = 5;

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
            ExitCode::from(exit_code(&err))
        }
    }
}

/// The exit code for a failed command (the table is in the crate docs and docs/ci.md).
fn exit_code(err: &anyhow::Error) -> u8 {
    use tonic::Code;
    if err.downcast_ref::<UsageError>().is_some() {
        return EXIT_USAGE;
    }
    if let Some(status) = err.downcast_ref::<tonic::Status>() {
        return match status.code() {
            Code::DeadlineExceeded => EXIT_DEADLINE,
            Code::Unauthenticated | Code::PermissionDenied => EXIT_AUTH,
            Code::Unavailable => EXIT_UNAVAILABLE,
            _ => EXIT_FAILURE,
        };
    }
    EXIT_FAILURE
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

    #[test]
    fn exit_codes() {
        let code = |status: tonic::Status| exit_code(&anyhow::Error::new(status));
        assert_eq!(
            code(tonic::Status::deadline_exceeded("late")),
            EXIT_DEADLINE
        );
        assert_eq!(code(tonic::Status::permission_denied("scope")), EXIT_AUTH);
        assert_eq!(code(tonic::Status::unauthenticated("expired")), EXIT_AUTH);
        assert_eq!(code(tonic::Status::unavailable("down")), EXIT_UNAVAILABLE);
        assert_eq!(code(tonic::Status::not_found("site")), EXIT_FAILURE);
        assert_eq!(exit_code(&usage_error("bad")), EXIT_USAGE);
        assert_eq!(exit_code(&anyhow::anyhow!("disk full")), EXIT_FAILURE);
    }
}
