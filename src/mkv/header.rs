//! The stream header KVS expects at the start of every PutMedia body: EBML header, Segment of
//! unknown size, SegmentInfo and Tracks (reference: KVS producer notes §3.2–3.5).
//!
//! Invariants: the Segment size is the 1-byte unknown marker (0xFF, as KVS's producer writes
//! it); TimecodeScale is 1 ms; TrackNumber and TrackUID are the track index + 1; no SeekHead,
//! Cues, Void or Duration is written.

use crate::mkv::ebml::{EbmlError, EbmlWriter, id};

/// Nanoseconds per timecode unit (1 ms).
pub const TIMECODE_SCALE_NS: u64 = 1_000_000;

/// What the Tracks element says about one track.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackHeader<'a> {
    /// Matroska CodecID (`V_MPEG4/ISO/AVC`, `V_MPEGH/ISO/HEVC`, `A_AAC`).
    pub codec_id: &'a str,
    /// Track name; empty writes none.
    pub name: &'a str,
    /// CodecPrivate; empty writes none.
    pub codec_private: &'a [u8],
    pub kind: TrackKind,
}

/// Track type and its Video / Audio element (a video size of 0 writes no Video element).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrackKind {
    Video { width: u32, height: u32 },
    Audio { sample_rate: f64, channels: u8 },
}

/// SegmentInfo strings and the segment UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader<'a> {
    pub segment_uid: [u8; 16],
    pub title: &'a str,
    pub muxing_app: &'a str,
    pub writing_app: &'a str,
}

