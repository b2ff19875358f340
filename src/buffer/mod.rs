//! `buffer`: the per-stream fragment log between the muxer and the PutMedia uploader.
//!
//! Every fragment stays here until Kinesis Video Streams has acknowledged it. The live edge is
//! in memory; every closed fragment not yet acknowledged is also on disk, so a network outage,
//! a crash (SIGKILL) or a power cut loses at most the fragment being recorded, plus a fragment
//! that closed in the last milliseconds and was still on its way to disk (and, with `fsync`
//! off, what the kernel had not written back at a power cut).
//!
//! # Threads and handles
//!
//! [`FragmentLog::open`] returns a [`FragmentWriter`] (the muxer's [`crate::mkv::MuxSink`]), a
//! [`FragmentReader`] (the uploader's) and a [`RecoveryReport`]. Both handles share one index
//! behind a mutex that each call holds for a few pointer moves, never across I/O. A third
//! thread, the disk thread, does all file I/O: it stores closed fragments, appends ACK records,
//! deletes finished segments and loads disk-only fragments ahead of the reader. The reader is
//! woken through a `tokio::sync::Notify` when bytes are appended, a fragment closes or loads, or
//! the writer goes away.
//!
//! # Cursor: tail · send · head
//!
//! - **tail**: the oldest fragment without a final ACK. [`FragmentReader::rewind_to_first_unacked`]
//!   moves the send cursor here (at a fragment start, i.e. Tags/Cluster on a key frame).
//! - **send**: the reader's cursor, the next byte to hand out. A fragment is *partly sent* from
//!   its [`ReadResult::FragmentStart`] until its [`ReadResult::FragmentEnd`] (or a rewind).
//! - **head**: the newest fragment, usually open and growing; the reader follows it chunk by
//!   chunk, each frame as soon as its payload is written.
//!
//! tail ≤ send ≤ head by id. Fragments that leave the log (ACK, skip, eviction) are simply
//! stepped over by the cursor.
//!
//! # The uploader's loop
//!
//! ```no_run
//! use kinesis_edge::buffer::{Budgets, FragmentLog, ReadResult};
//!
//! # async fn uploader() -> Result<(), Box<dyn std::error::Error>> {
//! let (writer, mut reader, _report) =
//!     FragmentLog::open("/var/lib/kinesis-edge", Budgets::default(), "front-door")?;
//! // `writer` goes to the muxer: it implements `mkv::MuxSink`.
//! # drop(writer);
//! reader.set_retention(true); // from DescribeStream: DataRetentionInHours > 0
//! 'connection: loop {
//!     reader.rewind_to_first_unacked();
//!     loop {
//!         match reader.next().await {
//!             ReadResult::Session(session) => {
//!                 // End the current PutMedia (if any) and open one with
//!                 // session.producer_start_pts_ns(); its body starts with session.header().
//!             }
//!             ReadResult::FragmentStart(meta) => { /* pace; remember (meta.session, meta.timecode_ms) */ }
//!             ReadResult::Chunk(bytes) => { /* send `bytes` on the request body */ }
//!             ReadResult::FragmentEnd(_) | ReadResult::Pending => {}
//!             ReadResult::SessionEnd { trailer, .. } => { /* send the trailer, end the body */ }
//!             ReadResult::FragmentAborted(_) => continue 'connection, // drop the connection
//!             ReadResult::Finished => return Ok(()),
//!         }
//!     }
//! }
//! // Beside it, for each ACK of the connection's session:
//! //   PERSISTED  -> reader.ack(session, fragment_timecode, AckKind::Persisted)
//! //   ERROR (not retriable) -> reader.skip(session, fragment_timecode, error_id), then reconnect
//! # }
//! ```
//!
//! # Invariants
//!
//! 1. A fragment leaves the log only by a final ACK (PERSISTED; RECEIVED when the stream has no
//!    retention, [`FragmentReader::set_retention`]), a skip (service refused it), eviction (budget
//!    full; counted and logged), a failed read-back (counted as lost) or when the writer abandons
//!    it open. When a stored fragment leaves, an ACK-log record (or the deletion of its whole
//!    segment) keeps a restart from resending it.
//! 2. The partly-sent fragment is never evicted and never removed under the reader; it keeps its
//!    memory copy. Eviction takes the oldest whole fragment other than it.
//! 3. Fragment ids grow by one per fragment. After a restart they continue above the highest
//!    id on disk, so an id that reached disk is never given to another fragment.
//! 4. Memory: when over budget, memory copies of the oldest closed fragments that are on disk
//!    are dropped first (reads then come from disk), except the partly-sent fragment and the
//!    next two fragments the reader will read (loaded ahead from disk). Closed
//!    fragments not on disk are evicted, oldest first, only down to the budget when there is no
//!    disk tier or the last write failed, and only down to budget + max(budget, 8 MiB) while
//!    the disk thread is merely behind.
//! 5. Disk: segment files are deleted whole once every fragment in them is done. To stay within
//!    the disk budget the oldest segment is evicted whole (the partly-sent fragment only loses
//!    its disk copy).
//!
//! # Disk layout
//!
//! `<dir>/<stream name>/`: `LOCK` (an advisory lock: one process per stream),
//! `<first id>.seg` segment files (append-only records: a stream-header record at the start of
//! each segment and whenever the header changes, then one record per closed fragment; the
//! byte layout is in `record.rs`), and `<first id>.ack` ACK logs (one small CRC-checked record per fragment that is
//! done). Records never span segments. A segment is fsynced after each fragment record when
//! `fsync` is on, the directory after a segment is created or deleted.
//!
//! # Recovery
//!
//! At open every record's header, length and CRC32C are checked. A damaged tail (power cut
//! mid-write) is cut off; a damaged range in the middle is stepped over (the scan resumes at
//! the next intact record) and left in place. Every intact, unacknowledged fragment is queued
//! for the reader, in id order, ahead of live ones, with the stream header it was muxed under.
//! New writes go to a new segment. Nothing a file contains makes the open panic or fail.
//!
//! # Disk errors
//!
//! A failed write (ENOSPC, EIO, file size limit) leaves the fragment in memory, counted as not
//! durable, logged and shown in [`BufferStats`]; the write is retried at the next fragment close.

