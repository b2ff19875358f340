//! Silent AAC-LC frames: a `raw_data_block()` (ISO/IEC 14496-3 §4.4.2.1) that decodes to
//! digital silence, for filling a fragment in which the microphone delivered nothing (KVS
//! rejects a fragment that lacks a frame of a declared track, ACK 4011).
//!
//! Invariants:
//! - The block holds the standard element layout of the channel configuration (1: SCE;
//!   2: CPE; 3: SCE CPE; 4: SCE CPE SCE; 5: SCE CPE CPE; 6: SCE CPE CPE LFE; 7: SCE CPE CPE
//!   CPE LFE), instance tags counting from 0 per element type, then `ID_END`, then zero bits
//!   to the byte boundary. Every channel stream is a long window with `max_sfb = 0`: no
//!   sections, scale factors or spectral data, so the inverse transform yields zeros. (The
//!   first silent frame after real audio still carries that audio's overlap-add tail.)
//! - Blocks are built only for plain AAC-LC: object type 2 without SBR or PS signalled. An
//!   HE-AAC decoder expects SBR data in every frame once SBR is on, and no HE-AAC encoder was
//!   at hand to show that a core-only frame decodes cleanly there, so such configs are refused
//!   ([`SilenceError`]) and the caller decides what to do without a filler.
//! - Nothing here allocates except the final `Bytes` of [`silent_frame`].

use super::MediaError;
use super::aac::{AudioSpecificConfig, OBJECT_TYPE_AAC_LC};
use super::bits::BitReader;
use bytes::Bytes;

/// Longest silent block: channel configuration 7 takes 217 bits (28 bytes).
pub const MAX_SILENT_BLOCK_LEN: usize = 28;

/// A silent `raw_data_block()`, at most [`MAX_SILENT_BLOCK_LEN`] bytes.
pub type SilentBlock = heapless::Vec<u8, MAX_SILENT_BLOCK_LEN>;

const WHAT: &str = "AAC AudioSpecificConfig";

// Syntactic element IDs (id_syn_ele, Table 4.85).
const ID_SCE: u32 = 0;
const ID_CPE: u32 = 1;
const ID_LFE: u32 = 3;
const ID_END: u32 = 7;
/// Any value works with no scale factor bands; 100 is the neutral scale factor offset.
const GLOBAL_GAIN: u32 = 100;
const SYNC_EXTENSION: u64 = 0x2B7;
const SYNC_EXTENSION_PS: u64 = 0x548;
const OBJECT_TYPE_SBR: u8 = 5;

/// Why no silent frame is built for a track.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SilenceError {
    #[error("{0}")]
    Config(#[from] MediaError),
    #[error(
        "audio object type {object_type} is not AAC-LC ({OBJECT_TYPE_AAC_LC}); silent frames \
         are built for AAC-LC only"
    )]
    NotAacLc { object_type: u8 },
    #[error(
        "AudioSpecificConfig signals {what} in its sync extension at bit {bit_offset}; silent \
         frames are built for plain AAC-LC only"
    )]
    Extension {
        what: &'static str,
        bit_offset: usize,
    },
}

/// MSB-first bit writer into a fixed buffer; overflow is an error, never a panic.
struct BitWriter {
    out: SilentBlock,
    /// Bits not yet flushed, left-aligned in the low `pending_len` bits of `pending`.
    pending: u8,
    pending_len: u32,
}

impl BitWriter {
    fn new() -> Self {
        BitWriter {
            out: SilentBlock::new(),
            pending: 0,
            pending_len: 0,
        }
    }

    /// Writes the low `width` bits of `value`, most significant first.
    fn put(&mut self, value: u32, width: u32) -> Result<(), MediaError> {
        for i in (0..width).rev() {
            let bit = ((value >> i) & 1) as u8;
            self.pending = (self.pending << 1) | bit;
            self.pending_len += 1;
            if self.pending_len == 8 {
                self.flush_byte()?;
            }
        }
        Ok(())
    }

