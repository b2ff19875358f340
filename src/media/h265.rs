//! H.265 / HEVC: NAL unit types, the sequence parameter set fields the decoder configuration
//! record and the Tracks element need, and the HEVCDecoderConfigurationRecord
//! (ISO/IEC 14496-15 §8.3.3.1).
//!
//! Invariants: parsing works on a copy with emulation-prevention bytes removed; fields that the
//! record stores in fixed-width bit fields are range-checked (ITU-T H.265 §7.4.3.2.1) so the
//! record never silently truncates a value; sizes must fit `u32`.

use bytes::Bytes;

use super::annexb::rbsp_from_nal;
use super::bits::{BitReader, ByteReader};
use super::h264::push_parameter_set;
use super::{Codec, MediaError};

/// Coded slice of an IDR picture that may have RADL pictures.
pub const NAL_IDR_W_RADL: u8 = 19;
/// Coded slice of an IDR picture without leading pictures.
pub const NAL_IDR_N_LP: u8 = 20;
/// Coded slice of a clean random access picture.
pub const NAL_CRA: u8 = 21;
/// Video parameter set.
pub const NAL_VPS: u8 = 32;
/// Sequence parameter set.
pub const NAL_SPS: u8 = 33;
/// Picture parameter set.
pub const NAL_PPS: u8 = 34;
/// Access unit delimiter.
pub const NAL_AUD: u8 = 35;
/// Prefix supplemental enhancement information.
pub const NAL_PREFIX_SEI: u8 = 39;
/// Suffix supplemental enhancement information.
pub const NAL_SUFFIX_SEI: u8 = 40;

/// Name used in errors about hvcC records.
pub(crate) const HVCC_RECORD: &str = "HEVCDecoderConfigurationRecord";
const SPS_WHAT: &str = "H.265 SPS";

/// NAL unit type: `(byte0 >> 1) & 0x3f`; `None` when the 2-byte NAL header is incomplete.
pub fn nal_type(nal: &[u8]) -> Option<u8> {
    match nal {
        [first, _, ..] => Some((first >> 1) & 0x3f),
        _ => None,
    }
}

/// True for NAL types that carry coded slice data (0–31, including reserved VCL types).
pub fn is_vcl(nal_type: u8) -> bool {
    nal_type < 32
}

/// True for intra random access point pictures (BLA, IDR, CRA and reserved IRAP types 16–23).
pub fn is_irap(nal_type: u8) -> bool {
    (16..=23).contains(&nal_type)
}

/// The fields of an HEVC sequence parameter set that the decoder configuration record and the
/// Tracks element need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HevcSps {
    /// general_profile_space (0..=3).
    pub general_profile_space: u8,
    /// general_tier_flag: true for the High tier.
    pub tier_flag: bool,
    /// general_profile_idc (1 Main, 2 Main 10, 4 range extensions).
    pub profile_idc: u8,
    /// general_profile_compatibility_flag[0..32], flag 0 in the most significant bit.
    pub profile_compatibility_flags: u32,
    /// The 48 bits from general_progressive_source_flag on, right-aligned.
    pub constraint_indicator_flags: u64,
    /// general_level_idc: thirty times the level number (120 = level 4).
    pub level_idc: u8,
    /// sps_max_sub_layers_minus1 (0..=6).
    pub sps_max_sub_layers_minus1: u8,
    /// sps_temporal_id_nesting_flag.
    pub temporal_id_nesting_flag: bool,
    /// 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4.
    pub chroma_format_idc: u32,
    /// 4:4:4 coded as three monochrome planes.
    pub separate_colour_plane_flag: bool,
    /// Luma bit depth − 8 (0..=8).
    pub bit_depth_luma_minus8: u32,
    /// Chroma bit depth − 8 (0..=8).
    pub bit_depth_chroma_minus8: u32,
    /// Displayed width in luma samples, conformance window applied.
    pub width: u32,
    /// Displayed height in luma samples, conformance window applied.
    pub height: u32,
}

