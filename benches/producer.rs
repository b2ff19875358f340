//! The producer's own cost, end to end: 1080p30-sized H.264 access units (≈ 4 Mbps, 16.9 KB
//! average, a key frame every 2 s) and 48 kHz AAC frames, pre-encoded and paced in real time,
//! through the real muxer → fragment log → PutMedia uploader → a local KVS endpoint that runs in
//! a separate process (so its cost is not counted).
//!
//! `cargo bench --features local-endpoint --bench producer` runs two phases and prints:
//! - `live`: BENCH_SECONDS (default 60) of real-time streaming; process CPU seconds per minute of
//!   video (getrusage) over the source alone (the same paced loop with frames dropped, the
//!   counterpart of a fakesink pipeline), VmRSS / VmHWM over the idle baseline taken before the
//!   log and the uploader exist, and per frame the latency from its payload reaching the log to
//!   hyper taking it from the PutMedia body to write (a `BodyObserver`). SEND_DELAY_MS sets
//!   `StreamSettings::send_delay`, WORKERS the tokio worker threads (default 1, as the daemon).
//! - `drain`: BACKLOG_SECONDS (default 300) of fragments written into the log faster than real
//!   time while no uploader runs (a 5-minute outage), then the uploader starts; reports
//!   fragments/s, MB/s and the time until every fragment is acknowledged.
//!
//! The library pieces are driven directly (the binary's capture needs a live GStreamer encode,
//! which would hide everything else: DESIGN.md "Performance targets").

use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kinesis_edge::aws::EnvLookup;
use kinesis_edge::buffer::{Budgets, FragmentLog, FragmentWriter};
use kinesis_edge::config::AwsConfig;
use kinesis_edge::media::{Codec, Frame, NalFormat};
use kinesis_edge::mkv::{
    FragmentEnd, FragmentMuxer, FragmentStart, FragmentTags, MuxSink, MuxerConfig, TrackSpec,
};
use kinesis_edge::service::access::kvs_access;
use kinesis_edge::upload::backoff::SplitMix64;
use kinesis_edge::upload::putmedia::{
    BodyObserver, PacingLimits, PutMediaDriver, StreamSettings, TimecodeType,
};
use kinesis_edge::upload::session::SessionConfig;
use tokio::sync::watch;

#[path = "support/synthetic_h264.rs"]
mod synthetic_h264;
use synthetic_h264::{PPS, SPS_1080P, slice_nal};

const FPS: u64 = 30;
const GOP: u64 = 60;
const FRAME_NS: u64 = 1_000_000_000 / FPS;
const AVERAGE_AU: usize = 16_900;
const AAC_FRAME: usize = 341;
const AAC_NS: u64 = 1024 * 1_000_000_000 / 48_000;
const KEY: &str = "AKIDBENCHPRODUCER";
const SECRET: &str = "bench-secret";
const MIB: u64 = 1024 * 1024;

/// AudioSpecificConfig: AAC-LC, 48 kHz, mono.
const ASC: [u8; 2] = [0x11, 0x88];

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// One GOP of length-prefixed access units, as a parser after `h264parse` hands them over.
fn gop() -> Vec<Bytes> {
    let total = AVERAGE_AU * GOP as usize;
    let delta = total / (GOP as usize + 3);
    let key = total - delta * (GOP as usize - 1);
    (0..GOP)
        .map(|i| {
            let mut out = Vec::new();
            let slice = if i == 0 {
                slice_nal(0x65, key - 50, i)
            } else {
                slice_nal(0x41, delta - 12, i)
            };
            let aud: &[u8] = &[0x09, 0x10];
            let nals: Vec<&[u8]> = if i == 0 {
                vec![aud, &SPS_1080P, &PPS, &slice]
            } else {
                vec![aud, &slice]
            };
            for nal in nals {
                out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                out.extend_from_slice(nal);
            }
            Bytes::from(out)
        })
        .collect()
}

