//! The log's in-memory index and every decision about it: the reader's cursor, ACKs, memory and
//! disk budgets, eviction, and the work handed to the disk thread. No I/O happens here; the
//! writer, the reader and the disk thread each lock [`State`] briefly, call one of these methods,
//! and do their I/O (if any) after unlocking.

use super::memory::MemBytes;
use super::record::{AckRecord, DoneKind};
use super::segment::SegmentId;
use super::types::{
    AckKind, BufferStats, FragmentId, FragmentInfo, FragmentMeta, FragmentState, OldestUnacked,
    ReadResult, SessionId, StreamSession,
};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Fragments at the reader's position kept in memory (loaded ahead from disk, never spilled).
pub(crate) const READAHEAD_FRAGMENTS: usize = 2;
/// Memory may exceed its budget by this much (or by the budget itself, if larger) while closed
/// fragments wait for the disk thread; beyond it they are evicted.
const MEMORY_SLACK_MIN: u64 = 8 * 1024 * 1024;
/// At most one eviction warning per this interval; the next one carries the count in between.
const WARN_INTERVAL: Duration = Duration::from_secs(5);

/// Where a fragment's disk copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub segment: SegmentId,
    /// Offset of the fragment record (its header) in the segment file.
    pub offset: u64,
}

/// A fragment's disk tier status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiskSlot {
    /// No disk copy and none planned yet (open, or no disk tier).
    None,
    /// Waiting for the disk thread (again, after a failed write).
    Queued,
    /// In the disk thread's current batch.
    Writing,
    /// Stored and verified-on-write.
    Stored(Location),
    /// Larger than the whole disk budget: memory only.
    Unstorable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckProgress {
    None,
    Buffering,
    Received,
}

/// One fragment in the log.
#[derive(Debug)]
pub(crate) struct Entry {
    pub id: FragmentId,
    pub session: Arc<StreamSession>,
    pub timecode_ms: u64,
    pub first_pts_ns: u64,
    pub last_pts_ns: u64,
    pub bytes: u64,
    pub closed: bool,
    ack: AckProgress,
    /// Set when the fragment is done while the reader is in the middle of it: removal waits
    /// until the reader leaves it.
    done: Option<DoneKind>,
    pub mem: Option<MemBytes>,
    pub disk: DiskSlot,
    loading: bool,
}

impl Entry {
    fn meta(&self) -> FragmentMeta {
        FragmentMeta {
            id: self.id,
            session: self.session.id,
            timecode_ms: self.timecode_ms,
            first_pts_ns: self.first_pts_ns,
            closed: self.closed,
            bytes: self.bytes,
        }
    }

    fn mem_len(&self) -> u64 {
        self.mem.as_ref().map_or(0, MemBytes::len)
    }

    fn state(&self) -> FragmentState {
        match (self.done, self.closed, self.ack) {
            (Some(kind), _, _) => FragmentState::Done(kind),
            (None, false, _) => FragmentState::Open,
            (None, true, AckProgress::None) => FragmentState::Closed,
            (None, true, AckProgress::Buffering) => FragmentState::Buffering,
            (None, true, AckProgress::Received) => FragmentState::Received,
        }
    }
}

/// A fragment found intact on disk at open.
#[derive(Debug)]
pub(crate) struct RecoveredFragment {
    pub id: FragmentId,
    pub session: Arc<StreamSession>,
    pub timecode_ms: u64,
    pub first_pts_ns: u64,
    pub last_pts_ns: u64,
    pub bytes: u64,
    pub location: Location,
}

/// Book-keeping of one segment file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SegmentBook {
    /// Fragments stored in it that are not done.
    pub live: u64,
    /// Bytes of the segment file and its ACK log.
    pub bytes: u64,
    /// Scheduled for deletion (or deleted and waiting to be forgotten).
    pub deleting: bool,
}

/// The reader's position. Its fragment is `next`; `started` says whether its
/// [`ReadResult::FragmentStart`] went out (the fragment is then partly sent).
#[derive(Debug, Clone)]
struct Cursor {
    next: FragmentId,
    started: bool,
    chunk: usize,
    session: Option<Arc<StreamSession>>,
    trailer_sent: bool,
}

/// A write the disk thread is asked to make.
#[derive(Debug)]
pub(crate) struct WriteJob {
    pub id: FragmentId,
    pub session: Arc<StreamSession>,
    pub timecode_ms: u64,
    pub first_pts_ns: u64,
    pub last_pts_ns: u64,
    pub chunks: Vec<Bytes>,
}

/// A read-ahead the disk thread is asked to make.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadJob {
    pub id: FragmentId,
    pub location: Location,
    pub bytes: u64,
}

/// One batch of disk work, taken under the lock and executed without it.
#[derive(Debug, Default)]
pub(crate) struct DiskWork {
    pub deletions: Vec<SegmentId>,
    pub done_records: Vec<(SegmentId, AckRecord)>,
    /// Leave the active segment before writing (it is being evicted).
    pub rotate: bool,
    pub writes: Vec<WriteJob>,
    pub loads: Vec<LoadJob>,
}

impl DiskWork {
    fn is_empty(&self) -> bool {
        self.deletions.is_empty()
            && self.done_records.is_empty()
            && self.writes.is_empty()
            && self.loads.is_empty()
    }
}

/// What the disk thread did with a [`DiskWork`].
#[derive(Debug, Default)]
pub(crate) struct DiskOutcome {
    pub written: Vec<(FragmentId, Location)>,
    /// Writes not made (the first failed, the rest were not tried), with the error.
    pub failed: Option<(Vec<FragmentId>, String)>,
    pub loads: Vec<(FragmentId, Result<Bytes, String>)>,
    /// Current sizes of every segment the thread knows (segment file plus ACK log).
    pub segment_bytes: BTreeMap<SegmentId, u64>,
    pub deleted: Vec<SegmentId>,
    /// The segment now appended to.
    pub active: Option<SegmentId>,
    /// Segments left behind by a rotation.
    pub retired: Vec<SegmentId>,
    /// Other disk errors (ACK log, deletion), already logged.
    pub errors: Vec<String>,
}

#[derive(Debug, Default)]
struct Counters {
    written: u64,
    recovered: u64,
    sent: u64,
    acked: u64,
    skipped: u64,
    evicted: u64,
    lost: u64,
    aborted: u64,
    memory_dropped: u64,
    disk_errors: u64,
}

