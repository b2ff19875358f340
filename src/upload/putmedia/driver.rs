//! The driver loop of one stream: the [`Session`] decides, this loop carries it out against the
//! fragment log and the network.
//!
//! Invariants:
//! - at most one PutMedia connection (with at most one task reading its ACKs) exists at a time,
//!   and it carries one muxer session of the log (one stream header, one producer start
//!   timestamp): when the log moves on to another session, the connection is finished once
//!   every fragment it carried has its final ACK, and the next one starts with the new header;
//! - every connection begins at the log's first unacknowledged fragment (a rewind) with the
//!   stream header in front, so a reconnect neither loses nor skips a fragment;
//! - `FragmentStarted` / `FragmentClosed` reach the session in body order, and only for
//!   connections it knows as open (those reported before the HTTP 200 wait until it arrives);
//! - bytes go from the log to the body channel as soon as the muxer wrote them (the reader is
//!   woken per frame), paced to the service's per-stream limits;
//! - `AckFragment` / `SkipFragment` are applied to the log under the session of the
//!   connection that sent the fragment;
//! - on stop the live edge is flushed: everything the muxer wrote is sent and acknowledged
//!   before the session is told to shut down, unless the deadline comes first, in which case
//!   the connection is cut and what is left stays in the log (on disk) for the next start;
//!   when the service has not been reached since the stop began, an attempt failed below
//!   HTTP and everything left is on disk, it stops at once rather than wait out the deadline.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::body::{BodyObserver, BodySender, SendError, body_channel};
use super::http::{KvsAccess, PutMediaTarget, TimecodeType};
use super::pacer::{Pacer, PacingLimits};
use crate::buffer::{
    self, FragmentId, FragmentReader, FragmentState, ReadResult, SessionId, StreamSession,
};
use crate::upload::backoff::JitterSource;
use crate::upload::errors::{Failure, TransportKind};
use crate::upload::session::{
    AckDurability, Action, ConnectionId, DisconnectReason, Event, Session, SessionConfig,
    SessionConfigError, SessionEvent, StartFrom, StateKind,
};

/// Chunks (frames, mostly) queued between the driver and hyper: enough to keep the socket busy,
/// few enough that backpressure leaves the backlog in the log rather than in memory here.
const BODY_CHANNEL_CHUNKS: usize = 16;

/// Events from the HTTP tasks waiting for the driver.
const EVENT_CHANNEL: usize = 256;

/// While stopping offline: how often to check whether everything left is on disk.
const OFFLINE_STOP_RECHECK: Duration = Duration::from_millis(200);

/// What one stream's uploader needs besides the log and the shared access.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// The session's configuration (stream name, creation, tags, timing).
    pub session: SessionConfig,
    /// How the muxer writes cluster timecodes.
    pub timecode_type: TimecodeType,
    /// Body pacing.
    pub pacing: PacingLimits,
    /// Longest a muxed frame waits before the uploader takes it: zero sends every frame the
    /// moment it is muxed (one wake-up per frame); more sends what accumulated in batches, one
    /// wake-up per `send_delay`, for less CPU at the cost of that much latency.
    pub send_delay: Duration,
}

/// Live counters of one uploader (cheap to read from another task).
#[derive(Debug, Default)]
pub struct UploadCounters {
    connections: AtomicU64,
    fragments_sent: AtomicU64,
    fragments_acked: AtomicU64,
    fragments_skipped: AtomicU64,
    bytes_sent: AtomicU64,
    error_acks: AtomicU64,
    /// Milliseconds from a fragment's first byte sent to its final ACK, last seen.
    last_ack_latency_ms: AtomicU64,
    /// The session's state ([`state_code`]).
    state: AtomicU8,
}

/// `StateKind` as a number for an atomic (and back).
fn state_code(state: StateKind) -> u8 {
    match state {
        StateKind::Describe => 0,
        StateKind::Create => 1,
        StateKind::Tag => 2,
        StateKind::GetEndpoint => 3,
        StateKind::Connecting => 4,
        StateKind::Streaming => 5,
        StateKind::Draining => 6,
        StateKind::Idle => 7,
        StateKind::Backoff => 8,
        StateKind::Paused => 9,
        StateKind::Stopped => 10,
    }
}

fn state_of(code: u8) -> StateKind {
    match code {
        0 => StateKind::Describe,
        1 => StateKind::Create,
        2 => StateKind::Tag,
        3 => StateKind::GetEndpoint,
        4 => StateKind::Connecting,
        5 => StateKind::Streaming,
        6 => StateKind::Draining,
        7 => StateKind::Idle,
        8 => StateKind::Backoff,
        9 => StateKind::Paused,
        _ => StateKind::Stopped,
    }
}

impl UploadCounters {
    /// The session's state, as last published by the driver.
    pub fn state(&self) -> StateKind {
        state_of(self.state.load(Ordering::Relaxed))
    }

    /// ERROR ACKs received so far.
    pub fn error_acks(&self) -> u64 {
        self.error_acks.load(Ordering::Relaxed)
    }

    /// Time from a fragment's first byte sent to its final ACK, for the last one acknowledged.
    pub fn last_ack_latency_ms(&self) -> u64 {
        self.last_ack_latency_ms.load(Ordering::Relaxed)
    }

