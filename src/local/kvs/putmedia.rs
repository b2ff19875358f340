//! PutMedia: the acknowledgement state machine of one connection ([`Session`], sans-I/O) and
//! the task that drives it with the request body, the response body and timers.
//!
//! The session takes body chunks, the end of the body, store results and timer ticks, each
//! with the time ([`Now`]), and returns [`Action`]s in the order they must happen:
//! - BUFFERING when a fragment's Cluster Timecode arrives, RECEIVED once the whole fragment
//!   arrived, passed the rules and was stored, PERSISTED `persist_delay` later (never on a
//!   stream with no retention: there RECEIVED is the last ACK), IDLE every
//!   `idle_ack_interval` without data;
//! - one ERROR for the first broken rule (or an injected code, or 4003 past the connection
//!   limit, or 5001 when storing fails), then the response ends, as the service closes the
//!   connection after an ERROR;
//! - the response ends after the body ended and every PERSISTED was sent, or after
//!   `idle_timeout` without data. When it ends before the body did, the driver reads and
//!   discards the body for half a second more, so the end of the response is not lost to a
//!   reset connection.
//!
//! Invariants: ACKs for a fragment are in the order BUFFERING, RECEIVED, PERSISTED and never
//! interleave wrongly with the next fragment's (the session pauses after a Store action until
//! [`Session::on_stored`]); every fragment that got BUFFERING yields exactly one
//! [`FragmentRecord`], whatever ends the connection; ERROR ACKs are sent even when the producer
//! asked for no acknowledgements.

use super::Shared;
use super::ack::{Ack, AckErrorCode, AckEventType};
use super::control::FragmentNumbers;
use super::faults::FaultPlan;
use super::mkv_check::{CheckEvent, CheckLimits, CompletedFragment, MkvChecker, StreamHeader};
use super::store::{FragmentRecord, RecordError, TimecodeType};
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::channel::Sender;
use hyper::body::Incoming;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the body is still read (and discarded) after the response ended.
const LINGER: Duration = Duration::from_millis(500);
/// How long a dropped connection waits for its last ACKs to reach the client.
const DROP_FLUSH: Duration = Duration::from_millis(50);

/// The time, twice: monotonic for timers, the endpoint's (possibly skewed) wall clock for
/// records.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic.
    pub instant: Instant,
    /// Wall clock.
    pub wall: SystemTime,
}

