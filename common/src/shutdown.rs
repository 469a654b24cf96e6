//! SIGTERM/SIGINT to a [`CancellationToken`]: the first signal cancels the token so every task
//! drains; a second one exits the process at once with code 130.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Exit code for the second signal (128 + SIGINT, as shells report an interrupted command).
pub const FORCED_EXIT_CODE: i32 = 130;

/// Spawns the signal listener and returns the root shutdown token.
///
/// Must be called inside a tokio runtime. The listener task lives as long as the process, so it
/// is deliberately not tracked. If a signal handler cannot be installed the error is logged
/// and the token is only cancelled through the signals that could be installed.
pub fn spawn_signal_handler() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    let mut term = signal(SignalKind::terminate())
        .inspect_err(|err| error!(error = %err, "install SIGTERM handler"))
        .ok();
    let mut int = signal(SignalKind::interrupt())
        .inspect_err(|err| error!(error = %err, "install SIGINT handler"))
        .ok();
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = recv(&mut term) => "SIGTERM",
                Some(()) = recv(&mut int) => "SIGINT",
                else => return,
            };
            if cancel.is_cancelled() {
                warn!(signal = name, "second signal, exiting now");
                std::process::exit(FORCED_EXIT_CODE);
            }
            info!(
                signal = name,
                "shutting down; send the signal again to exit now"
            );
            cancel.cancel();
        }
    });
    token
}

/// Waits for the next signal; `None` when there is no handler or the stream ended.
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn first_sigterm_cancels_the_token() {
        let token = spawn_signal_handler();
        assert!(!token.is_cancelled());
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(10), token.cancelled())
            .await
            .expect("token cancelled after SIGTERM");
    }
}