    fn set_state(&self, state: StateKind) {
        self.state.store(state_code(state), Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> UploadSummary {
        UploadSummary {
            connections: self.connections.load(Ordering::Relaxed),
            fragments_sent: self.fragments_sent.load(Ordering::Relaxed),
            fragments_acked: self.fragments_acked.load(Ordering::Relaxed),
            fragments_skipped: self.fragments_skipped.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            ..UploadSummary::default()
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What an uploader did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadSummary {
    /// PutMedia connections accepted (HTTP 200).
    pub connections: u64,
    /// Fragments written whole to a connection (a fragment resent counts again).
    pub fragments_sent: u64,
    /// Fragments that reached their final ACK.
    pub fragments_acked: u64,
    /// Fragments the service refused for good.
    pub fragments_skipped: u64,
    /// Body bytes handed to connections (headers, fragments, trailers).
    pub bytes_sent: u64,
    /// Fragments still in the log when the uploader stopped (sent again at the next start).
    pub fragments_left: u64,
    /// Whether the session finished its drain before the deadline.
    pub drained: bool,
}

/// Tells an uploader to stop: `Some(deadline)` flushes until then; `None` keeps running.
pub type StopSignal = watch::Receiver<Option<Instant>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `Connect` came; waiting for the log's stream header (the request needs its timestamp).
    AwaitingData,
    /// The request is out, its header and maybe fragments too; HTTP 200 not yet seen.
    Requested,
    /// HTTP 200 received; ACKs flow.
    Streaming,
}

/// The connection the session has open (or opening).
struct Conn {
    id: ConnectionId,
    endpoint: String,
    stage: Stage,
    hint_timecode_ms: Option<u64>,
    body: Option<BodySender>,
    body_gone: bool,
    task: Option<JoinHandle<()>>,
    /// The log session whose fragments this connection carries.
    carries: Option<Arc<StreamSession>>,
    in_fragment: Option<u64>,
    /// Fragments started here without a final ACK or skip yet.
    unacked: BTreeSet<u64>,
    /// `FinishAfterFragment` came: send nothing after the fragment in progress.
    finishing: bool,
    /// The log moved on to another session: finish this connection once its fragments are
    /// acknowledged.
    switch_pending: bool,
    /// The last fragment sent is complete in the log but not yet at the service: it learns
    /// that a Cluster ended from what follows it (the next fragment's Tags or Cluster, an
    /// end-of-fragment tag, or the end of the body).
    needs_end_tag: bool,
    /// Nothing more follows on this connection for now: send the end-of-fragment tag so the
    /// service completes (and acknowledges) the last fragment.
    end_tag_pending: bool,
    /// A fragment the service refused for good is being read past (not sent).
    discarding: Option<FragmentId>,
    /// Session events held until HTTP 200 (the session ignores fragments of a connection it
    /// does not know as open yet).
    deferred: Vec<Event>,
}

impl Conn {
    fn new(id: ConnectionId, endpoint: String, hint_timecode_ms: Option<u64>) -> Self {
        Self {
            id,
            endpoint,
            stage: Stage::AwaitingData,
            hint_timecode_ms,
            body: None,
            body_gone: false,
            task: None,
            carries: None,
            in_fragment: None,
            unacked: BTreeSet::new(),
            finishing: false,
            switch_pending: false,
            needs_end_tag: false,
            end_tag_pending: false,
            discarding: None,
            deferred: Vec::new(),
        }
    }

    /// Ends the connection: the body cleanly between fragments, or cut when a fragment is in
    /// progress (so the service never takes a truncated fragment for a whole one).
    fn close(mut self) {
        if let Some(body) = self.body.take() {
            if self.in_fragment.is_some() {
                body.abort();
            } else {
                body.finish();
            }
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What the pull future should wait for.
#[derive(Debug, Clone, Copy)]
struct PullPlan {
    wait_for_room: bool,
    pace_until: Option<Instant>,
    held: bool,
    /// Only wait for room (to send the end-of-fragment tag).
    room_only: bool,
    /// Batched sending: report catching up with the log instead of waiting for its next byte.
    report_caught_up: bool,
    /// Batched sending: take nothing from the log before this time.
    batch_until: Option<Instant>,
}

enum Pulled {
    Item(ReadResult),
    Held,
    Room,
    BodyGone,
    /// Everything the muxer wrote so far is taken (batched sending only).
    CaughtUp,
}

/// The uploader of one stream. See the module documentation.
pub struct PutMediaDriver {
    access: Arc<KvsAccess>,
    stream_name: String,
    timecode_type: TimecodeType,
    session: Session,
    reader: FragmentReader,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    conn: Option<Conn>,
    pacer: Pacer,
    /// An item taken from the log that waits for the pacer.
    held: Option<ReadResult>,
    pace_until: Option<Instant>,
    /// [`StreamSettings::send_delay`].
    send_delay: Duration,
    /// Batched sending: the log was caught up with; the next batch is taken at this time.
    batch_until: Option<Instant>,
    /// Sees every body chunk as hyper takes it ([`Self::observe_body`]).
    observer: Option<BodyObserver>,
    /// The log said `Finished` (writer gone, all handed out) since the last rewind.
    reader_finished: bool,
    /// Data was seen while no connection was open (`DataAvailable` sent).
    lookahead: bool,
    /// The log session of the last connection that streamed (for ACKs after it closed).
    last_carried: Option<SessionId>,
    /// `AWS_KINESISVIDEO_END_OF_FRAGMENT` Tags.
    end_of_fragment: Bytes,
    /// Skips of fragments the muxer is still writing (session, timecode, error id): applied
    /// once they close, and such a fragment is not sent again meanwhile.
    deferred_skips: Vec<(SessionId, u64, u32)>,
    retention_off: bool,
    shutdown_sent: bool,
    /// A stop was requested: flush, then shut the session down.
    flushing: bool,
    /// The last thing heard of the service was a call or connect that could not reach it
    /// (no name, no answer to a connect).
    last_failure_unreachable: bool,
    /// Since the stop request: the service answered (a response, a connection accepted, an
    /// ACK, or an HTTP error such as throttling).
    stop_reached_service: bool,
    /// Since the stop request: a call or connect could not reach the service.
    stop_unreachable: bool,
    counters: Arc<UploadCounters>,
}

impl std::fmt::Debug for PutMediaDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutMediaDriver")
            .field("stream", &self.stream_name)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl PutMediaDriver {
    /// An uploader for the stream in `settings`, reading `reader`. The session starts with
    /// DescribeStream when [`Self::run`] runs.
    pub fn new(
        access: Arc<KvsAccess>,
        settings: StreamSettings,
        reader: FragmentReader,
        jitter: Box<dyn JitterSource>,
    ) -> Result<Self, SessionConfigError> {
        let stream_name = settings.session.stream_name.clone();
        let session = Session::new(settings.session, jitter, Instant::now())?;
        let (events_tx, events_rx) = mpsc::channel(EVENT_CHANNEL);
        let mut end_tag = Vec::new();
        if let Err(error) = crate::mkv::tags::write_end_of_fragment(&mut end_tag) {
            // A fixed, tiny element: this cannot fail; without it the service completes the
            // last fragment when the body ends instead.
            tracing::error!(%error, "cannot build the end-of-fragment tag");
        }
        let end_of_fragment = Bytes::from(end_tag);
        Ok(Self {
            access,
            stream_name,
            timecode_type: settings.timecode_type,
            session,
            reader,
            events_tx,
            events_rx,
            conn: None,
            pacer: Pacer::new(settings.pacing),
            held: None,
            pace_until: None,
            send_delay: settings.send_delay,
            batch_until: None,
            observer: None,
            reader_finished: false,
            lookahead: false,
            last_carried: None,
            end_of_fragment,
            deferred_skips: Vec::new(),
            retention_off: false,
            shutdown_sent: false,
            flushing: false,
            last_failure_unreachable: false,
            stop_reached_service: false,
            stop_unreachable: false,
            counters: Arc::new(UploadCounters::default()),
        })
    }

    /// Live counters (for metrics and telemetry).
    pub fn counters(&self) -> Arc<UploadCounters> {
        Arc::clone(&self.counters)
    }

    /// Calls `observer` with every body chunk of every later connection as hyper takes it to
    /// write (the benchmarks measure frame-to-socket latency with it).
    pub fn observe_body(&mut self, observer: BodyObserver) {
        self.observer = Some(observer);
    }

    /// Runs until the session stops (after a stop request) or the stop deadline passes.
    pub async fn run(mut self, mut stop: StopSignal) -> UploadSummary {
        self.spawn_refresh(false);
        let mut deadline: Option<Instant> = *stop.borrow_and_update();
        let mut stop_open = true;
        let mut drained = false;
        loop {
            self.execute_actions();
            self.counters.set_state(self.session.state());
            if self.session.is_stopped() {
                drained = true;
                break;
            }
            if let Some(at) = deadline {
                if !self.flushing {
                    self.flushing = true;
                    // Only answers after the stop count: a link that died just before it
                    // shows as a connection that goes stale, then connects that fail.
                    self.stop_reached_service = false;
                    // Already backing off after an attempt that never reached the service.
                    self.stop_unreachable =
                        self.session.state() == StateKind::Backoff && self.last_failure_unreachable;
                }
                if Instant::now() >= at {
                    tracing::warn!(
                        stream = %self.stream_name,
                        "stop deadline reached with uploads unfinished; the rest stays in the buffer"
                    );
                    break;
                }
                self.check_flushed();
                self.execute_actions();
                if self.session.is_stopped() {
                    drained = true;
                    break;
                }
            }
            let plan = self.pull_plan();
            let timeout = self.session.poll_timeout();
            let body = self.conn.as_ref().and_then(|c| c.body.as_ref());
            tokio::select! {
                event = self.events_rx.recv() => {
                    // The driver holds a sender, so the channel never closes while it runs.
                    if let Some(event) = event {
                        self.on_io_event(event);
                    }
                }
                changed = stop.changed(), if stop_open => {
                    match changed {
                        Ok(()) => deadline = *stop.borrow_and_update(),
                        Err(_) => {
                            // The service is gone without a word: stop now.
                            stop_open = false;
                            deadline = Some(Instant::now());
                        }
                    }
                    if let Some(at) = deadline {
                        tracing::info!(
                            stream = %self.stream_name,
                            within = ?at.saturating_duration_since(Instant::now()),
                            "flushing the buffer before stopping"
                        );
                    }
                }
                () = sleep_until_opt(timeout) => {
                    self.session.handle(Event::Timeout, Instant::now());
                }
                () = sleep_until_opt(deadline) => {}
                // Stopping without a connection: look again shortly whether everything left
                // has reached the disk (the disk thread does not wake this loop).
                () = tokio::time::sleep(OFFLINE_STOP_RECHECK),
                    if self.flushing && self.conn.is_none() && !self.shutdown_sent => {}
                pulled = pull(&mut self.reader, body, plan), if plan.is_some() => {
                    self.on_pulled(pulled);
                }
            }
        }
        self.finish(drained).await
    }

    async fn finish(mut self, drained: bool) -> UploadSummary {
        if let Some(conn) = self.conn.take() {
            conn.close();
        }
        let stats = self.reader.stats();
        let summary = UploadSummary {
            fragments_left: stats.fragments_buffered,
            drained,
            ..self.counters.snapshot()
        };
        tracing::info!(
            stream = %self.stream_name,
            connections = summary.connections,
            fragments_sent = summary.fragments_sent,
            fragments_acked = summary.fragments_acked,
            fragments_skipped = summary.fragments_skipped,
            bytes_sent = summary.bytes_sent,
            fragments_left = summary.fragments_left,
            drained,
            "uploader stopped"
        );
        // Dropping the last handle of the log waits for its disk thread to store what is
        // queued: not on a runtime worker.
        let reader = self.reader;
        if tokio::task::spawn_blocking(move || drop(reader))
            .await
            .is_err()
        {
            tracing::error!(stream = %self.stream_name, "closing the buffer failed");
        }
        summary
    }

    // ----- what to wait for -------------------------------------------------------------------

    fn pull_plan(&self) -> Option<PullPlan> {
        let idle_probe = PullPlan {
            wait_for_room: false,
            pace_until: None,
            held: false,
            room_only: false,
            report_caught_up: false,
            batch_until: None,
        };
        let Some(conn) = &self.conn else {
            // No connection: watch the log to wake an idle session, and while stopping to
            // learn that the writer is gone.
            let probe = (self.session.state() == StateKind::Idle || self.flushing)
                && !self.lookahead
                && !self.reader_finished
                && !self.shutdown_sent;
            return probe.then_some(idle_probe);
        };
        match conn.stage {
            Stage::AwaitingData => (!self.reader_finished).then_some(idle_probe),
            Stage::Requested | Stage::Streaming => {
                if conn.body_gone || conn.body.is_none() {
                    return None;
                }
                if conn.end_tag_pending {
                    return Some(PullPlan {
                        wait_for_room: true,
                        pace_until: None,
                        held: false,
                        room_only: true,
                        report_caught_up: false,
                        batch_until: None,
                    });
                }
                let blocked = conn.body_gone
                    || conn.body.is_none()
                    || conn.switch_pending
                    || (conn.finishing && conn.in_fragment.is_none())
                    || (self.reader_finished && self.held.is_none());
                let batching = !self.send_delay.is_zero();
                (!blocked).then_some(PullPlan {
                    wait_for_room: true,
                    pace_until: self.pace_until,
                    held: self.held.is_some(),
                    room_only: false,
                    report_caught_up: batching && self.batch_until.is_none(),
                    batch_until: self.batch_until,
                })
            }
        }
    }

    fn on_pulled(&mut self, pulled: Pulled) {
        let now = Instant::now();
        match pulled {
            Pulled::Item(item) => {
                if self.batch_until.is_some_and(|at| at <= now) {
                    // This batch is being taken; the next catch-up starts the next wait.
                    self.batch_until = None;
                }
                self.process(item, now);
            }
            Pulled::CaughtUp => self.batch_until = Some(now + self.send_delay),
            Pulled::Held => {
                self.pace_until = None;
                if let Some(item) = self.held.take() {
                    self.process(item, now);
                }
            }
            Pulled::Room => self.send_end_tag(now),
            Pulled::BodyGone => {
                // The connection's task reports how it ended; send nothing more meanwhile.
                if let Some(conn) = self.conn.as_mut() {
                    conn.body_gone = true;
                }
            }
        }
    }

    // ----- the log's items ----------------------------------------------------------------------

    fn process(&mut self, item: ReadResult, now: Instant) {
        let Some(stage) = self.conn.as_ref().map(|c| c.stage) else {
            match item {
                ReadResult::Finished => self.reader_finished = true,
                ReadResult::Pending => {}
                _ => {
                    // The next connection rewinds, so what was read here is read again.
                    self.lookahead = true;
                    self.session.handle(Event::DataAvailable, now);
                }
            }
            return;
        };
        match stage {
            Stage::AwaitingData => match item {
                ReadResult::Session(session) => self.start_request(session),
                ReadResult::Finished => self.reader_finished = true,
                ReadResult::Pending => {}
                other => tracing::warn!(
                    stream = %self.stream_name,
                    item = ?short(&other),
                    "the buffer did not start with a stream header after a rewind; skipped"
                ),
            },
            Stage::Requested | Stage::Streaming => self.stream_item(item, now),
        }
    }

    fn start_request(&mut self, stream_session: Arc<StreamSession>) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let (body, request_body) = body_channel(BODY_CHANNEL_CHUNKS, self.observer.clone());
        let header = stream_session.header().clone();
        let header_len = header.len() as u64;
        if let Err(error) = body.send(header) {
            // A fresh channel has room; only a dropped receiver could refuse.
            tracing::error!(stream = %self.stream_name, %error, "cannot queue the stream header");
        }
        UploadCounters::add(&self.counters.bytes_sent, header_len);
        let target = PutMediaTarget {
            conn: conn.id,
            endpoint: conn.endpoint.clone(),
            stream_name: self.stream_name.clone(),
            timecode_type: self.timecode_type,
            producer_start_ns: stream_session.producer_start_pts_ns(),
        };
        tracing::debug!(
            stream = %self.stream_name,
            conn = %conn.id,
            log_session = %stream_session.id(),
            "opening PutMedia"
        );
        let access = Arc::clone(&self.access);
        let events = self.events_tx.clone();
        conn.task = Some(tokio::spawn(async move {
            access.put_media(target, request_body, events).await;
        }));
        conn.body = Some(body);
        conn.stage = Stage::Requested;
        conn.carries = Some(stream_session);
    }

    fn stream_item(&mut self, item: ReadResult, now: Instant) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let carried = conn.carries.as_ref().map(|s| s.id());
        match item {
            ReadResult::Session(next) => {
                if Some(next.id()) != carried {
                    conn.switch_pending = true;
                    conn.end_tag_pending = conn.needs_end_tag;
                    tracing::info!(
                        stream = %self.stream_name,
                        conn = %conn.id,
                        next = %next.id(),
                        "the buffer moves on to another muxer session: finishing this connection"
                    );
                    self.close_if_switch_done(now);
                }
            }
            ReadResult::FragmentStart(meta) => {
                if Some(meta.session) != carried {
                    // Only reachable if the log skipped its Session item; the rewind at the
                    // next connection recovers the fragment.
                    conn.switch_pending = true;
                    self.close_if_switch_done(now);
                    return;
                }
                if self
                    .deferred_skips
                    .iter()
                    .any(|(session, tc, _)| *session == meta.session && *tc == meta.timecode_ms)
                {
                    conn.discarding = Some(meta.id);
                    return;
                }
                if let Some(at) = self.pacer.fragment_start_at(now) {
                    self.hold(ReadResult::FragmentStart(meta), at);
                    return;
                }
                self.pacer.on_fragment_start(now);
                if let Some(hint) = conn.hint_timecode_ms.take()
                    && meta.timecode_ms != hint
                {
                    tracing::debug!(
                        stream = %self.stream_name,
                        conn = %conn.id,
                        resume_at = meta.timecode_ms,
                        session_hint = hint,
                        "resuming at the buffer's first unacknowledged fragment"
                    );
                }
                conn.in_fragment = Some(meta.timecode_ms);
                conn.needs_end_tag = false;
                conn.unacked.insert(meta.timecode_ms);
                let event = Event::FragmentStarted {
                    conn: conn.id,
                    timecode_ms: meta.timecode_ms,
                };
                self.tell(event, now);
            }
            ReadResult::Chunk(_) if conn.discarding.is_some() => {}
            ReadResult::Chunk(chunk) => {
                if let Some(at) = self.pacer.chunk_at(now) {
                    self.hold(ReadResult::Chunk(chunk), at);
                    return;
                }
                let len = chunk.len();
                if self.send_body(chunk) {
                    self.pacer.on_chunk(now, len);
                    UploadCounters::add(&self.counters.bytes_sent, len as u64);
                }
            }
            ReadResult::FragmentEnd(id) if conn.discarding == Some(id) => {
                conn.discarding = None;
                self.apply_deferred_skips();
            }
            ReadResult::FragmentEnd(_) => {
                self.apply_deferred_skips_if_any();
                let Some(conn) = self.conn.as_mut() else {
                    return;
                };
                if let Some(timecode_ms) = conn.in_fragment.take() {
                    conn.needs_end_tag = true;
                    conn.end_tag_pending = conn.finishing;
                    let event = Event::FragmentClosed {
                        conn: conn.id,
                        timecode_ms,
                    };
                    UploadCounters::add(&self.counters.fragments_sent, 1);
                    self.tell(event, now);
                }
            }
            ReadResult::FragmentAborted(id) if conn.discarding == Some(id) => {
                conn.discarding = None;
                self.apply_deferred_skips();
            }
            ReadResult::FragmentAborted(id) => {
                let id_conn = conn.id;
                tracing::warn!(
                    stream = %self.stream_name,
                    conn = %id_conn,
                    fragment = %id,
                    "the muxer abandoned the fragment being sent: cutting the connection"
                );
                if let Some(conn) = self.conn.take() {
                    conn.close();
                }
                self.session.handle(
                    Event::ConnectionClosed {
                        conn: id_conn,
                        failure: Some(Failure::Transport {
                            kind: TransportKind::Other,
                            detail: format!("fragment {id} was abandoned by the muxer mid-send"),
                        }),
                    },
                    now,
                );
            }
            ReadResult::SessionEnd { session, trailer } => {
                if Some(session) == carried {
                    // The trailer is (or follows) the end-of-fragment tag.
                    conn.needs_end_tag = false;
                    if !trailer.is_empty() {
                        let len = trailer.len() as u64;
                        if self.send_body(trailer) {
                            UploadCounters::add(&self.counters.bytes_sent, len);
                        }
                    }
                }
            }
            ReadResult::Finished => {
                // The writer is gone without ending its session (or it did, and this is a
                // no-op): let the service complete the last fragment.
                conn.end_tag_pending = conn.needs_end_tag;
                self.reader_finished = true;
            }
            ReadResult::Pending => {}
        }
    }

    /// Sends the end-of-fragment tag so the service completes the last fragment sent.
    fn send_end_tag(&mut self, now: Instant) {
        let tag = self.end_of_fragment.clone();
        let len = tag.len() as u64;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let Some(body) = conn.body.as_ref() else {
            return;
        };
        match body.send(tag) {
            Ok(()) => {
                conn.end_tag_pending = false;
                conn.needs_end_tag = false;
                UploadCounters::add(&self.counters.bytes_sent, len);
            }
            // Room went away after all: the next pull waits for it again.
            Err(SendError::Full(_)) => {}
            Err(SendError::Closed(_)) => {
                conn.body_gone = true;
                conn.end_tag_pending = false;
            }
        }
        self.close_if_switch_done(now);
    }

    fn hold(&mut self, item: ReadResult, until: Instant) {
        self.held = Some(item);
        self.pace_until = Some(until);
    }

    /// Queues a chunk on the body; false when it was not queued (held again, or the
    /// connection is gone).
    fn send_body(&mut self, chunk: Bytes) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let Some(body) = conn.body.as_ref() else {
            return false;
        };
        match body.send(chunk) {
            Ok(()) => true,
            Err(SendError::Full(chunk)) => {
                // Only this driver sends and it waited for room; keep the chunk in order anyway.
                self.held = Some(ReadResult::Chunk(chunk));
                false
            }
            Err(SendError::Closed(_)) => {
                conn.body_gone = true;
                false
            }
        }
    }

    /// Passes a fragment event to the session, or holds it until HTTP 200.
    fn tell(&mut self, event: Event, now: Instant) {
        match self.conn.as_mut() {
            Some(conn) if conn.stage == Stage::Requested => conn.deferred.push(event),
            _ => self.session.handle(event, now),
        }
    }

    /// After a session switch: close once nothing sent here waits for an ACK.
    fn close_if_switch_done(&mut self, now: Instant) {
        let done = self.conn.as_ref().is_some_and(|c| {
            c.switch_pending
                && c.stage == Stage::Streaming
                && c.in_fragment.is_none()
                && !c.end_tag_pending
                && c.unacked.is_empty()
        });
        if !done {
            return;
        }
        if let Some(conn) = self.conn.take() {
            let id = conn.id;
            conn.close();
            // A clean end with nothing unacknowledged: the session goes idle and reconnects
            // once the log shows data, i.e. at once.
            self.session.handle(
                Event::ConnectionClosed {
                    conn: id,
                    failure: None,
                },
                now,
            );
        }
    }

    // ----- events from the HTTP tasks -------------------------------------------------------------

    fn on_io_event(&mut self, event: Event) {
        let now = Instant::now();
        match &event {
            Event::ControlFailed { failure, .. }
            | Event::ConnectFailed { failure, .. }
            | Event::ConnectionClosed {
                failure: Some(failure),
                ..
            } => self.note_failure(failure),
            Event::Connected { .. } | Event::ControlResponse(_) | Event::Ack { .. } => {
                self.note_service_answered();
            }
            _ => {}
        }
        match &event {
            Event::Connected { conn } => {
                if let Some(c) = self.conn.as_mut().filter(|c| c.id == *conn) {
                    c.stage = Stage::Streaming;
                    self.last_carried = c.carries.as_ref().map(|s| s.id());
                    UploadCounters::add(&self.counters.connections, 1);
                    let deferred = std::mem::take(&mut c.deferred);
                    self.session.handle(event, now);
                    for held in deferred {
                        self.session.handle(held, now);
                    }
                    return;
                }
            }
            Event::ConnectFailed { conn, .. } | Event::ConnectionClosed { conn, .. } => {
                if self.conn.as_ref().is_some_and(|c| c.id == *conn)
                    && let Some(c) = self.conn.take()
                {
                    c.close();
                }
            }
            _ => {}
        }
        self.session.handle(event, now);
    }

    /// Remembers whether a failure shows the service unreachable (for the offline stop).
    fn note_failure(&mut self, failure: &Failure) {
        // No name, no route, no answer to a connect: the network (or the service) is not
        // there. Anything else, an HTTP error or a connection cut mid-request, shows that it is.
        let unreachable = matches!(
            failure,
            Failure::Transport {
                kind: TransportKind::Dns | TransportKind::Connect,
                ..
            }
        );
        if unreachable {
            self.last_failure_unreachable = true;
            if self.flushing {
                self.stop_unreachable = true;
            }
        } else {
            self.note_service_answered();
        }
    }

    /// The service answered something (a response, an ACK, an HTTP error).
    fn note_service_answered(&mut self) {
        self.last_failure_unreachable = false;
        self.stop_reached_service |= self.flushing;
    }

    // ----- the session's actions --------------------------------------------------------------------

    fn execute_actions(&mut self) {
        while let Some(action) = self.session.poll_action() {
            self.execute(action);
        }
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Call(request) => {
                tracing::debug!(stream = %self.stream_name, operation = request.operation().name(), "control call");
                let access = Arc::clone(&self.access);
                let events = self.events_tx.clone();
                tokio::spawn(async move {
                    let event = access.control_call(request).await;
                    let _ = events.send(event).await;
                });
            }
            Action::Connect {
                conn,
                endpoint,
                start_from: StartFrom::FirstUnacknowledged { hint_timecode_ms },
            } => {
                if let Some(old) = self.conn.take() {
                    old.close();
                }
                self.apply_deferred_skips_if_any();
                self.reader.rewind_to_first_unacked();
                self.reader_finished = false;
                self.lookahead = false;
                self.held = None;
                self.pace_until = None;
                self.batch_until = None;
                self.pacer.reset();
                self.conn = Some(Conn::new(conn, endpoint, hint_timecode_ms));
            }
            Action::FinishAfterFragment { conn, reason } => {
                if let Some(c) = self.conn.as_mut().filter(|c| c.id == conn) {
                    tracing::debug!(stream = %self.stream_name, conn = %conn, ?reason, "finishing after the fragment in progress");
                    c.finishing = true;
                    if c.in_fragment.is_none() {
                        c.end_tag_pending = c.needs_end_tag;
                        if matches!(self.held, Some(ReadResult::FragmentStart(_))) {
                            // Not started on this connection: the next one sends it.
                            self.held = None;
                            self.pace_until = None;
                        }
                    }
                }
            }
            Action::Disconnect { conn, reason } => {
                if self.conn.as_ref().is_some_and(|c| c.id == conn)
                    && let Some(c) = self.conn.take()
                {
                    let level_info = matches!(reason, DisconnectReason::Drained(_));
                    if level_info {
                        tracing::debug!(stream = %self.stream_name, conn = %conn, ?reason, "closing PutMedia");
                    } else {
                        tracing::info!(stream = %self.stream_name, conn = %conn, ?reason, "closing PutMedia");
                    }
                    c.close();
                }
            }
            Action::RefreshCredentials => self.spawn_refresh(true),
            Action::LearnClockSkew { server_date } => {
                match self
                    .access
                    .skew()
                    .learn_from_date(&server_date, SystemTime::now())
                {
                    Ok(offset_ms) => tracing::warn!(
                        stream = %self.stream_name,
                        offset_ms,
                        "the service refused the request time; signing with the service's clock from now on"
                    ),
                    Err(error) => {
                        tracing::warn!(stream = %self.stream_name, %error, "cannot learn the clock skew")
                    }
                }
            }
            Action::AckFragment { timecode_ms, kind } => self.ack_fragment(timecode_ms, kind),
            Action::SkipFragment { timecode_ms, code } => {
                let now = Instant::now();
                if let Some(session) = self.fragment_session(timecode_ms) {
                    tracing::warn!(
                        stream = %self.stream_name,
                        timecode_ms,
                        %code,
                        "the service refused the fragment for good; skipping it"
                    );
                    self.deferred_skips.push((session, timecode_ms, code.id()));
                    // A fragment the muxer still writes is skipped once it closes.
                    self.apply_deferred_skips();
                }
                UploadCounters::add(&self.counters.fragments_skipped, 1);
                self.fragment_done(timecode_ms, now);
            }
            Action::Report(event) => self.report(event),
        }
    }

    fn ack_fragment(&mut self, timecode_ms: u64, kind: AckDurability) {
        let now = Instant::now();
        let buffer_kind = match kind {
            AckDurability::Received => {
                if !self.retention_off {
                    // RECEIVED is final only on a stream that keeps no data.
                    self.reader.set_retention(false);
                    self.retention_off = true;
                }
                buffer::AckKind::Received
            }
            AckDurability::Persisted => buffer::AckKind::Persisted,
        };
        if let Some(session) = self.fragment_session(timecode_ms)
            && let Err(error) = self.reader.ack(session, timecode_ms, buffer_kind)
        {
            // Evicted meanwhile (the budget was full): nothing to release.
            tracing::debug!(stream = %self.stream_name, %error, "ACK not applied");
        }
        UploadCounters::add(&self.counters.fragments_acked, 1);
        self.fragment_done(timecode_ms, now);
    }

    fn apply_deferred_skips_if_any(&mut self) {
        if !self.deferred_skips.is_empty() {
            self.apply_deferred_skips();
        }
    }

    /// Skips the refused fragments that are no longer open in the log.
    fn apply_deferred_skips(&mut self) {
        if self.deferred_skips.is_empty() {
            return;
        }
        let open: Vec<(SessionId, u64)> = self
            .reader
            .fragments()
            .iter()
            .filter(|f| f.state == FragmentState::Open)
            .map(|f| (f.session, f.timecode_ms))
            .collect();
        let reader = &self.reader;
        let stream = self.stream_name.as_str();
        self.deferred_skips.retain(|(session, timecode_ms, code)| {
            if open.contains(&(*session, *timecode_ms)) {
                return true;
            }
            match reader.skip(*session, *timecode_ms, *code) {
                Ok(id) => {
                    tracing::debug!(stream, fragment = %id, timecode_ms, "skipped in the buffer")
                }
                // Already gone (evicted, or abandoned by the muxer): nothing to skip.
                Err(error) => tracing::debug!(stream, %error, "skip not applied"),
            }
            false
        });
    }

    fn fragment_session(&self, timecode_ms: u64) -> Option<SessionId> {
        let session = self
            .conn
            .as_ref()
            .and_then(|c| c.carries.as_ref().map(|s| s.id()))
            .or(self.last_carried);
        if session.is_none() {
            tracing::warn!(stream = %self.stream_name, timecode_ms, "ACK without a connection session");
        }
        session
    }

    fn fragment_done(&mut self, timecode_ms: u64, now: Instant) {
        if let Some(conn) = self.conn.as_mut() {
            conn.unacked.remove(&timecode_ms);
        }
        self.close_if_switch_done(now);
    }

    fn spawn_refresh(&self, force: bool) {
        let access = Arc::clone(&self.access);
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let event = access.refresh_credentials(force).await;
            let _ = events.send(event).await;
        });
    }

    // ----- stopping -------------------------------------------------------------------------------

    /// During a stop: tell the session to shut down once everything the muxer wrote has been
    /// sent and acknowledged (or nothing more can happen before the deadline).
    fn check_flushed(&mut self) {
        if self.shutdown_sent {
            return;
        }
        // Everything the muxer wrote is done with (the writer is gone and nothing is left).
        let nothing_left = self.reader_finished && self.reader.stats().fragments_buffered == 0;
        let ready = match &self.conn {
            Some(conn) if conn.stage == Stage::AwaitingData => nothing_left,
            Some(conn) => {
                conn.stage == Stage::Streaming
                    && self.reader_finished
                    && self.held.is_none()
                    && conn.in_fragment.is_none()
                    && !conn.end_tag_pending
                    && conn.unacked.is_empty()
            }
            None => match self.session.state() {
                StateKind::Paused | StateKind::Stopped => true,
                _ if nothing_left => true,
                StateKind::Idle if self.reader_finished => {
                    // Something unacknowledged is behind the cursor: look again from the
                    // first unacknowledged fragment.
                    self.reader.rewind_to_first_unacked();
                    self.reader_finished = false;
                    false
                }
                // Offline since the stop began (the service was not reached, and an attempt
                // failed below HTTP): waiting out the deadline would only delay the stop, and
                // everything left is on disk for the next start. A throttled or failing
                // service keeps its chance until the deadline.
                StateKind::Backoff
                    if !self.stop_reached_service
                        && self.stop_unreachable
                        && self.reader.all_on_disk() =>
                {
                    tracing::warn!(
                        stream = %self.stream_name,
                        fragments = self.reader.stats().fragments_buffered,
                        "the service cannot be reached: stopping now; the buffered fragments are on disk for the next start"
                    );
                    true
                }
                _ => false,
            },
        };
        if ready {
            self.shutdown_sent = true;
            self.session.handle(Event::Shutdown, Instant::now());
        }
    }

    // ----- logging --------------------------------------------------------------------------------

    fn report(&self, event: SessionEvent) {
        let stream = self.stream_name.as_str();
        match event {
            SessionEvent::StateChanged { from, to } => {
                tracing::debug!(stream, ?from, ?to, "upload state");
            }
            SessionEvent::BackoffScheduled {
                delay,
                attempt,
                reason,
            } => tracing::debug!(stream, ?delay, attempt, %reason, "retrying after a backoff"),
            SessionEvent::CallFailed {
                operation,
                class,
                detail,
            } => {
                tracing::warn!(stream, operation = operation.name(), ?class, %detail, "control call failed")
            }
            SessionEvent::ConnectionFailed {
                conn,
                class,
                detail,
            } => tracing::warn!(stream, %conn, ?class, %detail, "PutMedia failed; reconnecting"),
            SessionEvent::ConnectionOpened { conn, rotate_in } => {
                tracing::info!(stream, %conn, ?rotate_in, "PutMedia streaming");
            }
            SessionEvent::AckReceived { conn, ack, latency } => {
                // Only final ACKs reach the buffer (through `AckFragment`): its fragment states
                // then still tell which fragment the muxer is writing.
                tracing::trace!(stream, %conn, ?ack, ?latency, "ACK");
                match ack.kind {
                    crate::upload::ack::AckKind::Error { .. } => {
                        UploadCounters::add(&self.counters.error_acks, 1);
                    }
                    crate::upload::ack::AckKind::Persisted
                    | crate::upload::ack::AckKind::Received => {
                        if let Some(latency) = latency {
                            self.counters.last_ack_latency_ms.store(
                                u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
                                Ordering::Relaxed,
                            );
                        }
                    }
                    _ => {}
                }
            }
            SessionEvent::UnexpectedAck { conn, timecode_ms } => {
                tracing::debug!(stream, %conn, ?timecode_ms, "ACK for a fragment not in flight");
            }
            SessionEvent::FragmentRetry {
                timecode_ms,
                code,
                attempt,
            } => {
                tracing::warn!(stream, timecode_ms, %code, attempt, "ERROR ACK: the fragment is sent again")
            }
            SessionEvent::FragmentRetriesExhausted { timecode_ms, code } => {
                tracing::warn!(stream, timecode_ms, %code, "fragment retried too often; skipping it");
            }
            SessionEvent::ConnectionStale {
                conn,
                timecode_ms,
                waited,
            } => {
                tracing::warn!(stream, %conn, timecode_ms, ?waited, "no ACK progress; reconnecting")
            }
            SessionEvent::DrainStarted { conn, reason, age } => {
                tracing::info!(stream, %conn, ?reason, ?age, "finishing the connection at a fragment boundary");
            }
            SessionEvent::DrainTimedOut {
                conn,
                unacknowledged,
            } => {
                tracing::warn!(stream, %conn, unacknowledged, "drain timed out; unacknowledged fragments are sent again")
            }
            SessionEvent::IdleClose { conn } => {
                tracing::debug!(stream, %conn, "connection ended with everything acknowledged");
            }
            SessionEvent::OperatorAttention { reason, pause } => {
                tracing::error!(stream, %reason, ?pause, "uploads paused until the cause is fixed");
            }
            SessionEvent::TagStreamFailed { detail } => {
                tracing::warn!(stream, %detail, "TagStream failed; streaming untagged");
            }
            SessionEvent::StreamSettingsMismatch {
                field,
                expected,
                actual,
            } => {
                tracing::warn!(stream, field, %expected, %actual, "the existing stream differs from the configuration")
            }
            SessionEvent::AckParseFailed { conn, error } => {
                tracing::warn!(stream, %conn, %error, "unparsable ACK line");
            }
            SessionEvent::ServiceErrorOnAckStream {
                conn,
                error_type,
                message,
            } => {
                tracing::warn!(stream, %conn, ?error_type, ?message, "service error on the ACK stream")
            }
            SessionEvent::CredentialRefreshFailed { detail } => {
                tracing::warn!(stream, %detail, "credential refresh failed");
            }
            SessionEvent::UnexpectedResponse { operation } => {
                tracing::debug!(
                    stream,
                    operation = operation.name(),
                    "late control-plane answer ignored"
                );
            }
        }
    }
}

/// The pull branch: room on the body, the pacer's wait, then the log's next item (or the item
/// held for the pacer). Cancel-safe: nothing is taken from the log before the last await.
async fn pull(
    reader: &mut FragmentReader,
    body: Option<&BodySender>,
    plan: Option<PullPlan>,
) -> Pulled {
    let Some(plan) = plan else {
        return std::future::pending().await;
    };
    if plan.wait_for_room
        && let Some(body) = body
        && body.ready().await.is_err()
    {
        return Pulled::BodyGone;
    }
    if plan.room_only {
        return Pulled::Room;
    }
    if let Some(at) = plan.pace_until {
        tokio::time::sleep_until(at.into()).await;
    }
    if plan.held {
        return Pulled::Held;
    }
    if let Some(at) = plan.batch_until {
        tokio::time::sleep_until(at.into()).await;
    } else if plan.report_caught_up {
        // Batched sending: the first time the log has nothing more, start the batch wait
        // instead of waking at the muxer's next frame.
        match reader.next_chunk() {
            // A fragment loading from disk is backlog, not the live edge: no batch wait.
            ReadResult::Pending if reader.waits_for_disk() => {}
            ReadResult::Pending => return Pulled::CaughtUp,
            item => return Pulled::Item(item),
        }
    }
    Pulled::Item(reader.next().await)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A log item without its bytes, for log lines.
fn short(item: &ReadResult) -> String {
    match item {
        ReadResult::Chunk(bytes) => format!("Chunk({} bytes)", bytes.len()),
        ReadResult::Session(session) => format!("Session({})", session.id()),
        ReadResult::SessionEnd { session, trailer } => {
            format!("SessionEnd({session}, {} bytes)", trailer.len())
        }
        other => format!("{other:?}"),
    }
}
