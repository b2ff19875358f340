//! The uploader's own cost on the way out: muxer → fragment log → driver → body channel →
//! hyper → TCP loopback, measured where the bytes arrive.
//!
//! - `frame → socket`: one 1080p30-sized frame (16.9 KB, a 100 KB key frame every 2 s) pushed
//!   into the muxer until the server has read its last byte; frames one after the other with
//!   the pacing limits lifted, so this is the path's latency with nothing queued. A 30 fps
//!   run (as a camera delivers) also prints p50 / p99.
//! - `backlog drain`: 30 s of that stream waiting in the log (an outage), then the time until
//!   the server has read it all: the pacing limits (≤ 5 fragments/s, ≤ 12.5 MB/s) decide.
//!
//! The server is a minimal HTTP/1.1 fake on 127.0.0.1: DescribeStream says ACTIVE,
//! GetDataEndpoint names itself, PutMedia answers 200 and reads the body, recording when each
//! frame's marker (a unique filler NAL at the end of the frame) arrives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use kinesis_edge::aws::{
    ClockSkew, Credentials, CredentialsCache, DEFAULT_REFRESH_BEFORE, StaticProvider,
};
use kinesis_edge::buffer::{Budgets, FragmentLog, FragmentWriter};
use kinesis_edge::media::{Codec, Frame, NalFormat};
use kinesis_edge::mkv::{FragmentMuxer, FragmentTags, MuxerConfig, TrackSpec};
use kinesis_edge::upload::backoff::SplitMix64;
use kinesis_edge::upload::putmedia::{
    KvsAccess, PacingLimits, PutMediaDriver, StreamSettings, TimecodeType,
};
use kinesis_edge::upload::session::SessionConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY_FRAME: &[u8] = include_bytes!("../tests/fixtures/media/h264-baseline-896x504-key.h264");
const MARKER: [u8; 3] = [0xF1, 0xE2, 0xD3];
const FPS: u64 = 30;
const GOP: u64 = 60;
const FRAME_BYTES: usize = 16_900;
const KEY_FRAME_BYTES: usize = 100_000;

/// When each frame's marker arrived at the server.
#[derive(Default)]
struct Board {
    arrivals: Mutex<Vec<Option<Instant>>>,
    /// One more than the highest frame index seen.
    seen: AtomicU64,
    body_bytes: AtomicU64,
}

impl Board {
    fn record(&self, index: u64, at: Instant) {
        if let Ok(mut arrivals) = self.arrivals.lock() {
            let i = index as usize;
            if arrivals.len() <= i {
                arrivals.resize(i + 1, None);
            }
            if arrivals[i].is_none() {
                arrivals[i] = Some(at);
            }
        }
        self.seen.fetch_max(index + 1, Ordering::Release);
    }

    fn reset(&self) {
        if let Ok(mut arrivals) = self.arrivals.lock() {
            arrivals.clear();
        }
        self.seen.store(0, Ordering::Release);
        self.body_bytes.store(0, Ordering::Relaxed);
    }
}

fn marker_nal(index: u64) -> [u8; 12] {
    let mut digits = [0u8; 4];
    let mut rest = index;
    for digit in &mut digits {
        *digit = (rest % 250) as u8 + 1;
        rest /= 250;
    }
    [
        0, 0, 0, 1, 0x0C, MARKER[0], MARKER[1], MARKER[2], digits[0], digits[1], digits[2],
        digits[3],
    ]
}

fn decode_marker(digits: &[u8]) -> Option<u64> {
    let mut index = 0u64;
    for digit in digits.iter().rev() {
        index = index * 250 + u64::from(digit.checked_sub(1)?);
    }
    Some(index)
}