    fn flush_byte(&mut self) -> Result<(), MediaError> {
        self.out
            .push(self.pending)
            .map_err(|_| MediaError::InvalidField {
                what: "silent AAC raw_data_block",
                field: "length",
                value: MAX_SILENT_BLOCK_LEN as i64 + 1,
                bit_offset: MAX_SILENT_BLOCK_LEN * 8,
                reason: "longer than the buffer",
            })?;
        self.pending = 0;
        self.pending_len = 0;
        Ok(())
    }

    /// Pads with zero bits to the byte boundary (`byte_alignment()`), returns the bytes.
    fn finish(mut self) -> Result<SilentBlock, MediaError> {
        if self.pending_len > 0 {
            let pad = 8 - self.pending_len;
            self.put(0, pad)?;
        }
        Ok(self.out)
    }
}

/// `individual_channel_stream(common_window = 0, scale_flag = 0)` with nothing in it.
fn empty_channel_stream(w: &mut BitWriter) -> Result<(), MediaError> {
    w.put(GLOBAL_GAIN, 8)?;
    // ics_info: ics_reserved_bit, window_sequence ONLY_LONG_SEQUENCE, window_shape sine,
    // max_sfb 0, predictor_data_present 0.
    w.put(0, 1)?;
    w.put(0, 2)?;
    w.put(0, 1)?;
    w.put(0, 6)?;
    w.put(0, 1)?;
    // section_data and scale_factor_data are empty for max_sfb 0.
    // pulse_data_present, tns_data_present, gain_control_data_present; no spectral_data.
    w.put(0, 3)
}

/// The silent `raw_data_block()` for `channel_configuration` 1..=7 (see the module doc).
pub fn silent_raw_data_block(channel_configuration: u8) -> Result<SilentBlock, MediaError> {
    let layout: &[u32] = match channel_configuration {
        1 => &[ID_SCE],
        2 => &[ID_CPE],
        3 => &[ID_SCE, ID_CPE],
        4 => &[ID_SCE, ID_CPE, ID_SCE],
        5 => &[ID_SCE, ID_CPE, ID_CPE],
        6 => &[ID_SCE, ID_CPE, ID_CPE, ID_LFE],
        7 => &[ID_SCE, ID_CPE, ID_CPE, ID_CPE, ID_LFE],
        channels => return Err(MediaError::InvalidChannels { channels }),
    };
    let mut w = BitWriter::new();
    // element_instance_tag counts per element type: SCE 0, CPE 0, CPE 1, ...
    let mut next_tag = [0u32; 4];
    for &element in layout {
        let tag = next_tag.get_mut(element as usize).map_or(0, |t| {
            let tag = *t;
            *t += 1;
            tag
        });
        w.put(element, 3)?;
        w.put(tag, 4)?;
        if element == ID_CPE {
            w.put(0, 1)?; // common_window
            empty_channel_stream(&mut w)?;
        }
        empty_channel_stream(&mut w)?;
    }
    w.put(ID_END, 3)?;
    w.finish()
}

/// Refuses a config whose sync extension (after GASpecificConfig) signals SBR or PS, as
/// backward-compatible HE-AAC signalling does. `AudioSpecificConfig::parse` stops before it.
fn check_extensions(codec_private: &[u8]) -> Result<(), SilenceError> {
    let mut r = BitReader::new(codec_private, WHAT);
    // audioObjectType 2 (5 bits), samplingFrequencyIndex (4, + 24 when explicit),
    // channelConfiguration (4).
    r.skip(5, "audioObjectType")?;
    let index = r.u8(4, "samplingFrequencyIndex")?;
    if index == 15 {
        r.skip(24, "samplingFrequency")?;
    }
    r.skip(4, "channelConfiguration")?;
    // GASpecificConfig: frameLengthFlag, dependsOnCoreCoder (+ coreCoderDelay), extensionFlag
    // (+ extensionFlag3 for object type 2).
    r.skip(1, "frameLengthFlag")?;
    if r.flag("dependsOnCoreCoder")? {
        r.skip(14, "coreCoderDelay")?;
    }
    if r.flag("extensionFlag")? {
        r.skip(1, "extensionFlag3")?;
    }
    // Fewer than 16 bits left, or no sync word: no extension (trailing padding).
    let at = r.bit_offset();
    let Ok(sync) = r.bits(11, "syncExtensionType") else {
        return Ok(());
    };
    if sync != SYNC_EXTENSION {
        return Ok(());
    }
    let extension_type = r.u8(5, "extensionAudioObjectType")?;
    if extension_type != OBJECT_TYPE_SBR {
        return Err(SilenceError::Extension {
            what: "an extension object type other than SBR",
            bit_offset: at,
        });
    }
    if r.flag("sbrPresentFlag")? {
        return Err(SilenceError::Extension {
            what: "SBR (HE-AAC)",
            bit_offset: at,
        });
    }
    // sbrPresentFlag 0 may still be followed by a PS sync word; refuse that too.
    let ps_at = r.bit_offset();
    if r.bits(11, "syncExtensionType")
        .is_ok_and(|s| s == SYNC_EXTENSION_PS)
    {
        return Err(SilenceError::Extension {
            what: "PS (HE-AAC v2)",
            bit_offset: ps_at,
        });
    }
    Ok(())
}

