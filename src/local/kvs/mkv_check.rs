//! A streaming Matroska reader that checks a PutMedia body as KVS does, chunk by chunk.
//!
//! [`MkvChecker::feed`] takes the body's chunks as they arrive (split anywhere, even inside an
//! element ID) and reports [`CheckEvent`]s: the stream header once the first Cluster starts,
//! a fragment start when a Cluster's Timecode is read, a fragment completion when the Cluster
//! ends (the next Cluster or Tags, or the end of the body), and at most one error, after which
//! the checker ignores its input.
//!
//! Layout accepted (reference: KVS producer notes §3, §4): one EBML header, one Segment of
//! known or unknown size holding SegmentInfo and Tracks before the first Cluster, then Tags and
//! Clusters (known or unknown size) of SimpleBlocks or BlockGroups. SeekHead, Cues, Chapters,
//! Attachments, Void and CRC-32 are skipped when their size is known.
//!
//! Fragment rules, each reported with the service's ACK error code:
//! - 4004: a block's timecode (cluster timecode + block offset) is not strictly after the last
//!   timecode of the previous fragment of this body;
//! - 4006: anything that is not a well-formed document of that layout (bad IDs or sizes, an
//!   element overrunning its parent, a second EBML header or Segment, Info or Tracks after the
//!   first Cluster, a Cluster without Timecode, laced blocks, a body ending inside an element);
//! - 4009: more than [`CheckLimits::max_tags_per_fragment`] Tag elements for one fragment (the
//!   `AWS_KINESISVIDEO_END_OF_FRAGMENT` tag does not count, an event's SimpleTags count once
//!   as one Tag), or a tag name or value longer than the limits;
//! - 4010: a block names a track number that Tracks does not declare;
//! - 4011: a declared track has no block in the fragment;
//! - 4012: Tracks declares more than [`CheckLimits::max_tracks`] tracks (reported for the first
//!   fragment);
//! - 4001 / 4002: a fragment larger or longer than the limits.
//!
//! Tags belong to the next fragment, except a run of Tags elements right after a Cluster that
//! ends with one holding `AWS_KINESISVIDEO_END_OF_FRAGMENT`: that run closes (and belongs to)
//! the fragment before it, as a producer writes an end-of-fragment close.
//!
//! Invariants: no input makes it panic or allocate without bound — elements it must hold whole
//! (EBML header, Info, Tracks, Tags, Timecode) have size caps, and the bytes of the fragment
//! being received are kept only up to [`CheckLimits::max_fragment_bytes`]. Payload bytes are
//! kept as `Bytes` slices of the input, never copied.

use super::ack::AckErrorCode;
use crate::mkv::ebml::id;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Element IDs the checker knows beyond those the muxer writes.
mod extra_id {
    pub const SEEK_HEAD: u32 = 0x114D_9B74;
    pub const CUES: u32 = 0x1C53_BB6B;
    pub const CHAPTERS: u32 = 0x1043_A770;
    pub const ATTACHMENTS: u32 = 0x1941_A469;
    pub const VOID: u32 = 0xEC;
    pub const CRC32: u32 = 0xBF;
    pub const POSITION: u32 = 0xA7;
    pub const PREV_SIZE: u32 = 0xAB;
    pub const BLOCK_GROUP: u32 = 0xA0;
    pub const BLOCK: u32 = 0xA1;
    pub const SILENT_TRACKS: u32 = 0x5854;
    pub const ENCRYPTED_BLOCK: u32 = 0xAF;
}
use extra_id::*;

/// The end-of-fragment tag name.
pub const END_OF_FRAGMENT: &str = crate::mkv::tags::END_OF_FRAGMENT;

const MAX_EBML_HEADER: u64 = 4 << 10;
const MAX_INFO: u64 = 64 << 10;
const MAX_TRACKS_ELEMENT: u64 = 4 << 20;
const MAX_TAGS_ELEMENT: u64 = 1 << 20;
const MAX_TIMECODE: u64 = 8;
/// Track number (≤ 8-byte vint) + 16-bit timecode + flags.
const MAX_BLOCK_HEADER: usize = 11;

/// The service limits the checker enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLimits {
    /// Longest fragment (last block timecode − first), else 4002.
    pub max_fragment_duration: Duration,
    /// Largest fragment in bytes (tags and cluster), else 4001.
    pub max_fragment_bytes: u64,
    /// Most tracks Tracks may declare, else 4012.
    pub max_tracks: usize,
    /// Most Tag elements per fragment, else 4009.
    pub max_tags_per_fragment: usize,
    /// Longest TagName in bytes, else 4009.
    pub max_tag_name: usize,
    /// Longest TagString in bytes, else 4009.
    pub max_tag_value: usize,
}

impl Default for CheckLimits {
    /// KVS's quotas: 20 s, 50 MB, 3 tracks, 10 tags of ≤ 128-byte names and ≤ 256-byte values.
    fn default() -> Self {
        Self {
            max_fragment_duration: Duration::from_secs(20),
            max_fragment_bytes: 50_000_000,
            max_tracks: 3,
            max_tags_per_fragment: crate::mkv::tags::MAX_TAGS_PER_FRAGMENT,
            max_tag_name: crate::mkv::tags::MAX_NAME_LEN,
            max_tag_value: crate::mkv::tags::MAX_VALUE_LEN,
        }
    }
}

/// One track as Tracks declares it. Equality ignores the track name: it is what decides
/// whether two sessions can share one stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    /// TrackNumber (what blocks refer to).
    pub number: u64,
    /// TrackUID (0 when absent).
    pub uid: u64,
    /// TrackType (1 video, 2 audio; 0 when absent).
    pub track_type: u64,
    /// CodecID.
    pub codec_id: String,
    /// CodecPrivate (empty when absent).
    pub codec_private: Bytes,
    /// The raw Video / Audio elements (sizes, sampling rate, channels).
    pub settings: Bytes,
}

/// What precedes the first Cluster, kept to write a playable file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// The whole EBML header element.
    pub ebml: Bytes,
    /// The whole SegmentInfo element.
    pub info: Bytes,
    /// The whole Tracks element.
    pub tracks_element: Bytes,
    /// TimecodeScale, ns per timecode unit.
    pub timecode_scale_ns: u64,
    /// The declared tracks, in order.
    pub tracks: Vec<TrackInfo>,
}

impl StreamHeader {
    /// True when fragments of `other` can follow fragments of `self` in one file: same
    /// timecode scale and the same tracks (numbers, types, codecs, codec data, settings).
    pub fn same_layout(&self, other: &StreamHeader) -> bool {
        self.timecode_scale_ns == other.timecode_scale_ns && self.tracks == other.tracks
    }
}

/// Frames of one track in a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackFrames {
    /// TrackNumber.
    pub track: u64,
    /// Blocks.
    pub frames: u32,
    /// Blocks flagged key frame.
    pub key_frames: u32,
}

/// A fragment that arrived whole and passed every rule.
#[derive(Debug, Clone)]
pub struct CompletedFragment {
    /// 0 for the body's first fragment.
    pub index: u64,
    /// The Cluster Timecode as sent (timecode-scale units).
    pub timecode: u64,
    /// Smallest and largest block timecode (cluster timecode + block offset).
    pub first_timecode: i64,
    /// See `first_timecode`.
    pub last_timecode: i64,
    /// Per declared track, in Tracks order.
    pub frames: Vec<TrackFrames>,
    /// Bytes of the fragment as received (its tags and its cluster).
    pub bytes: u64,
    /// Tag name/value pairs attached to the fragment, in order (end-of-fragment included).
    pub tags: Vec<(String, String)>,
    /// True when the fragment's first block is a key frame.
    pub starts_with_key_frame: bool,
    /// Whole Tags elements that came before the Cluster.
    pub tags_before: Vec<Bytes>,
    /// The Cluster's children after its Timecode element, as received.
    pub cluster_body: Vec<Bytes>,
    /// A Tags element with the end-of-fragment tag that closed the fragment.
    pub tags_after: Vec<Bytes>,
}

/// What the checker found.
#[derive(Debug, Clone)]
pub enum CheckEvent {
    /// The first Cluster started: the header is complete.
    Header(Arc<StreamHeader>),
    /// A Cluster's Timecode was read: the fragment is being received.
    FragmentStart {
        /// 0 for the body's first fragment.
        index: u64,
        /// The Cluster Timecode.
        timecode: u64,
    },
    /// A fragment arrived whole and passed the rules.
    FragmentComplete(Box<CompletedFragment>),
    /// A rule was broken; the checker stops here.
    Error(CheckError),
}

