//! The fragment muxer: frames in, Matroska as KVS ingests it out, through a [`MuxSink`].
//!
//! Output (reference: KVS producer notes §3, §4): the stream header (EBML header, Segment of
//! unknown size, SegmentInfo, Tracks) once, when the first video key frame arrives; then per
//! fragment the Tags due (persistent, transient, events), a Cluster of unknown size with its
//! Timecode, and SimpleBlocks; after the last fragment the end-of-session Tags.
//!
//! Invariants:
//! - A fragment (Cluster) always opens on a video key frame, with block timecode 0. A new one
//!   opens at the first video key frame at least `fragment_duration` (less a tolerance of
//!   min(duration / 8, 100 ms), so key frames at exactly the fragment duration with rounded or
//!   jittery timestamps still split) after the current one's key frame, or at the first video
//!   key frame after an end-of-fragment close.
//! - Timecodes are whole milliseconds: absolute = PTS since the Unix epoch, relative = PTS since
//!   the stream's first key frame. Every block timecode lies in 0..=32767 ms.
//! - Each fragment's first timecode is strictly greater than the previous fragment's last one:
//!   a key frame on the previous fragment's last millisecond is moved 1 ms later (as KVS's
//!   producer does, with frames on its original millisecond moved along); a key frame before
//!   it does not split (counted in `splits_deferred`) — or, after an end-of-fragment close, is
//!   dropped as late. A frame whose PTS is before its fragment's key frame is dropped
//!   (`LateFrame`). In nanoseconds: each `FragmentEnd::first_pts_ns` > the previous
//!   `last_pts_ns`.
//! - A frame that would need a block timecode past 32767 ms (no key frame for ~32.8 s, e.g. a
//!   stopped video track) is refused with `TimecodeOverflow`, and the fragment is closed with
//!   an end-of-fragment tag; frames then wait (dropped and counted) for the next key frame.
//! - Annex-B video is written with 4-byte length prefixes; length-prefixed video (4-byte
//!   lengths) is validated and passed through. Payloads are never copied: the sink gets
//!   `Bytes` slices. The per-frame path does not allocate once the muxer is warm: block headers
//!   are built on the stack, NAL ranges go to a reused `Vec`, tags are read only per fragment.
//! - Every fragment holds a frame of every AAC track (KVS rejects one without, ACK 4011): a
//!   fragment about to close (split, end-of-fragment, finish) in which an AAC track has no
//!   frame gets one generated silent frame of that track ([`crate::media::aac_silence`]),
//!   written after the fragment's blocks at its largest timecode and with its largest PTS —
//!   so not before any frame in it, and before the next fragment's first timecode. The frame
//!   is built once per track at creation and passed by reference. Tracks that are not plain
//!   AAC-LC (HE-AAC) get no filler (counted in `silence_unavailable`).
//! - Errors that concern one frame ([`MuxError::is_frame_error`]) drop that frame only; the
//!   muxer stays usable. A sink error stops the muxer (the output position is unknown).

use crate::media::aac::AudioSpecificConfig;
use crate::media::aac_silence;
use crate::media::{Codec, Frame, MediaError, NalFormat, VideoParameters, annexb};
use crate::mkv::ebml::{self, EbmlError, EbmlWriter, id};
use crate::mkv::header::{SegmentHeader, TrackHeader, TrackKind, write_stream_header};
use crate::mkv::interleave::{InterleaveError, Interleaver, MAX_TRACKS};
use crate::mkv::tags::{self, FragmentTags, MAX_TAGS_PER_FRAGMENT};
use crate::mkv::{FragmentEnd, FragmentStart, MuxSink};
use bytes::Bytes;
use std::io;
use std::ops::Range;
use std::time::Duration;
use thiserror::Error;

const NS_PER_MS: u64 = 1_000_000;
/// Largest block timecode a SimpleBlock's signed 16-bit field holds (ms).
pub const MAX_BLOCK_OFFSET_MS: u64 = i16::MAX as u64;
/// Longest fragment duration accepted (KVS's own limit on a fragment is 20 s).
pub const MAX_FRAGMENT_DURATION: Duration = Duration::from_secs(20);
/// Fragment length [`MuxerConfig::new`] picks.
pub const DEFAULT_FRAGMENT_DURATION: Duration = Duration::from_secs(2);
/// Track wait [`MuxerConfig::new`] picks.
pub const DEFAULT_MAX_TRACK_WAIT: Duration = Duration::from_millis(500);
const MAX_SPLIT_TOLERANCE: Duration = Duration::from_millis(100);
/// Title written in SegmentInfo.
const TITLE: &str = "kinesis-edge";
const MUXING_APP: &str = concat!("kinesis-edge ", env!("CARGO_PKG_VERSION"));

/// How Cluster timecodes are expressed (and so which `fragment-timecode-type` PutMedia gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimecodeMode {
    /// Milliseconds since the Unix epoch.
    #[default]
    Absolute,
    /// Milliseconds since the stream's first key frame ([`FragmentMuxer::stream_origin_ns`]).
    Relative,
}

