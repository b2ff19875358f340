//! PutMedia acknowledgement stream: a streaming parser and the ACK error-code table.
//!
//! After a PutMedia request is accepted the service answers HTTP 200 and then writes JSON objects,
//! one per line, on the response body of the same connection:
//! `{"EventType":"PERSISTED","FragmentTimecode":1595833960258,"FragmentNumber":"91343852333…"}`.
//! `ERROR` events also carry `ErrorId` (a number) and `ErrorCode` (its name). Keys this module
//! does not know are ignored; values of the right keys with the wrong type are errors.
//!
//! Parser invariants:
//! - framing is by newline: a line may hold any number of objects (proxies batch them), with any
//!   whitespace between; an object may arrive split across any number of [`AckParser::push`]es;
//! - a line that breaks off inside an object (truncated), holds bytes outside an object (garbled)
//!   or grows beyond [`MAX_ACK_LINE`] yields one error and the parser resynchronises at the next
//!   newline; a bad line never costs the ACKs on the following lines;
//! - after `next()` has returned `None` the parser holds at most `MAX_ACK_LINE` bytes;
//! - nothing panics, whatever the input.

use std::collections::VecDeque;
use std::fmt;

use serde::Deserialize;

/// The longest line (one or several objects) accepted. Real ACK lines are ~150 bytes; a service
/// error body a few hundred.
pub const MAX_ACK_LINE: usize = 64 * 1024;

/// What the service says about one fragment (or about the connection, for `Idle` and
/// `ServiceError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckEvent {
    /// The kind of acknowledgement.
    pub kind: AckKind,
    /// The fragment's cluster timecode as it was written (ms with the default 1 ms timescale).
    /// Present on every kind except `Idle` and `ServiceError`.
    pub fragment_timecode_ms: Option<u64>,
    /// The service's fragment number (a decimal string of up to ~48 digits), when sent.
    pub fragment_number: Option<String>,
}

/// The kinds of acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckKind {
    /// The first byte of the fragment reached the service.
    Buffering,
    /// The whole fragment reached the service (final when the stream keeps no data).
    Received,
    /// The fragment is durably stored (only on streams with retention > 0).
    Persisted,
    /// The service rejected the fragment; it closes the connection after this.
    Error {
        /// What went wrong.
        code: AckErrorCode,
    },
    /// Keep-alive while no data arrives; the service closes an idle request after ~30 s.
    Idle,
    /// Not an ACK: a service error body (`{"__type": …, "message": …}`) on the ACK stream, for
    /// example "The security token included in the request is expired".
    ServiceError {
        /// The error type (`__type`, `code`), if given.
        error_type: Option<String>,
        /// The human-readable message (`message` / `Message`), if given.
        message: Option<String>,
    },
}

/// What the uploader does about an `ERROR` acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckErrorClass {
    /// A transient fault: reconnect (with backoff) and send the same fragment again.
    RetryFragment,
    /// The fragment's content is rejected and identical bytes would be rejected again: drop it
    /// (counted and reported), reconnect and carry on with the next fragment.
    SkipFragment,
    /// The connection has reached a service limit; the fragment is fine: reconnect at once and
    /// send it again.
    Reconnect,
    /// Nothing the uploader can fix (KMS key, deleted stream): keep the fragment, pause with a
    /// long backoff and a clear log line, then check the stream again.
    OperatorFix,
}