impl HevcSps {
    /// Parses an SPS NAL unit (`nal` includes the 2-byte NAL header; emulation-prevention bytes
    /// may be present), through the bit depths.
    pub fn parse(nal: &[u8]) -> Result<Self, MediaError> {
        match nal_type(nal) {
            Some(NAL_SPS) => {}
            Some(found) => {
                return Err(MediaError::UnexpectedNalType {
                    codec: Codec::H265,
                    expected: "SPS",
                    found,
                });
            }
            None => {
                return Err(MediaError::BitstreamEnd {
                    what: SPS_WHAT,
                    field: "nal_unit_header",
                    bit_offset: nal.len() * 8,
                });
            }
        }
        let mut rbsp = Vec::with_capacity(nal.len());
        rbsp_from_nal(nal, &mut rbsp);
        let mut r = BitReader::new(&rbsp, SPS_WHAT);
        r.skip(16, "nal_unit_header")?;
        r.skip(4, "sps_video_parameter_set_id")?;
        let at = r.bit_offset();
        let sps_max_sub_layers_minus1 = r.u8(3, "sps_max_sub_layers_minus1")?;
        if sps_max_sub_layers_minus1 > 6 {
            return Err(r.invalid(
                "sps_max_sub_layers_minus1",
                sps_max_sub_layers_minus1.into(),
                at,
                "must be in 0..=6",
            ));
        }
        let temporal_id_nesting_flag = r.flag("sps_temporal_id_nesting_flag")?;

        // profile_tier_level(1, sps_max_sub_layers_minus1), §7.3.3
        let general_profile_space = r.u8(2, "general_profile_space")?;
        let tier_flag = r.flag("general_tier_flag")?;
        let profile_idc = r.u8(5, "general_profile_idc")?;
        let profile_compatibility_flags = r.u32(32, "general_profile_compatibility_flags")?;
        let constraint_indicator_flags = r.bits(48, "general_constraint_indicator_flags")?;
        let level_idc = r.u8(8, "general_level_idc")?;
        let mut sub_layer_profile_present = [false; 6];
        let mut sub_layer_level_present = [false; 6];
        let sub_layers = usize::from(sps_max_sub_layers_minus1);
        for (profile, level) in sub_layer_profile_present
            .iter_mut()
            .zip(sub_layer_level_present.iter_mut())
            .take(sub_layers)
        {
            *profile = r.flag("sub_layer_profile_present_flag")?;
            *level = r.flag("sub_layer_level_present_flag")?;
        }
        if sub_layers > 0 {
            r.skip(2 * (8 - sub_layers), "reserved_zero_2bits")?;
        }
        for (&profile, &level) in sub_layer_profile_present
            .iter()
            .zip(&sub_layer_level_present)
            .take(sub_layers)
        {
            if profile {
                r.skip(88, "sub_layer_profile")?;
            }
            if level {
                r.skip(8, "sub_layer_level_idc")?;
            }
        }

        r.ue_max("sps_seq_parameter_set_id", 15)?;
        let chroma_format_idc = r.ue_max("chroma_format_idc", 3)?;
        let separate_colour_plane_flag =
            chroma_format_idc == 3 && r.flag("separate_colour_plane_flag")?;
        let width_at = r.bit_offset();
        let coded_width = u64::from(r.ue("pic_width_in_luma_samples")?);
        let height_at = r.bit_offset();
        let coded_height = u64::from(r.ue("pic_height_in_luma_samples")?);
        if coded_width == 0 {
            return Err(r.invalid("pic_width_in_luma_samples", 0, width_at, "must not be 0"));
        }
        if coded_height == 0 {
            return Err(r.invalid("pic_height_in_luma_samples", 0, height_at, "must not be 0"));
        }
        let window_at = r.bit_offset();
        let (mut left, mut right, mut top, mut bottom) = (0u64, 0u64, 0u64, 0u64);
        if r.flag("conformance_window_flag")? {
            left = r.ue("conf_win_left_offset")?.into();
            right = r.ue("conf_win_right_offset")?.into();
            top = r.ue("conf_win_top_offset")?.into();
            bottom = r.ue("conf_win_bottom_offset")?.into();
        }
        let bit_depth_luma_minus8 = r.ue_max("bit_depth_luma_minus8", 8)?;
        let bit_depth_chroma_minus8 = r.ue_max("bit_depth_chroma_minus8", 8)?;

        // Table 6-1: window offsets count chroma samples.
        let chroma_array_type = if separate_colour_plane_flag {
            0
        } else {
            chroma_format_idc
        };
        let (sub_width_c, sub_height_c) = match chroma_array_type {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        let crop_x = (left + right) * sub_width_c;
        let crop_y = (top + bottom) * sub_height_c;
        if crop_x >= coded_width {
            return Err(r.invalid(
                "conf_win_left_offset + conf_win_right_offset",
                i64::try_from(left + right).unwrap_or(i64::MAX),
                window_at,
                "the conformance window removes the whole width",
            ));
        }
        if crop_y >= coded_height {
            return Err(r.invalid(
                "conf_win_top_offset + conf_win_bottom_offset",
                i64::try_from(top + bottom).unwrap_or(i64::MAX),
                window_at,
                "the conformance window removes the whole height",
            ));
        }
        // Both fit: a ue(v) is < 2^32 and the crop is subtracted.
        let width = u32::try_from(coded_width - crop_x).unwrap_or(u32::MAX);
        let height = u32::try_from(coded_height - crop_y).unwrap_or(u32::MAX);

        Ok(HevcSps {
            general_profile_space,
            tier_flag,
            profile_idc,
            profile_compatibility_flags,
            constraint_indicator_flags,
            level_idc,
            sps_max_sub_layers_minus1,
            temporal_id_nesting_flag,
            chroma_format_idc,
            separate_colour_plane_flag,
            bit_depth_luma_minus8,
            bit_depth_chroma_minus8,
            width,
            height,
        })
    }
}

fn expect_nal_type(
    nal: &[u8],
    expected_type: u8,
    expected: &'static str,
) -> Result<(), MediaError> {
    match nal_type(nal) {
        Some(t) if t == expected_type => Ok(()),
        Some(found) => Err(MediaError::UnexpectedNalType {
            codec: Codec::H265,
            expected,
            found,
        }),
        None => Err(MediaError::EmptyNal { offset: 0 }),
    }
}

/// Builds a full HEVCDecoderConfigurationRecord from one VPS, SPS and PPS (each with its NAL
/// header, no start code). Profile, tier, level, chroma format and bit depths come from the
/// SPS; min_spatial_segmentation_idc, parallelismType, avgFrameRate and constantFrameRate are 0
/// (unknown / unspecified); numTemporalLayers and temporalIdNested follow the SPS;
/// lengthSizeMinusOne = 3; three arrays (VPS, SPS, PPS) with array_completeness = 1, since
/// frames may still carry parameter sets in band but the record holds all of them.
pub fn hevc_decoder_config(vps: &[u8], sps: &[u8], pps: &[u8]) -> Result<Vec<u8>, MediaError> {
    expect_nal_type(vps, NAL_VPS, "VPS")?;
    expect_nal_type(pps, NAL_PPS, "PPS")?;
    let parsed = HevcSps::parse(sps)?;
    if parsed.bit_depth_luma_minus8 > 7 || parsed.bit_depth_chroma_minus8 > 7 {
        return Err(MediaError::InvalidField {
            what: SPS_WHAT,
            field: "bit_depth_luma_minus8 / bit_depth_chroma_minus8",
            value: parsed
                .bit_depth_luma_minus8
                .max(parsed.bit_depth_chroma_minus8)
                .into(),
            bit_offset: 0,
            reason: "16-bit video does not fit the 3-bit field of the decoder configuration record",
        });
    }
    let mut record = Vec::with_capacity(23 + 3 * 5 + vps.len() + sps.len() + pps.len());
    record.push(1); // configurationVersion
    record.push(
        (parsed.general_profile_space << 6)
            | (u8::from(parsed.tier_flag) << 5)
            | parsed.profile_idc,
    );
    record.extend_from_slice(&parsed.profile_compatibility_flags.to_be_bytes());
    record.extend_from_slice(
        parsed
            .constraint_indicator_flags
            .to_be_bytes()
            .get(2..)
            .unwrap_or_default(),
    );
    record.push(parsed.level_idc);
    record.extend_from_slice(&[0xf0, 0x00]); // reserved 1111, min_spatial_segmentation_idc 0
    record.push(0xfc); // reserved 111111, parallelismType 0
    // Ranges checked above and by HevcSps::parse (chroma_format_idc ≤ 3).
    record.push(0xfc | (parsed.chroma_format_idc as u8 & 0x03));
    record.push(0xf8 | (parsed.bit_depth_luma_minus8 as u8 & 0x07));
    record.push(0xf8 | (parsed.bit_depth_chroma_minus8 as u8 & 0x07));
    record.extend_from_slice(&[0, 0]); // avgFrameRate
    let num_temporal_layers = parsed.sps_max_sub_layers_minus1 + 1;
    record.push((num_temporal_layers << 3) | (u8::from(parsed.temporal_id_nesting_flag) << 2) | 3);
    record.push(3); // numOfArrays
    for (nal_type, kind, nal) in [
        (NAL_VPS, "VPS", vps),
        (NAL_SPS, "SPS", sps),
        (NAL_PPS, "PPS", pps),
    ] {
        record.push(0x80 | nal_type); // array_completeness 1, reserved 0
        record.extend_from_slice(&1u16.to_be_bytes()); // numNalus
        push_parameter_set(&mut record, kind, nal)?;
    }
    Ok(record)
}

/// An HEVCDecoderConfigurationRecord (hvcC), as parsed from caps `codec_data` or a CodecPrivate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HevcDecoderConfig {
    /// general_profile_space.
    pub general_profile_space: u8,
    /// general_tier_flag.
    pub tier_flag: bool,
    /// general_profile_idc.
    pub profile_idc: u8,
    /// general_level_idc.
    pub level_idc: u8,
    /// chromaFormat (0..=3).
    pub chroma_format_idc: u8,
    /// Bytes per NAL length prefix in frames: 1, 2 or 4.
    pub nal_length_size: u8,
    /// Video parameter sets, each with its NAL header.
    pub vps: Vec<Bytes>,
    /// Sequence parameter sets, each with its NAL header.
    pub sps: Vec<Bytes>,
    /// Picture parameter sets, each with its NAL header.
    pub pps: Vec<Bytes>,
}