fn muxer() -> BenchResult<FragmentMuxer> {
    let mut video = TrackSpec::video(Codec::H264, NalFormat::LengthPrefixed);
    video.width = 1920;
    video.height = 1080;
    video.codec_private = Some(Bytes::from(
        kinesis_edge::media::h264::AvcDecoderConfig::from_parameter_sets(&SPS_1080P, &PPS)?,
    ));
    let mut audio = TrackSpec::aac(48_000, 1);
    audio.codec_private = Some(Bytes::from_static(&ASC));
    let tags = FragmentTags::new();
    tags.set_persistent("bench", "producer")?;
    Ok(FragmentMuxer::new(
        MuxerConfig::new(vec![video, audio]),
        tags,
    )?)
}

/// The frames of `seconds` of video and audio from `t0_ns`, in presentation order.
struct Frames {
    gop: Vec<Bytes>,
    aac: Bytes,
    t0_ns: u64,
    video: u64,
    audio: u64,
}

impl Frames {
    fn new(t0_ns: u64) -> Self {
        Self {
            gop: gop(),
            aac: Bytes::from(slice_nal(0x21, AAC_FRAME, 7)),
            t0_ns,
            video: 0,
            audio: 0,
        }
    }

    /// Offset (ns from t0) of the next frame, and the frame.
    fn next(&mut self) -> (u64, Frame) {
        let video_at = self.video * FRAME_NS;
        let audio_at = self.audio * AAC_NS;
        if video_at <= audio_at {
            let index = (self.video % GOP) as usize;
            self.video += 1;
            let data = self.gop.get(index).cloned().unwrap_or_default();
            let pts = self.t0_ns + video_at;
            (
                video_at,
                Frame {
                    track: 0,
                    pts_ns: pts,
                    dts_ns: pts,
                    duration_ns: FRAME_NS,
                    key: index == 0,
                    data,
                },
            )
        } else {
            self.audio += 1;
            let pts = self.t0_ns + audio_at;
            (
                audio_at,
                Frame {
                    track: 1,
                    pts_ns: pts,
                    dts_ns: pts,
                    duration_ns: AAC_NS,
                    key: true,
                    data: self.aac.clone(),
                },
            )
        }
    }
}

/// When each frame payload reached the log, keyed by the payload's address and length: the
/// body carries the very same `Bytes` (no copy), so the body observer finds its frame by them.
/// Equal payloads (the one AAC frame, each GOP's frames again 2 s later) queue in order.
type WrittenAt = HashMap<(usize, usize), VecDeque<Instant>>;

#[derive(Clone, Default)]
struct PayloadTimes {
    written: Arc<Mutex<WrittenAt>>,
    latencies_ms: Arc<Mutex<Vec<f64>>>,
}

impl PayloadTimes {
    fn record(&self, payload: &Bytes) {
        if let Ok(mut written) = self.written.lock() {
            written
                .entry((payload.as_ptr() as usize, payload.len()))
                .or_default()
                .push_back(Instant::now());
        }
    }

    fn observer(&self) -> BodyObserver {
        let times = self.clone();
        BodyObserver::new(move |chunk: &Bytes| {
            let taken = Instant::now();
            let key = (chunk.as_ptr() as usize, chunk.len());
            let written = times
                .written
                .lock()
                .ok()
                .and_then(|mut written| written.get_mut(&key).and_then(VecDeque::pop_front));
            if let (Some(written), Ok(mut latencies)) = (written, times.latencies_ms.lock()) {
                let ms = taken.saturating_duration_since(written).as_secs_f64() * 1e3;
                latencies.push(ms);
            }
        })
    }

    /// Payloads noted but never seen in a body: nonzero means the matching went wrong (a
    /// payload copied, or sent twice) and the latencies cannot be trusted.
    fn unmatched(&self) -> usize {
        self.written
            .lock()
            .map(|w| w.values().map(VecDeque::len).sum())
            .unwrap_or(usize::MAX)
    }

    fn latencies_ms(&self) -> Vec<f64> {
        self.latencies_ms
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }
}

/// The log's writer, noting when each payload reaches it.
struct TimedSink {
    writer: FragmentWriter,
    payloads: PayloadTimes,
}

