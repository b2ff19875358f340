//! Fragment log throughput: append + close of 1080p30-like fragments (2 s ≈ 1 MB, 60 frames of
//! ≈ 16.9 KB), until durable on disk, with fsync on and off.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kinesis_edge::buffer::{Budgets, FragmentLog};
use kinesis_edge::mkv::{FragmentEnd, FragmentStart, MuxSink};
use std::time::{Duration, Instant};

const FRAMES: usize = 60;
const FRAME_BYTES: usize = 16_900;
const FRAGMENT_BYTES: u64 = (FRAMES * (FRAME_BYTES + 16)) as u64;

fn write_fragments(fsync: bool, fragments: u64) -> Duration {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("bench needs a temporary directory: {e}"),
    };
    let budgets = Budgets { memory_bytes: 8 << 20, disk_bytes: 4 << 30, fsync };
    let (mut writer, reader, _) = match FragmentLog::open(dir.path(), budgets, "bench") {
        Ok(log) => log,
        Err(e) => panic!("open: {e}"),
    };
    let payload = Bytes::from(vec![0x5au8; FRAME_BYTES]);
    let block_header = [0xa3u8; 16];
    let start = Instant::now();
    let result = (|| -> std::io::Result<()> {
        writer.stream_header(&Bytes::from_static(b"\x1a\x45\xdf\xa3 stream header"))?;
        for n in 0..fragments {
            let pts = 1_700_000_000_000_000_000 + n * 2_000_000_000;
            writer.fragment_start(&FragmentStart { sequence: n, timecode_ms: pts / 1_000_000, pts_ns: pts })?;
            for _ in 0..FRAMES {
                writer.write(&block_header)?;
                writer.write_payload(&payload)?;
            }
            writer.fragment_end(&FragmentEnd {
                sequence: n,
                timecode_ms: pts / 1_000_000,
                frames: FRAMES as u32,
                bytes: FRAGMENT_BYTES,
                first_pts_ns: pts,
                last_pts_ns: pts + 1_966_000_000,
                tracks_present: 1,
            })?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        panic!("write: {e}");
    }
    if let Err(e) = writer.sync() {
        panic!("sync: {e}");
    }
    let elapsed = start.elapsed();
    drop(reader);
    drop(writer);
    elapsed
}

fn bench_append_close(c: &mut Criterion) {
    let mut group = c.benchmark_group("fragment_log_append_close");
    group.throughput(Throughput::Bytes(FRAGMENT_BYTES * 16));
    group.sample_size(10);
    for fsync in [false, true] {
        let name = if fsync { "1MB_fragments_fsync_on" } else { "1MB_fragments_fsync_off" };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| write_fragments(fsync, 16)).sum());
        });
    }
    group.finish();
}

criterion_group!(benches, bench_append_close);
criterion_main!(benches);