impl HevcDecoderConfig {
    /// Parses and validates a record: version 1, every array and NAL unit complete, each NAL's
    /// header type matching its array. Arrays of other types (SEI) are checked and skipped.
    pub fn parse(record: &[u8]) -> Result<Self, MediaError> {
        let mut r = ByteReader::new(record, HVCC_RECORD);
        let version = r.u8("configurationVersion")?;
        if version != 1 {
            return Err(MediaError::RecordField {
                record: HVCC_RECORD,
                field: "configurationVersion",
                offset: 0,
                value: version.into(),
            });
        }
        let profile_byte = r.u8("general_profile_space/tier/profile_idc")?;
        r.take(4, "general_profile_compatibility_flags")?;
        r.take(6, "general_constraint_indicator_flags")?;
        let level_idc = r.u8("general_level_idc")?;
        r.take(2, "min_spatial_segmentation_idc")?;
        r.u8("parallelismType")?;
        let chroma_format_idc = r.u8("chromaFormat")? & 0x03;
        r.u8("bitDepthLumaMinus8")?;
        r.u8("bitDepthChromaMinus8")?;
        r.take(2, "avgFrameRate")?;
        let nal_length_size = (r.u8("lengthSizeMinusOne")? & 0x03) + 1;
        if nal_length_size == 3 {
            return Err(MediaError::RecordField {
                record: HVCC_RECORD,
                field: "lengthSizeMinusOne",
                offset: 21,
                value: 2,
            });
        }
        let arrays = r.u8("numOfArrays")?;
        let (mut vps, mut sps, mut pps) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..arrays {
            let array_type = r.u8("NAL_unit_type")? & 0x3f;
            let count = r.u16("numNalus")?;
            for _ in 0..count {
                let offset = r.position();
                let nal = r.nal("nalUnit")?;
                match nal_type(&nal) {
                    Some(t) if t == array_type => {}
                    found => {
                        return Err(MediaError::RecordField {
                            record: HVCC_RECORD,
                            field: "nalUnit header type (differs from its array's NAL_unit_type)",
                            offset: offset + 2,
                            value: found.map_or(u32::MAX, u32::from),
                        });
                    }
                }
                match array_type {
                    NAL_VPS => vps.push(nal),
                    NAL_SPS => sps.push(nal),
                    NAL_PPS => pps.push(nal),
                    _ => {}
                }
            }
        }
        Ok(HevcDecoderConfig {
            general_profile_space: profile_byte >> 6,
            tier_flag: profile_byte & 0x20 != 0,
            profile_idc: profile_byte & 0x1f,
            level_idc,
            chroma_format_idc,
            nal_length_size,
            vps,
            sps,
            pps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::annexb::nal_ranges;
    use crate::media::test_support::hex;
    use crate::media::test_vectors::H265_CASES;
    use crate::media::{NalFormat, VideoParameters};

    fn parameter_sets(annexb: &[u8]) -> [Vec<u8>; 3] {
        let nals: Vec<&[u8]> = nal_ranges(annexb).map(|r| &annexb[r.unwrap()]).collect();
        let find = |t| {
            nals.iter()
                .find(|n| nal_type(n) == Some(t))
                .unwrap()
                .to_vec()
        };
        [find(NAL_VPS), find(NAL_SPS), find(NAL_PPS)]
    }

    /// Byte positions of the array headers (array_completeness | NAL_unit_type) in a record.
    fn array_header_positions(record: &[u8]) -> Vec<usize> {
        let mut positions = Vec::new();
        let mut pos = 23;
        for _ in 0..record[22] {
            positions.push(pos);
            let count = u16::from_be_bytes([record[pos + 1], record[pos + 2]]);
            pos += 3;
            for _ in 0..count {
                pos += 2 + usize::from(u16::from_be_bytes([record[pos], record[pos + 1]]));
            }
        }
        assert_eq!(pos, record.len());
        positions
    }

    #[test]
    fn nal_types() {
        assert_eq!(nal_type(&[0x40, 0x01]), Some(NAL_VPS));
        assert_eq!(nal_type(&[0x42, 0x01]), Some(NAL_SPS));
        assert_eq!(nal_type(&[0x44, 0x01]), Some(NAL_PPS));
        assert_eq!(nal_type(&[0x26, 0x01]), Some(NAL_IDR_W_RADL));
        assert_eq!(nal_type(&[0x28, 0x01]), Some(NAL_IDR_N_LP));
        assert_eq!(nal_type(&[0x2a, 0x01]), Some(NAL_CRA));
        assert_eq!(nal_type(&[0x4e, 0x01]), Some(NAL_PREFIX_SEI));
        assert_eq!(nal_type(&[0x42]), None);
        assert!(is_irap(NAL_CRA) && is_irap(NAL_IDR_N_LP) && !is_irap(1) && !is_irap(NAL_VPS));
        assert!(is_vcl(NAL_IDR_W_RADL) && !is_vcl(NAL_SPS));
    }

    /// x265 SPS at many sizes (odd ones need the conformance window), 4:4:4 and 10-bit.
    #[test]
    fn sps_sizes_match_ffprobe() {
        for case in H265_CASES {
            let [_, sps, _] = parameter_sets(&hex(case.parameter_sets));
            let parsed = HevcSps::parse(&sps).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(
                (parsed.width, parsed.height),
                (case.width, case.height),
                "{}",
                case.name
            );
        }
        let by_name = |name: &str| {
            let case = H265_CASES.iter().find(|c| c.name == name).unwrap();
            HevcSps::parse(&parameter_sets(&hex(case.parameter_sets))[1]).unwrap()
        };
        let main = by_name("I420-1920x1080");
        assert_eq!(
            (
                main.general_profile_space,
                main.tier_flag,
                main.profile_idc,
                main.level_idc
            ),
            (0, false, 1, 120)
        );
        assert_eq!(main.profile_compatibility_flags, 0x6000_0000);
        assert_eq!(main.constraint_indicator_flags, 0x9000_0000_0000);
        assert_eq!((main.chroma_format_idc, main.bit_depth_luma_minus8), (1, 0));
        assert_eq!(
            (
                main.sps_max_sub_layers_minus1,
                main.temporal_id_nesting_flag
            ),
            (0, true)
        );
        let yuv444 = by_name("Y444-33x17");
        assert_eq!(
            (
                yuv444.profile_idc,
                yuv444.chroma_format_idc,
                yuv444.width,
                yuv444.height
            ),
            (4, 3, 33, 17)
        );
        let main10 = by_name("I420_10LE-320x240");
        assert_eq!(
            (
                main10.profile_idc,
                main10.bit_depth_luma_minus8,
                main10.bit_depth_chroma_minus8
            ),
            (2, 2, 2)
        );
    }

    /// Our hvcC equals h265parse's `codec_data` except that we set array_completeness (GStreamer
    /// leaves it 0), and equals ffmpeg's header and arrays except the zero_byte ffmpeg keeps at the
    /// end of the PPS.
    #[test]
    fn hvcc_matches_h265parse_and_ffmpeg() {
        for case in H265_CASES {
            let [vps, sps, pps] = parameter_sets(&hex(case.parameter_sets));
            let record = hevc_decoder_config(&vps, &sps, &pps).unwrap();
            let mut gst = hex(case.gst_codec_data);
            for pos in array_header_positions(&gst) {
                assert_eq!(gst[pos] & 0x80, 0);
                gst[pos] |= 0x80;
            }
            assert_eq!(record, gst, "{}", case.name);
            let ffmpeg = hex(case.ffmpeg_hvcc);
            assert_eq!(record[..23], ffmpeg[..23], "{}", case.name);
            let parsed = HevcDecoderConfig::parse(&record).unwrap();
            let ffmpeg_parsed = HevcDecoderConfig::parse(&ffmpeg).unwrap();
            assert_eq!(
                (&ffmpeg_parsed.vps, &ffmpeg_parsed.sps),
                (&parsed.vps, &parsed.sps),
                "{}",
                case.name
            );
            assert_eq!(
                ffmpeg_parsed.pps[0][..],
                [&pps[..], &[0]].concat()[..],
                "{}",
                case.name
            );
            assert_eq!(
                (parsed.vps.len(), parsed.sps.len(), parsed.pps.len()),
                (1, 1, 1)
            );
            assert_eq!(
                (&parsed.vps[0][..], &parsed.sps[0][..], &parsed.pps[0][..]),
                (&vps[..], &sps[..], &pps[..])
            );
            assert_eq!(parsed.nal_length_size, 4);

            let from_caps = VideoParameters::from_codec_data(Codec::H265, &record).unwrap();
            assert_eq!(
                (from_caps.width, from_caps.height),
                (case.width, case.height)
            );
            let from_frame = VideoParameters::from_key_frame(
                Codec::H265,
                NalFormat::AnnexB,
                &hex(case.parameter_sets),
            )
            .unwrap();
            assert_eq!(from_frame, from_caps, "{}", case.name);
        }
    }

    #[test]
    fn errors() {
        let [vps, sps, pps] = parameter_sets(&hex(H265_CASES[0].parameter_sets));
        assert!(matches!(
            hevc_decoder_config(&sps, &sps, &pps),
            Err(MediaError::UnexpectedNalType {
                expected: "VPS",
                found: 33,
                ..
            })
        ));
        assert!(matches!(
            hevc_decoder_config(&vps, &pps, &pps),
            Err(MediaError::UnexpectedNalType {
                expected: "SPS",
                found: 34,
                ..
            })
        ));
        assert!(matches!(
            hevc_decoder_config(&vps, &sps, &vps),
            Err(MediaError::UnexpectedNalType { .. })
        ));
        // Parsing stops after the bit depths: every cut before them fails for lack of data, every
        // cut after them gives the full result.
        let full = HevcSps::parse(&sps).unwrap();
        let needed = (0..sps.len())
            .find(|&cut| HevcSps::parse(&sps[..cut]).is_ok())
            .unwrap();
        assert!(
            needed > 17,
            "profile_tier_level alone ends at byte 15; parsed from {needed} bytes"
        );
        for cut in 0..needed {
            assert!(matches!(
                HevcSps::parse(&sps[..cut]),
                Err(MediaError::BitstreamEnd {
                    what: "H.265 SPS",
                    ..
                })
            ));
        }
        for cut in needed..sps.len() {
            assert_eq!(HevcSps::parse(&sps[..cut]).unwrap(), full);
        }
        let record = hevc_decoder_config(&vps, &sps, &pps).unwrap();
        for cut in 0..record.len() {
            assert!(
                HevcDecoderConfig::parse(&record[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut mismatched = record.clone();
        mismatched[23] = 0x80 | NAL_SPS; // VPS array now claims SPS
        assert!(matches!(
            HevcDecoderConfig::parse(&mismatched),
            Err(MediaError::RecordField { offset: 28, .. })
        ));
        let mut no_vps = record.clone();
        no_vps[23] = 0x80 | NAL_PREFIX_SEI;
        no_vps[28] = NAL_PREFIX_SEI << 1;
        assert!(matches!(
            VideoParameters::from_codec_data(Codec::H265, &no_vps),
            Err(MediaError::MissingParameterSet { kind: "VPS", .. })
        ));
    }
}
