//! Polling with a deadline instead of sleeping: [`wait_until`], and [`patience`], which scales
//! every deadline by `STATIKO_TEST_PATIENCE_MS` for slow machines.

use std::fmt::Display;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::time::{Instant, sleep, timeout};

/// The first pause between two probes; it doubles up to [`MAX_POLL_INTERVAL`].
const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The longest pause between two probes.
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Scales a nominal timeout by `STATIKO_TEST_PATIENCE_MS`: milliseconds of patience per
/// nominal second, 1000 by default (so `STATIKO_TEST_PATIENCE_MS=3000` triples every deadline).
pub fn patience(nominal: Duration) -> Duration {
    let per_second = std::env::var("STATIKO_TEST_PATIENCE_MS")
        .ok()
        .and_then(|value| value.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .unwrap_or(1000);
    nominal.mul_f64(per_second as f64 / 1000.0)
}

/// What a probe of [`wait_until`] may return.
///
/// - `bool`: done when `true`.
/// - `Option<T>`: done with `T` when `Some`.
/// - `()`: done (useful as `Result<(), E>`: done when `Ok`).
/// - `Result<P, E>` for any of these `P`: `Err` means "not yet" (the last error is quoted in the
///   timeout message), `Ok(p)` is judged as `p`. So `Result<bool, E>` waits for `Ok(true)` and
///   `Result<Option<T>, E>` for `Ok(Some(t))`; wrap another value as `Ok(Some(value))`.
pub trait Probe {
    /// The value handed back once the condition holds.
    type Output;

    /// `Ok(value)` when the condition holds; `Err(reason)` to poll again.
    fn outcome(self) -> Result<Self::Output, Option<String>>;
}

impl Probe for () {
    type Output = ();

    fn outcome(self) -> Result<(), Option<String>> {
        Ok(())
    }
}

impl Probe for bool {
    type Output = ();

    fn outcome(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Probe for Option<T> {
    type Output = T;

    fn outcome(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<P: Probe, E: Display> Probe for Result<P, E> {
    type Output = P::Output;

    fn outcome(self) -> Result<P::Output, Option<String>> {
        match self {
            Ok(probe) => probe.outcome(),
            Err(error) => Err(Some(format!("{error:#}"))),
        }
    }
}

/// Polls `probe` until it reports success, for at most `patience(timeout)`.
///
/// The probe returns `bool`, `Option<T>`, `()` or a `Result` of one of these (see [`Probe`]);
/// an `Err` means "not yet" and is quoted in the timeout error. A probe that hangs is cut off
/// at the deadline.
///
/// ```no_run
/// # async fn example(etcd: &statiko_tests::Etcd) -> anyhow::Result<()> {
/// use statiko_tests::{secs, wait_until};
/// let mut client = etcd.client().await?;
/// let value = wait_until(secs(10), async || {
///     let response = client.get("key", None).await?;
///     anyhow::Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn wait_until<P: Probe>(
    timeout_after: Duration,
    mut probe: impl AsyncFnMut() -> P,
) -> Result<P::Output> {
    let budget = patience(timeout_after);
    let deadline = Instant::now() + budget;
    let mut interval = FIRST_POLL_INTERVAL;
    let mut attempts = 0_u32;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let last_error = match timeout(remaining.max(MAX_POLL_INTERVAL), probe()).await {
            Ok(result) => match result.outcome() {
                Ok(value) => return Ok(value),
                Err(reason) => reason,
            },
            Err(_elapsed) => Some("the probe itself did not finish before the deadline".into()),
        };
        let now = Instant::now();
        if now >= deadline {
            match last_error {
                Some(error) => bail!(
                    "condition not met within {budget:?} ({attempts} attempts); last error: {error}"
                ),
                None => bail!("condition not met within {budget:?} ({attempts} attempts)"),
            }
        }
        sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(MAX_POLL_INTERVAL);
    }
}
