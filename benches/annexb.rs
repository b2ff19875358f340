//! Annex-B scanning throughput on a real x264 key frame (AUD, SPS, PPS, SEI, IDR; 16 877 bytes).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kinesis_edge::media::annexb::{
    annexb_to_length_prefixed, length_prefixed_to_annexb, nal_ranges,
};
use kinesis_edge::media::{Codec, NalFormat, VideoParameters};

const KEY_FRAME: &[u8] = include_bytes!("../tests/fixtures/media/h264-baseline-896x504-key.h264");

fn annexb(c: &mut Criterion) {
    let mut group = c.benchmark_group("annexb");
    group.throughput(Throughput::Bytes(KEY_FRAME.len() as u64));
    group.bench_function("nal_ranges", |b| {
        b.iter(|| {
            let mut total = 0usize;
            for range in nal_ranges(black_box(KEY_FRAME)) {
                total += range.map_or(0, |r| r.len());
            }
            total
        })
    });
    let mut length_prefixed = Vec::with_capacity(KEY_FRAME.len() + 64);
    group.bench_function("annexb_to_length_prefixed", |b| {
        b.iter(|| {
            length_prefixed.clear();
            annexb_to_length_prefixed(black_box(KEY_FRAME), &mut length_prefixed)
                .map(|()| length_prefixed.len())
        })
    });
    let mut converted = Vec::new();
    let _ = annexb_to_length_prefixed(KEY_FRAME, &mut converted);
    let mut back = Vec::with_capacity(KEY_FRAME.len() + 64);
    group.bench_function("length_prefixed_to_annexb", |b| {
        b.iter(|| {
            back.clear();
            length_prefixed_to_annexb(black_box(&converted), &mut back).map(|()| back.len())
        })
    });
    group.bench_function("video_parameters_from_key_frame", |b| {
        b.iter(|| {
            VideoParameters::from_key_frame(Codec::H264, NalFormat::AnnexB, black_box(KEY_FRAME))
        })
    });
    group.finish();
}

criterion_group!(benches, annexb);
criterion_main!(benches);
