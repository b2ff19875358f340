//! AAC AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1): parsing caps `codec_data` and writing the
//! Matroska CodecPrivate.
//!
//! Invariant: every config returned by [`AudioSpecificConfig::parse`] or
//! [`AudioSpecificConfig::aac_lc`] encodes with [`AudioSpecificConfig::to_bytes`] in at most 5
//! bytes: object type 1..=95, channel configuration 1..=7, sample rate 1..2^24, and never both an
//! escaped object type and an explicit frequency (that would need 6 bytes; no camera encoder
//! emits it).

use super::MediaError;
use super::bits::BitReader;

/// The MPEG-4 sampling frequency table, indexed by samplingFrequencyIndex.
pub const SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// Audio object type of AAC Low Complexity.
pub const OBJECT_TYPE_AAC_LC: u8 = 2;

const WHAT: &str = "AAC AudioSpecificConfig";
const ESCAPE_OBJECT_TYPE: u8 = 31;
const EXPLICIT_FREQUENCY_INDEX: u8 = 15;
const MAX_OBJECT_TYPE: u8 = 32 + 63;
const MAX_EXPLICIT_RATE: u32 = (1 << 24) - 1;

/// The AudioSpecificConfig fields the Tracks element needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioSpecificConfig {
    /// Audio object type (2 = AAC-LC, 5 = SBR, 29 = PS, ...), escape already resolved.
    pub object_type: u8,
    /// Sampling frequency in Hz (the core rate for explicitly signalled SBR/PS).
    pub sample_rate: u32,
    /// channelConfiguration: 1–6 are that many channels, 7 is 7.1 (8 channels); see
    /// [`AudioSpecificConfig::channel_count`].
    pub channels: u8,
}

fn table_index(rate: u32) -> Option<u8> {
    SAMPLE_RATES
        .iter()
        .position(|&r| r == rate)
        .and_then(|i| u8::try_from(i).ok())
}

impl AudioSpecificConfig {
    /// Parses an AudioSpecificConfig. Handles the escape object type 31 (6 more bits) and the
    /// explicit frequency (index 15, 24 bits); ignores what follows the channel configuration
    /// (GASpecificConfig, SBR/PS extensions such as avenc_aac's `11 88 56 e5 00`).
    pub fn parse(bytes: &[u8]) -> Result<Self, MediaError> {
        let mut r = BitReader::new(bytes, WHAT);
        let mut object_type = r.u8(5, "audioObjectType")?;
        let escaped = object_type == ESCAPE_OBJECT_TYPE;
        if escaped {
            object_type = 32 + r.u8(6, "audioObjectTypeExt")?;
        }
        if object_type == 0 {
            return Err(r.invalid("audioObjectType", 0, 0, "0 is the null object"));
        }
        let index_at = r.bit_offset();
        let index = r.u8(4, "samplingFrequencyIndex")?;
        let rate_at = r.bit_offset();
        let sample_rate = if index == EXPLICIT_FREQUENCY_INDEX {
            r.u32(24, "samplingFrequency")?
        } else {
            *SAMPLE_RATES.get(usize::from(index)).ok_or_else(|| {
                r.invalid(
                    "samplingFrequencyIndex",
                    index.into(),
                    index_at,
                    "13 and 14 are reserved",
                )
            })?
        };
        if sample_rate == 0 {
            return Err(r.invalid("samplingFrequency", 0, rate_at, "must not be 0"));
        }
        let channels_at = r.bit_offset();
        let channels = r.u8(4, "channelConfiguration")?;
        if !(1..=7).contains(&channels) {
            return Err(r.invalid(
                "channelConfiguration",
                channels.into(),
                channels_at,
                "only 1..=7 are supported (0 needs a program config element, 8..=15 are reserved)",
            ));
        }
        if escaped && index == EXPLICIT_FREQUENCY_INDEX {
            return Err(MediaError::UnencodableAudioConfig {
                object_type,
                sample_rate,
            });
        }
        Ok(AudioSpecificConfig {
            object_type,
            sample_rate,
            channels,
        })
    }

    /// AAC-LC at a table sample rate with channel configuration 1..=7.
    pub fn aac_lc(sample_rate: u32, channels: u8) -> Result<Self, MediaError> {
        if table_index(sample_rate).is_none() {
            return Err(MediaError::UnsupportedSampleRate { rate: sample_rate });
        }
        if !(1..=7).contains(&channels) {
            return Err(MediaError::InvalidChannels { channels });
        }
        Ok(AudioSpecificConfig {
            object_type: OBJECT_TYPE_AAC_LC,
            sample_rate,
            channels,
        })
    }

