//! Matroska as Kinesis Video Streams ingests it: EBML writing, the fragment muxer, fragment
//! tags and event tags, timecode rules. No I/O: output goes to a [`MuxSink`].
//!
//! - [`ebml`]: element IDs, vints, a master-element writer.
//! - [`header`]: the stream header (EBML header, Segment, SegmentInfo, Tracks).
//! - [`tags`]: [`FragmentTags`], the thread-safe handle for metadata and events.
//! - [`interleave`]: merging tracks that arrive from separate threads into stream order.
//! - [`FragmentMuxer`]: frames in, fragments out; its module documentation states the
//!   fragment, timecode and error rules.

pub mod ebml;
pub mod header;
pub mod interleave;
mod muxer;
pub mod tags;

pub use muxer::{
    DEFAULT_FRAGMENT_DURATION, DEFAULT_MAX_TRACK_WAIT, FragmentMuxer, MAX_BLOCK_OFFSET_MS,
    MAX_FRAGMENT_DURATION, MuxError, MuxStats, MuxerConfig, TimecodeMode, TrackSpec,
    random_segment_uid,
};
pub use tags::{Event, EventKind, FragmentTags, TagError};

use bytes::Bytes;
use std::io;

/// A fragment (one Cluster, opened on a key frame) is starting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentStart {
    /// 0 for the stream's first fragment, then +1 per fragment.
    pub sequence: u64,
    /// The Cluster Timecode as written (ms; absolute = since the Unix epoch, relative = since the
    /// stream's first frame). This is the timecode KVS ACKs refer to.
    pub timecode_ms: u64,
    /// PTS of the key frame that opens the fragment, ns since the Unix epoch.
    pub pts_ns: u64,
}

/// A fragment has closed: every byte of it has been passed to the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentEnd {
    pub sequence: u64,
    pub timecode_ms: u64,
    /// Frames in the fragment, all tracks, generated silent audio frames included.
    pub frames: u32,
    /// Bytes of the fragment (tags, cluster, blocks), as passed to the sink.
    pub bytes: u64,
    /// Smallest and largest PTS in the fragment, ns since the Unix epoch.
    pub first_pts_ns: u64,
    pub last_pts_ns: u64,
    /// Bit `i` set when track `i` has at least one frame in the fragment.
    pub tracks_present: u8,
}

/// Where the muxer's output goes, in stream order:
/// `stream_header`, then per fragment `fragment_start`, `write`/`write_payload`…, `fragment_end`,
/// and `stream_end` once at the end.
pub trait MuxSink {
    /// EBML header, Segment (unknown size), SegmentInfo and Tracks: once per stream, before the
    /// first fragment. An uploader sends it again at the start of every connection.
    fn stream_header(&mut self, header: &Bytes) -> io::Result<()>;
    fn fragment_start(&mut self, start: &FragmentStart) -> io::Result<()>;
    /// Bytes the muxer built (tags, cluster and block headers, NAL length prefixes). Borrowed for
    /// this call only: copy what must be kept.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// A slice of a frame's payload, carried by reference: clone the `Bytes` to keep it.
    fn write_payload(&mut self, payload: &Bytes) -> io::Result<()>;
    fn fragment_end(&mut self, end: &FragmentEnd) -> io::Result<()>;
    /// After the last fragment: the end-of-session Tags (`AWS_KINESISVIDEO_END_OF_FRAGMENT`).
    fn stream_end(&mut self, trailer: &[u8]) -> io::Result<()>;
}
