//! Full-jitter exponential backoff with an injectable jitter source.
//!
//! Invariants:
//! - a delay is uniform in `[0, min(cap, base · 2^attempt)]`, so it never exceeds `cap`;
//! - the attempt counter resets when no failure happened for `quiet_reset` (a healthy period),
//!   or when [`Backoff::reset`] is called after a success that proves the path works;
//! - nothing here reads a clock: the caller passes `now`.

use std::time::{Duration, Instant};

/// A source of uniformly distributed 64-bit values for jitter.
///
/// Production seeds a [`SplitMix64`] from the OS; tests pass a fixed seed or a closure.
pub trait JitterSource: Send {
    /// The next uniformly distributed value.
    fn next_u64(&mut self) -> u64;

    /// A value uniform in `0..=max` (no modulo bias worth speaking of: a 64×64 → 128-bit multiply).
    fn uniform_inclusive(&mut self, max: u64) -> u64 {
        let span = u128::from(max) + 1;
        ((u128::from(self.next_u64()) * span) >> 64) as u64
    }
}

impl<F: FnMut() -> u64 + Send> JitterSource for F {
    fn next_u64(&mut self) -> u64 {
        self()
    }
}

/// SplitMix64: a tiny, fast, well-distributed generator; plenty for jitter (not for secrets).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator that yields the same sequence for the same seed.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }
}

impl JitterSource for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Backoff parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Ceiling of the first delay (AWS's producer SDK: 100 ms).
    pub base: Duration,
    /// No delay exceeds this (AWS's producer SDK: 10 s).
    pub cap: Duration,
    /// A failure after this long without one starts again from `base` (AWS's SDK: 90 s).
    pub quiet_reset: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            quiet_reset: Duration::from_secs(90),
        }
    }
}

/// Exponential backoff state: how many failures in a row, and when the last one was.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    last_failure: Option<Instant>,
}

impl Backoff {
    /// A fresh backoff: the next delay is at most `config.base`.
    pub fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            attempt: 0,
            last_failure: None,
        }
    }

    /// The parameters in use.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// Failures counted since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The ceiling the next delay is drawn under, without drawing it.
    pub fn ceiling(&self) -> Duration {
        // 2^attempt saturates long before u32 overflow matters: cap the shift.
        let shift = self.attempt.min(31);
        let factor = 1u64 << shift;
        let base_ms = u64::try_from(self.config.base.as_millis()).unwrap_or(u64::MAX);
        let cap_ms = u64::try_from(self.config.cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(base_ms.saturating_mul(factor).min(cap_ms))
    }

    /// Record a failure at `now` and return how long to wait before the next attempt.
    pub fn next_delay(&mut self, now: Instant, jitter: &mut dyn JitterSource) -> Duration {
        if let Some(last) = self.last_failure
            && now.saturating_duration_since(last) >= self.config.quiet_reset
        {
            self.attempt = 0;
        }
        let ceiling = self.ceiling();
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        let delay = Duration::from_millis(jitter.uniform_inclusive(ceiling_ms));
        self.attempt = self.attempt.saturating_add(1);
        self.last_failure = Some(now);
        delay
    }

    /// Forget past failures: the next delay is drawn under `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.last_failure = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_from_base_and_stop_at_cap() {
        let mut backoff = Backoff::new(BackoffConfig::default());
        let mut max_jitter = || u64::MAX;
        let now = Instant::now();
        let delays: Vec<u64> = (0..10)
            .map(|_| backoff.next_delay(now, &mut max_jitter).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
    }

    #[test]
    fn zero_jitter_gives_zero_delay() {
        let mut backoff = Backoff::new(BackoffConfig::default());
        let mut zero = || 0u64;
        assert_eq!(
            backoff.next_delay(Instant::now(), &mut zero),
            Duration::ZERO
        );
    }

    #[test]
    fn quiet_period_resets_attempts() {
        let mut backoff = Backoff::new(BackoffConfig::default());
        let mut max_jitter = || u64::MAX;
        let t0 = Instant::now();
        for _ in 0..6 {
            backoff.next_delay(t0, &mut max_jitter);
        }
        assert_eq!(backoff.attempt(), 6);
        let later = t0 + Duration::from_secs(91);
        assert_eq!(
            backoff.next_delay(later, &mut max_jitter),
            Duration::from_millis(100)
        );
        assert_eq!(backoff.attempt(), 1);
    }

    #[test]
    fn failures_inside_the_quiet_period_keep_growing() {
        let mut backoff = Backoff::new(BackoffConfig::default());
        let mut max_jitter = || u64::MAX;
        let t0 = Instant::now();
        backoff.next_delay(t0, &mut max_jitter);
        let d = backoff.next_delay(t0 + Duration::from_secs(89), &mut max_jitter);
        assert_eq!(d, Duration::from_millis(200));
    }

    #[test]
    fn seeded_delays_stay_within_ceiling_and_are_reproducible() {
        let run = |seed| {
            let mut rng = SplitMix64::new(seed);
            let mut backoff = Backoff::new(BackoffConfig::default());
            let now = Instant::now();
            (0..200)
                .map(|_| {
                    let ceiling = backoff.ceiling();
                    let d = backoff.next_delay(now, &mut rng);
                    assert!(d <= ceiling, "{d:?} > {ceiling:?}");
                    d
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn uniform_inclusive_covers_both_ends() {
        let mut lo = || 0u64;
        let mut hi = || u64::MAX;
        assert_eq!(lo.uniform_inclusive(10), 0);
        assert_eq!(hi.uniform_inclusive(10), 10);
        assert_eq!(hi.uniform_inclusive(0), 0);
        assert_eq!(hi.uniform_inclusive(u64::MAX), u64::MAX);
    }

    #[test]
    fn reset_returns_to_base() {
        let mut backoff = Backoff::new(BackoffConfig::default());
        let mut max_jitter = || u64::MAX;
        let now = Instant::now();
        for _ in 0..5 {
            backoff.next_delay(now, &mut max_jitter);
        }
        backoff.reset();
        assert_eq!(
            backoff.next_delay(now, &mut max_jitter),
            Duration::from_millis(100)
        );
    }
}
