//! Drives `upload::session::Session` through hours of simulated time against a simulated KVS:
//! outages of 30 s, 5 min and 1 h, a silent (black-holed) data plane, rotations, hourly credential
//! expiry, a credential revocation, throttling bursts, clock skew, an endpoint move and ERROR ACKs
//! of every class. A simulated driver streams 2-second fragments the way the real one will
//! (live edge frame by frame, backlog paced at 5 fragments/s) and checks the invariants as it
//! goes:
//!
//! - never a `Connect` while a connection is open, never more than 5 PutMedia or GetDataEndpoint
//!   calls per second;
//! - every backoff delay within 0 ..= 10 s;
//! - every rotation / shutdown disconnect at a fragment boundary; no connection reaches 45 min
//!   (the simulated service would send ERROR 4003) and no fragment overlaps inside a connection
//!   (it would send 4004);
//! - every fragment acked or skipped exactly once, the skipped ones exactly those whose content
//!   the service rejects; nothing lost;
//! - endpoints used within 40 min of being resolved.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kinesis_edge::upload::ack::{AckErrorCode, AckEvent, AckKind};
use kinesis_edge::upload::backoff::SplitMix64;
use kinesis_edge::upload::control::{
    ControlRequest, ControlResponse, Operation, StreamInfo, StreamStatus,
};
use kinesis_edge::upload::errors::{Failure, HttpFailure, TransportKind};
use kinesis_edge::upload::session::{
    AckDurability, Action, ConnectionId, DisconnectReason, DrainReason, Event, Session,
    SessionConfig, SessionEvent, StartFrom, StateKind,
};

const FRAGMENT: Duration = Duration::from_secs(2);
const TC_BASE: u64 = 1_700_000_000_000;
/// A backlog fragment takes this long to send: 5 fragments/s, the service's limit.
const BACKLOG_SEND: Duration = Duration::from_millis(200);
const CREDENTIAL_LIFE: Duration = Duration::from_secs(3600);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}
fn tc_of(k: u64) -> u64 {
    TC_BASE + k * 2000
}
fn k_of(tc: u64) -> u64 {
    (tc - TC_BASE) / 2000
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Duration,
    end: Duration,
}

impl Window {
    fn new(start: Duration, len: Duration) -> Self {
        Self {
            start,
            end: start + len,
        }
    }
    fn contains(&self, t: Duration) -> bool {
        t >= self.start && t < self.end
    }
}

/// ERROR ACKs to inject: the first fragment finished at or after `after` gets `code`, `times`
/// times in a row (each resend of it).
#[derive(Debug, Clone)]
struct Injection {
    after: Duration,
    code: AckErrorCode,
    times: u32,
    fragment: Option<u64>,
}

#[derive(Debug, Clone)]
struct Script {
    /// The data plane refuses connections and resets the open one.
    data_down: Vec<Window>,
    /// The control plane (and the credential endpoint) is unreachable.
    control_down: Vec<Window>,
    /// The data plane silently drops everything.
    blackhole: Vec<Window>,
    /// Every call is throttled.
    throttle: Vec<Window>,
    /// The credentials in use are revoked (401 until refreshed).
    revoke_at: Vec<Duration>,
    /// The device clock jumps (403 "Signature expired" until the skew is learned).
    skew_at: Vec<Duration>,
    /// The stream's data endpoint moves (InvalidEndpointException on the old one).
    move_endpoint_at: Vec<Duration>,
    injections: Vec<Injection>,
    end: Duration,
}

fn any(windows: &[Window], t: Duration) -> bool {
    windows.iter().any(|w| w.contains(t))
}

#[derive(Debug)]
enum SimEvent {
    /// An event for the session (answers, ACKs, closes).
    ToSession(Event),
    /// The driver finished writing fragment `k` on `conn`.
    SendEnd { conn: ConnectionId, k: u64 },
    /// Data may be ready to send.
    Pump,
    /// A scripted change takes effect.
    Point(Point),
    /// Credentials arrive from the (simulated) credential endpoint.
    CredentialsIssued,
}

