//! Fault injection for the Kinesis Video Streams side of the local endpoint.
//!
//! A [`FaultRequest`] (the JSON body of `POST /_local/kvs/faults`, the `--faults` option, or
//! [`super::KvsHandler::inject`]) arms faults in the shared [`FaultPlan`]; each fires once:
//! - `drop_after_bytes`: the connection carrying the N-th PutMedia body byte from now is cut
//!   right after it (no end of the response, the request body abandoned);
//! - `drop_mid_fragment`: the N-th fragment that starts from now (1 = the next) is cut after its
//!   BUFFERING ACK, before it completes;
//! - `refuse_connections_s`: the listener closes for that long (connections are refused), and
//!   open connections are cut unless `keep_open_connections` is true;
//! - `stall`: after `after_fragments` more fragments complete (0: at once), the PutMedia
//!   connection stops reading its body and stops acknowledging for `seconds`;
//! - `error_ack`: the fragment starting after `after_fragments` more have started gets an ERROR
//!   ACK with `code`, and the connection ends;
//! - `http_error`: the next `count` requests (optionally only the named operations, e.g.
//!   `["putMedia"]`) are answered with `status` and an AWS error body;
//! - `clock_skew_s`: the endpoint's clock (for signatures and the `Date` header) is this far off.
//!
//! Invariants: a fired fault is removed from the plan before it takes effect, so concurrent
//! connections cannot both take it; `clear: true` empties the plan before the rest applies.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// A stall to arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StallRequest {
    /// Fragments to complete first (0: stall at once).
    #[serde(default)]
    pub after_fragments: u32,
    /// How long to stop reading and acknowledging.
    pub seconds: f64,
}

/// An ERROR ACK to arm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorAckRequest {
    /// The `ErrorId` (4000, 4006, 5000, …).
    pub code: u16,
    /// Fragments to let start first (0: the next fragment gets it).
    #[serde(default)]
    pub after_fragments: u32,
}

/// HTTP error answers to arm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpErrorRequest {
    /// Status: 400, 429, 500, 503, …
    pub status: u16,
    /// How many requests get it.
    #[serde(default = "one")]
    pub count: u32,
    /// `x-amzn-ErrorType`; a default per status when absent.
    #[serde(default)]
    pub error_type: Option<String>,
    /// The message; a default when absent.
    #[serde(default)]
    pub message: Option<String>,
    /// Only these operations (`putMedia`, `describeStream`, …); all when absent.
    #[serde(default)]
    pub operations: Option<Vec<String>>,
}

fn one() -> u32 {
    1
}

/// Faults to arm, as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// Empty the plan first.
    #[serde(default)]
    pub clear: bool,
    /// Cut the connection after this many more PutMedia body bytes.
    #[serde(default)]
    pub drop_after_bytes: Option<u64>,
    /// Cut the connection inside the N-th fragment starting from now (1 = the next).
    #[serde(default)]
    pub drop_mid_fragment: Option<u32>,
    /// Refuse connections for this many seconds.
    #[serde(default)]
    pub refuse_connections_s: Option<f64>,
    /// With `refuse_connections_s`: leave open connections alone.
    #[serde(default)]
    pub keep_open_connections: bool,
    /// Stop reading and acknowledging.
    #[serde(default)]
    pub stall: Option<StallRequest>,
    /// Answer a fragment with an ERROR ACK.
    #[serde(default)]
    pub error_ack: Option<ErrorAckRequest>,
    /// Answer requests with an HTTP error.
    #[serde(default)]
    pub http_error: Option<HttpErrorRequest>,
    /// Offset of the endpoint's clock, seconds (negative: behind).
    #[serde(default)]
    pub clock_skew_s: Option<f64>,
}