/// A broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckError {
    /// The ACK error code.
    pub code: AckErrorCode,
    /// The fragment's Cluster Timecode when a fragment had started.
    pub timecode: Option<u64>,
    /// Byte offset in the body where the problem was found.
    pub offset: u64,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}) at byte {}: {}",
            self.code.name(),
            self.code.id(),
            self.offset,
            self.message
        )
    }
}

impl std::error::Error for CheckError {}

/// The body's bytes from the oldest one still needed, as the chunks that carried them.
#[derive(Debug, Default)]
struct ByteLog {
    chunks: VecDeque<Bytes>,
    /// Body offset of the first byte of `chunks[0]`.
    base: u64,
    /// Body offset one past the last byte received.
    end: u64,
}

impl ByteLog {
    fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.end += chunk.len() as u64;
        self.chunks.push_back(chunk);
    }

    /// Forgets bytes before `offset`.
    fn discard_before(&mut self, offset: u64) {
        let offset = offset.min(self.end);
        while let Some(front) = self.chunks.front_mut() {
            let front_end = self.base + front.len() as u64;
            if front_end <= offset {
                self.base = front_end;
                self.chunks.pop_front();
            } else {
                if offset > self.base {
                    // offset - base < front.len(), which is a usize.
                    front.advance((offset - self.base) as usize);
                    self.base = offset;
                }
                break;
            }
        }
        if self.chunks.is_empty() {
            self.base = self.end;
        }
    }

    /// The chunk holding `offset` and the position in it; searched from the newest chunk
    /// because the parser reads near the end.
    fn locate(&self, offset: u64) -> Option<(usize, usize)> {
        if offset < self.base || offset >= self.end {
            return None;
        }
        let mut chunk_end = self.end;
        for (index, chunk) in self.chunks.iter().enumerate().rev() {
            let chunk_start = chunk_end - chunk.len() as u64;
            if offset >= chunk_start {
                return Some((index, (offset - chunk_start) as usize));
            }
            chunk_end = chunk_start;
        }
        None
    }

    /// Copies up to `out.len()` bytes from `offset`; returns how many were available.
    fn peek(&self, offset: u64, out: &mut [u8]) -> usize {
        let Some((mut index, mut at)) = self.locate(offset) else {
            return 0;
        };
        let mut copied = 0;
        while copied < out.len() {
            let Some(chunk) = self.chunks.get(index) else {
                break;
            };
            let available = chunk.get(at..).unwrap_or_default();
            let take = available.len().min(out.len() - copied);
            if let (Some(dst), Some(src)) =
                (out.get_mut(copied..copied + take), available.get(..take))
            {
                dst.copy_from_slice(src);
            }
            copied += take;
            index += 1;
            at = 0;
        }
        copied
    }

    /// Slices of the chunks covering `range` (which must have been received and kept).
    fn pieces(&self, range: Range<u64>, out: &mut Vec<Bytes>) {
        if range.start >= range.end {
            return;
        }
        let Some((mut index, mut at)) = self.locate(range.start) else {
            return;
        };
        let mut remaining = range.end.min(self.end) - range.start;
        while remaining > 0 {
            let Some(chunk) = self.chunks.get(index) else {
                break;
            };
            let available = chunk.len().saturating_sub(at);
            let take = (available as u64).min(remaining) as usize;
            if take > 0 {
                out.push(chunk.slice(at..at + take));
            }
            remaining -= take as u64;
            index += 1;
            at = 0;
        }
    }

    /// `range` as one buffer: a slice when one chunk holds it, else a copy.
    fn contiguous(&self, range: Range<u64>) -> Bytes {
        let mut pieces = Vec::new();
        self.pieces(range, &mut pieces);
        if pieces.len() == 1 {
            return pieces.pop().unwrap_or_default();
        }
        let mut joined = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
        for piece in &pieces {
            joined.extend_from_slice(piece);
        }
        joined.freeze()
    }
}

/// An element header as read.
#[derive(Debug, Clone, Copy)]
struct ElementHeader {
    id: u32,
    /// Offset of the ID's first byte.
    start: u64,
    /// Offset of the payload's first byte.
    payload_start: u64,
    /// Payload size; `None` for "unknown size".
    size: Option<u64>,
}

impl ElementHeader {
    fn payload_end(&self) -> Option<u64> {
        self.size
            .map(|size| self.payload_start.saturating_add(size))
    }
}

/// What the parser waits for.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The next element header at `pos`.
    Header,
    /// The whole element `[start, end)` (payload from `payload_start`), to handle at once.
    Whole {
        id: u32,
        start: u64,
        payload_start: u64,
        end: u64,
    },
    /// Nothing until `end` (payload skipped or kept by the fragment capture).
    Skip { end: u64 },
    /// A block's header at `payload_start`, then skip to `end`.
    Block {
        id: u32,
        payload_start: u64,
        end: u64,
    },
}

/// A master element the parser is inside.
#[derive(Debug, Clone, Copy)]
struct Open {
    id: u32,
    end: Option<u64>,
}

/// Tags read whole.
#[derive(Debug, Clone)]
struct ParsedTags {
    range: Range<u64>,
    items: Vec<(String, String)>,
    /// Tag elements other than the end-of-fragment one.
    tag_count: usize,
    end_of_fragment: bool,
    /// The first name or value over the limits, described.
    too_long: Option<String>,
}

/// The fragment being received.
#[derive(Debug)]
struct OpenFragment {
    index: u64,
    cluster_start: u64,
    timecode: Option<u64>,
    body_start: u64,
    /// Set when the Cluster ended (its children end here).
    body_end: Option<u64>,
    tags_before: Vec<ParsedTags>,
    /// Blocks per declared track (Tracks order).
    frames: Vec<TrackFrames>,
    first_timecode: Option<i64>,
    last_timecode: Option<i64>,
    starts_with_key_frame: Option<bool>,
}

impl OpenFragment {
    fn retain_from(&self) -> u64 {
        self.tags_before.first().map_or(self.cluster_start, |t| {
            t.range.start.min(self.cluster_start)
        })
    }
}

#[derive(Debug, Default)]
struct HeaderParts {
    ebml: Option<Bytes>,
    info: Option<(Bytes, u64)>,
    tracks: Option<(Bytes, Vec<TrackInfo>)>,
    built: Option<Arc<StreamHeader>>,
}

/// The streaming checker for one PutMedia body.
#[derive(Debug)]
pub struct MkvChecker {
    limits: CheckLimits,
    log: ByteLog,
    /// Next byte to parse.
    pos: u64,
    expect: Expect,
    stack: Vec<Open>,
    segment_seen: bool,
    header: HeaderParts,
    fragment: Option<OpenFragment>,
    /// Tags waiting for the next Cluster.
    pending_tags: Vec<ParsedTags>,
    /// Tags after a closed Cluster, until an end-of-fragment tag claims them for it or
    /// something else hands them to the next fragment.
    closing_tags: Vec<ParsedTags>,
    /// Largest block timecode of the previous fragment.
    previous_last: Option<i64>,
    fragments_started: u64,
    failed: bool,
}

type Step = Result<(), CheckError>;

impl MkvChecker {
    /// A checker for a new body.
    pub fn new(limits: CheckLimits) -> Self {
        Self {
            limits,
            log: ByteLog::default(),
            pos: 0,
            expect: Expect::Header,
            stack: Vec::with_capacity(4),
            segment_seen: false,
            header: HeaderParts::default(),
            fragment: None,
            pending_tags: Vec::new(),
            closing_tags: Vec::new(),
            previous_last: None,
            fragments_started: 0,
            failed: false,
        }
    }

