//! Unit tests of the fragment muxer: byte layout, fragmenting, interleaving, tags, bad input.

use super::*;
use crate::mkv::tags::{END_OF_FRAGMENT, Event, IMAGE_GENERATION, NOTIFICATION};
use std::io;

const MS: u64 = 1_000_000;
/// 2023-11-14T22:13:20Z, in ns.
const T0: u64 = 1_700_000_000_000 * MS;

/// SPS and PPS of a 320x240 x264 stream (High profile, level 2.0).
const SPS: [u8; 29] = [
    0x67, 0x64, 0x00, 0x14, 0xAC, 0xD9, 0x41, 0x41, 0xFB, 0x01, 0x6A, 0x0C, 0x0C, 0x0D, 0x4A, 0x00,
    0x00, 0x03, 0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x79, 0x1E, 0x28, 0x53, 0x2C,
];
const PPS: [u8; 5] = [0x68, 0xEB, 0xEC, 0xB2, 0x2C];
const IDR: [u8; 5] = [0x65, 0x88, 0x84, 0x21, 0xA0];
const P_SLICE: [u8; 4] = [0x41, 0x9A, 0x02, 0x03];

fn annexb(nals: &[&[u8]]) -> Bytes {
    let mut v = Vec::new();
    for (i, nal) in nals.iter().enumerate() {
        // Mix 4- and 3-byte start codes.
        v.extend_from_slice(if i.is_multiple_of(2) {
            &[0, 0, 0, 1]
        } else {
            &[0, 0, 1]
        });
        v.extend_from_slice(nal);
    }
    Bytes::from(v)
}

fn length_prefixed(nals: &[&[u8]]) -> Bytes {
    let mut v = Vec::new();
    for nal in nals {
        v.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        v.extend_from_slice(nal);
    }
    Bytes::from(v)
}

fn key_frame(pts_ms: u64, dts_ms: u64) -> Frame {
    Frame {
        track: 0,
        pts_ns: T0 + pts_ms * MS,
        dts_ns: T0 + dts_ms * MS,
        duration_ns: 0,
        key: true,
        data: annexb(&[&SPS, &PPS, &IDR]),
    }
}

fn p_frame(pts_ms: u64, dts_ms: u64) -> Frame {
    Frame {
        track: 0,
        pts_ns: T0 + pts_ms * MS,
        dts_ns: T0 + dts_ms * MS,
        duration_ns: 0,
        key: false,
        data: annexb(&[&P_SLICE]),
    }
}

fn video(pts_ms: u64, dts_ms: u64, key: bool) -> Frame {
    if key {
        key_frame(pts_ms, dts_ms)
    } else {
        p_frame(pts_ms, dts_ms)
    }
}

fn audio_at_ns(pts_ns: u64) -> Frame {
    Frame {
        track: 1,
        pts_ns,
        dts_ns: pts_ns,
        duration_ns: 21_333_333,
        key: true,
        data: Bytes::from_static(&[0x21, 0x10, 0x04, 0x60, 0x8C, 0x1C]),
    }
}

fn audio(pts_ms: u64) -> Frame {
    audio_at_ns(T0 + pts_ms * MS)
}

/// Everything a sink sees, in order.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Header(Vec<u8>),
    Start(FragmentStart),
    Write(Vec<u8>),
    Payload(Vec<u8>),
    End(FragmentEnd),
    StreamEnd(Vec<u8>),
}

#[derive(Default)]
struct RecordingSink {
    calls: Vec<Call>,
    /// Payload `Bytes` as given, to check they are not copies.
    payloads: Vec<Bytes>,
}

impl RecordingSink {
    /// The whole byte stream, as an uploader would send it.
    fn stream(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for call in &self.calls {
            match call {
                Call::Header(b) | Call::Write(b) | Call::Payload(b) | Call::StreamEnd(b) => {
                    out.extend_from_slice(b)
                }
                Call::Start(_) | Call::End(_) => {}
            }
        }
        out
    }