impl Now {
    fn wall_ms(&self) -> u64 {
        self.wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// What one connection was asked for and is allowed.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Stream name.
    pub stream: String,
    /// Connection counter (for records).
    pub connection: u64,
    /// `x-amzn-fragment-acknowledgment-required` (ERROR ACKs are sent regardless).
    pub ack_required: bool,
    /// The stream has retention: PERSISTED follows RECEIVED.
    pub persist: bool,
    /// RECEIVED → PERSISTED.
    pub persist_delay: Duration,
    /// IDLE every this long without data.
    pub idle_ack_interval: Duration,
    /// End the response after this long without data.
    pub idle_timeout: Duration,
    /// A fragment starting later than this after the connection opened gets ERROR 4003.
    pub max_connection_duration: Duration,
    /// `x-amzn-fragment-timecode-type`.
    pub timecode_type: TimecodeType,
    /// `x-amzn-producer-start-timestamp`, ms since the epoch (the connection's arrival when
    /// the header is absent).
    pub producer_start_ms: u64,
    /// Fragment rules.
    pub limits: CheckLimits,
}

/// Faults the session consults at fragment boundaries.
pub trait SessionFaults {
    /// A fragment started: an injected ERROR code for it.
    fn error_ack(&mut self) -> Option<u16>;
    /// A fragment started: cut the connection inside it.
    fn drop_mid_fragment(&mut self) -> bool;
    /// A fragment was received: stall this long.
    fn stall_after_fragment(&mut self) -> Option<Duration>;
}

impl SessionFaults for FaultPlan {
    fn error_ack(&mut self) -> Option<u16> {
        self.take_error_ack()
    }
    fn drop_mid_fragment(&mut self) -> bool {
        self.take_drop_mid_fragment()
    }
    fn stall_after_fragment(&mut self) -> Option<Duration> {
        self.take_stall_after_fragment()
    }
}

/// A fragment to write before acknowledging it RECEIVED.
#[derive(Debug, Clone)]
pub struct StoreRequest {
    /// Fragment index in the connection.
    pub index: u64,
    /// The connection's stream header.
    pub header: Arc<StreamHeader>,
    /// The fragment.
    pub fragment: Box<CompletedFragment>,
    /// The Cluster Timecode to write (absolute).
    pub stored_timecode: u64,
}

/// What the driver must do, in order.
#[derive(Debug, Clone)]
pub enum Action {
    /// Write this ACK line on the response.
    Send(Ack),
    /// Store the fragment, then call [`Session::on_stored`].
    Store(StoreRequest),
    /// Log this record.
    Record(Box<FragmentRecord>),
    /// Stop reading and acknowledging for this long, then call [`Session::resume`].
    Stall(Duration),
    /// Cut the connection (fault): abort the response, abandon the request.
    Drop,
    /// End the response normally.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Receiving,
    Storing,
    Persisting(Instant),
}

#[derive(Debug)]
struct Tracked {
    phase: Phase,
    record: FragmentRecord,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The body is open.
    Receiving,
    /// The body ended; PERSISTED ACKs may be due.
    Draining,
    /// The response ended (or is to end).
    Closed,
}

/// The acknowledgement state machine of one PutMedia connection.
#[derive(Debug)]
pub struct Session {
    settings: SessionSettings,
    numbers: Arc<FragmentNumbers>,
    checker: MkvChecker,
    pending: VecDeque<CheckEvent>,
    scratch: Vec<CheckEvent>,
    awaiting_store: bool,
    header: Option<Arc<StreamHeader>>,
    tracked: VecDeque<Tracked>,
    state: State,
    opened: Instant,
    last_data: Instant,
    last_idle: Option<Instant>,
    received_fragments: u64,
}

impl Session {
    /// A session for a connection opened at `now`.
    pub fn new(settings: SessionSettings, numbers: Arc<FragmentNumbers>, now: Now) -> Self {
        let checker = MkvChecker::new(settings.limits.clone());
        Self {
            settings,
            numbers,
            checker,
            pending: VecDeque::new(),
            scratch: Vec::new(),
            awaiting_store: false,
            header: None,
            tracked: VecDeque::new(),
            state: State::Receiving,
            opened: now.instant,
            last_data: now.instant,
            last_idle: None,
            received_fragments: 0,
        }
    }

    /// True once the response ended or is to end.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Fragments acknowledged RECEIVED on this connection.
    pub fn received_fragments(&self) -> u64 {
        self.received_fragments
    }

    /// A chunk of the request body arrived.
    pub fn on_data(
        &mut self,
        now: Now,
        chunk: Bytes,
        faults: &mut dyn SessionFaults,
        out: &mut Vec<Action>,
    ) {
        if self.state != State::Receiving {
            return;
        }
        self.last_data = now.instant;
        self.checker.feed(chunk, &mut self.scratch);
        self.pending.extend(self.scratch.drain(..));
        self.pump(now, faults, out);
    }

    /// The request body ended.
    pub fn on_end(&mut self, now: Now, faults: &mut dyn SessionFaults, out: &mut Vec<Action>) {
        if self.state != State::Receiving {
            return;
        }
        self.checker.finish(&mut self.scratch);
        self.pending.extend(self.scratch.drain(..));
        self.state = State::Draining;
        self.pump(now, faults, out);
    }

    /// The fragment `index` was stored in `file` (or storing failed).
    pub fn on_stored(
        &mut self,
        now: Now,
        index: u64,
        result: Result<String, String>,
        faults: &mut dyn SessionFaults,
        out: &mut Vec<Action>,
    ) {
        self.awaiting_store = false;
        if self.state == State::Closed {
            return;
        }
        let Some(position) = self.tracked.iter().position(|t| t.record.index == index) else {
            return;
        };
        match result {
            Ok(file) => {
                let ack_required = self.settings.ack_required;
                let persist = self.settings.persist;
                let due = now.instant + self.settings.persist_delay;
                if let Some(tracked) = self.tracked.get_mut(position) {
                    tracked.record.stored = true;
                    tracked.record.file = Some(file);
                    if ack_required {
                        out.push(Action::Send(Ack::fragment(
                            AckEventType::Received,
                            tracked.record.timecode,
                            &tracked.record.fragment_number,
                        )));
                        tracked.record.acks.push(AckEventType::Received);
                    }
                    tracked.phase = Phase::Persisting(due);
                }
                self.received_fragments += 1;
                if !(persist && ack_required)
                    && let Some(tracked) = self.tracked.remove(position)
                {
                    out.push(Action::Record(Box::new(tracked.record)));
                }
                if let Some(stall) = faults.stall_after_fragment() {
                    out.push(Action::Stall(stall));
                }
            }
            Err(problem) => {
                if let Some(tracked) = self.tracked.get_mut(position) {
                    tracked.phase = Phase::Receiving;
                }
                self.fail(AckErrorCode::ArchivalError, Some(index), problem, out);
                return;
            }
        }
        self.pump(now, faults, out);
    }

