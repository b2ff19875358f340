//! Codec facts, no I/O: the frame type every stage passes on, H.264/H.265 Annex-B ↔
//! length-prefixed conversion, SPS parsing, decoder configuration records, AAC
//! AudioSpecificConfig.

use bytes::Bytes;

/// Which kind of elementary stream a track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    H264,
    H265,
    Aac,
}

impl Codec {
    pub fn is_video(self) -> bool {
        matches!(self, Codec::H264 | Codec::H265)
    }
}

/// How the NAL units of a video frame are delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NalFormat {
    /// Start codes (`00 00 01` or `00 00 00 01`) before each NAL unit.
    AnnexB,
    /// A 4-byte big-endian length before each NAL unit (AVCC/HVCC, as Matroska stores it).
    LengthPrefixed,
}

/// One access unit (video) or one audio frame, as capture hands it to the muxer.
///
/// Timestamps are nanoseconds since the Unix epoch (capture maps the pipeline's running time to
/// wall-clock time once, at the first buffer), so absolute and relative timecodes are both a
/// subtraction away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Index of the track in the muxer's track list (0 = video, 1 = audio for a camera).
    pub track: usize,
    /// Presentation time, ns since the Unix epoch.
    pub pts_ns: u64,
    /// Decode time, ns since the Unix epoch; equal to `pts_ns` without B-frames and for audio.
    pub dts_ns: u64,
    /// Duration in ns; 0 when unknown.
    pub duration_ns: u64,
    /// True for a key frame (IDR for video; every AAC frame).
    pub key: bool,
    /// The payload, carried by reference.
    pub data: Bytes,
}
