//! Pacing: per-shard token buckets that also slow down when the service throttles, and jittered
//! exponential backoff.
//!
//! Invariants: buckets never hold more than their capacity nor go below zero tokens; the AIMD
//! factor stays within [`MIN_RATE_FACTOR`, 1]; backoff delays stay within `[0, max]` and grow
//! ×2 per consecutive failure, with "equal jitter" (half fixed, half random) so several devices
//! throttled together do not retry in step. Everything takes the time as an argument.

use super::batch::ShardBudget;
use std::time::{Duration, Instant};

/// Per-shard write limit on records.
pub const SHARD_RECORDS_PER_SECOND: f64 = 1000.0;
/// Per-shard write limit on bytes.
pub const SHARD_BYTES_PER_SECOND: f64 = 1_048_576.0;
/// The AIMD factor never drops below this share of the configured rate.
pub const MIN_RATE_FACTOR: f64 = 0.05;
const RATE_DECREASE: f64 = 0.5;
const RATE_INCREASE: f64 = 0.05;

/// A token bucket: `capacity` tokens, refilled at `rate` per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: f64, rate: f64, now: Instant) -> Self {
        TokenBucket {
            capacity,
            rate,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant, factor: f64) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate * factor).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Tokens available at `now`.
    pub fn available(&mut self, now: Instant, factor: f64) -> f64 {
        self.refill(now, factor);
        self.tokens
    }

    /// Takes `amount` tokens (down to zero at most: a record larger than the bucket still goes
    /// once the bucket is full).
    pub fn take(&mut self, amount: f64, now: Instant, factor: f64) {
        self.refill(now, factor);
        self.tokens = (self.tokens - amount).max(0.0);
    }

    /// How long until `amount` tokens (capped at the capacity) are available.
    pub fn wait_for(&mut self, amount: f64, now: Instant, factor: f64) -> Duration {
        self.refill(now, factor);
        let needed = amount.min(self.capacity) - self.tokens;
        if needed <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(needed / (self.rate * factor).max(f64::MIN_POSITIVE))
    }
}

/// A pseudo-random source for jitter (SplitMix64, seeded from the OS once).
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the OS; falls back to the clock if the OS source fails.
    pub fn from_os() -> Self {
        let mut seed = [0u8; 8];
        if getrandom::fill(&mut seed).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9_7F4A_7C15);
            seed = nanos.to_le_bytes();
        }
        Jitter(u64::from_le_bytes(seed))
    }

    /// A fixed seed, for reproducible tests.
    pub fn seeded(seed: u64) -> Self {
        Jitter(seed)
    }

    /// Uniform in [0, 1).
    pub fn next_unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Jittered exponential backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
    until: Option<Instant>,
}