    /// Number of audio channels (channelConfiguration 7 is 7.1, i.e. 8 channels).
    pub fn channel_count(&self) -> u8 {
        if self.channels == 7 { 8 } else { self.channels }
    }

    /// Encodes the config: 2 bytes for a table rate (3 with an escaped object type), 5 for an
    /// explicit frequency; GASpecificConfig flags all 0 (1024-sample frames, no core coder, no
    /// extension). Fails for configs outside the module invariant (only reachable by building
    /// the struct by hand with out-of-range fields).
    pub fn try_to_bytes(&self) -> Result<heapless::Vec<u8, 5>, MediaError> {
        let unencodable = || MediaError::UnencodableAudioConfig {
            object_type: self.object_type,
            sample_rate: self.sample_rate,
        };
        if !(1..=7).contains(&self.channels) {
            return Err(MediaError::InvalidChannels {
                channels: self.channels,
            });
        }
        if self.object_type == 0 || self.object_type > MAX_OBJECT_TYPE {
            return Err(unencodable());
        }
        let index = table_index(self.sample_rate);
        if index.is_none() && (self.sample_rate == 0 || self.sample_rate > MAX_EXPLICIT_RATE) {
            return Err(MediaError::UnsupportedSampleRate {
                rate: self.sample_rate,
            });
        }
        if index.is_none() && self.object_type >= ESCAPE_OBJECT_TYPE {
            return Err(unencodable());
        }
        // Accumulate MSB-first into a u64: at most 5 + 6 + 4 + 24 + 4 + 3 = 46 bits.
        let mut bits: u64 = 0;
        let mut len: u32 = 0;
        let mut put = |value: u64, width: u32| {
            bits = (bits << width) | (value & ((1 << width) - 1));
            len += width;
        };
        if self.object_type >= ESCAPE_OBJECT_TYPE {
            put(ESCAPE_OBJECT_TYPE.into(), 5);
            put(u64::from(self.object_type - 32), 6);
        } else {
            put(self.object_type.into(), 5);
        }
        match index {
            Some(i) => put(i.into(), 4),
            None => {
                put(EXPLICIT_FREQUENCY_INDEX.into(), 4);
                put(self.sample_rate.into(), 24);
            }
        }
        put(self.channels.into(), 4);
        put(0, 3); // frameLengthFlag, dependsOnCoreCoder, extensionFlag
        let byte_len = len.div_ceil(8);
        let padded = bits << (byte_len * 8 - len);
        let mut out = heapless::Vec::new();
        for i in (0..byte_len).rev() {
            out.push((padded >> (i * 8)) as u8)
                .map_err(|_| unencodable())?;
        }
        Ok(out)
    }

