//! Public value types of the fragment log.

use super::record::DoneKind;
use bytes::Bytes;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A fragment's id: assigned at `fragment_start`, +1 per fragment. After a restart ids continue
/// above the highest one on disk (only an id that never reached disk, such as that of the
/// fragment open at a crash, can be given again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FragmentId(pub u64);

impl FragmentId {
    /// The id after this one.
    pub fn next(self) -> FragmentId {
        FragmentId(self.0.saturating_add(1))
    }
}

impl fmt::Display for FragmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Identifies one muxer session (one stream header and producer start timestamp) within a
/// running log. Numbered from 0 at every open; not stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session {}", self.0)
    }
}

/// What a PutMedia connection starts with: the stream header bytes (EBML header, Segment,
/// SegmentInfo, Tracks) and the producer start timestamp, shared by every fragment the muxer
/// produced after that header.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamSession {
    pub(crate) id: SessionId,
    pub(crate) header: Bytes,
    pub(crate) producer_start_pts_ns: u64,
    pub(crate) tag: u32,
}

impl StreamSession {
    /// This session's id (pass it to [`super::FragmentReader::ack`]).
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The stream header bytes: the body of every PutMedia connection starts with them.
    pub fn header(&self) -> &Bytes {
        &self.header
    }

    /// PTS of the session's first fragment, ns since the Unix epoch: the
    /// `x-amzn-producer-start-timestamp` of the connection; relative cluster timecodes count from it.
    pub fn producer_start_pts_ns(&self) -> u64 {
        self.producer_start_pts_ns
    }
}

/// Facts about a fragment handed out with [`ReadResult::FragmentStart`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentMeta {
    pub id: FragmentId,
    pub session: SessionId,
    /// The cluster timecode (ms) that ACKs name.
    pub timecode_ms: u64,
    /// PTS of the key frame that opens it, ns since the Unix epoch.
    pub first_pts_ns: u64,
    /// Whether it was closed when it started to be read (a live fragment is read while it grows).
    pub closed: bool,
    /// Its size so far.
    pub bytes: u64,
}

/// The service's acknowledgements that move a fragment forward (ERROR goes through
/// [`super::FragmentReader::skip`] when it is final, IDLE needs nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// The service received the fragment's first byte.
    Buffering,
    /// The service received the whole fragment. Final when the stream has no retention.
    Received,
    /// The service stored the fragment durably. Final.
    Persisted,
}

/// Where a fragment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentState {
    /// Being written by the muxer (readable as it grows).
    Open,
    /// Complete, no ACK yet.
    Closed,
    /// BUFFERING ACK seen.
    Buffering,
    /// RECEIVED ACK seen (not final: the stream keeps data and PERSISTED is awaited).
    Received,
    /// Done; still listed only because the reader is in the middle of it.
    Done(DoneKind),
}

/// A snapshot of one fragment (diagnostics, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentInfo {
    pub id: FragmentId,
    pub session: SessionId,
    pub timecode_ms: u64,
    pub first_pts_ns: u64,
    pub last_pts_ns: u64,
    pub bytes: u64,
    pub state: FragmentState,
    pub in_memory: bool,
    pub on_disk: bool,
}

/// What [`super::FragmentReader::next_chunk`] hands out, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    /// The fragments that follow belong to this session. Comes first after
    /// [`super::FragmentReader::rewind_to_first_unacked`] and whenever the session changes: start a
    /// PutMedia connection with this header and producer start timestamp (ending the current one
    /// if it carries another session).
    Session(Arc<StreamSession>),
    /// A fragment starts: its chunks follow.
    FragmentStart(FragmentMeta),
    /// The next bytes of the current fragment. Shares memory with the log (no copy).
    Chunk(Bytes),
    /// Every byte of the fragment has been handed out.
    FragmentEnd(FragmentId),
    /// The writer abandoned the fragment being read before it closed (muxer error or shutdown):
    /// its bytes will never be complete, so the connection carrying it must be dropped.
    FragmentAborted(FragmentId),
    /// The muxer ended the session: send this trailer (end-of-stream Tags) after its last
    /// fragment. Nothing more comes for this session.
    SessionEnd { session: SessionId, trailer: Bytes },
    /// Nothing to hand out now: await [`super::FragmentReader::wait`] and call again.
    Pending,
    /// The writer is gone and everything has been handed out.
    Finished,
}

