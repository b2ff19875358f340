//! Fragment log throughput: append + close of 1080p30-like fragments (2 s ≈ 1 MB, 60 frames of
//! ≈ 16.9 KB): the muxer thread's cost alone, and until durable on disk with fsync on and off;
//! and the recovery scan at open.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kinesis_edge::buffer::{Budgets, FragmentLog};
use kinesis_edge::mkv::{FragmentEnd, FragmentStart, MuxSink};
use std::time::{Duration, Instant};

const FRAMES: usize = 60;
const FRAME_BYTES: usize = 16_900;
const FRAGMENT_BYTES: u64 = (FRAMES * (FRAME_BYTES + 16)) as u64;

fn write_fragments(fsync: bool, fragments: u64) -> Duration {
    write_fragments_synced(fsync, fragments, false)
}

/// `sync_each`: wait until each fragment is durable before the next (the live pattern: one
/// fsync per fragment), else only at the end (the disk thread batches what queued up).
fn write_fragments_synced(fsync: bool, fragments: u64, sync_each: bool) -> Duration {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("bench needs a temporary directory: {e}"),
    };
    // Memory holds the whole run: the writer outpaces the disk here (not at 0.5 MB/s live),
    // and nothing may be evicted before it is written.
    let budgets = Budgets {
        memory_bytes: 64 << 20,
        disk_bytes: 4 << 30,
        fsync,
    };
    let (mut writer, reader, _) = match FragmentLog::open(dir.path(), budgets, "bench") {
        Ok(log) => log,
        Err(e) => panic!("open: {e}"),
    };
    let start = Instant::now();
    let written = if sync_each {
        (0..fragments).try_for_each(|n| {
            write_range(&mut writer, n, n + 1)?;
            writer.sync().map_err(std::io::Error::other)
        })
    } else {
        write_into(&mut writer, fragments)
    };
    if let Err(e) = written {
        panic!("write: {e}");
    }
    if let Err(e) = writer.sync() {
        panic!("sync: {e}");
    }
    let elapsed = start.elapsed();
    let stats = writer.stats();
    assert_eq!(
        (stats.fragments_evicted, stats.fragments_not_durable),
        (0, 0)
    );
    drop(reader);
    drop(writer);
    elapsed
}

/// Writes `fragments` fragments the way the muxer does: per frame a block header by `write`,
/// the payload by reference.
fn write_into(writer: &mut impl MuxSink, fragments: u64) -> std::io::Result<()> {
    write_range(writer, 0, fragments)
}

/// Fragments `first..end`; the stream header goes first when `first` is 0.
fn write_range(writer: &mut impl MuxSink, first: u64, end: u64) -> std::io::Result<()> {
    let payload = Bytes::from(vec![0x5au8; FRAME_BYTES]);
    let block_header = [0xa3u8; 16];
    if first == 0 {
        writer.stream_header(&Bytes::from_static(b"\x1a\x45\xdf\xa3 stream header"))?;
    }
    for n in first..end {
        let pts = 1_700_000_000_000_000_000 + n * 2_000_000_000;
        writer.fragment_start(&FragmentStart {
            sequence: n,
            timecode_ms: pts / 1_000_000,
            pts_ns: pts,
        })?;
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
}

/// The muxer thread's share alone: MuxSink calls into a memory-only log (no disk wait).
fn write_memory_only(fragments: u64) -> Duration {
    let budgets = Budgets {
        memory_bytes: 1 << 30,
        disk_bytes: 0,
        fsync: false,
    };
    let (mut writer, reader, _) = match FragmentLog::open("unused", budgets, "bench") {
        Ok(log) => log,
        Err(e) => panic!("open: {e}"),
    };
    let start = Instant::now();
    if let Err(e) = write_into(&mut writer, fragments) {
        panic!("write: {e}");
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
    group.bench_function("1MB_fragments_writer_side_only", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| write_memory_only(16)).sum());
    });
    for fsync in [false, true] {
        let name = if fsync {
            "1MB_fragments_fsync_on"
        } else {
            "1MB_fragments_fsync_off"
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| write_fragments(fsync, 16)).sum());
        });
    }
    group.bench_function("1MB_fragments_fsync_on_durable_each", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| write_fragments_synced(true, 16, true))
                .sum()
        });
    });
    group.finish();
}

/// Opening a log holding 64 fragments (≈ 64 MB): every record is read and CRC-checked. The
/// files are in the page cache (as after a process crash); after a power cut the disk's read
/// speed bounds this instead.
fn bench_recovery(c: &mut Criterion) {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("bench needs a temporary directory: {e}"),
    };
    {
        let budgets = Budgets {
            memory_bytes: 128 << 20,
            disk_bytes: 4 << 30,
            fsync: false,
        };
        let (mut writer, _reader, _) = match FragmentLog::open(dir.path(), budgets, "bench") {
            Ok(log) => log,
            Err(e) => panic!("open: {e}"),
        };
        if let Err(e) = write_into(&mut writer, 64) {
            panic!("write: {e}");
        }
        if let Err(e) = writer.sync() {
            panic!("sync: {e}");
        }
    }
    let mut group = c.benchmark_group("fragment_log_recovery");
    group.throughput(Throughput::Bytes(FRAGMENT_BYTES * 64));
    group.sample_size(10);
    group.bench_function("open_64MB_log", |b| {
        b.iter(|| {
            let budgets = Budgets {
                memory_bytes: 8 << 20,
                disk_bytes: 4 << 30,
                fsync: false,
            };
            match FragmentLog::open(dir.path(), budgets, "bench") {
                Ok((_, _, report)) => assert_eq!(report.fragments_recovered, 64),
                Err(e) => panic!("open: {e}"),
            }
        });
    });
    group.finish();
}

criterion_group!(benches, bench_append_close, bench_recovery);
criterion_main!(benches);