/// PutMedia ACK error codes (`ErrorId`, with the `ErrorCode` name the service sends beside it).
///
/// | id | name | meaning | class | why |
/// |---|---|---|---|---|
/// | 4000 | STREAM_READ_ERROR | the service failed reading the request body | RetryFragment | transient; AWS's SDK retries too |
/// | 4001 | MAX_FRAGMENT_SIZE_REACHED | fragment larger than 50 MB | SkipFragment | the same bytes fail again |
/// | 4002 | MAX_FRAGMENT_DURATION_REACHED | fragment longer than the limit (10–20 s) | SkipFragment | same bytes fail again |
/// | 4003 | MAX_CONNECTION_DURATION_REACHED | connection older than 45 min | Reconnect | fragment fine, connection over |
/// | 4004 | FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS | timecode not after the previous fragment's in this PutMedia | SkipFragment | a fresh connection starts at the first unacked fragment, so this is the fragment's own timecodes |
/// | 4005 | MORE_THAN_ONE_TRACK_FOUND | legacy single-track rejection | SkipFragment | content |
/// | 4006 | INVALID_MKV_DATA | MKV parse failure, disallowed elements, >1 segment | SkipFragment | content; every connection starts with a fresh header at a fragment boundary |
/// | 4007 | INVALID_PRODUCER_TIMESTAMP | producer timestamp out of range | SkipFragment | content |
/// | 4008 | STREAM_NOT_ACTIVE | the stream is not active (deleted / being deleted) | OperatorFix | keep the data, re-check the stream |
/// | 4009 | FRAGMENT_METADATA_LIMIT_REACHED | more than 10 tags, or a name/value too long | SkipFragment | content |
/// | 4010 | TRACK_NUMBER_MISMATCH | a block's track is not in the header | SkipFragment | content |
/// | 4011 | FRAMES_MISSING_FOR_TRACK | a declared track has no frame in the fragment | SkipFragment | content |
/// | 4012 | MORE_THAN_ALLOWED_TRACKS_FOUND | more than 3 tracks | SkipFragment | content |
/// | 4500 | KMS_KEY_ACCESS_DENIED | no permission on the stream's KMS key | OperatorFix | key policy |
/// | 4501 | KMS_KEY_DISABLED | the KMS key is disabled | OperatorFix | key state |
/// | 4502 | KMS_KEY_VALIDATION_ERROR | KMS validation error | OperatorFix | key configuration |
/// | 4503 | KMS_KEY_UNAVAILABLE | KMS key unavailable | RetryFragment | KMS availability; transient |
/// | 4504 | KMS_KEY_INVALID_USAGE | the key is not usable for this | OperatorFix | key configuration |
/// | 4505 | KMS_KEY_INVALID_STATE | the key is in an invalid state (e.g. pending deletion) | OperatorFix | key state |
/// | 4506 | KMS_KEY_NOT_FOUND | the key does not exist | OperatorFix | key configuration |
/// | 4507 | STREAM_DELETED | the stream was deleted | OperatorFix | keep the data, re-check (re-create if allowed) |
/// | 5000 | INTERNAL_ERROR | service internal error | RetryFragment | transient |
/// | 5001 | ARCHIVAL_ERROR | the service failed to persist the fragment | RetryFragment | transient |
/// | other | — | a code this build does not know | RetryFragment | never drop data on a guess |
///
/// AWS's SDK skips the fragment on every KMS error and on 4008/4507; with a durable buffer we keep
/// it: once the operator fixes the key or the stream, it still uploads. A fragment that keeps
/// drawing `RetryFragment` errors that may come from its own bytes (4000, unknown codes) is skipped
/// by the session after a configured number of tries (see `SessionConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckErrorCode {
    /// 4000
    StreamReadError,
    /// 4001
    MaxFragmentSizeReached,
    /// 4002
    MaxFragmentDurationReached,
    /// 4003
    MaxConnectionDurationReached,
    /// 4004
    FragmentTimecodeLesserThanPrevious,
    /// 4005
    MoreThanOneTrackFound,
    /// 4006
    InvalidMkvData,
    /// 4007
    InvalidProducerTimestamp,
    /// 4008
    StreamNotActive,
    /// 4009
    FragmentMetadataLimitReached,
    /// 4010
    TrackNumberMismatch,
    /// 4011
    FramesMissingForTrack,
    /// 4012
    MoreThanAllowedTracksFound,
    /// 4500
    KmsKeyAccessDenied,
    /// 4501
    KmsKeyDisabled,
    /// 4502
    KmsKeyValidationError,
    /// 4503
    KmsKeyUnavailable,
    /// 4504
    KmsKeyInvalidUsage,
    /// 4505
    KmsKeyInvalidState,
    /// 4506
    KmsKeyNotFound,
    /// 4507
    StreamDeleted,
    /// 5000
    InternalError,
    /// 5001
    ArchivalError,
    /// A code this build does not know (the number as sent, 0 when only an unknown name came).
    Unknown(u32),
}

