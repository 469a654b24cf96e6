//! Retry back-off: exponential from a minimum to a cap, with random jitter, reset after a success.

use std::time::Duration;

/// Exponential back-off. The n-th delay since the last [`reset`](Self::reset) is
/// `min * 2^(n-1)`, at most `max`, plus a random jitter of up to `jitter` so that many nodes
/// retrying the same failure do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: Duration,
    /// Delays handed out since the last reset.
    attempts: u32,
}

impl Backoff {
    /// A back-off doubling from `min` up to `max`, without jitter.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            jitter: Duration::ZERO,
            attempts: 0,
        }
    }

    /// Adds a uniformly random jitter of up to `jitter` to every delay.
    #[must_use]
    pub const fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay before retry `attempt` (1 for the first), without jitter: `min * 2^(attempt-1)`,
    /// at most `max`. For callers that keep the attempt count elsewhere (in a stored record).
    pub fn base(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(31);
        self.min.saturating_mul(1 << shift).min(self.max)
    }

    /// The delay to wait before the next retry; each call doubles the base delay.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        self.base(self.attempts) + self.random_jitter()
    }

    /// Starts again from `min`: call it after a success.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    fn random_jitter(&self) -> Duration {
        if self.jitter.is_zero() {
            return Duration::ZERO;
        }
        let max = u64::try_from(self.jitter.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rand::random_range(0..=max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut backoff = Backoff::new(MIN, MAX);
        let delays: Vec<Duration> = (0..7).map(|_| backoff.next_delay()).collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff.base(1), MIN);
        assert_eq!(backoff.base(0), MIN);
        assert_eq!(backoff.base(u32::MAX), MAX);
    }

    #[test]
    fn a_success_starts_again_from_the_minimum() {
        let mut backoff = Backoff::new(MIN, MAX);
        for _ in 0..10 {
            backoff.next_delay();
        }
        assert_eq!(backoff.next_delay(), MAX);
        backoff.reset();
        assert_eq!(backoff.next_delay(), MIN);
        assert_eq!(backoff.next_delay(), MIN * 2);
    }

    #[test]
    fn jitter_is_random_and_bounded() {
        let jitter = Duration::from_millis(200);
        let mut delays = Vec::new();
        for _ in 0..50 {
            let mut backoff = Backoff::new(MIN, MAX).with_jitter(jitter);
            let delay = backoff.next_delay();
            assert!(delay >= MIN && delay <= MIN + jitter, "{delay:?}");
            delays.push(delay);
        }
        delays.sort();
        delays.dedup();
        // 50 draws from 200,001 values: a repeat of one value throughout means no randomness.
        assert!(delays.len() > 40, "{delays:?}");
    }
}