#[derive(Debug, Clone, Copy)]
enum Point {
    DataDown,
    Revoke,
    Skew,
    MoveEndpoint,
}

#[derive(Debug)]
struct SimConn {
    id: ConnectionId,
    endpoint_generation: u64,
    opened_at: Option<Duration>,
    finishing: bool,
    in_progress: Option<u64>,
    last_sent: Option<u64>,
}

#[derive(Debug, Default)]
struct Stats {
    connects: u32,
    rotations: u32,
    stale: u32,
    skew_learned: u32,
    refreshes: u32,
    refresh_failures: u32,
    operator_pauses: Vec<String>,
    drain_timeouts: u32,
    backoffs: u32,
    max_backoff: Duration,
    auth_rejections: u32,
    max_connection_age: Duration,
    get_endpoint_calls: u32,
    service_4003: u32,
    service_4004: u32,
    acked: u32,
}

struct Sim {
    t0: Instant,
    now: Duration,
    session: Session,
    script: Script,
    heap: BinaryHeap<Reverse<(Duration, u64)>>,
    events: HashMap<u64, SimEvent>,
    seq: u64,
    queue: VecDeque<Event>,
    pump_at: Option<Duration>,

    conn: Option<SimConn>,
    terminal: BTreeMap<u64, Result<AckDurability, AckErrorCode>>,
    first_unfinished: u64,

    /// Service side.
    endpoint_generation: u64,
    endpoint_resolved: HashMap<String, Duration>,
    credential_generation: u64,
    revoked_below: u64,
    credentials_expire: Duration,
    refresh_in_flight: bool,
    skewed: bool,
    service_last_tc: HashMap<ConnectionId, u64>,
    recent_connects: VecDeque<Duration>,
    recent_endpoint_calls: VecDeque<Duration>,

    stats: Stats,
}

impl Sim {
    fn new(script: Script, seed: u64) -> Self {
        let t0 = Instant::now();
        let mut config = SessionConfig::new("front-door");
        config.tags.insert("site".into(), "sim".into());
        let session =
            Session::new(config, Box::new(SplitMix64::new(seed)), t0).expect("valid config");
        let mut sim = Self {
            t0,
            now: Duration::ZERO,
            session,
            script,
            heap: BinaryHeap::new(),
            events: HashMap::new(),
            seq: 0,
            queue: VecDeque::new(),
            pump_at: None,
            conn: None,
            terminal: BTreeMap::new(),
            first_unfinished: 0,
            endpoint_generation: 1,
            endpoint_resolved: HashMap::new(),
            credential_generation: 1,
            revoked_below: 0,
            credentials_expire: CREDENTIAL_LIFE,
            refresh_in_flight: false,
            skewed: false,
            service_last_tc: HashMap::new(),
            recent_connects: VecDeque::new(),
            recent_endpoint_calls: VecDeque::new(),
            stats: Stats::default(),
        };
        sim.queue.push_back(Event::CredentialsUpdated {
            expires_at: Some(t0 + CREDENTIAL_LIFE),
        });
        let points: Vec<(Duration, Point)> = sim
            .script
            .data_down
            .iter()
            .map(|w| (w.start, Point::DataDown))
            .chain(sim.script.revoke_at.iter().map(|&t| (t, Point::Revoke)))
            .chain(sim.script.skew_at.iter().map(|&t| (t, Point::Skew)))
            .chain(
                sim.script
                    .move_endpoint_at
                    .iter()
                    .map(|&t| (t, Point::MoveEndpoint)),
            )
            .collect();
        for (t, p) in points {
            sim.schedule_at(t, SimEvent::Point(p));
        }
        sim
    }

    fn instant(&self) -> Instant {
        self.t0 + self.now
    }