    /// Encodes the config as [`AudioSpecificConfig::try_to_bytes`] does. Every config from
    /// [`AudioSpecificConfig::parse`] / [`AudioSpecificConfig::aac_lc`] encodes; for a hand-built
    /// config outside the module invariant the result is empty (use `try_to_bytes` for the reason).
    pub fn to_bytes(&self) -> heapless::Vec<u8, 5> {
        self.try_to_bytes().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rates_round_trip() {
        for &rate in SAMPLE_RATES
            .iter()
            .filter(|&&r| (8000..=48000).contains(&r))
        {
            for channels in 1..=2 {
                let config = AudioSpecificConfig::aac_lc(rate, channels).unwrap();
                let bytes = config.to_bytes();
                assert_eq!(bytes.len(), 2, "{rate} Hz × {channels}");
                assert_eq!(AudioSpecificConfig::parse(&bytes).unwrap(), config);
                let index = SAMPLE_RATES.iter().position(|&r| r == rate).unwrap() as u16;
                let expected = (2u16 << 11) | (index << 7) | (u16::from(channels) << 3);
                assert_eq!(bytes[..], expected.to_be_bytes());
            }
        }
    }

    #[test]
    fn parses_gstreamer_encoder_codec_data() {
        // avenc_aac appends an SBR sync extension; voaacenc writes the plain 2 bytes.
        let cases: [(&[u8], u32, u8); 6] = [
            (&[0x11, 0x88, 0x56, 0xe5, 0x00], 48000, 1),
            (&[0x11, 0x90, 0x56, 0xe5, 0x00], 48000, 2),
            (&[0x12, 0x10, 0x56, 0xe5, 0x00], 44100, 2),
            (&[0x15, 0x88, 0x56, 0xe5, 0x00], 8000, 1),
            (&[0x11, 0x88], 48000, 1),
            (&[0x15, 0x90], 8000, 2),
        ];
        for (bytes, rate, channels) in cases {
            let config = AudioSpecificConfig::parse(bytes).unwrap();
            assert_eq!(
                config,
                AudioSpecificConfig {
                    object_type: 2,
                    sample_rate: rate,
                    channels
                },
                "{bytes:02x?}"
            );
            assert_eq!(config.to_bytes()[..], bytes[..2]);
        }
    }

    #[test]
    fn explicit_frequency_and_escape_object_type() {
        let config = AudioSpecificConfig {
            object_type: 2,
            sample_rate: 50000,
            channels: 2,
        };
        let bytes = config.to_bytes();
        // 00010 1111 000000001100001101010000 0010 000
        assert_eq!(bytes[..], [0x17, 0x80, 0x61, 0xa8, 0x10]);
        assert_eq!(AudioSpecificConfig::parse(&bytes).unwrap(), config);

        // Object type 42 (USAC) through the escape: 11111 001010 0011 0010 000 + padding.
        let usac = AudioSpecificConfig {
            object_type: 42,
            sample_rate: 48000,
            channels: 2,
        };
        let bytes = usac.to_bytes();
        assert_eq!(bytes[..], [0xf9, 0x46, 0x40]);
        assert_eq!(AudioSpecificConfig::parse(&bytes).unwrap(), usac);
        // Escape and explicit 50 kHz together need 6 bytes: valid, but outside what this crate writes.
        assert_eq!(
            AudioSpecificConfig::parse(&[0xf9, 0x5e, 0x01, 0x86, 0xa0, 0x40]),
            Err(MediaError::UnencodableAudioConfig {
                object_type: 42,
                sample_rate: 50000
            })
        );
    }

    #[test]
    fn bad_inputs_error() {
        assert!(matches!(
            AudioSpecificConfig::parse(&[]),
            Err(MediaError::BitstreamEnd { .. })
        ));
        assert!(matches!(
            AudioSpecificConfig::parse(&[0x11]),
            Err(MediaError::BitstreamEnd { .. })
        ));
        assert!(matches!(
            AudioSpecificConfig::parse(&[0x00, 0x10]),
            Err(MediaError::InvalidField {
                field: "audioObjectType",
                ..
            })
        ));
        assert!(matches!(
            AudioSpecificConfig::parse(&[0x16, 0x90]),
            Err(MediaError::InvalidField {
                field: "samplingFrequencyIndex",
                value: 13,
                bit_offset: 5,
                ..
            })
        ));
        assert!(matches!(
            AudioSpecificConfig::parse(&[0x11, 0x80]),
            Err(MediaError::InvalidField {
                field: "channelConfiguration",
                value: 0,
                bit_offset: 9,
                ..
            })
        ));
        assert!(matches!(
            AudioSpecificConfig::parse(&[0x11, 0xc0]),
            Err(MediaError::InvalidField {
                field: "channelConfiguration",
                value: 8,
                ..
            })
        ));
        assert!(matches!(
            AudioSpecificConfig::parse(&[0x17, 0x80, 0x00, 0x00, 0x10]),
            Err(MediaError::InvalidField {
                field: "samplingFrequency",
                value: 0,
                ..
            })
        ));
        assert_eq!(
            AudioSpecificConfig::aac_lc(50000, 2),
            Err(MediaError::UnsupportedSampleRate { rate: 50000 })
        );
        assert_eq!(
            AudioSpecificConfig::aac_lc(48000, 0),
            Err(MediaError::InvalidChannels { channels: 0 })
        );
        assert_eq!(
            AudioSpecificConfig::aac_lc(48000, 8),
            Err(MediaError::InvalidChannels { channels: 8 })
        );
        assert_eq!(
            AudioSpecificConfig::aac_lc(48000, 7)
                .unwrap()
                .channel_count(),
            8
        );
        let hand_built = AudioSpecificConfig {
            object_type: 40,
            sample_rate: 50000,
            channels: 2,
        };
        assert!(matches!(
            hand_built.try_to_bytes(),
            Err(MediaError::UnencodableAudioConfig { .. })
        ));
        assert!(hand_built.to_bytes().is_empty());
        let zero_rate = AudioSpecificConfig {
            object_type: 2,
            sample_rate: 0,
            channels: 2,
        };
        assert_eq!(
            zero_rate.try_to_bytes(),
            Err(MediaError::UnsupportedSampleRate { rate: 0 })
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8)) {
            if let Ok(config) = AudioSpecificConfig::parse(&bytes) {
                let encoded = config.try_to_bytes().unwrap();
                proptest::prop_assert_eq!(AudioSpecificConfig::parse(&encoded).unwrap(), config);
            }
        }
    }
}