    /// A stall ended: idle timers restart now.
    pub fn resume(&mut self, now: Now) {
        self.last_data = now.instant;
        self.last_idle = None;
    }

    /// When [`Session::on_timer`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut deadline: Option<Instant> = None;
        let mut consider = |at: Instant| {
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
        };
        for tracked in &self.tracked {
            if let Phase::Persisting(due) = tracked.phase {
                consider(due);
            }
        }
        if self.state == State::Receiving {
            consider(self.last_data + self.settings.idle_timeout);
            if self.settings.ack_required {
                let since = self
                    .last_idle
                    .map_or(self.last_data, |i| i.max(self.last_data));
                consider(since + self.settings.idle_ack_interval);
            }
        }
        deadline
    }

    /// Timers: PERSISTED ACKs, IDLE, the idle timeout.
    pub fn on_timer(&mut self, now: Now, out: &mut Vec<Action>) {
        if self.state == State::Closed {
            return;
        }
        while let Some(position) = self
            .tracked
            .iter()
            .position(|t| matches!(t.phase, Phase::Persisting(due) if due <= now.instant))
        {
            if let Some(mut tracked) = self.tracked.remove(position) {
                out.push(Action::Send(Ack::fragment(
                    AckEventType::Persisted,
                    tracked.record.timecode,
                    &tracked.record.fragment_number,
                )));
                tracked.record.acks.push(AckEventType::Persisted);
                out.push(Action::Record(Box::new(tracked.record)));
            }
        }
        if self.state == State::Receiving {
            if now.instant >= self.last_data + self.settings.idle_timeout {
                tracing::info!(stream = %self.settings.stream, "PutMedia idle timeout: closing");
                self.close(out);
                return;
            }
            let since = self
                .last_idle
                .map_or(self.last_data, |i| i.max(self.last_data));
            if self.settings.ack_required && now.instant >= since + self.settings.idle_ack_interval
            {
                out.push(Action::Send(Ack::idle()));
                self.last_idle = Some(now.instant);
            }
        }
        self.close_if_drained(out);
    }