impl MuxSink for TimedSink {
    fn stream_header(&mut self, header: &Bytes) -> std::io::Result<()> {
        self.writer.stream_header(header)
    }
    fn fragment_start(&mut self, start: &FragmentStart) -> std::io::Result<()> {
        self.writer.fragment_start(start)
    }
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write(bytes)
    }
    fn write_payload(&mut self, payload: &Bytes) -> std::io::Result<()> {
        // Noted first: the uploader may take it before `write_payload` even returns.
        self.payloads.record(payload);
        self.writer.write_payload(payload)
    }
    fn fragment_end(&mut self, end: &FragmentEnd) -> std::io::Result<()> {
        self.writer.fragment_end(end)
    }
    fn stream_end(&mut self, trailer: &[u8]) -> std::io::Result<()> {
        self.writer.stream_end(trailer)
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we own.
    let usage = unsafe {
        let mut usage: libc_rusage = std::mem::zeroed();
        getrusage(0, &mut usage);
        usage
    };
    let tv = |t: Timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Timeval {
    tv_sec: i64,
    tv_usec: i64,
}

#[repr(C)]
struct libc_rusage {
    ru_utime: Timeval,
    ru_stime: Timeval,
    rest: [i64; 14],
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

unsafe extern "C" {
    fn getrusage(who: i32, usage: *mut libc_rusage) -> i32;
    fn clock_gettime(clock: i32, time: *mut Timespec) -> i32;
}

/// CPU seconds of the calling thread (CLOCK_THREAD_CPUTIME_ID).
fn thread_cpu_seconds() -> f64 {
    let mut time = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own.
    unsafe {
        clock_gettime(3, &mut time);
    }
    time.tv_sec as f64 + time.tv_nsec as f64 / 1e9
}

/// (VmRSS, VmHWM) in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Endpoint {
    child: Child,
    url: String,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_endpoint(data_dir: &std::path::Path) -> BenchResult<Endpoint> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(env!("CARGO_BIN_EXE_kinesis-edge"))
        .args(["local-endpoint", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--access-key", KEY, "--secret-key", SECRET])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(Endpoint { child, url });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("the local endpoint did not start".into())
}

fn driver(
    url: &str,
    stream: &str,
    reader: kinesis_edge::buffer::FragmentReader,
) -> BenchResult<PutMediaDriver> {
    let url = url.to_owned();
    let env: EnvLookup = Arc::new(move |name: &str| match name {
        "AWS_ACCESS_KEY_ID" => Some(KEY.to_owned()),
        "AWS_SECRET_ACCESS_KEY" => Some(SECRET.to_owned()),
        "AWS_REGION" => Some("us-west-2".to_owned()),
        "AWS_ENDPOINT_URL" => Some(url.clone()),
        _ => None,
    });
    let access = kvs_access(&AwsConfig::default(), &env, Duration::from_secs(5))?;
    let mut session = SessionConfig::new(stream);
    session.create = Some(kinesis_edge::upload::session::CreateStreamSettings {
        device_name: Some("bench".to_owned()),
        media_type: Some("video/h264,audio/aac".to_owned()),
        kms_key_id: None,
        data_retention_in_hours: 2,
    });
    let settings = StreamSettings {
        session,
        timecode_type: TimecodeType::Absolute,
        pacing: PacingLimits::default(),
        send_delay: Duration::from_millis(env_secs("SEND_DELAY_MS", 0)),
    };
    Ok(PutMediaDriver::new(
        Arc::new(access),
        settings,
        reader,
        Box::new(SplitMix64::new(42)),
    )?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sleeps until `offset_ns` after `start` (the frame's capture time in a real-time run).
fn sleep_until_due(start: Instant, offset_ns: u64) {
    let due = start + Duration::from_nanos(offset_ns);
    if let Some(wait) = due.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}

/// CPU seconds per minute of the frame source alone: the same real-time loop with every frame
/// dropped, the stand-in for a fakesink pipeline that the producer's own cost is measured over.
fn source_only(seconds: u64) -> f64 {
    let mut frames = Frames::new(now_ns());
    let cpu_start = thread_cpu_seconds();
    let start = Instant::now();
    let end = seconds * 1_000_000_000;
    loop {
        let (offset, frame) = frames.next();
        if offset >= end {
            break;
        }
        sleep_until_due(start, offset);
        drop(std::hint::black_box(frame));
    }
    (thread_cpu_seconds() - cpu_start) * 60.0 / seconds as f64
}

fn live(runtime: &tokio::runtime::Runtime, seconds: u64) -> BenchResult<()> {
    let source_per_minute = source_only(seconds.min(20));
    println!(
        "source alone (frames paced and dropped, the fakesink stand-in): {source_per_minute:.3} s CPU per minute"
    );
    let dir = tempfile::tempdir()?;
    let endpoint = start_endpoint(&dir.path().join("endpoint"))?;
    let mut frames = Frames::new(now_ns());
    let (rss_idle, _) = rss_kib();
    let cpu_idle = cpu_seconds();

    let budgets = Budgets {
        memory_bytes: 16 * MIB,
        disk_bytes: 512 * MIB,
        fsync: true,
    };
    let (writer, reader, _) = FragmentLog::open(dir.path().join("buffer"), budgets, "bench-live")?;
    let mut driver = driver(&endpoint.url, "bench-live", reader)?;
    let payloads = PayloadTimes::default();
    driver.observe_body(payloads.observer());
    let mut writer = TimedSink {
        writer,
        payloads: payloads.clone(),
    };
    let (stop_tx, stop_rx) = watch::channel(None);
    let upload = runtime.spawn(driver.run(stop_rx));

    // Sampler: peak RSS every 100 ms (its own CPU time is subtracted).
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut peak_rss = 0;
            let cpu_start = thread_cpu_seconds();
            while !done.load(Ordering::Relaxed) {
                peak_rss = peak_rss.max(rss_kib().0);
                std::thread::sleep(Duration::from_millis(100));
            }
            (peak_rss, thread_cpu_seconds() - cpu_start)
        })
    };

    let start = Instant::now();
    let mut muxer = muxer()?;
    let end = seconds * 1_000_000_000;
    let mut mid_rss = 0;
    loop {
        let (offset, frame) = frames.next();
        if offset >= end {
            break;
        }
        sleep_until_due(start, offset);
        muxer.push(frame, &mut writer)?;
        if mid_rss == 0 && offset >= end / 2 {
            mid_rss = rss_kib().0;
        }
    }
    muxer.finish(&mut writer)?;
    drop(writer);
    let _ = stop_tx.send(Some(Instant::now() + Duration::from_secs(10)));
    let summary = runtime.block_on(upload)?;
    let cpu = cpu_seconds() - cpu_idle;
    let (rss_end, hwm) = rss_kib();
    done.store(true, Ordering::Relaxed);
    let (peak_rss, sampler_cpu) = sampler.join().map_err(|_| "sampler panicked")?;
    let mut delays = payloads.latencies_ms();
    delays.sort_by(f64::total_cmp);
    println!("live: {seconds} s of 1080p30 H.264 (≈4 Mbps) + 48 kHz AAC, real time");
    let producer_cpu = cpu - sampler_cpu;
    println!(
        "  cpu {:.3} s total, sampler thread {:.3} s, producer {:.3} s = {:.3} s per minute of video",
        cpu,
        sampler_cpu,
        producer_cpu,
        producer_cpu * 60.0 / seconds as f64
    );
    println!(
        "  producer over the source alone: {:.3} s per minute of video",
        producer_cpu * 60.0 / seconds as f64 - source_per_minute
    );
    println!(
        "  rss idle {:.1} MB, mid-run {:.1} MB (+{:.1}), peak sampled {:.1} MB (+{:.1}), end {:.1} MB, VmHWM {:.1} MB",
        rss_idle as f64 / 1024.0,
        mid_rss as f64 / 1024.0,
        (mid_rss as f64 - rss_idle as f64) / 1024.0,
        peak_rss as f64 / 1024.0,
        (peak_rss as f64 - rss_idle as f64) / 1024.0,
        rss_end as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "  frame payload written to the log → taken by hyper to write: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} frames",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(f64::NAN),
        delays.len()
    );
    let unmatched = payloads.unmatched();
    if unmatched > 0 {
        println!(
            "  WARNING: {unmatched} payloads written were never seen in a body: latencies unreliable"
        );
    }
    println!(
        "  upload: {} fragments sent, {} acked, {} bytes, drained {}",
        summary.fragments_sent, summary.fragments_acked, summary.bytes_sent, summary.drained
    );
    Ok(())
}

fn drain(runtime: &tokio::runtime::Runtime, seconds: u64) -> BenchResult<()> {
    let dir = tempfile::tempdir()?;
    let endpoint = start_endpoint(&dir.path().join("endpoint"))?;
    let budgets = Budgets {
        memory_bytes: 16 * MIB,
        disk_bytes: 1024 * MIB,
        fsync: false,
    };
    let (mut writer, reader, _) =
        FragmentLog::open(dir.path().join("buffer"), budgets, "bench-drain")?;
    // The outage: `seconds` of media, timestamped as if captured over the last `seconds`.
    let mut frames = Frames::new(now_ns() - seconds * 1_000_000_000);
    let mut muxer = muxer()?;
    // FILL_SPEEDUP: how many times faster than real time the outage is written (0: unpaced).
    let speedup = env_secs("FILL_SPEEDUP", 50);
    let fill = Instant::now();
    loop {
        let (offset, frame) = frames.next();
        if offset >= seconds * 1_000_000_000 {
            break;
        }
        if let Some(scaled) = offset.checked_div(speedup) {
            let due = fill + Duration::from_nanos(scaled);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        muxer.push(frame, &mut writer)?;
    }
    muxer.finish(&mut writer)?;
    writer.sync()?;
    drop(writer);
    let stats = reader.stats_handle();
    let backlog = stats.stats();
    println!("  log after the outage: {backlog:?}");
    println!(
        "drain: {seconds} s backlog written in {:.1} s: {} fragments",
        fill.elapsed().as_secs_f64(),
        backlog.fragments_written
    );
    let driver = driver(&endpoint.url, "bench-drain", reader)?;
    let counters = driver.counters();
    let (stop_tx, stop_rx) = watch::channel(None);
    let start = Instant::now();
    let upload = runtime.spawn(driver.run(stop_rx));
    let mut last_print = start;
    loop {
        let now = counters.snapshot();
        // Fragments evicted while the outage was written faster than the disk took them are
        // gone (counted): caught up means nothing is left in the log.
        let left = stats.stats().fragments_buffered;
        if left == 0 || start.elapsed() > Duration::from_secs(120) {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            println!(
                "  t={:.0}s sent {} acked {} ({:.1} MB)",
                start.elapsed().as_secs_f64(),
                now.fragments_sent,
                now.fragments_acked,
                now.bytes_sent as f64 / 1e6
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!("  log at the end: {:?}", stats.stats());
    let snap = counters.snapshot();
    let _ = stop_tx.send(Some(Instant::now() + Duration::from_secs(5)));
    let _ = runtime.block_on(upload)?;
    println!(
        "  caught up in {:.1} s: {} fragments acked, {:.2} fragments/s, {:.2} MB/s ({:.1} MB)",
        elapsed,
        snap.fragments_acked,
        snap.fragments_acked as f64 / elapsed,
        snap.bytes_sent as f64 / 1e6 / elapsed,
        snap.bytes_sent as f64 / 1e6
    );
    Ok(())
}

fn main() -> BenchResult<()> {
    // RUST_LOG=info (a level) shows the uploader's decisions on stderr.
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|level| level.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::ERROR);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env_secs("WORKERS", 1) as usize)
        .enable_all()
        .build()?;
    let phase = std::env::var("BENCH_PHASE").unwrap_or_default();
    if phase.is_empty() || phase == "live" {
        live(&runtime, env_secs("BENCH_SECONDS", 60))?;
    }
    if phase.is_empty() || phase == "drain" {
        drain(&runtime, env_secs("BACKLOG_SECONDS", 300))?;
    }
    Ok(())
}