    fn schedule_at(&mut self, at: Duration, event: SimEvent) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn schedule(&mut self, after: Duration, event: SimEvent) {
        self.schedule_at(self.now + after, event);
    }

    fn deliver_later(&mut self, after: Duration, event: Event) {
        self.schedule(after, SimEvent::ToSession(event));
    }

    fn http(status: u16, error_type: &str, message: &str, date: Option<&str>) -> Failure {
        Failure::Http(HttpFailure {
            status,
            error_type_header: Some(error_type.to_owned()),
            date: date.map(str::to_owned),
            body: Bytes::from(format!(r#"{{"message":"{message}"}}"#)),
        })
    }

    /// Authentication as the service sees it, for a request made now.
    fn auth_failure(&mut self) -> Option<Failure> {
        if self.skewed {
            return Some(Self::http(
                403,
                "InvalidSignatureException",
                "Signature expired: 20240101T000000Z is now earlier than 20240101T001000Z",
                Some("Mon, 01 Jan 2024 00:10:00 GMT"),
            ));
        }
        if self.now >= self.credentials_expire {
            self.stats.auth_rejections += 1;
            return Some(Self::http(
                403,
                "ExpiredTokenException",
                "The security token included in the request is expired",
                None,
            ));
        }
        if self.credential_generation < self.revoked_below {
            self.stats.auth_rejections += 1;
            return Some(Self::http(
                401,
                "NotAuthorizedException",
                "not authorized",
                None,
            ));
        }
        None
    }

    fn run(&mut self) {
        let mut iterations = 0u64;
        let mut same_instant_timeouts = 0;
        let mut shutdown_sent = false;
        let hard_end = self.script.end + mins(2);
        loop {
            iterations += 1;
            assert!(iterations < 5_000_000, "simulation does not converge");
            self.process_queue();
            if self.session.is_stopped() {
                break;
            }
            if !shutdown_sent && self.now >= self.script.end {
                shutdown_sent = true;
                self.queue.push_back(Event::Shutdown);
                continue;
            }
            let next_event = self.heap.peek().map(|Reverse((t, _))| *t);
            let next_timer = self
                .session
                .poll_timeout()
                .map(|at| at.saturating_duration_since(self.t0));
            let fire_timer = match (next_event, next_timer) {
                (Some(e), Some(t)) => t <= e,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (None, None) => panic!("nothing left to do at {:?}", self.now),
            };
            let at = if fire_timer { next_timer } else { next_event }.unwrap_or(self.now);
            let at = at.max(self.now);
            if !shutdown_sent && at > self.script.end {
                self.now = self.script.end;
                continue;
            }
            assert!(at <= hard_end, "session did not stop after shutdown");
            if at == self.now && fire_timer {
                same_instant_timeouts += 1;
                assert!(same_instant_timeouts < 20, "timer spins at {:?}", self.now);
            } else {
                same_instant_timeouts = 0;
            }
            self.now = at;
            if fire_timer {
                self.queue.push_back(Event::Timeout);
                continue;
            }
            let Some(Reverse((_, seq))) = self.heap.pop() else {
                continue;
            };
            let Some(event) = self.events.remove(&seq) else {
                continue;
            };
            self.on_sim_event(event);
        }
    }

    fn process_queue(&mut self) {
        loop {
            while let Some(event) = self.queue.pop_front() {
                let now = self.instant();
                self.session.handle(event, now);
                while let Some(action) = self.session.poll_action() {
                    self.execute(action);
                }
            }
            self.pump();
            if self.queue.is_empty() {
                break;
            }
        }
    }

    fn on_sim_event(&mut self, event: SimEvent) {
        match event {
            SimEvent::ToSession(event) => {
                match &event {
                    Event::Connected { conn } => {
                        if let Some(c) = self.conn.as_mut().filter(|c| c.id == *conn) {
                            c.opened_at = Some(self.now);
                        }
                    }
                    Event::ConnectFailed { conn, .. } | Event::ConnectionClosed { conn, .. }
                        if self.conn.as_ref().is_some_and(|c| c.id == *conn) =>
                    {
                        self.conn = None;
                    }
                    // A black-holed connection delivers nothing.
                    Event::Ack { conn, .. }
                        if any(&self.script.blackhole, self.now)
                            && self.conn.as_ref().is_some_and(|c| c.id == *conn) =>
                    {
                        return;
                    }
                    _ => {}
                }
                self.queue.push_back(event);
            }
            SimEvent::SendEnd { conn, k } => {
                let Some(c) = self.conn.as_mut().filter(|c| c.id == conn) else {
                    return;
                };
                if c.in_progress != Some(k) {
                    return;
                }
                c.in_progress = None;
                self.queue.push_back(Event::FragmentClosed {
                    conn,
                    timecode_ms: tc_of(k),
                });
                self.service_fragment_end(conn, k);
            }
            SimEvent::Pump => {
                self.pump_at = None;
            }
            SimEvent::Point(point) => match point {
                Point::DataDown => {
                    if let Some(c) = self.conn.take() {
                        self.queue.push_back(Event::ConnectionClosed {
                            conn: c.id,
                            failure: Some(Failure::Transport {
                                kind: TransportKind::Reset,
                                detail: "connection reset by peer".into(),
                            }),
                        });
                    }
                }
                Point::Revoke => self.revoked_below = self.credential_generation + 1,
                Point::Skew => self.skewed = true,
                Point::MoveEndpoint => self.endpoint_generation += 1,
            },
            SimEvent::CredentialsIssued => {
                self.refresh_in_flight = false;
                self.credential_generation += 1;
                self.credentials_expire = self.now + CREDENTIAL_LIFE;
                self.stats.refreshes += 1;
                let expires_at = Some(self.t0 + self.credentials_expire);
                self.queue
                    .push_back(Event::CredentialsUpdated { expires_at });
            }
        }
    }

    /// The driver: start the next fragment on the open connection when it can.
    fn pump(&mut self) {
        while self.terminal.contains_key(&tc_of(self.first_unfinished)) {
            self.first_unfinished += 1;
        }
        let now = self.now;
        let first_unfinished = self.first_unfinished;
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        if c.opened_at.is_none() || c.finishing || c.in_progress.is_some() {
            return;
        }
        let mut k = c.last_sent.map_or(first_unfinished, |last| last + 1);
        while self.terminal.contains_key(&tc_of(k)) {
            k += 1;
        }
        let starts = FRAGMENT * k as u32;
        if starts > now {
            if self.pump_at.is_none_or(|at| at > starts) {
                self.pump_at = Some(starts);
                self.schedule_at(starts, SimEvent::Pump);
            }
            return;
        }
        let conn = c.id;
        c.in_progress = Some(k);
        c.last_sent = Some(k);
        let ends = (FRAGMENT * (k as u32 + 1)).max(now + BACKLOG_SEND);
        self.queue.push_back(Event::FragmentStarted {
            conn,
            timecode_ms: tc_of(k),
        });
        self.schedule_at(ends, SimEvent::SendEnd { conn, k });
        self.service_fragment_start(conn, k);
    }

    fn service_fragment_start(&mut self, conn: ConnectionId, k: u64) {
        if any(&self.script.blackhole, self.now) {
            return;
        }
        let tc = tc_of(k);
        if let Some(&last) = self.service_last_tc.get(&conn)
            && tc <= last
        {
            self.stats.service_4004 += 1;
        }
        self.service_last_tc.insert(conn, tc);
        if let Some(opened) = self.conn.as_ref().and_then(|c| c.opened_at)
            && self.now - opened >= mins(45)
        {
            self.stats.service_4003 += 1;
        }
        self.deliver_later(
            Duration::from_millis(20),
            Event::Ack {
                conn,
                ack: ack(AckKind::Buffering, tc),
            },
        );
    }

    fn service_fragment_end(&mut self, conn: ConnectionId, k: u64) {
        if any(&self.script.blackhole, self.now) {
            return;
        }
        let tc = tc_of(k);
        let now = self.now;
        let injected = self
            .script
            .injections
            .iter_mut()
            .find(|i| i.times > 0 && now >= i.after && i.fragment.is_none_or(|f| f == k));
        if let Some(injection) = injected {
            injection.fragment = Some(k);
            injection.times -= 1;
            let code = injection.code;
            self.deliver_later(
                Duration::from_millis(40),
                Event::Ack {
                    conn,
                    ack: ack(AckKind::Error { code }, tc),
                },
            );
            self.deliver_later(
                Duration::from_millis(60),
                Event::ConnectionClosed {
                    conn,
                    failure: None,
                },
            );
            return;
        }
        self.deliver_later(
            Duration::from_millis(30),
            Event::Ack {
                conn,
                ack: ack(AckKind::Received, tc),
            },
        );
        self.deliver_later(
            Duration::from_millis(500),
            Event::Ack {
                conn,
                ack: ack(AckKind::Persisted, tc),
            },
        );
    }

    fn rate_check(window: &mut VecDeque<Duration>, now: Duration, what: &str) {
        while window.front().is_some_and(|&t| now - t >= secs(1)) {
            window.pop_front();
        }
        window.push_back(now);
        assert!(
            window.len() <= 5,
            "{what}: more than 5 calls in 1 s at {now:?}"
        );
    }

    fn execute(&mut self, action: Action) {
        let now = self.now;
        match action {
            Action::Call(request) => self.control_call(request),
            Action::Connect {
                conn,
                endpoint,
                start_from,
            } => {
                assert!(
                    self.conn.is_none(),
                    "Connect {conn} at {now:?} while {:?} is open",
                    self.conn.as_ref().map(|c| c.id)
                );
                Self::rate_check(&mut self.recent_connects, now, "PutMedia");
                let resolved = self.endpoint_resolved.get(&endpoint).copied();
                let resolved = resolved.unwrap_or_else(|| panic!("unknown endpoint {endpoint}"));
                assert!(
                    now - resolved < mins(40),
                    "endpoint {endpoint} used at age {:?}",
                    now - resolved
                );
                let StartFrom::FirstUnacknowledged { hint_timecode_ms } = start_from;
                if let Some(hint) = hint_timecode_ms {
                    assert!(
                        !self.terminal.contains_key(&hint),
                        "resume hint {hint} is already final"
                    );
                }
                self.stats.connects += 1;
                let generation = endpoint
                    .rsplit('-')
                    .next()
                    .and_then(|g| g.parse().ok())
                    .unwrap_or(0);
                self.conn = Some(SimConn {
                    id: conn,
                    endpoint_generation: generation,
                    opened_at: None,
                    finishing: false,
                    in_progress: None,
                    last_sent: None,
                });
                self.connect_outcome(conn, generation);
            }
            Action::FinishAfterFragment { conn, reason } => {
                if let Some(c) = self.conn.as_mut().filter(|c| c.id == conn) {
                    c.finishing = true;
                }
                if reason == DrainReason::Rotation {
                    self.stats.rotations += 1;
                }
            }
            Action::Disconnect { conn, reason } => {
                assert_ne!(
                    reason,
                    DisconnectReason::Superseded,
                    "the session lost track of {conn}"
                );
                let Some(c) = self.conn.take_if(|c| c.id == conn) else {
                    return;
                };
                if let DisconnectReason::Drained(_) = reason {
                    assert!(
                        c.in_progress.is_none(),
                        "{conn} drained mid-fragment {:?} at {now:?}",
                        c.in_progress
                    );
                }
                if let Some(opened) = c.opened_at {
                    let age = now - opened;
                    assert!(age < mins(45), "{conn} lived {age:?}");
                    self.stats.max_connection_age = self.stats.max_connection_age.max(age);
                }
                // The endpoint generation is only used to decide connect outcomes.
                let _ = c.endpoint_generation;
            }
            Action::RefreshCredentials => {
                assert!(
                    !self.refresh_in_flight,
                    "a second refresh while one is in flight"
                );
                if any(&self.script.control_down, now) {
                    self.stats.refresh_failures += 1;
                    self.deliver_later(
                        secs(1),
                        Event::CredentialsRefreshFailed {
                            detail: "credential endpoint unreachable".into(),
                        },
                    );
                } else {
                    self.refresh_in_flight = true;
                    self.schedule(Duration::from_millis(100), SimEvent::CredentialsIssued);
                }
            }
            Action::LearnClockSkew { server_date } => {
                assert_eq!(server_date, "Mon, 01 Jan 2024 00:10:00 GMT");
                self.skewed = false;
                self.stats.skew_learned += 1;
            }
            Action::AckFragment { timecode_ms, kind } => {
                assert_eq!(kind, AckDurability::Persisted);
                let previous = self.terminal.insert(timecode_ms, Ok(kind));
                assert!(previous.is_none(), "fragment {timecode_ms} final twice");
                self.stats.acked += 1;
            }
            Action::SkipFragment { timecode_ms, code } => {
                let previous = self.terminal.insert(timecode_ms, Err(code));
                assert!(previous.is_none(), "fragment {timecode_ms} final twice");
            }
            Action::Report(event) => self.on_report(event),
        }
    }

    fn on_report(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::BackoffScheduled { delay, .. } => {
                assert!(delay <= secs(10), "backoff {delay:?} above the 10 s cap");
                self.stats.backoffs += 1;
                self.stats.max_backoff = self.stats.max_backoff.max(delay);
            }
            SessionEvent::ConnectionStale { .. } => self.stats.stale += 1,
            SessionEvent::OperatorAttention { reason, .. } => {
                self.stats.operator_pauses.push(reason)
            }
            SessionEvent::DrainTimedOut { .. } => self.stats.drain_timeouts += 1,
            _ => {}
        }
    }

    fn connect_outcome(&mut self, conn: ConnectionId, generation: u64) {
        let now = self.now;
        if any(&self.script.blackhole, now) {
            return; // no answer at all: the session's connect timeout must handle it
        }
        if any(&self.script.data_down, now) {
            let failure = Failure::Transport {
                kind: TransportKind::Connect,
                detail: "connection refused".into(),
            };
            let delay = if any(&self.script.control_down, now) {
                secs(1)
            } else {
                Duration::from_millis(50)
            };
            self.deliver_later(delay, Event::ConnectFailed { conn, failure });
            return;
        }
        let failure = if any(&self.script.throttle, now) {
            Some(Self::http(
                400,
                "ConnectionLimitExceededException",
                "too many",
                None,
            ))
        } else if let Some(auth) = self.auth_failure() {
            Some(auth)
        } else if generation < self.endpoint_generation {
            Some(Self::http(
                400,
                "InvalidEndpointException",
                "wrong endpoint",
                None,
            ))
        } else {
            None
        };
        match failure {
            Some(failure) => self.deliver_later(
                Duration::from_millis(50),
                Event::ConnectFailed { conn, failure },
            ),
            None => self.deliver_later(Duration::from_millis(100), Event::Connected { conn }),
        }
    }

    fn control_call(&mut self, request: ControlRequest) {
        let now = self.now;
        let operation = request.operation();
        if operation == Operation::GetDataEndpoint {
            self.stats.get_endpoint_calls += 1;
            Self::rate_check(&mut self.recent_endpoint_calls, now, "GetDataEndpoint");
        }
        if any(&self.script.control_down, now) {
            let failure = Failure::Transport {
                kind: TransportKind::Dns,
                detail: "name resolution failed".into(),
            };
            self.deliver_later(secs(1), Event::ControlFailed { operation, failure });
            return;
        }
        let failure = if any(&self.script.throttle, now) {
            Some(Self::http(
                400,
                "ClientLimitExceededException",
                "slow down",
                None,
            ))
        } else {
            self.auth_failure()
        };
        if let Some(failure) = failure {
            self.deliver_later(
                Duration::from_millis(50),
                Event::ControlFailed { operation, failure },
            );
            return;
        }
        let response = match request {
            ControlRequest::Describe(_) => ControlResponse::Described(StreamInfo {
                stream_name: "front-door".into(),
                stream_arn: "arn:aws:kinesisvideo:us-west-2:1:stream/front-door/1".into(),
                status: StreamStatus::Active,
                data_retention_in_hours: 24,
                media_type: Some("video/h264".into()),
                kms_key_id: None,
                version: None,
            }),
            ControlRequest::Create(_) => panic!("the stream exists: no CreateStream expected"),
            ControlRequest::Tag(_) => ControlResponse::Tagged,
            ControlRequest::GetEndpoint(_) => {
                let endpoint = format!("https://s-{}", self.endpoint_generation);
                self.endpoint_resolved.insert(endpoint.clone(), now);
                ControlResponse::Endpoint {
                    data_endpoint: endpoint,
                }
            }
        };
        self.deliver_later(Duration::from_millis(50), Event::ControlResponse(response));
    }
}

fn ack(kind: AckKind, tc: u64) -> AckEvent {
    AckEvent {
        kind,
        fragment_timecode_ms: Some(tc),
        fragment_number: Some(format!("9134385233318{tc}")),
    }
}

fn six_hour_script() -> Script {
    Script {
        data_down: vec![
            Window::new(mins(15), secs(30)),
            Window::new(mins(60), mins(5)),
            Window::new(mins(120), mins(60)),
        ],
        control_down: vec![
            Window::new(mins(60), mins(5)),
            Window::new(mins(120), mins(60)),
        ],
        blackhole: vec![Window::new(mins(25), secs(45))],
        throttle: vec![
            Window::new(mins(210), secs(30)),
            Window::new(mins(300), secs(10)),
        ],
        revoke_at: vec![mins(190)],
        skew_at: vec![mins(225)],
        move_endpoint_at: vec![mins(280)],
        injections: vec![
            Injection {
                after: mins(240),
                code: AckErrorCode::InvalidMkvData,
                times: 1,
                fragment: None,
            },
            Injection {
                after: mins(242),
                code: AckErrorCode::InternalError,
                times: 2,
                fragment: None,
            },
            Injection {
                after: mins(244),
                code: AckErrorCode::FragmentMetadataLimitReached,
                times: 1,
                fragment: None,
            },
            Injection {
                after: mins(246),
                code: AckErrorCode::StreamReadError,
                times: 5,
                fragment: None,
            },
            Injection {
                after: mins(250),
                code: AckErrorCode::MaxConnectionDurationReached,
                times: 1,
                fragment: None,
            },
            Injection {
                after: mins(255),
                code: AckErrorCode::StreamDeleted,
                times: 1,
                fragment: None,
            },
            Injection {
                after: mins(260),
                code: AckErrorCode::KmsKeyAccessDenied,
                times: 1,
                fragment: None,
            },
        ],
        end: mins(360),
    }
}

fn run_six_hours(seed: u64) -> Sim {
    let mut sim = Sim::new(six_hour_script(), seed);
    sim.run();
    sim
}

#[test]
fn six_hours_of_outages_rotations_and_errors() {
    for seed in [1, 2, 3] {
        let wall = Instant::now();
        let sim = run_six_hours(seed);
        let stats = &sim.stats;
        eprintln!("seed {seed}: {:?} wall, {stats:?}", wall.elapsed());

        assert_eq!(sim.session.state(), StateKind::Stopped);
        assert_eq!(stats.service_4003, 0, "a connection outlived 45 min");
        assert_eq!(
            stats.service_4004, 0,
            "fragments overlapped inside a connection"
        );
        assert!(
            stats.max_connection_age < mins(42),
            "{:?}",
            stats.max_connection_age
        );
        assert!(stats.max_backoff <= secs(10));

        // Nothing lost: every fragment that was complete well before the shutdown is final,
        // exactly once (checked as it happened).
        let last_complete = sim.script.end.as_secs() / 2 - 5;
        for k in 0..last_complete {
            assert!(
                sim.terminal.contains_key(&tc_of(k)),
                "seed {seed}: fragment {k} ({}) never acked or skipped",
                tc_of(k)
            );
        }
        // Skipped: exactly the fragments whose content the service rejected.
        let skipped: Vec<(u64, AckErrorCode)> = sim
            .terminal
            .iter()
            .filter_map(|(&tc, r)| r.err().map(|code| (k_of(tc), code)))
            .collect();
        let expected: Vec<(u64, AckErrorCode)> = sim
            .script
            .injections
            .iter()
            .filter(|i| {
                matches!(
                    i.code,
                    AckErrorCode::InvalidMkvData
                        | AckErrorCode::FragmentMetadataLimitReached
                        | AckErrorCode::StreamReadError
                )
            })
            .map(|i| (i.fragment.expect("injection used"), i.code))
            .collect();
        assert_eq!(skipped, expected, "seed {seed}");
        for injection in &sim.script.injections {
            assert_eq!(injection.times, 0, "{injection:?} not fully used");
        }

        // Rotations: connections up for 40+ minutes were rotated, not killed by the service.
        assert!(stats.rotations >= 4, "rotations {}", stats.rotations);
        // The black hole was detected by staleness.
        assert!(stats.stale >= 1);
        // Clock skew learned once, credentials refreshed about hourly (and after the outage).
        assert_eq!(stats.skew_learned, 1);
        assert!(stats.refreshes >= 6, "refreshes {}", stats.refreshes);
        assert!(stats.refresh_failures >= 1);
        // The only operator pause is the KMS error.
        assert_eq!(
            stats.operator_pauses.len(),
            1,
            "{:?}",
            stats.operator_pauses
        );
        assert!(
            stats.operator_pauses[0].contains("KMS"),
            "{:?}",
            stats.operator_pauses
        );
        assert_eq!(stats.drain_timeouts, 0);
    }
}

#[test]
fn same_seed_same_run() {
    let a = run_six_hours(42);
    let b = run_six_hours(42);
    assert_eq!(a.terminal, b.terminal);
    assert_eq!(a.stats.connects, b.stats.connects);
    assert_eq!(a.stats.backoffs, b.stats.backoffs);
}

#[test]
fn a_quiet_day_rotates_every_forty_minutes() {
    let script = Script {
        data_down: vec![],
        control_down: vec![],
        blackhole: vec![],
        throttle: vec![],
        revoke_at: vec![],
        skew_at: vec![],
        move_endpoint_at: vec![],
        injections: vec![],
        end: mins(8 * 60),
    };
    let mut sim = Sim::new(script, 9);
    sim.run();
    let stats = &sim.stats;
    // 8 h / (40 min + ≤ 1 min jitter + drain) is 11 rotations; connections signed with
    // credentials that expire sooner rotate before them, which adds up to one per hour.
    assert!((11..=19).contains(&stats.rotations), "{stats:?}");
    assert_eq!(stats.connects, stats.rotations + 1, "{stats:?}");
    assert_eq!(stats.backoffs, 0, "{stats:?}");
    assert_eq!(
        stats.auth_rejections, 0,
        "credentials refreshed late: {stats:?}"
    );
    assert!(sim.terminal.values().all(Result::is_ok));
    assert!(
        stats.max_connection_age >= mins(40) && stats.max_connection_age <= mins(41) + secs(5),
        "{stats:?}"
    );
    // One endpoint per connection at most: each rotation finds the endpoint 40 min old.
    assert!(stats.get_endpoint_calls <= stats.connects);
}