mod disk;
mod index;
mod memory;
mod reader;
pub(crate) mod record;
mod recovery;
mod segment;
mod types;
mod writer;

pub use reader::FragmentReader;
pub use record::DoneKind;
pub use types::{
    AckKind, Budgets, BufferStats, Damage, DamageAction, FragmentId, FragmentInfo, FragmentMeta,
    FragmentState, OldestUnacked, ReadResult, RecoveryReport, SessionId, StreamSession,
};
pub use writer::FragmentWriter;

use index::State;
use std::fs::{self, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Smallest and largest segment file (the disk budget / 16 in between).
const MIN_SEGMENT_BYTES: u64 = 64 * 1024;
const MAX_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Name of the lock file in a stream's log directory.
const LOCK_FILE: &str = "LOCK";

/// Errors of the fragment log.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("invalid stream name {name:?}: {reason}")]
    InvalidStreamName { name: String, reason: &'static str },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is in use by another process (its lock is held)", path.display())]
    Locked { path: PathBuf },
    #[error("{fragments} closed fragment(s) are not on disk yet: {error}")]
    NotDurable { fragments: u64, error: String },
    #[error("the fragment log's disk thread is not running")]
    DiskThreadGone,
}

/// An ACK or skip that names no fragment in the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("no unacknowledged fragment with timecode {timecode_ms} ms in {session}")]
    UnknownFragment {
        session: SessionId,
        timecode_ms: u64,
    },
}