#[derive(Debug, Default)]
struct RateLimitedWarn {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedWarn {
    /// Returns how many warnings were suppressed since the last one if this one may be logged.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < WARN_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The disk tier as the index sees it.
#[derive(Debug, Default)]
pub(crate) struct DiskBook {
    pub enabled: bool,
    pub budget: u64,
    pub used: u64,
    pub segments: BTreeMap<SegmentId, SegmentBook>,
    pub active: Option<SegmentId>,
    queue: VecDeque<FragmentId>,
    /// Fragments removed while the disk thread was writing them: their records get an ACK-log
    /// entry once written.
    tombstones: Vec<(FragmentId, DoneKind)>,
    done_records: Vec<(SegmentId, AckRecord)>,
    deletions: Vec<SegmentId>,
    /// The last write failed: writes wait for the next fragment close.
    blocked: bool,
    /// A batch is being executed.
    busy: bool,
    last_error: Option<String>,
}

/// Everything the writer, the reader and the disk thread share.
#[derive(Debug)]
pub(crate) struct State {
    entries: VecDeque<Entry>,
    next_fragment_id: FragmentId,
    next_session_id: u64,
    memory_budget: u64,
    memory_bytes: u64,
    /// Whether the stream keeps data (PERSISTED is the final ACK) or not (RECEIVED is).
    retention: bool,
    cursor: Cursor,
    /// The fragment the reader is in the middle of: never evicted or removed under it.
    in_flight: Option<FragmentId>,
    trailers: Vec<(SessionId, Bytes)>,
    pub writer_closed: bool,
    pub reader_closed: bool,
    pub shutdown: bool,
    pub disk: DiskBook,
    counters: Counters,
    eviction_warn: RateLimitedWarn,
    disk_warn: RateLimitedWarn,
}

impl State {
    /// An empty log. `disk` is `None` without a disk tier.
    pub fn new(memory_budget: u64, disk: Option<DiskBook>) -> Self {
        State {
            entries: VecDeque::new(),
            next_fragment_id: FragmentId(0),
            next_session_id: 0,
            memory_budget,
            memory_bytes: 0,
            retention: true,
            cursor: Cursor {
                next: FragmentId(0),
                started: false,
                chunk: 0,
                session: None,
                trailer_sent: false,
            },
            in_flight: None,
            trailers: Vec::new(),
            writer_closed: false,
            reader_closed: false,
            shutdown: false,
            disk: disk.unwrap_or_default(),
            counters: Counters::default(),
            eviction_warn: RateLimitedWarn::default(),
            disk_warn: RateLimitedWarn::default(),
        }
    }

    /// A disk book for a log with a disk tier.
    pub fn disk_book(budget: u64, segments: BTreeMap<SegmentId, SegmentBook>) -> DiskBook {
        let used = segments.values().map(|s| s.bytes).sum();
        DiskBook {
            enabled: true,
            budget,
            used,
            segments,
            ..DiskBook::default()
        }
    }

    /// Installs what recovery found: fragments (in id order), the next ids to hand out.
    pub fn install_recovered(
        &mut self,
        fragments: Vec<RecoveredFragment>,
        next_fragment_id: u64,
        next_session_id: u64,
    ) {
        for f in fragments {
            self.counters.recovered += 1;
            self.entries.push_back(Entry {
                id: f.id,
                session: f.session,
                timecode_ms: f.timecode_ms,
                first_pts_ns: f.first_pts_ns,
                last_pts_ns: f.last_pts_ns,
                bytes: f.bytes,
                closed: true,
                ack: AckProgress::None,
                done: None,
                mem: None,
                disk: DiskSlot::Stored(f.location),
                loading: false,
            });
        }
        self.next_fragment_id = FragmentId(next_fragment_id);
        self.next_session_id = next_session_id;
        self.cursor.next = self.entries.front().map_or(self.next_fragment_id, |e| e.id);
    }

    fn index_of(&self, id: FragmentId) -> Option<usize> {
        self.entries.binary_search_by_key(&id, |e| e.id).ok()
    }

    /// Index of the first fragment at or after `id` that is not done.
    fn first_live_from(&self, id: FragmentId) -> Option<usize> {
        let start = self.entries.partition_point(|e| e.id < id);
        (start..self.entries.len()).find(|&i| self.entries.get(i).is_some_and(|e| e.done.is_none()))
    }

    // ---------------------------------------------------------------- writer side

    /// Starts a session: the header and start timestamp of the fragments that follow.
    pub fn new_session(&mut self, header: Bytes, producer_start_pts_ns: u64) -> Arc<StreamSession> {
        let tag = super::record::session_tag(&header, producer_start_pts_ns);
        let id = SessionId(self.next_session_id);
        self.next_session_id += 1;
        Arc::new(StreamSession {
            id,
            header,
            producer_start_pts_ns,
            tag,
        })
    }

    /// Opens a new fragment at the head of the log.
    pub fn begin_fragment(
        &mut self,
        session: Arc<StreamSession>,
        timecode_ms: u64,
        pts_ns: u64,
    ) -> FragmentId {
        let id = self.next_fragment_id;
        self.next_fragment_id = id.next();
        self.counters.written += 1;
        self.entries.push_back(Entry {
            id,
            session,
            timecode_ms,
            first_pts_ns: pts_ns,
            last_pts_ns: pts_ns,
            bytes: 0,
            closed: false,
            ack: AckProgress::None,
            done: None,
            mem: Some(MemBytes::default()),
            disk: DiskSlot::None,
            loading: false,
        });
        id
    }

    /// Appends the writer's pending header bytes, then `payload`, to the open fragment `id`.
    /// Returns `false` if that fragment is no longer in the log.
    pub fn append(
        &mut self,
        id: FragmentId,
        pending: &mut BytesMut,
        payload: Option<&Bytes>,
    ) -> bool {
        let Some(entry) = self.entries.back_mut().filter(|e| e.id == id && !e.closed) else {
            return false;
        };
        let Some(mem) = entry.mem.as_mut() else {
            return false;
        };
        let mut added = mem.push_pending(pending);
        if let Some(payload) = payload {
            mem.push(payload.clone());
            added += payload.len() as u64;
        }
        entry.bytes += added;
        self.memory_bytes += added;
        true
    }