/// (code, id, name, meaning, class): the one table every lookup uses.
#[rustfmt::skip]
const ACK_ERROR_TABLE: &[(AckErrorCode, u32, &str, &str, AckErrorClass)] = {
    use AckErrorClass::*;
    use AckErrorCode::*;
    &[
        (StreamReadError, 4000, "STREAM_READ_ERROR", "the service failed reading the data stream", RetryFragment),
        (MaxFragmentSizeReached, 4001, "MAX_FRAGMENT_SIZE_REACHED", "fragment larger than the 50 MB limit", SkipFragment),
        (MaxFragmentDurationReached, 4002, "MAX_FRAGMENT_DURATION_REACHED", "fragment longer than the duration limit", SkipFragment),
        (MaxConnectionDurationReached, 4003, "MAX_CONNECTION_DURATION_REACHED", "connection older than the 45 min limit", Reconnect),
        (FragmentTimecodeLesserThanPrevious, 4004, "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS", "fragment timecode not after the previous fragment's", SkipFragment),
        (MoreThanOneTrackFound, 4005, "MORE_THAN_ONE_TRACK_FOUND", "more than one track (legacy limit)", SkipFragment),
        (InvalidMkvData, 4006, "INVALID_MKV_DATA", "the service could not parse the MKV data", SkipFragment),
        (InvalidProducerTimestamp, 4007, "INVALID_PRODUCER_TIMESTAMP", "producer timestamp out of range", SkipFragment),
        (StreamNotActive, 4008, "STREAM_NOT_ACTIVE", "the stream is not active", OperatorFix),
        (FragmentMetadataLimitReached, 4009, "FRAGMENT_METADATA_LIMIT_REACHED", "too many fragment tags, or a tag too long", SkipFragment),
        (TrackNumberMismatch, 4010, "TRACK_NUMBER_MISMATCH", "a block's track number is not in the track header", SkipFragment),
        (FramesMissingForTrack, 4011, "FRAMES_MISSING_FOR_TRACK", "a declared track has no frame in the fragment", SkipFragment),
        (MoreThanAllowedTracksFound, 4012, "MORE_THAN_ALLOWED_TRACKS_FOUND", "more than 3 tracks", SkipFragment),
        (KmsKeyAccessDenied, 4500, "KMS_KEY_ACCESS_DENIED", "access denied to the stream's KMS key", OperatorFix),
        (KmsKeyDisabled, 4501, "KMS_KEY_DISABLED", "the stream's KMS key is disabled", OperatorFix),
        (KmsKeyValidationError, 4502, "KMS_KEY_VALIDATION_ERROR", "KMS validation error on the stream's key", OperatorFix),
        (KmsKeyUnavailable, 4503, "KMS_KEY_UNAVAILABLE", "the stream's KMS key is unavailable", RetryFragment),
        (KmsKeyInvalidUsage, 4504, "KMS_KEY_INVALID_USAGE", "invalid usage of the stream's KMS key", OperatorFix),
        (KmsKeyInvalidState, 4505, "KMS_KEY_INVALID_STATE", "the stream's KMS key is in an invalid state", OperatorFix),
        (KmsKeyNotFound, 4506, "KMS_KEY_NOT_FOUND", "the stream's KMS key was not found", OperatorFix),
        (StreamDeleted, 4507, "STREAM_DELETED", "the stream was deleted", OperatorFix),
        (InternalError, 5000, "INTERNAL_ERROR", "service internal error", RetryFragment),
        (ArchivalError, 5001, "ARCHIVAL_ERROR", "the service failed to persist the fragment", RetryFragment),
    ]
};

impl AckErrorCode {
    /// Every known code, in table order.
    pub fn known() -> impl Iterator<Item = AckErrorCode> {
        ACK_ERROR_TABLE.iter().map(|row| row.0)
    }

    /// The code for an `ErrorId`.
    pub fn from_id(id: u32) -> Self {
        ACK_ERROR_TABLE
            .iter()
            .find(|row| row.1 == id)
            .map_or(AckErrorCode::Unknown(id), |row| row.0)
    }

    /// The code for an `ErrorCode` name, if it is a known one.
    pub fn from_name(name: &str) -> Option<Self> {
        ACK_ERROR_TABLE
            .iter()
            .find(|row| row.2 == name)
            .map(|row| row.0)
    }

    fn row(
        self,
    ) -> Option<&'static (AckErrorCode, u32, &'static str, &'static str, AckErrorClass)> {
        ACK_ERROR_TABLE.iter().find(|row| row.0 == self)
    }

    /// The numeric `ErrorId`.
    pub fn id(self) -> u32 {
        match self {
            AckErrorCode::Unknown(id) => id,
            known => known.row().map_or(0, |row| row.1),
        }
    }

    /// The `ErrorCode` name (`"UNKNOWN"` for unknown codes).
    pub fn name(self) -> &'static str {
        self.row().map_or("UNKNOWN", |row| row.2)
    }

    /// What the code means, in a few words.
    pub fn meaning(self) -> &'static str {
        self.row()
            .map_or("an ACK error code this version does not know", |row| row.3)
    }

    /// What to do about it (see the table on [`AckErrorCode`]).
    pub fn class(self) -> AckErrorClass {
        self.row().map_or(AckErrorClass::RetryFragment, |row| row.4)
    }

    /// The stream itself is gone or inactive: check it again (and re-create it if allowed).
    pub fn stream_gone(self) -> bool {
        matches!(
            self,
            AckErrorCode::StreamNotActive | AckErrorCode::StreamDeleted
        )
    }

    /// A retryable code that the fragment's own bytes might cause, so the session bounds its
    /// retries: a read error or a code nobody knows. Service-side faults (5000, 5001, 4503) retry
    /// for as long as they last.
    pub fn may_be_caused_by_fragment(self) -> bool {
        matches!(
            self,
            AckErrorCode::StreamReadError | AckErrorCode::Unknown(_)
        )
    }
}