/// One track as capture describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackSpec {
    /// Track 0 is H.264 or H.265; other tracks are AAC.
    pub codec: Codec,
    /// How video frames delimit NAL units (ignored for audio).
    pub nal_format: NalFormat,
    /// avcC / hvcC / AudioSpecificConfig from the caps, if known. Video without it takes it
    /// from the first key frame's in-band parameter sets; AAC without it is AAC-LC at
    /// `sample_rate` / `channels`.
    pub codec_private: Option<Bytes>,
    /// Video width hint; the SPS decides the size written.
    pub width: u32,
    /// Video height hint; the SPS decides the size written.
    pub height: u32,
    /// Audio sample rate (Hz), used when there is no AudioSpecificConfig (which otherwise
    /// decides).
    pub sample_rate: u32,
    /// Audio channel configuration (1..=7), used when there is no AudioSpecificConfig.
    pub channels: u8,
    /// Track name (Matroska `Name`); empty writes none.
    pub name: String,
}

impl TrackSpec {
    /// A video track named `kinesis_video`, codec private data from the first key frame.
    pub fn video(codec: Codec, nal_format: NalFormat) -> Self {
        Self {
            codec,
            nal_format,
            codec_private: None,
            width: 0,
            height: 0,
            sample_rate: 0,
            channels: 0,
            name: "kinesis_video".to_owned(),
        }
    }

    /// An AAC track named `audio`.
    pub fn aac(sample_rate: u32, channels: u8) -> Self {
        Self {
            codec: Codec::Aac,
            nal_format: NalFormat::LengthPrefixed,
            codec_private: None,
            width: 0,
            height: 0,
            sample_rate,
            channels,
            name: "audio".to_owned(),
        }
    }

    /// Sets the codec private data (avcC / hvcC / AudioSpecificConfig) from caps.
    pub fn with_codec_private(mut self, codec_private: Bytes) -> Self {
        self.codec_private = Some(codec_private);
        self
    }
}

/// Everything the muxer is told up front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxerConfig {
    /// 1..=3 tracks; track 0 is the video track, any others are audio.
    pub tracks: Vec<TrackSpec>,
    /// Target fragment length, 0..=20 s (0: every video key frame opens a fragment). A key
    /// frame up to min(duration / 8, 100 ms) early counts as on time.
    pub fragment_duration: Duration,
    /// Absolute (epoch) or relative (stream start) Cluster timecodes.
    pub timecodes: TimecodeMode,
    /// Matroska SegmentUID; not all zeros. Keep it per stream so consumers can join sessions.
    pub segment_uid: [u8; 16],
    /// Matroska WritingApp.
    pub writing_app: String,
    /// Media time a track may lag behind the newest frame of any track before frames are
    /// released without it.
    pub max_track_wait: Duration,
}

impl MuxerConfig {
    /// Defaults: 2 s fragments, absolute timecodes, a random segment UID, 500 ms track wait.
    pub fn new(tracks: Vec<TrackSpec>) -> Self {
        Self {
            tracks,
            fragment_duration: DEFAULT_FRAGMENT_DURATION,
            timecodes: TimecodeMode::Absolute,
            segment_uid: random_segment_uid(),
            writing_app: MUXING_APP.to_owned(),
            max_track_wait: DEFAULT_MAX_TRACK_WAIT,
        }
    }
}

