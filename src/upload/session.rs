//! The upload session: a sans-I/O state machine for one KVS stream.
//!
//! The driver feeds [`Event`]s with the current time through [`Session::handle`], executes what
//! [`Session::poll_action`] returns until it returns `None`, and calls `handle(Event::Timeout, now)`
//! once [`Session::poll_timeout`]'s instant has passed (quinn-proto's shape). The session never
//! reads a clock, never touches bytes and never sleeps.
//!
//! ```text
//!  Describe ─ACTIVE─► [Tag] ─► GetEndpoint ─► Connecting ─► Streaming ─rotation/shutdown─► Draining
//!     │ 404 + create allowed        ▲  endpoint ≤ 40 min old ▲      │ idle close            │
//!     ▼                             └──────────────────── Idle ◄────┘                       ▼
//!   Create ─► Describe         any failure ─► Backoff{until, then} / Paused{until} ─► …    Stopped
//! ```
//!
//! Invariants:
//! - at most one PutMedia connection is open: `Connect` is only emitted when the previous
//!   connection was closed by a `Disconnect` action or reported gone by the driver;
//! - every fragment the driver reports with `FragmentStarted` ends with exactly one
//!   `AckFragment` (PERSISTED, or RECEIVED on a stream without retention) or `SkipFragment`, on
//!   some connection; an unfinished fragment is never acked or skipped because its connection
//!   dropped: the next `Connect` resumes at the first unacknowledged fragment;
//! - a connection is rotated before the service's 45-minute limit, and only at a fragment
//!   boundary: `FinishAfterFragment` first, `Disconnect` once the fragment in progress has been
//!   closed and every fragment sent has its final ACK (or a timeout), then `Connect`;
//! - every backoff delay is full-jitter in `[0, min(cap, base·2^n)]` (100 ms … 10 s by default);
//!   the counter resets after a quiet period without failures;
//! - the data endpoint is used for at most `endpoint_ttl` (40 min) after it was resolved, and is
//!   resolved again after repeated connection failures or an `InvalidEndpointException`.
//!
//! Idle policy: with nothing to send the connection is kept; the service sends IDLE ACKs and
//! closes the request after ~30 s. A clean close with nothing unacknowledged is not a failure:
//! the session waits in `Idle` (no backoff, no reconnect churn against the 5 TPS PutMedia limit)
//! until the driver reports `DataAvailable`. A camera produces continuously, so idling means the
//! capture stalled, and reconnecting every 30 s to send nothing would only cost requests and logs.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use super::ack::{AckError, AckErrorClass, AckErrorCode, AckEvent, AckKind};
use super::backoff::{Backoff, BackoffConfig, JitterSource};
use super::control::{
    ApiName, ControlError, ControlRequest, ControlResponse, CreateStreamRequest,
    DescribeStreamRequest, GetDataEndpointRequest, Operation, StatusDisposition, StreamInfo,
    TagStreamRequest, validate_stream_name, validate_tags,
};
use super::errors::{Classified, Failure, FailureClass, classify_parts};

/// The service closes a PutMedia connection older than this (ACK error 4003).
pub const SERVICE_MAX_CONNECTION_AGE: Duration = Duration::from_secs(45 * 60);

/// How the stream is created when DescribeStream finds none (and whether it may be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateStreamSettings {
    /// Device name (the service ignores it; kept for parity with AWS's SDK).
    pub device_name: Option<String>,
    /// Media type, e.g. `video/h264`.
    pub media_type: Option<String>,
    /// KMS key; the service's own key when `None`.
    pub kms_key_id: Option<String>,
    /// Retention in hours (0 = none: fragments then complete on RECEIVED).
    pub data_retention_in_hours: u32,
}

/// Everything the session needs to know, with AWS-derived defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// The KVS stream.
    pub stream_name: String,
    /// `Some` allows CreateStream when the stream does not exist; `None` pauses instead.
    pub create: Option<CreateStreamSettings>,
    /// Stream tags: set at creation, or by TagStream once after the first successful describe.
    pub tags: BTreeMap<String, String>,
    /// Retry timing (100 ms … 10 s full jitter, reset after 90 s without failures).
    pub backoff: BackoffConfig,
    /// Re-resolve the data endpoint once it is this old (AWS's SDK: 40 min).
    pub endpoint_ttl: Duration,
    /// Rotate a PutMedia connection once it is this old …
    pub rotation_interval: Duration,
    /// … plus a uniform random extra of up to this much, so that a fleet does not rotate in step.
    pub rotation_jitter: Duration,
    /// During a drain, how long to wait for the driver to close the fragment in progress.
    pub fragment_boundary_timeout: Duration,
    /// During a drain, how long to wait for the final ACKs of the fragments sent.
    pub drain_ack_timeout: Duration,
    /// A sent fragment without a BUFFERING ACK for this long, or a closed fragment without its
    /// final ACK for this long, means the connection is stale: reconnect.
    pub staleness_timeout: Duration,
    /// A `Connect` without `Connected` for this long has failed.
    pub connect_timeout: Duration,
    /// A control-plane call without an answer for this long has failed.
    pub control_timeout: Duration,
    /// Ask for fresh credentials this long before the current ones expire.
    pub credential_refresh_lead: Duration,
    /// Rotate a connection this long before the credentials it was signed with expire.
    pub credential_rotation_margin: Duration,
    /// A refresh not answered for this long is asked for again.
    pub credential_refresh_timeout: Duration,
    /// First pause after an error only an operator can fix (doubles up to `operator_pause_max`).
    pub operator_pause: Duration,
    /// Longest pause after an operator error.
    pub operator_pause_max: Duration,
    /// A fragment that keeps drawing retryable errors its own bytes may cause (4000, unknown
    /// codes) is skipped after this many.
    pub max_fragment_retries: u32,
    /// Resolve the data endpoint again after this many PutMedia failures in a row.
    pub connect_failures_before_reresolve: u32,
    /// Reconnect after this many unparsable ACK lines on one connection.
    pub max_ack_parse_errors: u32,
}

impl SessionConfig {
    /// Defaults for `stream_name`: no creation, no tags.
    pub fn new(stream_name: impl Into<String>) -> Self {
        Self {
            stream_name: stream_name.into(),
            create: None,
            tags: BTreeMap::new(),
            backoff: BackoffConfig::default(),
            endpoint_ttl: Duration::from_secs(40 * 60),
            rotation_interval: Duration::from_secs(40 * 60),
            rotation_jitter: Duration::from_secs(60),
            fragment_boundary_timeout: Duration::from_secs(25),
            drain_ack_timeout: Duration::from_secs(15),
            staleness_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            control_timeout: Duration::from_secs(20),
            credential_refresh_lead: Duration::from_secs(5 * 60),
            credential_rotation_margin: Duration::from_secs(30),
            credential_refresh_timeout: Duration::from_secs(60),
            operator_pause: Duration::from_secs(60),
            operator_pause_max: Duration::from_secs(15 * 60),
            max_fragment_retries: 5,
            connect_failures_before_reresolve: 2,
            max_ack_parse_errors: 5,
        }
    }

