//! Limits the configuration is checked against: service quotas, MKV tag limits and what each
//! encoder can do. Kept apart from the rules so other modules (mkv tags, capture's encoder
//! choice) can use the same numbers.

use super::schema::Encoder;

/// Shortest fragment PutMedia accepts, ms (KVS quota table: fragments of 1–20 s).
pub const FRAGMENT_DURATION_MIN_MS: u32 = 1000;
/// Longest fragment PutMedia accepts, ms.
pub const FRAGMENT_DURATION_MAX_MS: u32 = 20_000;
/// Longest `fragment.send_delay_ms`: a frame held longer would hold back its fragment's ACK
/// and the live edge for no further saving (a wake-up per second costs nothing measurable).
pub const SEND_DELAY_MAX_MS: u32 = 1000;
/// Persistent fragment tags per camera: the service takes at most 10 tags per fragment
/// (ACK error 4009 beyond), and every persistent tag is written on every fragment.
pub const MAX_FRAGMENT_TAGS: usize = 10;
/// Longest fragment tag name, bytes (the producer SDK's MKV tag limit).
pub const MAX_FRAGMENT_TAG_NAME_BYTES: usize = 128;
/// Longest fragment tag value, bytes.
pub const MAX_FRAGMENT_TAG_VALUE_BYTES: usize = 256;
/// Fragment tag names may not start with this: KVS reserves it for its own tags
/// (`AWS_KINESISVIDEO_*`), and the producer SDK rejects such names.
pub const RESERVED_TAG_PREFIX: &str = "AWS";
/// Tags on one Kinesis video stream (TagStream).
pub const MAX_STREAM_TAGS: usize = 50;
/// Longest stream tag key, characters.
pub const MAX_STREAM_TAG_KEY_CHARS: usize = 128;
/// Longest stream tag value, characters: the KVS API's `Tags` map (and AWS tagging generally)
/// allows 256; the producer SDK's own check (1024) is looser than the service.
pub const MAX_STREAM_TAG_VALUE_CHARS: usize = 256;
/// Longest Kinesis video stream name.
pub const MAX_STREAM_NAME_CHARS: usize = 256;
/// Longest Kinesis data stream name.
pub const MAX_DATA_STREAM_NAME_CHARS: usize = 128;
/// Longest camera name (chosen: it appears in paths, metric labels and partition keys).
pub const MAX_CAMERA_NAME_CHARS: usize = 64;
/// Longest device id (KVS `DeviceName` allows 128).
pub const MAX_DEVICE_ID_CHARS: usize = 128;
/// Longest retention KVS accepts, hours (10 years).
pub const MAX_RETENTION_HOURS: u32 = 87_600;
/// Longest KMS key id KVS accepts.
pub const MAX_KMS_KEY_ID_CHARS: usize = 2048;
/// Longest partition key Kinesis Data Streams accepts, characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// Largest PutRecords request Kinesis Data Streams accepts, bytes (10 MiB).
pub const MAX_REQUEST_BYTES: u32 = 10 * 1024 * 1024;
/// Smallest PutRecords request budget we accept: below this a typical aggregated record
/// would not fit.
pub const MIN_REQUEST_BYTES: u32 = 1024;
/// Length `/etc/machine-id` has (32 hex digits): used to bound partition keys when
/// `service.device_id` is not set.
pub const MACHINE_ID_CHARS: usize = 32;
/// AAC sampling rates from 8 kHz to 48 kHz (ISO/IEC 14496-3 sampling frequency index table);
/// the 64–96 kHz entries are left out: no camera microphone needs them.
pub const AAC_SAMPLE_RATES: [u32; 9] = [
    8000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000,
];
/// Video bitrate bounds, kbit/s: below 100 even QVGA falls apart; 50 Mbit/s is far beyond
/// what a camera uplink carries and half PutMedia's 12.5 MB/s per stream.
pub const VIDEO_BITRATE_KBPS: (u32, u32) = (100, 50_000);
/// AAC-LC bitrate bounds, kbit/s.
pub const AUDIO_BITRATE_KBPS: (u32, u32) = (8, 320);
/// Frame rate bounds, frames per second.
pub const FRAMERATE: (u32, u32) = (1, 120);
/// Frame side bounds, pixels (`kvssink` caps demand ≥ 16; 4096 is the widest H.264 level-5.1 frame).
pub const FRAME_SIDE: (u32, u32) = (16, 4096);