    /// Closes the open fragment `id` and queues it for the disk. Returns `false` if that fragment
    /// is no longer in the log.
    pub fn close_fragment(
        &mut self,
        id: FragmentId,
        pending: &mut BytesMut,
        first_pts_ns: u64,
        last_pts_ns: u64,
    ) -> bool {
        if !self.append(id, pending, None) {
            return false;
        }
        let disk_enabled = self.disk.enabled;
        let Some(entry) = self.entries.back_mut() else {
            return false;
        };
        entry.closed = true;
        entry.first_pts_ns = entry.first_pts_ns.min(first_pts_ns);
        entry.last_pts_ns = last_pts_ns.max(entry.first_pts_ns);
        if disk_enabled {
            entry.disk = DiskSlot::Queued;
            self.disk.queue.push_back(id);
        }
        // A close is the moment failed writes are retried.
        self.disk.blocked = false;
        self.enforce_memory_budget();
        true
    }

    /// Drops the open fragment `id`: the writer will never finish it.
    pub fn abort_fragment(&mut self, id: FragmentId) {
        if let Some(entry) = self
            .index_of(id)
            .and_then(|idx| self.remove_entry(idx, DoneKind::Aborted))
        {
            tracing::warn!(fragment = %entry.id, bytes = entry.bytes, "open fragment abandoned by the writer");
        }
    }

    /// Records the end-of-session trailer of `session`.
    pub fn end_session(&mut self, session: SessionId, trailer: Bytes) {
        self.trailers.retain(|(s, _)| *s != session);
        self.trailers.push((session, trailer));
    }

    /// Whether the disk thread has nothing left to do for durability (a failed write counts as
    /// done until the next close), and the error if fragments stay not durable.
    pub fn disk_settled(&self) -> Option<Result<(), String>> {
        let d = &self.disk;
        if d.busy || !d.done_records.is_empty() || !d.deletions.is_empty() {
            return None;
        }
        if d.queue.is_empty() {
            return Some(Ok(()));
        }
        if d.blocked {
            return Some(Err(d
                .last_error
                .clone()
                .unwrap_or_else(|| "disk write failed".into())));
        }
        None
    }

    // ---------------------------------------------------------------- reader side

    /// The next thing for the reader. The second value asks to wake the disk thread (a
    /// fragment at the reader's position needs loading).
    pub fn next_chunk(&mut self) -> (ReadResult, bool) {
        if self.cursor.started {
            return self.continue_fragment();
        }
        let Some(idx) = self.first_live_from(self.cursor.next) else {
            if let Some(end) = self.take_trailer() {
                return (end, false);
            }
            let result = if self.writer_closed {
                ReadResult::Finished
            } else {
                ReadResult::Pending
            };
            return (result, false);
        };
        let Some(entry) = self.entries.get(idx) else {
            return (ReadResult::Pending, false);
        };
        let session = entry.session.clone();
        if self.cursor.session.as_ref().map(|s| s.id) != Some(session.id) {
            if let Some(end) = self.take_trailer() {
                return (end, false);
            }
            self.cursor.session = Some(session.clone());
            self.cursor.trailer_sent = false;
            return (ReadResult::Session(session), false);
        }
        let id = entry.id;
        self.cursor.next = id;
        if entry.mem.is_none() {
            // Disk only: the disk thread loads it, then wakes the reader.
            return (ReadResult::Pending, self.wants_readahead());
        }
        let meta = entry.meta();
        self.cursor.started = true;
        self.cursor.chunk = 0;
        self.in_flight = Some(id);
        (ReadResult::FragmentStart(meta), self.wants_readahead())
    }

    fn continue_fragment(&mut self) -> (ReadResult, bool) {
        let id = self.cursor.next;
        let Some(entry) = self.index_of(id).and_then(|idx| self.entries.get(idx)) else {
            // Only the writer removes a fragment under the reader: it abandoned it.
            self.leave_fragment();
            return (ReadResult::FragmentAborted(id), false);
        };
        let Some(mem) = entry.mem.as_ref() else {
            // In-flight fragments keep their memory copy; this cannot be reached, but if it were,
            // the bytes already sent could not be completed.
            self.leave_fragment();
            return (ReadResult::FragmentAborted(id), false);
        };
        if let Some(chunk) = mem.chunk(self.cursor.chunk) {
            let chunk = chunk.clone();
            self.cursor.chunk += 1;
            return (ReadResult::Chunk(chunk), false);
        }
        if !entry.closed {
            return (ReadResult::Pending, false);
        }
        self.counters.sent += 1;
        self.leave_fragment();
        self.enforce_memory_budget();
        (ReadResult::FragmentEnd(id), self.wants_readahead())
    }

    /// Moves the cursor past its fragment and finishes a removal that waited for that.
    fn leave_fragment(&mut self) {
        let id = self.cursor.next;
        self.cursor.started = false;
        self.cursor.chunk = 0;
        self.cursor.next = id.next();
        self.release_in_flight();
    }

    fn release_in_flight(&mut self) {
        if let Some(id) = self.in_flight.take()
            && let Some(idx) = self.index_of(id)
            && let Some(kind) = self.entries.get(idx).and_then(|e| e.done)
        {
            self.remove_entry(idx, kind);
        }
    }

    fn take_trailer(&mut self) -> Option<ReadResult> {
        let session = self.cursor.session.as_ref()?.id;
        if self.cursor.trailer_sent {
            return None;
        }
        let trailer = self.trailers.iter().find(|(s, _)| *s == session)?.1.clone();
        self.cursor.trailer_sent = true;
        Some(ReadResult::SessionEnd { session, trailer })
    }

    /// Puts the cursor on the first fragment without a final ACK (at its start, which is a
    /// Tags/Cluster on a key frame). The next result is a [`ReadResult::Session`].
    pub fn rewind(&mut self) -> bool {
        self.release_in_flight();
        let next = self
            .first_live_from(FragmentId(0))
            .and_then(|idx| self.entries.get(idx))
            .map_or(self.next_fragment_id, |e| e.id);
        self.cursor = Cursor {
            next,
            started: false,
            chunk: 0,
            session: None,
            trailer_sent: false,
        };
        self.wants_readahead()
    }

    /// The reader went away: nothing is partly sent any more. Returns whether the log shuts
    /// down (the writer is gone too).
    pub fn close_reader(&mut self) -> bool {
        self.reader_closed = true;
        self.release_in_flight();
        self.cursor.started = false;
        self.shutdown = self.writer_closed;
        self.shutdown
    }