/// The silent frame for a track whose Matroska CodecPrivate (AudioSpecificConfig) is
/// `codec_private`: plain AAC-LC only (see the module doc).
pub fn silent_frame(codec_private: &[u8]) -> Result<Bytes, SilenceError> {
    let config = AudioSpecificConfig::parse(codec_private)?;
    if config.object_type != OBJECT_TYPE_AAC_LC {
        return Err(SilenceError::NotAacLc {
            object_type: config.object_type,
        });
    }
    check_extensions(codec_private)?;
    let block = silent_raw_data_block(config.channels)?;
    // An owner-backed `Bytes` counts references from the start: clones never allocate.
    Ok(Bytes::from_owner(block))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One empty individual_channel_stream, 22 bits: global_gain 100 = 01100100, then
    /// ics_reserved_bit 0, window_sequence 00, window_shape 0, max_sfb 000000,
    /// predictor_data_present 0, pulse/tns/gain_control present 000.
    const ICS: &str = "01100100 0 00 0 000000 0 000";

    fn bytes_of(bits: &str) -> Vec<u8> {
        let bits: String = bits.chars().filter(|c| !c.is_whitespace()).collect();
        let mut padded = bits.clone();
        while !padded.len().is_multiple_of(8) {
            padded.push('0');
        }
        padded
            .as_bytes()
            .chunks(8)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap())
            .collect()
    }

    #[test]
    fn mono_is_one_sce() {
        // SCE 000, tag 0000, ICS, END 111: 32 bits.
        //   00000000 | 11001000 | 00000000 | 00000111
        assert_eq!(
            silent_raw_data_block(1).unwrap()[..],
            [0x00, 0xC8, 0x00, 0x07]
        );
        assert_eq!(
            bytes_of(&format!("000 0000 {ICS} 111")),
            [0x00, 0xC8, 0x00, 0x07]
        );
    }

    #[test]
    fn stereo_is_one_cpe_without_common_window() {
        // CPE 001, tag 0000, common_window 0, ICS, ICS, END 111, 1 padding bit: 56 bits.
        //   00100000 | 01100100 | 00000000 | 00000001 | 10010000 | 00000000 | 00001110
        let expected = [0x20, 0x64, 0x00, 0x01, 0x90, 0x00, 0x0E];
        assert_eq!(silent_raw_data_block(2).unwrap()[..], expected);
        assert_eq!(bytes_of(&format!("001 0000 0 {ICS} {ICS} 111")), expected);
    }

    #[test]
    fn five_one_is_sce_cpe_cpe_lfe() {
        // SCE0 (29 bits) CPE0 (52) CPE1 (52) LFE0 (29) END (3) = 165 bits + 3 padding:
        //   00000000 11001000 00000000 00000001 00000011 00100000 00000000 00001100
        //   10000000 00000000 00010001 00110010 00000000 00000000 11001000 00000000
        //   00000011 00000110 01000000 00000000 00111000
        let expected = [
            0x00, 0xC8, 0x00, 0x01, 0x03, 0x20, 0x00, 0x0C, 0x80, 0x00, 0x11, 0x32, 0x00, 0x00,
            0xC8, 0x00, 0x03, 0x06, 0x40, 0x00, 0x38,
        ];
        let bits = format!(
            "000 0000 {ICS}  001 0000 0 {ICS} {ICS}  001 0001 0 {ICS} {ICS}  011 0000 {ICS}  111"
        );
        assert_eq!(bytes_of(&bits), expected);
        assert_eq!(silent_raw_data_block(6).unwrap()[..], expected);
    }

    #[test]
    fn every_configuration_fits_and_others_are_refused() {
        let lengths: Vec<usize> = (1..=7)
            .map(|c| silent_raw_data_block(c).unwrap().len())
            .collect();
        // Bits: 32, 55, 84, 113, 136, 165, 217 → bytes rounded up.
        assert_eq!(lengths, [4, 7, 11, 15, 17, 21, 28]);
        for channels in [0, 8, 15, 255] {
            assert_eq!(
                silent_raw_data_block(channels),
                Err(MediaError::InvalidChannels { channels })
            );
        }
    }

    #[test]
    fn silent_frame_from_codec_private() {
        // voaacenc: plain 2 bytes; avenc_aac: SBR sync extension with sbrPresentFlag 0.
        for (asc, expected_len) in [
            (&[0x11, 0x88][..], 4),
            (&[0x11, 0x90, 0x56, 0xE5, 0x00][..], 7),
            (&[0x12, 0x10, 0x56, 0xE5, 0x00][..], 7),
            (&[0x11, 0xB0][..], 21),
        ] {
            let frame = silent_frame(asc).unwrap();
            assert_eq!(frame.len(), expected_len, "{asc:02x?}");
        }
        let mono = silent_frame(&[0x11, 0x88]).unwrap();
        assert_eq!(mono[..], [0x00, 0xC8, 0x00, 0x07]);
        // Clones share the buffer.
        assert_eq!(mono.clone().as_ptr(), mono.as_ptr());
    }

    #[test]
    fn he_aac_and_other_object_types_are_refused() {
        // Explicit hierarchical SBR: object type 5, 24 kHz core (index 6), stereo, extension
        // rate 48 kHz (index 3), core object type 2.
        // 00101 0110 0010 0011 00010 000 → 0x2B 0x11 0x88 0x00
        assert_eq!(
            silent_frame(&[0x2B, 0x11, 0x88, 0x00]),
            Err(SilenceError::NotAacLc { object_type: 5 })
        );
        // HE-AAC v2 (object type 29) and AAC Main (1).
        assert_eq!(
            silent_frame(&[0xEB, 0x09, 0x88, 0x00]),
            Err(SilenceError::NotAacLc { object_type: 29 })
        );
        assert_eq!(
            silent_frame(&[0x09, 0x90]),
            Err(SilenceError::NotAacLc { object_type: 1 })
        );
        // Backward-compatible SBR: AAC-LC 24 kHz stereo, then 0x2B7, type 5, sbrPresentFlag 1,
        // extension index 3 (48 kHz):
        // 00010 0110 0010 000 | 01010110111 00101 1 0011 + 000 → 13 10 56 E5 98
        assert_eq!(
            silent_frame(&[0x13, 0x10, 0x56, 0xE5, 0x98]),
            Err(SilenceError::Extension {
                what: "SBR (HE-AAC)",
                bit_offset: 16
            })
        );
        // Same with sbrPresentFlag 0 but a PS sync word 0x548 after it.
        // ... 00101 0 | 10101001000 1 + 000 → 13 10 56 E5 54 88
        assert!(matches!(
            silent_frame(&[0x13, 0x10, 0x56, 0xE5, 0x54, 0x88]),
            Err(SilenceError::Extension {
                what: "PS (HE-AAC v2)",
                ..
            })
        ));
        assert!(matches!(
            silent_frame(&[]),
            Err(SilenceError::Config(MediaError::BitstreamEnd { .. }))
        ));
    }
}