/// Appends the whole stream header to `buf`.
pub fn write_stream_header(
    buf: &mut Vec<u8>,
    segment: &SegmentHeader<'_>,
    tracks: &[TrackHeader<'_>],
) -> Result<(), EbmlError> {
    let mut w = EbmlWriter::new(buf);
    w.begin(id::EBML)?;
    w.uint(id::EBML_VERSION, 1)?;
    w.uint(id::EBML_READ_VERSION, 1)?;
    w.uint(id::EBML_MAX_ID_LENGTH, 4)?;
    w.uint(id::EBML_MAX_SIZE_LENGTH, 8)?;
    w.string(id::DOC_TYPE, "matroska")?;
    w.uint(id::DOC_TYPE_VERSION, 2)?;
    w.uint(id::DOC_TYPE_READ_VERSION, 2)?;
    w.end()?;

    w.begin_unknown(id::SEGMENT);

    w.begin(id::INFO)?;
    w.binary(id::SEGMENT_UID, &segment.segment_uid)?;
    w.uint(id::TIMECODE_SCALE, TIMECODE_SCALE_NS)?;
    w.string(id::TITLE, segment.title)?;
    w.string(id::MUXING_APP, segment.muxing_app)?;
    w.string(id::WRITING_APP, segment.writing_app)?;
    w.end()?;

    w.begin(id::TRACKS)?;
    for (index, track) in tracks.iter().enumerate() {
        let number = index as u64 + 1;
        w.begin(id::TRACK_ENTRY)?;
        w.uint(id::TRACK_NUMBER, number)?;
        w.uint(id::TRACK_UID, number)?;
        let track_type = match track.kind {
            TrackKind::Video { .. } => 1,
            TrackKind::Audio { .. } => 2,
        };
        w.uint(id::TRACK_TYPE, track_type)?;
        if !track.name.is_empty() {
            w.string(id::NAME, track.name)?;
        }
        w.string(id::CODEC_ID, track.codec_id)?;
        if !track.codec_private.is_empty() {
            w.binary(id::CODEC_PRIVATE, track.codec_private)?;
        }
        match track.kind {
            TrackKind::Video { width, height } => {
                if width != 0 && height != 0 {
                    w.begin(id::VIDEO)?;
                    w.uint(id::PIXEL_WIDTH, width.into())?;
                    w.uint(id::PIXEL_HEIGHT, height.into())?;
                    w.end()?;
                }
            }
            TrackKind::Audio {
                sample_rate,
                channels,
            } => {
                w.begin(id::AUDIO)?;
                w.float(id::SAMPLING_FREQUENCY, sample_rate)?;
                w.uint(id::CHANNELS, channels.into())?;
                w.end()?;
            }
        }
        w.end()?;
    }
    w.end()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_by_hand() {
        let mut buf = Vec::new();
        let segment = SegmentHeader {
            segment_uid: [0x11; 16],
            title: "t",
            muxing_app: "m",
            writing_app: "w",
        };
        let tracks = [
            TrackHeader {
                codec_id: "V_MPEG4/ISO/AVC",
                name: "v",
                codec_private: &[0x01, 0x64],
                kind: TrackKind::Video {
                    width: 320,
                    height: 240,
                },
            },
            TrackHeader {
                codec_id: "A_AAC",
                name: "",
                codec_private: &[0x11, 0x90],
                kind: TrackKind::Audio {
                    sample_rate: 48_000.0,
                    channels: 2,
                },
            },
        ];
        write_stream_header(&mut buf, &segment, &tracks).unwrap();

        #[rustfmt::skip]
        let mut expected: Vec<u8> = vec![
            0x1A, 0x45, 0xDF, 0xA3, 0x80 | 35,            // EBML, 35 bytes
            0x42, 0x86, 0x81, 0x01,                       // EBMLVersion 1
            0x42, 0xF7, 0x81, 0x01,                       // EBMLReadVersion 1
            0x42, 0xF2, 0x81, 0x04,                       // EBMLMaxIDLength 4
            0x42, 0xF3, 0x81, 0x08,                       // EBMLMaxSizeLength 8
            0x42, 0x82, 0x88, b'm', b'a', b't', b'r', b'o', b's', b'k', b'a',
            0x42, 0x87, 0x81, 0x02,                       // DocTypeVersion 2
            0x42, 0x85, 0x81, 0x02,                       // DocTypeReadVersion 2
            0x18, 0x53, 0x80, 0x67, 0xFF,                 // Segment, unknown size
            0x15, 0x49, 0xA9, 0x66, 0x80 | 38,            // Info, 38 bytes
            0x73, 0xA4, 0x90,                             // SegmentUID, 16 bytes
        ];
        expected.extend_from_slice(&[0x11; 16]);
        #[rustfmt::skip]
        expected.extend_from_slice(&[
            0x2A, 0xD7, 0xB1, 0x83, 0x0F, 0x42, 0x40,     // TimecodeScale 1 000 000
            0x7B, 0xA9, 0x81, b't',                       // Title
            0x4D, 0x80, 0x81, b'm',                       // MuxingApp
            0x57, 0x41, 0x81, b'w',                       // WritingApp
            0x16, 0x54, 0xAE, 0x6B, 0x80 | 86,            // Tracks, 86 bytes
            0xAE, 0x80 | 45,                              // TrackEntry, 45 bytes
            0xD7, 0x81, 0x01,                             // TrackNumber 1
            0x73, 0xC5, 0x81, 0x01,                       // TrackUID 1
            0x83, 0x81, 0x01,                             // TrackType video
            0x53, 0x6E, 0x81, b'v',                       // Name
            0x86, 0x8F,                                   // CodecID, 15 bytes
        ]);
        expected.extend_from_slice(b"V_MPEG4/ISO/AVC");
        #[rustfmt::skip]
        expected.extend_from_slice(&[
            0x63, 0xA2, 0x82, 0x01, 0x64,                 // CodecPrivate
            0xE0, 0x87,                                   // Video, 7 bytes
            0xB0, 0x82, 0x01, 0x40,                       // PixelWidth 320
            0xBA, 0x81, 0xF0,                             // PixelHeight 240
            0xAE, 0x80 | 37,                              // TrackEntry, 37 bytes
            0xD7, 0x81, 0x02,                             // TrackNumber 2
            0x73, 0xC5, 0x81, 0x02,                       // TrackUID 2
            0x83, 0x81, 0x02,                             // TrackType audio
            0x86, 0x85, b'A', b'_', b'A', b'A', b'C',     // CodecID
            0x63, 0xA2, 0x82, 0x11, 0x90,                 // CodecPrivate
            0xE1, 0x8D,                                   // Audio, 13 bytes
            0xB5, 0x88, 0x40, 0xE7, 0x70, 0, 0, 0, 0, 0,  // SamplingFrequency 48000.0
            0x9F, 0x81, 0x02,                             // Channels 2
        ]);
        assert_eq!(buf, expected);
    }
}