/// Why a fault request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    /// Not JSON of the expected shape.
    #[error("fault request is not valid: {0}")]
    Parse(String),
    /// A value out of range.
    #[error("fault request field {field}: {problem}")]
    Value {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

impl FaultRequest {
    /// Parses the JSON form.
    pub fn from_json(text: &[u8]) -> Result<Self, FaultError> {
        serde_json::from_slice(text).map_err(|e| FaultError::Parse(e.to_string()))
    }

    /// Checks ranges (durations finite and ≥ 0, statuses 400..=599, codes 1..=9999).
    pub fn validate(&self) -> Result<(), FaultError> {
        let seconds = |field: &'static str, value: f64, allow_negative: bool| {
            if !value.is_finite()
                || (!allow_negative && value < 0.0)
                || value.abs() > 86_400.0 * 366.0
            {
                return Err(FaultError::Value {
                    field,
                    problem: format!("{value} is not a usable number of seconds"),
                });
            }
            Ok(())
        };
        if let Some(s) = self.refuse_connections_s {
            seconds("refuse_connections_s", s, false)?;
        }
        if let Some(stall) = &self.stall {
            seconds("stall.seconds", stall.seconds, false)?;
        }
        if let Some(s) = self.clock_skew_s {
            seconds("clock_skew_s", s, true)?;
        }
        if let Some(error) = &self.error_ack
            && !(1..=9999).contains(&error.code)
        {
            return Err(FaultError::Value {
                field: "error_ack.code",
                problem: format!("{} is not an ACK error id", error.code),
            });
        }
        if let Some(http) = &self.http_error
            && !(400..=599).contains(&http.status)
        {
            return Err(FaultError::Value {
                field: "http_error.status",
                problem: format!("{} is not an error status", http.status),
            });
        }
        if self.drop_mid_fragment == Some(0) {
            return Err(FaultError::Value {
                field: "drop_mid_fragment",
                problem: "fragments are counted from 1 (the next one)".to_owned(),
            });
        }
        Ok(())
    }
}

/// An armed HTTP error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpErrorFault {
    /// Status.
    pub status: u16,
    /// Error type.
    pub error_type: String,
    /// Message.
    pub message: String,
    /// Operations it applies to (empty: all).
    pub operations: Vec<String>,
    /// Requests left.
    pub remaining: u32,
}

/// The default error type for a status.
fn default_error_type(status: u16) -> &'static str {
    match status {
        400 => "ClientLimitExceededException",
        401 | 403 => "NotAuthorizedException",
        404 => "ResourceNotFoundException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalFailure",
    }
}

fn default_message(status: u16) -> &'static str {
    match status {
        400 => {
            "Kinesis Video Streams has throttled the request because you have exceeded the limit of allowed client calls. Try making the call later."
        }
        429 => "Rate exceeded",
        503 => "The service is unavailable. Try again later.",
        _ => "We encountered an internal error. Please try again.",
    }
}

/// Counts of faults that fired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FaultStats {
    /// Connections cut.
    pub connections_dropped: u64,
    /// Stalls started.
    pub stalls: u64,
    /// Injected ERROR ACKs.
    pub error_acks: u64,
    /// Requests answered with an injected HTTP error.
    pub http_errors: u64,
    /// Refusal windows started.
    pub refusals: u64,
}

/// The armed faults, shared by every request.
#[derive(Debug, Default)]
pub struct FaultPlan {
    drop_after_bytes: Option<u64>,
    drop_mid_fragment: Option<u32>,
    stall: Option<(u32, Duration)>,
    error_ack: Option<(u16, u32)>,
    http_errors: VecDeque<HttpErrorFault>,
    clock_skew_ms: i64,
    stats: FaultStats,
}

/// What [`FaultPlan::apply`] leaves to the caller (the listener is not the plan's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refusal {
    /// How long.
    pub duration: Duration,
    /// Cut open connections too.
    pub drop_open: bool,
}