    /// The connection ended under the session (client gone, shutdown): records for what is
    /// open.
    pub fn abandon(&mut self, out: &mut Vec<Action>) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.flush_records(out);
    }

    /// Cut the connection (a fault that is not the session's own).
    pub fn drop_connection(&mut self, out: &mut Vec<Action>) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.flush_records(out);
        out.push(Action::Drop);
    }

    fn flush_records(&mut self, out: &mut Vec<Action>) {
        for tracked in self.tracked.drain(..) {
            out.push(Action::Record(Box::new(tracked.record)));
        }
        self.pending.clear();
    }

    fn close(&mut self, out: &mut Vec<Action>) {
        self.state = State::Closed;
        self.flush_records(out);
        out.push(Action::Close);
    }

    fn close_if_drained(&mut self, out: &mut Vec<Action>) {
        if self.state == State::Draining
            && self.pending.is_empty()
            && !self.awaiting_store
            && self.tracked.is_empty()
        {
            self.close(out);
        }
    }

    /// Sends ERROR for the fragment `index` (if any) and ends the connection.
    fn fail(
        &mut self,
        code: AckErrorCode,
        index: Option<u64>,
        message: String,
        out: &mut Vec<Action>,
    ) {
        let tracked = index.and_then(|i| self.tracked.iter_mut().find(|t| t.record.index == i));
        let (timecode, number) = match tracked {
            Some(tracked) => {
                tracked.record.acks.push(AckEventType::Error);
                tracked.record.error = Some(RecordError {
                    id: code.id(),
                    code: code.name().to_owned(),
                    message: message.clone(),
                });
                (
                    Some(tracked.record.timecode),
                    Some(tracked.record.fragment_number.clone()),
                )
            }
            None => (None, None),
        };
        tracing::info!(stream = %self.settings.stream, code = code.id(), %message, "PutMedia ERROR ACK");
        out.push(Action::Send(Ack::error(code, timecode, number.as_deref())));
        self.close(out);
    }

    fn pump(&mut self, now: Now, faults: &mut dyn SessionFaults, out: &mut Vec<Action>) {
        while !self.awaiting_store && self.state != State::Closed {
            let Some(event) = self.pending.pop_front() else {
                break;
            };
            self.handle(event, now, faults, out);
        }
        self.close_if_drained(out);
    }

    fn producer_timestamp_ms(&self, timecode: u64) -> u64 {
        let scale = self
            .header
            .as_ref()
            .map_or(1_000_000, |h| h.timecode_scale_ns);
        let ms =
            u64::try_from(u128::from(timecode) * u128::from(scale) / 1_000_000).unwrap_or(u64::MAX);
        match self.settings.timecode_type {
            TimecodeType::Absolute => ms,
            TimecodeType::Relative => self.settings.producer_start_ms.saturating_add(ms),
        }
    }

    fn stored_timecode(&self, timecode: u64) -> u64 {
        match self.settings.timecode_type {
            TimecodeType::Absolute => timecode,
            TimecodeType::Relative => {
                let scale = self
                    .header
                    .as_ref()
                    .map_or(1_000_000, |h| h.timecode_scale_ns)
                    .max(1);
                let start =
                    u128::from(self.settings.producer_start_ms) * 1_000_000 / u128::from(scale);
                u64::try_from(start)
                    .unwrap_or(u64::MAX)
                    .saturating_add(timecode)
            }
        }
    }

    fn handle(
        &mut self,
        event: CheckEvent,
        now: Now,
        faults: &mut dyn SessionFaults,
        out: &mut Vec<Action>,
    ) {
        match event {
            CheckEvent::Header(header) => self.header = Some(header),
            CheckEvent::FragmentStart { index, timecode } => {
                let number = self.numbers.next();
                let mut record = FragmentRecord {
                    stream: self.settings.stream.clone(),
                    connection: self.settings.connection,
                    index,
                    fragment_number: number,
                    timecode,
                    timecode_type: self.settings.timecode_type,
                    producer_timestamp_ms: self.producer_timestamp_ms(timecode),
                    stored_timecode: None,
                    first_timecode: 0,
                    last_timecode: 0,
                    frames: BTreeMap::new(),
                    key_frames: BTreeMap::new(),
                    bytes: 0,
                    tags: Vec::new(),
                    acks: Vec::new(),
                    error: None,
                    stored: false,
                    file: None,
                    received_at_ms: now.wall_ms(),
                };
                if self.settings.ack_required {
                    out.push(Action::Send(Ack::fragment(
                        AckEventType::Buffering,
                        timecode,
                        &record.fragment_number,
                    )));
                    record.acks.push(AckEventType::Buffering);
                }
                self.tracked.push_back(Tracked {
                    phase: Phase::Receiving,
                    record,
                });
                let age = now.instant.saturating_duration_since(self.opened);
                if age > self.settings.max_connection_duration {
                    let message = format!(
                        "the connection is {} s old, past the {} s limit",
                        age.as_secs(),
                        self.settings.max_connection_duration.as_secs()
                    );
                    self.fail(
                        AckErrorCode::MaxConnectionDurationReached,
                        Some(index),
                        message,
                        out,
                    );
                } else if let Some(code) = faults.error_ack() {
                    self.fail(
                        AckErrorCode::from_id(u32::from(code)),
                        Some(index),
                        "injected".to_owned(),
                        out,
                    );
                } else if faults.drop_mid_fragment() {
                    tracing::info!(stream = %self.settings.stream, index, "fault: dropping the connection mid-fragment");
                    self.drop_connection(out);
                }
            }
            CheckEvent::FragmentComplete(fragment) => {
                let Some(header) = self.header.clone() else {
                    self.fail(
                        AckErrorCode::InternalError,
                        Some(fragment.index),
                        "a fragment completed before the header".to_owned(),
                        out,
                    );
                    return;
                };
                let stored_timecode = self.stored_timecode(fragment.timecode);
                let Some(tracked) = self
                    .tracked
                    .iter_mut()
                    .find(|t| t.record.index == fragment.index)
                else {
                    return;
                };
                let record = &mut tracked.record;
                record.first_timecode = fragment.first_timecode;
                record.last_timecode = fragment.last_timecode;
                record.frames = fragment
                    .frames
                    .iter()
                    .map(|t| (t.track, t.frames))
                    .collect();
                record.key_frames = fragment
                    .frames
                    .iter()
                    .map(|t| (t.track, t.key_frames))
                    .collect();
                record.bytes = fragment.bytes;
                record.tags = fragment.tags.clone();
                record.stored_timecode = Some(stored_timecode);
                tracked.phase = Phase::Storing;
                self.awaiting_store = true;
                out.push(Action::Store(StoreRequest {
                    index: fragment.index,
                    header,
                    fragment,
                    stored_timecode,
                }));
            }
            CheckEvent::Error(error) => {
                let index = self
                    .tracked
                    .iter()
                    .rev()
                    .find(|t| {
                        t.phase == Phase::Receiving && Some(t.record.timecode) == error.timecode
                    })
                    .map(|t| t.record.index);
                self.fail(error.code, index, error.to_string(), out);
            }
        }
    }
}

