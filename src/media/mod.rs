//! Codec facts, no I/O: the frame type every stage passes on, H.264/H.265 Annex-B ↔
//! length-prefixed conversion, SPS parsing, decoder configuration records, AAC
//! AudioSpecificConfig.
//!
//! Invariants:
//! - Nothing here performs I/O or keeps state between calls; every function is a pure
//!   transformation of the bytes it is given.
//! - Malformed input of any kind yields a [`MediaError`] naming the field and the byte (or bit)
//!   offset; no function panics on input.
//! - "Length-prefixed" always means 4-byte big-endian lengths ([`NalFormat::LengthPrefixed`]);
//!   decoder configuration records with another NAL length size are rejected by
//!   [`VideoParameters::from_codec_data`] because frames would not match them.
//! - Emulation-prevention bytes stay in frame data; they are removed only into a scratch buffer
//!   for parameter-set parsing ([`annexb::rbsp_from_nal`]).

use bytes::Bytes;

pub mod aac;
pub mod annexb;
mod bits;
pub mod h264;
pub mod h265;
#[cfg(test)]
mod test_vectors;

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

/// Everything that can be wrong with codec data. Byte offsets are relative to the start of the
/// buffer handed to the failing function; bit offsets are relative to the start of the NAL unit
/// (after emulation-prevention removal) or of the AudioSpecificConfig.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// Annex-B data must open with `00 00 01` or `00 00 00 01`.
    #[error("Annex-B data does not begin with a 3- or 4-byte start code (byte offset {offset})")]
    MissingStartCode { offset: usize },
    /// More than 3 zero bytes before a `01`: rejected as the KVS producer does.
    #[error("{zeros} zero bytes before the start code at byte offset {offset}; at most 3 are allowed")]
    TooManyZeros { offset: usize, zeros: usize },
    /// A start code directly followed by another start code or by the end of the data.
    #[error("empty NAL unit at byte offset {offset}")]
    EmptyNal { offset: usize },
    /// Fewer than 4 bytes left where a NAL length prefix should be.
    #[error("truncated NAL length prefix at byte offset {offset}: {available} of 4 bytes present")]
    TruncatedLengthPrefix { offset: usize, available: usize },
    /// A length prefix that points past the end of the data.
    #[error(
        "NAL unit at byte offset {offset} declares {declared} bytes but only {available} remain"
    )]
    TruncatedNal { offset: usize, declared: usize, available: usize },
    /// A NAL unit too large for a 4-byte length prefix.
    #[error("NAL unit at byte offset {offset} is {len} bytes, too large for a 4-byte length prefix")]
    NalTooLarge { offset: usize, len: usize },
    /// A bitstream (SPS, AudioSpecificConfig) ended before a field was complete.
    #[error("{what}: data ends at bit {bit_offset} while reading {field}")]
    BitstreamEnd { what: &'static str, field: &'static str, bit_offset: usize },
    /// A bitstream field holds a value outside its allowed range.
    #[error("{what}: {field} = {value} (at bit {bit_offset}) is out of range: {reason}")]
    InvalidField {
        what: &'static str,
        field: &'static str,
        value: i64,
        bit_offset: usize,
        reason: &'static str,
    },
    /// A NAL unit of the wrong type was given (e.g. a PPS where an SPS is expected).
    #[error("{codec:?}: expected a {expected} NAL unit, found NAL type {found}")]
    UnexpectedNalType { codec: Codec, expected: &'static str, found: u8 },
    /// A key frame or decoder configuration lacks a required parameter set.
    #[error("{codec:?}: no {kind} found in the {source_name}")]
    MissingParameterSet { codec: Codec, kind: &'static str, source_name: &'static str },
    /// A parameter set too large for the 16-bit length of a decoder configuration record.
    #[error("{kind} of {len} bytes does not fit the 16-bit length of a decoder configuration record")]
    ParameterSetTooLarge { kind: &'static str, len: usize },
    /// An avcC / hvcC record ended before a field was complete.
    #[error("{record}: truncated at byte offset {offset} while reading {field}")]
    RecordTruncated { record: &'static str, field: &'static str, offset: usize },
    /// An avcC / hvcC record field holds an unsupported value.
    #[error("{record}: {field} at byte offset {offset} has unsupported value {value}")]
    RecordField { record: &'static str, field: &'static str, offset: usize, value: u32 },
    /// A sample rate that has no index in the MPEG-4 sampling frequency table.
    #[error("AAC sample rate {rate} Hz is not in the MPEG-4 sampling frequency table")]
    UnsupportedSampleRate { rate: u32 },
    /// A channel configuration outside 1..=7.
    #[error("AAC channel configuration {channels} is not in 1..=7")]
    InvalidChannels { channels: u8 },
    /// An AudioSpecificConfig this crate cannot write back in at most 5 bytes.
    #[error("AAC object type {object_type} with sample rate {sample_rate} Hz cannot be encoded in 5 bytes")]
    UnencodableAudioConfig { object_type: u8, sample_rate: u32 },
    /// A video-only operation was asked for an audio codec.
    #[error("{codec:?} is not a video codec")]
    NotVideo { codec: Codec },
}

/// Video facts the muxer needs for the Tracks element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoParameters {
    /// The Matroska CodecPrivate: an AVCDecoderConfigurationRecord (H.264) or
    /// HEVCDecoderConfigurationRecord (H.265) with 4-byte NAL lengths.
    pub codec_private: Bytes,
    /// Displayed width in pixels (cropping / conformance window applied).
    pub width: u32,
    /// Displayed height in pixels (cropping / conformance window applied).
    pub height: u32,
}