impl FaultPlan {
    /// Arms what `request` asks for; returns a refusal for the listener to carry out.
    pub fn apply(&mut self, request: &FaultRequest) -> Result<Option<Refusal>, FaultError> {
        request.validate()?;
        if request.clear {
            let stats = self.stats;
            *self = FaultPlan {
                stats,
                ..FaultPlan::default()
            };
        }
        if let Some(bytes) = request.drop_after_bytes {
            self.drop_after_bytes = Some(bytes);
        }
        if let Some(n) = request.drop_mid_fragment {
            self.drop_mid_fragment = Some(n);
        }
        if let Some(stall) = &request.stall {
            self.stall = Some((
                stall.after_fragments,
                Duration::from_secs_f64(stall.seconds),
            ));
        }
        if let Some(error) = &request.error_ack {
            self.error_ack = Some((error.code, error.after_fragments));
        }
        if let Some(http) = &request.http_error {
            self.http_errors.push_back(HttpErrorFault {
                status: http.status,
                error_type: http
                    .error_type
                    .clone()
                    .unwrap_or_else(|| default_error_type(http.status).to_owned()),
                message: http
                    .message
                    .clone()
                    .unwrap_or_else(|| default_message(http.status).to_owned()),
                operations: http.operations.clone().unwrap_or_default(),
                remaining: http.count,
            });
        }
        if let Some(skew) = request.clock_skew_s {
            // validate() bounded it to ±1 year, which fits i64 milliseconds.
            self.clock_skew_ms = (skew * 1000.0).round() as i64;
        }
        Ok(request.refuse_connections_s.map(|s| {
            self.stats.refusals += 1;
            Refusal {
                duration: Duration::from_secs_f64(s),
                drop_open: !request.keep_open_connections,
            }
        }))
    }

    /// The endpoint clock's offset, ms.
    pub fn clock_skew_ms(&self) -> i64 {
        self.clock_skew_ms
    }

    /// Counts so far.
    pub fn stats(&self) -> FaultStats {
        self.stats
    }

    /// The HTTP error for a request to `operation`, if one is armed for it.
    pub fn take_http_error(&mut self, operation: &str) -> Option<HttpErrorFault> {
        let index = self.http_errors.iter().position(|fault| {
            fault.operations.is_empty()
                || fault
                    .operations
                    .iter()
                    .any(|o| o.eq_ignore_ascii_case(operation))
        })?;
        let fault = self.http_errors.get_mut(index)?;
        fault.remaining = fault.remaining.saturating_sub(1);
        let answer = fault.clone();
        if fault.remaining == 0 {
            self.http_errors.remove(index);
        }
        self.stats.http_errors += 1;
        Some(answer)
    }

    /// `len` more PutMedia body bytes arrived: `Some(k)` when the connection must be cut after
    /// the first `k` of them.
    pub fn take_body_bytes(&mut self, len: usize) -> Option<usize> {
        let remaining = self.drop_after_bytes?;
        if remaining <= len as u64 {
            self.drop_after_bytes = None;
            self.stats.connections_dropped += 1;
            // remaining ≤ len, a usize.
            return Some(remaining as usize);
        }
        self.drop_after_bytes = Some(remaining - len as u64);
        None
    }

    /// A fragment started: the injected ERROR code, if this fragment gets one.
    pub fn take_error_ack(&mut self) -> Option<u16> {
        let (code, after) = self.error_ack?;
        if after == 0 {
            self.error_ack = None;
            self.stats.error_acks += 1;
            return Some(code);
        }
        self.error_ack = Some((code, after - 1));
        None
    }

    /// A fragment started: true when the connection must be cut inside it.
    pub fn take_drop_mid_fragment(&mut self) -> bool {
        match self.drop_mid_fragment {
            Some(n) if n <= 1 => {
                self.drop_mid_fragment = None;
                self.stats.connections_dropped += 1;
                true
            }
            Some(n) => {
                self.drop_mid_fragment = Some(n - 1);
                false
            }
            None => false,
        }
    }

    /// A stall due now, before any more fragments complete (`after_fragments` 0).
    pub fn take_stall_now(&mut self) -> Option<Duration> {
        match self.stall {
            Some((0, duration)) => {
                self.stall = None;
                self.stats.stalls += 1;
                Some(duration)
            }
            _ => None,
        }
    }