/// Byte budgets of one stream's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Bytes of fragment data kept in memory (the open fragment and the fragments about to be
    /// read may go beyond it; see the module doc).
    pub memory_bytes: u64,
    /// Bytes of segment files on disk. 0 = no disk tier (nothing survives a restart).
    pub disk_bytes: u64,
    /// `fdatasync` each segment write at fragment close (and the directory on create/delete).
    /// Off: a crash of the process loses nothing written, a power cut may lose the last seconds.
    pub fsync: bool,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            memory_bytes: 16 * 1024 * 1024,
            disk_bytes: 2048 * 1024 * 1024,
            fsync: true,
        }
    }
}

/// The age of the oldest fragment not yet finally acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldestUnacked {
    pub id: FragmentId,
    pub first_pts_ns: u64,
    /// Wall clock now minus its first PTS (zero if the PTS is in the future).
    pub age: Duration,
}

/// Counters and levels of one log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BufferStats {
    /// Fragments in the log now (open, unacknowledged, or being read).
    pub fragments_buffered: u64,
    /// Fragments started by the writer since open.
    pub fragments_written: u64,
    /// Fragments recovered from disk at open.
    pub fragments_recovered: u64,
    /// Fragments handed out to the end (counted again when re-sent after a rewind).
    pub fragments_sent: u64,
    /// Fragments removed by a final ACK (PERSISTED, or RECEIVED without retention).
    pub fragments_acked: u64,
    /// Fragments the service refused for good.
    pub fragments_skipped: u64,
    /// Fragments dropped to stay within a budget.
    pub fragments_evicted: u64,
    /// Fragments whose stored copy failed verification when read back.
    pub fragments_lost: u64,
    /// Fragments the writer abandoned before closing them.
    pub fragments_aborted: u64,
    /// Closed fragments with no disk copy although the disk tier is on (write failed or pending).
    pub fragments_not_durable: u64,
    /// Memory copies dropped because a disk copy exists (reads then come from disk).
    pub memory_copies_dropped: u64,
    pub bytes_in_memory: u64,
    pub bytes_on_disk: u64,
    pub segments_on_disk: u64,
    /// Failed disk writes (segment records, ACK log, deletions) since open.
    pub disk_errors: u64,
    /// The most recent disk error, with the file it concerned.
    pub last_disk_error: Option<String>,
    pub oldest_unacked: Option<OldestUnacked>,
}

/// What happened to a damaged range found at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageAction {
    /// The file was cut where its intact part ends.
    Truncated,
    /// Intact records follow; the range stays until the whole segment is deleted.
    LeftInPlace,
    /// The intact record is not used (see the reason).
    Ignored,
}

/// One damaged range or unusable record found at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub file: PathBuf,
    pub offset: u64,
    pub length: u64,
    pub reason: String,
    pub action: DamageAction,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: bytes {}..{}: {} ({:?})",
            self.file.display(),
            self.offset,
            self.offset.saturating_add(self.length),
            self.reason,
            self.action
        )
    }
}

/// What opening a log found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The stream's log directory.
    pub dir: PathBuf,
    pub segments_scanned: u64,
    /// Intact, unacknowledged fragments now queued for the reader ahead of live ones.
    pub fragments_recovered: u64,
    pub bytes_recovered: u64,
    /// Intact fragments the ACK log marks as done.
    pub fragments_already_done: u64,
    /// Segment files deleted because nothing in them is needed any more.
    pub segments_deleted: u64,
    /// The id the next new fragment gets.
    pub next_fragment_id: u64,
    /// Damaged ranges and records that could not be used.
    pub damage: Vec<Damage>,
}
