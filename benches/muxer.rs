//! Muxer throughput with a null sink: 1080p30-sized H.264 access units (16.9 KB average, a key
//! frame every 60) given as Annex-B and as length-prefixed, and A/V with 48 kHz AAC frames.
//! Targets (DESIGN.md): ≥ 150k frames/s Annex-B, ≥ 1.2M frames/s length-prefixed.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use kinesis_edge::media::{Codec, Frame, NalFormat};
use kinesis_edge::mkv::{
    FragmentEnd, FragmentMuxer, FragmentStart, FragmentTags, MuxSink, MuxerConfig, TrackSpec,
};
use std::io;

#[path = "support/synthetic_h264.rs"]
mod synthetic_h264;
use synthetic_h264::{PPS, SPS_1080P, slice_nal};

const MS: u64 = 1_000_000;
const T0: u64 = 1_700_000_000_000 * MS;
const GOP: u64 = 60;
/// 4 Mbps at 30 fps: 16.9 KB per access unit on average; the key frame 4× a delta frame.
const AVERAGE_AU: usize = 16_900;
const AAC_FRAME: usize = 341; // 128 kbps at 46.875 frames/s

fn access_unit(format: NalFormat, key: bool, slice_len: usize, seed: u64) -> Bytes {
    let aud: &[u8] = &[0x09, 0x10];
    let slice = slice_nal(if key { 0x65 } else { 0x41 }, slice_len, seed);
    let nals: Vec<&[u8]> = if key {
        vec![aud, &SPS_1080P, &PPS, &slice]
    } else {
        vec![aud, &slice]
    };
    let mut out = Vec::new();
    for nal in nals {
        match format {
            NalFormat::AnnexB => out.extend_from_slice(&[0, 0, 0, 1]),
            NalFormat::LengthPrefixed => out.extend_from_slice(&(nal.len() as u32).to_be_bytes()),
        }
        out.extend_from_slice(nal);
    }
    let bytes = Bytes::from(out);
    drop(bytes.clone()); // promote to a shared buffer once, as capture's buffers are
    bytes
}

/// One GOP of access units: a key frame and 59 deltas, 16.9 KB on average.
fn gop(format: NalFormat) -> Vec<Bytes> {
    let total = AVERAGE_AU * GOP as usize;
    let delta = total / (GOP as usize + 3);
    let key = total - delta * (GOP as usize - 1);
    (0..GOP)
        .map(|i| {
            if i == 0 {
                access_unit(format, true, key - 50, i)
            } else {
                access_unit(format, false, delta - 12, i)
            }
        })
        .collect()
}

#[derive(Default)]
struct NullSink {
    bytes: u64,
}

impl MuxSink for NullSink {
    fn stream_header(&mut self, header: &Bytes) -> io::Result<()> {
        self.bytes += header.len() as u64;
        Ok(())
    }
    fn fragment_start(&mut self, start: &FragmentStart) -> io::Result<()> {
        black_box(start);
        Ok(())
    }
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.bytes += bytes.len() as u64;
        Ok(())
    }
    fn write_payload(&mut self, payload: &Bytes) -> io::Result<()> {
        self.bytes += payload.len() as u64;
        Ok(())
    }
    fn fragment_end(&mut self, end: &FragmentEnd) -> io::Result<()> {
        black_box(end);
        Ok(())
    }
    fn stream_end(&mut self, trailer: &[u8]) -> io::Result<()> {
        self.bytes += trailer.len() as u64;
        Ok(())
    }
}

fn muxer(tracks: Vec<TrackSpec>) -> FragmentMuxer {
    let tags = FragmentTags::new();
    tags.set_persistent("site", "warehouse-7").unwrap();
    FragmentMuxer::new(MuxerConfig::new(tracks), tags).unwrap()
}

fn video_frame(aus: &[Bytes], i: u64) -> Frame {
    let pts = T0 + i * 100 * MS / 3;
    Frame {
        track: 0,
        pts_ns: pts,
        dts_ns: pts,
        duration_ns: 33_333_333,
        key: i.is_multiple_of(GOP),
        data: aus[(i % GOP) as usize].clone(),
    }
}

fn bench_video(c: &mut Criterion) {
    let mut group = c.benchmark_group("video_1080p30");
    for (name, format) in [
        ("annexb", NalFormat::AnnexB),
        ("length_prefixed", NalFormat::LengthPrefixed),
    ] {
        let aus = gop(format);
        let avg = aus.iter().map(Bytes::len).sum::<usize>() / aus.len();
        // One iteration = one frame; throughput in frames/s and in bytes/s of input.
        for (unit, throughput) in [
            ("frames", Throughput::Elements(1)),
            ("bytes", Throughput::Bytes(avg as u64)),
        ] {
            group.throughput(throughput);
            group.bench_function(BenchmarkId::new(name, unit), |b| {
                let mut mux = muxer(vec![TrackSpec::video(Codec::H264, format)]);
                let mut sink = NullSink::default();
                let mut i = 0u64;
                b.iter(|| {
                    mux.push(video_frame(&aus, i), &mut sink).unwrap();
                    i += 1;
                });
                black_box(sink.bytes);
            });
        }
    }
    group.finish();
}

/// A/V at the real frame ratio (30 video : 46.875 AAC per second), frames in PTS order.
fn bench_av(c: &mut Criterion) {
    let mut group = c.benchmark_group("av_1080p30_aac48k");
    let aac = Bytes::from(vec![0x21u8; AAC_FRAME]);
    drop(aac.clone());
    for (name, format) in [
        ("annexb", NalFormat::AnnexB),
        ("length_prefixed", NalFormat::LengthPrefixed),
    ] {
        let aus = gop(format);
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new(name, "frames"), |b| {
            let mut mux = muxer(vec![
                TrackSpec::video(Codec::H264, format),
                TrackSpec::aac(48_000, 2),
            ]);
            let mut sink = NullSink::default();
            let (mut video_index, mut audio_index) = (0u64, 0u64);
            b.iter(|| {
                let video_pts = T0 + video_index * 100 * MS / 3;
                let audio_pts = T0 + audio_index * 1024 * 1_000_000_000 / 48_000;
                let frame = if audio_pts < video_pts {
                    audio_index += 1;
                    Frame {
                        track: 1,
                        pts_ns: audio_pts,
                        dts_ns: audio_pts,
                        duration_ns: 21_333_333,
                        key: true,
                        data: aac.clone(),
                    }
                } else {
                    video_index += 1;
                    video_frame(&aus, video_index - 1)
                };
                mux.push(frame, &mut sink).unwrap();
            });
            black_box(sink.bytes);
        });
    }
    group.finish();
}

criterion_group!(benches, bench_video, bench_av);
criterion_main!(benches);