    /// The writer went away (after aborting its open fragment). Failed writes get one more try.
    /// Returns whether the log shuts down (the reader is gone too).
    pub fn close_writer(&mut self) -> bool {
        self.writer_closed = true;
        self.disk.blocked = false;
        self.shutdown = self.reader_closed;
        self.shutdown
    }

    /// Applies an ACK to the fragment of `session` with cluster timecode `timecode_ms`.
    pub fn ack(
        &mut self,
        session: SessionId,
        timecode_ms: u64,
        kind: AckKind,
    ) -> Option<FragmentId> {
        let idx = self.find_unacked(session, timecode_ms)?;
        let entry = self.entries.get_mut(idx)?;
        let id = entry.id;
        match kind {
            AckKind::Buffering => {
                if entry.ack == AckProgress::None {
                    entry.ack = AckProgress::Buffering;
                }
            }
            AckKind::Received => {
                entry.ack = AckProgress::Received;
                if !self.retention {
                    self.finish(idx, DoneKind::Received);
                }
            }
            AckKind::Persisted => {
                self.finish(idx, DoneKind::Persisted);
            }
        }
        Some(id)
    }

    /// Marks the fragment refused for good: it is never sent again.
    pub fn skip(&mut self, session: SessionId, timecode_ms: u64, code: u32) -> Option<FragmentId> {
        let idx = self.find_unacked(session, timecode_ms)?;
        let id = self.entries.get(idx)?.id;
        self.finish(idx, DoneKind::Skipped(code));
        Some(id)
    }

    /// Whether RECEIVED is final (no retention) or PERSISTED is awaited.
    pub fn set_retention(&mut self, retention: bool) {
        self.retention = retention;
        if !retention {
            let mut i = 0;
            while let Some(entry) = self.entries.get(i) {
                if entry.done.is_none()
                    && entry.ack == AckProgress::Received
                    && self.finish(i, DoneKind::Received)
                {
                    continue;
                }
                i += 1;
            }
        }
    }

    fn find_unacked(&self, session: SessionId, timecode_ms: u64) -> Option<usize> {
        self.entries.iter().position(|e| {
            e.done.is_none() && e.session.id == session && e.timecode_ms == timecode_ms
        })
    }

    /// Marks entry `idx` done; removes it unless the reader is in the middle of it. Returns
    /// whether it was removed.
    fn finish(&mut self, idx: usize, kind: DoneKind) -> bool {
        let Some(entry) = self.entries.get_mut(idx) else {
            return false;
        };
        if self.in_flight == Some(entry.id) {
            entry.done = Some(kind);
            return false;
        }
        self.remove_entry(idx, kind);
        true
    }

    /// Removes entry `idx` from the log and from the budgets; records why on disk.
    fn remove_entry(&mut self, idx: usize, kind: DoneKind) -> Option<Entry> {
        let entry = self.entries.remove(idx)?;
        self.memory_bytes = self.memory_bytes.saturating_sub(entry.mem_len());
        match entry.disk {
            DiskSlot::Stored(loc) => {
                self.disk.done_records.push((
                    loc.segment,
                    AckRecord {
                        fragment_id: entry.id.0,
                        kind,
                    },
                ));
                self.segment_lost_fragment(loc.segment);
            }
            DiskSlot::Writing => self.disk.tombstones.push((entry.id, kind)),
            DiskSlot::Queued | DiskSlot::None | DiskSlot::Unstorable => {}
        }
        match kind {
            DoneKind::Persisted | DoneKind::Received => self.counters.acked += 1,
            DoneKind::Skipped(_) => self.counters.skipped += 1,
            DoneKind::Evicted => self.counters.evicted += 1,
            DoneKind::Lost => self.counters.lost += 1,
            DoneKind::Aborted => self.counters.aborted += 1,
        }
        Some(entry)
    }

    fn segment_lost_fragment(&mut self, segment: SegmentId) {
        let active = self.disk.active;
        if let Some(book) = self.disk.segments.get_mut(&segment) {
            book.live = book.live.saturating_sub(1);
            if book.live == 0 && active != Some(segment) && !book.deleting {
                book.deleting = true;
                self.disk.deletions.push(segment);
            }
        }
    }

    // ---------------------------------------------------------------- budgets

    /// The fragments the reader reads next (kept in memory, loaded ahead from disk).
    fn readahead_window(&self) -> impl Iterator<Item = &Entry> {
        let start = self.entries.partition_point(|e| e.id < self.cursor.next);
        self.entries
            .range(start..)
            .filter(|e| e.done.is_none())
            .take(READAHEAD_FRAGMENTS)
    }

    fn wants_readahead(&self) -> bool {
        self.disk.enabled
            && self
                .readahead_window()
                .any(|e| e.mem.is_none() && !e.loading && matches!(e.disk, DiskSlot::Stored(_)))
    }

    fn is_protected(&self, id: FragmentId) -> bool {
        self.in_flight == Some(id) || self.readahead_window().any(|e| e.id == id)
    }

    /// Keeps memory within its budget: first drops memory copies of closed fragments that are on
    /// disk (oldest first, not the ones the reader is at); then evicts the oldest closed
    /// fragments that are not on disk (never the one partly sent): down to the budget when there
    /// is no disk tier or the last write failed, down to the hard limit (budget + max(budget,
    /// 8 MiB)) when the disk is only behind.
    pub fn enforce_memory_budget(&mut self) {
        if self.memory_bytes <= self.memory_budget {
            return;
        }
        let mut i = 0;
        while self.memory_bytes > self.memory_budget {
            let Some(entry) = self.entries.get(i) else {
                break;
            };
            let droppable = entry.closed
                && entry.mem.is_some()
                && matches!(entry.disk, DiskSlot::Stored(_))
                && !self.is_protected(entry.id);
            if droppable && let Some(entry) = self.entries.get_mut(i) {
                let freed = entry.mem.take().map_or(0, |m| m.len());
                self.memory_bytes = self.memory_bytes.saturating_sub(freed);
                self.counters.memory_dropped += 1;
            }
            i += 1;
        }
        let hard_limit = self
            .memory_budget
            .saturating_add(self.memory_budget.max(MEMORY_SLACK_MIN));
        let mut i = 0;
        while self.memory_bytes > self.memory_budget {
            let Some(entry) = self.entries.get(i) else {
                break;
            };
            // A disk that is merely behind gets memory up to the hard limit to catch up.
            let disk_cannot_take =
                !self.disk.enabled || self.disk.blocked || self.memory_bytes > hard_limit;
            let evictable = entry.closed
                && entry.mem.is_some()
                && self.in_flight != Some(entry.id)
                && entry.done.is_none()
                && match entry.disk {
                    DiskSlot::Unstorable => true,
                    DiskSlot::None | DiskSlot::Queued | DiskSlot::Writing => disk_cannot_take,
                    DiskSlot::Stored(_) => false,
                };
            if evictable {
                if let Some(entry) = self.remove_entry(i, DoneKind::Evicted) {
                    self.warn_eviction("memory", &entry);
                }
            } else {
                i += 1;
            }
        }
    }

