//! H.264 / AVC: NAL unit types, sequence parameter set parsing (for the picture size and the
//! decoder configuration) and the AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1).
//!
//! Invariants: parsing works on a copy with emulation-prevention bytes removed; every field is
//! range-checked against ITU-T H.264 §7.4.2.1.1 where an out-of-range value would make the size
//! computation meaningless; sizes are computed in 64-bit and must fit `u32`.

use bytes::Bytes;

use super::annexb::rbsp_from_nal;
use super::bits::{BitReader, ByteReader};
use super::{Codec, MediaError};

/// Coded slice of a non-IDR picture.
pub const NAL_SLICE: u8 = 1;
/// Coded slice of an IDR picture.
pub const NAL_IDR: u8 = 5;
/// Supplemental enhancement information.
pub const NAL_SEI: u8 = 6;
/// Sequence parameter set.
pub const NAL_SPS: u8 = 7;
/// Picture parameter set.
pub const NAL_PPS: u8 = 8;
/// Access unit delimiter.
pub const NAL_AUD: u8 = 9;

/// Name used in errors about avcC records.
pub(crate) const AVCC_RECORD: &str = "AVCDecoderConfigurationRecord";
const SPS_WHAT: &str = "H.264 SPS";

/// NAL unit type: the low 5 bits of the first byte; `None` for an empty slice.
pub fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1f)
}

/// True for NAL types that carry coded slice data (1–5).
pub fn is_vcl(nal_type: u8) -> bool {
    (1..=5).contains(&nal_type)
}

/// The fields of a sequence parameter set this crate needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sps {
    /// profile_idc (66 baseline, 77 main, 100 high, 110 high 10, 122 high 4:2:2, 244 high 4:4:4).
    pub profile_idc: u8,
    /// constraint_set0..5 flags and the 2 reserved bits, as the byte after profile_idc.
    pub constraint_flags: u8,
    /// level_idc: ten times the level number (31 = level 3.1).
    pub level_idc: u8,
    /// seq_parameter_set_id (0..=31).
    pub seq_parameter_set_id: u32,
    /// 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4 (1 when the profile does not signal it).
    pub chroma_format_idc: u32,
    /// 4:4:4 coded as three monochrome planes.
    pub separate_colour_plane_flag: bool,
    /// Luma bit depth − 8 (0..=6).
    pub bit_depth_luma_minus8: u32,
    /// Chroma bit depth − 8 (0..=6).
    pub bit_depth_chroma_minus8: u32,
    /// pic_order_cnt_type (0..=2).
    pub pic_order_cnt_type: u32,
    /// False for interlaced (field / MBAFF) coding.
    pub frame_mbs_only_flag: bool,
    /// Displayed width in luma samples, frame cropping applied.
    pub width: u32,
    /// Displayed height in luma samples (frame, not field), frame cropping applied.
    pub height: u32,
}

/// Profiles whose SPS carries chroma_format_idc, bit depths and scaling matrices (§7.3.2.1.1).
fn has_chroma_info(profile_idc: u8) -> bool {
    matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    )
}

/// Skips one scaling_list() of `size` entries (§7.3.2.1.1.1), checking each delta.
fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), MediaError> {
    let mut last_scale: i32 = 8;
    let mut next_scale: i32 = 8;
    for _ in 0..size {
        if next_scale != 0 {
            let at = r.bit_offset();
            let delta = r.se("delta_scale")?;
            if !(-128..=127).contains(&delta) {
                return Err(r.invalid(
                    "delta_scale",
                    i64::from(delta),
                    at,
                    "must be in -128..=127",
                ));
            }
            next_scale = (last_scale + delta + 256) % 256;
        }
        if next_scale != 0 {
            last_scale = next_scale;
        }
    }
    Ok(())
}

