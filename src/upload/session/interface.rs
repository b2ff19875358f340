//! What goes into and out of the [`Session`](super::Session): events, actions, reports.

use std::fmt;
use std::time::{Duration, Instant};

use crate::upload::ack::{AckError, AckErrorCode, AckEvent};
use crate::upload::control::{ControlRequest, ControlResponse, Operation};
use crate::upload::errors::{Failure, FailureClass};

/// Identifies one PutMedia connection; events about an older connection are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Where a new connection's body starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// At the oldest fragment that is neither acknowledged nor skipped, with a fresh stream
    /// header, then every later such fragment in timecode order.
    FirstUnacknowledged {
        /// The oldest unfinished fragment the session saw on the previous connection, if any: a
        /// cross-check for the driver (its buffer may hold older never-sent fragments).
        hint_timecode_ms: Option<u64>,
    },
}

/// Why the session finishes a connection at a fragment boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReason {
    /// The connection is getting old (or its credentials are): reconnect afterwards.
    Rotation,
    /// The daemon stops: no reconnect.
    Shutdown,
}

/// Why the session closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// A drain finished (or timed out).
    Drained(DrainReason),
    /// The service sent an ERROR ACK (it closes the connection after one).
    ErrorAck(AckErrorCode),
    /// A service error body arrived on the ACK stream.
    ServiceError,
    /// No ACK progress for `staleness_timeout`.
    Stale,
    /// `Connected` did not come within `connect_timeout`.
    ConnectTimeout,
    /// Too many unparsable ACK lines.
    AckStreamGarbled,
    /// Shutdown while connecting.
    Shutdown,
    /// A connection the session had lost track of, closed before a new one opens.
    Superseded,
}

/// The final acknowledgement a fragment reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckDurability {
    /// RECEIVED, on a stream without retention.
    Received,
    /// PERSISTED: durably stored.
    Persisted,
}

/// Inputs to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A control-plane call succeeded.
    ControlResponse(ControlResponse),
    /// A control-plane call failed.
    ControlFailed {
        /// Which call.
        operation: Operation,
        /// Why.
        failure: Failure,
    },
    /// The PutMedia request was accepted (HTTP 200 headers received).
    Connected {
        /// The connection.
        conn: ConnectionId,
    },
    /// The PutMedia request failed before it was accepted.
    ConnectFailed {
        /// The connection.
        conn: ConnectionId,
        /// Why.
        failure: Failure,
    },
    /// An ACK arrived.
    Ack {
        /// The connection.
        conn: ConnectionId,
        /// The ACK.
        ack: AckEvent,
    },
    /// An ACK line could not be parsed (the parser has resynchronised).
    AckParseError {
        /// The connection.
        conn: ConnectionId,
        /// What was wrong.
        error: AckError,
    },
    /// The connection ended without the session asking: `None` for a clean end of the response,
    /// `Some` for a failure.
    ConnectionClosed {
        /// The connection.
        conn: ConnectionId,
        /// Why, if it was not a clean end.
        failure: Option<Failure>,
    },
    /// The driver wrote the first byte of a fragment on the connection. `timecode_ms` is the
    /// cluster timecode as written, i.e. the value the ACKs will echo.
    FragmentStarted {
        /// The connection.
        conn: ConnectionId,
        /// The fragment.
        timecode_ms: u64,
    },
    /// The driver wrote the last byte of that fragment: a fragment boundary on the wire.
    FragmentClosed {
        /// The connection.
        conn: ConnectionId,
        /// The fragment.
        timecode_ms: u64,
    },
    /// The driver has fragment data not yet sent (wakes the session from `Idle`).
    DataAvailable,
    /// The driver's credentials changed; `expires_at` is when the new ones expire.
    CredentialsUpdated {
        /// Expiry of the credentials now in use (`None`: they do not expire).
        expires_at: Option<Instant>,
    },
    /// The credential source says the current credentials are about to expire.
    CredentialsExpiring,
    /// A `RefreshCredentials` failed.
    CredentialsRefreshFailed {
        /// Why.
        detail: String,
    },
    /// `poll_timeout`'s instant has passed.
    Timeout,
    /// Stop: drain the connection at a fragment boundary, then stop.
    Shutdown,
}