    fn warn_eviction(&mut self, tier: &str, entry: &Entry) {
        if let Some(suppressed) = self.eviction_warn.allow() {
            tracing::warn!(
                fragment = %entry.id,
                timecode_ms = entry.timecode_ms,
                bytes = entry.bytes,
                tier,
                evicted_total = self.counters.evicted,
                suppressed_since_last = suppressed,
                "fragment evicted before it was acknowledged: {tier} budget full"
            );
        }
    }

    // ---------------------------------------------------------------- disk thread side

    /// Takes the next batch of disk work, if any. Plans evictions so the writes fit the disk
    /// budget, and read-ahead for the reader.
    pub fn take_disk_work(&mut self) -> Option<DiskWork> {
        let mut work = DiskWork::default();
        if !self.disk.blocked {
            // Batches stay small next to the budget, so the room for each is made by evicting
            // what earlier batches wrote, oldest first, never the batch itself.
            let batch_limit = self.disk.budget / 4;
            let mut batch_bytes = 0u64;
            while let Some(&id) = self.disk.queue.front() {
                let next_bytes = self
                    .index_of(id)
                    .and_then(|i| self.entries.get(i))
                    .map_or(0, |e| e.bytes + e.session.header.len() as u64);
                if batch_bytes > 0 && batch_bytes + next_bytes > batch_limit {
                    break;
                }
                self.disk.queue.pop_front();
                let Some(idx) = self.index_of(id) else {
                    continue;
                };
                let Some(entry) = self.entries.get_mut(idx) else {
                    continue;
                };
                let Some(mem) = entry
                    .mem
                    .as_ref()
                    .filter(|_| entry.disk == DiskSlot::Queued)
                else {
                    continue;
                };
                let record_len = super::record::HEADER_LEN as u64 + entry.bytes;
                let header_len =
                    super::record::HEADER_LEN as u64 + entry.session.header.len() as u64;
                if record_len + header_len > self.disk.budget
                    || entry.bytes > super::record::MAX_BODY_LEN
                {
                    entry.disk = DiskSlot::Unstorable;
                    tracing::warn!(fragment = %entry.id, bytes = entry.bytes, disk_budget = self.disk.budget,
                        "fragment larger than the disk budget: kept in memory only");
                    continue;
                }
                work.writes.push(WriteJob {
                    id,
                    session: entry.session.clone(),
                    timecode_ms: entry.timecode_ms,
                    first_pts_ns: entry.first_pts_ns,
                    last_pts_ns: entry.last_pts_ns,
                    chunks: mem.chunks().to_vec(),
                });
                batch_bytes += record_len + header_len;
                entry.disk = DiskSlot::Writing;
            }
            self.make_disk_room(&mut work);
        }
        self.plan_loads(&mut work);
        work.deletions = std::mem::take(&mut self.disk.deletions);
        let deleting = &self.disk.segments;
        work.done_records = std::mem::take(&mut self.disk.done_records)
            .into_iter()
            .filter(|(seg, _)| deleting.get(seg).is_some_and(|b| !b.deleting))
            .collect();
        if work.is_empty() { None } else { Some(work) }
    }

    /// Evicts whole segments, oldest first, until the planned writes fit the disk budget. The
    /// fragment the reader is in the middle of is not evicted: it only loses its disk copy.
    fn make_disk_room(&mut self, work: &mut DiskWork) {
        let needed: u64 = work
            .writes
            .iter()
            .map(|w| {
                2 * super::record::HEADER_LEN as u64
                    + w.session.header.len() as u64
                    + w.chunks.iter().map(|c| c.len() as u64).sum::<u64>()
            })
            .sum();
        let mut freeing: u64 = self
            .disk
            .segments
            .values()
            .filter(|b| b.deleting)
            .map(|b| b.bytes)
            .sum();
        while self.disk.used.saturating_sub(freeing) + needed > self.disk.budget {
            let Some((&segment, book)) = self.disk.segments.iter().find(|(_, b)| !b.deleting)
            else {
                break;
            };
            freeing += book.bytes;
            if self.disk.active == Some(segment) {
                self.disk.active = None;
                work.rotate = true;
            }
            let mut evicted = 0u64;
            let mut i = 0;
            while let Some(entry) = self.entries.get(i) {
                if !matches!(entry.disk, DiskSlot::Stored(loc) if loc.segment == segment) {
                    i += 1;
                    continue;
                }
                if self.in_flight == Some(entry.id) || entry.done.is_some() {
                    if let Some(entry) = self.entries.get_mut(i) {
                        entry.disk = DiskSlot::None;
                    }
                    i += 1;
                    continue;
                }
                if let Some(entry) = self.remove_entry(i, DoneKind::Evicted) {
                    evicted += 1;
                    self.warn_eviction("disk", &entry);
                }
            }
            if let Some(book) = self.disk.segments.get_mut(&segment) {
                book.live = 0;
                if !book.deleting {
                    book.deleting = true;
                    self.disk.deletions.push(segment);
                }
            }
            tracing::debug!(
                segment,
                evicted,
                "segment evicted to stay within the disk budget"
            );
        }
    }

    fn plan_loads(&mut self, work: &mut DiskWork) {
        if !self.disk.enabled || self.reader_closed {
            return;
        }
        let start = self.entries.partition_point(|e| e.id < self.cursor.next);
        let mut seen = 0;
        for entry in self.entries.range_mut(start..) {
            if entry.done.is_some() {
                continue;
            }
            if seen == READAHEAD_FRAGMENTS {
                break;
            }
            seen += 1;
            if let (None, false, DiskSlot::Stored(location)) =
                (&entry.mem, entry.loading, entry.disk)
            {
                entry.loading = true;
                work.loads.push(LoadJob {
                    id: entry.id,
                    location,
                    bytes: entry.bytes,
                });
            }
        }
    }