impl Sps {
    /// Parses an SPS NAL unit (`nal` includes the 1-byte NAL header; emulation-prevention bytes
    /// may be present). Handles the high profiles (chroma format, separate colour planes, bit
    /// depths, scaling lists), all three pic_order_cnt types, field coding and frame cropping.
    pub fn parse(nal: &[u8]) -> Result<Sps, MediaError> {
        match nal_type(nal) {
            Some(NAL_SPS) => {}
            Some(found) => {
                return Err(MediaError::UnexpectedNalType {
                    codec: Codec::H264,
                    expected: "SPS",
                    found,
                });
            }
            None => return Err(MediaError::EmptyNal { offset: 0 }),
        }
        let mut rbsp = Vec::with_capacity(nal.len());
        rbsp_from_nal(nal, &mut rbsp);
        let mut r = BitReader::new(&rbsp, SPS_WHAT);
        r.skip(8, "nal_unit_header")?;
        let profile_idc = r.u8(8, "profile_idc")?;
        let constraint_flags = r.u8(8, "constraint_set_flags")?;
        let level_idc = r.u8(8, "level_idc")?;
        let seq_parameter_set_id = r.ue_max("seq_parameter_set_id", 31)?;

        let mut chroma_format_idc = 1;
        let mut separate_colour_plane_flag = false;
        let mut bit_depth_luma_minus8 = 0;
        let mut bit_depth_chroma_minus8 = 0;
        if has_chroma_info(profile_idc) {
            chroma_format_idc = r.ue_max("chroma_format_idc", 3)?;
            if chroma_format_idc == 3 {
                separate_colour_plane_flag = r.flag("separate_colour_plane_flag")?;
            }
            bit_depth_luma_minus8 = r.ue_max("bit_depth_luma_minus8", 6)?;
            bit_depth_chroma_minus8 = r.ue_max("bit_depth_chroma_minus8", 6)?;
            r.skip(1, "qpprime_y_zero_transform_bypass_flag")?;
            if r.flag("seq_scaling_matrix_present_flag")? {
                let lists = if chroma_format_idc == 3 { 12 } else { 8 };
                for i in 0..lists {
                    if r.flag("seq_scaling_list_present_flag")? {
                        skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                    }
                }
            }
        }

        r.ue_max("log2_max_frame_num_minus4", 12)?;
        let pic_order_cnt_type = r.ue_max("pic_order_cnt_type", 2)?;
        match pic_order_cnt_type {
            0 => {
                r.ue_max("log2_max_pic_order_cnt_lsb_minus4", 12)?;
            }
            1 => {
                r.skip(1, "delta_pic_order_always_zero_flag")?;
                r.se("offset_for_non_ref_pic")?;
                r.se("offset_for_top_to_bottom_field")?;
                let cycle = r.ue_max("num_ref_frames_in_pic_order_cnt_cycle", 255)?;
                for _ in 0..cycle {
                    r.se("offset_for_ref_frame")?;
                }
            }
            _ => {}
        }
        r.ue("max_num_ref_frames")?;
        r.skip(1, "gaps_in_frame_num_value_allowed_flag")?;
        let width_in_mbs = u64::from(r.ue("pic_width_in_mbs_minus1")?) + 1;
        let height_in_map_units = u64::from(r.ue("pic_height_in_map_units_minus1")?) + 1;
        let frame_mbs_only_flag = r.flag("frame_mbs_only_flag")?;
        if !frame_mbs_only_flag {
            r.skip(1, "mb_adaptive_frame_field_flag")?;
        }
        r.skip(1, "direct_8x8_inference_flag")?;

        let coded_width = width_in_mbs * 16;
        let field_factor: u64 = if frame_mbs_only_flag { 1 } else { 2 };
        let coded_height = height_in_map_units * 16 * field_factor;

        let crop_at = r.bit_offset();
        let (mut crop_left, mut crop_right, mut crop_top, mut crop_bottom) =
            (0u64, 0u64, 0u64, 0u64);
        if r.flag("frame_cropping_flag")? {
            crop_left = r.ue("frame_crop_left_offset")?.into();
            crop_right = r.ue("frame_crop_right_offset")?.into();
            crop_top = r.ue("frame_crop_top_offset")?.into();
            crop_bottom = r.ue("frame_crop_bottom_offset")?.into();
        }
        // §7.4.2.1.1: crop offsets count chroma samples (or luma for monochrome / separate planes).
        let chroma_array_type = if separate_colour_plane_flag {
            0
        } else {
            chroma_format_idc
        };
        let (crop_unit_x, crop_unit_y) = match chroma_array_type {
            0 => (1, field_factor),
            1 => (2, 2 * field_factor),
            2 => (2, field_factor),
            _ => (1, field_factor),
        };
        let crop_x = (crop_left + crop_right) * crop_unit_x;
        let crop_y = (crop_top + crop_bottom) * crop_unit_y;
        if crop_x >= coded_width {
            return Err(r.invalid(
                "frame_crop_left_offset + frame_crop_right_offset",
                i64::try_from(crop_left + crop_right).unwrap_or(i64::MAX),
                crop_at,
                "cropping removes the whole coded width",
            ));
        }
        if crop_y >= coded_height {
            return Err(r.invalid(
                "frame_crop_top_offset + frame_crop_bottom_offset",
                i64::try_from(crop_top + crop_bottom).unwrap_or(i64::MAX),
                crop_at,
                "cropping removes the whole coded height",
            ));
        }
        let width = u32::try_from(coded_width - crop_x).map_err(|_| {
            r.invalid(
                "pic_width_in_mbs_minus1",
                i64::try_from(width_in_mbs - 1).unwrap_or(i64::MAX),
                0,
                "width exceeds 32 bits",
            )
        })?;
        let height = u32::try_from(coded_height - crop_y).map_err(|_| {
            r.invalid(
                "pic_height_in_map_units_minus1",
                i64::try_from(height_in_map_units - 1).unwrap_or(i64::MAX),
                0,
                "height exceeds 32 bits",
            )
        })?;

        Ok(Sps {
            profile_idc,
            constraint_flags,
            level_idc,
            seq_parameter_set_id,
            chroma_format_idc,
            separate_colour_plane_flag,
            bit_depth_luma_minus8,
            bit_depth_chroma_minus8,
            pic_order_cnt_type,
            frame_mbs_only_flag,
            width,
            height,
        })
    }
}

