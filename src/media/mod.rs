//! Codec facts, no I/O: the frame type every stage passes on, H.264/H.265 Annex-B ↔
//! length-prefixed conversion, SPS parsing, decoder configuration records, AAC
//! AudioSpecificConfig, silent AAC-LC frames.
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
pub mod aac_silence;
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
    #[error(
        "{zeros} zero bytes before the start code at byte offset {offset}; at most 3 are allowed"
    )]
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
    TruncatedNal {
        offset: usize,
        declared: usize,
        available: usize,
    },
    /// A NAL unit too large for a 4-byte length prefix.
    #[error(
        "NAL unit at byte offset {offset} is {len} bytes, too large for a 4-byte length prefix"
    )]
    NalTooLarge { offset: usize, len: usize },
    /// A bitstream (SPS, AudioSpecificConfig) ended before a field was complete.
    #[error("{what}: data ends at bit {bit_offset} while reading {field}")]
    BitstreamEnd {
        what: &'static str,
        field: &'static str,
        bit_offset: usize,
    },
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
    UnexpectedNalType {
        codec: Codec,
        expected: &'static str,
        found: u8,
    },
    /// A key frame or decoder configuration lacks a required parameter set.
    #[error("{codec:?}: no {kind} found in the {source_name}")]
    MissingParameterSet {
        codec: Codec,
        kind: &'static str,
        source_name: &'static str,
    },
    /// A parameter set too large for the 16-bit length of a decoder configuration record.
    #[error(
        "{kind} of {len} bytes does not fit the 16-bit length of a decoder configuration record"
    )]
    ParameterSetTooLarge { kind: &'static str, len: usize },
    /// An avcC / hvcC record ended before a field was complete.
    #[error("{record}: truncated at byte offset {offset} while reading {field}")]
    RecordTruncated {
        record: &'static str,
        field: &'static str,
        offset: usize,
    },
    /// An avcC / hvcC record field holds an unsupported value.
    #[error("{record}: {field} at byte offset {offset} has unsupported value {value}")]
    RecordField {
        record: &'static str,
        field: &'static str,
        offset: usize,
        value: u32,
    },
    /// A sample rate that has no index in the MPEG-4 sampling frequency table.
    #[error("AAC sample rate {rate} Hz is not in the MPEG-4 sampling frequency table")]
    UnsupportedSampleRate { rate: u32 },
    /// A channel configuration outside 1..=7.
    #[error("AAC channel configuration {channels} is not in 1..=7")]
    InvalidChannels { channels: u8 },
    /// An AudioSpecificConfig this crate cannot write back in at most 5 bytes.
    #[error(
        "AAC object type {object_type} with sample rate {sample_rate} Hz cannot be encoded in 5 bytes"
    )]
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
    pub fn from_key_frame(
        codec: Codec,
        format: NalFormat,
        frame: &[u8],
    ) -> Result<Self, MediaError> {
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
        let missing = |kind| MediaError::MissingParameterSet {
            codec,
            kind,
            source_name: "key frame",
        };
        let sps = found
            .sps
            .and_then(|r| frame.get(r))
            .ok_or_else(|| missing("SPS"))?;
        let pps = found
            .pps
            .and_then(|r| frame.get(r))
            .ok_or_else(|| missing("PPS"))?;
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
                let vps = found
                    .vps
                    .and_then(|r| frame.get(r))
                    .ok_or_else(|| missing("VPS"))?;
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
        let missing = |kind| MediaError::MissingParameterSet {
            codec,
            kind,
            source_name: "codec_data record",
        };
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
        Ok(VideoParameters {
            codec_private: Bytes::copy_from_slice(codec_data),
            width,
            height,
        })
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    /// Decodes a hex string from the test vectors.
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H264_KEY_FRAME: &[u8] =
        include_bytes!("../../tests/fixtures/media/h264-baseline-896x504-key.h264");
    const H265_KEY_FRAME: &[u8] =
        include_bytes!("../../tests/fixtures/media/h265-main-320x240-key.h265");

    fn sps_range(codec: Codec, frame: &[u8]) -> std::ops::Range<usize> {
        annexb::nal_ranges(frame)
            .map(Result::unwrap)
            .find(|r| match codec {
                Codec::H264 => h264::nal_type(&frame[r.clone()]) == Some(h264::NAL_SPS),
                _ => h265::nal_type(&frame[r.clone()]) == Some(h265::NAL_SPS),
            })
            .unwrap()
    }

    fn nal_types(codec: Codec, frame: &[u8]) -> Vec<u8> {
        annexb::nal_ranges(frame)
            .map(|r| {
                let nal = &frame[r.unwrap()];
                match codec {
                    Codec::H264 => h264::nal_type(nal).unwrap(),
                    _ => h265::nal_type(nal).unwrap(),
                }
            })
            .collect()
    }

    #[test]
    fn h264_key_frame_from_x264() {
        assert_eq!(
            nal_types(Codec::H264, H264_KEY_FRAME),
            [
                h264::NAL_AUD,
                h264::NAL_SPS,
                h264::NAL_PPS,
                h264::NAL_SEI,
                h264::NAL_IDR
            ]
        );
        let params =
            VideoParameters::from_key_frame(Codec::H264, NalFormat::AnnexB, H264_KEY_FRAME)
                .unwrap();
        assert_eq!((params.width, params.height), (896, 504));
        let record = h264::AvcDecoderConfig::parse(&params.codec_private).unwrap();
        assert_eq!(
            record.sps[0][..],
            H264_KEY_FRAME[sps_range(Codec::H264, H264_KEY_FRAME)]
        );
        assert_eq!(record.nal_length_size, 4);

        let mut length_prefixed = Vec::new();
        annexb::annexb_to_length_prefixed(H264_KEY_FRAME, &mut length_prefixed).unwrap();
        assert_eq!(
            VideoParameters::from_key_frame(
                Codec::H264,
                NalFormat::LengthPrefixed,
                &length_prefixed
            )
            .unwrap(),
            params
        );
        assert_eq!(
            VideoParameters::from_codec_data(Codec::H264, &params.codec_private).unwrap(),
            params
        );
    }

    #[test]
    fn h265_key_frame_from_x265() {
        assert_eq!(
            nal_types(Codec::H265, H265_KEY_FRAME),
            [
                h265::NAL_VPS,
                h265::NAL_SPS,
                h265::NAL_PPS,
                h265::NAL_PREFIX_SEI,
                h265::NAL_IDR_N_LP
            ]
        );
        let params =
            VideoParameters::from_key_frame(Codec::H265, NalFormat::AnnexB, H265_KEY_FRAME)
                .unwrap();
        assert_eq!((params.width, params.height), (320, 240));
        assert_eq!(
            VideoParameters::from_codec_data(Codec::H265, &params.codec_private).unwrap(),
            params
        );
    }

    #[test]
    fn key_frame_without_parameter_sets_errors() {
        // The IDR slice alone (what an encoder sends when it repeats no headers).
        let idr_start = annexb::nal_ranges(H264_KEY_FRAME)
            .map(Result::unwrap)
            .last()
            .unwrap()
            .start;
        let slice_only = &H264_KEY_FRAME[idr_start - 4..];
        assert_eq!(
            VideoParameters::from_key_frame(Codec::H264, NalFormat::AnnexB, slice_only),
            Err(MediaError::MissingParameterSet {
                codec: Codec::H264,
                kind: "SPS",
                source_name: "key frame"
            })
        );
        // SPS present, PPS missing.
        let mut no_pps = Vec::new();
        for range in annexb::nal_ranges(H264_KEY_FRAME).map(Result::unwrap) {
            if h264::nal_type(&H264_KEY_FRAME[range.clone()]) != Some(h264::NAL_PPS) {
                no_pps.extend_from_slice(&[0, 0, 0, 1]);
                no_pps.extend_from_slice(&H264_KEY_FRAME[range]);
            }
        }
        assert!(matches!(
            VideoParameters::from_key_frame(Codec::H264, NalFormat::AnnexB, &no_pps),
            Err(MediaError::MissingParameterSet { kind: "PPS", .. })
        ));
        // Parameter sets after the first slice do not count (as in the KVS producer).
        let mut late = slice_only.to_vec();
        late.extend_from_slice(&H264_KEY_FRAME[..idr_start - 4]);
        assert!(matches!(
            VideoParameters::from_key_frame(Codec::H264, NalFormat::AnnexB, &late),
            Err(MediaError::MissingParameterSet { kind: "SPS", .. })
        ));
        // H.265 frame without its VPS.
        let vps_end = annexb::nal_ranges(H265_KEY_FRAME)
            .next()
            .unwrap()
            .unwrap()
            .end;
        assert!(matches!(
            VideoParameters::from_key_frame(
                Codec::H265,
                NalFormat::AnnexB,
                &H265_KEY_FRAME[vps_end..]
            ),
            Err(MediaError::MissingParameterSet { kind: "VPS", .. })
        ));
        // Framing errors surface as such; Annex-B data read as length-prefixed fails cleanly.
        assert!(matches!(
            VideoParameters::from_key_frame(Codec::H264, NalFormat::LengthPrefixed, H264_KEY_FRAME),
            Err(MediaError::TruncatedNal { offset: 5, .. })
        ));
        assert_eq!(
            VideoParameters::from_key_frame(Codec::Aac, NalFormat::AnnexB, H264_KEY_FRAME),
            Err(MediaError::NotVideo { codec: Codec::Aac })
        );
        assert_eq!(
            VideoParameters::from_codec_data(Codec::Aac, &[0x11, 0x90]),
            Err(MediaError::NotVideo { codec: Codec::Aac })
        );
        // An H.264 record offered as H.265.
        let avcc = VideoParameters::from_key_frame(Codec::H264, NalFormat::AnnexB, H264_KEY_FRAME)
            .unwrap();
        assert!(VideoParameters::from_codec_data(Codec::H265, &avcc.codec_private).is_err());
    }

    #[test]
    fn error_messages_name_the_problem_and_where() {
        let message = annexb::nal_ranges(&[0, 0, 1, 0x67, 0, 0, 0, 0, 1])
            .find_map(Result::err)
            .unwrap()
            .to_string();
        assert_eq!(
            message,
            "4 zero bytes before the start code at byte offset 4; at most 3 are allowed"
        );
        let message = h264::Sps::parse(&[0x67, 0x64]).unwrap_err().to_string();
        assert_eq!(
            message,
            "H.264 SPS: data ends at bit 16 while reading constraint_set_flags"
        );
    }

    proptest! {
        /// Parsers given arbitrary bytes (behind a plausible header) return Ok or Err, never panic.
        #[test]
        fn parsers_never_panic(tail in prop::collection::vec(any::<u8>(), 0..64), head in 0usize..4) {
            let headers: [&[u8]; 4] = [&[0x67], &[0x42, 0x01], &[0x01], &[0x01, 0x01]];
            let data = [headers[head], &tail[..]].concat();
            let _ = h264::Sps::parse(&data);
            let _ = h265::HevcSps::parse(&data);
            let _ = h264::AvcDecoderConfig::parse(&data);
            let _ = h265::HevcDecoderConfig::parse(&data);
            let _ = h264::AvcDecoderConfig::from_parameter_sets(&data, &data);
            let _ = h265::hevc_decoder_config(&data, &data, &data);
            let _ = aac::AudioSpecificConfig::parse(&data);
            for codec in [Codec::H264, Codec::H265] {
                let _ = VideoParameters::from_codec_data(codec, &data);
                for format in [NalFormat::AnnexB, NalFormat::LengthPrefixed] {
                    let _ = VideoParameters::from_key_frame(codec, format, &data);
                }
            }
        }

        /// Corrupting one byte of a real SPS yields a result or an error, never a panic.
        #[test]
        fn corrupted_real_sps_never_panics(at in 1usize..40, value in any::<u8>()) {
            for codec in [Codec::H264, Codec::H265] {
                let frame = if codec == Codec::H264 { H264_KEY_FRAME } else { H265_KEY_FRAME };
                let mut corrupted = frame[..frame.len().min(200)].to_vec();
                if let Some(byte) = corrupted.get_mut(sps_range(codec, frame).start + at) {
                    *byte = value;
                }
                let _ = VideoParameters::from_key_frame(codec, NalFormat::AnnexB, &corrupted);
            }
        }
    }
}
