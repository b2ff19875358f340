//! The muxer's handle: [`FragmentWriter`] implements [`MuxSink`].

use super::types::{BufferStats, FragmentId, StreamSession};
use super::{BufferError, Shared, StatsHandle};
use crate::mkv::{FragmentEnd, FragmentStart, MuxSink};
use bytes::{Bytes, BytesMut};
use std::io;
use std::sync::Arc;

/// Header bytes of many frames share buffers of this size (one allocation per this many bytes
/// of tags, cluster and block headers, not one per frame).
const HEADER_BUFFER: usize = 64 * 1024;

/// Writes fragments into the log, from the muxer's thread. Each call locks the log briefly and
/// never waits for the disk; a closed fragment is handed to the disk thread.
///
/// Dropping the writer abandons an open fragment (the reader gets
/// [`super::ReadResult::FragmentAborted`] if it was reading it) and, once the reader is gone too,
/// waits for the disk thread to store what is queued.
#[derive(Debug)]
pub struct FragmentWriter {
    pub(crate) shared: Arc<Shared>,
    /// From `stream_header`, bound to a session at the next `fragment_start`.
    pending_header: Option<Bytes>,
    session: Option<Arc<StreamSession>>,
    open: Option<OpenFragment>,
    /// Header bytes of the open fragment not yet in the log (they go in with the next payload).
    pending: BytesMut,
}

#[derive(Debug, Clone, Copy)]
struct OpenFragment {
    id: FragmentId,
    bytes: u64,
}

fn out_of_order(call: &'static str, problem: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("fragment log: {call}: {problem}"),
    )
}

impl FragmentWriter {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        FragmentWriter {
            shared,
            pending_header: None,
            session: None,
            open: None,
            pending: BytesMut::with_capacity(HEADER_BUFFER),
        }
    }

    /// Waits until every closed fragment is on disk (and fsynced if configured) and every ACK
    /// record written. Errors when a write failed: those fragments stay in memory and are retried
    /// at the next close.
    pub fn sync(&self) -> Result<(), BufferError> {
        self.shared.wait_disk_settled()
    }

    /// The log's counters and levels.
    pub fn stats(&self) -> BufferStats {
        self.shared.lock().stats()
    }

    /// A cloneable handle that reads the stats (for a metrics endpoint).
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle {
            shared: self.shared.clone(),
        }
    }

    /// The id the next fragment will get.
    pub fn next_fragment_id(&self) -> FragmentId {
        self.shared.lock().next_fragment_id()
    }

    /// Drops the open fragment, if any, and reports the broken contract.
    fn abort_open(&mut self, call: &'static str) -> io::Result<()> {
        match self.open.take() {
            None => Ok(()),
            Some(open) => {
                self.pending.clear();
                self.shared.lock().abort_fragment(open.id);
                self.shared.data_ready.notify_one();
                Err(out_of_order(
                    call,
                    format_args!("fragment {} was still open and is dropped", open.id),
                ))
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn inject_write_errors(&self, count: u32) {
        self.shared
            .inject_write_errors
            .store(count, std::sync::atomic::Ordering::SeqCst);
    }
}

impl MuxSink for FragmentWriter {
    fn stream_header(&mut self, header: &Bytes) -> io::Result<()> {
        self.abort_open("stream_header")?;
        self.pending_header = Some(header.clone());
        self.session = None;
        Ok(())
    }

    fn fragment_start(&mut self, start: &FragmentStart) -> io::Result<()> {
        self.abort_open("fragment_start")?;
        self.pending.clear();
        let mut state = self.shared.lock();
        let session = match (self.pending_header.take(), &self.session) {
            (Some(header), _) => {
                let session = state.new_session(header, start.pts_ns);
                self.session = Some(session.clone());
                session
            }
            (None, Some(session)) => session.clone(),
            (None, None) => {
                return Err(out_of_order("fragment_start", "no stream_header before it"));
            }
        };
        let id = state.begin_fragment(session, start.timecode_ms, start.pts_ns);
        drop(state);
        self.open = Some(OpenFragment { id, bytes: 0 });
        self.shared.data_ready.notify_one();
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(open) = self.open.as_mut() else {
            return Err(out_of_order("write", "no open fragment"));
        };
        if self.pending.capacity() - self.pending.len() < bytes.len() {
            self.pending.reserve(bytes.len().max(HEADER_BUFFER));
        }
        self.pending.extend_from_slice(bytes);
        open.bytes += bytes.len() as u64;
        Ok(())
    }

    fn write_payload(&mut self, payload: &Bytes) -> io::Result<()> {
        let Some(open) = self.open.as_mut() else {
            return Err(out_of_order("write_payload", "no open fragment"));
        };
        let appended = self
            .shared
            .lock()
            .append(open.id, &mut self.pending, Some(payload));
        if !appended {
            let id = open.id;
            self.open = None;
            return Err(out_of_order(
                "write_payload",
                format_args!("fragment {id} is no longer in the log"),
            ));
        }
        open.bytes += payload.len() as u64;
        self.shared.data_ready.notify_one();
        Ok(())
    }

    fn fragment_end(&mut self, end: &FragmentEnd) -> io::Result<()> {
        let Some(open) = self.open.take() else {
            return Err(out_of_order("fragment_end", "no open fragment"));
        };
        let closed = self.shared.lock().close_fragment(
            open.id,
            &mut self.pending,
            end.first_pts_ns,
            end.last_pts_ns,
        );
        if !closed {
            return Err(out_of_order(
                "fragment_end",
                format_args!("fragment {} is no longer in the log", open.id),
            ));
        }
        self.shared.data_ready.notify_one();
        self.shared.wake_disk();
        if end.bytes != open.bytes {
            tracing::warn!(fragment = %open.id, muxer_bytes = end.bytes, logged_bytes = open.bytes,
                "fragment size reported by the muxer differs from the bytes it wrote");
        }
        Ok(())
    }

    fn stream_end(&mut self, trailer: &[u8]) -> io::Result<()> {
        self.abort_open("stream_end")?;
        self.pending_header = None;
        let Some(session) = self.session.take() else {
            return Err(out_of_order("stream_end", "no session to end"));
        };
        self.shared
            .lock()
            .end_session(session.id, Bytes::copy_from_slice(trailer));
        self.shared.data_ready.notify_one();
        Ok(())
    }
}

impl Drop for FragmentWriter {
    fn drop(&mut self) {
        let shutdown = {
            let mut state = self.shared.lock();
            if let Some(open) = self.open.take() {
                state.abort_fragment(open.id);
            }
            state.close_writer()
        };
        self.shared.data_ready.notify_one();
        self.shared.handle_closed(shutdown);
    }
}