/// An AVCDecoderConfigurationRecord (avcC), as parsed from caps `codec_data` or a CodecPrivate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcDecoderConfig {
    /// AVCProfileIndication.
    pub profile_idc: u8,
    /// The profile_compatibility byte (the SPS constraint flags).
    pub profile_compat: u8,
    /// AVCLevelIndication.
    pub level_idc: u8,
    /// Bytes per NAL length prefix in frames: 1, 2 or 4.
    pub nal_length_size: u8,
    /// Sequence parameter sets, each with its NAL header.
    pub sps: Vec<Bytes>,
    /// Picture parameter sets, each with its NAL header.
    pub pps: Vec<Bytes>,
}

/// Profiles for which ISO/IEC 14496-15 §5.3.3.1.2 appends chroma_format / bit depths to avcC.
fn has_avcc_extension(profile_idc: u8) -> bool {
    matches!(profile_idc, 100 | 110 | 122 | 144)
}

/// Appends a 16-bit length and the parameter set.
pub(crate) fn push_parameter_set(
    out: &mut Vec<u8>,
    kind: &'static str,
    nal: &[u8],
) -> Result<(), MediaError> {
    let len = u16::try_from(nal.len()).map_err(|_| MediaError::ParameterSetTooLarge {
        kind,
        len: nal.len(),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(nal);
    Ok(())
}

impl AvcDecoderConfig {
    /// Builds an ISO/IEC 14496-15 record from one SPS and one PPS (each with its NAL header, no
    /// start code): version 1, profile/compatibility/level copied from SPS bytes 1..4, `0xFF`
    /// (4-byte NAL lengths), `0xE1` (one SPS), length + SPS, `1`, length + PPS; for profiles
    /// 100/110/122/144 the chroma_format / bit-depth extension with no SPS extensions follows.
    /// The SPS is parsed, so a malformed one is rejected here rather than by a player.
    pub fn from_parameter_sets(sps: &[u8], pps: &[u8]) -> Result<Vec<u8>, MediaError> {
        let parsed = Sps::parse(sps)?;
        match nal_type(pps) {
            Some(NAL_PPS) => {}
            Some(found) => {
                return Err(MediaError::UnexpectedNalType {
                    codec: Codec::H264,
                    expected: "PPS",
                    found,
                });
            }
            None => return Err(MediaError::EmptyNal { offset: 0 }),
        }
        let mut record = Vec::with_capacity(11 + sps.len() + pps.len() + 4);
        record.push(1);
        // SPS bytes 1..4 as read from the RBSP (identical to the NAL bytes for any valid level).
        record.extend_from_slice(&[
            parsed.profile_idc,
            parsed.constraint_flags,
            parsed.level_idc,
        ]);
        record.push(0xfc | 3);
        record.push(0xe0 | 1);
        push_parameter_set(&mut record, "SPS", sps)?;
        record.push(1);
        push_parameter_set(&mut record, "PPS", pps)?;
        if has_avcc_extension(parsed.profile_idc) {
            // Fields are range-checked by Sps::parse: chroma_format_idc ≤ 3, bit depths ≤ 6.
            record.push(0xfc | (parsed.chroma_format_idc as u8 & 0x03));
            record.push(0xf8 | (parsed.bit_depth_luma_minus8 as u8 & 0x07));
            record.push(0xf8 | (parsed.bit_depth_chroma_minus8 as u8 & 0x07));
            record.push(0); // numOfSequenceParameterSetExt
        }
        Ok(record)
    }

    /// Parses and validates a record: version 1, every SPS/PPS present in full and of the right
    /// NAL type. Trailing bytes (the high-profile extension) are accepted and ignored.
    pub fn parse(record: &[u8]) -> Result<Self, MediaError> {
        let mut r = ByteReader::new(record, AVCC_RECORD);
        let version = r.u8("configurationVersion")?;
        if version != 1 {
            return Err(MediaError::RecordField {
                record: AVCC_RECORD,
                field: "configurationVersion",
                offset: 0,
                value: version.into(),
            });
        }
        let profile_idc = r.u8("AVCProfileIndication")?;
        let profile_compat = r.u8("profile_compatibility")?;
        let level_idc = r.u8("AVCLevelIndication")?;
        let length_size_byte = r.u8("lengthSizeMinusOne")?;
        let nal_length_size = (length_size_byte & 0x03) + 1;
        if nal_length_size == 3 {
            return Err(MediaError::RecordField {
                record: AVCC_RECORD,
                field: "lengthSizeMinusOne",
                offset: 4,
                value: 2,
            });
        }
        let sps_count = r.u8("numOfSequenceParameterSets")? & 0x1f;
        let mut sps = Vec::with_capacity(sps_count.into());
        for _ in 0..sps_count {
            let offset = r.position();
            let nal = r.nal("sequenceParameterSetNALUnit")?;
            check_nal_type(&nal, NAL_SPS, "SPS", offset)?;
            sps.push(nal);
        }
        let pps_count = r.u8("numOfPictureParameterSets")?;
        let mut pps = Vec::with_capacity(pps_count.into());
        for _ in 0..pps_count {
            let offset = r.position();
            let nal = r.nal("pictureParameterSetNALUnit")?;
            check_nal_type(&nal, NAL_PPS, "PPS", offset)?;
            pps.push(nal);
        }
        Ok(AvcDecoderConfig {
            profile_idc,
            profile_compat,
            level_idc,
            nal_length_size,
            sps,
            pps,
        })
    }
}

fn check_nal_type(
    nal: &[u8],
    expected_type: u8,
    expected: &'static str,
    offset: usize,
) -> Result<(), MediaError> {
    match nal_type(nal) {
        Some(t) if t == expected_type => Ok(()),
        Some(t) => Err(MediaError::RecordField {
            record: AVCC_RECORD,
            field: expected,
            offset: offset + 2,
            value: t.into(),
        }),
        None => Err(MediaError::EmptyNal { offset }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::annexb::nal_ranges;
    use crate::media::test_support::hex;
    use crate::media::test_vectors::H264_CASES;
    use crate::media::{NalFormat, VideoParameters, annexb};

    /// The first SPS and PPS of an Annex-B buffer.
    fn parameter_sets(annexb: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let nals: Vec<&[u8]> = nal_ranges(annexb).map(|r| &annexb[r.unwrap()]).collect();
        let find = |t| {
            nals.iter()
                .find(|n| nal_type(n) == Some(t))
                .unwrap()
                .to_vec()
        };
        (find(NAL_SPS), find(NAL_PPS))
    }

    #[test]
    fn nal_types() {
        assert_eq!(nal_type(&[0x67, 0x42]), Some(NAL_SPS));
        assert_eq!(nal_type(&[0x68]), Some(NAL_PPS));
        assert_eq!(nal_type(&[0x65]), Some(NAL_IDR));
        assert_eq!(nal_type(&[0x41]), Some(NAL_SLICE));
        assert_eq!(nal_type(&[0x06]), Some(NAL_SEI));
        assert_eq!(nal_type(&[0x09]), Some(NAL_AUD));
        assert_eq!(nal_type(&[]), None);
        assert!(is_vcl(NAL_IDR) && is_vcl(NAL_SLICE) && !is_vcl(NAL_SPS) && !is_vcl(NAL_AUD));
    }

    /// x264 SPS at many sizes and profiles: the parsed size equals what ffprobe reports.
    #[test]
    fn sps_sizes_match_ffprobe() {
        for case in H264_CASES {
            let (sps, _) = parameter_sets(&hex(case.parameter_sets));
            let parsed = Sps::parse(&sps).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(
                (parsed.width, parsed.height),
                (case.width, case.height),
                "{}",
                case.name
            );
            assert_eq!(parsed.profile_idc, sps[1], "{}", case.name);
            assert_eq!(parsed.level_idc, sps[3], "{}", case.name);
        }
    }

    #[test]
    fn sps_high_profile_fields() {
        let by_name = |name: &str| {
            let case = H264_CASES.iter().find(|c| c.name == name).unwrap();
            Sps::parse(&parameter_sets(&hex(case.parameter_sets)).0).unwrap()
        };
        let yuv444 = by_name("high-4:4:4-Y444-33x17");
        assert_eq!(
            (
                yuv444.profile_idc,
                yuv444.chroma_format_idc,
                yuv444.separate_colour_plane_flag
            ),
            (244, 3, false)
        );
        assert_eq!((yuv444.width, yuv444.height), (33, 17));
        let yuv422 = by_name("high-4:2:2-Y42B-34x17");
        assert_eq!((yuv422.profile_idc, yuv422.chroma_format_idc), (122, 2));
        let high10 = by_name("high10-I420_10LE-320x240");
        assert_eq!(
            (
                high10.profile_idc,
                high10.bit_depth_luma_minus8,
                high10.bit_depth_chroma_minus8
            ),
            (110, 2, 2)
        );
        let baseline = by_name("baseline-I420-854x480");
        assert_eq!(
            (
                baseline.profile_idc,
                baseline.chroma_format_idc,
                baseline.frame_mbs_only_flag
            ),
            (66, 1, true)
        );
        assert_eq!(baseline.constraint_flags, 0xc0);
    }

    /// Hand-built SPS exercising what x264 never emits here: scaling matrices,
    /// pic_order_cnt_type 1, interlaced coding and field cropping.
    #[test]
    fn sps_scaling_lists_poc_type_1_and_fields() {
        struct Bits(Vec<bool>);
        impl Bits {
            fn u(&mut self, v: u64, n: u32) -> &mut Self {
                (0..n).rev().for_each(|i| self.0.push(v >> i & 1 == 1));
                self
            }
            fn ue(&mut self, v: u32) -> &mut Self {
                let code = u64::from(v) + 1;
                let len = 64 - code.leading_zeros();
                self.u(0, len - 1).u(code, len)
            }
            fn se(&mut self, v: i32) -> &mut Self {
                self.ue(if v > 0 {
                    (2 * v - 1) as u32
                } else {
                    (-2 * v) as u32
                })
            }
            fn bytes(&self) -> Vec<u8> {
                let mut out = vec![0u8; self.0.len().div_ceil(8) + 1];
                for (i, &b) in self.0.iter().enumerate() {
                    out[i / 8] |= u8::from(b) << (7 - i % 8);
                }
                // rbsp_stop_one_bit after the parsed fields.
                let stop = self.0.len();
                out[stop / 8] |= 0x80 >> (stop % 8);
                out
            }
        }
        let mut b = Bits(Vec::new());
        b.u(0x67, 8).u(100, 8).u(0, 8).u(40, 8).ue(0);
        b.ue(1).ue(0).ue(0).u(0, 1); // 4:2:0, 8-bit, no bypass
        b.u(1, 1); // seq_scaling_matrix_present_flag
        for i in 0..8 {
            if i == 0 || i == 6 {
                b.u(1, 1);
                // A list with a non-trivial delta, then delta -8 making nextScale 0 (stop).
                b.se(5).se(-13);
            } else {
                b.u(0, 1);
            }
        }
        b.ue(0).ue(1); // log2_max_frame_num_minus4, pic_order_cnt_type 1
        b.u(0, 1).se(-2).se(3).ue(2).se(1).se(-1);
        b.ue(4).u(0, 1); // max_num_ref_frames, gaps
        b.ue(119).ue(33); // 120 MBs wide, 34 map units (68 MB rows as fields)
        b.u(0, 1).u(1, 1).u(1, 1); // frame_mbs_only 0, mbaff 1, direct_8x8 1
        b.u(1, 1).ue(0).ue(0).ue(0).ue(2); // crop bottom 2 units = 2 * 2 * 2 rows
        let mut nal = Vec::new();
        // Emulation prevention, as an encoder would apply it.
        let mut zeros = 0;
        for byte in b.bytes() {
            if zeros >= 2 && byte <= 3 {
                nal.push(3);
                zeros = 0;
            }
            nal.push(byte);
            zeros = if byte == 0 { zeros + 1 } else { 0 };
        }
        let sps = Sps::parse(&nal).unwrap();
        assert_eq!((sps.width, sps.height), (1920, 1080));
        assert_eq!(
            (sps.pic_order_cnt_type, sps.frame_mbs_only_flag),
            (1, false)
        );
    }

    #[test]
    fn sps_errors() {
        assert!(matches!(
            Sps::parse(&[0x68, 0xce]),
            Err(MediaError::UnexpectedNalType {
                expected: "SPS",
                found: 8,
                ..
            })
        ));
        assert_eq!(Sps::parse(&[]), Err(MediaError::EmptyNal { offset: 0 }));
        let case = &H264_CASES[0];
        let (sps, _) = parameter_sets(&hex(case.parameter_sets));
        // The fields up to frame cropping end in byte 8 of this SPS; the VUI after them is unread.
        for cut in 1..8 {
            assert!(
                matches!(
                    Sps::parse(&sps[..cut]),
                    Err(MediaError::BitstreamEnd {
                        what: "H.264 SPS",
                        ..
                    })
                ),
                "{} cut at {cut}",
                case.name
            );
        }
        // Exp-Golomb run longer than 32 bits where seq_parameter_set_id sits.
        assert!(matches!(
            Sps::parse(&[0x67, 0x42, 0xc0, 0x1e, 0, 0, 0, 0, 0x80]),
            Err(MediaError::InvalidField {
                field: "seq_parameter_set_id",
                ..
            })
        ));
    }

    /// The avcC built from x264's SPS/PPS equals h264parse's `codec_data` byte for byte; for
    /// profiles 100/110/122 it adds the ISO/IEC 14496-15 extension, which GStreamer 1.22 omits
    /// and which equals the one ffmpeg's mp4 muxer writes.
    #[test]
    fn avcc_matches_h264parse_and_ffmpeg() {
        for case in H264_CASES {
            let (sps, pps) = parameter_sets(&hex(case.parameter_sets));
            let record = AvcDecoderConfig::from_parameter_sets(&sps, &pps).unwrap();
            let gst = hex(case.gst_codec_data);
            let ffmpeg = hex(case.ffmpeg_avcc);
            if has_avcc_extension(sps[1]) {
                assert_eq!(record[..record.len() - 4], gst[..], "{}", case.name);
                assert_eq!(
                    record[record.len() - 4..],
                    ffmpeg[ffmpeg.len() - 4..],
                    "{}",
                    case.name
                );
            } else {
                assert_eq!(record, gst, "{}", case.name);
            }
            let parsed = AvcDecoderConfig::parse(&record).unwrap();
            assert_eq!(parsed.sps, vec![Bytes::from(sps.clone())], "{}", case.name);
            assert_eq!(parsed.pps, vec![Bytes::from(pps.clone())], "{}", case.name);
            assert_eq!(
                (parsed.profile_idc, parsed.profile_compat, parsed.level_idc),
                (sps[1], sps[2], sps[3])
            );
            assert_eq!(parsed.nal_length_size, 4);
            // ffmpeg's record keeps the next start code's zero_byte on the PPS; apart from that
            // its SPS and PPS are ours.
            let ffmpeg_parsed = AvcDecoderConfig::parse(&ffmpeg).unwrap();
            assert_eq!(ffmpeg_parsed.sps, parsed.sps, "{}", case.name);
            assert!(ffmpeg_parsed.pps[0].starts_with(&pps), "{}", case.name);
        }
    }

    #[test]
    fn video_parameters_from_codec_data_and_parameter_sets() {
        for case in H264_CASES {
            let annexb = hex(case.parameter_sets);
            let gst = hex(case.gst_codec_data);
            let from_caps = VideoParameters::from_codec_data(Codec::H264, &gst).unwrap();
            assert_eq!(
                (from_caps.width, from_caps.height),
                (case.width, case.height),
                "{}",
                case.name
            );
            assert_eq!(from_caps.codec_private, gst);
            let from_frame =
                VideoParameters::from_key_frame(Codec::H264, NalFormat::AnnexB, &annexb).unwrap();
            assert_eq!(
                (from_frame.width, from_frame.height),
                (case.width, case.height),
                "{}",
                case.name
            );
            let mut length_prefixed = Vec::new();
            annexb::annexb_to_length_prefixed(&annexb, &mut length_prefixed).unwrap();
            let from_lp = VideoParameters::from_key_frame(
                Codec::H264,
                NalFormat::LengthPrefixed,
                &length_prefixed,
            )
            .unwrap();
            assert_eq!(from_lp, from_frame);
        }
    }

    #[test]
    fn avcc_parse_errors() {
        let gst = hex(H264_CASES[0].gst_codec_data);
        for cut in 0..gst.len() {
            assert!(
                AvcDecoderConfig::parse(&gst[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut version = gst.clone();
        version[0] = 0;
        assert!(matches!(
            AvcDecoderConfig::parse(&version),
            Err(MediaError::RecordField {
                field: "configurationVersion",
                offset: 0,
                value: 0,
                ..
            })
        ));
        let mut swapped = gst.clone();
        swapped[8] = 0x68; // the SPS header byte, now a PPS type
        assert!(matches!(
            AvcDecoderConfig::parse(&swapped),
            Err(MediaError::RecordField { field: "SPS", .. })
        ));
        let mut two_byte_lengths = gst.clone();
        two_byte_lengths[4] = 0xfd;
        assert_eq!(
            AvcDecoderConfig::parse(&two_byte_lengths)
                .unwrap()
                .nal_length_size,
            2
        );
        assert!(matches!(
            VideoParameters::from_codec_data(Codec::H264, &two_byte_lengths),
            Err(MediaError::RecordField {
                field: "lengthSizeMinusOne",
                value: 1,
                ..
            })
        ));
        let (sps, pps) = parameter_sets(&hex(H264_CASES[0].parameter_sets));
        assert!(matches!(
            AvcDecoderConfig::from_parameter_sets(&pps, &sps),
            Err(MediaError::UnexpectedNalType {
                expected: "SPS",
                ..
            })
        ));
        assert!(matches!(
            AvcDecoderConfig::from_parameter_sets(&sps, &sps),
            Err(MediaError::UnexpectedNalType {
                expected: "PPS",
                ..
            })
        ));
        assert!(matches!(
            AvcDecoderConfig::from_parameter_sets(&sps, &[]),
            Err(MediaError::EmptyNal { .. })
        ));
    }
}