    /// Bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.log.end
    }

    /// True once an error was reported.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// The stream header, once the first Cluster started.
    pub fn header(&self) -> Option<&Arc<StreamHeader>> {
        self.header.built.as_ref()
    }

    /// Takes the next chunk of the body; appends what it found to `out`.
    pub fn feed(&mut self, chunk: Bytes, out: &mut Vec<CheckEvent>) {
        if self.failed {
            return;
        }
        self.log.push(chunk);
        if let Err(error) = self.run(out) {
            self.fail(error, out);
        }
        self.trim();
    }

    /// The body ended: completes the open fragment, or reports a body cut inside an element.
    pub fn finish(&mut self, out: &mut Vec<CheckEvent>) {
        if self.failed {
            return;
        }
        let result = self.finish_inner(out);
        if let Err(error) = result {
            self.fail(error, out);
        }
    }

    fn finish_inner(&mut self, out: &mut Vec<CheckEvent>) -> Step {
        self.run(out)?;
        let cut = !matches!(self.expect, Expect::Header) || self.pos < self.log.end;
        if cut {
            return Err(self.error(
                AckErrorCode::InvalidMkvData,
                self.pos,
                format!(
                    "the body ended inside an element ({} bytes received)",
                    self.log.end
                ),
            ));
        }
        // Known-size masters must be complete; unknown-size ones end with the body.
        while let Some(open) = self.stack.pop() {
            if let Some(end) = open.end
                && end > self.pos
            {
                return Err(self.error(
                    AckErrorCode::InvalidMkvData,
                    self.pos,
                    format!(
                        "the body ended inside element {:#X}, which declares {} more bytes",
                        open.id,
                        end - self.pos
                    ),
                ));
            }
            if open.id == id::CLUSTER {
                self.end_cluster(self.pos)?;
            }
        }
        self.complete_closed_fragment(false, out)
    }

    fn fail(&mut self, error: CheckError, out: &mut Vec<CheckEvent>) {
        self.failed = true;
        self.fragment = None;
        self.pending_tags.clear();
        self.closing_tags.clear();
        self.log = ByteLog::default();
        out.push(CheckEvent::Error(error));
    }

    fn error(&self, code: AckErrorCode, offset: u64, message: String) -> CheckError {
        CheckError {
            code,
            timecode: self.fragment.as_ref().and_then(|f| f.timecode),
            offset,
            message,
        }
    }

    fn invalid(&self, offset: u64, message: String) -> CheckError {
        self.error(AckErrorCode::InvalidMkvData, offset, message)
    }

    /// Drops bytes no one needs any more.
    fn trim(&mut self) {
        let mut keep = match self.expect {
            Expect::Header | Expect::Skip { .. } => self.pos,
            Expect::Whole { start, .. } => start,
            Expect::Block { payload_start, .. } => payload_start,
        };
        if let Some(fragment) = &self.fragment {
            keep = keep.min(fragment.retain_from());
        }
        if let Some(first) = self.pending_tags.first().or(self.closing_tags.first()) {
            keep = keep.min(first.range.start);
        }
        self.log.discard_before(keep);
    }

    fn run(&mut self, out: &mut Vec<CheckEvent>) -> Step {
        loop {
            match self.expect {
                Expect::Header => {
                    self.close_finished_masters()?;
                    let Some(header) = self.read_header()? else {
                        return Ok(());
                    };
                    self.on_header(header, out)?;
                }
                Expect::Whole {
                    id,
                    start,
                    payload_start,
                    end,
                } => {
                    if self.log.end < end {
                        return Ok(());
                    }
                    let whole = self.log.contiguous(start..end);
                    self.pos = end;
                    self.expect = Expect::Header;
                    let payload_at = usize::try_from(payload_start - start).unwrap_or(usize::MAX);
                    self.on_whole(id, start..end, whole, payload_at, out)?;
                }
                Expect::Skip { end } => {
                    if self.log.end < end {
                        self.pos = self.log.end;
                        self.check_fragment_size(self.pos)?;
                        return Ok(());
                    }
                    self.pos = end;
                    self.expect = Expect::Header;
                }
                Expect::Block {
                    id,
                    payload_start,
                    end,
                } => {
                    let mut head = [0u8; MAX_BLOCK_HEADER];
                    let wanted = usize::try_from(end - payload_start)
                        .unwrap_or(usize::MAX)
                        .min(MAX_BLOCK_HEADER);
                    let got = self.log.peek(payload_start, &mut head[..wanted]);
                    let Some(parsed) = parse_block_header(head.get(..got).unwrap_or_default())
                    else {
                        if got == wanted {
                            return Err(self.invalid(
                                payload_start,
                                format!(
                                    "block of {} bytes is too short for its header",
                                    end - payload_start
                                ),
                            ));
                        }
                        return Ok(());
                    };
                    self.on_block(id, payload_start, parsed)?;
                    self.expect = Expect::Skip { end };
                }
            }
        }
    }

    /// Pops known-size masters that end at `pos`, and the unknown-size ones inside them.
    fn close_finished_masters(&mut self) -> Step {
        while let Some(index) = self
            .stack
            .iter()
            .rposition(|open| open.end.is_some_and(|end| end <= self.pos))
        {
            let Some(open) = self.stack.get(index).copied() else {
                break;
            };
            if let Some(end) = open.end
                && end < self.pos
            {
                return Err(self.invalid(
                    end,
                    format!("a child overran element {:#X} ending here", open.id),
                ));
            }
            while self.stack.len() > index {
                if let Some(popped) = self.stack.pop()
                    && popped.id == id::CLUSTER
                {
                    self.end_cluster(self.pos)?;
                }
            }
        }
        Ok(())
    }

    /// Reads the element header at `pos`, or `None` until enough bytes arrived.
    fn read_header(&mut self) -> Result<Option<ElementHeader>, CheckError> {
        let mut head = [0u8; 12];
        let got = self.log.peek(self.pos, &mut head);
        let Some(&first) = head.first().filter(|_| got > 0) else {
            return Ok(None);
        };
        let id_len = match first.leading_zeros() {
            n @ 0..=3 => n as usize + 1,
            _ => {
                return Err(self.invalid(
                    self.pos,
                    format!("byte {first:#04X} cannot start an element ID"),
                ));
            }
        };
        if got < id_len + 1 {
            return Ok(None);
        }
        let id_bytes = head.get(..id_len).unwrap_or_default();
        let id = id_bytes
            .iter()
            .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        let value_mask = 0xFFu8 >> id_len;
        if first & value_mask == value_mask && id_bytes.iter().skip(1).all(|b| *b == 0xFF) {
            return Err(self.invalid(self.pos, format!("reserved element ID {id:#X}")));
        }
        let size_first = head.get(id_len).copied().unwrap_or(0);
        if size_first == 0 {
            return Err(self.invalid(
                self.pos + id_len as u64,
                format!("element {id:#X} has a size field longer than 8 bytes"),
            ));
        }
        let size_len = size_first.leading_zeros() as usize + 1;
        if got < id_len + size_len {
            return Ok(None);
        }
        let size_bytes = head.get(id_len..id_len + size_len).unwrap_or_default();
        let marker_mask: u8 = if size_len >= 8 { 0 } else { 0xFF >> size_len };
        let mut value = u64::from(size_first & marker_mask);
        let mut all_ones = (size_first & marker_mask) == marker_mask;
        for byte in size_bytes.iter().skip(1) {
            value = (value << 8) | u64::from(*byte);
            all_ones &= *byte == 0xFF;
        }
        let header = ElementHeader {
            id,
            start: self.pos,
            payload_start: self.pos + (id_len + size_len) as u64,
            size: (!all_ones).then_some(value),
        };
        self.pos = header.payload_start;
        Ok(Some(header))
    }

    fn on_header(&mut self, header: ElementHeader, out: &mut Vec<CheckEvent>) -> Step {
        // An element that is not a child of an unknown-size parent ends that parent.
        while let Some(parent) = self.stack.last().copied() {
            let child = match parent.id {
                id::SEGMENT => is_segment_child(header.id),
                id::CLUSTER => is_cluster_child(header.id),
                _ => true,
            };
            if child || parent.end.is_some() {
                break;
            }
            self.stack.pop();
            if parent.id == id::CLUSTER {
                self.end_cluster(header.start)?;
            }
        }
        if let (Some(parent_end), Some(end)) =
            (self.stack.last().and_then(|p| p.end), header.payload_end())
            && end > parent_end
        {
            return Err(self.invalid(
                header.start,
                format!(
                    "element {:#X} of {} bytes overruns its parent, which ends at byte {parent_end}",
                    header.id,
                    end - header.payload_start
                ),
            ));
        }
        // A closed Cluster is completed now unless Tags follow (they may close it).
        let closed_pending = self.fragment.as_ref().is_some_and(|f| f.body_end.is_some());
        if closed_pending && header.id != id::TAGS {
            self.complete_closed_fragment(false, out)?;
        }
        match self.stack.last().map(|p| p.id) {
            None => self.on_top_level(header),
            Some(id::SEGMENT) => self.on_segment_child(header, out),
            Some(id::CLUSTER) => self.on_cluster_child(header),
            Some(BLOCK_GROUP) => {
                if header.id == BLOCK {
                    self.expect_block(header)
                } else {
                    self.skip(header)
                }
            }
            Some(other) => Err(self.invalid(
                header.start,
                format!("internal: no rule for children of {other:#X}"),
            )),
        }
    }

    fn on_top_level(&mut self, header: ElementHeader) -> Step {
        match header.id {
            id::EBML if self.header.ebml.is_none() => {
                self.expect_whole(header, MAX_EBML_HEADER, "EBML header")
            }
            id::EBML => Err(self.invalid(
                header.start,
                "a second EBML header: a PutMedia body holds one document".to_owned(),
            )),
            id::SEGMENT if self.header.ebml.is_none() => {
                Err(self.invalid(header.start, "Segment before the EBML header".to_owned()))
            }
            id::SEGMENT if self.segment_seen => Err(self.invalid(
                header.start,
                "a second Segment: a PutMedia body holds one segment".to_owned(),
            )),
            id::SEGMENT => {
                self.segment_seen = true;
                self.stack.push(Open {
                    id: id::SEGMENT,
                    end: header.payload_end(),
                });
                Ok(())
            }
            other if self.header.ebml.is_none() => Err(self.invalid(
                header.start,
                format!("not a Matroska document: it starts with element {other:#X}"),
            )),
            other => Err(self.invalid(
                header.start,
                format!("element {other:#X} outside the Segment"),
            )),
        }
    }

    fn on_segment_child(&mut self, header: ElementHeader, out: &mut Vec<CheckEvent>) -> Step {
        match header.id {
            id::INFO | id::TRACKS if self.header.built.is_some() => Err(self.invalid(
                header.start,
                format!(
                    "{} after the first Cluster",
                    if header.id == id::INFO {
                        "SegmentInfo"
                    } else {
                        "Tracks"
                    }
                ),
            )),
            id::INFO => self.expect_whole(header, MAX_INFO, "SegmentInfo"),
            id::TRACKS => self.expect_whole(header, MAX_TRACKS_ELEMENT, "Tracks"),
            id::TAGS => self.expect_whole(header, MAX_TAGS_ELEMENT, "Tags"),
            id::CLUSTER => self.start_cluster(header, out),
            _ => self.skip(header),
        }
    }

    fn on_cluster_child(&mut self, header: ElementHeader) -> Step {
        match header.id {
            id::TIMECODE => self.expect_whole(header, MAX_TIMECODE, "Cluster Timecode"),
            id::SIMPLE_BLOCK => self.expect_block(header),
            BLOCK_GROUP => {
                if header.size.is_none() {
                    return Err(self.invalid(header.start, "BlockGroup of unknown size".to_owned()));
                }
                self.stack.push(Open {
                    id: BLOCK_GROUP,
                    end: header.payload_end(),
                });
                Ok(())
            }
            _ => self.skip(header),
        }
    }

    fn expect_whole(&mut self, header: ElementHeader, limit: u64, what: &str) -> Step {
        let Some(size) = header.size else {
            return Err(self.invalid(header.start, format!("{what} of unknown size")));
        };
        if size > limit {
            return Err(self.invalid(
                header.start,
                format!("{what} of {size} bytes is larger than the {limit} accepted"),
            ));
        }
        self.expect = Expect::Whole {
            id: header.id,
            start: header.start,
            payload_start: header.payload_start,
            end: header.payload_start + size,
        };
        Ok(())
    }

    fn expect_block(&mut self, header: ElementHeader) -> Step {
        let Some(end) = header.payload_end() else {
            return Err(self.invalid(header.start, "block of unknown size".to_owned()));
        };
        self.expect = Expect::Block {
            id: header.id,
            payload_start: header.payload_start,
            end,
        };
        Ok(())
    }

    fn skip(&mut self, header: ElementHeader) -> Step {
        let Some(end) = header.payload_end() else {
            return Err(self.invalid(
                header.start,
                format!("element {:#X} of unknown size cannot be skipped", header.id),
            ));
        };
        self.expect = Expect::Skip { end };
        Ok(())
    }

    fn on_whole(
        &mut self,
        element: u32,
        range: Range<u64>,
        whole: Bytes,
        payload_at: usize,
        out: &mut Vec<CheckEvent>,
    ) -> Step {
        let payload = whole.get(payload_at..).unwrap_or_default();
        let base = range.start + payload_at as u64;
        match element {
            id::EBML => {
                check_ebml_header(payload, base)?;
                self.header.ebml = Some(whole);
            }
            id::INFO => {
                let scale = parse_info(payload, base)?;
                self.header.info = Some((whole, scale));
            }
            id::TRACKS => {
                let tracks = parse_tracks(payload, base)?;
                self.header.tracks = Some((whole, tracks));
            }
            id::TAGS => {
                let tags = parse_tags(payload, base, range, &self.limits)?;
                let closed_pending = self.fragment.as_ref().is_some_and(|f| f.body_end.is_some());
                if closed_pending {
                    let end_of_fragment = tags.end_of_fragment;
                    self.closing_tags.push(tags);
                    if end_of_fragment {
                        return self.complete_closed_fragment(true, out);
                    }
                } else {
                    self.pending_tags.push(tags);
                }
            }
            id::TIMECODE => {
                let timecode = read_uint(payload).ok_or_else(|| {
                    self.invalid(
                        range.start,
                        "Cluster Timecode longer than 8 bytes".to_owned(),
                    )
                })?;
                self.on_cluster_timecode(timecode, range, out)?;
            }
            other => {
                return Err(self.invalid(
                    range.start,
                    format!("internal: element {other:#X} was read whole with no rule"),
                ));
            }
        }
        Ok(())
    }

    fn start_cluster(&mut self, header: ElementHeader, out: &mut Vec<CheckEvent>) -> Step {
        if self.header.built.is_none() {
            let built = self.build_header(header.start)?;
            out.push(CheckEvent::Header(Arc::clone(&built)));
            self.header.built = Some(built);
        }
        let frames = self
            .header
            .built
            .as_ref()
            .map(|h| {
                h.tracks
                    .iter()
                    .map(|t| TrackFrames {
                        track: t.number,
                        frames: 0,
                        key_frames: 0,
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.fragment = Some(OpenFragment {
            index: self.fragments_started,
            cluster_start: header.start,
            timecode: None,
            body_start: header.payload_start,
            body_end: None,
            tags_before: std::mem::take(&mut self.pending_tags),
            frames,
            first_timecode: None,
            last_timecode: None,
            starts_with_key_frame: None,
        });
        self.fragments_started += 1;
        self.stack.push(Open {
            id: id::CLUSTER,
            end: header.payload_end(),
        });
        Ok(())
    }

    fn build_header(&self, at: u64) -> Result<Arc<StreamHeader>, CheckError> {
        let (Some(ebml), Some((info, scale)), Some((tracks_element, tracks))) = (
            self.header.ebml.clone(),
            self.header.info.clone(),
            self.header.tracks.clone(),
        ) else {
            return Err(self.invalid(at, "Cluster before SegmentInfo and Tracks".to_owned()));
        };
        Ok(Arc::new(StreamHeader {
            ebml,
            info,
            tracks_element,
            timecode_scale_ns: scale,
            tracks,
        }))
    }

    fn on_cluster_timecode(
        &mut self,
        timecode: u64,
        range: Range<u64>,
        out: &mut Vec<CheckEvent>,
    ) -> Step {
        let max_tracks = self.limits.max_tracks;
        let max_tags = self.limits.max_tags_per_fragment;
        let track_count = self.header.built.as_ref().map_or(0, |h| h.tracks.len());
        let (index, tag_count, too_long) = match &self.fragment {
            None => return Err(self.invalid(range.start, "Timecode outside a Cluster".to_owned())),
            Some(f) if f.timecode.is_some() => {
                return Err(
                    self.invalid(range.start, "a second Timecode in one Cluster".to_owned())
                );
            }
            Some(f) => (
                f.index,
                f.tags_before.iter().map(|t| t.tag_count).sum::<usize>(),
                f.tags_before.iter().find_map(|t| t.too_long.clone()),
            ),
        };
        if i64::try_from(timecode).is_err() {
            return Err(self.invalid(
                range.start,
                format!("Cluster Timecode {timecode} is out of range"),
            ));
        }
        if let Some(fragment) = self.fragment.as_mut() {
            fragment.timecode = Some(timecode);
            fragment.body_start = range.end;
        }
        out.push(CheckEvent::FragmentStart { index, timecode });

        if index == 0 && track_count > max_tracks {
            return Err(self.error(
                AckErrorCode::MoreThanAllowedTracksFound,
                range.start,
                format!("Tracks declares {track_count} tracks, more than the {max_tracks} allowed"),
            ));
        }
        if let Some(what) = too_long {
            return Err(self.error(
                AckErrorCode::FragmentMetadataLimitReached,
                range.start,
                what,
            ));
        }
        if tag_count > max_tags {
            return Err(self.error(
                AckErrorCode::FragmentMetadataLimitReached,
                range.start,
                format!("{tag_count} tags for one fragment, more than the {max_tags} allowed"),
            ));
        }
        if let Some(previous) = self.previous_last
            && i64::try_from(timecode).is_ok_and(|t| t <= previous)
        {
            return Err(self.error(
                AckErrorCode::FragmentTimecodeLesserThanPrevious,
                range.start,
                format!(
                    "fragment timecode {timecode} is not after the previous fragment's last frame at {previous}"
                ),
            ));
        }
        Ok(())
    }

    fn on_block(&mut self, element: u32, payload_start: u64, block: BlockHeader) -> Step {
        let scale = self
            .header
            .built
            .as_ref()
            .map_or(1, |h| h.timecode_scale_ns);
        let max_duration_ns = self.limits.max_fragment_duration.as_nanos();
        let cluster_timecode = match &self.fragment {
            None => return Err(self.invalid(payload_start, "block outside a Cluster".to_owned())),
            Some(f) => f.timecode,
        };
        let Some(cluster_timecode) = cluster_timecode else {
            return Err(self.invalid(
                payload_start,
                "block before the Cluster's Timecode".to_owned(),
            ));
        };
        if block.laced {
            return Err(self.invalid(
                payload_start,
                format!(
                    "laced block on track {}: KVS takes one frame per block",
                    block.track
                ),
            ));
        }
        let key = element == id::SIMPLE_BLOCK && block.key;
        let absolute = i64::try_from(cluster_timecode)
            .unwrap_or(i64::MAX)
            .saturating_add(i64::from(block.offset));
        let mut known_track = false;
        let mut span = (absolute, absolute);
        if let Some(fragment) = self.fragment.as_mut()
            && let Some(track) = fragment.frames.iter_mut().find(|t| t.track == block.track)
        {
            known_track = true;
            track.frames += 1;
            if key {
                track.key_frames += 1;
            }
            fragment.starts_with_key_frame.get_or_insert(key);
            let first = fragment
                .first_timecode
                .map_or(absolute, |f| f.min(absolute));
            let last = fragment.last_timecode.map_or(absolute, |l| l.max(absolute));
            fragment.first_timecode = Some(first);
            fragment.last_timecode = Some(last);
            span = (first, last);
        }
        if !known_track {
            return Err(self.error(
                AckErrorCode::TrackNumberMismatch,
                payload_start,
                format!(
                    "block for track {} which Tracks does not declare",
                    block.track
                ),
            ));
        }
        if let Some(previous) = self.previous_last
            && absolute <= previous
        {
            return Err(self.error(
                AckErrorCode::FragmentTimecodeLesserThanPrevious,
                payload_start,
                format!(
                    "frame at timecode {absolute} (track {}) is not after the previous fragment's last frame at {previous}",
                    block.track
                ),
            ));
        }
        let span_ns = u128::from(span.1.abs_diff(span.0)) * u128::from(scale);
        if span_ns > max_duration_ns {
            return Err(self.error(
                AckErrorCode::MaxFragmentDurationReached,
                payload_start,
                format!(
                    "fragment spans {} ms, longer than the {} ms allowed",
                    span_ns / 1_000_000,
                    max_duration_ns / 1_000_000
                ),
            ));
        }
        self.check_fragment_size(payload_start)
    }

    fn check_fragment_size(&self, upto: u64) -> Step {
        if let Some(fragment) = &self.fragment
            && fragment.body_end.is_none()
        {
            let bytes = upto.saturating_sub(fragment.retain_from());
            if bytes > self.limits.max_fragment_bytes {
                return Err(self.error(
                    AckErrorCode::MaxFragmentSizeReached,
                    upto,
                    format!(
                        "fragment passed {bytes} bytes, more than the {} allowed",
                        self.limits.max_fragment_bytes
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The open Cluster ends at `end`.
    fn end_cluster(&mut self, end: u64) -> Step {
        let Some(fragment) = self.fragment.as_mut() else {
            return Ok(());
        };
        if fragment.body_end.is_some() {
            return Ok(());
        }
        if fragment.timecode.is_none() {
            return Err(self.invalid(end, "a Cluster ended without a Timecode".to_owned()));
        }
        fragment.body_end = Some(end);
        Ok(())
    }

    /// Completes the fragment whose Cluster ended; with `claim_tags`, the Tags run after it
    /// (ended by an end-of-fragment tag) belongs to it, else that run goes to the next one.
    fn complete_closed_fragment(&mut self, claim_tags: bool, out: &mut Vec<CheckEvent>) -> Step {
        let Some(body_end) = self.fragment.as_ref().and_then(|f| f.body_end) else {
            return Ok(());
        };
        let Some(fragment) = self.fragment.take() else {
            return Ok(());
        };
        let closing = std::mem::take(&mut self.closing_tags);
        let closing = if claim_tags {
            closing
        } else {
            // Earlier tags stay first: they were already waiting when these arrived.
            self.pending_tags.extend(closing);
            Vec::new()
        };
        let timecode = fragment.timecode.unwrap_or_default();
        let error_at = |code, message| CheckError {
            code,
            timecode: Some(timecode),
            offset: body_end,
            message,
        };
        if let Some(missing) = fragment.frames.iter().find(|t| t.frames == 0) {
            return Err(error_at(
                AckErrorCode::FramesMissingForTrack,
                format!("track {} has no frame in the fragment", missing.track),
            ));
        }
        if let Some(what) = closing.iter().find_map(|t| t.too_long.clone()) {
            return Err(error_at(AckErrorCode::FragmentMetadataLimitReached, what));
        }
        let count: usize = closing
            .iter()
            .chain(&fragment.tags_before)
            .map(|t| t.tag_count)
            .sum();
        if count > self.limits.max_tags_per_fragment {
            return Err(error_at(
                AckErrorCode::FragmentMetadataLimitReached,
                format!(
                    "{count} tags for one fragment, more than the {} allowed",
                    self.limits.max_tags_per_fragment
                ),
            ));
        }
        let first = fragment.first_timecode.unwrap_or_default();
        let last = fragment.last_timecode.unwrap_or_default();
        let mut tags_before = Vec::new();
        let mut tags = Vec::new();
        let mut bytes = body_end - fragment.cluster_start;
        for parsed in &fragment.tags_before {
            self.log.pieces(parsed.range.clone(), &mut tags_before);
            tags.extend(parsed.items.iter().cloned());
            bytes += parsed.range.end - parsed.range.start;
        }
        let mut cluster_body = Vec::new();
        self.log
            .pieces(fragment.body_start..body_end, &mut cluster_body);
        let mut tags_after = Vec::new();
        for parsed in &closing {
            self.log.pieces(parsed.range.clone(), &mut tags_after);
            tags.extend(parsed.items.iter().cloned());
            bytes += parsed.range.end - parsed.range.start;
        }
        self.previous_last = Some(last);
        out.push(CheckEvent::FragmentComplete(Box::new(CompletedFragment {
            index: fragment.index,
            timecode,
            first_timecode: first,
            last_timecode: last,
            frames: fragment.frames,
            bytes,
            tags,
            starts_with_key_frame: fragment.starts_with_key_frame.unwrap_or(false),
            tags_before,
            cluster_body,
            tags_after,
        })));
        Ok(())
    }
}

fn is_segment_child(element: u32) -> bool {
    matches!(
        element,
        id::INFO
            | id::TRACKS
            | id::CLUSTER
            | id::TAGS
            | SEEK_HEAD
            | CUES
            | CHAPTERS
            | ATTACHMENTS
            | VOID
            | CRC32
    )
}

fn is_cluster_child(element: u32) -> bool {
    matches!(
        element,
        id::TIMECODE
            | id::SIMPLE_BLOCK
            | BLOCK_GROUP
            | POSITION
            | PREV_SIZE
            | VOID
            | CRC32
            | SILENT_TRACKS
            | ENCRYPTED_BLOCK
    )
}

/// The fixed part of a (Simple)Block.
#[derive(Debug, Clone, Copy)]
struct BlockHeader {
    track: u64,
    offset: i16,
    key: bool,
    laced: bool,
}

/// Parses a block header, or `None` when `data` is too short for it.
fn parse_block_header(data: &[u8]) -> Option<BlockHeader> {
    let first = *data.first()?;
    if first == 0 {
        // A track-number vint longer than 8 bytes: report it as too short to parse.
        return None;
    }
    let len = first.leading_zeros() as usize + 1;
    let number = data.get(..len)?;
    let mask: u8 = if len >= 8 { 0 } else { 0xFF >> len };
    let track = number
        .iter()
        .skip(1)
        .fold(u64::from(first & mask), |acc, b| (acc << 8) | u64::from(*b));
    let rest = data.get(len..len + 3)?;
    let (high, low, flags) = (*rest.first()?, *rest.get(1)?, *rest.get(2)?);
    Some(BlockHeader {
        track,
        offset: i16::from_be_bytes([high, low]),
        key: flags & 0x80 != 0,
        laced: flags & 0x06 != 0,
    })
}

/// Children of a master element held whole.
struct Children<'a> {
    data: &'a [u8],
    at: usize,
    base: u64,
}

fn children(data: &[u8], base: u64) -> Children<'_> {
    Children { data, at: 0, base }
}

impl<'a> Iterator for Children<'a> {
    /// (id, payload, offset of the child in the body)
    type Item = Result<(u32, &'a [u8], u64), CheckError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.data.get(self.at..)?;
        if rest.is_empty() {
            return None;
        }
        let offset = self.base + self.at as u64;
        let bad = |message: String| CheckError {
            code: AckErrorCode::InvalidMkvData,
            timecode: None,
            offset,
            message,
        };
        let result = (|| {
            let first = *rest.first().ok_or_else(|| bad("empty".to_owned()))?;
            let id_len = first.leading_zeros() as usize + 1;
            if id_len > 4 {
                return Err(bad(format!("byte {first:#04X} cannot start an element ID")));
            }
            let id_bytes = rest
                .get(..id_len)
                .ok_or_else(|| bad("element ID cut short".to_owned()))?;
            let id = id_bytes
                .iter()
                .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
            let size_first = *rest
                .get(id_len)
                .ok_or_else(|| bad(format!("element {id:#X} has no size")))?;
            if size_first == 0 {
                return Err(bad(format!("element {id:#X} has an invalid size field")));
            }
            let size_len = size_first.leading_zeros() as usize + 1;
            let size_bytes = rest
                .get(id_len..id_len + size_len)
                .ok_or_else(|| bad(format!("element {id:#X} size cut short")))?;
            let mask: u8 = if size_len >= 8 { 0 } else { 0xFF >> size_len };
            let mut all_ones = size_first & mask == mask;
            let mut size = u64::from(size_first & mask);
            for byte in size_bytes.iter().skip(1) {
                size = (size << 8) | u64::from(*byte);
                all_ones &= *byte == 0xFF;
            }
            if all_ones {
                return Err(bad(format!(
                    "element {id:#X} of unknown size inside a sized master"
                )));
            }
            let start = id_len + size_len;
            let end = usize::try_from(size)
                .ok()
                .and_then(|s| start.checked_add(s))
                .filter(|end| *end <= rest.len())
                .ok_or_else(|| {
                    bad(format!(
                        "element {id:#X} of {size} bytes overruns its parent ({} bytes left)",
                        rest.len().saturating_sub(start)
                    ))
                })?;
            let payload = rest.get(start..end).unwrap_or_default();
            Ok((id, payload, end))
        })();
        match result {
            Ok((id, payload, consumed)) => {
                self.at += consumed;
                Some(Ok((id, payload, offset)))
            }
            Err(e) => {
                self.at = self.data.len();
                Some(Err(e))
            }
        }
    }
}

fn read_uint(payload: &[u8]) -> Option<u64> {
    if payload.len() > 8 {
        return None;
    }
    Some(
        payload
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
    )
}

fn read_string(payload: &[u8]) -> String {
    let trimmed = payload
        .iter()
        .rposition(|b| *b != 0)
        .and_then(|last| payload.get(..=last))
        .unwrap_or_default();
    String::from_utf8_lossy(trimmed).into_owned()
}

fn invalid_at(offset: u64, message: String) -> CheckError {
    CheckError {
        code: AckErrorCode::InvalidMkvData,
        timecode: None,
        offset,
        message,
    }
}

fn uint_field(payload: &[u8], offset: u64, what: &str) -> Result<u64, CheckError> {
    read_uint(payload).ok_or_else(|| invalid_at(offset, format!("{what} longer than 8 bytes")))
}

fn check_ebml_header(payload: &[u8], base: u64) -> Result<(), CheckError> {
    let mut doc_type = None;
    for child in children(payload, base) {
        let (element, value, offset) = child?;
        match element {
            id::EBML_READ_VERSION => {
                let version = uint_field(value, offset, "EBMLReadVersion")?;
                if version != 1 {
                    return Err(invalid_at(
                        offset,
                        format!("EBMLReadVersion {version}, not 1"),
                    ));
                }
            }
            id::EBML_MAX_ID_LENGTH => {
                let length = uint_field(value, offset, "EBMLMaxIDLength")?;
                if length > 4 {
                    return Err(invalid_at(
                        offset,
                        format!("EBMLMaxIDLength {length} over 4"),
                    ));
                }
            }
            id::EBML_MAX_SIZE_LENGTH => {
                let length = uint_field(value, offset, "EBMLMaxSizeLength")?;
                if length > 8 {
                    return Err(invalid_at(
                        offset,
                        format!("EBMLMaxSizeLength {length} over 8"),
                    ));
                }
            }
            id::DOC_TYPE => doc_type = Some((read_string(value), offset)),
            _ => {}
        }
    }
    match doc_type {
        Some((doc, _)) if doc == "matroska" || doc == "webm" => Ok(()),
        Some((doc, offset)) => Err(invalid_at(
            offset,
            format!("DocType {doc:?}, not \"matroska\""),
        )),
        None => Err(invalid_at(base, "EBML header without DocType".to_owned())),
    }
}

/// TimecodeScale from SegmentInfo (1 000 000 when absent).
fn parse_info(payload: &[u8], base: u64) -> Result<u64, CheckError> {
    let mut scale = 1_000_000;
    for child in children(payload, base) {
        let (element, value, offset) = child?;
        if element == id::TIMECODE_SCALE {
            scale = uint_field(value, offset, "TimecodeScale")?;
            if scale == 0 {
                return Err(invalid_at(offset, "TimecodeScale 0".to_owned()));
            }
        }
    }
    Ok(scale)
}

fn parse_tracks(payload: &[u8], base: u64) -> Result<Vec<TrackInfo>, CheckError> {
    let mut tracks: Vec<TrackInfo> = Vec::new();
    for child in children(payload, base) {
        let (element, entry, entry_offset) = child?;
        if element != id::TRACK_ENTRY {
            continue;
        }
        let mut number = None;
        let mut track = TrackInfo {
            number: 0,
            uid: 0,
            track_type: 0,
            codec_id: String::new(),
            codec_private: Bytes::new(),
            settings: Bytes::new(),
        };
        let mut settings = Vec::new();
        for field in children(entry, entry_offset) {
            let (field_id, value, offset) = field?;
            match field_id {
                id::TRACK_NUMBER => number = Some(uint_field(value, offset, "TrackNumber")?),
                id::TRACK_UID => track.uid = uint_field(value, offset, "TrackUID")?,
                id::TRACK_TYPE => track.track_type = uint_field(value, offset, "TrackType")?,
                id::CODEC_ID => track.codec_id = read_string(value),
                id::CODEC_PRIVATE => track.codec_private = Bytes::copy_from_slice(value),
                id::VIDEO | id::AUDIO => {
                    settings.extend_from_slice(&field_id.to_be_bytes());
                    settings.extend_from_slice(value);
                }
                _ => {}
            }
        }
        track.settings = Bytes::from(settings);
        match number {
            None | Some(0) => {
                return Err(invalid_at(
                    entry_offset,
                    "TrackEntry without a TrackNumber of 1 or more".to_owned(),
                ));
            }
            Some(n) if tracks.iter().any(|t| t.number == n) => {
                return Err(invalid_at(
                    entry_offset,
                    format!("TrackNumber {n} declared twice"),
                ));
            }
            Some(n) => track.number = n,
        }
        if track.codec_id.is_empty() {
            return Err(invalid_at(
                entry_offset,
                format!("track {} has no CodecID", track.number),
            ));
        }
        tracks.push(track);
    }
    if tracks.is_empty() {
        return Err(invalid_at(base, "Tracks declares no track".to_owned()));
    }
    Ok(tracks)
}

fn parse_tags(
    payload: &[u8],
    base: u64,
    range: Range<u64>,
    limits: &CheckLimits,
) -> Result<ParsedTags, CheckError> {
    let mut parsed = ParsedTags {
        range,
        items: Vec::new(),
        tag_count: 0,
        end_of_fragment: false,
        too_long: None,
    };
    for child in children(payload, base) {
        let (element, tag, tag_offset) = child?;
        if element != id::TAG {
            continue;
        }
        let mut control_only = true;
        let mut any = false;
        for simple in children(tag, tag_offset) {
            let (simple_id, simple_tag, simple_offset) = simple?;
            if simple_id != id::SIMPLE_TAG {
                continue;
            }
            let mut name = String::new();
            let mut value = String::new();
            for field in children(simple_tag, simple_offset) {
                let (field_id, bytes, offset) = field?;
                match field_id {
                    id::TAG_NAME => {
                        if bytes.len() > limits.max_tag_name && parsed.too_long.is_none() {
                            parsed.too_long = Some(format!(
                                "tag name of {} bytes at byte {offset}, longer than the {} allowed",
                                bytes.len(),
                                limits.max_tag_name
                            ));
                        }
                        name = read_string(bytes);
                    }
                    id::TAG_STRING => {
                        if bytes.len() > limits.max_tag_value && parsed.too_long.is_none() {
                            parsed.too_long = Some(format!(
                                "tag value of {} bytes at byte {offset}, longer than the {} allowed",
                                bytes.len(),
                                limits.max_tag_value
                            ));
                        }
                        value = read_string(bytes);
                    }
                    _ => {}
                }
            }
            any = true;
            if name == END_OF_FRAGMENT {
                parsed.end_of_fragment = true;
            } else {
                control_only = false;
            }
            parsed.items.push((name, value));
        }
        if any && !control_only {
            parsed.tag_count += 1;
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mkv::ebml::EbmlWriter;
    use proptest::prelude::*;

    const SCALE: u64 = 1_000_000;

    /// EBML header + Segment (unknown size) + Info + Tracks with `tracks` tracks.
    fn header(tracks: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = EbmlWriter::new(&mut buf);
        w.begin(id::EBML).unwrap();
        w.uint(id::EBML_VERSION, 1).unwrap();
        w.uint(id::EBML_READ_VERSION, 1).unwrap();
        w.uint(id::EBML_MAX_ID_LENGTH, 4).unwrap();
        w.uint(id::EBML_MAX_SIZE_LENGTH, 8).unwrap();
        w.string(id::DOC_TYPE, "matroska").unwrap();
        w.uint(id::DOC_TYPE_VERSION, 2).unwrap();
        w.uint(id::DOC_TYPE_READ_VERSION, 2).unwrap();
        w.end().unwrap();
        w.begin_unknown(id::SEGMENT);
        w.begin(id::INFO).unwrap();
        w.uint(id::TIMECODE_SCALE, SCALE).unwrap();
        w.end().unwrap();
        w.begin(id::TRACKS).unwrap();
        for number in 1..=tracks {
            w.begin(id::TRACK_ENTRY).unwrap();
            w.uint(id::TRACK_NUMBER, number).unwrap();
            w.uint(id::TRACK_UID, number).unwrap();
            w.uint(id::TRACK_TYPE, if number == 1 { 1 } else { 2 })
                .unwrap();
            w.string(
                id::CODEC_ID,
                if number == 1 {
                    "V_MPEG4/ISO/AVC"
                } else {
                    "A_AAC"
                },
            )
            .unwrap();
            w.binary(id::CODEC_PRIVATE, &[1, 2, 3]).unwrap();
            w.end().unwrap();
        }
        w.end().unwrap();
        buf
    }

    /// A Cluster of unknown size at `timecode` with (track, offset, key) blocks of 50 bytes.
    fn cluster(timecode: u64, blocks: &[(u8, i16, bool)]) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = EbmlWriter::new(&mut buf);
        w.begin_unknown(id::CLUSTER);
        w.uint(id::TIMECODE, timecode).unwrap();
        for (track, offset, key) in blocks {
            let mut block = vec![0x80 | track];
            block.extend_from_slice(&offset.to_be_bytes());
            block.push(if *key { 0x80 } else { 0 });
            block.extend_from_slice(&[0xAB; 50]);
            w.binary(id::SIMPLE_BLOCK, &block).unwrap();
        }
        buf
    }

    fn tags(items: &[(&str, &str)]) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = EbmlWriter::new(&mut buf);
        w.begin(id::TAGS).unwrap();
        for (name, value) in items {
            w.begin(id::TAG).unwrap();
            w.begin(id::SIMPLE_TAG).unwrap();
            w.string(id::TAG_NAME, name).unwrap();
            w.string(id::TAG_STRING, value).unwrap();
            w.end().unwrap();
            w.end().unwrap();
        }
        w.end().unwrap();
        buf
    }

    fn two_track_stream() -> Vec<u8> {
        let mut body = header(2);
        body.extend(tags(&[("site", "7")]));
        body.extend(cluster(1000, &[(1, 0, true), (2, 5, true), (1, 33, false)]));
        body.extend(cluster(2000, &[(1, 0, true), (2, 1, true)]));
        body.extend(tags(&[(END_OF_FRAGMENT, "")]));
        body
    }

    fn run_split(body: &[u8], split: impl Fn(usize) -> usize) -> Vec<CheckEvent> {
        let mut checker = MkvChecker::new(CheckLimits::default());
        let mut out = Vec::new();
        let mut at = 0;
        let mut n = 0;
        while at < body.len() {
            let len = split(n).clamp(1, body.len() - at);
            checker.feed(Bytes::copy_from_slice(&body[at..at + len]), &mut out);
            at += len;
            n += 1;
        }
        checker.finish(&mut out);
        out
    }

    fn summary(events: &[CheckEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                CheckEvent::Header(h) => format!("header {}", h.tracks.len()),
                CheckEvent::FragmentStart { index, timecode } => {
                    format!("start {index} {timecode}")
                }
                CheckEvent::FragmentComplete(f) => format!(
                    "complete {} {} {}..{} {:?} tags={}",
                    f.index,
                    f.timecode,
                    f.first_timecode,
                    f.last_timecode,
                    f.frames.iter().map(|t| t.frames).collect::<Vec<_>>(),
                    f.tags.len()
                ),
                CheckEvent::Error(e) => format!("error {} {:?}", e.code.id(), e.timecode),
            })
            .collect()
    }

    fn error_code(events: &[CheckEvent]) -> Option<u32> {
        events.iter().find_map(|e| match e {
            CheckEvent::Error(e) => Some(e.code.id()),
            _ => None,
        })
    }

    #[test]
    fn whole_stream_in_one_chunk() {
        let events = run_split(&two_track_stream(), |_| usize::MAX);
        assert_eq!(
            summary(&events),
            [
                "header 2",
                "start 0 1000",
                "complete 0 1000 1000..1033 [2, 1] tags=1",
                "start 1 2000",
                "complete 1 2000 2000..2001 [1, 1] tags=1",
            ]
        );
    }

    #[test]
    fn every_split_gives_the_same_events_and_bytes() {
        let body = two_track_stream();
        let whole = run_split(&body, |_| usize::MAX);
        for size in [1, 2, 3, 5, 7, 13, 64] {
            let split = run_split(&body, |_| size);
            assert_eq!(summary(&split), summary(&whole), "chunks of {size} bytes");
        }
        // The pieces of a fragment put back together are its bytes as sent.
        let split = run_split(&body, |n| 1 + n % 4);
        let CheckEvent::FragmentComplete(first) = &split[2] else {
            panic!("expected a completed fragment, got {:?}", summary(&split));
        };
        let joined: Vec<u8> = first
            .tags_before
            .iter()
            .chain(&first.cluster_body)
            .flat_map(|b| b.iter().copied())
            .collect();
        let tags_len = tags(&[("site", "7")]).len();
        let cluster_bytes = cluster(1000, &[(1, 0, true), (2, 5, true), (1, 33, false)]);
        // Cluster ID (4) + unknown size (1) + Timecode element (2 + 2 bytes) are rebuilt.
        let mut expected = tags(&[("site", "7")]);
        expected.extend_from_slice(&cluster_bytes[9..]);
        assert_eq!(joined.len(), tags_len + cluster_bytes.len() - 9);
        assert_eq!(joined, expected);
        let CheckEvent::FragmentComplete(second) = &split[4] else {
            panic!("expected a completed fragment");
        };
        assert_eq!(
            second.tags,
            vec![(END_OF_FRAGMENT.to_owned(), String::new())]
        );
        assert_eq!(
            second.tags_after.iter().map(Bytes::len).sum::<usize>(),
            tags(&[(END_OF_FRAGMENT, "")]).len()
        );
    }

    #[test]
    fn a_tags_run_ending_with_end_of_fragment_belongs_to_the_fragment_before() {
        let mut body = header(1);
        body.extend(cluster(1000, &[(1, 0, true)]));
        body.extend(tags(&[("event", "late")]));
        body.extend(tags(&[(END_OF_FRAGMENT, "")]));
        body.extend(tags(&[("next", "1")]));
        body.extend(cluster(2000, &[(1, 0, true)]));
        body.extend(tags(&[("trailing", "x")]));
        let events = run_split(&body, |_| 3);
        let names: Vec<Vec<String>> = events
            .iter()
            .filter_map(|e| match e {
                CheckEvent::FragmentComplete(f) => {
                    Some(f.tags.iter().map(|(n, _)| n.clone()).collect())
                }
                _ => None,
            })
            .collect();
        // Tags after the last cluster without an end-of-fragment tag belong to no fragment.
        assert_eq!(
            names,
            [
                vec!["event".to_owned(), END_OF_FRAGMENT.to_owned()],
                vec!["next".to_owned()]
            ]
        );
        assert_eq!(error_code(&events), None);
    }

    #[test]
    fn fragment_not_after_the_previous_is_4004() {
        let mut body = header(1);
        body.extend(cluster(1000, &[(1, 0, true), (1, 40, false)]));
        body.extend(cluster(1040, &[(1, 0, true)]));
        assert_eq!(error_code(&run_split(&body, |_| 9)), Some(4004));
        let mut body = header(1);
        body.extend(cluster(1000, &[(1, 0, true), (1, 40, false)]));
        body.extend(cluster(1041, &[(1, 0, true)]));
        assert_eq!(error_code(&run_split(&body, |_| 9)), None);
    }

    #[test]
    fn unknown_track_is_4010_and_missing_track_is_4011() {
        let mut body = header(2);
        body.extend(cluster(1000, &[(1, 0, true), (3, 1, true)]));
        let events = run_split(&body, |_| 5);
        assert_eq!(error_code(&events), Some(4010));
        let mut body = header(2);
        body.extend(cluster(1000, &[(1, 0, true), (1, 33, false)]));
        body.extend(cluster(2000, &[(1, 0, true), (2, 1, true)]));
        let events = run_split(&body, |_| 5);
        assert_eq!(
            summary(&events).last().map(String::as_str),
            Some("error 4011 Some(1000)")
        );
    }

    #[test]
    fn too_many_tags_and_long_tags_are_4009() {
        let items: Vec<(String, String)> =
            (0..11).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        let refs: Vec<(&str, &str)> = items
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let mut body = header(1);
        body.extend(tags(&refs));
        body.extend(cluster(1000, &[(1, 0, true)]));
        assert_eq!(error_code(&run_split(&body, |_| 100)), Some(4009));
        // Ten are fine, and the end-of-fragment tag does not count.
        let mut body = header(1);
        body.extend(tags(&refs[..10]));
        body.extend(cluster(1000, &[(1, 0, true)]));
        body.extend(tags(&[(END_OF_FRAGMENT, "")]));
        assert_eq!(error_code(&run_split(&body, |_| 100)), None);
        let long = "x".repeat(257);
        let mut body = header(1);
        body.extend(tags(&[("name", &long)]));
        body.extend(cluster(1000, &[(1, 0, true)]));
        assert_eq!(error_code(&run_split(&body, |_| 100)), Some(4009));
    }

    #[test]
    fn more_than_three_tracks_is_4012() {
        let mut body = header(4);
        body.extend(cluster(
            1000,
            &[(1, 0, true), (2, 0, true), (3, 0, true), (4, 0, true)],
        ));
        assert_eq!(error_code(&run_split(&body, |_| 100)), Some(4012));
    }

    #[test]
    fn long_fragment_is_4002() {
        let mut checker = MkvChecker::new(CheckLimits {
            max_fragment_duration: Duration::from_millis(30),
            ..CheckLimits::default()
        });
        let mut body = header(1);
        body.extend(cluster(1000, &[(1, 0, true), (1, 31, false)]));
        let mut out = Vec::new();
        checker.feed(Bytes::from(body), &mut out);
        assert_eq!(error_code(&out), Some(4002));
    }

    #[test]
    fn large_fragment_is_4001() {
        let mut checker = MkvChecker::new(CheckLimits {
            max_fragment_bytes: 100,
            ..CheckLimits::default()
        });
        let mut body = header(1);
        body.extend(cluster(1000, &[(1, 0, true), (1, 1, false), (1, 2, false)]));
        let mut out = Vec::new();
        checker.feed(Bytes::from(body), &mut out);
        assert_eq!(error_code(&out), Some(4001));
    }

    #[test]
    fn structural_problems_are_4006() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("not EBML", b"GET / HTTP/1.1\r\n".to_vec()),
            ("second header", {
                let mut b = header(1);
                b.extend(cluster(1000, &[(1, 0, true)]));
                b.extend(header(1));
                b
            }),
            ("cluster before tracks", {
                let full = header(1);
                // EBML header + Segment, then straight to a cluster.
                let mut b = full.clone();
                let tracks_at = b
                    .windows(4)
                    .position(|w| w == [0x16, 0x54, 0xAE, 0x6B])
                    .unwrap();
                b.truncate(tracks_at);
                b.extend(cluster(1000, &[(1, 0, true)]));
                b
            }),
            ("laced block", {
                let mut b = header(1);
                let mut c = cluster(1000, &[]);
                let mut block = vec![0x81, 0, 0, 0x82];
                block.extend_from_slice(&[0; 8]);
                let mut w = EbmlWriter::new(&mut c);
                w.binary(id::SIMPLE_BLOCK, &block).unwrap();
                b.extend(c);
                b
            }),
            ("truncated block", {
                let mut b = header(1);
                let c = cluster(1000, &[(1, 0, true)]);
                b.extend_from_slice(&c[..c.len() - 10]);
                b
            }),
            ("block before timecode", {
                let mut b = header(1);
                let mut w = EbmlWriter::new(&mut b);
                w.begin_unknown(id::CLUSTER);
                w.binary(id::SIMPLE_BLOCK, &[0x81, 0, 0, 0x80, 1]).unwrap();
                b
            }),
        ];
        for (name, body) in cases {
            for size in [1, 3, 1000] {
                let events = run_split(&body, |_| size);
                assert_eq!(
                    error_code(&events),
                    Some(4006),
                    "{name}, chunks of {size}: {:?}",
                    summary(&events)
                );
            }
        }
    }

    #[test]
    fn the_byte_log_keeps_only_what_is_needed() {
        let mut body = header(1);
        for i in 0..50u64 {
            body.extend(cluster(1000 + i * 100, &[(1, 0, true), (1, 50, false)]));
        }
        let mut checker = MkvChecker::new(CheckLimits::default());
        let mut out = Vec::new();
        for chunk in body.chunks(7) {
            checker.feed(Bytes::copy_from_slice(chunk), &mut out);
            // At most the open fragment (≈ 130 bytes) plus one chunk is held.
            let held: usize = checker.log.chunks.iter().map(Bytes::len).sum();
            assert!(held < 300, "holding {held} bytes");
        }
        checker.finish(&mut out);
        let completed = out
            .iter()
            .filter(|e| matches!(e, CheckEvent::FragmentComplete(_)))
            .count();
        assert_eq!(completed, 50);
        assert_eq!(error_code(&out), None);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000), split in 1usize..64) {
            let events = run_split(&data, |_| split);
            // Garbage either fails or (rarely) parses; it never yields a fragment after an error.
            let error_at = events.iter().position(|e| matches!(e, CheckEvent::Error(_)));
            if let Some(at) = error_at {
                prop_assert_eq!(at, events.len() - 1);
            }
        }

        #[test]
        fn corrupted_streams_never_panic(flips in proptest::collection::vec((0usize..1000, any::<u8>()), 1..8), split in 1usize..40) {
            let mut body = two_track_stream();
            for (at, byte) in flips {
                let len = body.len();
                body[at % len] = byte;
            }
            let _ = run_split(&body, |n| 1 + (n * 7 + split) % 40);
        }

        #[test]
        fn any_split_of_a_valid_stream_is_accepted(sizes in proptest::collection::vec(1usize..50, 1..40)) {
            let body = two_track_stream();
            let events = run_split(&body, |n| sizes[n % sizes.len()]);
            prop_assert_eq!(summary(&events), summary(&run_split(&body, |_| usize::MAX)));
        }
    }
}