impl fmt::Display for AckErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.id(), self.name(), self.meaning())
    }
}

/// A line the parser could not turn into an event. The parser has already resynchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// A byte outside any JSON object.
    #[error(
        "ACK stream byte {offset}: unexpected byte 0x{byte:02x} outside an ACK object; skipped to the next line"
    )]
    Garbled {
        /// Offset in the ACK stream (bytes since the parser was created).
        offset: u64,
        /// The byte found.
        byte: u8,
    },
    /// The line ended (newline) inside an object.
    #[error("ACK stream byte {offset}: line ended inside an ACK object that began at byte {start}")]
    Truncated {
        /// Where the object began.
        start: u64,
        /// Where the line ended.
        offset: u64,
    },
    /// An object grew past the line cap.
    #[error("ACK stream byte {start}: ACK line longer than {max} bytes; skipped to the next line")]
    LineTooLong {
        /// Where the object began.
        start: u64,
        /// The cap.
        max: usize,
    },
    /// The object is not valid JSON, or a known key has the wrong type.
    #[error("ACK stream byte {start}: invalid ACK JSON: {detail}")]
    InvalidJson {
        /// Where the object began.
        start: u64,
        /// serde_json's message (it names the line/column inside the object).
        detail: String,
    },
    /// `EventType` has a value this version does not know.
    #[error("ACK stream byte {start}: unknown EventType {event_type:?}")]
    UnknownEventType {
        /// Where the object began.
        start: u64,
        /// The value sent.
        event_type: String,
    },
    /// A key the event type requires is absent.
    #[error("ACK stream byte {start}: {event_type} ACK without the required key {key}")]
    MissingKey {
        /// Where the object began.
        start: u64,
        /// The event type.
        event_type: &'static str,
        /// The missing key.
        key: &'static str,
    },
    /// A JSON object that is neither an ACK nor a service error body.
    #[error("ACK stream byte {start}: JSON object without EventType, message or __type")]
    NotAnAck {
        /// Where the object began.
        start: u64,
    },
}

/// Wire shape of one object; every key optional so that absence gets a precise error.
#[derive(Deserialize)]
struct RawAck {
    #[serde(rename = "EventType")]
    event_type: Option<String>,
    #[serde(rename = "FragmentTimecode")]
    fragment_timecode: Option<u64>,
    #[serde(rename = "FragmentNumber")]
    fragment_number: Option<StringOrNumber>,
    #[serde(rename = "ErrorId")]
    error_id: Option<u32>,
    #[serde(rename = "ErrorCode")]
    error_code: Option<String>,
    #[serde(rename = "__type")]
    error_type: Option<String>,
    #[serde(rename = "code")]
    code: Option<String>,
    #[serde(rename = "message", alias = "Message")]
    message: Option<String>,
}