    /// Check the values against each other and the service's limits.
    pub fn validate(&self) -> Result<(), SessionConfigError> {
        validate_stream_name(Operation::DescribeStream, &self.stream_name)?;
        validate_tags(Operation::TagStream, &self.tags)?;
        let invalid = |field: &'static str, value: Duration, reason: &str| {
            Err(SessionConfigError::Invalid {
                field,
                value: format!("{value:?}"),
                reason: reason.to_owned(),
            })
        };
        let positive = [
            ("backoff.base", self.backoff.base),
            ("backoff.cap", self.backoff.cap),
            ("rotation_interval", self.rotation_interval),
            ("endpoint_ttl", self.endpoint_ttl),
            ("staleness_timeout", self.staleness_timeout),
            ("connect_timeout", self.connect_timeout),
            ("control_timeout", self.control_timeout),
            ("fragment_boundary_timeout", self.fragment_boundary_timeout),
            ("drain_ack_timeout", self.drain_ack_timeout),
            (
                "credential_refresh_timeout",
                self.credential_refresh_timeout,
            ),
            ("operator_pause", self.operator_pause),
        ];
        let may_be_zero = [
            ("backoff.quiet_reset", self.backoff.quiet_reset),
            ("rotation_jitter", self.rotation_jitter),
            ("credential_refresh_lead", self.credential_refresh_lead),
            (
                "credential_rotation_margin",
                self.credential_rotation_margin,
            ),
            ("operator_pause_max", self.operator_pause_max),
        ];
        // Bounded first, so that no sum below can overflow.
        for (field, value) in positive.iter().chain(may_be_zero.iter()) {
            if *value > MAX_SETTING {
                return invalid(field, *value, "must be at most 7 days");
            }
        }
        for (field, value) in positive {
            if value.is_zero() {
                return invalid(field, value, "must be > 0");
            }
        }
        if self.backoff.cap < self.backoff.base {
            return invalid("backoff.cap", self.backoff.cap, "must be ≥ backoff.base");
        }
        let longest_connection = self.rotation_interval
            + self.rotation_jitter
            + self.fragment_boundary_timeout
            + self.drain_ack_timeout;
        if longest_connection >= SERVICE_MAX_CONNECTION_AGE {
            return invalid(
                "rotation_interval",
                self.rotation_interval,
                "with rotation_jitter, fragment_boundary_timeout and drain_ack_timeout it must \
                 stay under the service's 45 min connection limit",
            );
        }
        if self.operator_pause_max < self.operator_pause {
            return invalid(
                "operator_pause_max",
                self.operator_pause_max,
                "must be ≥ operator_pause",
            );
        }
        if self.max_fragment_retries == 0 {
            return Err(SessionConfigError::Invalid {
                field: "max_fragment_retries",
                value: "0".into(),
                reason: "must be ≥ 1".into(),
            });
        }
        Ok(())
    }
}

/// A configuration the session refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionConfigError {
    /// A stream name or tag the service would refuse.
    #[error("upload session configuration: {0}")]
    Control(#[from] ControlError),
    /// A timing value out of range.
    #[error("upload session configuration: {field} = {value}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
}

mod interface;

pub use interface::{
    AckDurability, Action, ConnectionId, DisconnectReason, DrainReason, Event, SessionEvent,
    StartFrom, StateKind,
};

/// The step to take when a wait ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Describe,
    Create,
    Tag,
    GetEndpoint,
    Connect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Describe {
        deadline: Instant,
    },
    Create {
        deadline: Instant,
    },
    Tag {
        deadline: Instant,
    },
    GetEndpoint {
        deadline: Instant,
    },
    Connecting {
        conn: ConnectionId,
        deadline: Instant,
    },
    Streaming,
    /// One deadline for the whole drain: the fragment in progress, then the final ACKs.
    Draining {
        reason: DrainReason,
        deadline: Instant,
    },
    Idle,
    Backoff {
        until: Instant,
        then: Step,
    },
    Paused {
        until: Instant,
    },
    Stopped,
}

impl State {
    fn kind(&self) -> StateKind {
        match self {
            State::Describe { .. } => StateKind::Describe,
            State::Create { .. } => StateKind::Create,
            State::Tag { .. } => StateKind::Tag,
            State::GetEndpoint { .. } => StateKind::GetEndpoint,
            State::Connecting { .. } => StateKind::Connecting,
            State::Streaming => StateKind::Streaming,
            State::Draining { .. } => StateKind::Draining,
            State::Idle => StateKind::Idle,
            State::Backoff { .. } => StateKind::Backoff,
            State::Paused { .. } => StateKind::Paused,
            State::Stopped => StateKind::Stopped,
        }
    }
}

/// A fragment sent on the open connection that has not reached its final ACK.
#[derive(Debug, Clone, Copy)]
struct Inflight {
    timecode_ms: u64,
    started_at: Instant,
    closed_at: Option<Instant>,
    buffering: bool,
}

/// The open (accepted) PutMedia connection.
#[derive(Debug)]
struct Link {
    conn: ConnectionId,
    connected_at: Instant,
    rotate_at: Instant,
    inflight: VecDeque<Inflight>,
    in_progress: Option<u64>,
    parse_errors: u32,
}

/// The upload session for one stream. See the module documentation.
pub struct Session {
    config: SessionConfig,
    jitter: Box<dyn JitterSource>,
    backoff: Backoff,
    refresh_backoff: Backoff,
    state: State,
    actions: VecDeque<Action>,
    shutting_down: bool,

    stream_arn: Option<String>,
    retention_hours: Option<u32>,
    tagged: bool,
    tag_attempts: u32,
    settings_checked: bool,

    endpoint: Option<(String, Instant)>,
    next_conn: u64,
    /// The connection the driver has open or opening, from `Connect` until `Disconnect` or the
    /// driver's report that it is gone.
    open_conn: Option<ConnectionId>,
    link: Option<Link>,
    resume_hint: Option<u64>,
    connect_failures: u32,
    last_connect: Option<Instant>,
    last_get_endpoint: Option<Instant>,