    /// Marks a batch as being executed.
    pub fn set_disk_busy(&mut self, busy: bool) {
        self.disk.busy = busy;
    }

    /// Applies what the disk thread did. Returns whether the reader should be woken.
    pub fn apply_disk_outcome(&mut self, outcome: DiskOutcome) -> bool {
        let mut wake_reader = false;
        // Deletions first: a segment deleted in this batch may have been created again under
        // the same name by a write that followed.
        for segment in &outcome.deleted {
            self.disk.segments.remove(segment);
        }
        if outcome.active.is_some() {
            self.disk.active = outcome.active;
        }
        for segment in outcome.segment_bytes.keys() {
            self.disk.segments.entry(*segment).or_default();
        }
        for (segment, bytes) in &outcome.segment_bytes {
            if let Some(book) = self.disk.segments.get_mut(segment) {
                book.bytes = *bytes;
            }
        }
        for (id, location) in outcome.written {
            let stored = match self.index_of(id).and_then(|i| self.entries.get_mut(i)) {
                Some(entry) if entry.disk == DiskSlot::Writing => {
                    entry.disk = DiskSlot::Stored(location);
                    true
                }
                _ => false,
            };
            if stored {
                if let Some(book) = self.disk.segments.get_mut(&location.segment) {
                    book.live += 1;
                }
            } else {
                // Removed while being written: the record must not come back after a restart.
                let kind = self
                    .disk
                    .tombstones
                    .iter()
                    .find(|(t, _)| *t == id)
                    .map_or(DoneKind::Evicted, |(_, k)| *k);
                self.disk.done_records.push((
                    location.segment,
                    AckRecord {
                        fragment_id: id.0,
                        kind,
                    },
                ));
            }
        }
        self.disk.tombstones.clear();
        if let Some((ids, error)) = outcome.failed {
            for id in ids.iter().rev() {
                if let Some(entry) = self.index_of(*id).and_then(|i| self.entries.get_mut(i))
                    && entry.disk == DiskSlot::Writing
                {
                    entry.disk = DiskSlot::Queued;
                    self.disk.queue.push_front(*id);
                }
            }
            self.disk.blocked = true;
            self.note_disk_error(error.clone());
            if let Some(suppressed) = self.disk_warn.allow() {
                tracing::error!(error = %error, not_durable = ids.len(), suppressed_since_last = suppressed,
                    "segment write failed: fragments stay in memory, retried at the next fragment close");
            }
        }
        for error in outcome.errors {
            self.note_disk_error(error);
        }
        for (id, loaded) in outcome.loads {
            let Some(idx) = self.index_of(id) else {
                continue;
            };
            match loaded {
                Ok(bytes) => {
                    if let Some(entry) = self.entries.get_mut(idx) {
                        entry.loading = false;
                        if entry.mem.is_none() {
                            self.memory_bytes += bytes.len() as u64;
                            entry.mem = Some(MemBytes::single(bytes));
                        }
                    }
                }
                Err(error) => {
                    if let Some(entry) = self.entries.get_mut(idx) {
                        entry.loading = false;
                    }
                    self.finish(idx, DoneKind::Lost);
                    tracing::error!(fragment = %id, error = %error, "stored fragment unreadable: dropped");
                    self.note_disk_error(error);
                }
            }
            wake_reader = true;
        }
        for segment in outcome.retired {
            if let Some(book) = self.disk.segments.get_mut(&segment)
                && book.live == 0
                && !book.deleting
                && self.disk.active != Some(segment)
            {
                book.deleting = true;
                self.disk.deletions.push(segment);
            }
        }
        self.disk.used = self.disk.segments.values().map(|b| b.bytes).sum();
        self.enforce_memory_budget();
        wake_reader
    }

    fn note_disk_error(&mut self, error: String) {
        self.counters.disk_errors += 1;
        self.disk.last_error = Some(error);
    }

    // ---------------------------------------------------------------- observation

    /// Whether the reader's next fragment is only on disk (it is `Pending` until the disk
    /// thread loads it), as opposed to having caught up with the writer.
    pub fn cursor_waits_for_disk(&self) -> bool {
        !self.cursor.started
            && self
                .first_live_from(self.cursor.next)
                .and_then(|i| self.entries.get(i))
                .is_some_and(|e| e.mem.is_none())
    }

    /// Whether the writer is gone and every fragment not yet done is stored on disk: nothing
    /// is lost if the process exits now.
    pub fn all_on_disk(&self) -> bool {
        self.disk.enabled
            && self.writer_closed
            && self
                .entries
                .iter()
                .all(|e| e.done.is_some() || (e.closed && matches!(e.disk, DiskSlot::Stored(_))))
    }

    pub fn stats(&self) -> BufferStats {
        let not_durable = if self.disk.enabled {
            self.entries
                .iter()
                .filter(|e| e.closed && e.done.is_none() && !matches!(e.disk, DiskSlot::Stored(_)))
                .count() as u64
        } else {
            0
        };
        let oldest_unacked = self.entries.iter().find(|e| e.done.is_none()).map(|e| {
            let now_ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let age_ns = now_ns.saturating_sub(u128::from(e.first_pts_ns));
            OldestUnacked {
                id: e.id,
                first_pts_ns: e.first_pts_ns,
                age: Duration::from_nanos(u64::try_from(age_ns).unwrap_or(u64::MAX)),
            }
        });
        let c = &self.counters;
        BufferStats {
            fragments_buffered: self.entries.len() as u64,
            fragments_written: c.written,
            fragments_recovered: c.recovered,
            fragments_sent: c.sent,
            fragments_acked: c.acked,
            fragments_skipped: c.skipped,
            fragments_evicted: c.evicted,
            fragments_lost: c.lost,
            fragments_aborted: c.aborted,
            fragments_not_durable: not_durable,
            memory_copies_dropped: c.memory_dropped,
            bytes_in_memory: self.memory_bytes,
            bytes_on_disk: self.disk.used,
            segments_on_disk: self.disk.segments.len() as u64,
            disk_errors: c.disk_errors,
            last_disk_error: self.disk.last_error.clone(),
            oldest_unacked,
        }
    }