/// What an encoder can produce. Sizes are counted in 16×16 macroblocks like the H.264 level
/// tables (ITU-T H.264 Table A-1): `max_frame_macroblocks` is MaxFS, `max_macroblocks_per_s` is
/// MaxMBPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderLimits {
    /// The encoder the limits describe.
    pub encoder: Encoder,
    /// Widest frame, pixels.
    pub max_width: u32,
    /// Tallest frame, pixels.
    pub max_height: u32,
    /// Largest frame, macroblocks.
    pub max_frame_macroblocks: u32,
    /// Highest macroblock throughput, macroblocks per second.
    pub max_macroblocks_per_s: u64,
    /// Highest frame rate.
    pub max_framerate: u32,
    /// Where the numbers come from, for error messages.
    pub basis: &'static str,
}

/// x264 has no hard limit of its own; we hold it to H.264 level 5.1 (MaxFS 36864 = 4096×2304,
/// MaxMBPS 983040 = 3840×2160 at 30 fps or 1080p at 120 fps), the highest level common hardware
/// decoders and browsers play back.
pub const X264_LIMITS: EncoderLimits = EncoderLimits {
    encoder: Encoder::X264,
    max_width: 4096,
    max_height: 4096,
    max_frame_macroblocks: 36_864,
    max_macroblocks_per_s: 983_040,
    max_framerate: 120,
    basis: "x264 held to H.264 level 5.1",
};

/// `v4l2h264enc` on the Raspberry Pi (bcm2835-codec): frames up to 1920 on either side and at
/// most level 4.2's MaxFS (8704 macroblocks: 1920×1080 fits, 1920×1920 does not); throughput is
/// held to level 4.1's MaxMBPS (245760 = 1080p at 30 fps), which is what the block sustains in
/// real time (720p60 fits, 1080p60 does not). Jetson's `nvv4l2h264enc` can do more; the table
/// describes the most constrained supported board.
pub const HARDWARE_LIMITS: EncoderLimits = EncoderLimits {
    encoder: Encoder::Hardware,
    max_width: 1920,
    max_height: 1920,
    max_frame_macroblocks: 8704,
    max_macroblocks_per_s: 245_760,
    max_framerate: 120,
    basis: "Raspberry Pi v4l2h264enc, H.264 level 4.2 frame size at 1080p30 throughput",
};

/// Passthrough re-encodes nothing: only the general bounds apply (the camera decides what it
/// can deliver; capture checks the device's modes at start).
pub const PASSTHROUGH_LIMITS: EncoderLimits = EncoderLimits {
    encoder: Encoder::Passthrough,
    max_width: FRAME_SIDE.1,
    max_height: FRAME_SIDE.1,
    max_frame_macroblocks: u32::MAX,
    max_macroblocks_per_s: u64::MAX,
    max_framerate: FRAMERATE.1,
    basis: "passthrough",
};