    fn starts(&self) -> Vec<FragmentStart> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Start(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    fn ends(&self) -> Vec<FragmentEnd> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::End(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    fn parsed(&self) -> Parsed {
        parse(&self.stream())
    }
}

impl MuxSink for RecordingSink {
    fn stream_header(&mut self, header: &Bytes) -> io::Result<()> {
        self.calls.push(Call::Header(header.to_vec()));
        Ok(())
    }
    fn fragment_start(&mut self, start: &FragmentStart) -> io::Result<()> {
        self.calls.push(Call::Start(start.clone()));
        Ok(())
    }
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.calls.push(Call::Write(bytes.to_vec()));
        Ok(())
    }
    fn write_payload(&mut self, payload: &Bytes) -> io::Result<()> {
        self.calls.push(Call::Payload(payload.to_vec()));
        self.payloads.push(payload.clone());
        Ok(())
    }
    fn fragment_end(&mut self, end: &FragmentEnd) -> io::Result<()> {
        self.calls.push(Call::End(end.clone()));
        Ok(())
    }
    fn stream_end(&mut self, trailer: &[u8]) -> io::Result<()> {
        self.calls.push(Call::StreamEnd(trailer.to_vec()));
        Ok(())
    }
}

// ---- A small EBML reader for checking structure -------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct ParsedTrack {
    number: u64,
    uid: u64,
    track_type: u64,
    name: String,
    codec_id: String,
    codec_private: Vec<u8>,
    width: u64,
    height: u64,
    sample_rate: f64,
    channels: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct Block {
    track: u8,
    offset: i16,
    flags: u8,
    payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
enum Level1 {
    /// One Tags element: per Tag, its SimpleTags.
    Tags(Vec<Vec<(String, String)>>),
    Cluster {
        timecode: u64,
        blocks: Vec<Block>,
    },
}

#[derive(Debug, Default)]
struct Parsed {
    doc_type: String,
    timecode_scale: u64,
    segment_uid: Vec<u8>,
    tracks: Vec<ParsedTrack>,
    items: Vec<Level1>,
}

impl Parsed {
    fn clusters(&self) -> Vec<(u64, &Vec<Block>)> {
        self.items
            .iter()
            .filter_map(|i| match i {
                Level1::Cluster { timecode, blocks } => Some((*timecode, blocks)),
                _ => None,
            })
            .collect()
    }

    /// Tag names in stream order, with the index of the cluster they precede.
    fn tag_names(&self) -> Vec<(usize, String)> {
        let mut clusters_seen = 0;
        let mut out = Vec::new();
        for item in &self.items {
            match item {
                Level1::Cluster { .. } => clusters_seen += 1,
                Level1::Tags(tags) => {
                    for tag in tags {
                        for (name, _) in tag {
                            out.push((clusters_seen, name.clone()));
                        }
                    }
                }
            }
        }
        out
    }
}

fn read_vint(buf: &[u8], pos: &mut usize, keep_marker: bool) -> Option<u64> {
    let first = *buf.get(*pos)?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 {
        return None;
    }
    let mut value = if keep_marker {
        u64::from(first)
    } else {
        u64::from(first) & (0xFF >> len)
    };
    let all_ones = value == (0xFF >> len) && !keep_marker;
    let mut unknown = all_ones;
    for i in 1..len {
        let b = *buf.get(*pos + i)?;
        unknown &= b == 0xFF;
        value = (value << 8) | u64::from(b);
    }
    *pos += len;
    if unknown && !keep_marker {
        Some(u64::MAX)
    } else {
        Some(value)
    }
}

fn uint(data: &[u8]) -> u64 {
    data.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

/// Calls `f(id, data)` for each child element of `buf`.
fn children(buf: &[u8], mut f: impl FnMut(u64, &[u8])) {
    let mut pos = 0;
    while pos < buf.len() {
        let id = read_vint(buf, &mut pos, true).expect("id");
        let size = read_vint(buf, &mut pos, false).expect("size") as usize;
        let data = &buf[pos..pos + size];
        f(id, data);
        pos += size;
    }
}

fn parse_tracks(data: &[u8]) -> Vec<ParsedTrack> {
    let mut tracks = Vec::new();
    children(data, |id, entry| {
        assert_eq!(id, 0xAE, "only TrackEntry in Tracks");
        let mut t = ParsedTrack {
            number: 0,
            uid: 0,
            track_type: 0,
            name: String::new(),
            codec_id: String::new(),
            codec_private: Vec::new(),
            width: 0,
            height: 0,
            sample_rate: 0.0,
            channels: 0,
        };
        children(entry, |id, d| match id {
            0xD7 => t.number = uint(d),
            0x73C5 => t.uid = uint(d),
            0x83 => t.track_type = uint(d),
            0x536E => t.name = String::from_utf8(d.to_vec()).unwrap(),
            0x86 => t.codec_id = String::from_utf8(d.to_vec()).unwrap(),
            0x63A2 => t.codec_private = d.to_vec(),
            0xE0 => children(d, |id, d| match id {
                0xB0 => t.width = uint(d),
                0xBA => t.height = uint(d),
                other => panic!("unexpected Video child {other:#X}"),
            }),
            0xE1 => children(d, |id, d| match id {
                0xB5 => t.sample_rate = f64::from_be_bytes(d.try_into().unwrap()),
                0x9F => t.channels = uint(d),
                other => panic!("unexpected Audio child {other:#X}"),
            }),
            other => panic!("unexpected TrackEntry child {other:#X}"),
        });
        tracks.push(t);
    });
    tracks
}

fn parse_tags(data: &[u8]) -> Vec<Vec<(String, String)>> {
    let mut tags = Vec::new();
    children(data, |id, tag| {
        assert_eq!(id, 0x7373, "only Tag in Tags");
        let mut simple = Vec::new();
        children(tag, |id, st| {
            assert_eq!(id, 0x67C8, "only SimpleTag in Tag");
            let (mut name, mut value) = (String::new(), String::new());
            children(st, |id, d| match id {
                0x45A3 => name = String::from_utf8(d.to_vec()).unwrap(),
                0x4487 => value = String::from_utf8(d.to_vec()).unwrap(),
                other => panic!("unexpected SimpleTag child {other:#X}"),
            });
            simple.push((name, value));
        });
        tags.push(simple);
    });
    tags
}

/// Parses a whole stream; panics on anything the muxer should never write.
fn parse(buf: &[u8]) -> Parsed {
    let mut p = Parsed::default();
    let mut pos = 0;
    let id = read_vint(buf, &mut pos, true).unwrap();
    assert_eq!(id, 0x1A45DFA3, "EBML header first");
    let size = read_vint(buf, &mut pos, false).unwrap() as usize;
    children(&buf[pos..pos + size], |id, d| {
        if id == 0x4282 {
            p.doc_type = String::from_utf8(d.to_vec()).unwrap();
        }
    });
    pos += size;
    assert_eq!(read_vint(buf, &mut pos, true), Some(0x18538067), "Segment");
    assert_eq!(buf[pos], 0xFF, "Segment size is the 1-byte unknown marker");
    pos += 1;
    let mut cluster: Option<(u64, Vec<Block>)> = None;
    while pos < buf.len() {
        let id = read_vint(buf, &mut pos, true).unwrap();
        let size = read_vint(buf, &mut pos, false).unwrap();
        if id == 0x1F43B675 {
            assert_eq!(size, u64::MAX, "Cluster size unknown");
            if let Some((timecode, blocks)) = cluster.take() {
                p.items.push(Level1::Cluster { timecode, blocks });
            }
            cluster = Some((u64::MAX, Vec::new()));
            continue;
        }
        let data = &buf[pos..pos + size as usize];
        pos += size as usize;
        match id {
            0x1549A966 => children(data, |id, d| match id {
                0x73A4 => p.segment_uid = d.to_vec(),
                0x2AD7B1 => p.timecode_scale = uint(d),
                _ => {}
            }),
            0x1654AE6B => p.tracks = parse_tracks(data),
            0x1254C367 => {
                if let Some((timecode, blocks)) = cluster.take() {
                    p.items.push(Level1::Cluster { timecode, blocks });
                }
                p.items.push(Level1::Tags(parse_tags(data)));
            }
            0xE7 => {
                let c = cluster.as_mut().expect("Timecode inside a Cluster");
                assert!(c.1.is_empty(), "Timecode before the blocks");
                c.0 = uint(data);
            }
            0xA3 => {
                let c = cluster.as_mut().expect("SimpleBlock inside a Cluster");
                assert_eq!(data[0] & 0x80, 0x80, "1-byte track vint");
                c.1.push(Block {
                    track: data[0] & 0x7F,
                    offset: i16::from_be_bytes([data[1], data[2]]),
                    flags: data[3],
                    payload: data[4..].to_vec(),
                });
            }
            other => panic!("unexpected element {other:#X} at byte {pos}"),
        }
    }
    if let Some((timecode, blocks)) = cluster.take() {
        p.items.push(Level1::Cluster { timecode, blocks });
    }
    p
}

// ---- Helpers ------------------------------------------------------------------------------

fn config(tracks: Vec<TrackSpec>) -> MuxerConfig {
    MuxerConfig {
        tracks,
        fragment_duration: Duration::from_secs(2),
        timecodes: TimecodeMode::Absolute,
        segment_uid: [0x42; 16],
        writing_app: "test".into(),
        max_track_wait: Duration::from_millis(500),
    }
}

fn video_only() -> FragmentMuxer {
    FragmentMuxer::new(
        config(vec![TrackSpec::video(Codec::H264, NalFormat::AnnexB)]),
        FragmentTags::new(),
    )
    .unwrap()
}

fn av() -> FragmentMuxer {
    FragmentMuxer::new(
        config(vec![
            TrackSpec::video(Codec::H264, NalFormat::AnnexB),
            TrackSpec::aac(48_000, 2),
        ]),
        FragmentTags::new(),
    )
    .unwrap()
}

/// 30 fps with two B-frames per P, in decode order: (pts, dts, key) in ms from T0.
/// A key frame every `gop` frames (closed GOPs).
fn b_frame_gop(frames: u64, gop: u64) -> Vec<(u64, u64, bool)> {
    let fi = |i: u64| i * 100 / 3; // 33.3 ms grid, whole ms
    let mut out = Vec::new();
    let mut start = 0;
    while start < frames {
        let end = (start + gop).min(frames);
        // I, then groups of P (display +3) followed by its two Bs.
        out.push((start, true));
        let mut i = start + 1;
        while i < end {
            let p = (i + 2).min(end - 1);
            out.push((p, false));
            for b in i..p {
                out.push((b, false));
            }
            i = p + 1;
        }
        start = end;
    }
    // DTS: decode index shifted back two frames so that DTS <= PTS.
    out.iter()
        .enumerate()
        .map(|(decode, &(display, key))| (fi(display) + 100, fi(decode as u64) + 34, key))
        .collect()
}

/// Absolute block timecodes of each cluster.
fn block_times(p: &Parsed) -> Vec<Vec<(u8, u64)>> {
    p.clusters()
        .iter()
        .map(|(tc, blocks)| {
            blocks
                .iter()
                .map(|b| (b.track, tc + b.offset as u64))
                .collect()
        })
        .collect()
}

fn assert_fragment_invariants(sink: &RecordingSink) {
    let p = sink.parsed();
    for (tc, blocks) in p.clusters() {
        let first = blocks.first().expect("no empty cluster");
        assert_eq!(first.track, 1, "cluster {tc} opens on the video track");
        assert_eq!(first.offset, 0, "cluster {tc} opens at block timecode 0");
        assert_eq!(
            first.flags & 0x80,
            0x80,
            "cluster {tc} opens on a key frame"
        );
        assert!(
            blocks.iter().all(|b| b.offset >= 0),
            "no negative block timecode"
        );
    }
    let times = block_times(&p);
    for pair in times.windows(2) {
        let prev_last = pair[0].iter().map(|b| b.1).max().unwrap();
        let next_first = pair[1].iter().map(|b| b.1).min().unwrap();
        assert!(next_first > prev_last, "{next_first} > {prev_last}");
    }
    let ends = sink.ends();
    for pair in ends.windows(2) {
        assert!(pair[1].first_pts_ns > pair[0].last_pts_ns, "{pair:?}");
        assert_eq!(pair[1].sequence, pair[0].sequence + 1);
    }
    for (end, (tc, blocks)) in ends.iter().zip(p.clusters()) {
        assert_eq!(end.timecode_ms, tc);
        assert_eq!(end.frames as usize, blocks.len());
        let present = blocks.iter().fold(0u8, |m, b| m | 1 << (b.track - 1));
        assert_eq!(end.tracks_present, present);
    }
    let starts = sink.starts();
    assert_eq!(starts.len(), p.clusters().len());
    for (s, (tc, _)) in starts.iter().zip(p.clusters()) {
        assert_eq!(s.timecode_ms, tc);
    }
}

// ---- Tests --------------------------------------------------------------------------------

#[test]
fn tiny_stream_bytes_by_hand() {
    let tags = FragmentTags::new();
    tags.set_persistent("site", "7").unwrap();
    let mut mux = FragmentMuxer::new(
        config(vec![TrackSpec::video(Codec::H264, NalFormat::AnnexB)]),
        tags,
    )
    .unwrap();
    let mut sink = RecordingSink::default();
    mux.push(key_frame(0, 0), &mut sink).unwrap();
    mux.push(p_frame(33, 33), &mut sink).unwrap();
    mux.finish(&mut sink).unwrap();

    let Call::Header(header) = &sink.calls[0] else {
        panic!("stream header first: {:?}", sink.calls[0]);
    };
    // The header is built by header.rs (checked byte by byte there); here: its inputs.
    let p = parse(header);
    assert_eq!(p.doc_type, "matroska");
    assert_eq!(p.timecode_scale, 1_000_000);
    assert_eq!(p.segment_uid, [0x42; 16]);
    let mut avcc = vec![0x01, 0x64, 0x00, 0x14, 0xFF, 0xE1, 0x00, 29];
    avcc.extend_from_slice(&SPS);
    avcc.extend_from_slice(&[0x01, 0x00, 0x05]);
    avcc.extend_from_slice(&PPS);
    // High profile: chroma_format_idc 1, 8-bit luma and chroma, no SPS extensions.
    avcc.extend_from_slice(&[0xFD, 0xF8, 0xF8, 0x00]);
    assert_eq!(
        p.tracks,
        [ParsedTrack {
            number: 1,
            uid: 1,
            track_type: 1,
            name: "kinesis_video".into(),
            codec_id: "V_MPEG4/ISO/AVC".into(),
            codec_private: avcc,
            width: 320,
            height: 240,
            sample_rate: 0.0,
            channels: 0,
        }]
    );

    let stream = sink.stream();
    let body = &stream[header.len()..];
    #[rustfmt::skip]
    let mut expected: Vec<u8> = vec![
        // Tags → Tag → SimpleTag("site", "7")
        0x12, 0x54, 0xC3, 0x67, 0x91, 0x73, 0x73, 0x8E, 0x67, 0xC8, 0x8B,
        0x45, 0xA3, 0x84, b's', b'i', b't', b'e', 0x44, 0x87, 0x81, b'7',
        // Cluster, unknown size; Timecode 1 700 000 000 000 ms (6 bytes)
        0x1F, 0x43, 0xB6, 0x75, 0xFF,
        0xE7, 0x86, 0x01, 0x8B, 0xCF, 0xE5, 0x68, 0x00,
        // SimpleBlock, 55 bytes: track 1, timecode 0, key frame
        0xA3, 0x80 | 55, 0x81, 0x00, 0x00, 0x80,
        0x00, 0x00, 0x00, 29,
    ];
    expected.extend_from_slice(&SPS);
    expected.extend_from_slice(&[0, 0, 0, 5]);
    expected.extend_from_slice(&PPS);
    expected.extend_from_slice(&[0, 0, 0, 5]);
    expected.extend_from_slice(&IDR);
    #[rustfmt::skip]
    expected.extend_from_slice(&[
        // SimpleBlock, 12 bytes: track 1, timecode 33, not a key frame
        0xA3, 0x80 | 12, 0x81, 0x00, 33, 0x00,
        0x00, 0x00, 0x00, 0x04,
    ]);
    expected.extend_from_slice(&P_SLICE);
    // End of session: Tags → Tag → SimpleTag(AWS_KINESISVIDEO_END_OF_FRAGMENT, "")
    expected.extend_from_slice(&[0x12, 0x54, 0xC3, 0x67, 0x80 | 44, 0x73, 0x73, 0x80 | 41]);
    expected.extend_from_slice(&[0x67, 0xC8, 0x80 | 38, 0x45, 0xA3, 0x80 | 32]);
    expected.extend_from_slice(END_OF_FRAGMENT.as_bytes());
    expected.extend_from_slice(&[0x44, 0x87, 0x80]);
    assert_eq!(body, expected.as_slice());

    let fragment_bytes = (body.len() - 49) as u64;
    assert_eq!(
        sink.starts(),
        [FragmentStart {
            sequence: 0,
            timecode_ms: 1_700_000_000_000,
            pts_ns: T0
        }]
    );
    assert_eq!(
        sink.ends(),
        [FragmentEnd {
            sequence: 0,
            timecode_ms: 1_700_000_000_000,
            frames: 2,
            bytes: fragment_bytes,
            first_pts_ns: T0,
            last_pts_ns: T0 + 33 * MS,
            tracks_present: 1,
        }]
    );
    assert!(matches!(sink.calls.last(), Some(Call::StreamEnd(t)) if t.len() == 49));
    let stats = mux.stats();
    assert_eq!(stats.frames_in, 2);
    assert_eq!(stats.frames_out, 2);
    assert_eq!(stats.fragments, 1);
    assert_eq!(stats.bytes_out, stream.len() as u64);
    // finish() twice is harmless; pushing after it is refused.
    mux.finish(&mut sink).unwrap();
    assert!(matches!(
        mux.push(p_frame(66, 66), &mut sink),
        Err(MuxError::Finished)
    ));
}

#[test]
fn payloads_are_referenced_not_copied() {
    // Annex-B: each NAL is a slice of the frame's buffer.
    let mut mux = video_only();
    let mut sink = RecordingSink::default();
    let frame = key_frame(0, 0);
    let data = frame.data.clone();
    mux.push(frame, &mut sink).unwrap();
    assert_eq!(sink.payloads.len(), 3);
    let range = data.as_ptr_range();
    for p in &sink.payloads {
        assert!(
            range.contains(&p.as_ptr()),
            "NAL slice points into the frame"
        );
    }
    assert_eq!(sink.payloads[0].as_ref(), SPS);

    // Length-prefixed: the frame's Bytes goes through whole.
    let mut mux = FragmentMuxer::new(
        config(vec![TrackSpec::video(
            Codec::H264,
            NalFormat::LengthPrefixed,
        )]),
        FragmentTags::new(),
    )
    .unwrap();
    let mut sink = RecordingSink::default();
    let data = length_prefixed(&[&SPS, &PPS, &IDR]);
    mux.push(
        Frame {
            data: data.clone(),
            ..key_frame(0, 0)
        },
        &mut sink,
    )
    .unwrap();
    assert_eq!(sink.payloads.len(), 1);
    assert_eq!(sink.payloads[0].as_ptr(), data.as_ptr());
    assert_eq!(sink.payloads[0].len(), data.len());
    let p = sink.parsed();
    assert_eq!(p.tracks[0].width, 320);
    assert_eq!(p.clusters()[0].1[0].payload, data.as_ref());
}

#[test]
fn codec_private_from_caps_wins_over_hints() {
    let mut avcc = vec![0x01, 0x64, 0x00, 0x14, 0xFF, 0xE1, 0x00, 29];
    avcc.extend_from_slice(&SPS);
    avcc.extend_from_slice(&[0x01, 0x00, 0x05]);
    avcc.extend_from_slice(&PPS);
    let mut spec = TrackSpec::video(Codec::H264, NalFormat::LengthPrefixed)
        .with_codec_private(Bytes::from(avcc.clone()));
    spec.width = 1920;
    spec.height = 1080;
    let asc = Bytes::from_static(&[0x11, 0x90, 0x56, 0xE5, 0x00]); // avenc_aac, 48 kHz stereo
    let mut mux = FragmentMuxer::new(
        config(vec![
            spec,
            TrackSpec::aac(8_000, 1).with_codec_private(asc.clone()),
        ]),
        FragmentTags::new(),
    )
    .unwrap();
    let mut sink = RecordingSink::default();
    // A key frame without parameter sets is fine when the caps gave them.
    let frame = Frame {
        data: length_prefixed(&[&IDR]),
        ..key_frame(0, 0)
    };
    mux.push(frame, &mut sink).unwrap();
    mux.finish(&mut sink).unwrap();
    let p = sink.parsed();
    assert_eq!(p.tracks[0].codec_private, avcc);
    assert_eq!((p.tracks[0].width, p.tracks[0].height), (320, 240));
    assert_eq!(p.tracks[1].codec_private, asc.as_ref());
    assert_eq!(p.tracks[1].sample_rate, 48_000.0);
    assert_eq!(p.tracks[1].channels, 2);
    assert_eq!(p.tracks[1].codec_id, "A_AAC");
    assert_eq!(p.tracks[1].track_type, 2);
    assert_eq!((p.tracks[1].number, p.tracks[1].uid), (2, 2));
}

#[test]
fn aac_without_config_is_aac_lc() {
    let mut mux = av();
    let mut sink = RecordingSink::default();
    mux.push(key_frame(0, 0), &mut sink).unwrap();
    mux.finish(&mut sink).unwrap();
    let p = sink.parsed();
    // AAC-LC (2), 48 kHz (index 3), 2 channels: 00010 0011 0010 000
    assert_eq!(p.tracks[1].codec_private, [0x11, 0x90]);
    assert_eq!(p.tracks[1].sample_rate, 48_000.0);
}

#[test]
fn h265_codec_private_from_key_frame() {
    let data = Bytes::from_static(include_bytes!(
        "../../tests/fixtures/media/h265-main-320x240-key.h265"
    ));
    let mut mux = FragmentMuxer::new(
        config(vec![TrackSpec::video(Codec::H265, NalFormat::AnnexB)]),
        FragmentTags::new(),
    )
    .unwrap();
    let mut sink = RecordingSink::default();
    mux.push(
        Frame {
            data,
            ..key_frame(0, 0)
        },
        &mut sink,
    )
    .unwrap();
    mux.finish(&mut sink).unwrap();
    let p = sink.parsed();
    assert_eq!(p.tracks[0].codec_id, "V_MPEGH/ISO/HEVC");
    assert_eq!((p.tracks[0].width, p.tracks[0].height), (320, 240));
    assert_eq!(p.tracks[0].codec_private[0], 1, "hvcC version 1");
    assert_eq!(p.clusters()[0].1.len(), 1);
}

#[test]
fn frames_before_the_first_key_frame_are_dropped() {
    let mut mux = av();
    let mut sink = RecordingSink::default();
    let mut frames = vec![p_frame(0, 0), p_frame(33, 33)];
    frames.extend((0..5).map(|i| audio(i * 21)));
    frames.push(key_frame(66, 66));
    frames.push(audio(105));
    frames.push(p_frame(100, 100));
    frames.push(audio(126));
    for f in frames {
        mux.push(f, &mut sink).unwrap();
    }
    mux.finish(&mut sink).unwrap();
    let stats = mux.stats();
    // Two P-frames and the audio before PTS 66 (four frames at 0..63 ms; 84 is after).
    assert_eq!(stats.dropped_before_key_frame, 2 + 4);
    assert!(matches!(sink.calls[0], Call::Header(_)));
    let times = block_times(&sink.parsed());
    assert_eq!(
        times,
        [vec![
            (1, 1_700_000_000_066),
            (2, 1_700_000_000_084),
            (1, 1_700_000_000_100),
            (2, 1_700_000_000_105),
            (2, 1_700_000_000_126)
        ]]
    );
    assert_fragment_invariants(&sink);
}

#[test]
fn fragments_split_on_key_frames_with_b_frames() {
    let mut mux = video_only();
    let mut sink = RecordingSink::default();
    let frames = b_frame_gop(240, 30); // 8 s, a key frame every second
    for &(pts, dts, key) in &frames {
        mux.push(video(pts, dts, key), &mut sink).unwrap();
    }
    mux.finish(&mut sink).unwrap();
    let p = sink.parsed();
    let clusters = p.clusters();
    // Key frames at 0, 1, …, 7 s: fragments open at 0, 2, 4, 6 s.
    let starts: Vec<u64> = clusters
        .iter()
        .map(|(tc, _)| tc - 1_700_000_000_000)
        .collect();
    assert_eq!(starts, [100, 2100, 4100, 6100]);
    assert_eq!(
        clusters.iter().map(|c| c.1.len()).sum::<usize>(),
        frames.len()
    );
    // B-frames are written in decode order with their own PTS.
    let first: Vec<i16> = clusters[0].1.iter().take(4).map(|b| b.offset).collect();
    assert_eq!(first, [0, 100, 33, 66]);
    assert_fragment_invariants(&sink);
    assert_eq!(mux.stats().fragments, 4);
}

#[test]
fn zero_duration_splits_on_every_key_frame_and_timestamps_are_tolerated() {
    let mut cfg = config(vec![TrackSpec::video(Codec::H264, NalFormat::AnnexB)]);
    cfg.fragment_duration = Duration::ZERO;
    let mut mux = FragmentMuxer::new(cfg, FragmentTags::new()).unwrap();
    let mut sink = RecordingSink::default();
    for i in 0..6 {
        mux.push(video(i * 500, i * 500, i.is_multiple_of(2)), &mut sink)
            .unwrap();
    }
    assert_eq!(mux.stats().fragments, 3);

    // 30 fps in ns: the key frame 60 frames in is at 1999.99998 ms, inside the tolerance.
    let mut mux = video_only();
    let mut sink = RecordingSink::default();
    for i in 0..121u64 {
        let pts = T0 + i * 33_333_333;
        let f = Frame {
            pts_ns: pts,
            dts_ns: pts,
            ..video(0, 0, i.is_multiple_of(60))
        };
        mux.push(f, &mut sink).unwrap();
    }
    assert_eq!(mux.stats().fragments, 3);
}

#[test]
fn audio_and_video_interleave_into_fragments() {
    let mut mux = av();
    let mut sink = RecordingSink::default();
    // Video is delivered in bursts 200 ms ahead of audio; a key frame every second.
    let video_frames: Vec<Frame> = b_frame_gop(180, 30)
        .into_iter()
        .map(|(p, d, k)| video(p, d, k))
        .collect();
    let audio_frames: Vec<Frame> = (0..282u64)
        .map(|i| audio_at_ns(T0 + i * 21_333_333))
        .collect();
    let mut v = video_frames.into_iter().peekable();
    let mut a = audio_frames.into_iter().peekable();
    loop {
        let next_audio = a.peek().map(|f| f.pts_ns);
        let next_video = v.peek().map(|f| f.dts_ns);
        let take_video = match (next_video, next_audio) {
            (Some(vt), Some(at)) => vt <= at + 200 * MS,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let f = if take_video { v.next() } else { a.next() }.unwrap();
        mux.push(f, &mut sink).unwrap();
    }
    mux.finish(&mut sink).unwrap();
    assert_fragment_invariants(&sink);
    let ends = sink.ends();
    assert_eq!(ends.len(), 3);
    assert!(ends.iter().all(|e| e.tracks_present == 0b11), "{ends:?}");
    let stats = mux.stats();
    assert_eq!(
        stats.frames_out,
        180 + 282 - 5,
        "audio before the first key frame dropped"
    );
    assert_eq!(stats.dropped_before_key_frame, 5);
    assert_eq!(stats.dropped_late + stats.dropped_out_of_order, 0);
    // Every audio frame with PTS below a fragment's key frame is in the fragment before.
    let p = sink.parsed();
    for (i, (tc, blocks)) in p.clusters().iter().enumerate() {
        for b in blocks.iter().filter(|b| b.track == 2) {
            assert!(tc + b.offset as u64 >= *tc, "fragment {i}");
        }
    }
}

#[test]
fn key_frame_on_the_previous_fragments_last_millisecond_moves_1_ms_later() {
    let mut mux = av();
    let mut sink = RecordingSink::default();
    mux.push(key_frame(0, 0), &mut sink).unwrap();
    mux.push(audio(0), &mut sink).unwrap();
    // Audio 0.4 ms before the next key frame, same millisecond.
    let key_pts = T0 + 2000 * MS + 700_000;
    mux.push(audio_at_ns(key_pts - 400_000), &mut sink).unwrap();
    let key = Frame {
        pts_ns: key_pts,
        dts_ns: key_pts,
        ..key_frame(0, 0)
    };
    mux.push(key, &mut sink).unwrap();
    mux.push(audio_at_ns(key_pts + 200_000), &mut sink).unwrap(); // same ms as the key frame
    mux.push(audio(2021), &mut sink).unwrap();
    mux.push(p_frame(2033, 2033), &mut sink).unwrap();
    mux.finish(&mut sink).unwrap();
    let starts = sink.starts();
    assert_eq!(starts[1].timecode_ms, 1_700_000_002_001);
    assert_eq!(starts[1].pts_ns, T0 + 2001 * MS);
    let times = block_times(&sink.parsed());
    assert_eq!(times[0].last(), Some(&(2, 1_700_000_002_000)));
    assert_eq!(
        times[1],
        [
            (1, 1_700_000_002_001),
            (2, 1_700_000_002_001),
            (2, 1_700_000_002_021),
            (1, 1_700_000_002_033)
        ]
    );
    assert_fragment_invariants(&sink);
}

#[test]
fn audio_gap_and_late_audio() {
    let mut mux = av();
    let mut sink = RecordingSink::default();
    // 6 s of video, audio missing from 1.95 s to 4.05 s.
    let mut frames = Vec::new();
    for i in 0..180u64 {
        frames.push(video(i * 100 / 3, i * 100 / 3, i.is_multiple_of(30)));
        for j in 0..2u64 {
            let t = i * 100 / 3 + j * 16;
            if !(1950..4050).contains(&t) {
                frames.push(audio(t));
            }
        }
    }
    for f in frames {
        mux.push(f, &mut sink).unwrap();
    }
    mux.finish(&mut sink).unwrap();
    assert_fragment_invariants(&sink);
    let ends = sink.ends();
    assert_eq!(ends.len(), 3);
    assert!(ends.iter().all(|e| e.tracks_present == 0b11), "{ends:?}");
    // The 2–4 s fragment had no audio: one silent frame, after its last video frame.
    let stats = mux.stats();
    assert_eq!(stats.silence_frames_inserted, 1, "{stats:?}");
    assert_eq!(stats.dropped_late, 0);
    let p = sink.parsed();
    let (tc, blocks) = p.clusters()[1];
    let filled: Vec<&Block> = blocks.iter().filter(|b| b.track == 2).collect();
    assert_eq!(filled.len(), 1);
    assert_eq!(filled[0].payload, SILENT_STEREO);
    assert_eq!(filled[0].flags, 0x80);
    assert_eq!(blocks.last(), Some(filled[0]));
    assert_eq!(
        tc + filled[0].offset as u64,
        1_700_000_003_966,
        "the last video PTS"
    );

    // Audio arriving after its fragment's key frame was written is dropped, with an error.
    let mut mux = av();
    let mut sink = RecordingSink::default();
    mux.push(key_frame(0, 0), &mut sink).unwrap();
    mux.push(audio(0), &mut sink).unwrap();
    mux.push(audio(1500), &mut sink).unwrap();
    for i in 1..=80u64 {
        mux.push(video(i * 33, i * 33, i == 61), &mut sink).unwrap();
    }
    // Video up to 2112 ms, the key frame at 2013 included, was released after waiting 500 ms
    // for audio: audio at 1990 comes too late for the first fragment.
    let e = mux.push(audio(1990), &mut sink).unwrap_err();
    assert!(
        matches!(
            e,
            MuxError::LateFrame {
                track: 1,
                fragment_timecode_ms: 1_700_000_002_013,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.is_frame_error());
    mux.push(audio(2100), &mut sink).unwrap();
    mux.finish(&mut sink).unwrap();
    let stats = mux.stats();
    assert_eq!(stats.dropped_late, 1, "{stats:?}");
    assert_fragment_invariants(&sink);
}

#[test]
fn a_stopped_video_track_closes_the_fragment_before_the_timecode_overflows() {
    let mut mux = av();
    let mut sink = RecordingSink::default();
    mux.push(key_frame(0, 0), &mut sink).unwrap();
    // Video stops; 40 s of audio.
    let mut errors = Vec::new();
    for i in 0..1875u64 {
        if let Err(e) = mux.push(audio(i * 64 / 3), &mut sink) {
            errors.push(e);
        }
    }
    assert_eq!(
        errors.len(),
        1,
        "one error, then frames wait for a key frame: {errors:?}"
    );
    let e = &errors[0];
    assert!(e.is_frame_error());
    assert!(
        matches!(e, MuxError::TimecodeOverflow { track: 1, offset_ms, .. } if *offset_ms == 32768),
        "{e}"
    );
    let stats = mux.stats();
    assert_eq!(stats.dropped_timecode_overflow, 1);
    assert_eq!(stats.end_of_fragment_closes, 1);
    assert!(stats.dropped_before_key_frame > 300);
    // The closed fragment ends with the end-of-fragment tag.
    let p = sink.parsed();
    assert!(matches!(p.items.last(), Some(Level1::Tags(t)) if t[0][0].0 == END_OF_FRAGMENT));
    let last_offset = p.clusters()[0].1.last().map(|b| b.offset).unwrap();
    assert!((32767 - 21..=32767).contains(&last_offset), "{last_offset}");
    // Video comes back: a new fragment opens at once.
    mux.push(key_frame(41_000, 41_000), &mut sink).unwrap();
    mux.push(audio(41_001), &mut sink).unwrap();
    mux.push(p_frame(41_033, 41_033), &mut sink).unwrap();
    mux.finish(&mut sink).unwrap();
    assert_eq!(mux.stats().fragments, 2);
    assert_fragment_invariants(&sink);
}

#[test]
fn a_stopped_audio_track_delays_video_by_max_track_wait_only() {
    let mut mux = av();
    let mut sink = RecordingSink::default();
    for i in 0..30u64 {
        mux.push(video(i * 33, i * 33, i == 0), &mut sink).unwrap();
        mux.push(audio(i * 33), &mut sink).unwrap();
    }
    // Audio stops; 5 s more video.
    for i in 30..180u64 {
        mux.push(video(i * 33, i * 33, i.is_multiple_of(30)), &mut sink)
            .unwrap();
        assert!(mux.queued_frames() <= 16, "queued {}", mux.queued_frames());
    }
    mux.finish(&mut sink).unwrap();
    let ends = sink.ends();
    assert_eq!(ends.len(), 3);
    assert!(ends.iter().all(|e| e.tracks_present == 0b11), "{ends:?}");
    let stats = mux.stats();
    assert_eq!(
        stats.frames_out, 210,
        "silent frames are not counted as pushed frames"
    );
    assert_eq!(stats.silence_frames_inserted, 2);
    // Fragment 2 closed by the split at 3960 ms, fragment 3 by finish().
    assert_eq!(ends[1].frames, 60 + 1);
    assert_eq!(ends[2].frames, 60 + 1);
    assert_eq!(ends[2].last_pts_ns, T0 + 179 * 33 * MS);
    assert_fragment_invariants(&sink);
}

/// The silent raw_data_block for channel configuration 2 (see media::aac_silence).
const SILENT_STEREO: [u8; 7] = [0x20, 0x64, 0x00, 0x01, 0x90, 0x00, 0x0E];

#[test]
fn silence_fills_a_fragment_closed_by_end_fragment_and_by_finish() {
    let tags = FragmentTags::new();
    let mut mux = FragmentMuxer::new(
        config(vec![
            TrackSpec::video(Codec::H264, NalFormat::AnnexB),
            TrackSpec::aac(48_000, 2),
        ]),
        tags.clone(),
    )
    .unwrap();
    let mut sink = RecordingSink::default();
    tags.set_persistent("site", "7").unwrap();
    // Video waits up to 500 ms for audio, so 1 s of it releases about half.
    for i in 0..30u64 {
        mux.push(video(i * 33, i * 33, i == 0), &mut sink).unwrap();
    }
    tags.end_fragment();
    mux.push(p_frame(990, 990), &mut sink).unwrap();
    // Closed early: the silent frame sits before the end-of-fragment tag, at the last PTS.
    let ends = sink.ends();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].tracks_present, 0b11);
    let p = sink.parsed();
    let blocks = p.clusters()[0].1;
    let last_video = blocks
        .iter()
        .filter(|b| b.track == 1)
        .map(|b| b.offset)
        .max();
    // Video up to 429 ms was written; the next frame released (462 ms) met the close.
    assert_eq!(last_video, Some(429));
    assert_eq!(ends[0].frames, 14 + 1);
    assert_eq!(ends[0].last_pts_ns, T0 + 429 * MS);
    assert_eq!(
        blocks.last(),
        Some(&Block {
            track: 2,
            offset: 429,
            flags: 0x80,
            payload: SILENT_STEREO.to_vec()
        })
    );
    assert!(matches!(p.items.last(), Some(Level1::Tags(t)) if t[0][0].0 == END_OF_FRAGMENT));
    // The silent payload is the track's one buffer, referenced, not rebuilt.
    let silent: Vec<&Bytes> = sink
        .payloads
        .iter()
        .filter(|b| b[..] == SILENT_STEREO)
        .collect();
    assert_eq!(silent.len(), 1);

    // Frames still queued up to 990 ms wait for a key frame.
    mux.push(key_frame(1100, 1100), &mut sink).unwrap();
    mux.push(p_frame(1133, 1133), &mut sink).unwrap();
    mux.finish(&mut sink).unwrap();
    let ends = sink.ends();
    assert_eq!(ends.len(), 2);
    assert_eq!(ends[1].tracks_present, 0b11);
    let silent: Vec<&Bytes> = sink
        .payloads
        .iter()
        .filter(|b| b[..] == SILENT_STEREO)
        .collect();
    assert_eq!(silent.len(), 2);
    assert_eq!(silent[0].as_ptr(), silent[1].as_ptr());
    assert_eq!(mux.stats().silence_frames_inserted, 2);
    assert_fragment_invariants(&sink);
}

#[test]
fn silence_for_every_silent_track_and_none_for_he_aac() {
    // Track 1 mono AAC-LC that never delivers; track 2 HE-AAC (explicit SBR) that never
    // delivers either: only track 1 can be filled.
    let he_aac =
        TrackSpec::aac(24_000, 2).with_codec_private(Bytes::from_static(&[0x2B, 0x11, 0x88, 0x00]));
    let mut mux = FragmentMuxer::new(
        config(vec![
            TrackSpec::video(Codec::H264, NalFormat::AnnexB),
            TrackSpec::aac(48_000, 1),
            he_aac,
        ]),
        FragmentTags::new(),
    )
    .unwrap();
    let mut sink = RecordingSink::default();
    for i in 0..130u64 {
        mux.push(video(i * 33, i * 33, i.is_multiple_of(61)), &mut sink)
            .unwrap();
    }
    mux.finish(&mut sink).unwrap();
    let ends = sink.ends();
    assert_eq!(ends.len(), 3);
    assert!(ends.iter().all(|e| e.tracks_present == 0b011), "{ends:?}");
    let stats = mux.stats();
    assert_eq!(stats.silence_frames_inserted, 3);
    assert_eq!(stats.silence_unavailable, 3);
    for (_, blocks) in sink.parsed().clusters() {
        let mono: Vec<&Block> = blocks.iter().filter(|b| b.track == 2).collect();
        assert_eq!(mono.len(), 1);
        assert_eq!(mono[0].payload, [0x00, 0xC8, 0x00, 0x07]);
    }
    assert_fragment_invariants(&sink);
}

#[test]
fn decreasing_timestamps_are_dropped_and_counted() {
    let mut mux = av();
    let mut sink = RecordingSink::default();
    mux.push(key_frame(0, 0), &mut sink).unwrap();
    mux.push(audio(10), &mut sink).unwrap();
    mux.push(p_frame(66, 33), &mut sink).unwrap();
    let e = mux.push(p_frame(40, 20), &mut sink).unwrap_err();
    assert!(e.is_frame_error());
    assert!(e.to_string().contains("DTS"), "{e}");
    let e = mux.push(audio(5), &mut sink).unwrap_err();
    assert!(matches!(
        e,
        MuxError::Interleave(InterleaveError::Decreasing { track: 1, .. })
    ));
    mux.push(audio(31), &mut sink).unwrap();
    mux.push(p_frame(100, 66), &mut sink).unwrap();
    mux.finish(&mut sink).unwrap();
    let stats = mux.stats();
    assert_eq!(stats.dropped_out_of_order, 2);
    assert_eq!(stats.frames_out, 5);
    assert_fragment_invariants(&sink);
}

#[test]
fn bad_payloads_are_errors_and_the_muxer_carries_on() {
    let mut mux = video_only();
    let mut sink = RecordingSink::default();
    let bad: Vec<(&str, Bytes, bool)> = vec![
        (
            "no start code",
            Bytes::from_static(&[0x65, 0x88, 0x84]),
            true,
        ),
        ("only zeros", Bytes::from_static(&[0, 0, 0, 0, 0]), true),
        (
            "four zeros",
            Bytes::from_static(&[0, 0, 0, 0, 1, 0x65, 1]),
            true,
        ),
        (
            "empty NAL",
            Bytes::from_static(&[0, 0, 1, 0, 0, 1, 0x65]),
            true,
        ),
        ("empty frame", Bytes::new(), true),
        ("truncated", Bytes::from_static(&[0, 0]), false),
        ("garbage", Bytes::from_static(&[0xFF; 64]), false),
    ];
    // Before the stream starts (key frames) and after it (P-frames).
    for (what, data, key) in bad.iter().cloned() {
        let e = mux
            .push(
                Frame {
                    data,
                    ..video(0, 0, key)
                },
                &mut sink,
            )
            .err();
        if key {
            let e = e.unwrap_or_else(|| panic!("{what}: expected an error"));
            assert!(e.is_frame_error(), "{what}: {e}");
        } else {
            assert!(e.is_none(), "{what}: no fragment yet, dropped silently");
        }
    }
    assert!(sink.calls.is_empty(), "nothing written for bad key frames");
    mux.push(key_frame(0, 0), &mut sink).unwrap();
    let mut t = 33;
    for (what, data, _) in bad {
        let e = mux
            .push(
                Frame {
                    data,
                    ..video(t, t, false)
                },
                &mut sink,
            )
            .expect_err(what);
        assert!(
            matches!(
                e,
                MuxError::Payload { track: 0, .. } | MuxError::EmptyFrame { .. }
            ),
            "{what}: {e}"
        );
        t += 33;
    }
    mux.push(p_frame(t, t), &mut sink).unwrap();
    mux.finish(&mut sink).unwrap();
    assert_eq!(mux.stats().dropped_invalid, 5 + 7);
    assert_eq!(mux.stats().frames_out, 2);
    let p = sink.parsed();
    assert_eq!(p.clusters()[0].1.len(), 2);

    // Length-prefixed: lengths past the end, zero lengths, a cut prefix.
    let mut mux = FragmentMuxer::new(
        config(vec![TrackSpec::video(
            Codec::H264,
            NalFormat::LengthPrefixed,
        )]),
        FragmentTags::new(),
    )
    .unwrap();
    let mut sink = RecordingSink::default();
    let good = length_prefixed(&[&SPS, &PPS, &IDR]);
    mux.push(
        Frame {
            data: good.clone(),
            ..key_frame(0, 0)
        },
        &mut sink,
    )
    .unwrap();
    for (i, data) in [
        Bytes::from_static(&[0, 0, 0, 9, 0x41, 1]),
        Bytes::from_static(&[0, 0, 0, 0]),
        Bytes::from_static(&[0, 0, 0, 1, 0x41, 0, 0]),
        good.slice(..good.len() - 1),
    ]
    .into_iter()
    .enumerate()
    {
        let e = mux
            .push(
                Frame {
                    data,
                    ..video(33 * (i as u64 + 1), 33 * (i as u64 + 1), false)
                },
                &mut sink,
            )
            .unwrap_err();
        assert!(matches!(e, MuxError::Payload { .. }), "case {i}: {e}");
    }
    mux.push(
        Frame {
            data: length_prefixed(&[&P_SLICE]),
            ..p_frame(200, 200)
        },
        &mut sink,
    )
    .unwrap();
    mux.finish(&mut sink).unwrap();
    assert_eq!(sink.parsed().clusters()[0].1.len(), 2);
}

#[test]
fn key_frame_without_parameter_sets_waits_for_the_next() {
    let mut mux = video_only();
    let mut sink = RecordingSink::default();
    let e = mux
        .push(
            Frame {
                data: annexb(&[&IDR]),
                ..key_frame(0, 0)
            },
            &mut sink,
        )
        .unwrap_err();
    assert!(matches!(e, MuxError::StreamStart { .. }), "{e}");
    assert!(e.to_string().contains("SPS"), "{e}");
    mux.push(p_frame(33, 33), &mut sink).unwrap();
    mux.push(key_frame(66, 66), &mut sink).unwrap();
    mux.finish(&mut sink).unwrap();
    assert_eq!(sink.parsed().clusters()[0].0, 1_700_000_000_066);
    assert_eq!(mux.stats().dropped_invalid, 1);
    assert_eq!(mux.stats().dropped_before_key_frame, 1);
}

#[test]
fn tags_go_before_each_cluster() {
    let tags = FragmentTags::new();
    tags.set_persistent("site", "7").unwrap();
    tags.add_transient("first", "only").unwrap();
    let mut mux = FragmentMuxer::new(
        config(vec![TrackSpec::video(Codec::H264, NalFormat::AnnexB)]),
        tags.clone(),
    )
    .unwrap();
    let mut sink = RecordingSink::default();
    for i in 0..90u64 {
        if i == 45 {
            tags.add_event(Event::Notification {
                pairs: vec![("why".into(), "motion".into())],
            })
            .unwrap();
        }
        mux.push(video(i * 33, i * 33, i.is_multiple_of(30)), &mut sink)
            .unwrap();
    }
    mux.finish(&mut sink).unwrap();
    let p = sink.parsed();
    assert_eq!(
        p.tag_names(),
        [
            (0, "site".to_owned()),
            (0, "first".to_owned()),
            (1, "site".to_owned()),
            (1, NOTIFICATION.to_owned()),
            (1, "why".to_owned()),
            (2, END_OF_FRAGMENT.to_owned()),
        ]
    );
    assert_eq!(p.clusters().len(), 2);
}

#[test]
fn end_fragment_closes_with_queued_events_then_eofr() {
    let tags = FragmentTags::new();
    let mut mux = FragmentMuxer::new(
        config(vec![TrackSpec::video(Codec::H264, NalFormat::AnnexB)]),
        tags.clone(),
    )
    .unwrap();
    let mut sink = RecordingSink::default();
    for i in 0..10u64 {
        mux.push(video(i * 33, i * 33, i == 0), &mut sink).unwrap();
    }
    for i in 0..9 {
        tags.set_persistent(&format!("p{i}"), "x").unwrap();
    }
    tags.add_event(Event::ImageGeneration {
        prefix: Some("cam/".into()),
        pairs: vec![],
    })
    .unwrap();
    tags.end_fragment();
    // The next frame closes the fragment; it is not a key frame, so it waits.
    mux.push(p_frame(330, 330), &mut sink).unwrap();
    assert_eq!(sink.ends().len(), 1);
    assert!(matches!(sink.calls.last(), Some(Call::End(_))));
    // A key frame opens the next fragment at once, well before 2 s.
    mux.push(key_frame(400, 400), &mut sink).unwrap();
    mux.push(p_frame(433, 433), &mut sink).unwrap();
    mux.finish(&mut sink).unwrap();
    let p = sink.parsed();
    let names: Vec<(usize, String)> = p.tag_names();
    let expected_before_second: Vec<(usize, String)> = [
        IMAGE_GENERATION,
        "AWS_KINESISVIDEO_IMAGE_PREFIX",
        END_OF_FRAGMENT,
    ]
    .iter()
    .map(|n| (1, n.to_string()))
    .collect();
    assert_eq!(names[..3], expected_before_second[..]);
    // Then the persistent tags on the second fragment and the end-of-session tag.
    assert_eq!(names.len(), 3 + 9 + 1);
    assert_eq!(names[3], (1, "p0".to_owned()));
    assert_eq!(names[12], (2, END_OF_FRAGMENT.to_owned()));
    let stats = mux.stats();
    assert_eq!(stats.end_of_fragment_closes, 1);
    assert_eq!(stats.dropped_before_key_frame, 1);
    assert_eq!(stats.fragments, 2);
    assert_fragment_invariants(&sink);
}

#[test]
fn end_fragment_before_finish_leaves_an_empty_trailer() {
    let tags = FragmentTags::new();
    let mut mux = FragmentMuxer::new(
        config(vec![TrackSpec::video(Codec::H264, NalFormat::AnnexB)]),
        tags.clone(),
    )
    .unwrap();
    let mut sink = RecordingSink::default();
    mux.push(key_frame(0, 0), &mut sink).unwrap();
    tags.end_fragment();
    mux.push(p_frame(33, 33), &mut sink).unwrap();
    mux.finish(&mut sink).unwrap();
    assert_eq!(sink.calls.last(), Some(&Call::StreamEnd(Vec::new())));
    let p = sink.parsed();
    assert_eq!(
        p.tag_names(),
        [(1, END_OF_FRAGMENT.to_owned())],
        "one end-of-fragment tag, no second one at the end of the session"
    );
}

#[test]
fn relative_timecodes_start_at_zero() {
    let mut cfg = config(vec![TrackSpec::video(Codec::H264, NalFormat::AnnexB)]);
    cfg.timecodes = TimecodeMode::Relative;
    let mut mux = FragmentMuxer::new(cfg, FragmentTags::new()).unwrap();
    let mut sink = RecordingSink::default();
    assert_eq!(mux.stream_origin_ns(), None);
    for i in 0..90u64 {
        mux.push(
            video(500 + i * 33, 500 + i * 33, i.is_multiple_of(30)),
            &mut sink,
        )
        .unwrap();
    }
    mux.finish(&mut sink).unwrap();
    assert_eq!(mux.stream_origin_ns(), Some(T0 + 500 * MS));
    let starts: Vec<u64> = sink.starts().iter().map(|s| s.timecode_ms).collect();
    assert_eq!(starts, [0, 1980]);
    assert_eq!(sink.starts()[1].pts_ns, T0 + 2480 * MS);
    assert_fragment_invariants(&sink);
}

#[test]
fn deferred_split_when_audio_already_passed_the_key_frame() {
    let mut cfg = config(vec![
        TrackSpec::video(Codec::H264, NalFormat::AnnexB),
        TrackSpec::aac(48_000, 2),
    ]);
    cfg.max_track_wait = Duration::from_millis(100);
    let mut mux = FragmentMuxer::new(cfg, FragmentTags::new()).unwrap();
    let mut sink = RecordingSink::default();
    mux.push(key_frame(0, 0), &mut sink).unwrap();
    mux.push(audio(0), &mut sink).unwrap();
    for i in 1..60u64 {
        mux.push(video(i * 33, i * 33, false), &mut sink).unwrap();
        mux.push(audio(i * 33), &mut sink).unwrap();
    }
    // Video stalls for 400 ms of audio, more than the 100 ms wait: audio runs ahead.
    for t in (1980..2400).step_by(20) {
        mux.push(audio(t), &mut sink).unwrap();
    }
    // The due key frame at 2000 ms now comes after audio at 2280 ms was written.
    mux.push(key_frame(2000, 2000), &mut sink).unwrap();
    assert_eq!(mux.stats().splits_deferred, 1);
    assert_eq!(mux.stats().fragments, 1);
    // Video catches up; the next key frame (3960 ms) splits.
    for i in 61..130u64 {
        mux.push(video(i * 33, i * 33, i == 120), &mut sink)
            .unwrap();
        if i * 33 >= 2400 {
            mux.push(audio(i * 33), &mut sink).unwrap();
        }
    }
    mux.finish(&mut sink).unwrap();
    assert_eq!(mux.stats().fragments, 2);
    assert_fragment_invariants(&sink);
}

struct FailingSink {
    fail_after: usize,
    calls: usize,
}

impl FailingSink {
    fn tick(&mut self) -> io::Result<()> {
        self.calls += 1;
        if self.calls > self.fail_after {
            Err(io::Error::other("disk full"))
        } else {
            Ok(())
        }
    }
}

impl MuxSink for FailingSink {
    fn stream_header(&mut self, _: &Bytes) -> io::Result<()> {
        self.tick()
    }
    fn fragment_start(&mut self, _: &FragmentStart) -> io::Result<()> {
        self.tick()
    }
    fn write(&mut self, _: &[u8]) -> io::Result<()> {
        self.tick()
    }
    fn write_payload(&mut self, _: &Bytes) -> io::Result<()> {
        self.tick()
    }
    fn fragment_end(&mut self, _: &FragmentEnd) -> io::Result<()> {
        self.tick()
    }
    fn stream_end(&mut self, _: &[u8]) -> io::Result<()> {
        self.tick()
    }
}

#[test]
fn a_sink_error_stops_the_muxer() {
    let mut mux = video_only();
    let mut sink = FailingSink {
        fail_after: 4,
        calls: 0,
    };
    let e = mux.push(key_frame(0, 0), &mut sink).unwrap_err();
    assert!(matches!(e, MuxError::Sink(_)), "{e}");
    assert!(!e.is_frame_error());
    assert!(e.to_string().contains("disk full"));
    assert!(matches!(
        mux.push(p_frame(33, 33), &mut sink),
        Err(MuxError::Stopped)
    ));
    assert!(matches!(mux.finish(&mut sink), Err(MuxError::Stopped)));
}

#[test]
fn the_muxer_moves_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<FragmentMuxer>();
    assert_send::<MuxError>();
}

#[test]
fn dyn_sinks_work() {
    let mut mux = video_only();
    let mut sink = RecordingSink::default();
    let dyn_sink: &mut dyn MuxSink = &mut sink;
    mux.push(key_frame(0, 0), dyn_sink).unwrap();
    mux.finish(dyn_sink).unwrap();
    assert_eq!(sink.parsed().clusters().len(), 1);
}

#[test]
fn configuration_is_validated() {
    let v = || TrackSpec::video(Codec::H264, NalFormat::AnnexB);
    let a = || TrackSpec::aac(48_000, 2);
    let new = |cfg| FragmentMuxer::new(cfg, FragmentTags::new()).unwrap_err();
    assert!(matches!(new(config(vec![])), MuxError::TrackCount(0)));
    assert!(matches!(
        new(config(vec![v(), a(), a(), a()])),
        MuxError::TrackCount(4)
    ));
    assert!(matches!(
        new(config(vec![a()])),
        MuxError::FirstTrackNotVideo(Codec::Aac)
    ));
    assert!(matches!(
        new(config(vec![v(), v()])),
        MuxError::UnsupportedTrack { track: 1, .. }
    ));
    assert!(matches!(
        new(config(vec![v(), TrackSpec::aac(44_000, 2)])),
        MuxError::CodecPrivate { track: 1, .. }
    ));
    assert!(matches!(
        new(config(vec![
            v(),
            a().with_codec_private(Bytes::from_static(&[0x00]))
        ])),
        MuxError::CodecPrivate { track: 1, .. }
    ));
    assert!(matches!(
        new(config(vec![
            v().with_codec_private(Bytes::from_static(&[1, 2, 3]))
        ])),
        MuxError::CodecPrivate { track: 0, .. }
    ));
    let mut cfg = config(vec![v()]);
    cfg.fragment_duration = Duration::from_secs(21);
    assert!(matches!(new(cfg), MuxError::FragmentDuration(_)));
    let mut cfg = config(vec![v()]);
    cfg.segment_uid = [0; 16];
    assert!(matches!(new(cfg), MuxError::ZeroSegmentUid));
    // Defaults.
    let cfg = MuxerConfig::new(vec![v(), a()]);
    assert_eq!(cfg.max_track_wait, Duration::from_millis(500));
    assert_ne!(cfg.segment_uid, [0; 16]);
    assert_ne!(cfg.segment_uid, MuxerConfig::new(vec![v()]).segment_uid);
    FragmentMuxer::new(cfg, FragmentTags::new()).unwrap();
}

#[test]
fn unknown_track_is_a_frame_error() {
    let mut mux = av();
    let mut sink = RecordingSink::default();
    let e = mux
        .push(
            Frame {
                track: 5,
                ..audio(0)
            },
            &mut sink,
        )
        .unwrap_err();
    assert!(e.is_frame_error());
    assert_eq!(mux.stats().dropped_invalid, 1);
}

// ---- Properties -----------------------------------------------------------------------------

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Delivers each track's frames with its own capture latency plus jitter, as two capture
    /// threads would: order within a track kept, relative order across tracks arbitrary.
    fn deliver(tracks: Vec<Vec<Frame>>, latency_ms: [u64; 2], jitter: &[u64]) -> Vec<Frame> {
        let mut tagged = Vec::new();
        for (t, frames) in tracks.into_iter().enumerate() {
            let mut last_arrival = 0;
            for (i, f) in frames.into_iter().enumerate() {
                let j = jitter
                    .get((i * 7 + t * 3) % jitter.len().max(1))
                    .copied()
                    .unwrap_or(0);
                let arrival = (f.dts_ns / MS + latency_ms[t] + j).max(last_arrival);
                last_arrival = arrival;
                tagged.push((arrival, t, i, f));
            }
        }
        tagged.sort_by_key(|(arrival, t, i, _)| (*arrival, *t, *i));
        tagged.into_iter().map(|(_, _, _, f)| f).collect()
    }

    fn conserved(s: &MuxStats) -> bool {
        s.frames_in
            == s.frames_out
                + s.dropped_before_key_frame
                + s.dropped_out_of_order
                + s.dropped_late
                + s.dropped_invalid
                + s.dropped_timecode_overflow
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn ebml_sizes_round_trip(size in 0..=ebml::MAX_SIZE) {
            let mut buf = Vec::new();
            ebml::put_size(&mut buf, size).unwrap();
            prop_assert_eq!(buf.len(), ebml::size_len(size).unwrap());
            let mut pos = 0;
            prop_assert_eq!(read_vint(&buf, &mut pos, false), Some(size));
            prop_assert_eq!(pos, buf.len());
        }

        #[test]
        fn av_fragments_keep_their_invariants(
            gops in 2u64..6,
            gop in prop::sample::select(vec![15u64, 30, 60]),
            latency_ms in [0u64..300, 0u64..300],
            jitter in prop::collection::vec(0u64..40, 1..16),
            audio_gap in prop::option::of((0u64..8_000, 100u64..3_000)),
            video_stops_at in prop::option::of(1_000u64..8_000),
            audio_stops_at in prop::option::of(0u64..8_000),
            fragment_ms in prop::sample::select(vec![0u64, 1_000, 2_000]),
        ) {
            let video_frames = gops * gop;
            let video: Vec<Frame> = b_frame_gop(video_frames, gop)
                .into_iter()
                .filter(|&(pts, _, _)| video_stops_at.is_none_or(|s| pts < s))
                .map(|(p, d, k)| video(p, d, k))
                .collect();
            let end_ms = video_frames * 100 / 3 + 100;
            let audio: Vec<Frame> = (0..end_ms * 48 / 1024)
                .map(|i| T0 + i * 1024 * 1_000_000_000 / 48_000)
                .filter(|&pts| {
                    let ms = (pts - T0) / MS;
                    audio_gap.is_none_or(|(at, len)| !(at..at + len).contains(&ms))
                        && audio_stops_at.is_none_or(|s| ms < s)
                })
                .map(audio_at_ns)
                .collect();
            let mut cfg = config(vec![
                TrackSpec::video(Codec::H264, NalFormat::AnnexB),
                TrackSpec::aac(48_000, 2),
            ]);
            cfg.fragment_duration = Duration::from_millis(fragment_ms);
            let mut mux = FragmentMuxer::new(cfg, FragmentTags::new()).unwrap();
            let mut sink = RecordingSink::default();
            for frame in deliver(vec![video, audio], latency_ms, &jitter) {
                if let Err(e) = mux.push(frame, &mut sink) {
                    prop_assert!(e.is_frame_error(), "{}", e);
                }
            }
            mux.finish(&mut sink).unwrap();
            assert_fragment_invariants(&sink);
            let stats = mux.stats();
            prop_assert!(conserved(&stats), "{:?}", stats);
            // Gaps and stops are filled: every fragment has both tracks (KVS 4011).
            let ends = sink.ends();
            prop_assert!(ends.iter().all(|e| e.tracks_present == 0b11), "{:?}", ends);
            prop_assert!(stats.silence_frames_inserted <= ends.len() as u64);
            prop_assert_eq!(stats.silence_unavailable, 0);
            // Skews below max_track_wait never make a frame late or defer a split.
            prop_assert_eq!(stats.dropped_late, 0, "{:?}", stats);
            prop_assert_eq!(stats.splits_deferred, 0, "{:?}", stats);
            prop_assert_eq!(stats.dropped_out_of_order, 0);
        }

        #[test]
        fn audio_stopping_at_1_s_and_resuming_at_5_s_leaves_no_fragment_without_audio(
            latency_ms in [0u64..300, 0u64..300],
            jitter in prop::collection::vec(0u64..40, 1..16),
            gop in prop::sample::select(vec![15u64, 30, 60]),
            fragment_ms in prop::sample::select(vec![0u64, 1_000, 2_000]),
        ) {
            let video: Vec<Frame> = b_frame_gop(240, gop)
                .into_iter()
                .map(|(p, d, k)| video(p, d, k))
                .collect();
            let audio: Vec<Frame> = (0..8_100 * 48 / 1024)
                .map(|i| T0 + i * 1024 * 1_000_000_000 / 48_000)
                .filter(|&pts| !(1_000..5_000).contains(&((pts - T0) / MS)))
                .map(audio_at_ns)
                .collect();
            let mut cfg = config(vec![
                TrackSpec::video(Codec::H264, NalFormat::AnnexB),
                TrackSpec::aac(48_000, 2),
            ]);
            cfg.fragment_duration = Duration::from_millis(fragment_ms);
            let mut mux = FragmentMuxer::new(cfg, FragmentTags::new()).unwrap();
            let mut sink = RecordingSink::default();
            for frame in deliver(vec![video, audio], latency_ms, &jitter) {
                if let Err(e) = mux.push(frame, &mut sink) {
                    prop_assert!(e.is_frame_error(), "{}", e);
                }
            }
            mux.finish(&mut sink).unwrap();
            // Block timecodes and FragmentEnd PTS strictly increase across fragments (4004).
            assert_fragment_invariants(&sink);
            let ends = sink.ends();
            prop_assert!(ends.iter().all(|e| e.tracks_present == 0b11), "{:?}", ends);
            let p = sink.parsed();
            let mut filled = 0;
            let mut last_audio_ms = 0;
            for (tc, blocks) in p.clusters() {
                let audio: Vec<&Block> = blocks.iter().filter(|b| b.track == 2).collect();
                let silent = audio.iter().filter(|b| b.payload == SILENT_STEREO).count();
                // A silent frame only where the track had nothing, alone and last.
                if silent > 0 {
                    prop_assert_eq!((silent, audio.len()), (1, 1));
                    prop_assert_eq!(blocks.last(), Some(audio[0]));
                    prop_assert!(blocks.iter().all(|b| b.offset <= audio[0].offset));
                    filled += 1;
                }
                // Audio timecodes never go back, silent frames included.
                for b in &audio {
                    let ms = tc + b.offset as u64;
                    prop_assert!(ms >= last_audio_ms);
                    last_audio_ms = ms;
                }
            }
            prop_assert!(filled >= 1);
            prop_assert_eq!(mux.stats().silence_frames_inserted, filled);
            // Audio resumes: the last fragment carries real audio after 5 s.
            let (tc, blocks) = *p.clusters().last().unwrap();
            prop_assert!(blocks.iter().any(|b| b.track == 2
                && b.payload != SILENT_STEREO
                && tc + b.offset as u64 >= 1_700_000_005_000));
        }

        #[test]
        fn garbage_payloads_never_panic(
            payloads in prop::collection::vec(
                (prop::collection::vec(prop::sample::select(vec![0u8, 1, 3, 0x41, 0x65, 0xFF]), 0..40), any::<bool>()),
                1..40,
            ),
            use_length_prefixed in any::<bool>(),
        ) {
            let format = if use_length_prefixed { NalFormat::LengthPrefixed } else { NalFormat::AnnexB };
            let mut mux = FragmentMuxer::new(
                config(vec![TrackSpec::video(Codec::H264, format)]),
                FragmentTags::new(),
            )
            .unwrap();
            let mut sink = RecordingSink::default();
            let good = match format {
                NalFormat::AnnexB => annexb(&[&SPS, &PPS, &IDR]),
                NalFormat::LengthPrefixed => length_prefixed(&[&SPS, &PPS, &IDR]),
            };
            mux.push(Frame { data: good, ..key_frame(0, 0) }, &mut sink).unwrap();
            for (i, (bytes, key)) in payloads.into_iter().enumerate() {
                let t = 33 * (i as u64 + 1);
                let frame = Frame { data: Bytes::from(bytes), ..video(t, t, key) };
                if let Err(e) = mux.push(frame, &mut sink) {
                    prop_assert!(e.is_frame_error(), "{}", e);
                }
            }
            mux.finish(&mut sink).unwrap();
            // Whatever was accepted is well-formed.
            let p = sink.parsed();
            prop_assert!(!p.clusters().is_empty());
            prop_assert!(conserved(&mux.stats()));
        }
    }
}