    pub fn fragments(&self) -> Vec<FragmentInfo> {
        self.entries
            .iter()
            .map(|e| FragmentInfo {
                id: e.id,
                session: e.session.id,
                timecode_ms: e.timecode_ms,
                first_pts_ns: e.first_pts_ns,
                last_pts_ns: e.last_pts_ns,
                bytes: e.bytes,
                state: e.state(),
                in_memory: e.mem.is_some(),
                on_disk: matches!(e.disk, DiskSlot::Stored(_)),
            })
            .collect()
    }

    /// The fragment id the next `fragment_start` gets.
    pub fn next_fragment_id(&self) -> FragmentId {
        self.next_fragment_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_state(memory: u64, disk_budget: u64) -> State {
        State::new(memory, Some(State::disk_book(disk_budget, BTreeMap::new())))
    }

    /// Adds a closed fragment of `len` bytes to the log.
    fn add(state: &mut State, session: &Arc<StreamSession>, len: usize) -> FragmentId {
        let tc = state.next_fragment_id().0 * 2000;
        let id = state.begin_fragment(session.clone(), tc, tc * 1_000_000);
        let mut pending = BytesMut::new();
        assert!(state.append(id, &mut pending, Some(&Bytes::from(vec![id.0 as u8; len]))));
        assert!(state.close_fragment(id, &mut pending, tc * 1_000_000, tc * 1_000_000 + 1));
        id
    }

    /// Pretends the disk thread wrote every planned fragment into `segment`.
    fn write_all(state: &mut State, segment: SegmentId, segment_len: &mut u64) -> DiskWork {
        let work = state.take_disk_work().unwrap_or_default();
        let mut outcome = DiskOutcome {
            active: Some(segment),
            ..DiskOutcome::default()
        };
        for job in &work.writes {
            let offset = *segment_len;
            *segment_len += 56 + job.chunks.iter().map(|c| c.len() as u64).sum::<u64>();
            outcome.written.push((job.id, Location { segment, offset }));
        }
        outcome.segment_bytes.insert(segment, *segment_len);
        outcome.deleted = work.deletions.clone();
        state.apply_disk_outcome(outcome);
        work
    }

    fn ids(state: &State) -> Vec<u64> {
        state.fragments().iter().map(|f| f.id.0).collect()
    }

    #[test]
    fn a_final_ack_on_the_partly_sent_fragment_waits_until_the_reader_leaves_it() {
        let mut st = State::new(1 << 20, None);
        let session = st.new_session(Bytes::from_static(b"hdr"), 0);
        let a = add(&mut st, &session, 10);
        add(&mut st, &session, 10);
        assert!(matches!(st.next_chunk().0, ReadResult::Session(_)));
        assert!(matches!(st.next_chunk().0, ReadResult::FragmentStart(m) if m.id == a));
        assert_eq!(st.ack(session.id, 0, AckKind::Persisted), Some(a));
        assert_eq!(
            st.fragments()[0].state,
            FragmentState::Done(DoneKind::Persisted)
        );
        // The rest of its bytes still go out, then it is gone.
        assert!(matches!(st.next_chunk().0, ReadResult::Chunk(c) if c.len() == 10));
        assert_eq!(st.next_chunk().0, ReadResult::FragmentEnd(a));
        assert_eq!(ids(&st), vec![1]);
        // A rewind does not bring it back.
        st.rewind();
        assert!(matches!(st.next_chunk().0, ReadResult::Session(_)));
        assert!(matches!(st.next_chunk().0, ReadResult::FragmentStart(m) if m.id == FragmentId(1)));
    }

    #[test]
    fn a_skip_during_a_rewind_is_applied_at_once() {
        let mut st = State::new(1 << 20, None);
        let session = st.new_session(Bytes::from_static(b"hdr"), 0);
        add(&mut st, &session, 10);
        add(&mut st, &session, 10);
        let _ = st.next_chunk();
        let _ = st.next_chunk(); // fragment 0 partly sent
        st.rewind();
        assert_eq!(st.skip(session.id, 0, 4006), Some(FragmentId(0)));
        assert_eq!(ids(&st), vec![1]);
        assert_eq!(st.stats().fragments_skipped, 1);
    }

    #[test]
    fn disk_room_evicts_the_oldest_segment_but_not_the_partly_sent_fragment() {
        let mut st = disk_state(1 << 20, 1000);
        let session = st.new_session(Bytes::from_static(b"hdr"), 0);
        let mut seg0 = 0;
        let a = add(&mut st, &session, 300);
        assert_eq!(write_all(&mut st, 0, &mut seg0).writes.len(), 1);
        let b = add(&mut st, &session, 300);
        assert_eq!(write_all(&mut st, 0, &mut seg0).writes.len(), 1);
        // The reader is inside fragment a.
        assert!(matches!(st.next_chunk().0, ReadResult::Session(_)));
        assert!(matches!(st.next_chunk().0, ReadResult::FragmentStart(m) if m.id == a));
        let c = add(&mut st, &session, 300);
        let work = st.take_disk_work().unwrap_or_default();
        assert_eq!(work.deletions, vec![0], "segment 0 goes whole");
        assert!(work.rotate, "it was the active segment");
        assert_eq!(
            work.writes.iter().map(|w| w.id).collect::<Vec<_>>(),
            vec![c]
        );
        assert!(
            work.done_records.is_empty(),
            "no ACK records for a segment being deleted"
        );
        let infos = st.fragments();
        assert_eq!(
            infos.iter().map(|f| f.id).collect::<Vec<_>>(),
            vec![a, c],
            "b evicted, a spared"
        );
        assert!(!infos[0].on_disk && infos[0].in_memory);
        assert_eq!(st.stats().fragments_evicted, 1);
        let _ = b;
    }

    #[test]
    fn a_fragment_removed_while_being_written_gets_an_ack_record_once_written() {
        let mut st = disk_state(1 << 20, 1 << 20);
        let session = st.new_session(Bytes::from_static(b"hdr"), 0);
        let a = add(&mut st, &session, 100);
        let work = st.take_disk_work().unwrap_or_default();
        assert_eq!(work.writes.len(), 1);
        // The ACK arrives while the disk thread writes it.
        st.ack(session.id, 0, AckKind::Persisted);
        let outcome = DiskOutcome {
            written: vec![(
                a,
                Location {
                    segment: 0,
                    offset: 0,
                },
            )],
            segment_bytes: BTreeMap::from([(0, 156)]),
            active: Some(0),
            ..DiskOutcome::default()
        };
        st.apply_disk_outcome(outcome);
        let work = st.take_disk_work().unwrap_or_default();
        assert_eq!(
            work.done_records,
            vec![(
                0,
                AckRecord {
                    fragment_id: a.0,
                    kind: DoneKind::Persisted
                }
            )]
        );
        assert_eq!(st.disk.segments.get(&0).map(|b| b.live), Some(0));
    }

    #[test]
    fn failed_writes_wait_for_the_next_close_and_keep_their_order() {
        let mut st = disk_state(1 << 20, 1 << 20);
        let session = st.new_session(Bytes::from_static(b"hdr"), 0);
        let a = add(&mut st, &session, 100);
        let work = st.take_disk_work().unwrap_or_default();
        st.apply_disk_outcome(DiskOutcome {
            failed: Some((work.writes.iter().map(|w| w.id).collect(), "ENOSPC".into())),
            ..DiskOutcome::default()
        });
        assert!(
            st.take_disk_work().is_none(),
            "blocked until the next close"
        );
        assert_eq!(st.stats().fragments_not_durable, 1);
        assert_eq!(st.disk_settled(), Some(Err("ENOSPC".into())));
        let b = add(&mut st, &session, 100);
        let work = st.take_disk_work().unwrap_or_default();
        assert_eq!(
            work.writes.iter().map(|w| w.id).collect::<Vec<_>>(),
            vec![a, b]
        );
    }

    #[test]
    fn memory_spill_keeps_the_partly_sent_fragment_and_the_readahead() {
        let mut st = disk_state(250, 1 << 20);
        let session = st.new_session(Bytes::from_static(b"hdr"), 0);
        let mut seg = 0;
        add(&mut st, &session, 100);
        assert!(matches!(st.next_chunk().0, ReadResult::Session(_)));
        assert!(matches!(st.next_chunk().0, ReadResult::FragmentStart(_)));
        assert!(matches!(st.next_chunk().0, ReadResult::Chunk(_)));
        for _ in 0..4 {
            add(&mut st, &session, 100);
            write_all(&mut st, 0, &mut seg);
        }
        // Reader inside fragment 0, which with 1 is the readahead window; the rest spills.
        let in_memory: Vec<bool> = st.fragments().iter().map(|f| f.in_memory).collect();
        assert_eq!(in_memory, vec![true, true, false, false, false]);
        assert!(st.fragments().iter().all(|f| f.on_disk));
        assert_eq!(st.stats().bytes_in_memory, 200);
        assert_eq!(st.stats().memory_copies_dropped, 3);
    }

    #[test]
    fn queued_fragments_are_evicted_only_when_the_disk_lags_far_behind_or_fails() {
        let mut st = disk_state(1000, 1 << 30);
        let session = st.new_session(Bytes::from_static(b"hdr"), 0);
        // Waiting for the disk thread: over budget, but nothing goes.
        add(&mut st, &session, 3 << 20);
        add(&mut st, &session, 3 << 20);
        assert_eq!(ids(&st), vec![0, 1]);
        // Beyond budget + 8 MiB the oldest go.
        add(&mut st, &session, 3 << 20);
        assert_eq!(ids(&st), vec![1, 2]);
        assert_eq!(st.stats().fragments_evicted, 1);
        // A failed write: memory-only fragments are evicted down to the budget at once.
        let work = st.take_disk_work().unwrap_or_default();
        st.apply_disk_outcome(DiskOutcome {
            failed: Some((work.writes.iter().map(|w| w.id).collect(), "EIO".into())),
            ..DiskOutcome::default()
        });
        assert!(ids(&st).is_empty());
        assert_eq!(st.stats().fragments_evicted, 3);
    }

    #[test]
    fn after_a_burst_evicts_past_the_hard_limit_every_remaining_fragment_is_read_and_acked() {
        let mut st = disk_state(1 << 20, 1 << 30);
        let session = st.new_session(Bytes::from_static(b"hdr"), 0);
        for _ in 0..20 {
            add(&mut st, &session, 1 << 20);
        }
        let evicted = st.stats().fragments_evicted;
        assert!(evicted > 0);
        let remaining = ids(&st);
        let segment: SegmentId = 1;
        let mut segment_len = 0u64;
        let mut got = Vec::new();
        let mut partly: Option<FragmentId> = None;
        for _ in 0..10_000 {
            let work = write_all(&mut st, segment, &mut segment_len);
            if !work.loads.is_empty() {
                st.apply_disk_outcome(DiskOutcome {
                    loads: work
                        .loads
                        .iter()
                        .map(|l| (l.id, Ok(Bytes::from(vec![l.id.0 as u8; 1 << 20]))))
                        .collect(),
                    active: Some(segment),
                    ..DiskOutcome::default()
                });
            }
            match st.next_chunk().0 {
                ReadResult::FragmentStart(meta) => partly = Some(meta.id),
                ReadResult::FragmentEnd(id) => {
                    assert_eq!(partly.take(), Some(id));
                    got.push(id.0);
                    assert_eq!(
                        st.ack(session.id, id.0 * 2000, AckKind::Persisted),
                        Some(id)
                    );
                }
                _ => {}
            }
            if got.len() == remaining.len() {
                break;
            }
        }
        assert_eq!(got, remaining, "{evicted} evicted");
    }

    #[test]
    fn without_a_disk_tier_memory_pressure_evicts_oldest_first() {
        let mut st = State::new(250, None);
        let session = st.new_session(Bytes::from_static(b"hdr"), 0);
        for _ in 0..5 {
            add(&mut st, &session, 100);
        }
        assert_eq!(ids(&st), vec![3, 4]);
        assert_eq!(st.stats().fragments_evicted, 3);
    }

    #[test]
    fn warnings_are_rate_limited_with_a_count_of_the_suppressed() {
        let mut warn = RateLimitedWarn::default();
        assert_eq!(warn.allow(), Some(0));
        assert_eq!(warn.allow(), None);
        assert_eq!(warn.allow(), None);
        warn.last = Instant::now().checked_sub(WARN_INTERVAL);
        assert_eq!(warn.allow(), Some(2));
    }
}
