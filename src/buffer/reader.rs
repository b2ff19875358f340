//! The uploader's handle: [`FragmentReader`] walks the log with its cursor and feeds ACKs back.

use super::types::{AckKind, BufferStats, FragmentId, FragmentInfo, ReadResult, SessionId};
use super::{AckError, Shared, StatsHandle};
use std::sync::Arc;

/// Reads fragments for the uploader and takes the service's ACKs. One reader per log; it owns
/// the log's only cursor (see the module doc for tail / send / head).
///
/// Every method locks the log briefly and never does I/O: fragments that are only on disk are
/// loaded by the disk thread ahead of the cursor ([`ReadResult::Pending`] until they are).
#[derive(Debug)]
pub struct FragmentReader {
    pub(crate) shared: Arc<Shared>,
}

impl FragmentReader {
    /// The next thing to send, in stream order. Never blocks.
    pub fn next_chunk(&mut self) -> ReadResult {
        let (result, wake_disk) = self.shared.lock().next_chunk();
        if wake_disk {
            self.shared.wake_disk();
        }
        result
    }

    /// Like [`Self::next_chunk`] but waits instead of returning [`ReadResult::Pending`].
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> ReadResult {
        loop {
            match self.next_chunk() {
                ReadResult::Pending => self.wait().await,
                other => return other,
            }
        }
    }

    /// Resolves when something may have changed for the reader since the last
    /// [`ReadResult::Pending`] (bytes appended, a fragment closed or loaded, the writer gone).
    pub async fn wait(&self) {
        self.shared.data_ready.notified().await;
    }

    /// Moves the cursor back to the first fragment without a final ACK, at its start (a
    /// Tags/Cluster on a key frame), for a new connection. The next result is a
    /// [`ReadResult::Session`]. The fragment that was partly sent is no longer protected.
    pub fn rewind_to_first_unacked(&mut self) {
        let wake_disk = self.shared.lock().rewind();
        if wake_disk {
            self.shared.wake_disk();
        }
    }

    /// Applies an ACK for the fragment of `session` whose cluster timecode is `timecode_ms`.
    /// PERSISTED (or RECEIVED when [`Self::set_retention`] is off) removes it from the log for
    /// good, once the cursor is past it. Errors when no unacknowledged fragment matches (already
    /// removed, evicted, or a wrong timecode).
    pub fn ack(
        &self,
        session: SessionId,
        timecode_ms: u64,
        kind: AckKind,
    ) -> Result<FragmentId, AckError> {
        let id = self.shared.lock().ack(session, timecode_ms, kind);
        if kind != AckKind::Buffering {
            self.shared.wake_disk();
        }
        id.ok_or(AckError::UnknownFragment {
            session,
            timecode_ms,
        })
    }

    /// Marks a fragment the service refused for good (an ERROR ACK that is not retriable, with
    /// its error code): it is never sent again.
    pub fn skip(
        &self,
        session: SessionId,
        timecode_ms: u64,
        code: u32,
    ) -> Result<FragmentId, AckError> {
        let id = self.shared.lock().skip(session, timecode_ms, code);
        self.shared.wake_disk();
        id.ok_or(AckError::UnknownFragment {
            session,
            timecode_ms,
        })
    }

    /// Whether the stream keeps data (default: PERSISTED is awaited) or not (RECEIVED is final,
    /// as the service sends no PERSISTED without retention).
    pub fn set_retention(&self, retention: bool) {
        self.shared.lock().set_retention(retention);
        self.shared.wake_disk();
    }

    /// After [`ReadResult::Pending`]: whether the next fragment is being loaded from disk
    /// (more is already there) rather than the reader having caught up with the writer.
    pub fn waits_for_disk(&self) -> bool {
        self.shared.lock().cursor_waits_for_disk()
    }

    /// Whether the writer is gone and every fragment still waiting for the service is stored
    /// on disk, so that stopping now loses nothing (the next start sends them).
    pub fn all_on_disk(&self) -> bool {
        self.shared.lock().all_on_disk()
    }

    /// The log's counters and levels.
    pub fn stats(&self) -> BufferStats {
        self.shared.lock().stats()
    }

    /// Every fragment in the log, oldest first.
    pub fn fragments(&self) -> Vec<FragmentInfo> {
        self.shared.lock().fragments()
    }

    /// A cloneable handle that reads the stats.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for FragmentReader {
    fn drop(&mut self) {
        let shutdown = self.shared.lock().close_reader();
        self.shared.handle_closed(shutdown);
    }
}
