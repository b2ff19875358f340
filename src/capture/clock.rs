//! Time bookkeeping for a capture pipeline, without GStreamer: mapping running time to
//! wall-clock time, and the `duration` limit of a recording.
//!
//! Invariants:
//! - One [`WallClockAnchor`] per pipeline, taken once; every track converts through it, so a
//!   given running time maps to the same epoch time on every track (A/V alignment).
//! - The mapping is a pure offset: order and spacing of running times are preserved exactly.
//! - [`DurationLimit`] forwards exactly the frames whose running time lies before
//!   `first_running + duration` and asks for EOS once every track has gone past it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch of `time`; 0 for times before the epoch (a clock that was
/// never set), saturating far in the future.
pub fn epoch_ns(time: SystemTime) -> u64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => u64::try_from(since.as_nanos()).unwrap_or(u64::MAX),
        Err(_) => 0,
    }
}

/// Maps pipeline running time (ns) to nanoseconds since the Unix epoch.
///
/// Taken once, at the first buffer: `wall_ns` is `SystemTime::now()` and `running_ns` the
/// pipeline's running time at that same instant. Later wall-clock steps (NTP) do not move the
/// mapping, so timestamps stay monotonic within a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClockAnchor {
    wall_ns: u64,
    running_ns: u64,
}

impl WallClockAnchor {
    /// `wall_ns` (epoch ns) and `running_ns` (pipeline running time) of the same instant.
    pub fn new(wall_ns: u64, running_ns: u64) -> Self {
        WallClockAnchor {
            wall_ns,
            running_ns,
        }
    }

    /// Epoch ns for `running_ns`: `wall + (running − running_anchor)`, saturating at 0 and
    /// `u64::MAX` instead of wrapping.
    pub fn to_epoch_ns(&self, running_ns: u64) -> u64 {
        if running_ns >= self.running_ns {
            self.wall_ns.saturating_add(running_ns - self.running_ns)
        } else {
            self.wall_ns.saturating_sub(self.running_ns - running_ns)
        }
    }
}

/// What to do with a frame under a [`DurationLimit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitDecision {
    /// Within the duration: deliver it.
    Forward,
    /// Past the duration: drop it. `request_eos` is true exactly once, when the last track
    /// still running went past the end.
    Trim {
        /// Send EOS into the pipeline now.
        request_eos: bool,
    },
}

/// Stops a recording after a fixed amount of media time, per track.
///
/// The end is `first_running + duration`, where `first_running` is the running time of the
/// pipeline's first buffer (any track). A frame whose midpoint is at or after the end is
/// trimmed (the midpoint makes the count immune to timestamp rounding: 2 s at 30 fps is 60
/// frames whether frame 60 is stamped 1.99999998 s or 2.0 s); once every track has produced
/// such a frame, the pipeline should be sent EOS.
#[derive(Debug, Clone)]
pub struct DurationLimit {
    duration_ns: u64,
    end_ns: Option<u64>,
    /// Bit `i` set: track `i` went past the end.
    done: u32,
    all_tracks: u32,
    eos_requested: bool,
}

impl DurationLimit {
    /// A limit for `tracks` tracks (indices `0..tracks`, at most 32).
    pub fn new(duration: Duration, tracks: usize) -> Self {
        let tracks = tracks.min(32) as u32;
        let all_tracks = if tracks == 32 {
            u32::MAX
        } else {
            (1u32 << tracks) - 1
        };
        DurationLimit {
            duration_ns: u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
            end_ns: None,
            done: 0,
            all_tracks,
            eos_requested: false,
        }
    }

    /// The running time (ns) at which the limit ends, once the first frame fixed it.
    pub fn end_ns(&self) -> Option<u64> {
        self.end_ns
    }