    /// A fragment completed: the stall due after it, if any.
    pub fn take_stall_after_fragment(&mut self) -> Option<Duration> {
        let (after, duration) = self.stall?;
        if after <= 1 {
            self.stall = None;
            self.stats.stalls += 1;
            return Some(duration);
        }
        self.stall = Some((after - 1, duration));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_requests_parse_and_validate() {
        let request = FaultRequest::from_json(
            br#"{"drop_after_bytes": 10, "stall": {"seconds": 1.5}, "http_error": {"status": 503, "count": 2}}"#,
        )
        .unwrap();
        assert_eq!(request.drop_after_bytes, Some(10));
        assert_eq!(request.http_error.as_ref().map(|h| h.count), Some(2));
        assert!(FaultRequest::from_json(br#"{"drop_after_byte": 10}"#).is_err());
        assert!(FaultRequest::from_json(b"not json").is_err());
        let mut plan = FaultPlan::default();
        for bad in [
            r#"{"http_error": {"status": 200}}"#,
            r#"{"stall": {"seconds": -1}}"#,
            r#"{"drop_mid_fragment": 0}"#,
            r#"{"error_ack": {"code": 0}}"#,
        ] {
            let request = FaultRequest::from_json(bad.as_bytes()).unwrap();
            assert!(plan.apply(&request).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_fault_fires_once_at_its_count() {
        let mut plan = FaultPlan::default();
        let request = FaultRequest {
            drop_after_bytes: Some(100),
            drop_mid_fragment: Some(2),
            error_ack: Some(ErrorAckRequest {
                code: 4000,
                after_fragments: 1,
            }),
            stall: Some(StallRequest {
                after_fragments: 2,
                seconds: 3.0,
            }),
            refuse_connections_s: Some(2.0),
            clock_skew_s: Some(-600.0),
            ..FaultRequest::default()
        };
        let refusal = plan.apply(&request).unwrap();
        assert_eq!(
            refusal,
            Some(Refusal {
                duration: Duration::from_secs(2),
                drop_open: true
            })
        );
        assert_eq!(plan.clock_skew_ms(), -600_000);
        assert_eq!(plan.take_body_bytes(60), None);
        assert_eq!(plan.take_body_bytes(60), Some(40));
        assert_eq!(plan.take_body_bytes(60), None);
        assert!(!plan.take_drop_mid_fragment());
        assert!(plan.take_drop_mid_fragment());
        assert!(!plan.take_drop_mid_fragment());
        assert_eq!(plan.take_error_ack(), None);
        assert_eq!(plan.take_error_ack(), Some(4000));
        assert_eq!(plan.take_error_ack(), None);
        assert_eq!(plan.take_stall_now(), None);
        assert_eq!(plan.take_stall_after_fragment(), None);
        assert_eq!(
            plan.take_stall_after_fragment(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(plan.take_stall_after_fragment(), None);
        let stats = plan.stats();
        assert_eq!(
            (
                stats.connections_dropped,
                stats.error_acks,
                stats.stalls,
                stats.refusals
            ),
            (2, 1, 1, 1)
        );
    }

    #[test]
    fn http_errors_count_down_per_operation() {
        let mut plan = FaultPlan::default();
        let request = FaultRequest::from_json(
            br#"{"http_error": {"status": 400, "count": 2, "operations": ["putMedia"]}}"#,
        )
        .unwrap();
        plan.apply(&request).unwrap();
        assert_eq!(plan.take_http_error("describeStream"), None);
        let first = plan.take_http_error("putMedia").unwrap();
        assert_eq!(first.error_type, "ClientLimitExceededException");
        assert!(plan.take_http_error("PUTMEDIA").is_some());
        assert_eq!(plan.take_http_error("putMedia"), None);
        plan.apply(&FaultRequest::from_json(br#"{"http_error": {"status": 429}}"#).unwrap())
            .unwrap();
        plan.apply(&FaultRequest::from_json(br#"{"clear": true}"#).unwrap())
            .unwrap();
        assert_eq!(plan.take_http_error("getDataEndpoint"), None);
        assert_eq!(plan.stats().http_errors, 2);
    }
}