/// 16 random bytes from the OS; if the OS has none to give, the wall clock and process id
/// mixed (unique enough to tell sessions apart, which is all KVS uses it for).
pub fn random_segment_uid() -> [u8; 16] {
    let mut uid = [0u8; 16];
    if getrandom::fill(&mut uid).is_ok() && uid != [0; 16] {
        return uid;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed = nanos ^ (u128::from(std::process::id()) << 64) ^ 0x9E37_79B9_7F4A_7C15;
    mixed.to_be_bytes()
}

/// What went wrong. [`MuxError::is_frame_error`] tells a dropped frame from a stopped muxer.
#[derive(Debug, Error)]
pub enum MuxError {
    #[error("muxer needs 1 to {MAX_TRACKS} tracks, got {0}")]
    TrackCount(usize),
    #[error("track 0 must be H.264 or H.265 video, got {0:?}")]
    FirstTrackNotVideo(Codec),
    #[error(
        "track {track}: only track 0 may be video and only AAC audio is supported, got {codec:?}"
    )]
    UnsupportedTrack { track: usize, codec: Codec },
    #[error("track {track}: codec private data: {source}")]
    CodecPrivate { track: usize, source: MediaError },
    #[error("fragment duration {0:?} is longer than the {MAX_FRAGMENT_DURATION:?} KVS accepts")]
    FragmentDuration(Duration),
    #[error("segment UID is all zeros")]
    ZeroSegmentUid,

    #[error(transparent)]
    Interleave(#[from] InterleaveError),
    #[error("track {track}, frame at PTS {pts_ns} ns: {source}; frame dropped")]
    Payload {
        track: usize,
        pts_ns: u64,
        source: MediaError,
    },
    #[error("track {track}, frame at PTS {pts_ns} ns: empty payload; frame dropped")]
    EmptyFrame { track: usize, pts_ns: u64 },
    #[error(
        "first key frame at PTS {pts_ns} ns: cannot build codec private data from it ({source}); \
         dropped, waiting for a key frame with parameter sets"
    )]
    StreamStart { pts_ns: u64, source: MediaError },
    #[error(
        "track {track}, frame at PTS {pts_ns} ns is before the start of its fragment \
         (timecode {fragment_timecode_ms} ms); frame dropped"
    )]
    LateFrame {
        track: usize,
        pts_ns: u64,
        fragment_timecode_ms: u64,
    },
    #[error(
        "track {track}, frame at PTS {pts_ns} ns is {offset_ms} ms after its fragment's key frame \
         (timecode {fragment_timecode_ms} ms): more than the {MAX_BLOCK_OFFSET_MS} ms a block \
         timecode holds; frame dropped, fragment closed, waiting for the next video key frame"
    )]
    TimecodeOverflow {
        track: usize,
        pts_ns: u64,
        fragment_timecode_ms: u64,
        offset_ms: u64,
    },

    #[error("EBML encoding: {0}")]
    Ebml(#[from] EbmlError),
    #[error("mux sink: {0}")]
    Sink(#[from] io::Error),
    #[error("muxer stopped after an earlier sink error")]
    Stopped,
    #[error("frame pushed after finish()")]
    Finished,
}

impl MuxError {
    /// True when only one frame was dropped and the muxer carries on with the next.
    pub fn is_frame_error(&self) -> bool {
        matches!(
            self,
            MuxError::Interleave(_)
                | MuxError::Payload { .. }
                | MuxError::EmptyFrame { .. }
                | MuxError::StreamStart { .. }
                | MuxError::LateFrame { .. }
                | MuxError::TimecodeOverflow { .. }
        )
    }
}

/// Counters since the muxer was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MuxStats {
    /// Frames given to `push`.
    pub frames_in: u64,
    /// Frames given to `push` written as SimpleBlocks (generated silent frames not included).
    pub frames_out: u64,
    /// Bytes passed to the sink, stream header and trailer included.
    pub bytes_out: u64,
    /// Fragments opened.
    pub fragments: u64,
    /// Dropped before the stream's first video key frame, or after an early fragment close
    /// while waiting for the next one (expected; no error returned).
    pub dropped_before_key_frame: u64,
    /// Dropped because a timestamp went backwards within its track.
    pub dropped_out_of_order: u64,
    /// Dropped because the PTS was before its fragment's key frame (a track lagging more than
    /// `max_track_wait`).
    pub dropped_late: u64,
    /// Dropped for a bad payload, an unknown track, or a first key frame without usable
    /// parameter sets.
    pub dropped_invalid: u64,
    /// Dropped because its block timecode would not fit 16 bits.
    pub dropped_timecode_overflow: u64,
    /// Due key frames that could not open a fragment because another track had already written
    /// a later timecode into the current one.
    pub splits_deferred: u64,
    /// Fragments closed early with an end-of-fragment tag (requested or overflow).
    pub end_of_fragment_closes: u64,
    /// Generated silent AAC frames written into fragments that had no frame of an audio track.
    pub silence_frames_inserted: u64,
    /// Times a fragment closed without a frame of an audio track that has no silent frame
    /// (not plain AAC-LC); KVS rejects such a fragment (4011).
    pub silence_unavailable: u64,
}

#[derive(Debug)]
struct Track {
    codec: Codec,
    nal_format: NalFormat,
    name: String,
    /// Known from the spec, or set at the first key frame (video).
    codec_private: Option<Bytes>,
    kind: TrackKind,
    /// Audio only: the silent frame that fills a fragment without audio, if the codec
    /// configuration allows one.
    silence: Option<Bytes>,
}

impl Track {
    fn codec_id(&self) -> &'static str {
        match self.codec {
            Codec::H264 => "V_MPEG4/ISO/AVC",
            Codec::H265 => "V_MPEGH/ISO/HEVC",
            Codec::Aac => "A_AAC",
        }
    }
}

#[derive(Debug)]
struct OpenFragment {
    sequence: u64,
    /// Cluster Timecode (ms, in the stream's timecode domain).
    cluster_ms: u64,
    /// Frames below this timecode are late; between it and `cluster_ms` (a key frame moved
    /// 1 ms later) they are written at block timecode 0.
    floor_ms: u64,
    /// The opening key frame's original PTS, for the fragment-duration check.
    start_pts_ns: u64,
    first_pts_ns: u64,
    last_pts_ns: u64,
    /// Largest timecode written (ms).
    last_ms: u64,
    frames: u32,
    bytes: u64,
    tracks_present: u8,
    /// Metadata items written into this fragment (≤ 10).
    tags_written: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// A key frame opens the next fragment.
    Split,
    /// Early close: queued tags that fit, then an end-of-fragment tag.
    EndOfFragment,
    /// Last fragment: queued tags that fit; the caller sends the end-of-session trailer.
    EndOfStream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    Finished,
    Stopped,
}