/// What the session reports for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The state changed.
    StateChanged {
        /// Before.
        from: StateKind,
        /// After.
        to: StateKind,
    },
    /// A retry is scheduled.
    BackoffScheduled {
        /// The wait.
        delay: Duration,
        /// Failures counted so far.
        attempt: u32,
        /// What failed.
        reason: String,
    },
    /// A control-plane call failed.
    CallFailed {
        /// Which call.
        operation: Operation,
        /// The classification.
        class: FailureClass,
        /// The failure, for the log.
        detail: String,
    },
    /// A PutMedia connection failed or broke.
    ConnectionFailed {
        /// The connection.
        conn: ConnectionId,
        /// The classification.
        class: FailureClass,
        /// The failure, for the log.
        detail: String,
    },
    /// A PutMedia connection was accepted.
    ConnectionOpened {
        /// The connection.
        conn: ConnectionId,
        /// When the session will rotate it.
        rotate_in: Duration,
    },
    /// An ACK arrived (every kind, for metrics).
    AckReceived {
        /// The connection.
        conn: ConnectionId,
        /// The ACK.
        ack: AckEvent,
        /// Time since the fragment's first byte was sent, when known.
        latency: Option<Duration>,
    },
    /// An ACK for a fragment this connection did not send (or that is already final).
    UnexpectedAck {
        /// The connection.
        conn: ConnectionId,
        /// The timecode named.
        timecode_ms: Option<u64>,
    },
    /// A retryable ERROR ACK: the fragment is sent again.
    FragmentRetry {
        /// The fragment.
        timecode_ms: u64,
        /// The error.
        code: AckErrorCode,
        /// Retries of this fragment so far.
        attempt: u32,
    },
    /// A fragment skipped after too many retryable errors.
    FragmentRetriesExhausted {
        /// The fragment.
        timecode_ms: u64,
        /// The last error.
        code: AckErrorCode,
    },
    /// No ACK progress: the connection is being replaced.
    ConnectionStale {
        /// The connection.
        conn: ConnectionId,
        /// The oldest fragment waiting.
        timecode_ms: u64,
        /// How long it waited.
        waited: Duration,
    },
    /// A drain began.
    DrainStarted {
        /// The connection.
        conn: ConnectionId,
        /// Why.
        reason: DrainReason,
        /// The connection's age.
        age: Duration,
    },
    /// A drain gave up waiting; the fragments still open are resent on the next connection.
    DrainTimedOut {
        /// The connection.
        conn: ConnectionId,
        /// Fragments without their final ACK.
        unacknowledged: usize,
    },
    /// The service closed an idle connection; the session waits for data.
    IdleClose {
        /// The connection.
        conn: ConnectionId,
    },
    /// Something only an operator can fix; the session pauses.
    OperatorAttention {
        /// What to fix.
        reason: String,
        /// How long the session waits before checking again.
        pause: Duration,
    },
    /// TagStream failed; streaming goes on untagged.
    TagStreamFailed {
        /// The failure.
        detail: String,
    },
    /// The existing stream differs from the configured creation settings.
    StreamSettingsMismatch {
        /// The field.
        field: &'static str,
        /// Configured.
        expected: String,
        /// Found.
        actual: String,
    },
    /// An ACK line could not be parsed.
    AckParseFailed {
        /// The connection.
        conn: ConnectionId,
        /// The error.
        error: AckError,
    },
    /// A service error body arrived on the ACK stream.
    ServiceErrorOnAckStream {
        /// The connection.
        conn: ConnectionId,
        /// The error type.
        error_type: Option<String>,
        /// The message.
        message: Option<String>,
    },
    /// A credential refresh failed.
    CredentialRefreshFailed {
        /// Why.
        detail: String,
    },
    /// A response arrived for a call the session did not make (or no longer waits for).
    UnexpectedResponse {
        /// The operation.
        operation: Operation,
    },
}

/// Outputs of the session, in the order the driver must carry them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a control-plane request (DescribeStream, CreateStream, TagStream, GetDataEndpoint)
    /// and report `ControlResponse` / `ControlFailed`.
    Call(ControlRequest),
    /// Open a PutMedia connection to `endpoint` (`POST {endpoint}/putMedia`), its body starting
    /// as `start_from` says; report `Connected` / `ConnectFailed`.
    Connect {
        /// The new connection's identity.
        conn: ConnectionId,
        /// The data endpoint.
        endpoint: String,
        /// Where the body starts.
        start_from: StartFrom,
    },
    /// Finish the fragment in progress on this connection (or none, if between fragments), then
    /// send nothing more on it; keep reading ACKs. The session disconnects once the final ACKs
    /// are in, then (for a rotation) connects again, resuming at the first unacknowledged
    /// fragment: nothing is lost and nothing overlaps.
    FinishAfterFragment {
        /// The connection.
        conn: ConnectionId,
        /// Why.
        reason: DrainReason,
    },
    /// Close this connection now.
    Disconnect {
        /// The connection.
        conn: ConnectionId,
        /// Why.
        reason: DisconnectReason,
    },
    /// Fetch fresh credentials; report `CredentialsUpdated` or `CredentialsRefreshFailed`.
    RefreshCredentials,
    /// The service refused the signature's date: learn the clock offset from this `Date`
    /// header value and apply it to every later signature.
    LearnClockSkew {
        /// The service's `Date` header, as sent.
        server_date: String,
    },
    /// The fragment reached its final acknowledgement: the buffer may release it.
    AckFragment {
        /// The fragment.
        timecode_ms: u64,
        /// Which acknowledgement.
        kind: AckDurability,
    },
    /// The service rejected the fragment for good: drop it from the buffer and count it.
    SkipFragment {
        /// The fragment.
        timecode_ms: u64,
        /// The reason.
        code: AckErrorCode,
    },
    /// A log line / metric.
    Report(SessionEvent),
}

/// The session's states, for logs, metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// DescribeStream in flight.
    Describe,
    /// CreateStream in flight.
    Create,
    /// TagStream in flight.
    Tag,
    /// GetDataEndpoint in flight.
    GetEndpoint,
    /// PutMedia requested, not yet accepted.
    Connecting,
    /// PutMedia open.
    Streaming,
    /// Finishing a connection at a fragment boundary.
    Draining,
    /// Ready, nothing to send, no connection.
    Idle,
    /// Waiting before a retry.
    Backoff,
    /// Waiting for an operator fix.
    Paused,
    /// Done.
    Stopped,
}