/// `FragmentNumber` is documented as a string; accept a bare number too.
#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrNumber {
    Str(String),
    Num(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Between objects.
    Between,
    /// Inside an object: nesting depth, inside a string, after a backslash.
    Object {
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
    /// Dropping bytes until the next newline.
    Discard,
}

/// Streaming ACK parser: `push` bytes as they arrive, then call `next` until it returns `None`.
#[derive(Debug)]
pub struct AckParser {
    /// Unconsumed input; `buf[..pos]` has been scanned.
    buf: VecDeque<u8>,
    /// Scan position inside `buf` (relative to its front).
    pos: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Where the current object began, relative to the front (it is always 0 while scanning one:
    /// bytes before an object are consumed as they are scanned).
    scan: Scan,
    max_line: usize,
}

impl Default for AckParser {
    fn default() -> Self {
        Self::new()
    }
}

impl AckParser {
    /// A parser with the default line cap ([`MAX_ACK_LINE`]).
    pub fn new() -> Self {
        Self::with_max_line(MAX_ACK_LINE)
    }

    /// A parser with another line cap (at least 2 bytes: `{}`).
    pub fn with_max_line(max_line: usize) -> Self {
        Self {
            buf: VecDeque::new(),
            pos: 0,
            base: 0,
            scan: Scan::Between,
            max_line: max_line.max(2),
        }
    }

    /// Bytes held (input not yet turned into events).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Append bytes read from the ACK stream. Call [`AckParser::next`] until `None` afterwards:
    /// the bound on held memory applies once the parser has been drained.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.scan == Scan::Discard {
            // Drop what precedes the next newline right away: a garbage flood costs nothing.
            match memchr::memchr(b'\n', bytes) {
                Some(nl) => {
                    self.base += nl as u64 + 1;
                    self.scan = Scan::Between;
                    self.buf.extend(bytes.get(nl + 1..).unwrap_or_default());
                }
                None => self.base += bytes.len() as u64,
            }
            return;
        }
        self.buf.extend(bytes);
    }

    /// Drop the first `n` bytes of the buffer.
    fn consume(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.drain(..n);
        self.base += n as u64;
        self.pos = self.pos.saturating_sub(n);
    }

    /// Enter discard mode: drop up to and including the next newline held, or everything.
    fn discard_line(&mut self) {
        let held = self.buf.len();
        let newline = self.buf.iter().skip(self.pos).position(|&b| b == b'\n');
        match newline {
            Some(rel) => {
                self.consume(self.pos + rel + 1);
                self.scan = Scan::Between;
            }
            None => {
                self.consume(held);
                self.scan = Scan::Discard;
            }
        }
        self.pos = 0;
    }

    /// The next event or error, or `None` when more bytes are needed.
    #[allow(clippy::should_implement_trait)] // fallible streaming pull, not an Iterator
    pub fn next(&mut self) -> Option<Result<AckEvent, AckError>> {
        loop {
            if self.scan == Scan::Discard {
                // Only reached when the discard began in `next` and more bytes were pushed after.
                self.pos = 0;
                self.discard_line();
                if self.scan == Scan::Discard {
                    return None;
                }
                continue;
            }
            let byte = *self.buf.get(self.pos)?;
            match self.scan {
                Scan::Between => match byte {
                    b' ' | b'\t' | b'\r' | b'\n' => {
                        self.consume(1);
                    }
                    b'{' => {
                        self.scan = Scan::Object {
                            depth: 1,
                            in_string: false,
                            escaped: false,
                        };
                        self.pos = 1;
                    }
                    other => {
                        let offset = self.base;
                        self.pos = 0;
                        self.discard_line();
                        return Some(Err(AckError::Garbled {
                            offset,
                            byte: other,
                        }));
                    }
                },
                Scan::Object {
                    depth,
                    in_string,
                    escaped,
                } => {
                    if byte == b'\n' {
                        let start = self.base;
                        let offset = self.base + self.pos as u64;
                        self.consume(self.pos + 1);
                        self.pos = 0;
                        self.scan = Scan::Between;
                        return Some(Err(AckError::Truncated { start, offset }));
                    }
                    let (depth, in_string, escaped) = match (in_string, escaped, byte) {
                        (true, true, _) => (depth, true, false),
                        (true, false, b'\\') => (depth, true, true),
                        (true, false, b'"') => (depth, false, false),
                        (true, false, _) => (depth, true, false),
                        (false, _, b'"') => (depth, true, false),
                        (false, _, b'{' | b'[') => (depth.saturating_add(1), false, false),
                        (false, _, b'}' | b']') => (depth.saturating_sub(1), false, false),
                        (false, _, _) => (depth, false, false),
                    };
                    self.pos += 1;
                    if depth == 0 {
                        let start = self.base;
                        let len = self.pos;
                        let result = self.parse_object(start, len);
                        self.consume(len);
                        self.pos = 0;
                        self.scan = Scan::Between;
                        return Some(result);
                    }
                    if self.pos >= self.max_line {
                        let start = self.base;
                        self.discard_line();
                        return Some(Err(AckError::LineTooLong {
                            start,
                            max: self.max_line,
                        }));
                    }
                    self.scan = Scan::Object {
                        depth,
                        in_string,
                        escaped,
                    };
                }
                Scan::Discard => return None,
            }
        }
    }

    fn parse_object(&mut self, start: u64, len: usize) -> Result<AckEvent, AckError> {
        let bytes = self.buf.make_contiguous();
        let object = bytes.get(..len).unwrap_or_default();
        let raw: RawAck = serde_json::from_slice(object).map_err(|e| AckError::InvalidJson {
            start,
            detail: e.to_string(),
        })?;
        decode(raw, start)
    }
}