/// Byte ranges of the first parameter sets found in a key frame.
#[derive(Default)]
struct ParameterSetRanges {
    vps: Option<std::ops::Range<usize>>,
    sps: Option<std::ops::Range<usize>>,
    pps: Option<std::ops::Range<usize>>,
}

impl VideoParameters {
    /// From a key frame (access unit) carrying in-band parameter sets (SPS/PPS for H.264;
    /// VPS/SPS/PPS for H.265). The first parameter set of each kind before the first slice is
    /// used, as the KVS producer does; the frame may be Annex-B or length-prefixed.
    pub fn from_key_frame(codec: Codec, format: NalFormat, frame: &[u8]) -> Result<Self, MediaError> {
        if !codec.is_video() {
            return Err(MediaError::NotVideo { codec });
        }
        let mut found = ParameterSetRanges::default();
        let mut visit = |range: std::ops::Range<usize>| -> Result<bool, MediaError> {
            let nal = frame.get(range.clone()).unwrap_or_default();
            let keep_going = match codec {
                Codec::H264 => match h264::nal_type(nal) {
                    Some(h264::NAL_SPS) => {
                        found.sps.get_or_insert(range);
                        true
                    }
                    Some(h264::NAL_PPS) => {
                        found.pps.get_or_insert(range);
                        true
                    }
                    Some(t) => !h264::is_vcl(t),
                    None => true,
                },
                _ => match h265::nal_type(nal) {
                    Some(h265::NAL_VPS) => {
                        found.vps.get_or_insert(range);
                        true
                    }
                    Some(h265::NAL_SPS) => {
                        found.sps.get_or_insert(range);
                        true
                    }
                    Some(h265::NAL_PPS) => {
                        found.pps.get_or_insert(range);
                        true
                    }
                    Some(t) => !h265::is_vcl(t),
                    None => true,
                },
            };
            Ok(keep_going)
        };
        match format {
            NalFormat::AnnexB => {
                for range in annexb::nal_ranges(frame) {
                    if !visit(range?)? {
                        break;
                    }
                }
            }
            NalFormat::LengthPrefixed => {
                for range in annexb::length_prefixed_ranges(frame) {
                    if !visit(range?)? {
                        break;
                    }
                }
            }
        }
        let missing = |kind| MediaError::MissingParameterSet { codec, kind, source_name: "key frame" };
        let sps = found.sps.and_then(|r| frame.get(r)).ok_or_else(|| missing("SPS"))?;
        let pps = found.pps.and_then(|r| frame.get(r)).ok_or_else(|| missing("PPS"))?;
        match codec {
            Codec::H264 => {
                let parsed = h264::Sps::parse(sps)?;
                let record = h264::AvcDecoderConfig::from_parameter_sets(sps, pps)?;
                Ok(VideoParameters {
                    codec_private: Bytes::from(record),
                    width: parsed.width,
                    height: parsed.height,
                })
            }
            _ => {
                let vps = found.vps.and_then(|r| frame.get(r)).ok_or_else(|| missing("VPS"))?;
                let parsed = h265::HevcSps::parse(sps)?;
                let record = h265::hevc_decoder_config(vps, sps, pps)?;
                Ok(VideoParameters {
                    codec_private: Bytes::from(record),
                    width: parsed.width,
                    height: parsed.height,
                })
            }
        }
    }

    /// From GStreamer caps `codec_data` (an avcC / hvcC record): validates it, parses the SPS
    /// inside for the size. The record is kept verbatim as the CodecPrivate. Records whose NAL
    /// length size is not 4 are rejected, since frames are always 4-byte length-prefixed here.
    pub fn from_codec_data(codec: Codec, codec_data: &[u8]) -> Result<Self, MediaError> {
        let missing =
            |kind| MediaError::MissingParameterSet { codec, kind, source_name: "codec_data record" };
        let (nal_length_size, width, height) = match codec {
            Codec::H264 => {
                let record = h264::AvcDecoderConfig::parse(codec_data)?;
                let sps = record.sps.first().ok_or_else(|| missing("SPS"))?;
                if record.pps.is_empty() {
                    return Err(missing("PPS"));
                }
                let parsed = h264::Sps::parse(sps)?;
                (record.nal_length_size, parsed.width, parsed.height)
            }
            Codec::H265 => {
                let record = h265::HevcDecoderConfig::parse(codec_data)?;
                if record.vps.is_empty() {
                    return Err(missing("VPS"));
                }
                let sps = record.sps.first().ok_or_else(|| missing("SPS"))?;
                if record.pps.is_empty() {
                    return Err(missing("PPS"));
                }
                let parsed = h265::HevcSps::parse(sps)?;
                (record.nal_length_size, parsed.width, parsed.height)
            }
            Codec::Aac => return Err(MediaError::NotVideo { codec }),
        };
        if nal_length_size != 4 {
            return Err(MediaError::RecordField {
                record: if codec == Codec::H264 {
                    h264::AVCC_RECORD
                } else {
                    h265::HVCC_RECORD
                },
                field: "lengthSizeMinusOne",
                offset: if codec == Codec::H264 { 4 } else { 21 },
                value: u32::from(nal_length_size) - 1,
            });
        }
        Ok(VideoParameters { codec_private: Bytes::copy_from_slice(codec_data), width, height })
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    /// Decodes a hex string from the test vectors.
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }
}
