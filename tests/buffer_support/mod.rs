//! Shared helpers of the fragment-log integration tests: synthetic fragments written through
//! the `MuxSink` contract, and a reader loop that collects what the log hands out.
#![allow(dead_code)]

use bytes::Bytes;
use kinesis_edge::buffer::{
    FragmentMeta, FragmentReader, FragmentWriter, ReadResult, StreamSession,
};
use kinesis_edge::mkv::{FragmentEnd, FragmentStart, MuxSink};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// PTS of fragment 0, ns since the epoch.
pub const BASE_PTS_NS: u64 = 1_700_000_000_000_000_000;
/// Fragment duration.
pub const FRAGMENT_NS: u64 = 2_000_000_000;

/// A stream header that differs per `seed`.
pub fn stream_header(seed: u8) -> Bytes {
    let mut h = b"\x1a\x45\xdf\xa3\x18\x53\x80\x67 segment info + tracks ".to_vec();
    h.extend(std::iter::repeat_n(seed, 40));
    Bytes::from(h)
}

/// The bytes of frame `frame` of fragment `seq`: deterministic, different everywhere.
pub fn frame_payload(seq: u64, frame: usize, len: usize) -> Bytes {
    let seed = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (frame as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    Bytes::from(
        (0..len)
            .map(|i| (seed.wrapping_add(i as u64 * 0x2545_f491) >> 17) as u8)
            .collect::<Vec<u8>>(),
    )
}

pub fn timecode_ms(seq: u64) -> u64 {
    (BASE_PTS_NS + seq * FRAGMENT_NS) / 1_000_000
}

/// Starts fragment `seq`: its tags/cluster header goes in with `write`.
pub fn start_fragment(w: &mut impl MuxSink, seq: u64) -> Vec<u8> {
    let pts = BASE_PTS_NS + seq * FRAGMENT_NS;
    ok(w.fragment_start(&FragmentStart {
        sequence: seq,
        timecode_ms: timecode_ms(seq),
        pts_ns: pts,
    }));
    let cluster = format!("TAGS+CLUSTER {seq:08}");
    ok(w.write(cluster.as_bytes()));
    cluster.into_bytes()
}

/// Writes one frame (block header by `write`, payload by `write_payload`).
pub fn write_frame(w: &mut impl MuxSink, seq: u64, frame: usize, len: usize) -> Vec<u8> {
    let header = format!("BLK{frame:05}");
    ok(w.write(header.as_bytes()));
    let payload = frame_payload(seq, frame, len);
    ok(w.write_payload(&payload));
    let mut out = header.into_bytes();
    out.extend_from_slice(&payload);
    out
}

/// Closes fragment `seq` that holds `bytes` bytes and `frames` frames.
pub fn end_fragment(w: &mut impl MuxSink, seq: u64, frames: usize, bytes: usize) {
    let pts = BASE_PTS_NS + seq * FRAGMENT_NS;
    ok(w.fragment_end(&FragmentEnd {
        sequence: seq,
        timecode_ms: timecode_ms(seq),
        frames: frames as u32,
        bytes: bytes as u64,
        first_pts_ns: pts,
        last_pts_ns: pts + FRAGMENT_NS - 33_000_000,
        tracks_present: 1,
    }));
}

/// Writes a whole fragment and returns its bytes.
pub fn write_fragment(w: &mut impl MuxSink, seq: u64, frames: usize, frame_len: usize) -> Vec<u8> {
    let mut bytes = start_fragment(w, seq);
    for frame in 0..frames {
        bytes.extend(write_frame(w, seq, frame, frame_len));
    }
    end_fragment(w, seq, frames, bytes.len());
    bytes
}

/// Writes the stream header then `count` fragments starting at `first_seq`.
pub fn write_stream(
    w: &mut FragmentWriter,
    header_seed: u8,
    first_seq: u64,
    count: u64,
    frames: usize,
    frame_len: usize,
) -> Vec<Vec<u8>> {
    ok(w.stream_header(&stream_header(header_seed)));
    (first_seq..first_seq + count)
        .map(|seq| write_fragment(w, seq, frames, frame_len))
        .collect()
}

fn ok(result: std::io::Result<()>) {
    if let Err(e) = result {
        panic!("MuxSink call failed: {e}");
    }
}

/// What the reader handed out, grouped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Session(Arc<StreamSession>),
    Fragment { meta: FragmentMeta, bytes: Vec<u8> },
    Aborted(u64),
    SessionEnd(Bytes),
    Finished,
}