    /// Decides about a frame of `track` at `running_ns` lasting `duration_ns` (0 when
    /// unknown). The first call fixes the start.
    pub fn admit(&mut self, track: usize, running_ns: u64, duration_ns: u64) -> LimitDecision {
        let end = *self
            .end_ns
            .get_or_insert_with(|| running_ns.saturating_add(self.duration_ns));
        if running_ns.saturating_add(duration_ns / 2) < end {
            return LimitDecision::Forward;
        }
        if let Some(bit) = u32::try_from(track)
            .ok()
            .and_then(|track| 1u32.checked_shl(track))
        {
            self.done |= bit;
        }
        let request_eos = !self.eos_requested && self.done & self.all_tracks == self.all_tracks;
        self.eos_requested |= request_eos;
        LimitDecision::Trim { request_eos }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn anchor_maps_running_time_by_offset() {
        let anchor = WallClockAnchor::new(1_700_000_000_000_000_000, 5_000_000);
        assert_eq!(anchor.to_epoch_ns(5_000_000), 1_700_000_000_000_000_000);
        assert_eq!(anchor.to_epoch_ns(38_333_333), 1_700_000_000_033_333_333);
        assert_eq!(anchor.to_epoch_ns(0), 1_699_999_999_995_000_000);
    }

    #[test]
    fn anchor_saturates_instead_of_wrapping() {
        assert_eq!(WallClockAnchor::new(10, 100).to_epoch_ns(0), 0);
        assert_eq!(
            WallClockAnchor::new(u64::MAX - 1, 0).to_epoch_ns(10),
            u64::MAX
        );
    }

    #[test]
    fn epoch_ns_of_known_times() {
        assert_eq!(epoch_ns(UNIX_EPOCH), 0);
        assert_eq!(
            epoch_ns(UNIX_EPOCH + Duration::from_millis(1500)),
            1_500_000_000
        );
        assert_eq!(epoch_ns(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn limit_forwards_exactly_the_duration_at_30_fps() {
        // Truncated like GStreamer's uint64_scale: frame 60 lands a hair before 2 s.
        let frame_ns = 1_000_000_000 / 30;
        let mut limit = DurationLimit::new(Duration::from_secs(2), 1);
        let mut forwarded = 0;
        let mut eos_requests = 0;
        for index in 0..75u64 {
            match limit.admit(0, 3_000_000 + index * frame_ns, frame_ns) {
                LimitDecision::Forward => forwarded += 1,
                LimitDecision::Trim { request_eos } => eos_requests += u32::from(request_eos),
            }
        }
        assert_eq!(forwarded, 60);
        assert_eq!(eos_requests, 1);
        assert_eq!(limit.end_ns(), Some(2_003_000_000));
    }

    #[test]
    fn limit_waits_for_every_track_before_eos() {
        let mut limit = DurationLimit::new(Duration::from_secs(1), 2);
        assert_eq!(limit.admit(1, 0, 0), LimitDecision::Forward);
        assert_eq!(limit.admit(0, 10, 0), LimitDecision::Forward);
        assert_eq!(
            limit.admit(0, 1_000_000_000, 0),
            LimitDecision::Trim { request_eos: false }
        );
        assert_eq!(limit.admit(1, 999_999_999, 0), LimitDecision::Forward);
        assert_eq!(
            limit.admit(1, 1_000_000_001, 0),
            LimitDecision::Trim { request_eos: true }
        );
        assert_eq!(
            limit.admit(1, 1_100_000_000, 0),
            LimitDecision::Trim { request_eos: false }
        );
    }

    proptest! {
        #[test]
        fn anchor_preserves_order_and_spacing(
            wall in 1_000_000_000_000u64..4_000_000_000_000_000_000,
            anchor_running in 0u64..1_000_000_000_000,
            a in 0u64..1_000_000_000_000,
            b in 0u64..1_000_000_000_000,
        ) {
            let anchor = WallClockAnchor::new(wall, anchor_running);
            let (lo, hi) = (a.min(b), a.max(b));
            let (epoch_lo, epoch_hi) = (anchor.to_epoch_ns(lo), anchor.to_epoch_ns(hi));
            prop_assert!(epoch_lo <= epoch_hi);
            prop_assert_eq!(epoch_hi - epoch_lo, hi - lo);
        }

        #[test]
        fn limit_requests_eos_at_most_once(
            times in proptest::collection::vec((0usize..3, 0u64..5_000_000_000), 1..200),
        ) {
            let mut limit = DurationLimit::new(Duration::from_secs(1), 3);
            let mut requests = 0;
            for (track, running) in times {
                if let LimitDecision::Trim { request_eos: true } = limit.admit(track, running, 0) {
                    requests += 1;
                }
            }
            prop_assert!(requests <= 1);
        }
    }
}