/// Runs one PutMedia connection until its response ends. `guard` (the stream's "connection
/// open" mark) is released before the response ends, so a client that saw the end may
/// reconnect at once.
pub(crate) async fn drive<G>(
    mut session: Session,
    mut body: Incoming,
    mut tx: Sender<Bytes, std::io::Error>,
    shared: Arc<Shared>,
    guard: G,
) {
    let mut shutdown = shared.shutdown_signal();
    let mut queue: VecDeque<Action> = VecDeque::new();
    let mut scratch = Vec::new();
    let mut body_done = false;
    let stream = session.settings.stream.clone();
    if let Some(stall) = shared.with_faults(FaultPlan::take_stall_now) {
        queue.push_back(Action::Stall(stall));
    }
    loop {
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send(ack) => {
                    if tx.send_data(Bytes::from(ack.to_line())).await.is_err() {
                        // The client is gone: keep only the records.
                        session.abandon(&mut scratch);
                        queue.retain(|a| matches!(a, Action::Record(_)));
                        queue.extend(scratch.drain(..));
                    }
                }
                Action::Store(request) => {
                    let store = shared.store_for(&stream);
                    let index = request.index;
                    let result = tokio::task::spawn_blocking(move || {
                        let mut store = store
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        store
                            .append(&request.header, &request.fragment, request.stored_timecode)
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("the storing task failed: {e}")));
                    if let Err(problem) = &result {
                        tracing::warn!(%stream, %problem, "local endpoint could not store a fragment");
                    }
                    let now = shared.now();
                    shared.with_faults(|faults| {
                        session.on_stored(now, index, result, faults, &mut scratch)
                    });
                    queue.extend(scratch.drain(..));
                }
                Action::Record(record) => shared.record(*record),
                Action::Stall(duration) => {
                    tracing::info!(%stream, ?duration, "fault: stalling the PutMedia connection");
                    tokio::select! {
                        _ = tokio::time::sleep(duration) => {}
                        _ = shutdown.changed() => {}
                    }
                    session.resume(shared.now());
                }
                Action::Drop => {
                    while let Some(Action::Record(record)) = queue.pop_front() {
                        shared.record(*record);
                    }
                    // The ACKs already queued leave first: closing a socket with unread input
                    // resets it, and the client would lose them.
                    tokio::time::sleep(DROP_FLUSH).await;
                    drop(guard);
                    tx.abort(std::io::Error::other("fault injection: connection dropped"));
                    return;
                }
                Action::Close => {
                    while let Some(Action::Record(record)) = queue.pop_front() {
                        shared.record(*record);
                    }
                    drop(guard);
                    drop(tx);
                    if !body_done {
                        linger(&mut body, &mut shutdown).await;
                    }
                    return;
                }
            }
        }
        if session.is_closed() {
            drop(guard);
            drop(tx);
            return;
        }
        let deadline = session.next_deadline().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                session.abandon(&mut scratch);
                queue.extend(scratch.drain(..));
                queue.push_back(Action::Close);
            }
            frame = body.frame(), if !body_done => {
                let now = shared.now();
                match frame {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            shared.with_faults(|faults| {
                                match faults.take_body_bytes(data.len()) {
                                    Some(keep) => {
                                        tracing::info!(%stream, "fault: dropping the connection after a byte count");
                                        session.on_data(now, data.slice(..keep), faults, &mut scratch);
                                        session.drop_connection(&mut scratch);
                                    }
                                    None => session.on_data(now, data, faults, &mut scratch),
                                }
                                if let Some(stall) = faults.take_stall_now() {
                                    scratch.push(Action::Stall(stall));
                                }
                            });
                        }
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%stream, %error, "PutMedia request body ended with an error");
                        session.abandon(&mut scratch);
                        scratch.push(Action::Close);
                    }
                    None => {
                        body_done = true;
                        shared.with_faults(|faults| session.on_end(now, faults, &mut scratch));
                    }
                }
                queue.extend(scratch.drain(..));
            }
            _ = sleep_until_option(deadline), if deadline.is_some() => {
                session.on_timer(shared.now(), &mut scratch);
                queue.extend(scratch.drain(..));
            }
        }
    }
}