/// Reads until `fragments` whole fragments were handed out, or the reader is finished, or
/// nothing comes for `idle`. Waits through `Pending` (disk loads, live data).
pub fn collect(reader: &mut FragmentReader, fragments: usize, idle: Duration) -> Vec<Event> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let mut events = Vec::new();
    let mut current: Option<(FragmentMeta, Vec<u8>)> = None;
    let mut done = 0;
    let mut last_progress = Instant::now();
    while done < fragments {
        match reader.next_chunk() {
            ReadResult::Session(s) => events.push(Event::Session(s)),
            ReadResult::FragmentStart(meta) => {
                assert!(current.is_none(), "FragmentStart inside a fragment");
                current = Some((meta, Vec::new()));
            }
            ReadResult::Chunk(chunk) => match current.as_mut() {
                Some((_, bytes)) => bytes.extend_from_slice(&chunk),
                None => panic!("Chunk outside a fragment"),
            },
            ReadResult::FragmentEnd(id) => match current.take() {
                Some((meta, bytes)) => {
                    assert_eq!(meta.id, id);
                    events.push(Event::Fragment { meta, bytes });
                    done += 1;
                }
                None => panic!("FragmentEnd outside a fragment"),
            },
            ReadResult::FragmentAborted(id) => {
                current = None;
                events.push(Event::Aborted(id.0));
            }
            ReadResult::SessionEnd { trailer, .. } => events.push(Event::SessionEnd(trailer)),
            ReadResult::Finished => {
                events.push(Event::Finished);
                break;
            }
            ReadResult::Pending => {
                let waited = rt.block_on(async {
                    tokio::time::timeout(Duration::from_millis(50), reader.wait()).await
                });
                if waited.is_ok() {
                    last_progress = Instant::now();
                } else if last_progress.elapsed() > idle {
                    break;
                }
                continue;
            }
        }
        last_progress = Instant::now();
    }
    events
}

/// Just the fragments, as (id, bytes).
pub fn fragments_of(events: &[Event]) -> Vec<(u64, Vec<u8>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Fragment { meta, bytes } => Some((meta.id.0, bytes.clone())),
            _ => None,
        })
        .collect()
}

/// Copies a log directory as a SIGKILL would leave it: every byte the process wrote is in the
/// files (the page cache survives a process kill), nothing of what it held in memory.
pub fn snapshot_dir(from: &std::path::Path, to: &std::path::Path) {
    if let Err(e) = std::fs::create_dir_all(to) {
        panic!("create {}: {e}", to.display());
    }
    let entries = match std::fs::read_dir(from) {
        Ok(entries) => entries,
        Err(e) => panic!("list {}: {e}", from.display()),
    };
    for entry in entries.flatten() {
        if let Err(e) = std::fs::copy(entry.path(), to.join(entry.file_name())) {
            panic!("copy {}: {e}", entry.path().display());
        }
    }
}

/// A `MuxSink` that just keeps the fragment bytes: the expected content of a fragment.
#[derive(Debug, Default)]
pub struct Recorder(pub Vec<u8>);

impl MuxSink for Recorder {
    fn stream_header(&mut self, _header: &Bytes) -> std::io::Result<()> {
        Ok(())
    }
    fn fragment_start(&mut self, _start: &FragmentStart) -> std::io::Result<()> {
        self.0.clear();
        Ok(())
    }
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
    fn write_payload(&mut self, payload: &Bytes) -> std::io::Result<()> {
        self.0.extend_from_slice(payload);
        Ok(())
    }
    fn fragment_end(&mut self, _end: &FragmentEnd) -> std::io::Result<()> {
        Ok(())
    }
    fn stream_end(&mut self, _trailer: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bytes `write_fragment(_, seq, frames, frame_len)` produces.
pub fn expected_fragment(seq: u64, frames: usize, frame_len: usize) -> Vec<u8> {
    let mut recorder = Recorder::default();
    write_fragment(&mut recorder, seq, frames, frame_len)
}