/// A frame of the right size ending in its marker NAL.
fn frame_payload(index: u64) -> Bytes {
    let key = index.is_multiple_of(GOP);
    let mut data = Vec::with_capacity(KEY_FRAME_BYTES + 16);
    if key {
        data.extend_from_slice(KEY_FRAME);
        data.extend_from_slice(&[0, 0, 0, 1, 0x0C]);
        data.resize(KEY_FRAME_BYTES, 0xAB);
    } else {
        data.extend_from_slice(&[0, 0, 0, 1, 0x41]);
        data.resize(FRAME_BYTES, 0xAB);
    }
    data.extend_from_slice(&marker_nal(index));
    Bytes::from(data)
}

async fn serve(listener: TcpListener, board: Arc<Board>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            return;
        };
        let _ = socket.set_nodelay(true);
        let board = Arc::clone(&board);
        let endpoint = format!(
            "http://{}",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        tokio::spawn(async move { connection(socket, board, endpoint).await });
    }
}

async fn connection(mut socket: TcpStream, board: Arc<Board>, endpoint: String) {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 8192];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        buf.drain(..head_end);
        if head.starts_with("post /putmedia") {
            put_media(socket, buf, board).await;
            return;
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < length {
            let mut chunk = [0u8; 8192];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        let body = if head.starts_with("post /getdataendpoint") {
            format!(r#"{{"DataEndpoint":"{endpoint}"}}"#)
        } else {
            r#"{"StreamInfo":{"StreamName":"bench","StreamARN":"arn:aws:kinesisvideo:us-west-2:1:stream/bench/1","Status":"ACTIVE","DataRetentionInHours":24}}"#.to_owned()
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if socket.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn put_media(mut socket: TcpStream, mut pending: Vec<u8>, board: Arc<Board>) {
    if socket
        .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let finder = memchr::memmem::Finder::new(&MARKER);
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let now = Instant::now();
        let mut from = 0;
        while let Some(pos) = finder.find(&pending[from..]) {
            let start = from + pos + MARKER.len();
            let Some(digits) = pending.get(start..start + 4) else {
                break;
            };
            if let Some(index) = decode_marker(digits) {
                board.record(index, now);
            }
            from = start + 4;
        }
        // Keep a tail that may hold a marker cut in two.
        let keep = pending.len().saturating_sub(from).min(MARKER.len() + 4);
        pending.drain(..pending.len() - keep);
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                board.body_bytes.fetch_add(n as u64, Ordering::Relaxed);
                pending.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

struct Rig {
    runtime: tokio::runtime::Runtime,
    board: Arc<Board>,
    url: String,
}

impl Rig {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let board = Arc::new(Board::default());
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        runtime.spawn(serve(listener, Arc::clone(&board)));
        Self {
            runtime,
            board,
            url,
        }
    }

    /// A log (memory only) with an uploader running over it.
    fn uploader(
        &self,
        pacing: PacingLimits,
    ) -> (FragmentWriter, tokio::sync::watch::Sender<Option<Instant>>) {
        let budgets = Budgets {
            memory_bytes: 256 << 20,
            disk_bytes: 0,
            fsync: false,
        };
        let (writer, reader, _) = FragmentLog::open("/nonexistent", budgets, "bench").expect("log");
        let provider = Arc::new(StaticProvider::new(Credentials::new(
            "AKIDBENCH",
            "bench",
            None,
            None,
        )));
        let access = KvsAccess::new(
            CredentialsCache::new(provider, DEFAULT_REFRESH_BEFORE),
            ClockSkew::new(),
            "us-west-2",
            self.url.clone(),
            Duration::from_secs(5),
        )
        .expect("access");
        let driver = PutMediaDriver::new(
            Arc::new(access),
            StreamSettings {
                session: SessionConfig::new("bench"),
                timecode_type: TimecodeType::Absolute,
                pacing,
                send_delay: Duration::ZERO,
            },
            reader,
            Box::new(SplitMix64::new(1)),
        )
        .expect("driver");
        let (stop, stop_rx) = tokio::sync::watch::channel(None);
        self.runtime.spawn(driver.run(stop_rx));
        (writer, stop)
    }
}

fn muxer() -> FragmentMuxer {
    let mut config = MuxerConfig::new(vec![TrackSpec::video(Codec::H264, NalFormat::AnnexB)]);
    config.fragment_duration = Duration::from_secs(2);
    FragmentMuxer::new(config, FragmentTags::new()).expect("muxer")
}

fn frame(index: u64, epoch_ns: u64) -> Frame {
    let step = 1_000_000_000 / FPS;
    let pts = epoch_ns + index * step;
    Frame {
        track: 0,
        pts_ns: pts,
        dts_ns: pts,
        duration_ns: step,
        key: index.is_multiple_of(GOP),
        data: frame_payload(index),
    }
}

fn epoch_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn wait_seen(board: &Board, count: u64, within: Duration) -> Instant {
    let until = Instant::now() + within;
    while board.seen.load(Ordering::Acquire) < count {
        assert!(Instant::now() < until, "frame {count} never arrived");
        std::thread::yield_now();
    }
    Instant::now()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn frame_to_socket(c: &mut Criterion) {
    let rig = Rig::new();
    // Frames pushed back to back would run into the service's pacing limits (that is what
    // `backlog drain` measures): lift them here to time the path itself.
    let unpaced = PacingLimits {
        max_fragments_per_s: 1_000_000,
        max_bytes_per_s: u64::MAX / 2,
        burst_window: Duration::from_secs(1),
    };
    let (mut writer, _stop) = rig.uploader(unpaced);
    let mut muxer = muxer();
    let origin = epoch_ns();
    // The connection opens with the first fragment.
    let mut next = 0u64;
    muxer.push(frame(next, origin), &mut writer).expect("push");
    next += 1;
    wait_seen(&rig.board, next, Duration::from_secs(10));

    // Paced like a camera: p50 / p99 over 10 s.
    let mut latencies = Vec::with_capacity(300);
    let start = Instant::now();
    for i in 0..10 * FPS {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / FPS);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let pushed = Instant::now();
        muxer.push(frame(next, origin), &mut writer).expect("push");
        next += 1;
        let arrived = wait_seen(&rig.board, next, Duration::from_secs(10));
        latencies.push(arrived - pushed);
    }
    latencies.sort();
    println!(
        "frame → socket at 30 fps (1080p30-sized, 4 Mbit/s): p50 {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );

    c.bench_function("frame muxed → last byte read by the server", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let pushed = Instant::now();
                muxer.push(frame(next, origin), &mut writer).expect("push");
                next += 1;
                total += wait_seen(&rig.board, next, Duration::from_secs(10)) - pushed;
            }
            total
        })
    });
}

fn backlog_drain(c: &mut Criterion) {
    let rig = Rig::new();
    let mut group = c.benchmark_group("backlog drain");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    let frames = 30 * FPS;
    group.bench_function("30 s of 1080p30 (15 fragments, 15 MB)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                rig.board.reset();
                let (mut writer, stop) = rig.uploader(PacingLimits::default());
                let mut muxer = muxer();
                let origin = epoch_ns();
                // The outage: everything is muxed before the uploader can send (it needs a
                // describe and an endpoint first; 30 s of frames take a few ms to mux).
                for i in 0..=frames {
                    muxer.push(frame(i, origin), &mut writer).expect("push");
                }
                let started = Instant::now();
                wait_seen(&rig.board, frames + 1, Duration::from_secs(60));
                let took = started.elapsed();
                total += took;
                let bytes = rig.board.body_bytes.load(Ordering::Relaxed);
                println!(
                    "drained {:.1} MB in {took:?}: {:.1} MB/s, {:.1} s of media per second",
                    bytes as f64 / 1e6,
                    bytes as f64 / 1e6 / took.as_secs_f64(),
                    30.0 / took.as_secs_f64()
                );
                stop.send_replace(Some(Instant::now()));
                drop(writer);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, frame_to_socket, backlog_drain);
criterion_main!(benches);