/// After the response ended with the body still coming: reads and discards the body for a
/// moment, so the socket is not closed with unread input (which resets it and can destroy the
/// last ACKs and the end of the response before the client reads them).
async fn linger(body: &mut Incoming, shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let deadline = tokio::time::sleep(LINGER);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = shutdown.changed() => return,
            frame = body.frame() => match frame {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
        }
    }
}

async fn sleep_until_option(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::kvs::mkv_check::END_OF_FRAGMENT;
    use crate::mkv::ebml::{EbmlWriter, id};

    #[derive(Default)]
    struct Faults {
        error_ack: Option<u16>,
        drop_mid: bool,
        stall: Option<Duration>,
    }

    impl SessionFaults for Faults {
        fn error_ack(&mut self) -> Option<u16> {
            self.error_ack.take()
        }
        fn drop_mid_fragment(&mut self) -> bool {
            std::mem::take(&mut self.drop_mid)
        }
        fn stall_after_fragment(&mut self) -> Option<Duration> {
            self.stall.take()
        }
    }

    fn settings(persist: bool) -> SessionSettings {
        SessionSettings {
            stream: "cam".into(),
            connection: 1,
            ack_required: true,
            persist,
            persist_delay: Duration::from_millis(100),
            idle_ack_interval: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            max_connection_duration: Duration::from_secs(45 * 60),
            timecode_type: TimecodeType::Relative,
            producer_start_ms: 1_700_000_000_000,
            limits: CheckLimits::default(),
        }
    }

    fn header() -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = EbmlWriter::new(&mut buf);
        w.begin(id::EBML).unwrap();
        w.string(id::DOC_TYPE, "matroska").unwrap();
        w.end().unwrap();
        w.begin_unknown(id::SEGMENT);
        w.begin(id::INFO).unwrap();
        w.uint(id::TIMECODE_SCALE, 1_000_000).unwrap();
        w.end().unwrap();
        w.begin(id::TRACKS).unwrap();
        w.begin(id::TRACK_ENTRY).unwrap();
        w.uint(id::TRACK_NUMBER, 1).unwrap();
        w.string(id::CODEC_ID, "V_MPEG4/ISO/AVC").unwrap();
        w.end().unwrap();
        w.end().unwrap();
        buf
    }

    fn cluster(timecode: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = EbmlWriter::new(&mut buf);
        w.begin_unknown(id::CLUSTER);
        w.uint(id::TIMECODE, timecode).unwrap();
        w.binary(id::SIMPLE_BLOCK, &[0x81, 0, 0, 0x80, 1, 2, 3])
            .unwrap();
        w.binary(id::SIMPLE_BLOCK, &[0x81, 0, 33, 0, 4, 5]).unwrap();
        buf
    }

    fn eos() -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = EbmlWriter::new(&mut buf);
        w.begin(id::TAGS).unwrap();
        w.begin(id::TAG).unwrap();
        w.begin(id::SIMPLE_TAG).unwrap();
        w.string(id::TAG_NAME, END_OF_FRAGMENT).unwrap();
        w.string(id::TAG_STRING, "").unwrap();
        w.end().unwrap();
        w.end().unwrap();
        w.end().unwrap();
        buf
    }

    struct Harness {
        session: Session,
        faults: Faults,
        t0: Instant,
        stored: Vec<StoreRequest>,
        log: Vec<String>,
        records: Vec<FragmentRecord>,
    }

    impl Harness {
        fn new(persist: bool) -> Self {
            let t0 = Instant::now();
            Self {
                session: Session::new(
                    settings(persist),
                    Arc::new(FragmentNumbers::default()),
                    Self::at(t0, 0),
                ),
                faults: Faults::default(),
                t0,
                stored: Vec::new(),
                log: Vec::new(),
                records: Vec::new(),
            }
        }

        fn at(t0: Instant, ms: u64) -> Now {
            Now {
                instant: t0 + Duration::from_millis(ms),
                wall: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms),
            }
        }

        /// Runs actions like the driver does (storing always succeeds).
        fn run(&mut self, ms: u64, mut actions: Vec<Action>) {
            let now = Self::at(self.t0, ms);
            let mut queue: VecDeque<Action> = actions.drain(..).collect();
            while let Some(action) = queue.pop_front() {
                match action {
                    Action::Send(ack) => {
                        let line = ack.to_line();
                        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                        let mut text = v["EventType"].as_str().unwrap().to_owned();
                        if let Some(tc) = v.get("FragmentTimecode") {
                            text += &format!(" {tc}");
                        }
                        if let Some(id) = v.get("ErrorId") {
                            text += &format!(" {id}");
                        }
                        self.log.push(text);
                    }
                    Action::Store(request) => {
                        let index = request.index;
                        self.log.push(format!("store {}", request.stored_timecode));
                        self.stored.push(request);
                        let mut out = Vec::new();
                        self.session.on_stored(
                            now,
                            index,
                            Ok("cam.mkv".into()),
                            &mut self.faults,
                            &mut out,
                        );
                        queue.extend(out);
                    }
                    Action::Record(record) => self.records.push(*record),
                    Action::Stall(d) => self.log.push(format!("stall {}", d.as_millis())),
                    Action::Drop => self.log.push("drop".into()),
                    Action::Close => self.log.push("close".into()),
                }
            }
        }

        fn data(&mut self, ms: u64, bytes: &[u8]) {
            let mut out = Vec::new();
            self.session.on_data(
                Self::at(self.t0, ms),
                Bytes::copy_from_slice(bytes),
                &mut self.faults,
                &mut out,
            );
            self.run(ms, out);
        }

        fn end(&mut self, ms: u64) {
            let mut out = Vec::new();
            self.session
                .on_end(Self::at(self.t0, ms), &mut self.faults, &mut out);
            self.run(ms, out);
        }

        fn tick(&mut self, ms: u64) {
            let mut out = Vec::new();
            self.session.on_timer(Self::at(self.t0, ms), &mut out);
            self.run(ms, out);
        }
    }

    #[test]
    fn buffering_received_persisted_in_order_and_close_after_the_last() {
        let mut h = Harness::new(true);
        h.data(0, &header());
        h.data(10, &cluster(0));
        h.data(20, &cluster(1000));
        assert_eq!(
            h.log,
            [
                "BUFFERING 0",
                "store 1700000000000",
                "RECEIVED 0",
                "BUFFERING 1000"
            ]
        );
        assert_eq!(
            h.session.next_deadline(),
            Some(h.t0 + Duration::from_millis(120))
        );
        h.tick(120);
        assert_eq!(h.log.last().map(String::as_str), Some("PERSISTED 0"));
        h.data(130, &eos());
        h.end(140);
        h.tick(240);
        assert_eq!(
            h.log[5..],
            [
                "store 1700000001000",
                "RECEIVED 1000",
                "PERSISTED 1000",
                "close"
            ]
        );
        assert_eq!(h.records.len(), 2);
        assert_eq!(
            h.records[1].acks,
            [
                AckEventType::Buffering,
                AckEventType::Received,
                AckEventType::Persisted
            ]
        );
        assert_eq!(
            h.records[1].tags,
            [(END_OF_FRAGMENT.to_owned(), String::new())]
        );
        assert_eq!(h.records[0].frames, BTreeMap::from([(1, 2)]));
        assert_eq!(h.records[0].producer_timestamp_ms, 1_700_000_000_000);
        assert!(h.session.is_closed());
    }

    #[test]
    fn no_retention_means_received_is_last() {
        let mut h = Harness::new(false);
        h.data(0, &header());
        h.data(10, &cluster(0));
        h.end(20);
        assert_eq!(
            h.log,
            ["BUFFERING 0", "store 1700000000000", "RECEIVED 0", "close"]
        );
        assert_eq!(
            h.records[0].acks,
            [AckEventType::Buffering, AckEventType::Received]
        );
    }

    #[test]
    fn error_ends_the_connection_with_records_for_all() {
        let mut h = Harness::new(true);
        let mut body = header();
        body.extend(cluster(1000));
        body.extend(cluster(1000));
        h.data(0, &body);
        assert_eq!(
            h.log,
            [
                "BUFFERING 1000",
                "store 1700000001000",
                "RECEIVED 1000",
                "BUFFERING 1000",
                "ERROR 1000 4004",
                "close"
            ]
        );
        assert_eq!(h.records.len(), 2);
        let failed = h.records.iter().find(|r| r.error.is_some()).unwrap();
        assert_eq!(failed.error.as_ref().map(|e| e.id), Some(4004));
        assert!(!failed.stored);
        // Data after the close is ignored.
        h.data(10, &cluster(5000));
        assert_eq!(h.log.len(), 6);
    }

    #[test]
    fn injected_error_drop_and_stall() {
        let mut h = Harness::new(true);
        h.faults.error_ack = Some(5000);
        let mut body = header();
        body.extend(cluster(0));
        h.data(0, &body);
        assert_eq!(h.log, ["BUFFERING 0", "ERROR 0 5000", "close"]);

        let mut h = Harness::new(true);
        h.faults.drop_mid = true;
        h.data(0, &body);
        assert_eq!(h.log, ["BUFFERING 0", "drop"]);
        assert_eq!(h.records.len(), 1);

        let mut h = Harness::new(true);
        h.faults.stall = Some(Duration::from_secs(3));
        body.extend(cluster(1000));
        h.data(0, &body);
        assert_eq!(
            h.log,
            [
                "BUFFERING 0",
                "store 1700000000000",
                "RECEIVED 0",
                "stall 3000",
                "BUFFERING 1000"
            ]
        );
    }

    #[test]
    fn idle_acks_then_idle_timeout() {
        let mut h = Harness::new(true);
        h.data(0, &header());
        assert_eq!(
            h.session.next_deadline(),
            Some(h.t0 + Duration::from_secs(2))
        );
        h.tick(2000);
        h.tick(4000);
        assert_eq!(h.log, ["IDLE", "IDLE"]);
        h.data(4500, &cluster(0));
        assert_eq!(
            h.session.next_deadline(),
            Some(h.t0 + Duration::from_millis(6500))
        );
        h.tick(34_500);
        assert_eq!(h.log.last().map(String::as_str), Some("close"));
        // The fragment that never completed is recorded with what it got.
        assert_eq!(h.records.len(), 1);
        assert_eq!(h.records[0].acks, [AckEventType::Buffering]);
        assert!(!h.records[0].stored);
    }

    #[test]
    fn without_acknowledgements_only_errors_are_sent() {
        let mut h = Harness::new(true);
        h.session.settings.ack_required = false;
        let mut body = header();
        body.extend(cluster(0));
        body.extend(cluster(1000));
        h.data(0, &body);
        h.tick(5000);
        assert_eq!(h.log, ["store 1700000000000"]);
        assert_eq!(h.records.len(), 1, "recorded once stored, with no ACK");
        assert!(h.records[0].acks.is_empty() && h.records[0].stored);
        h.data(5100, &cluster(500));
        assert_eq!(h.log.last().map(String::as_str), Some("close"));
        assert!(h.log.iter().any(|l| l == "ERROR 500 4004"), "{:?}", h.log);
    }

    #[test]
    fn connection_age_limit_is_4003() {
        let mut h = Harness::new(true);
        h.session.settings.max_connection_duration = Duration::from_secs(1);
        h.data(0, &header());
        h.data(500, &cluster(0));
        h.data(1500, &cluster(1000));
        assert!(h.log.iter().any(|l| l == "ERROR 1000 4003"), "{:?}", h.log);
    }

    #[test]
    fn store_failure_is_5001() {
        let mut h = Harness::new(true);
        let mut body = header();
        body.extend(cluster(0));
        body.extend(cluster(1000));
        let mut out = Vec::new();
        h.session.on_data(
            Harness::at(h.t0, 0),
            Bytes::from(body),
            &mut h.faults,
            &mut out,
        );
        assert!(matches!(out.last(), Some(Action::Store(_))));
        let mut more = Vec::new();
        h.session.on_stored(
            Harness::at(h.t0, 1),
            0,
            Err("disk full".into()),
            &mut h.faults,
            &mut more,
        );
        h.run(1, more);
        assert_eq!(h.log, ["ERROR 0 5001", "close"]);
        assert_eq!(
            h.records[0].error.as_ref().map(|e| e.message.as_str()),
            Some("disk full")
        );
    }
}