    /// Consecutive retryable errors for one fragment: (timecode, count).
    fragment_retries: Option<(u64, u32)>,
    skew_retries: u32,
    operator_pauses: u32,

    credentials_expire: Option<Instant>,
    /// Expiry of the credentials the open connection was signed with.
    link_credentials_expire: Option<Instant>,
    refresh_pending_since: Option<Instant>,
    refresh_retry_at: Option<Instant>,
    auth_strikes: u32,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("stream", &self.config.stream_name)
            .field("state", &self.state)
            .field("open_conn", &self.open_conn)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session that starts with DescribeStream at `now`. `jitter` drives backoff and rotation
    /// jitter: seed a [`super::backoff::SplitMix64`] from the OS in production, fix it in tests.
    pub fn new(
        config: SessionConfig,
        jitter: Box<dyn JitterSource>,
        now: Instant,
    ) -> Result<Self, SessionConfigError> {
        config.validate()?;
        let backoff = Backoff::new(config.backoff.clone());
        let refresh_backoff = Backoff::new(BackoffConfig {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
            quiet_reset: Duration::from_secs(300),
        });
        let mut session = Self {
            config,
            jitter,
            backoff,
            refresh_backoff,
            state: State::Idle,
            actions: VecDeque::new(),
            shutting_down: false,
            stream_arn: None,
            retention_hours: None,
            tagged: false,
            tag_attempts: 0,
            settings_checked: false,
            endpoint: None,
            next_conn: 0,
            open_conn: None,
            link: None,
            resume_hint: None,
            connect_failures: 0,
            last_connect: None,
            last_get_endpoint: None,
            fragment_retries: None,
            skew_retries: 0,
            operator_pauses: 0,
            credentials_expire: None,
            link_credentials_expire: None,
            refresh_pending_since: None,
            refresh_retry_at: None,
            auth_strikes: 0,
        };
        session.step(Step::Describe, now);
        Ok(session)
    }

    /// The current state.
    pub fn state(&self) -> StateKind {
        self.state.kind()
    }

    /// The connection the driver should have open (or opening), if any.
    pub fn open_connection(&self) -> Option<ConnectionId> {
        self.open_conn
    }