impl EncoderLimits {
    /// The limits a configuration using `encoder` is checked against; `auto` is checked against
    /// x264, the fallback that is always there.
    pub fn for_encoder(encoder: Encoder) -> &'static EncoderLimits {
        match encoder {
            Encoder::Auto | Encoder::X264 => &X264_LIMITS,
            Encoder::Hardware => &HARDWARE_LIMITS,
            Encoder::Passthrough => &PASSTHROUGH_LIMITS,
        }
    }

    /// Checks a frame size and rate; the error says which limit is exceeded.
    pub fn check(&self, width: u32, height: u32, framerate: u32) -> Result<(), LimitExceeded> {
        if width > self.max_width || height > self.max_height {
            return Err(LimitExceeded::Size {
                max_width: self.max_width,
                max_height: self.max_height,
            });
        }
        let frame = frame_macroblocks(width, height);
        if frame > u64::from(self.max_frame_macroblocks) {
            return Err(LimitExceeded::FrameMacroblocks {
                frame,
                max: self.max_frame_macroblocks,
            });
        }
        if framerate > self.max_framerate {
            return Err(LimitExceeded::Framerate {
                max: self.max_framerate,
            });
        }
        let rate = frame * u64::from(framerate);
        if rate > self.max_macroblocks_per_s {
            return Err(LimitExceeded::MacroblockRate {
                rate,
                max: self.max_macroblocks_per_s,
            });
        }
        Ok(())
    }
}

/// Macroblocks (16×16) covering a frame.
pub fn frame_macroblocks(width: u32, height: u32) -> u64 {
    u64::from(width.div_ceil(16)) * u64::from(height.div_ceil(16))
}

/// Which encoder limit a video setting exceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// A side is longer than the encoder accepts.
    #[error("frame larger than {max_width}×{max_height}")]
    Size {
        /// Widest frame.
        max_width: u32,
        /// Tallest frame.
        max_height: u32,
    },
    /// The frame has more macroblocks than the encoder's level allows.
    #[error("{frame} macroblocks per frame, more than {max}")]
    FrameMacroblocks {
        /// Macroblocks in the configured frame.
        frame: u64,
        /// The limit.
        max: u32,
    },
    /// The frame rate is above the encoder's maximum.
    #[error("more than {max} frames per second")]
    Framerate {
        /// The limit.
        max: u32,
    },
    /// Frame size × rate is above the encoder's throughput.
    #[error("{rate} macroblocks per second, more than {max}")]
    MacroblockRate {
        /// Macroblocks per second configured.
        rate: u64,
        /// The limit.
        max: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x264_takes_4k30_and_1080p120_but_not_4096x2304_at_30() {
        assert_eq!(X264_LIMITS.check(3840, 2160, 30), Ok(()));
        assert_eq!(X264_LIMITS.check(1920, 1080, 120), Ok(()));
        assert_eq!(X264_LIMITS.check(4096, 2304, 25), Ok(()));
        assert_eq!(
            X264_LIMITS.check(4096, 2304, 30),
            Err(LimitExceeded::MacroblockRate {
                rate: 36_864 * 30,
                max: 983_040
            })
        );
        assert!(matches!(
            X264_LIMITS.check(4096, 4096, 1),
            Err(LimitExceeded::FrameMacroblocks { .. })
        ));
    }

    #[test]
    fn hardware_takes_1080p30_and_720p60_but_not_1080p60() {
        assert_eq!(HARDWARE_LIMITS.check(1920, 1080, 30), Ok(()));
        assert_eq!(HARDWARE_LIMITS.check(1080, 1920, 30), Ok(()));
        assert_eq!(HARDWARE_LIMITS.check(1280, 720, 60), Ok(()));
        assert!(matches!(
            HARDWARE_LIMITS.check(1920, 1080, 60),
            Err(LimitExceeded::MacroblockRate { .. })
        ));
        assert!(matches!(
            HARDWARE_LIMITS.check(2560, 1440, 10),
            Err(LimitExceeded::Size { .. })
        ));
        assert!(matches!(
            HARDWARE_LIMITS.check(1920, 1920, 10),
            Err(LimitExceeded::FrameMacroblocks { .. })
        ));
    }

    #[test]
    fn macroblocks_round_partial_blocks_up() {
        assert_eq!(frame_macroblocks(1920, 1080), 120 * 68);
        assert_eq!(frame_macroblocks(16, 16), 1);
        assert_eq!(frame_macroblocks(18, 16), 2);
    }
}