impl Backoff {
    /// Delays start near `base` and double up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            failures: 0,
            until: None,
        }
    }

    /// Records a failure at `now` and returns the delay chosen.
    pub fn fail(&mut self, now: Instant, jitter: &mut Jitter) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.failures.min(20));
        let ceiling = exp.min(self.max);
        let delay = ceiling.mul_f64(0.5 + 0.5 * jitter.next_unit());
        self.failures = self.failures.saturating_add(1);
        self.until = Some(now + delay);
        delay
    }

    /// Waits at least `delay` from `now` (for a pause that is not a failure streak).
    pub fn hold(&mut self, now: Instant, delay: Duration) {
        let until = now + delay;
        self.until = Some(self.until.map_or(until, |t| t.max(until)));
    }

    /// Counts a failure that needs no wait (its cause was fixed before retrying), so that a
    /// repeat of it backs off.
    pub fn count_without_wait(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    /// Clears the failure streak.
    pub fn succeed(&mut self) {
        self.failures = 0;
        self.until = None;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// When sending may resume (`None`: now).
    pub fn ready_at(&self) -> Option<Instant> {
        self.until
    }

    /// True when waiting is over at `now`.
    pub fn is_ready(&self, now: Instant) -> bool {
        self.until.is_none_or(|until| now >= until)
    }
}

/// Per-shard pacing: record and byte buckets, an AIMD factor cut by throttling, and a backoff.
#[derive(Debug, Clone)]
pub struct ShardLimiter {
    records: TokenBucket,
    bytes: TokenBucket,
    factor: f64,
    backoff: Backoff,
}

/// Settings for [`ShardLimiter`].
#[derive(Debug, Clone, Copy)]
pub struct LimiterConfig {
    /// Records per second per shard at full rate.
    pub records_per_second: f64,
    /// Bytes per second per shard at full rate.
    pub bytes_per_second: f64,
    /// First throttling backoff.
    pub backoff_base: Duration,
    /// Longest throttling backoff.
    pub backoff_max: Duration,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            records_per_second: SHARD_RECORDS_PER_SECOND,
            bytes_per_second: SHARD_BYTES_PER_SECOND,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

impl ShardLimiter {
    /// Buckets start full (one second's worth).
    pub fn new(config: &LimiterConfig, now: Instant) -> Self {
        ShardLimiter {
            records: TokenBucket::new(config.records_per_second, config.records_per_second, now),
            bytes: TokenBucket::new(config.bytes_per_second, config.bytes_per_second, now),
            factor: 1.0,
            backoff: Backoff::new(config.backoff_base, config.backoff_max),
        }
    }

    /// True when `records` Kinesis records of `bytes` billed bytes may go at `now`. A single
    /// record larger than the bucket may go once the bucket is full.
    pub fn allows(&mut self, records: usize, bytes: usize, now: Instant) -> bool {
        self.backoff.is_ready(now)
            && self
                .records
                .wait_for(records as f64, now, self.factor)
                .is_zero()
            && self
                .bytes
                .wait_for(bytes as f64, now, self.factor)
                .is_zero()
    }

    /// What the shard may send at `now`: whole tokens left, and whether both buckets are full.
    pub fn budget(&mut self, now: Instant) -> ShardBudget {
        if !self.backoff.is_ready(now) {
            return ShardBudget {
                records: 0,
                bytes: 0,
                bucket_full: false,
            };
        }
        let records = self.records.available(now, self.factor);
        let bytes = self.bytes.available(now, self.factor);
        ShardBudget {
            records: records.floor() as usize,
            bytes: bytes.floor() as usize,
            bucket_full: records >= self.records.capacity && bytes >= self.bytes.capacity,
        }
    }

    /// When `records`/`bytes` will be allowed.
    pub fn ready_at(&mut self, records: usize, bytes: usize, now: Instant) -> Instant {
        let tokens = self
            .records
            .wait_for(records as f64, now, self.factor)
            .max(self.bytes.wait_for(bytes as f64, now, self.factor));
        let backoff = self.backoff.ready_at().unwrap_or(now);
        (now + tokens).max(backoff)
    }

    /// Charges a sent request's share.
    pub fn take(&mut self, records: usize, bytes: usize, now: Instant) {
        self.records.take(records as f64, now, self.factor);
        self.bytes.take(bytes as f64, now, self.factor);
    }

    /// The service throttled this shard: halve the rate, back off.
    pub fn throttled(&mut self, now: Instant, jitter: &mut Jitter) -> Duration {
        self.factor = (self.factor * RATE_DECREASE).max(MIN_RATE_FACTOR);
        self.backoff.fail(now, jitter)
    }

    /// Records were taken: raise the rate a little, clear the backoff.
    pub fn accepted(&mut self) {
        self.factor = (self.factor + RATE_INCREASE).min(1.0);
        self.backoff.succeed();
    }

    /// The current share of the configured rate.
    pub fn rate_factor(&self) -> f64 {
        self.factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate_and_caps_at_capacity() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1000.0, 1000.0, t0);
        bucket.take(1000.0, t0, 1.0);
        assert_eq!(bucket.available(t0, 1.0), 0.0);
        let half = t0 + Duration::from_millis(500);
        assert!((bucket.available(half, 1.0) - 500.0).abs() < 1e-6);
        assert_eq!(bucket.available(t0 + Duration::from_secs(5), 1.0), 1000.0);
        bucket.take(1000.0, t0 + Duration::from_secs(5), 1.0);
        let wait = bucket.wait_for(100.0, t0 + Duration::from_secs(5), 0.5);
        assert_eq!(wait, Duration::from_millis(200));
    }

    #[test]
    fn throttling_halves_the_rate_and_backs_off() {
        let t0 = Instant::now();
        let mut jitter = Jitter::seeded(1);
        let mut limiter = ShardLimiter::new(&LimiterConfig::default(), t0);
        assert!(limiter.allows(1000, 1 << 20, t0));
        limiter.take(1000, 1 << 20, t0);
        assert!(!limiter.allows(1, 1, t0));
        let delay = limiter.throttled(t0, &mut jitter);
        assert!(delay >= Duration::from_millis(50) && delay <= Duration::from_millis(100));
        assert_eq!(limiter.rate_factor(), 0.5);
        // After one second at half rate, 500 records have refilled, not 1000.
        let t1 = t0 + Duration::from_secs(1);
        assert!(limiter.allows(500, 1, t1));
        assert!(!limiter.allows(501, 1, t1));
        for _ in 0..20 {
            limiter.throttled(t1, &mut jitter);
        }
        assert_eq!(limiter.rate_factor(), MIN_RATE_FACTOR);
        limiter.accepted();
        assert!((limiter.rate_factor() - (MIN_RATE_FACTOR + RATE_INCREASE)).abs() < 1e-9);
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let t0 = Instant::now();
        let mut jitter = Jitter::seeded(7);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut previous_ceiling = Duration::ZERO;
        for n in 0..10u32 {
            let delay = backoff.fail(t0, &mut jitter);
            let ceiling = (Duration::from_millis(100) * 2u32.pow(n)).min(Duration::from_secs(2));
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "attempt {n}: {delay:?}"
            );
            assert!(ceiling >= previous_ceiling);
            previous_ceiling = ceiling;
        }
        assert!(!backoff.is_ready(t0));
        backoff.succeed();
        assert!(backoff.is_ready(t0));
        assert_eq!(backoff.failures(), 0);
    }

    #[test]
    fn jitter_is_uniform_enough() {
        let mut jitter = Jitter::seeded(42);
        let samples: Vec<f64> = (0..10_000).map(|_| jitter.next_unit()).collect();
        assert!(samples.iter().all(|&s| (0.0..1.0).contains(&s)));
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }
}