/// State shared by the writer, the reader and the disk thread.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// The disk thread sleeps on it.
    disk_wake: Condvar,
    /// Signalled by the disk thread after each batch and when it goes idle.
    disk_idle: Condvar,
    /// Wakes the reader.
    data_ready: tokio::sync::Notify,
    worker: Mutex<Option<JoinHandle<()>>>,
    #[cfg(test)]
    inject_write_errors: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for Shared {
    /// A summary: the index holds every fragment's bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stats = self.lock().stats();
        f.debug_struct("FragmentLog")
            .field("fragments", &stats.fragments_buffered)
            .field("bytes_in_memory", &stats.bytes_in_memory)
            .field("bytes_on_disk", &stats.bytes_on_disk)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn new(state: State) -> Self {
        Shared {
            state: Mutex::new(state),
            disk_wake: Condvar::new(),
            disk_idle: Condvar::new(),
            data_ready: tokio::sync::Notify::new(),
            worker: Mutex::new(None),
            #[cfg(test)]
            inject_write_errors: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Locks the index. A panic elsewhere while it was held leaves it usable: every method keeps
    /// it consistent between statements that could fail.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_disk_work<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.disk_wake
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn wake_disk(&self) {
        self.disk_wake.notify_one();
    }

    fn wait_disk_settled(&self) -> Result<(), BufferError> {
        let mut state = self.lock();
        loop {
            if !state.disk.enabled {
                return Ok(());
            }
            match state.disk_settled() {
                Some(Ok(())) => return Ok(()),
                Some(Err(error)) => {
                    return Err(BufferError::NotDurable {
                        fragments: state.stats().fragments_not_durable,
                        error,
                    });
                }
                None => {}
            }
            if self.worker_finished() {
                return Err(BufferError::DiskThreadGone);
            }
            state = self
                .disk_idle
                .wait_timeout(state, Duration::from_millis(500))
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poison| poison.into_inner().0);
        }
    }

    fn worker_finished(&self) -> bool {
        self.worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_none_or(JoinHandle::is_finished)
    }

    /// A handle was dropped; on shutdown, let the disk thread finish its queue and join it.
    fn handle_closed(&self, shutdown: bool) {
        self.disk_wake.notify_all();
        if !shutdown {
            return;
        }
        let handle = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the fragment log's disk thread panicked");
        }
    }

    #[cfg(test)]
    fn injected_write_fault(&self) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        match self
            .inject_write_errors
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        {
            Ok(_) => Err(io::Error::from_raw_os_error(28)),
            Err(_) => Ok(()),
        }
    }

    #[cfg(not(test))]
    #[inline]
    fn injected_write_fault(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A handle that only reads a log's stats and fragment list; cheap to clone, does not keep the
/// log open.
#[derive(Debug, Clone)]
pub struct StatsHandle {
    shared: Arc<Shared>,
}

impl StatsHandle {
    pub fn stats(&self) -> BufferStats {
        self.shared.lock().stats()
    }

    pub fn fragments(&self) -> Vec<FragmentInfo> {
        self.shared.lock().fragments()
    }
}

/// Opens fragment logs.
#[derive(Debug)]
pub struct FragmentLog;

impl FragmentLog {
    /// Opens (creating if needed) the log of `stream_name` under `dir` (in
    /// `dir/<stream_name>/`), recovers what is on disk and starts the disk thread. With
    /// `budgets.disk_bytes == 0` the log lives in memory only and `dir` is not touched.
    ///
    /// Errors: an invalid stream name, a directory that cannot be created or listed, or a log
    /// already open by another process (or another `open` in this one).
    pub fn open(
        dir: impl AsRef<Path>,
        budgets: Budgets,
        stream_name: &str,
    ) -> Result<(FragmentWriter, FragmentReader, RecoveryReport), BufferError> {
        validate_stream_name(stream_name)?;
        let dir = dir.as_ref().join(stream_name);
        if budgets.disk_bytes == 0 {
            let shared = Arc::new(Shared::new(State::new(budgets.memory_bytes, None)));
            let report = RecoveryReport {
                dir,
                ..RecoveryReport::default()
            };
            return Ok((
                FragmentWriter::new(shared.clone()),
                FragmentReader { shared },
                report,
            ));
        }
        let created = !dir.is_dir();
        fs::create_dir_all(&dir).map_err(|source| BufferError::Io {
            op: "create log directory",
            path: dir.clone(),
            source,
        })?;
        if created
            && budgets.fsync
            && let Some(parent) = dir.parent()
            && let Err(e) = disk::sync_dir(parent)
        {
            tracing::warn!(dir = %parent.display(), error = %e, "could not sync the new log directory's parent");
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| BufferError::Io {
                op: "open lock file",
                path: lock_path.clone(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(BufferError::Locked { path: dir }),
            Err(TryLockError::Error(source)) => {
                return Err(BufferError::Io {
                    op: "lock",
                    path: lock_path,
                    source,
                });
            }
        }

        let recovered = recovery::recover(&dir, budgets.fsync)?;
        for damage in &recovered.report.damage {
            tracing::warn!(%damage, "fragment log damage found at open");
        }
        if recovered.report.fragments_recovered > 0 || !recovered.report.damage.is_empty() {
            tracing::info!(
                dir = %dir.display(),
                recovered = recovered.report.fragments_recovered,
                bytes = recovered.report.bytes_recovered,
                already_done = recovered.report.fragments_already_done,
                damaged_ranges = recovered.report.damage.len(),
                "fragment log recovered"
            );
        }
        let mut segments = recovered.segments;
        let next_id = recovered.next_fragment_id;
        let mut state = State::new(budgets.memory_bytes, None);
        state.install_recovered(recovered.fragments, next_id, recovered.next_session_id);

        let segment_target = (budgets.disk_bytes / 16).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES);
        segments.entry(next_id).or_default();
        state.disk = State::disk_book(budgets.disk_bytes, segments);
        let shared = Arc::new(Shared::new(state));
        let mut worker = disk::DiskWorker::new(
            shared.clone(),
            dir.clone(),
            budgets.fsync,
            segment_target,
            lock,
            &recovered.sizes,
        );
        match worker.start_segment(next_id) {
            Ok(segment) => shared.lock().disk.active = Some(segment),
            Err(e) => {
                // Not fatal: the first write tries again and reports.
                tracing::error!(dir = %dir.display(), error = %e, "could not create a segment file");
                shared.lock().disk.segments.remove(&next_id);
            }
        }
        let handle = std::thread::Builder::new()
            .name("kebuf-disk".into())
            .spawn(move || worker.run())
            .map_err(|source| BufferError::Io {
                op: "start disk thread for",
                path: dir.clone(),
                source,
            })?;
        *shared.worker.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
        Ok((
            FragmentWriter::new(shared.clone()),
            FragmentReader { shared },
            recovered.report,
        ))
    }
}

/// Stream names as KVS allows them: 1–256 of `[a-zA-Z0-9_.-]`. They name a directory, so `.`
/// and `..` are refused too.
fn validate_stream_name(name: &str) -> Result<(), BufferError> {
    let reason = if name.is_empty() || name.len() > 256 {
        Some("must be 1 to 256 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        Some("only letters, digits, '_', '.' and '-' are allowed")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are not stream names")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(BufferError::InvalidStreamName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mkv::{FragmentEnd, FragmentStart, MuxSink};
    use bytes::Bytes;

    fn write_fragment(w: &mut FragmentWriter, seq: u64, len: usize) -> Vec<u8> {
        let pts = 1_000_000_000 * (seq + 1);
        let start = FragmentStart {
            sequence: seq,
            timecode_ms: pts / 1_000_000,
            pts_ns: pts,
        };
        let payload = Bytes::from(vec![seq as u8 ^ 0x5a; len]);
        let mut bytes = b"CLUSTER".to_vec();
        bytes.extend_from_slice(&payload);
        let end = FragmentEnd {
            sequence: seq,
            timecode_ms: pts / 1_000_000,
            frames: 1,
            bytes: bytes.len() as u64,
            first_pts_ns: pts,
            last_pts_ns: pts,
            tracks_present: 1,
        };
        let written = w
            .fragment_start(&start)
            .and_then(|()| w.write(b"CLUSTER"))
            .and_then(|()| w.write_payload(&payload))
            .and_then(|()| w.fragment_end(&end));
        assert!(written.is_ok(), "{written:?}");
        bytes
    }

    fn read_all(r: &mut FragmentReader) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            match r.next_chunk() {
                ReadResult::FragmentStart(_) => out.push(Vec::new()),
                ReadResult::Chunk(c) => out
                    .last_mut()
                    .into_iter()
                    .for_each(|f| f.extend_from_slice(&c)),
                ReadResult::Finished => break,
                ReadResult::Pending => std::thread::sleep(Duration::from_millis(1)),
                _ => {}
            }
        }
        out
    }

    #[test]
    fn enospc_keeps_fragments_in_memory_and_retries_at_the_next_close() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else { panic!("{dir:?}") };
        let budgets = Budgets {
            memory_bytes: 1 << 20,
            disk_bytes: 8 << 20,
            fsync: true,
        };
        let written = {
            let Ok((mut w, mut r, _)) = FragmentLog::open(dir.path(), budgets, "cam") else {
                panic!("open")
            };
            assert!(w.stream_header(&Bytes::from_static(b"HEADER")).is_ok());
            w.inject_write_errors(2);
            let mut written = vec![write_fragment(&mut w, 0, 3000)];
            assert!(matches!(
                w.sync(),
                Err(BufferError::NotDurable { fragments: 1, .. })
            ));
            let stats = w.stats();
            assert_eq!((stats.disk_errors, stats.fragments_not_durable), (1, 1));
            assert!(
                stats
                    .last_disk_error
                    .is_some_and(|e| e.contains("os error 28") && e.contains(".seg"))
            );
            written.push(write_fragment(&mut w, 1, 3000));
            assert!(matches!(
                w.sync(),
                Err(BufferError::NotDurable { fragments: 2, .. })
            ));
            // The disk has room again: the next close writes all three, in order.
            written.push(write_fragment(&mut w, 2, 3000));
            assert!(w.sync().is_ok());
            assert_eq!(w.stats().fragments_not_durable, 0);
            drop(w);
            assert_eq!(read_all(&mut r), written);
            written
        };
        let Ok((w, mut r, report)) = FragmentLog::open(dir.path(), budgets, "cam") else {
            panic!("reopen")
        };
        drop(w);
        assert!(
            report.damage.is_empty(),
            "half-written records were cut off: {:?}",
            report.damage
        );
        assert_eq!(report.fragments_recovered, 3);
        assert_eq!(read_all(&mut r), written);
    }

    #[test]
    fn without_a_disk_budget_nothing_touches_the_directory() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let budgets = Budgets {
            memory_bytes: 1 << 20,
            disk_bytes: 0,
            fsync: true,
        };
        let Ok((mut w, mut r, report)) = FragmentLog::open(dir.path(), budgets, "cam") else {
            panic!("open")
        };
        assert!(!dir.path().join("cam").exists());
        assert_eq!(report.fragments_recovered, 0);
        assert!(w.stream_header(&Bytes::from_static(b"HEADER")).is_ok());
        let written = vec![write_fragment(&mut w, 0, 100)];
        assert!(w.sync().is_ok());
        drop(w);
        assert_eq!(read_all(&mut r), written);
    }

    #[test]
    fn handles_move_to_other_threads() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        send::<FragmentWriter>();
        send::<FragmentReader>();
        sync::<FragmentReader>();
        send::<StatsHandle>();
        sync::<StatsHandle>();
    }

    #[test]
    fn stream_names_follow_the_kvs_rules() {
        for ok in ["a", "front-door", "cam_1.main", &"x".repeat(256)] {
            assert!(validate_stream_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "caméra", "a b", &"x".repeat(257)] {
            assert!(
                matches!(
                    validate_stream_name(bad),
                    Err(BufferError::InvalidStreamName { .. })
                ),
                "{bad}"
            );
        }
    }
}
