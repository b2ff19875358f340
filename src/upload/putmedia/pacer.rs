//! Pacing of one stream's PutMedia body to the service's per-stream limits (≤ 5 fragments/s,
//! ≤ 12.5 MB/s), sans-I/O: it takes the time and says until when to wait.
//!
//! The live edge never comes near these limits (a camera makes one fragment every 1–10 s at a
//! few Mbit/s); the pacer matters when a backlog drains after an outage, which would otherwise
//! go out as fast as the link allows and draw throttling errors.
//!
//! Invariants:
//! - two fragment starts are at least `1 s / max_fragments_per_s` apart;
//! - over any interval `T`, at most `max_bytes_per_s · T + burst bytes` leave, where `burst`
//!   is `max_bytes_per_s · burst_window` (a chunk larger than that still goes out whole, and
//!   the chunks after it wait for the time it used up).

use std::time::{Duration, Instant};

/// The limits to pace to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacingLimits {
    /// Fragment starts per second (the service allows 5).
    pub max_fragments_per_s: u32,
    /// Body bytes per second (the service allows 12.5 MB/s).
    pub max_bytes_per_s: u64,
    /// How far ahead of the rate the body may run: bytes may leave in bursts of
    /// `max_bytes_per_s · burst_window`.
    pub burst_window: Duration,
}

impl Default for PacingLimits {
    fn default() -> Self {
        Self {
            max_fragments_per_s: 5,
            max_bytes_per_s: 12_500_000,
            burst_window: Duration::from_millis(100),
        }
    }
}

/// The pacing state of one connection's body.
#[derive(Debug, Clone)]
pub struct Pacer {
    fragment_interval: Duration,
    nanos_per_byte: f64,
    burst_window: Duration,
    /// The earliest time the next fragment may start.
    next_fragment_at: Option<Instant>,
    /// The time at which every byte sent so far would have left at exactly the byte rate.
    byte_clock: Option<Instant>,
}

impl Pacer {
    /// A pacer for `limits`; zero limits are treated as 1 (the slowest pacing, not none).
    pub fn new(limits: PacingLimits) -> Self {
        let per_s = limits.max_fragments_per_s.max(1);
        let bytes_per_s = limits.max_bytes_per_s.max(1);
        Self {
            fragment_interval: Duration::from_secs(1) / per_s,
            nanos_per_byte: 1e9 / bytes_per_s as f64,
            burst_window: limits.burst_window,
            next_fragment_at: None,
            byte_clock: None,
        }
    }

    /// Forget the history (a new connection starts unpaced).
    pub fn reset(&mut self) {
        self.next_fragment_at = None;
        self.byte_clock = None;
    }

    /// When a fragment may start, if not now.
    pub fn fragment_start_at(&self, now: Instant) -> Option<Instant> {
        self.next_fragment_at.filter(|at| *at > now)
    }

    /// A fragment started at `now`.
    pub fn on_fragment_start(&mut self, now: Instant) {
        self.next_fragment_at = Some(now + self.fragment_interval);
    }

    /// When the next chunk may go out, if not now.
    pub fn chunk_at(&self, now: Instant) -> Option<Instant> {
        let clock = self.byte_clock?;
        let allowed_from = clock.checked_sub(self.burst_window).unwrap_or(clock);
        (allowed_from > now).then_some(allowed_from)
    }

    /// `bytes` went out at `now`.
    pub fn on_chunk(&mut self, now: Instant, bytes: usize) {
        let start = self.byte_clock.map_or(now, |clock| clock.max(now));
        let cost = Duration::from_nanos((bytes as f64 * self.nanos_per_byte) as u64);
        self.byte_clock = Some(start + cost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fragments_start_at_most_five_per_second() {
        let mut pacer = Pacer::new(PacingLimits::default());
        let t0 = Instant::now();
        assert_eq!(pacer.fragment_start_at(t0), None);
        pacer.on_fragment_start(t0);
        assert_eq!(
            pacer.fragment_start_at(t0 + Duration::from_millis(50)),
            Some(t0 + Duration::from_millis(200))
        );
        assert_eq!(
            pacer.fragment_start_at(t0 + Duration::from_millis(200)),
            None
        );
    }

    #[test]
    fn a_live_stream_is_never_delayed() {
        // 4 Mbit/s in 30 chunks a second: far below the limit.
        let mut pacer = Pacer::new(PacingLimits::default());
        let t0 = Instant::now();
        for i in 0..300u32 {
            let now = t0 + Duration::from_millis(33) * i;
            assert_eq!(pacer.chunk_at(now), None, "chunk {i}");
            pacer.on_chunk(now, 16_900);
            if i % 60 == 0 {
                assert_eq!(pacer.fragment_start_at(now), None);
                pacer.on_fragment_start(now);
            }
        }
    }

    #[test]
    fn reset_forgets_the_history() {
        let mut pacer = Pacer::new(PacingLimits::default());
        let t0 = Instant::now();
        pacer.on_fragment_start(t0);
        pacer.on_chunk(t0, 50_000_000);
        assert!(pacer.chunk_at(t0).is_some());
        pacer.reset();
        assert_eq!(pacer.chunk_at(t0), None);
        assert_eq!(pacer.fragment_start_at(t0), None);
    }

    proptest! {
        /// Sending each chunk as soon as the pacer allows never exceeds the byte rate plus one
        /// burst plus the largest chunk, over the whole run.
        #[test]
        fn backlog_drain_stays_within_the_byte_rate(
            chunks in proptest::collection::vec(1usize..2_000_000, 1..400),
        ) {
            let limits = PacingLimits::default();
            let mut pacer = Pacer::new(limits);
            let t0 = Instant::now();
            let mut now = t0;
            let mut sent = 0u64;
            for len in &chunks {
                if let Some(at) = pacer.chunk_at(now) {
                    prop_assert!(at > now);
                    now = at;
                }
                pacer.on_chunk(now, *len);
                sent += *len as u64;
                let elapsed = now.duration_since(t0).as_secs_f64();
                let largest = *chunks.iter().max().unwrap_or(&0) as f64;
                let bound = limits.max_bytes_per_s as f64 * (elapsed + limits.burst_window.as_secs_f64())
                    + largest + 1.0;
                prop_assert!((sent as f64) <= bound, "sent {sent} in {elapsed} s (bound {bound})");
            }
        }
    }
}