fn decode(raw: RawAck, start: u64) -> Result<AckEvent, AckError> {
    let fragment_number = raw.fragment_number.map(|n| match n {
        StringOrNumber::Str(s) => s,
        StringOrNumber::Num(n) => n.to_string(),
    });
    let Some(event_type) = raw.event_type else {
        let error_type = raw.error_type.or(raw.code);
        if error_type.is_none() && raw.message.is_none() {
            return Err(AckError::NotAnAck { start });
        }
        return Ok(AckEvent {
            kind: AckKind::ServiceError {
                error_type,
                message: raw.message,
            },
            fragment_timecode_ms: None,
            fragment_number,
        });
    };
    let (kind, name) = match event_type.as_str() {
        "BUFFERING" => (AckKind::Buffering, "BUFFERING"),
        "RECEIVED" => (AckKind::Received, "RECEIVED"),
        "PERSISTED" => (AckKind::Persisted, "PERSISTED"),
        "IDLE" => (AckKind::Idle, "IDLE"),
        "ERROR" => {
            let code = match (raw.error_id, raw.error_code.as_deref()) {
                (Some(id), _) => AckErrorCode::from_id(id),
                (None, Some(name)) => {
                    AckErrorCode::from_name(name).unwrap_or(AckErrorCode::Unknown(0))
                }
                (None, None) => {
                    return Err(AckError::MissingKey {
                        start,
                        event_type: "ERROR",
                        key: "ErrorId",
                    });
                }
            };
            (AckKind::Error { code }, "ERROR")
        }
        _ => {
            return Err(AckError::UnknownEventType { start, event_type });
        }
    };
    if kind != AckKind::Idle && raw.fragment_timecode.is_none() {
        return Err(AckError::MissingKey {
            start,
            event_type: name,
            key: "FragmentTimecode",
        });
    }
    Ok(AckEvent {
        kind,
        fragment_timecode_ms: raw.fragment_timecode,
        fragment_number,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(parser: &mut AckParser) -> Vec<Result<AckEvent, AckError>> {
        std::iter::from_fn(|| parser.next()).collect()
    }

    fn parse_all(input: &[u8]) -> Vec<Result<AckEvent, AckError>> {
        let mut parser = AckParser::new();
        parser.push(input);
        drain(&mut parser)
    }

    fn ack(kind: AckKind, tc: u64, number: &str) -> AckEvent {
        AckEvent {
            kind,
            fragment_timecode_ms: Some(tc),
            fragment_number: Some(number.to_owned()),
        }
    }

    const STREAM: &str = concat!(
        r#"{"EventType":"BUFFERING","FragmentTimecode":1595833960258,"FragmentNumber":"91343852333181432392682062607743920146264889893"}"#,
        "\n",
        r#"{"EventType":"RECEIVED","FragmentTimecode":1595833960258,"FragmentNumber":"91343852333181432392682062607743920146264889893"}"#,
        "\n",
        r#"{"EventType":"PERSISTED","FragmentTimecode":1595833960258,"FragmentNumber":"91343852333181432392682062607743920146264889893"}"#,
        "\n",
        r#"{"EventType":"IDLE"}"#,
        "\n",
        r#"{"EventType":"ERROR","FragmentTimecode":1595833962258,"FragmentNumber":"1","ErrorId":4006,"ErrorCode":"INVALID_MKV_DATA"}"#,
        "\n",
    );

    #[test]
    fn parses_every_event_type() {
        let n = "91343852333181432392682062607743920146264889893";
        let events = parse_all(STREAM.as_bytes());
        assert_eq!(
            events,
            vec![
                Ok(ack(AckKind::Buffering, 1595833960258, n)),
                Ok(ack(AckKind::Received, 1595833960258, n)),
                Ok(ack(AckKind::Persisted, 1595833960258, n)),
                Ok(AckEvent {
                    kind: AckKind::Idle,
                    fragment_timecode_ms: None,
                    fragment_number: None
                }),
                Ok(ack(
                    AckKind::Error {
                        code: AckErrorCode::InvalidMkvData
                    },
                    1595833962258,
                    "1"
                )),
            ]
        );
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let mut parser = AckParser::new();
        let mut events = Vec::new();
        for b in STREAM.as_bytes() {
            parser.push(std::slice::from_ref(b));
            events.extend(drain(&mut parser));
        }
        assert_eq!(events, parse_all(STREAM.as_bytes()));
    }

    #[test]
    fn several_objects_on_one_line_and_whitespace_between() {
        let input = b"  {\"EventType\":\"BUFFERING\",\"FragmentTimecode\":1}{\"EventType\":\"RECEIVED\",\"FragmentTimecode\":1} \r\n\n\t{\"EventType\":\"PERSISTED\",\"FragmentTimecode\":1}\r\n";
        let kinds: Vec<_> = parse_all(input)
            .into_iter()
            .map(|r| r.map(|e| e.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                Ok(AckKind::Buffering),
                Ok(AckKind::Received),
                Ok(AckKind::Persisted)
            ]
        );
    }

    #[test]
    fn unknown_keys_and_nested_values_are_ignored() {
        let input = br#"{"Extra":{"a":[1,{"b":"}"}]},"EventType":"PERSISTED","S":"x\"}{","FragmentTimecode":7}
"#;
        let events = parse_all(input);
        assert_eq!(
            events,
            vec![Ok(AckEvent {
                kind: AckKind::Persisted,
                fragment_timecode_ms: Some(7),
                fragment_number: None
            })]
        );
    }

    #[test]
    fn service_error_body_is_a_distinct_event() {
        let input = br#"{"message":"The security token included in the request is expired","__type":"ExpiredTokenException"}
"#;
        assert_eq!(
            parse_all(input),
            vec![Ok(AckEvent {
                kind: AckKind::ServiceError {
                    error_type: Some("ExpiredTokenException".into()),
                    message: Some("The security token included in the request is expired".into())
                },
                fragment_timecode_ms: None,
                fragment_number: None
            })]
        );
        let only_message = br#"{"Message":"boom"}"#;
        assert!(matches!(
            parse_all(only_message).as_slice(),
            [Ok(AckEvent {
                kind: AckKind::ServiceError {
                    error_type: None,
                    message: Some(_)
                },
                ..
            })]
        ));
    }

    #[test]
    fn truncated_line_then_recovery() {
        let input = b"{\"EventType\":\"BUFFERING\",\"FragmentTim\n{\"EventType\":\"RECEIVED\",\"FragmentTimecode\":5}\n";
        let events = parse_all(input);
        assert_eq!(events.len(), 2);
        assert!(matches!(
            events[0],
            Err(AckError::Truncated {
                start: 0,
                offset: 37
            })
        ));
        assert_eq!(
            events[1].as_ref().map(|e| e.fragment_timecode_ms),
            Ok(Some(5))
        );
    }

    #[test]
    fn garbage_outside_objects_skips_to_next_line() {
        let input = b"HTTP/1.1 garbage {\"EventType\":\"IDLE\"}\n{\"EventType\":\"IDLE\"}\n";
        let events = parse_all(input);
        assert_eq!(
            events[0],
            Err(AckError::Garbled {
                offset: 0,
                byte: b'H'
            })
        );
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1].as_ref().map(|e| e.kind.clone()),
            Ok(AckKind::Idle)
        );
    }

    #[test]
    fn huge_line_is_capped_and_memory_bounded() {
        let mut parser = AckParser::with_max_line(1024);
        parser.push(b"{\"EventType\":\"");
        let chunk = vec![b'a'; 4096];
        let mut errors = 0;
        for _ in 0..100 {
            parser.push(&chunk);
            for r in drain(&mut parser) {
                assert!(matches!(
                    r,
                    Err(AckError::LineTooLong {
                        start: 0,
                        max: 1024
                    })
                ));
                errors += 1;
            }
            assert!(parser.buffered() <= 1024, "held {}", parser.buffered());
        }
        assert_eq!(errors, 1);
        parser.push(b"\"}\n{\"EventType\":\"IDLE\"}\n");
        let events = drain(&mut parser);
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].as_ref().map(|e| e.kind.clone()),
            Ok(AckKind::Idle)
        );
    }

    #[test]
    fn error_ack_by_name_only_and_unknown_ids() {
        let input = br#"{"EventType":"ERROR","FragmentTimecode":3,"ErrorCode":"KMS_KEY_DISABLED"}
{"EventType":"ERROR","FragmentTimecode":4,"ErrorId":4999}
{"EventType":"ERROR","FragmentTimecode":5,"ErrorCode":"SOMETHING_NEW"}
"#;
        let codes: Vec<_> = parse_all(input)
            .into_iter()
            .map(|r| match r {
                Ok(AckEvent {
                    kind: AckKind::Error { code },
                    ..
                }) => code,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            codes,
            vec![
                AckErrorCode::KmsKeyDisabled,
                AckErrorCode::Unknown(4999),
                AckErrorCode::Unknown(0)
            ]
        );
    }

    #[test]
    fn missing_keys_are_named() {
        let events = parse_all(
            b"{\"EventType\":\"PERSISTED\"}\n{\"EventType\":\"ERROR\",\"FragmentTimecode\":1}\n{\"EventType\":\"NEW\"}\n{}\n",
        );
        assert_eq!(
            events,
            vec![
                Err(AckError::MissingKey {
                    start: 0,
                    event_type: "PERSISTED",
                    key: "FragmentTimecode"
                }),
                Err(AckError::MissingKey {
                    start: 26,
                    event_type: "ERROR",
                    key: "ErrorId"
                }),
                Err(AckError::UnknownEventType {
                    start: 69,
                    event_type: "NEW".into()
                }),
                Err(AckError::NotAnAck { start: 89 }),
            ]
        );
    }

    #[test]
    fn wrong_types_are_invalid_json_with_offset() {
        let events = parse_all(b"{\"EventType\":\"PERSISTED\",\"FragmentTimecode\":\"soon\"}\n");
        match &events[..] {
            [Err(AckError::InvalidJson { start: 0, detail })] => {
                assert!(detail.contains("invalid type"), "{detail}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn numeric_fragment_number_is_accepted() {
        let events =
            parse_all(b"{\"EventType\":\"RECEIVED\",\"FragmentTimecode\":1,\"FragmentNumber\":42}");
        assert_eq!(
            events[0].as_ref().map(|e| e.fragment_number.clone()),
            Ok(Some("42".into()))
        );
    }

    #[test]
    fn error_table_is_complete_and_consistent() {
        let ids: Vec<u32> = AckErrorCode::known().map(AckErrorCode::id).collect();
        let expected: Vec<u32> = (4000..=4012)
            .chain(4500..=4507)
            .chain(5000..=5001)
            .collect();
        assert_eq!(ids, expected);
        for code in AckErrorCode::known() {
            assert_eq!(AckErrorCode::from_id(code.id()), code);
            assert_eq!(AckErrorCode::from_name(code.name()), Some(code));
            assert!(!code.meaning().is_empty());
        }
        assert_eq!(
            AckErrorCode::InvalidMkvData.class(),
            AckErrorClass::SkipFragment
        );
        assert_eq!(
            AckErrorCode::FragmentMetadataLimitReached.class(),
            AckErrorClass::SkipFragment
        );
        assert_eq!(
            AckErrorCode::MaxConnectionDurationReached.class(),
            AckErrorClass::Reconnect
        );
        assert_eq!(
            AckErrorCode::InternalError.class(),
            AckErrorClass::RetryFragment
        );
        assert_eq!(
            AckErrorCode::KmsKeyAccessDenied.class(),
            AckErrorClass::OperatorFix
        );
        assert_eq!(
            AckErrorCode::StreamDeleted.class(),
            AckErrorClass::OperatorFix
        );
        assert_eq!(
            AckErrorCode::Unknown(7).class(),
            AckErrorClass::RetryFragment
        );
        assert!(AckErrorCode::StreamDeleted.stream_gone());
        assert_eq!(
            AckErrorCode::InvalidMkvData.to_string(),
            "4006 INVALID_MKV_DATA (the service could not parse the MKV data)"
        );
    }

    fn arb_event_line() -> impl Strategy<Value = String> {
        let kinds = prop_oneof![
            Just("BUFFERING"),
            Just("RECEIVED"),
            Just("PERSISTED"),
            Just("ERROR"),
            Just("IDLE"),
        ];
        (kinds, any::<u64>(), any::<u64>(), 4000u32..5002, "[ \t]{0,2}").prop_map(
            |(kind, tc, number, id, ws)| match kind {
                "IDLE" => format!("{ws}{{\"EventType\":\"IDLE\"}}{ws}\n"),
                "ERROR" => format!(
                    "{{\"EventType\":\"ERROR\",\"FragmentTimecode\":{tc},\"FragmentNumber\":\"{number}\",\"ErrorId\":{id},\"ErrorCode\":\"X\"}}\r\n"
                ),
                k => format!(
                    "{{ \"EventType\" : \"{k}\", \"FragmentTimecode\": {tc}, \"FragmentNumber\":\"{number}\", \"New\":[{{}}] }}{ws}\n"
                ),
            },
        )
    }

    proptest! {
        #[test]
        fn any_split_yields_the_same_events(
            lines in proptest::collection::vec(arb_event_line(), 1..20),
            cuts in proptest::collection::vec(any::<usize>(), 0..30),
        ) {
            let stream = lines.concat();
            let bytes = stream.as_bytes();
            let whole = parse_all(bytes);
            prop_assert_eq!(whole.len(), lines.len());
            prop_assert!(whole.iter().all(Result::is_ok));
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut parser = AckParser::new();
            let mut split = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain(std::iter::once(bytes.len())) {
                parser.push(&bytes[last..p]);
                split.extend(drain(&mut parser));
                last = p;
            }
            prop_assert_eq!(split, whole);
        }

        #[test]
        fn random_bytes_never_panic_and_stay_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
        ) {
            let mut parser = AckParser::with_max_line(256);
            for chunk in &chunks {
                parser.push(chunk);
                let _ = drain(&mut parser);
                prop_assert!(parser.buffered() <= 256);
            }
            // Whatever came before, a fresh line parses.
            parser.push(b"\n{\"EventType\":\"IDLE\"}\n");
            let events = drain(&mut parser);
            prop_assert_eq!(
                events.last().cloned(),
                Some(Ok(AckEvent { kind: AckKind::Idle, fragment_timecode_ms: None, fragment_number: None }))
            );
        }

        #[test]
        fn random_json_like_bytes_never_panic(
            // Mostly JSON punctuation (so that objects open, nest and break), some raw bytes.
            input in proptest::collection::vec(any::<u8>(), 0..500).prop_map(|raw| {
                const ALPHABET: &[u8] = b"{}[]\"\\\n:,1E x";
                raw.into_iter()
                    .map(|b| if b < 224 { ALPHABET[usize::from(b) % ALPHABET.len()] } else { b })
                    .collect::<Vec<u8>>()
            }),
        ) {
            let mut parser = AckParser::with_max_line(128);
            for chunk in input.chunks(7) {
                parser.push(chunk);
                let _ = drain(&mut parser);
                prop_assert!(parser.buffered() <= 128);
            }
        }
    }
}