/// The muxer for one stream. Sans-I/O: frames and a sink in, nothing else.
#[derive(Debug)]
pub struct FragmentMuxer {
    tracks: Vec<Track>,
    fragment_duration_ns: u64,
    split_tolerance_ns: u64,
    mode: TimecodeMode,
    segment_uid: [u8; 16],
    writing_app: String,
    tags: FragmentTags,
    interleaver: Box<Interleaver>,
    state: RunState,
    header: Option<Bytes>,
    /// PTS that timecode 0 stands for (0 in absolute mode).
    origin_ns: u64,
    fragment: Option<OpenFragment>,
    /// Largest timecode of the last closed fragment.
    prev_last_ms: Option<u64>,
    next_sequence: u64,
    /// Tags and Cluster headers are assembled here; reused.
    scratch: Vec<u8>,
    /// NAL ranges of the frame being written; reused.
    nals: Vec<Range<usize>>,
    end_of_fragment: Vec<u8>,
    stats: MuxStats,
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl FragmentMuxer {
    /// Validates the configuration and resolves what codec data it already can.
    pub fn new(config: MuxerConfig, tags: FragmentTags) -> Result<Self, MuxError> {
        if config.tracks.is_empty() || config.tracks.len() > MAX_TRACKS {
            return Err(MuxError::TrackCount(config.tracks.len()));
        }
        if config.fragment_duration > MAX_FRAGMENT_DURATION {
            return Err(MuxError::FragmentDuration(config.fragment_duration));
        }
        if config.segment_uid == [0; 16] {
            return Err(MuxError::ZeroSegmentUid);
        }
        let mut tracks = Vec::with_capacity(config.tracks.len());
        for (index, spec) in config.tracks.into_iter().enumerate() {
            tracks.push(resolve_track(index, spec)?);
        }
        let video: heapless::Vec<bool, MAX_TRACKS> =
            tracks.iter().map(|t| t.codec.is_video()).collect();
        let mut end_of_fragment = Vec::new();
        tags::write_end_of_fragment(&mut end_of_fragment)?;
        Ok(Self {
            tracks,
            fragment_duration_ns: duration_ns(config.fragment_duration),
            split_tolerance_ns: duration_ns(
                (config.fragment_duration / 8).min(MAX_SPLIT_TOLERANCE),
            ),
            mode: config.timecodes,
            segment_uid: config.segment_uid,
            writing_app: config.writing_app,
            tags,
            interleaver: Box::new(Interleaver::new(&video, config.max_track_wait)),
            state: RunState::Running,
            header: None,
            origin_ns: 0,
            fragment: None,
            prev_last_ms: None,
            next_sequence: 0,
            scratch: Vec::with_capacity(16 * 1024),
            nals: Vec::with_capacity(64),
            end_of_fragment,
            stats: MuxStats::default(),
        })
    }

    /// Takes a frame. Frames are queued to interleave tracks; zero or more queued frames are
    /// written to `sink` before this returns. A frame error ([`MuxError::is_frame_error`])
    /// names the frame it dropped, which may be an earlier queued one; the muxer carries on.
    pub fn push(
        &mut self,
        frame: Frame,
        sink: &mut (impl MuxSink + ?Sized),
    ) -> Result<(), MuxError> {
        self.check_running()?;
        self.stats.frames_in += 1;
        if let Err(e) = self.interleaver.push(frame) {
            match e {
                InterleaveError::Decreasing { .. } => self.stats.dropped_out_of_order += 1,
                _ => self.stats.dropped_invalid += 1,
            }
            return Err(e.into());
        }
        self.drain(sink, false)
    }

    /// Ends the stream: writes every queued frame, closes the open fragment (with any queued
    /// tags that fit) and sends the end-of-session trailer (`AWS_KINESISVIDEO_END_OF_FRAGMENT`
    /// Tags; empty if the stream already ended with an end-of-fragment close). Nothing is sent
    /// if the stream never started. Calling it again does nothing.
    pub fn finish(&mut self, sink: &mut (impl MuxSink + ?Sized)) -> Result<(), MuxError> {
        match self.state {
            RunState::Finished => return Ok(()),
            RunState::Stopped => return Err(MuxError::Stopped),
            RunState::Running => {}
        }
        if let Err(e) = self.drain(sink, true) {
            if !e.is_frame_error() {
                return Err(e);
            }
            // The stream still ends properly; the dropped frame is only worth a log line.
            tracing::warn!(error = %e, "mkv: frame dropped while finishing");
        }
        self.tags.take_end_request();
        if self.header.is_some() {
            let result = self.end_stream(sink);
            if result.is_err() {
                self.state = RunState::Stopped;
                return result;
            }
        }
        self.state = RunState::Finished;
        Ok(())
    }

    fn end_stream(&mut self, sink: &mut (impl MuxSink + ?Sized)) -> Result<(), MuxError> {
        let trailer: &[u8] = if self.fragment.is_some() {
            self.close_fragment(sink, Close::EndOfStream)?;
            &self.end_of_fragment
        } else {
            // The last fragment was closed with an end-of-fragment tag already.
            &[]
        };
        sink.stream_end(trailer)?;
        self.stats.bytes_out += trailer.len() as u64;
        Ok(())
    }

    /// Counters so far.
    pub fn stats(&self) -> MuxStats {
        self.stats
    }

    /// The tag handle this muxer reads.
    pub fn tags(&self) -> &FragmentTags {
        &self.tags
    }

    /// The stream header, once the first key frame has been written.
    pub fn stream_header(&self) -> Option<&Bytes> {
        self.header.as_ref()
    }

    /// The PTS (ns since the epoch) that timecode 0 stands for in relative mode: the stream's
    /// first key frame. 0 in absolute mode; `None` before the stream starts.
    pub fn stream_origin_ns(&self) -> Option<u64> {
        self.header.as_ref().map(|_| self.origin_ns)
    }

    /// Frames waiting in the interleaver.
    pub fn queued_frames(&self) -> usize {
        self.interleaver.queued()
    }

    fn check_running(&self) -> Result<(), MuxError> {
        match self.state {
            RunState::Running => Ok(()),
            RunState::Finished => Err(MuxError::Finished),
            RunState::Stopped => Err(MuxError::Stopped),
        }
    }

    fn drain(&mut self, sink: &mut (impl MuxSink + ?Sized), all: bool) -> Result<(), MuxError> {
        let mut first_error = None;
        loop {
            let next = if all {
                self.interleaver.pop_any()
            } else {
                self.interleaver.pop_ready()
            };
            let Some(frame) = next else { break };
            if let Err(e) = self.mux_frame(frame, sink) {
                if !e.is_frame_error() {
                    self.state = RunState::Stopped;
                    return Err(e);
                }
                if first_error.is_none() {
                    first_error = Some(e);
                } else {
                    tracing::warn!(error = %e, "mkv: frame dropped");
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Timecode (ms) of a PTS, `None` before the relative-mode origin.
    fn timecode_ms(&self, pts_ns: u64) -> Option<u64> {
        pts_ns.checked_sub(self.origin_ns).map(|d| d / NS_PER_MS)
    }

    fn mux_frame(
        &mut self,
        frame: Frame,
        sink: &mut (impl MuxSink + ?Sized),
    ) -> Result<(), MuxError> {
        if self.tags.take_end_request() && self.fragment.is_some() {
            self.close_fragment(sink, Close::EndOfFragment)?;
        }
        let track = frame.track;
        let Some(info) = self.tracks.get(track) else {
            self.stats.dropped_invalid += 1;
            return Err(InterleaveError::UnknownTrack {
                track,
                tracks: self.tracks.len(),
            }
            .into());
        };
        let is_video = info.codec.is_video();
        let nal_format = info.nal_format;
        let opens = is_video && frame.key;
        if !opens && self.fragment.is_none() {
            self.stats.dropped_before_key_frame += 1;
            return Ok(());
        }
        let payload_len = match self.scan_payload(&frame, is_video, nal_format) {
            Ok(len) => len,
            Err(e) => {
                self.stats.dropped_invalid += 1;
                return Err(e);
            }
        };
        if self.header.is_none()
            && let Err(e) = self.start_stream(&frame, sink)
        {
            if e.is_frame_error() {
                self.stats.dropped_invalid += 1;
            }
            return Err(e);
        }
        let Some(pts_ms) = self.timecode_ms(frame.pts_ns) else {
            return Err(self.late(&frame, 0));
        };
        if opens {
            self.maybe_open_fragment(&frame, pts_ms, sink)?;
        }
        let Some(fragment) = self.fragment.as_ref() else {
            // Only a late key frame after an early close gets here.
            self.stats.dropped_late += 1;
            return Err(MuxError::LateFrame {
                track,
                pts_ns: frame.pts_ns,
                fragment_timecode_ms: self.prev_last_ms.unwrap_or(0),
            });
        };
        if pts_ms < fragment.floor_ms {
            return Err(self.late(&frame, fragment.cluster_ms));
        }
        let cluster_ms = fragment.cluster_ms;
        let offset_ms = pts_ms.saturating_sub(cluster_ms);
        if offset_ms > MAX_BLOCK_OFFSET_MS {
            self.stats.dropped_timecode_overflow += 1;
            self.close_fragment(sink, Close::EndOfFragment)?;
            return Err(MuxError::TimecodeOverflow {
                track,
                pts_ns: frame.pts_ns,
                fragment_timecode_ms: cluster_ms,
                offset_ms,
            });
        }
        let written =
            self.write_block(&frame, is_video, nal_format, offset_ms, payload_len, sink)?;
        let effective_pts_ns = if pts_ms < cluster_ms {
            self.origin_ns + cluster_ms * NS_PER_MS
        } else {
            frame.pts_ns
        };
        if let Some(f) = self.fragment.as_mut() {
            f.frames = f.frames.saturating_add(1);
            f.bytes += written;
            f.tracks_present |= 1 << track;
            f.first_pts_ns = f.first_pts_ns.min(effective_pts_ns);
            f.last_pts_ns = f.last_pts_ns.max(effective_pts_ns);
            f.last_ms = f.last_ms.max(pts_ms.max(cluster_ms));
        }
        self.stats.frames_out += 1;
        self.stats.bytes_out += written;
        Ok(())
    }

    fn late(&mut self, frame: &Frame, fragment_timecode_ms: u64) -> MuxError {
        self.stats.dropped_late += 1;
        MuxError::LateFrame {
            track: frame.track,
            pts_ns: frame.pts_ns,
            fragment_timecode_ms,
        }
    }

    /// Checks the payload and returns the bytes the block will carry. For Annex-B video,
    /// leaves the NAL ranges in `self.nals`.
    fn scan_payload(
        &mut self,
        frame: &Frame,
        is_video: bool,
        nal_format: NalFormat,
    ) -> Result<u64, MuxError> {
        let payload_error = |source| MuxError::Payload {
            track: frame.track,
            pts_ns: frame.pts_ns,
            source,
        };
        let len = if !is_video {
            frame.data.len() as u64
        } else {
            match nal_format {
                NalFormat::AnnexB => {
                    self.nals.clear();
                    let mut total = 0u64;
                    for range in annexb::nal_ranges(&frame.data) {
                        let range = range.map_err(payload_error)?;
                        let len = range.len();
                        if u32::try_from(len).is_err() {
                            return Err(payload_error(MediaError::NalTooLarge {
                                offset: range.start,
                                len,
                            }));
                        }
                        total += 4 + len as u64;
                        self.nals.push(range);
                    }
                    total
                }
                NalFormat::LengthPrefixed => {
                    for range in annexb::length_prefixed_ranges(&frame.data) {
                        range.map_err(payload_error)?;
                    }
                    frame.data.len() as u64
                }
            }
        };
        if len == 0 {
            return Err(MuxError::EmptyFrame {
                track: frame.track,
                pts_ns: frame.pts_ns,
            });
        }
        Ok(len)
    }

    /// First key frame: settle the video codec private data, write the stream header.
    fn start_stream(
        &mut self,
        frame: &Frame,
        sink: &mut (impl MuxSink + ?Sized),
    ) -> Result<(), MuxError> {
        if let Some(video) = self.tracks.get_mut(frame.track)
            && video.codec_private.is_none()
        {
            let params =
                VideoParameters::from_key_frame(video.codec, video.nal_format, &frame.data)
                    .map_err(|source| MuxError::StreamStart {
                        pts_ns: frame.pts_ns,
                        source,
                    })?;
            video.kind = TrackKind::Video {
                width: params.width,
                height: params.height,
            };
            video.codec_private = Some(params.codec_private);
        }
        let mut buf = Vec::with_capacity(512);
        let headers: Vec<TrackHeader<'_>> = self
            .tracks
            .iter()
            .map(|t| TrackHeader {
                codec_id: t.codec_id(),
                name: &t.name,
                codec_private: t.codec_private.as_deref().unwrap_or_default(),
                kind: t.kind,
            })
            .collect();
        write_stream_header(
            &mut buf,
            &SegmentHeader {
                segment_uid: self.segment_uid,
                title: TITLE,
                muxing_app: MUXING_APP,
                writing_app: &self.writing_app,
            },
            &headers,
        )?;
        let header = Bytes::from(buf);
        self.origin_ns = match self.mode {
            TimecodeMode::Absolute => 0,
            TimecodeMode::Relative => frame.pts_ns,
        };
        sink.stream_header(&header)?;
        self.stats.bytes_out += header.len() as u64;
        self.header = Some(header);
        Ok(())
    }

    /// A video key frame: open a fragment if none is open, or split if one is due.
    fn maybe_open_fragment(
        &mut self,
        frame: &Frame,
        pts_ms: u64,
        sink: &mut (impl MuxSink + ?Sized),
    ) -> Result<(), MuxError> {
        let cluster_ms = match &self.fragment {
            None => match self.prev_last_ms {
                // After an early close: the fragment must start after the last one.
                Some(prev) if pts_ms < prev => return Ok(()),
                Some(prev) if pts_ms == prev => prev + 1,
                _ => pts_ms,
            },
            Some(current) => {
                let elapsed = frame.pts_ns.saturating_sub(current.start_pts_ns);
                if elapsed.saturating_add(self.split_tolerance_ns) < self.fragment_duration_ns {
                    return Ok(());
                }
                if pts_ms < current.last_ms {
                    self.stats.splits_deferred += 1;
                    return Ok(());
                }
                let cluster_ms = if pts_ms == current.last_ms {
                    pts_ms + 1
                } else {
                    pts_ms
                };
                self.close_fragment(sink, Close::Split)?;
                cluster_ms
            }
        };
        self.open_fragment(frame, pts_ms, cluster_ms, sink)
    }

    fn open_fragment(
        &mut self,
        frame: &Frame,
        pts_ms: u64,
        cluster_ms: u64,
        sink: &mut (impl MuxSink + ?Sized),
    ) -> Result<(), MuxError> {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.scratch.clear();
        let tags_written = self.tags.write_fragment_start(&mut self.scratch)?;
        ebml::put_id(&mut self.scratch, id::CLUSTER);
        self.scratch.push(ebml::UNKNOWN_SIZE);
        EbmlWriter::new(&mut self.scratch).uint(id::TIMECODE, cluster_ms)?;
        let pts_ns = if cluster_ms > pts_ms {
            self.origin_ns + cluster_ms * NS_PER_MS
        } else {
            frame.pts_ns
        };
        sink.fragment_start(&FragmentStart {
            sequence,
            timecode_ms: cluster_ms,
            pts_ns,
        })?;
        sink.write(&self.scratch)?;
        let bytes = self.scratch.len() as u64;
        self.stats.bytes_out += bytes;
        self.stats.fragments += 1;
        self.fragment = Some(OpenFragment {
            sequence,
            cluster_ms,
            floor_ms: pts_ms.min(cluster_ms),
            start_pts_ns: frame.pts_ns,
            first_pts_ns: u64::MAX,
            last_pts_ns: 0,
            last_ms: cluster_ms,
            frames: 0,
            bytes,
            tracks_present: 0,
            tags_written,
        });
        Ok(())
    }

    fn close_fragment(
        &mut self,
        sink: &mut (impl MuxSink + ?Sized),
        how: Close,
    ) -> Result<(), MuxError> {
        let Some(mut fragment) = self.fragment.take() else {
            return Ok(());
        };
        self.fill_missing_tracks(&mut fragment, sink)?;
        if how != Close::Split {
            self.scratch.clear();
            let room = MAX_TAGS_PER_FRAGMENT.saturating_sub(fragment.tags_written);
            self.tags.write_queued(&mut self.scratch, room)?;
            if how == Close::EndOfFragment {
                self.scratch.extend_from_slice(&self.end_of_fragment);
                self.stats.end_of_fragment_closes += 1;
            }
            if !self.scratch.is_empty() {
                sink.write(&self.scratch)?;
                fragment.bytes += self.scratch.len() as u64;
                self.stats.bytes_out += self.scratch.len() as u64;
            }
        }
        if fragment.frames == 0 {
            fragment.first_pts_ns = fragment.start_pts_ns;
            fragment.last_pts_ns = fragment.start_pts_ns;
        }
        sink.fragment_end(&FragmentEnd {
            sequence: fragment.sequence,
            timecode_ms: fragment.cluster_ms,
            frames: fragment.frames,
            bytes: fragment.bytes,
            first_pts_ns: fragment.first_pts_ns,
            last_pts_ns: fragment.last_pts_ns,
            tracks_present: fragment.tracks_present,
        })?;
        self.prev_last_ms = Some(fragment.last_ms);
        Ok(())
    }

    /// Before `fragment` closes: a silent frame for each audio track that has none in it, at
    /// the fragment's largest timecode (see the module invariants).
    fn fill_missing_tracks(
        &mut self,
        fragment: &mut OpenFragment,
        sink: &mut (impl MuxSink + ?Sized),
    ) -> Result<(), MuxError> {
        if fragment.frames == 0 {
            // Only after a sink error: nothing to anchor a timestamp to.
            return Ok(());
        }
        // Every written frame's offset fitted, so the largest one does.
        let offset_ms = fragment
            .last_ms
            .saturating_sub(fragment.cluster_ms)
            .min(MAX_BLOCK_OFFSET_MS);
        for (index, track) in self.tracks.iter().enumerate() {
            if track.codec.is_video() || fragment.tracks_present & (1 << index) != 0 {
                continue;
            }
            let Some(silence) = &track.silence else {
                self.stats.silence_unavailable += 1;
                continue;
            };
            let mut header = [0u8; BLOCK_HEADER_MAX];
            let len = silence.len() as u64;
            let at = block_header(&mut header, index, offset_ms, true, len)?;
            sink.write(&header[..at])?;
            sink.write_payload(silence)?;
            let written = at as u64 + len;
            fragment.frames = fragment.frames.saturating_add(1);
            fragment.bytes += written;
            fragment.tracks_present |= 1 << index;
            self.stats.bytes_out += written;
            self.stats.silence_frames_inserted += 1;
        }
        Ok(())
    }

    /// Writes one SimpleBlock; returns its size in bytes.
    fn write_block(
        &self,
        frame: &Frame,
        is_video: bool,
        nal_format: NalFormat,
        offset_ms: u64,
        payload_len: u64,
        sink: &mut (impl MuxSink + ?Sized),
    ) -> Result<u64, MuxError> {
        let mut header = [0u8; BLOCK_HEADER_MAX + 4];
        // Audio blocks are all key frames.
        let key = frame.key || !is_video;
        let at = block_header(&mut header, frame.track, offset_ms, key, payload_len)?;
        let header_len = at as u64;

        if is_video && nal_format == NalFormat::AnnexB {
            let data_len = frame.data.len();
            for (i, range) in self.nals.iter().enumerate() {
                if range.start > range.end || range.end > data_len {
                    return Err(MuxError::Payload {
                        track: frame.track,
                        pts_ns: frame.pts_ns,
                        source: MediaError::TruncatedNal {
                            offset: range.start,
                            declared: range.len(),
                            available: data_len.saturating_sub(range.start),
                        },
                    });
                }
                // Lengths were checked to fit u32 in scan_payload.
                let prefix = (range.len() as u32).to_be_bytes();
                if i == 0 {
                    header[at..at + 4].copy_from_slice(&prefix);
                    sink.write(&header[..at + 4])?;
                } else {
                    sink.write(&prefix)?;
                }
                sink.write_payload(&frame.data.slice(range.clone()))?;
            }
        } else {
            sink.write(&header[..at])?;
            sink.write_payload(&frame.data)?;
        }
        Ok(header_len + payload_len)
    }
}

/// SimpleBlock ID, size (≤ 8 bytes), track number, timecode (2), flags.
const BLOCK_HEADER_MAX: usize = 1 + 8 + 1 + 2 + 1;

/// Writes a SimpleBlock header for a `payload_len`-byte payload at the start of `header`;
/// returns its length.
fn block_header(
    header: &mut [u8],
    track: usize,
    offset_ms: u64,
    key: bool,
    payload_len: u64,
) -> Result<usize, MuxError> {
    let mut size = [0u8; 8];
    let size_len = ebml::encode_size(4 + payload_len, &mut size)?;
    let len = 1 + size_len + 4;
    let (Some(out), Some(size)) = (header.get_mut(..len), size.get(..size_len)) else {
        return Err(EbmlError::SizeTooLarge(payload_len).into());
    };
    out[0] = 0xA3;
    out[1..1 + size_len].copy_from_slice(size);
    let at = 1 + size_len;
    // Track numbers are 1..=3: a 1-byte vint.
    out[at] = 0x80 | (track as u8 + 1);
    let offset = i16::try_from(offset_ms).unwrap_or(i16::MAX);
    out[at + 1..at + 3].copy_from_slice(&offset.to_be_bytes());
    out[at + 3] = if key { 0x80 } else { 0 };
    Ok(len)
}

fn resolve_track(index: usize, spec: TrackSpec) -> Result<Track, MuxError> {
    let codec_private_error = |source| MuxError::CodecPrivate {
        track: index,
        source,
    };
    match (index, spec.codec.is_video()) {
        (0, false) => return Err(MuxError::FirstTrackNotVideo(spec.codec)),
        (1.., true) => {
            return Err(MuxError::UnsupportedTrack {
                track: index,
                codec: spec.codec,
            });
        }
        _ => {}
    }
    if spec.codec.is_video() {
        let (codec_private, width, height) = match &spec.codec_private {
            Some(cpd) => {
                let params = VideoParameters::from_codec_data(spec.codec, cpd)
                    .map_err(codec_private_error)?;
                (Some(params.codec_private), params.width, params.height)
            }
            None => (None, spec.width, spec.height),
        };
        return Ok(Track {
            codec: spec.codec,
            nal_format: spec.nal_format,
            name: spec.name,
            codec_private,
            kind: TrackKind::Video { width, height },
            silence: None,
        });
    }
    let (codec_private, config) = match spec.codec_private {
        Some(cpd) => {
            let config = AudioSpecificConfig::parse(&cpd).map_err(codec_private_error)?;
            (cpd, config)
        }
        None => {
            let config = AudioSpecificConfig::aac_lc(spec.sample_rate, spec.channels)
                .map_err(codec_private_error)?;
            let bytes = config.try_to_bytes().map_err(codec_private_error)?;
            (Bytes::copy_from_slice(&bytes), config)
        }
    };
    let silence = match aac_silence::silent_frame(&codec_private) {
        Ok(frame) => Some(frame),
        Err(e) => {
            tracing::warn!(
                track = index,
                error = %e,
                "mkv: no silent frame for this audio track; fragments in which it delivers \
                 nothing will lack it (KVS rejects them with 4011)"
            );
            None
        }
    };
    Ok(Track {
        codec: spec.codec,
        nal_format: spec.nal_format,
        name: spec.name,
        codec_private: Some(codec_private),
        silence,
        kind: TrackKind::Audio {
            sample_rate: f64::from(config.sample_rate),
            channels: config.channel_count(),
        },
    })
}

#[cfg(test)]
#[path = "muxer_tests.rs"]
mod tests;