    /// The cached data endpoint, if any.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_ref().map(|(e, _)| e.as_str())
    }

    /// Retention reported by DescribeStream, once known.
    pub fn retention_hours(&self) -> Option<u32> {
        self.retention_hours
    }

    /// Whether the session has stopped.
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call `handle(Event::Timeout, now)` next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let state_deadline = match self.state {
            State::Describe { deadline }
            | State::Create { deadline }
            | State::Tag { deadline }
            | State::GetEndpoint { deadline }
            | State::Connecting { deadline, .. }
            | State::Draining { deadline, .. } => Some(deadline),
            State::Backoff { until, .. } | State::Paused { until } => Some(until),
            State::Streaming | State::Idle => None,
            State::Stopped => return None,
        };
        let link_deadline = match (self.state, &self.link) {
            (State::Streaming, Some(link)) => {
                let stale = self.staleness_deadline(link);
                Some(stale.map_or(link.rotate_at, |s| s.min(link.rotate_at)))
            }
            _ => None,
        };
        [
            state_deadline,
            link_deadline,
            self.refresh_due(),
            self.refresh_retry_at,
            self.refresh_pending_since
                .map(|since| since + self.config.credential_refresh_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Feed one event at `now`.
    pub fn handle(&mut self, event: Event, now: Instant) {
        if self.state == State::Stopped {
            return;
        }
        match event {
            Event::ControlResponse(response) => self.on_control_response(response, now),
            Event::ControlFailed { operation, failure } => {
                self.on_control_failed(operation, &failure, now)
            }
            Event::Connected { conn } => self.on_connected(conn, now),
            Event::ConnectFailed { conn, failure } => self.on_connect_failed(conn, &failure, now),
            Event::Ack { conn, ack } => self.on_ack(conn, ack, now),
            Event::AckParseError { conn, error } => self.on_ack_parse_error(conn, error, now),
            Event::ConnectionClosed { conn, failure } => {
                self.on_connection_closed(conn, failure.as_ref(), now)
            }
            Event::FragmentStarted { conn, timecode_ms } => {
                self.on_fragment_started(conn, timecode_ms, now)
            }
            Event::FragmentClosed { conn, timecode_ms } => {
                self.on_fragment_closed(conn, timecode_ms, now)
            }
            Event::DataAvailable => {
                if self.state == State::Idle && !self.shutting_down {
                    self.step(Step::Connect, now);
                }
            }
            Event::CredentialsUpdated { expires_at } => {
                self.credentials_expire = expires_at;
                self.refresh_pending_since = None;
                self.refresh_retry_at = None;
                let lead = self.config.credential_refresh_lead;
                match expires_at {
                    // Already inside the refresh lead: ask again later, not in a tight loop.
                    Some(exp) if exp <= now + lead => {
                        let delay = self.refresh_backoff.next_delay(now, self.jitter.as_mut());
                        self.refresh_retry_at = Some(now + delay);
                    }
                    _ => self.refresh_backoff.reset(),
                }
            }
            Event::CredentialsExpiring => self.request_refresh(now),
            Event::CredentialsRefreshFailed { detail } => {
                self.refresh_pending_since = None;
                let delay = self.refresh_backoff.next_delay(now, self.jitter.as_mut());
                self.refresh_retry_at = Some(now + delay);
                self.report(SessionEvent::CredentialRefreshFailed { detail });
            }
            Event::Timeout => self.on_timeout(now),
            Event::Shutdown => self.on_shutdown(now),
        }
    }

    // ----- plumbing -------------------------------------------------------------------------

    fn report(&mut self, event: SessionEvent) {
        self.actions.push_back(Action::Report(event));
    }

    fn set_state(&mut self, state: State) {
        let from = self.state.kind();
        let to = state.kind();
        self.state = state;
        if from != to {
            self.report(SessionEvent::StateChanged { from, to });
        }
    }

    fn stop(&mut self) {
        self.set_state(State::Stopped);
    }

    /// Take a step of the control-plane chain or connect.
    fn step(&mut self, step: Step, now: Instant) {
        if self.shutting_down {
            self.stop();
            return;
        }
        let deadline = now + self.config.control_timeout;
        match step {
            Step::Describe => {
                self.actions
                    .push_back(Action::Call(ControlRequest::Describe(
                        DescribeStreamRequest {
                            stream_name: self.config.stream_name.clone(),
                        },
                    )));
                self.set_state(State::Describe { deadline });
            }
            Step::Create => {
                let Some(create) = self.config.create.clone() else {
                    self.operator_pause(
                        format!(
                            "stream {} does not exist and creating it is not allowed",
                            self.config.stream_name
                        ),
                        now,
                    );
                    return;
                };
                self.actions
                    .push_back(Action::Call(ControlRequest::Create(CreateStreamRequest {
                        device_name: create.device_name,
                        stream_name: self.config.stream_name.clone(),
                        media_type: create.media_type,
                        kms_key_id: create.kms_key_id,
                        data_retention_in_hours: Some(create.data_retention_in_hours),
                        tags: self.config.tags.clone(),
                    })));
                self.set_state(State::Create { deadline });
            }
            Step::Tag => self.call_tag(now),
            Step::GetEndpoint => {
                if self.wait_for_quota(Step::GetEndpoint, self.last_get_endpoint, now) {
                    return;
                }
                self.last_get_endpoint = Some(now);
                self.actions
                    .push_back(Action::Call(ControlRequest::GetEndpoint(
                        GetDataEndpointRequest {
                            stream_name: self.config.stream_name.clone(),
                            api_name: ApiName::PutMedia,
                        },
                    )));
                self.set_state(State::GetEndpoint { deadline });
            }
            Step::Connect => self.connect(now),
        }
    }

    fn call_tag(&mut self, now: Instant) {
        let Some(stream_arn) = self.stream_arn.clone() else {
            // Only reachable if a describe never ran; describe first.
            self.step(Step::Describe, now);
            return;
        };
        self.actions
            .push_back(Action::Call(ControlRequest::Tag(TagStreamRequest {
                stream_arn,
                tags: self.config.tags.clone(),
            })));
        self.set_state(State::Tag {
            deadline: now + self.config.control_timeout,
        });
    }

    fn connect(&mut self, now: Instant) {
        let fresh = self
            .endpoint
            .as_ref()
            .filter(|(_, resolved)| {
                now.saturating_duration_since(*resolved) < self.config.endpoint_ttl
            })
            .map(|(e, _)| e.clone());
        let Some(endpoint) = fresh else {
            self.endpoint = None;
            self.step(Step::GetEndpoint, now);
            return;
        };
        if self.wait_for_quota(Step::Connect, self.last_connect, now) {
            return;
        }
        self.last_connect = Some(now);
        if let Some(stale) = self.open_conn.take() {
            // Never two connections: close whatever the driver might still hold.
            self.actions.push_back(Action::Disconnect {
                conn: stale,
                reason: DisconnectReason::Superseded,
            });
        }
        self.next_conn += 1;
        let conn = ConnectionId(self.next_conn);
        self.open_conn = Some(conn);
        self.link_credentials_expire = self.credentials_expire;
        self.actions.push_back(Action::Connect {
            conn,
            endpoint,
            start_from: StartFrom::FirstUnacknowledged {
                hint_timecode_ms: self.resume_hint.take(),
            },
        });
        self.set_state(State::Connecting {
            conn,
            deadline: now + self.config.connect_timeout,
        });
    }

    /// PutMedia and GetDataEndpoint allow 5 calls per second per stream: space attempts at least
    /// [`MIN_CALL_SPACING`] apart, whatever the backoff drew (a full-jitter delay can be 0).
    /// Returns whether the step was deferred.
    fn wait_for_quota(&mut self, step: Step, last: Option<Instant>, now: Instant) -> bool {
        match last {
            Some(last) if now < last + MIN_CALL_SPACING => {
                self.set_state(State::Backoff {
                    until: last + MIN_CALL_SPACING,
                    then: step,
                });
                true
            }
            _ => false,
        }
    }

    fn backoff_then(&mut self, step: Step, reason: String, now: Instant) {
        let delay = self.backoff.next_delay(now, self.jitter.as_mut());
        self.report(SessionEvent::BackoffScheduled {
            delay,
            attempt: self.backoff.attempt(),
            reason,
        });
        self.set_state(State::Backoff {
            until: now + delay,
            then: step,
        });
    }

    fn operator_pause(&mut self, reason: String, now: Instant) {
        if self.shutting_down {
            self.stop();
            return;
        }
        let factor = 1u32 << self.operator_pauses.min(16);
        let pause = self
            .config
            .operator_pause
            .saturating_mul(factor)
            .min(self.config.operator_pause_max);
        self.operator_pauses = self.operator_pauses.saturating_add(1);
        self.report(SessionEvent::OperatorAttention { reason, pause });
        self.set_state(State::Paused { until: now + pause });
    }

    fn request_refresh(&mut self, now: Instant) {
        if self.refresh_pending_since.is_none() {
            self.refresh_pending_since = Some(now);
            self.refresh_retry_at = None;
            self.actions.push_back(Action::RefreshCredentials);
        }
    }

    fn refresh_due(&self) -> Option<Instant> {
        if self.refresh_pending_since.is_some() || self.refresh_retry_at.is_some() {
            return None;
        }
        self.credentials_expire.map(|exp| {
            exp.checked_sub(self.config.credential_refresh_lead)
                .unwrap_or(exp)
        })
    }

    /// Route a classified failure of `step`.
    fn fail(&mut self, step: Step, classified: &Classified, detail: String, now: Instant) {
        match &classified.class {
            class if class.is_transient() => self.backoff_then(step, detail, now),
            FailureClass::ClockSkew { server_date } => {
                match server_date {
                    Some(date) if self.skew_retries == 0 => {
                        self.skew_retries += 1;
                        self.actions.push_back(Action::LearnClockSkew {
                            server_date: date.clone(),
                        });
                        // Retry at once with the corrected clock.
                        self.step(step, now);
                    }
                    _ => self.backoff_then(step, detail, now),
                }
            }
            FailureClass::Credentials => {
                if self.refresh_pending_since.is_none() {
                    self.auth_strikes += 1;
                    if self.auth_strikes > 2 {
                        self.auth_strikes = 0;
                        self.request_refresh(now);
                        self.operator_pause(
                            format!(
                                "credentials refused even after a refresh ({detail}): check the \
                                 IAM policy / role alias for kinesisvideo on stream {}",
                                self.config.stream_name
                            ),
                            now,
                        );
                        return;
                    }
                    self.request_refresh(now);
                }
                self.backoff_then(step, detail, now);
            }
            FailureClass::StreamNotFound => {
                if step == Step::Describe {
                    if self.config.create.is_some() {
                        self.step(Step::Create, now);
                    } else {
                        self.operator_pause(
                            format!(
                                "stream {} does not exist and creating it is not allowed",
                                self.config.stream_name
                            ),
                            now,
                        );
                    }
                } else {
                    self.stream_arn = None;
                    self.backoff_then(Step::Describe, detail, now);
                }
            }
            FailureClass::InvalidEndpoint => {
                self.endpoint = None;
                self.backoff_then(Step::GetEndpoint, detail, now);
            }
            FailureClass::ResourceInUse => self.backoff_then(Step::Describe, detail, now),
            FailureClass::OperatorError => self.operator_pause(
                format!("{detail}: the request will keep failing until the configuration changes"),
                now,
            ),
            // `is_transient` covered the rest.
            _ => self.backoff_then(step, detail, now),
        }
    }

    // ----- control plane --------------------------------------------------------------------

    fn on_control_response(&mut self, response: ControlResponse, now: Instant) {
        let operation = response.operation();
        match (self.state, response) {
            (State::Describe { .. }, ControlResponse::Described(info)) => {
                self.call_succeeded();
                self.on_described(info, now);
            }
            (State::Create { .. }, ControlResponse::Created { stream_arn }) => {
                self.call_succeeded();
                self.stream_arn = Some(stream_arn);
                // Tags went with CreateStream.
                self.tagged = true;
                self.step(Step::Describe, now);
            }
            (State::Tag { .. }, ControlResponse::Tagged) => {
                self.call_succeeded();
                self.tagged = true;
                self.step(Step::Connect, now);
            }
            (State::GetEndpoint { .. }, ControlResponse::Endpoint { data_endpoint }) => {
                self.call_succeeded();
                self.endpoint = Some((data_endpoint, now));
                // Failures counted against the old endpoint say nothing about this one.
                self.connect_failures = 0;
                self.step(Step::Connect, now);
            }
            _ => self.report(SessionEvent::UnexpectedResponse { operation }),
        }
    }

    fn call_succeeded(&mut self) {
        self.skew_retries = 0;
        self.auth_strikes = 0;
    }

    fn on_described(&mut self, info: StreamInfo, now: Instant) {
        self.stream_arn = Some(info.stream_arn.clone());
        self.retention_hours = Some(info.data_retention_in_hours);
        if !self.settings_checked {
            self.settings_checked = true;
            self.check_settings(&info);
        }
        match info.status.disposition() {
            StatusDisposition::Ready => {
                if !self.config.tags.is_empty() && !self.tagged {
                    self.step(Step::Tag, now);
                } else {
                    self.step(Step::Connect, now);
                }
            }
            StatusDisposition::Poll => {
                self.backoff_then(
                    Step::Describe,
                    format!("stream {} is {:?}", info.stream_name, info.status),
                    now,
                );
            }
            StatusDisposition::Fatal => self.operator_pause(
                format!(
                    "stream {} is being deleted: nothing to upload to",
                    info.stream_name
                ),
                now,
            ),
        }
    }

    fn check_settings(&mut self, info: &StreamInfo) {
        let Some(create) = self.config.create.clone() else {
            return;
        };
        if create.data_retention_in_hours != info.data_retention_in_hours {
            self.report(SessionEvent::StreamSettingsMismatch {
                field: "DataRetentionInHours",
                expected: create.data_retention_in_hours.to_string(),
                actual: info.data_retention_in_hours.to_string(),
            });
        }
        for (field, expected, actual) in [
            ("MediaType", &create.media_type, &info.media_type),
            ("KmsKeyId", &create.kms_key_id, &info.kms_key_id),
        ] {
            if let Some(expected) = expected
                && Some(expected) != actual.as_ref()
            {
                self.report(SessionEvent::StreamSettingsMismatch {
                    field,
                    expected: expected.clone(),
                    actual: actual.clone().unwrap_or_default(),
                });
            }
        }
    }

    fn on_control_failed(&mut self, operation: Operation, failure: &Failure, now: Instant) {
        let step = match (self.state, operation) {
            (State::Describe { .. }, Operation::DescribeStream) => Step::Describe,
            (State::Create { .. }, Operation::CreateStream) => Step::Create,
            (State::Tag { .. }, Operation::TagStream) => Step::Tag,
            (State::GetEndpoint { .. }, Operation::GetDataEndpoint) => Step::GetEndpoint,
            _ => {
                self.report(SessionEvent::UnexpectedResponse { operation });
                return;
            }
        };
        let classified = failure.classify();
        let detail = format!("{} failed: {failure}", operation.name());
        self.report(SessionEvent::CallFailed {
            operation,
            class: classified.class.clone(),
            detail: detail.clone(),
        });
        if step == Step::Tag {
            self.on_tag_failed(&classified, detail, now);
            return;
        }
        if step == Step::Create && classified.class == FailureClass::ResourceInUse {
            // Someone else created it meanwhile.
            self.step(Step::Describe, now);
            return;
        }
        self.fail(step, &classified, detail, now);
    }

    /// TagStream is not critical: a few retries for transient faults, then stream untagged.
    fn on_tag_failed(&mut self, classified: &Classified, detail: String, now: Instant) {
        self.tag_attempts = self.tag_attempts.saturating_add(1);
        if classified.class == FailureClass::StreamNotFound {
            self.stream_arn = None;
            self.backoff_then(Step::Describe, detail, now);
            return;
        }
        let retryable = classified.class.is_transient()
            || matches!(
                classified.class,
                FailureClass::Credentials | FailureClass::ClockSkew { .. }
            );
        if retryable && self.tag_attempts < MAX_TAG_ATTEMPTS {
            match &classified.class {
                FailureClass::Credentials => self.request_refresh(now),
                FailureClass::ClockSkew {
                    server_date: Some(date),
                } => self.actions.push_back(Action::LearnClockSkew {
                    server_date: date.clone(),
                }),
                _ => {}
            }
            self.backoff_then(Step::Tag, detail, now);
            return;
        }
        self.tagged = true;
        self.report(SessionEvent::TagStreamFailed { detail });
        self.step(Step::Connect, now);
    }

    // ----- PutMedia connection --------------------------------------------------------------

    fn on_connected(&mut self, conn: ConnectionId, now: Instant) {
        match self.state {
            State::Connecting { conn: expected, .. } if expected == conn => {}
            _ => return,
        }
        self.connect_failures = 0;
        self.call_succeeded();
        let jitter_ms = u64::try_from(self.config.rotation_jitter.as_millis()).unwrap_or(u64::MAX);
        let mut rotate_at = now
            + self.config.rotation_interval
            + Duration::from_millis(self.jitter.uniform_inclusive(jitter_ms));
        if let Some(expiry) = self.link_credentials_expire {
            // Rotate before the signing credentials expire, unless they were about to expire
            // already (a refresh is failing): rotating at once would only repeat the same
            // signature, so the interval rule stands then.
            let before_expiry = expiry
                .checked_sub(self.config.credential_rotation_margin)
                .unwrap_or(expiry);
            if before_expiry >= now + MIN_CONNECTION_LIFE {
                rotate_at = rotate_at.min(before_expiry);
            }
        }
        self.link = Some(Link {
            conn,
            connected_at: now,
            rotate_at,
            inflight: VecDeque::new(),
            in_progress: None,
            parse_errors: 0,
        });
        self.report(SessionEvent::ConnectionOpened {
            conn,
            rotate_in: rotate_at.saturating_duration_since(now),
        });
        self.set_state(State::Streaming);
    }

    fn on_connect_failed(&mut self, conn: ConnectionId, failure: &Failure, now: Instant) {
        match self.state {
            State::Connecting { conn: expected, .. } if expected == conn => {}
            _ => return,
        }
        self.open_conn = None;
        self.connection_failed(conn, &failure.classify(), failure.to_string(), now);
    }

    /// A PutMedia attempt failed or a connection broke: count it, maybe forget the endpoint, and
    /// route the failure.
    fn connection_failed(
        &mut self,
        conn: ConnectionId,
        classified: &Classified,
        detail: String,
        now: Instant,
    ) {
        self.connect_failures = self.connect_failures.saturating_add(1);
        if self.connect_failures >= self.config.connect_failures_before_reresolve {
            self.endpoint = None;
        }
        self.report(SessionEvent::ConnectionFailed {
            conn,
            class: classified.class.clone(),
            detail: detail.clone(),
        });
        if self.shutting_down {
            self.stop();
            return;
        }
        self.fail(
            Step::Connect,
            classified,
            format!("PutMedia {conn}: {detail}"),
            now,
        );
    }

    /// Close the open link from the session's side; remember where to resume.
    fn close_link(&mut self, reason: DisconnectReason) {
        if let Some(link) = self.link.take() {
            self.resume_hint = link.inflight.iter().map(|f| f.timecode_ms).min();
            self.actions.push_back(Action::Disconnect {
                conn: link.conn,
                reason,
            });
        }
        self.open_conn = None;
    }

    /// The driver reports the link gone: forget it without a `Disconnect`.
    fn drop_link(&mut self) -> Option<Link> {
        let link = self.link.take();
        if let Some(link) = &link {
            self.resume_hint = link.inflight.iter().map(|f| f.timecode_ms).min();
        }
        self.open_conn = None;
        link
    }

    fn link_is(&self, conn: ConnectionId) -> bool {
        self.link.as_ref().is_some_and(|l| l.conn == conn)
            && matches!(self.state, State::Streaming | State::Draining { .. })
    }

    fn on_fragment_started(&mut self, conn: ConnectionId, timecode_ms: u64, now: Instant) {
        if !self.link_is(conn) {
            return;
        }
        // During a drain this is the fragment the driver had already begun when it got
        // `FinishAfterFragment`: it finishes that one, so track it like any other.
        if let Some(link) = self.link.as_mut() {
            if let Some(previous) = link.in_progress.replace(timecode_ms)
                && let Some(f) = link.inflight.iter_mut().find(|f| f.timecode_ms == previous)
            {
                f.closed_at.get_or_insert(now);
            }
            link.inflight.push_back(Inflight {
                timecode_ms,
                started_at: now,
                closed_at: None,
                buffering: false,
            });
        }
    }

    fn on_fragment_closed(&mut self, conn: ConnectionId, timecode_ms: u64, now: Instant) {
        if !self.link_is(conn) {
            return;
        }
        if let Some(link) = self.link.as_mut() {
            if link.in_progress == Some(timecode_ms) {
                link.in_progress = None;
            }
            if let Some(f) = link
                .inflight
                .iter_mut()
                .find(|f| f.timecode_ms == timecode_ms)
            {
                f.closed_at.get_or_insert(now);
            }
        }
        self.check_drained(now);
    }

    fn on_ack(&mut self, conn: ConnectionId, ack: AckEvent, now: Instant) {
        if !self.link_is(conn) {
            return;
        }
        let latency = ack.fragment_timecode_ms.and_then(|tc| {
            self.link.as_ref().and_then(|l| {
                l.inflight
                    .iter()
                    .find(|f| f.timecode_ms == tc)
                    .map(|f| now.saturating_duration_since(f.started_at))
            })
        });
        self.report(SessionEvent::AckReceived {
            conn,
            ack: ack.clone(),
            latency,
        });
        let timecode = ack.fragment_timecode_ms;
        let known = timecode.is_some_and(|tc| {
            self.link
                .as_ref()
                .is_some_and(|l| l.inflight.iter().any(|f| f.timecode_ms == tc))
        });
        match ack.kind {
            AckKind::Idle => {}
            AckKind::Buffering | AckKind::Received | AckKind::Persisted if !known => {
                self.report(SessionEvent::UnexpectedAck {
                    conn,
                    timecode_ms: timecode,
                });
            }
            AckKind::Buffering => {
                if let (Some(tc), Some(link)) = (timecode, self.link.as_mut())
                    && let Some(f) = link.inflight.iter_mut().find(|f| f.timecode_ms == tc)
                {
                    f.buffering = true;
                }
            }
            AckKind::Received => {
                if let Some(tc) = timecode {
                    if self.retention_hours == Some(0) {
                        self.finalize(tc, AckDurability::Received, now);
                    } else if let Some(link) = self.link.as_mut()
                        && let Some(f) = link.inflight.iter_mut().find(|f| f.timecode_ms == tc)
                    {
                        // RECEIVED implies BUFFERING, even if that ACK was lost.
                        f.buffering = true;
                    }
                }
            }
            AckKind::Persisted => {
                if let Some(tc) = timecode {
                    self.finalize(tc, AckDurability::Persisted, now);
                }
            }
            AckKind::Error { code } => {
                self.on_error_ack(conn, timecode.filter(|_| known), code, now)
            }
            AckKind::ServiceError {
                error_type,
                message,
            } => {
                self.report(SessionEvent::ServiceErrorOnAckStream {
                    conn,
                    error_type: error_type.clone(),
                    message: message.clone(),
                });
                let class = classify_parts(None, error_type.as_deref(), message.as_deref(), None);
                let detail = format!(
                    "service error on the ACK stream: {} {}",
                    error_type.as_deref().unwrap_or("(no type)"),
                    message.as_deref().unwrap_or("")
                );
                self.close_link(DisconnectReason::ServiceError);
                self.after_link_lost(
                    conn,
                    &Classified {
                        class,
                        error_type,
                        message,
                    },
                    detail,
                    now,
                );
            }
        }
    }

    /// The fragment reached its final ACK.
    fn finalize(&mut self, timecode_ms: u64, kind: AckDurability, now: Instant) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let Some(index) = link
            .inflight
            .iter()
            .position(|f| f.timecode_ms == timecode_ms)
        else {
            return;
        };
        link.inflight.remove(index);
        if self
            .fragment_retries
            .is_some_and(|(tc, _)| tc == timecode_ms)
        {
            self.fragment_retries = None;
        }
        self.operator_pauses = 0;
        self.actions
            .push_back(Action::AckFragment { timecode_ms, kind });
        self.check_drained(now);
    }

    fn on_error_ack(
        &mut self,
        conn: ConnectionId,
        timecode: Option<u64>,
        code: AckErrorCode,
        now: Instant,
    ) {
        let mut class = code.class();
        if let (Some(tc), AckErrorClass::RetryFragment) = (timecode, class)
            && code.may_be_caused_by_fragment()
        {
            let count = match self.fragment_retries {
                Some((retry_tc, n)) if retry_tc == tc => n.saturating_add(1),
                _ => 1,
            };
            self.fragment_retries = Some((tc, count));
            if count >= self.config.max_fragment_retries {
                self.report(SessionEvent::FragmentRetriesExhausted {
                    timecode_ms: tc,
                    code,
                });
                class = AckErrorClass::SkipFragment;
            } else {
                self.report(SessionEvent::FragmentRetry {
                    timecode_ms: tc,
                    code,
                    attempt: count,
                });
            }
        }
        if class == AckErrorClass::SkipFragment
            && let Some(tc) = timecode
        {
            if let Some(link) = self.link.as_mut() {
                link.inflight.retain(|f| f.timecode_ms != tc);
            }
            if self
                .fragment_retries
                .is_some_and(|(retry_tc, _)| retry_tc == tc)
            {
                self.fragment_retries = None;
            }
            self.actions.push_back(Action::SkipFragment {
                timecode_ms: tc,
                code,
            });
        }
        // Any ERROR ends the connection (the service closes it; do not wait for that).
        let draining_for_shutdown = matches!(
            self.state,
            State::Draining {
                reason: DrainReason::Shutdown,
                ..
            }
        ) || self.shutting_down;
        self.close_link(DisconnectReason::ErrorAck(code));
        if draining_for_shutdown {
            self.stop();
            return;
        }
        let detail = format!("{conn}: ERROR ACK {code}");
        match class {
            // Every reconnect after an ERROR goes through the backoff (its first step is at most
            // 100 ms): a stream of rejected fragments must not turn into a stream of PutMedia
            // calls against the 5 TPS limit.
            AckErrorClass::Reconnect
            | AckErrorClass::RetryFragment
            | AckErrorClass::SkipFragment => self.backoff_then(Step::Connect, detail, now),
            AckErrorClass::OperatorFix if code.stream_gone() => {
                self.stream_arn = None;
                self.backoff_then(Step::Describe, detail, now);
            }
            AckErrorClass::OperatorFix => self.operator_pause(
                format!("{detail}: fix the stream's KMS key; the fragment is kept"),
                now,
            ),
        }
    }

    fn on_ack_parse_error(&mut self, conn: ConnectionId, error: AckError, now: Instant) {
        if !self.link_is(conn) {
            return;
        }
        self.report(SessionEvent::AckParseFailed {
            conn,
            error: error.clone(),
        });
        let errors = self.link.as_mut().map_or(0, |l| {
            l.parse_errors += 1;
            l.parse_errors
        });
        if errors >= self.config.max_ack_parse_errors {
            self.close_link(DisconnectReason::AckStreamGarbled);
            let classified = Classified {
                class: FailureClass::MalformedResponse,
                error_type: None,
                message: Some(error.to_string()),
            };
            self.after_link_lost(
                conn,
                &classified,
                format!("{errors} unparsable ACK lines, last: {error}"),
                now,
            );
        }
    }

    /// The link is gone (closed by us or by the driver) because of a failure.
    fn after_link_lost(
        &mut self,
        conn: ConnectionId,
        classified: &Classified,
        detail: String,
        now: Instant,
    ) {
        if matches!(
            self.state,
            State::Draining {
                reason: DrainReason::Shutdown,
                ..
            }
        ) {
            self.stop();
            return;
        }
        self.connection_failed(conn, classified, detail, now);
    }

    fn on_connection_closed(
        &mut self,
        conn: ConnectionId,
        failure: Option<&Failure>,
        now: Instant,
    ) {
        if let State::Connecting { conn: expected, .. } = self.state
            && expected == conn
        {
            // Closed before it was accepted: a failed connect.
            self.open_conn = None;
            let failure = failure.cloned().unwrap_or(Failure::Transport {
                kind: super::errors::TransportKind::Reset,
                detail: "connection closed before the response headers".into(),
            });
            self.connection_failed(conn, &failure.classify(), failure.to_string(), now);
            return;
        }
        if !self.link_is(conn) {
            return;
        }
        let state = self.state;
        let Some(link) = self.drop_link() else {
            return;
        };
        let unacked = link.inflight.len();
        let clean = failure.is_none() && unacked == 0 && link.in_progress.is_none();
        if let State::Draining { reason, .. } = state {
            if reason == DrainReason::Shutdown || self.shutting_down {
                // What is unacknowledged stays in the buffer for the next start.
                self.stop();
                return;
            }
            if clean {
                self.drain_finished(reason, now);
                return;
            }
        }
        match failure {
            None if clean => {
                self.report(SessionEvent::IdleClose { conn });
                self.set_state(State::Idle);
            }
            None => {
                let classified = Classified {
                    class: FailureClass::Transport,
                    error_type: None,
                    message: None,
                };
                self.connection_failed(
                    conn,
                    &classified,
                    format!(
                        "the service ended the response with {unacked} fragments unacknowledged"
                    ),
                    now,
                );
            }
            Some(failure) => {
                self.connection_failed(conn, &failure.classify(), failure.to_string(), now);
            }
        }
    }

    // ----- draining -------------------------------------------------------------------------

    fn begin_drain(&mut self, reason: DrainReason, now: Instant) {
        let Some(link) = self.link.as_ref() else {
            return;
        };
        let conn = link.conn;
        let age = now.saturating_duration_since(link.connected_at);
        self.actions
            .push_back(Action::FinishAfterFragment { conn, reason });
        self.report(SessionEvent::DrainStarted { conn, reason, age });
        let deadline = now + self.config.fragment_boundary_timeout + self.config.drain_ack_timeout;
        self.set_state(State::Draining { reason, deadline });
        self.check_drained(now);
    }

    /// A drain is over once no fragment is in progress and every fragment sent has its final
    /// ACK.
    fn check_drained(&mut self, now: Instant) {
        let State::Draining { reason, .. } = self.state else {
            return;
        };
        let done = self
            .link
            .as_ref()
            .is_none_or(|l| l.inflight.is_empty() && l.in_progress.is_none());
        if done {
            self.close_link(DisconnectReason::Drained(reason));
            self.drain_finished(reason, now);
        }
    }

    fn drain_finished(&mut self, reason: DrainReason, now: Instant) {
        match reason {
            DrainReason::Shutdown => self.stop(),
            DrainReason::Rotation if self.shutting_down => self.stop(),
            DrainReason::Rotation => self.step(Step::Connect, now),
        }
    }

    fn on_shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        match self.state {
            State::Streaming => self.begin_drain(DrainReason::Shutdown, now),
            State::Draining { deadline, .. } => {
                self.set_state(State::Draining {
                    reason: DrainReason::Shutdown,
                    deadline,
                });
            }
            State::Connecting { conn, .. } => {
                self.open_conn = None;
                self.actions.push_back(Action::Disconnect {
                    conn,
                    reason: DisconnectReason::Shutdown,
                });
                self.stop();
            }
            _ => self.stop(),
        }
    }

    // ----- timers ---------------------------------------------------------------------------

    fn staleness_deadline(&self, link: &Link) -> Option<Instant> {
        let stale = self.config.staleness_timeout;
        link.inflight
            .iter()
            .filter_map(|f| {
                if !f.buffering {
                    Some(f.started_at + stale)
                } else {
                    f.closed_at.map(|closed| closed + stale)
                }
            })
            .min()
    }

    fn on_timeout(&mut self, now: Instant) {
        // Credentials first: a refresh may be due whatever the state.
        if self
            .refresh_pending_since
            .is_some_and(|since| now >= since + self.config.credential_refresh_timeout)
        {
            self.refresh_pending_since = None;
            self.request_refresh(now);
        }
        if self.refresh_retry_at.is_some_and(|at| now >= at) {
            self.refresh_retry_at = None;
            self.request_refresh(now);
        }
        if self.refresh_due().is_some_and(|due| now >= due) {
            self.request_refresh(now);
        }

        match self.state {
            State::Backoff { until, then } if now >= until => self.step(then, now),
            State::Paused { until } if now >= until => self.step(Step::Describe, now),
            State::Tag { deadline } if now >= deadline => {
                self.control_timed_out(Operation::TagStream, Step::Tag, now)
            }
            State::Describe { deadline } if now >= deadline => {
                self.control_timed_out(Operation::DescribeStream, Step::Describe, now)
            }
            State::Create { deadline } if now >= deadline => {
                self.control_timed_out(Operation::CreateStream, Step::Create, now)
            }
            State::GetEndpoint { deadline } if now >= deadline => {
                self.control_timed_out(Operation::GetDataEndpoint, Step::GetEndpoint, now)
            }
            State::Connecting { conn, deadline } if now >= deadline => {
                self.open_conn = None;
                self.actions.push_back(Action::Disconnect {
                    conn,
                    reason: DisconnectReason::ConnectTimeout,
                });
                let classified = Classified {
                    class: FailureClass::Timeout,
                    error_type: None,
                    message: None,
                };
                self.connection_failed(
                    conn,
                    &classified,
                    "PutMedia not accepted in time".into(),
                    now,
                );
            }
            State::Streaming => self.streaming_timers(now),
            State::Draining {
                reason, deadline, ..
            } if now >= deadline => {
                if let Some(link) = &self.link {
                    let unacknowledged = link.inflight.len();
                    let conn = link.conn;
                    self.report(SessionEvent::DrainTimedOut {
                        conn,
                        unacknowledged,
                    });
                }
                self.close_link(DisconnectReason::Drained(reason));
                self.drain_finished(reason, now);
            }
            _ => {}
        }
    }

    fn control_timed_out(&mut self, operation: Operation, step: Step, now: Instant) {
        let failure = Failure::Transport {
            kind: super::errors::TransportKind::Timeout,
            detail: format!("no answer within {:?}", self.config.control_timeout),
        };
        let classified = failure.classify();
        let detail = format!("{} failed: {failure}", operation.name());
        self.report(SessionEvent::CallFailed {
            operation,
            class: classified.class.clone(),
            detail: detail.clone(),
        });
        if step == Step::Tag {
            self.on_tag_failed(&classified, detail, now);
        } else {
            self.fail(step, &classified, detail, now);
        }
    }

    fn streaming_timers(&mut self, now: Instant) {
        let Some(link) = &self.link else {
            return;
        };
        let conn = link.conn;
        let stale = self.config.staleness_timeout;
        let waiting = link.inflight.iter().find_map(|f| {
            let since = if f.buffering {
                f.closed_at?
            } else {
                f.started_at
            };
            (now >= since + stale).then(|| (f.timecode_ms, now.saturating_duration_since(since)))
        });
        if let Some((timecode_ms, waited)) = waiting {
            self.report(SessionEvent::ConnectionStale {
                conn,
                timecode_ms,
                waited,
            });
            self.close_link(DisconnectReason::Stale);
            let classified = Classified {
                class: FailureClass::Timeout,
                error_type: None,
                message: None,
            };
            self.connection_failed(
                conn,
                &classified,
                format!("no ACK progress for fragment {timecode_ms} in {waited:?}"),
                now,
            );
            return;
        }
        if now >= link.rotate_at {
            self.begin_drain(DrainReason::Rotation, now);
        }
    }
}

/// The longest duration any setting may have (keeps every `Instant` sum far from overflow).
const MAX_SETTING: Duration = Duration::from_secs(7 * 24 * 3600);

/// Minimum spacing of PutMedia and of GetDataEndpoint calls: the service allows 5 per second
/// per stream.
const MIN_CALL_SPACING: Duration = Duration::from_millis(200);

/// A connection whose rotation the credentials would pull closer than this is rotated by the
/// interval rule instead.
const MIN_CONNECTION_LIFE: Duration = Duration::from_secs(60);

/// TagStream tries before streaming goes on untagged.
const MAX_TAG_ATTEMPTS: u32 = 3;

#[cfg(test)]
mod tests;
