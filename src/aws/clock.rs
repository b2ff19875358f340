//! Clock-skew correction and the timestamp formats AWS uses.
//!
//! Devices without an RTC (a Raspberry Pi before NTP sync) can be minutes or years off. SigV4
//! rejects requests whose `x-amz-date` is more than 5 minutes from AWS's clock, and the KVS
//! producers never correct for that (403 "Signature expired"). [`ClockSkew`] learns the offset
//! from the `Date` header of an AWS response and every signer reads its corrected time.
//!
//! Invariants: the offset is `server − local` in milliseconds, shared by all clones; an offset
//! within [`SKEW_DEADBAND_MS`] is stored as 0, because an HTTP date has one-second resolution
//! plus network latency and a correct clock must stay uncorrected.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;

/// Differences smaller than this (ms) are treated as no skew.
pub const SKEW_DEADBAND_MS: i64 = 2_000;

/// Milliseconds to add to the local clock to get AWS's time. Clones share one offset.
#[derive(Debug, Clone, Default)]
pub struct ClockSkew(Arc<AtomicI64>);

/// A `Date` header that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("HTTP Date header {value:?} is not an IMF-fixdate: {reason}")]
pub struct ClockSkewError {
    /// The header value.
    pub value: String,
    /// What the parser said.
    pub reason: String,
}

impl ClockSkew {
    /// A skew of zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The corrected current time.
    pub fn now(&self) -> SystemTime {
        self.apply(SystemTime::now())
    }

    /// `local` shifted by the learned offset.
    pub fn apply(&self, local: SystemTime) -> SystemTime {
        shift(local, self.offset_ms())
    }

    /// The learned offset in milliseconds (positive: the local clock is behind).
    pub fn offset_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets the offset directly (tests, or a value persisted across restarts).
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.0.store(offset_ms, Ordering::Relaxed);
    }

    /// Learns the offset from the server's time and the local time the response arrived at;
    /// returns the stored offset (0 inside the dead band).
    pub fn learn(&self, server: SystemTime, local: SystemTime) -> i64 {
        let diff = signed_millis_between(local, server);
        let offset = if diff.abs() < SKEW_DEADBAND_MS {
            0
        } else {
            diff
        };
        let previous = self.0.swap(offset, Ordering::Relaxed);
        if previous != offset {
            tracing::info!(
                offset_ms = offset,
                previous_ms = previous,
                "clock skew against AWS updated"
            );
        }
        offset
    }

    /// Learns the offset from an HTTP `Date` header value (IMF-fixdate, as AWS sends) received
    /// at local time `local`. Call it with responses from AWS only.
    pub fn learn_from_date(
        &self,
        http_date: &str,
        local: SystemTime,
    ) -> Result<i64, ClockSkewError> {
        let server = parse_http_date(http_date).map_err(|reason| ClockSkewError {
            value: http_date.to_owned(),
            reason,
        })?;
        Ok(self.learn(server, local))
    }
}

/// `to − from` in milliseconds, saturating.
fn signed_millis_between(from: SystemTime, to: SystemTime) -> i64 {
    match to.duration_since(from) {
        Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
        Err(behind) => i64::try_from(behind.duration().as_millis())
            .map(|ms| -ms)
            .unwrap_or(i64::MIN),
    }
}

/// `time` moved by `offset_ms`, saturating at the representable range.
fn shift(time: SystemTime, offset_ms: i64) -> SystemTime {
    let magnitude = Duration::from_millis(offset_ms.unsigned_abs());
    let shifted = if offset_ms >= 0 {
        time.checked_add(magnitude)
    } else {
        time.checked_sub(magnitude)
    };
    shifted.unwrap_or(time)
}

/// Parses an RFC 3339 / ISO 8601 date-time such as `2018-01-18T09:18:06Z` (fractions and
/// offsets accepted).
pub fn parse_rfc3339(value: &str) -> Result<SystemTime, String> {
    let parsed =
        time::OffsetDateTime::parse(value.trim(), &time::format_description::well_known::Rfc3339)
            .map_err(|e| e.to_string())?;
    Ok(SystemTime::from(parsed))
}

/// Parses an HTTP date (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn parse_http_date(value: &str) -> Result<SystemTime, String> {
    let parsed = DateTime::from_str(value.trim(), Format::HttpDate).map_err(|e| e.to_string())?;
    SystemTime::try_from(parsed).map_err(|e| e.to_string())
}

/// Formats a time as RFC 3339 UTC (`2018-01-18T09:18:06Z`), for messages and logs.
pub fn format_rfc3339(time: SystemTime) -> String {
    let date_time = DateTime::from(time);
    date_time
        .fmt(Format::DateTime)
        .unwrap_or_else(|_| format!("{} s since the Unix epoch", date_time.secs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn learns_skew_from_date_header_and_applies_it() {
        let skew = ClockSkew::new();
        // Server says 2015-08-30T12:36:00Z; the device thinks it is 10 minutes earlier.
        let server = 1_440_938_160;
        let local = at(server - 600);
        let offset = skew
            .learn_from_date("Sun, 30 Aug 2015 12:36:00 GMT", local)
            .unwrap();
        assert_eq!(offset, 600_000);
        assert_eq!(skew.offset_ms(), 600_000);
        assert_eq!(skew.apply(local), at(server));
        // Clones share the offset.
        let clone = skew.clone();
        assert_eq!(clone.apply(at(1000)), at(1600));
        // A device ahead of AWS gets a negative offset.
        skew.learn_from_date("Sun, 30 Aug 2015 12:36:00 GMT", at(server + 3600))
            .unwrap();
        assert_eq!(clone.offset_ms(), -3_600_000);
        assert_eq!(clone.apply(at(server + 3600)), at(server));
    }

    #[test]
    fn small_differences_are_no_skew() {
        let skew = ClockSkew::new();
        skew.set_offset_ms(90_000);
        let local = at(1_440_938_160) + Duration::from_millis(800);
        assert_eq!(
            skew.learn_from_date("Sun, 30 Aug 2015 12:36:00 GMT", local)
                .unwrap(),
            0
        );
        assert_eq!(skew.apply(local), local);
    }

    #[test]
    fn bad_date_header_is_an_error_that_quotes_it() {
        let skew = ClockSkew::new();
        skew.set_offset_ms(5_000);
        let err = skew.learn_from_date("yesterday", at(0)).unwrap_err();
        assert!(err.to_string().contains("\"yesterday\""), "{err}");
        assert_eq!(
            skew.offset_ms(),
            5_000,
            "a bad header leaves the offset alone"
        );
    }

    #[test]
    fn rfc3339_round_trip_and_offsets() {
        let t = parse_rfc3339("2015-08-30T12:36:00Z").unwrap();
        assert_eq!(t, at(1_440_938_160));
        assert_eq!(format_rfc3339(t), "2015-08-30T12:36:00Z");
        assert_eq!(
            parse_rfc3339("2015-08-30T14:36:00+02:00").unwrap(),
            at(1_440_938_160)
        );
        assert!(parse_rfc3339("2015-08-30 12:36").is_err());
        assert!(parse_rfc3339("").is_err());
    }
}
