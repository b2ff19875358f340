//! The uploader (session + driver + fragment log) against the local endpoint's faults, in
//! process: a producer thread muxes a real H.264 key frame 20 times a second into 500 ms
//! fragments; the endpoint drops, stalls, refuses, throttles, answers ERROR ACKs or runs its
//! clock 10 minutes ahead. After each run every fragment the muxer closed must be PERSISTED
//! exactly once, except fragments the service refused for good (skipped and counted), and
//! duplicates may only be of fragments that never got their PERSISTED ACK.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kinesis_edge::aws::{
    ClockSkew, Credentials, CredentialsCache, DEFAULT_REFRESH_BEFORE, ProvideCredentials,
    ProvideFuture, StaticProvider,
};
use kinesis_edge::buffer::{Budgets, BufferStats, FragmentLog, FragmentWriter};
use kinesis_edge::local::kvs::ack::AckEventType;
use kinesis_edge::local::kvs::faults::{
    ErrorAckRequest, FaultRequest, HttpErrorRequest, StallRequest,
};
use kinesis_edge::local::kvs::store::FragmentRecord;
use kinesis_edge::local::kvs::{LocalEndpoint, LocalEndpointConfig};
use kinesis_edge::media::{Codec, Frame, NalFormat};
use kinesis_edge::mkv::{
    FragmentEnd, FragmentMuxer, FragmentStart, FragmentTags, MuxSink, MuxerConfig, TrackSpec,
};
use kinesis_edge::upload::backoff::SplitMix64;
use kinesis_edge::upload::putmedia::{
    BodyObserver, KvsAccess, PacingLimits, PutMediaDriver, StreamSettings, TimecodeType,
    UploadSummary,
};
use kinesis_edge::upload::session::SessionConfig;

const STREAM: &str = "yard";
const KEY_ID: &str = "AKIDFAULTS";
const SECRET: &str = "faults-secret";
const KEY_FRAME: &[u8] = include_bytes!("fixtures/media/h264-baseline-896x504-key.h264");
const FPS: u64 = 20;
/// Memory tier of the runs that do not test it: holds everything.
const MEMORY: u64 = 16 << 20;

/// Counts what the muxer closed, then hands everything to the log.
struct Tee {
    writer: FragmentWriter,
    closed: Arc<Mutex<BTreeMap<u64, u32>>>,
}

impl MuxSink for Tee {
    fn stream_header(&mut self, header: &Bytes) -> io::Result<()> {
        self.writer.stream_header(header)
    }
    fn fragment_start(&mut self, start: &FragmentStart) -> io::Result<()> {
        self.writer.fragment_start(start)
    }
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write(bytes)
    }
    fn write_payload(&mut self, payload: &Bytes) -> io::Result<()> {
        self.writer.write_payload(payload)
    }
    fn fragment_end(&mut self, end: &FragmentEnd) -> io::Result<()> {
        if let Ok(mut closed) = self.closed.lock() {
            closed.insert(end.timecode_ms, end.frames);
        }
        self.writer.fragment_end(end)
    }
    fn stream_end(&mut self, trailer: &[u8]) -> io::Result<()> {
        self.writer.stream_end(trailer)
    }
}

struct Run {
    endpoint: LocalEndpoint,
    _dir: tempfile::TempDir,
    summary: UploadSummary,
    closed: BTreeMap<u64, u32>,
    buffer: BufferStats,
}

/// Streams `seconds` of video; `faults` runs beside it (arming faults at chosen times);
/// then the uploader gets `flush` to finish.
async fn stream<F, Fut>(
    seconds: u64,
    memory_bytes: u64,
    initial: FaultRequest,
    tune: impl FnOnce(&mut SessionConfig),
    faults: F,
) -> Run
where
    F: FnOnce(Arc<LocalEndpoint>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let provider = static_keys();
    stream_signed_by(
        Source::RealTime { seconds },
        budgets(memory_bytes),
        initial,
        |uploader| tune(&mut uploader.settings.session),
        faults,
        provider,
        DEFAULT_REFRESH_BEFORE,
    )
    .await
}

/// [`stream`] with the uploader's credentials from `provider`, cached `refresh_before` ahead
/// of their expiry.
async fn stream_signed_by<F, Fut>(
    source: Source,
    budgets: Budgets,
    initial: FaultRequest,
    tune: impl FnOnce(&mut Uploader),
    faults: F,
    provider: Arc<dyn ProvideCredentials>,
    refresh_before: Duration,
) -> Run
where
    F: FnOnce(Arc<LocalEndpoint>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_max_level(
                filter
                    .parse::<tracing::Level>()
                    .unwrap_or(tracing::Level::WARN),
            )
            .with_test_writer()
            .try_init();
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = LocalEndpointConfig::new(dir.path().join("kvs"));
    config.credentials = vec![Credentials::new(KEY_ID, SECRET, None, None)];
    config.streams = vec![(STREAM.to_owned(), 24)];
    config.faults = initial;
    let endpoint = Arc::new(LocalEndpoint::start(config).await.expect("endpoint"));

    let (writer, reader, _) =
        FragmentLog::open(dir.path().join("buffer"), budgets, STREAM).expect("log");
    let buffer_stats = writer.stats_handle();
    let access = KvsAccess::new(
        CredentialsCache::new(provider, refresh_before),
        ClockSkew::new(),
        "us-west-2",
        endpoint.url(),
        Duration::from_secs(5),
    )
    .expect("access");
    let mut uploader = Uploader {
        settings: StreamSettings {
            session: SessionConfig::new(STREAM),
            timecode_type: TimecodeType::Absolute,
            pacing: PacingLimits::default(),
            send_delay: Duration::ZERO,
        },
        observer: None,
    };
    tune(&mut uploader);
    let mut driver = PutMediaDriver::new(
        Arc::new(access),
        uploader.settings,
        reader,
        Box::new(SplitMix64::new(7)),
    )
    .expect("driver");
    if let Some(observer) = uploader.observer {
        driver.observe_body(observer);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None);
    let uploader = tokio::spawn(driver.run(stop_rx));

    let closed = Arc::new(Mutex::new(BTreeMap::new()));
    let sink_closed = Arc::clone(&closed);
    let producer = std::thread::spawn(move || produce(writer, sink_closed, source));
    let fault_task = tokio::spawn(faults(Arc::clone(&endpoint)));

    tokio::task::spawn_blocking(move || producer.join())
        .await
        .expect("join")
        .expect("producer");
    fault_task.abort();
    stop_tx.send_replace(Some(Instant::now() + Duration::from_secs(12)));
    let summary = tokio::time::timeout(Duration::from_secs(15), uploader)
        .await
        .expect("uploader stops in time")
        .expect("uploader");
    let closed = closed.lock().map(|c| c.clone()).unwrap_or_default();
    let endpoint = Arc::try_unwrap(endpoint).expect("sole owner");
    Run {
        endpoint,
        _dir: dir,
        summary,
        closed,
        buffer: buffer_stats.stats(),
    }
}

/// The keys the endpoint accepts, never expiring.
fn static_keys() -> Arc<dyn ProvideCredentials> {
    Arc::new(StaticProvider::new(Credentials::new(
        KEY_ID, SECRET, None, None,
    )))
}

/// `memory_bytes` of memory, 64 MiB of disk, no fsync (the tests do not cut power).
fn budgets(memory_bytes: u64) -> Budgets {
    Budgets {
        memory_bytes,
        disk_bytes: 64 << 20,
        fsync: false,
    }
}

/// How the uploader of a run is set up.
struct Uploader {
    settings: StreamSettings,
    observer: Option<BodyObserver>,
}

/// What the producer thread writes into the log.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// `seconds` of real-time H.264 at 20 fps.
    RealTime { seconds: u64 },
    /// `fragments` fragments of 10 frames of `frame_bytes` each, written as fast as the muxer
    /// goes, timestamped as the last `fragments / 2` seconds (a backlog arriving at once).
    Burst { fragments: u64, frame_bytes: usize },
}

/// H.264 at 20 fps, a key frame every 10 frames (500 ms fragments): in real time, or for
/// [`Source::Burst`] as fast as the muxer goes with the key frame padded by a filler-data NAL
/// unit to `frame_bytes`.
fn produce(writer: FragmentWriter, closed: Arc<Mutex<BTreeMap<u64, u32>>>, source: Source) {
    let mut config = MuxerConfig::new(vec![TrackSpec::video(Codec::H264, NalFormat::AnnexB)]);
    config.fragment_duration = Duration::from_millis(500);
    let mut muxer = FragmentMuxer::new(config, FragmentTags::new()).expect("muxer");
    let mut sink = Tee { writer, closed };
    let step = 1_000_000_000 / FPS;
    let (frames, payload, real_time) = match source {
        Source::RealTime { seconds } => (seconds * FPS, Bytes::from_static(KEY_FRAME), true),
        Source::Burst {
            fragments,
            frame_bytes,
        } => {
            let mut padded = KEY_FRAME.to_vec();
            padded.extend_from_slice(&[0, 0, 0, 1, 0x0c]);
            padded.resize(frame_bytes.max(padded.len() + 1) - 1, 0xff);
            padded.push(0x80);
            (fragments * 10, Bytes::from(padded), false)
        }
    };
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    // A burst is a backlog: timestamped as the last `frames` frame times.
    let epoch_ns = if real_time {
        now_ns
    } else {
        now_ns - frames * step
    };
    let start = Instant::now();
    for i in 0..frames {
        let due = start + Duration::from_nanos(i * step);
        if real_time && let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let pts = epoch_ns + i * step;
        let frame = Frame {
            track: 0,
            pts_ns: pts,
            dts_ns: pts,
            duration_ns: step,
            key: i % 10 == 0,
            data: payload.clone(),
        };
        muxer.push(frame, &mut sink).expect("push");
    }
    muxer.finish(&mut sink).expect("finish");
    sink.writer.sync().expect("sync");
}

struct Outcome {
    persisted: BTreeMap<u64, u32>,
    duplicates: Vec<u64>,
    frames_stored: u64,
}

/// Checks the invariants every fault test shares and prints the figures the issue asks for.
fn check(run: &Run, name: &str, skipped: &[u64]) -> Outcome {
    let records: Vec<FragmentRecord> = run.endpoint.kvs().fragments(STREAM);
    let mut persisted: BTreeMap<u64, u32> = BTreeMap::new();
    let mut frames_stored = 0;
    for record in records
        .iter()
        .filter(|r| r.acknowledged(AckEventType::Persisted))
    {
        *persisted.entry(record.timecode).or_default() += 1;
        frames_stored += record.total_frames();
    }
    let duplicates: Vec<u64> = persisted
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(t, _)| *t)
        .collect();
    let frames_sent: u64 = run.closed.values().map(|n| u64::from(*n)).sum();
    println!(
        "{name}: fragments closed {}, frames sent {frames_sent}, frames stored {frames_stored}, \
         duplicates {}, evictions {}, skipped {}, connections {}, left {}",
        run.closed.len(),
        duplicates.len(),
        run.buffer.fragments_evicted,
        run.summary.fragments_skipped,
        run.summary.connections,
        run.summary.fragments_left,
    );
    assert!(
        run.closed.len() >= 6,
        "{name}: too few fragments: {:?}",
        run.closed
    );
    for (timecode, frames) in &run.closed {
        if skipped.contains(timecode) {
            assert!(
                !persisted.contains_key(timecode),
                "{name}: skipped fragment {timecode} was stored"
            );
            continue;
        }
        assert!(
            persisted.contains_key(timecode),
            "{name}: fragment {timecode} ({frames} frames) never PERSISTED; records: {:?}",
            records
                .iter()
                .map(|r| (r.timecode, r.acks.clone(), r.error.clone()))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(run.summary.fragments_left, 0, "{name}: fragments left");
    // A fragment stored twice was sent twice: the first copy's PERSISTED never reached the
    // uploader (the connection broke first).
    for timecode in &duplicates {
        let copies: Vec<&FragmentRecord> = records
            .iter()
            .filter(|r| r.timecode == *timecode && r.acknowledged(AckEventType::Persisted))
            .collect();
        assert!(
            copies
                .windows(2)
                .all(|w| w[0].connection != w[1].connection),
            "{name}: fragment {timecode} stored twice on one connection"
        );
    }
    Outcome {
        persisted,
        duplicates,
        frames_stored,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_reconnects_at_fragment_boundaries_without_loss_or_overlap() {
    let run = stream(
        5,
        MEMORY,
        FaultRequest::default(),
        |session| {
            session.rotation_interval = Duration::from_millis(1200);
            session.rotation_jitter = Duration::ZERO;
        },
        |_| async {},
    )
    .await;
    let outcome = check(&run, "rotation", &[]);
    assert!(run.summary.connections >= 3, "{:?}", run.summary);
    assert!(
        outcome.duplicates.is_empty(),
        "a drained connection resends nothing"
    );
    let frames: u64 = run.closed.values().map(|n| u64::from(*n)).sum();
    assert_eq!(outcome.frames_stored, frames);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_fragment_is_resumed_at_the_first_unacknowledged_fragment() {
    let run = stream(
        5,
        MEMORY,
        FaultRequest::default(),
        |_| {},
        |endpoint| async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let fault = FaultRequest {
                drop_mid_fragment: Some(1),
                ..FaultRequest::default()
            };
            endpoint.kvs().inject(&fault).expect("inject");
        },
    )
    .await;
    let outcome = check(&run, "drop mid-fragment", &[]);
    assert_eq!(run.endpoint.kvs().fault_stats().connections_dropped, 1);
    assert!(run.summary.connections >= 2, "{:?}", run.summary);
    assert!(outcome.duplicates.len() <= 1, "{:?}", outcome.duplicates);
}

/// Streams 6 s; answers one fragment with ERROR `first` after 1.2 s and one with ERROR
/// `second` 2 s later. Returns the run and every (timecode, error code) the endpoint sent.
async fn with_error_acks(first: u16, second: u16) -> (Run, Vec<(u64, u32)>) {
    let run = stream(
        6,
        MEMORY,
        FaultRequest::default(),
        |_| {},
        move |endpoint| async move {
            for (wait_ms, code) in [(1200, first), (2000, second)] {
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                let fault = FaultRequest {
                    error_ack: Some(ErrorAckRequest {
                        code,
                        after_fragments: 0,
                    }),
                    ..FaultRequest::default()
                };
                endpoint.kvs().inject(&fault).expect("inject an error ACK");
            }
        },
    )
    .await;
    let errors = run
        .endpoint
        .kvs()
        .fragments(STREAM)
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| (r.timecode, e.id)))
        .collect();
    (run, errors)
}

/// The timecodes answered with ERROR `code`.
fn answered_with(errors: &[(u64, u32)], code: u32) -> Vec<u64> {
    errors
        .iter()
        .filter(|(_, id)| *id == code)
        .map(|(t, _)| *t)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_acks_4006_is_skipped_and_5000_is_retried() {
    let (run, errors) = with_error_acks(4006, 5000).await;
    let refused = answered_with(&errors, 4006);
    assert_eq!(refused.len(), 1, "one 4006: {errors:?}");
    assert!(errors.iter().any(|(_, id)| *id == 5000), "{errors:?}");
    let outcome = check(&run, "error acks", &refused);
    assert_eq!(run.summary.fragments_skipped, 1, "{:?}", run.summary);
    let retried = errors.iter().find(|(_, id)| *id == 5000).map(|(t, _)| *t);
    assert!(
        retried.is_some_and(|t| outcome.persisted.contains_key(&t)),
        "the 5000 fragment is sent again and stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_acks_4009_is_skipped_and_4000_is_retried() {
    let (run, errors) = with_error_acks(4009, 4000).await;
    let refused = answered_with(&errors, 4009);
    assert_eq!(refused.len(), 1, "one 4009: {errors:?}");
    let retried = answered_with(&errors, 4000);
    assert_eq!(retried.len(), 1, "one 4000: {errors:?}");
    let outcome = check(&run, "error acks 4000/4009", &refused);
    assert_eq!(run.summary.fragments_skipped, 1, "{:?}", run.summary);
    assert!(
        retried.iter().all(|t| outcome.persisted.get(t) == Some(&1)),
        "the 4000 fragment is sent again and stored once: {retried:?}"
    );
    let frames: u64 = run
        .closed
        .iter()
        .filter(|(t, _)| !refused.contains(t))
        .map(|(_, n)| u64::from(*n))
        .sum();
    assert_eq!(
        outcome.frames_stored, frames,
        "every frame not refused, once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_ten_minutes_off_is_learned_from_the_date_header() {
    let run = stream(
        4,
        MEMORY,
        FaultRequest {
            clock_skew_s: Some(600.0),
            ..FaultRequest::default()
        },
        |_| {},
        |_| async {},
    )
    .await;
    check(&run, "clock skew", &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_back_off_and_recover() {
    let run = stream(
        5,
        MEMORY,
        FaultRequest {
            http_error: Some(HttpErrorRequest {
                status: 500,
                count: 3,
                error_type: None,
                message: None,
                operations: Some(vec!["describeStream".into()]),
            }),
            ..FaultRequest::default()
        },
        |_| {},
        |endpoint| async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let fault = FaultRequest {
                drop_after_bytes: Some(1),
                http_error: Some(HttpErrorRequest {
                    status: 400,
                    count: 2,
                    error_type: Some("ClientLimitExceededException".into()),
                    message: None,
                    operations: Some(vec!["putMedia".into()]),
                }),
                ..FaultRequest::default()
            };
            endpoint.kvs().inject(&fault).expect("inject 400");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let fault = FaultRequest {
                drop_after_bytes: Some(1),
                http_error: Some(HttpErrorRequest {
                    status: 429,
                    count: 2,
                    error_type: None,
                    message: None,
                    operations: Some(vec!["putMedia".into()]),
                }),
                ..FaultRequest::default()
            };
            endpoint.kvs().inject(&fault).expect("inject 429");
        },
    )
    .await;
    check(&run, "throttling", &[]);
    let stats = run.endpoint.kvs().fault_stats();
    assert_eq!(stats.http_errors, 7, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_without_acks_is_detected_and_the_connection_replaced() {
    let run = stream(
        6,
        MEMORY,
        FaultRequest::default(),
        |session| session.staleness_timeout = Duration::from_millis(1500),
        |endpoint| async move {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let fault = FaultRequest {
                stall: Some(StallRequest {
                    after_fragments: 0,
                    seconds: 4.0,
                }),
                ..FaultRequest::default()
            };
            endpoint.kvs().inject(&fault).expect("inject stall");
        },
    )
    .await;
    check(&run, "stall", &[]);
    assert!(run.summary.connections >= 2, "{:?}", run.summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_memory_tier_is_carried_by_the_disk_tier() {
    // The endpoint refuses every connection for 30 s. 256 KiB of memory holds about one and a
    // half fragments; the outage lasts sixty, so the disk tier must carry the backlog.
    let run = stream_signed_by(
        Source::RealTime { seconds: 40 },
        budgets(256 << 10),
        FaultRequest::default(),
        |uploader| {
            // The backlog drain is not what this run measures: let it go at 20 fragments/s.
            uploader.settings.pacing.max_fragments_per_s = 20;
            // Back online well before the stop (at 40 s): retries 2 s apart at most, so the
            // stop never finds the session still backing off from a refused connect.
            uploader.settings.session.backoff.cap = Duration::from_secs(2);
        },
        |endpoint| async move {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let outage = FaultRequest {
                refuse_connections_s: Some(30.0),
                ..FaultRequest::default()
            };
            endpoint.kvs().inject(&outage).expect("inject outage");
        },
        static_keys(),
        DEFAULT_REFRESH_BEFORE,
    )
    .await;
    let outcome = check(&run, "outage on disk", &[]);
    assert_eq!(run.endpoint.kvs().fault_stats().refusals, 1);
    let frames: u64 = run.closed.values().map(|n| u64::from(*n)).sum();
    assert_eq!(outcome.frames_stored, frames, "every frame once");
    assert!(
        run.buffer.memory_copies_dropped > 0,
        "the backlog was read back from disk: {:?}",
        run.buffer
    );
    assert_eq!(run.buffer.fragments_evicted, 0, "{:?}", run.buffer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_both_budgets_evicts_the_oldest_and_uploads_the_rest_once() {
    // 40 fragments of 1 MB at once into 1 MiB of memory and 8 MiB of disk: most must be
    // evicted (oldest first, counted); the uploader must step over the holes and send every
    // fragment that is left exactly once.
    let fragments = 40;
    let run = stream_signed_by(
        Source::Burst {
            fragments,
            frame_bytes: 100_000,
        },
        Budgets {
            memory_bytes: 1 << 20,
            disk_bytes: 8 << 20,
            fsync: true,
        },
        FaultRequest::default(),
        |_| {},
        |_| async {},
        static_keys(),
        DEFAULT_REFRESH_BEFORE,
    )
    .await;
    let records = run.endpoint.kvs().fragments(STREAM);
    let mut persisted: BTreeMap<u64, u32> = BTreeMap::new();
    for record in records
        .iter()
        .filter(|r| r.acknowledged(AckEventType::Persisted))
    {
        *persisted.entry(record.timecode).or_default() += 1;
    }
    let duplicates = persisted.values().filter(|n| **n > 1).count();
    let frames_sent: u64 = run.closed.values().map(|n| u64::from(*n)).sum();
    let frames_stored: u64 = records
        .iter()
        .filter(|r| r.acknowledged(AckEventType::Persisted))
        .map(FragmentRecord::total_frames)
        .sum();
    let evicted = run.buffer.fragments_evicted;
    println!(
        "burst past the budgets: fragments closed {}, frames sent {frames_sent}, frames stored \
         {frames_stored}, duplicates {duplicates}, evictions {evicted} ({} of them stored \
         before their ACK came), acked {}, left {}",
        run.closed.len(),
        run.summary
            .fragments_acked
            .saturating_sub(run.buffer.fragments_acked),
        run.summary.fragments_acked,
        run.summary.fragments_left,
    );
    assert_eq!(run.closed.len() as u64, fragments, "{:?}", run.closed);
    assert!(
        evicted > 0,
        "9 MiB of budgets cannot hold 40 MB: {:?}",
        run.buffer
    );
    assert_eq!(duplicates, 0, "{persisted:?}");
    assert!(
        persisted.keys().all(|t| run.closed.contains_key(t)),
        "only fragments the muxer closed are stored"
    );
    // A fragment sent whole may be evicted while its ACK is on the way (it is the oldest); the
    // service still stores it and its ACK finds nothing to release in the log.
    let stored_after_eviction = run
        .summary
        .fragments_acked
        .checked_sub(run.buffer.fragments_acked)
        .expect("the log applied more ACKs than the uploader received");
    assert!(stored_after_eviction <= evicted);
    assert_eq!(
        persisted.len() as u64 + evicted - stored_after_eviction,
        fragments,
        "every fragment is stored once or counted as evicted: {:?} {:?}",
        run.buffer,
        run.summary
    );
    assert_eq!(run.summary.fragments_left, 0, "{:?}", run.summary);
    assert_eq!(run.buffer.fragments_lost, 0, "{:?}", run.buffer);
    // The oldest go: the newest five (5 MB, well inside 9 MiB of budgets) are all stored.
    let newest: Vec<u64> = run.closed.keys().rev().take(5).copied().collect();
    assert!(
        newest.iter().all(|t| persisted.contains_key(t)),
        "the newest fragments {newest:?} must survive; stored {:?}",
        persisted.keys().collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_delay_batches_the_live_edge_without_losing_a_frame() {
    // 20 fps with a 300 ms send delay: the uploader takes the frames in batches (one wake-up
    // per delay) instead of one by one, and everything still arrives once.
    let taken_at = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let log = Arc::clone(&taken_at);
    let run = stream_signed_by(
        Source::RealTime { seconds: 4 },
        budgets(MEMORY),
        FaultRequest::default(),
        move |uploader| {
            uploader.settings.send_delay = Duration::from_millis(300);
            uploader.observer = Some(BodyObserver::new(move |_chunk: &Bytes| {
                if let Ok(mut log) = log.lock() {
                    log.push(Instant::now());
                }
            }));
        },
        |_| async {},
        static_keys(),
        DEFAULT_REFRESH_BEFORE,
    )
    .await;
    let outcome = check(&run, "send delay", &[]);
    let frames: u64 = run.closed.values().map(|n| u64::from(*n)).sum();
    assert_eq!(outcome.frames_stored, frames, "every frame once");
    assert!(outcome.duplicates.is_empty(), "{:?}", outcome.duplicates);
    // Chunks taken less than 20 ms apart belong to one wake-up; frames are 50 ms apart, so
    // unbatched every frame would be its own.
    let taken_at = taken_at.lock().map(|t| t.clone()).unwrap_or_default();
    let wakeups = 1 + taken_at
        .windows(2)
        .filter(|w| w[1].saturating_duration_since(w[0]) >= Duration::from_millis(20))
        .count() as u64;
    println!("send delay: {frames} frames taken in {wakeups} batches");
    assert!(
        wakeups * 2 < frames,
        "{frames} frames were taken in {wakeups} batches: not batched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_offline_leaves_everything_on_disk_without_waiting_out_the_deadline() {
    // The endpoint refuses every connection throughout: the stop (12 s deadline) finds the
    // session backing off; everything closed is on disk, so it stops at once instead.
    let run = stream_signed_by(
        Source::RealTime { seconds: 3 },
        budgets(MEMORY),
        FaultRequest {
            refuse_connections_s: Some(120.0),
            ..FaultRequest::default()
        },
        |_| {},
        |_| async {},
        static_keys(),
        DEFAULT_REFRESH_BEFORE,
    )
    .await;
    let frames_sent: u64 = run.closed.values().map(|n| u64::from(*n)).sum();
    println!(
        "stop while offline: fragments closed {}, frames sent {frames_sent}, frames stored 0, \
         duplicates 0, evictions {}, left on disk {}, drained {}",
        run.closed.len(),
        run.buffer.fragments_evicted,
        run.summary.fragments_left,
        run.summary.drained,
    );
    assert!(
        run.summary.drained,
        "the session stopped itself, not the deadline: {:?}",
        run.summary
    );
    assert_eq!(run.summary.connections, 0, "{:?}", run.summary);
    assert!(run.endpoint.kvs().fragments(STREAM).is_empty());
    assert_eq!(run.summary.fragments_left, run.closed.len() as u64);
    let (_writer, reader, report) =
        FragmentLog::open(run._dir.path().join("buffer"), budgets(MEMORY), STREAM)
            .expect("reopen the log");
    assert_eq!(
        report.fragments_recovered,
        run.closed.len() as u64,
        "every closed fragment is on disk for the next start"
    );
    let recovered: Vec<u64> = reader.fragments().iter().map(|f| f.timecode_ms).collect();
    let closed: Vec<u64> = run.closed.keys().copied().collect();
    assert_eq!(recovered, closed);
}

const KEY_ID_2: &str = "AKIDFAULTS2";
const SECRET_2: &str = "faults-secret-2";

/// Temporary credentials: the first key expires `first_expires_at`; once `rotated` is set
/// (the issuer rotated the key) it hands out the second, valid for an hour.
struct RotatingProvider {
    first_expires_at: SystemTime,
    rotated: Arc<AtomicBool>,
    first_served: AtomicU32,
    second_served: AtomicU32,
}

impl ProvideCredentials for RotatingProvider {
    fn provide(&self) -> ProvideFuture<'_> {
        let credentials = if self.rotated.load(Ordering::SeqCst) {
            self.second_served.fetch_add(1, Ordering::SeqCst);
            Credentials::new(
                KEY_ID_2,
                SECRET_2,
                None,
                Some(SystemTime::now() + Duration::from_secs(3600)),
            )
        } else {
            self.first_served.fetch_add(1, Ordering::SeqCst);
            Credentials::new(KEY_ID, SECRET, None, Some(self.first_expires_at))
        };
        Box::pin(async move { Ok(credentials) })
    }
    fn name(&self) -> &'static str {
        "rotating test keys"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_that_expire_mid_stream_are_refreshed_without_loss() {
    let rotated = Arc::new(AtomicBool::new(false));
    let provider = Arc::new(RotatingProvider {
        first_expires_at: SystemTime::now() + Duration::from_secs(3),
        rotated: Arc::clone(&rotated),
        first_served: AtomicU32::new(0),
        second_served: AtomicU32::new(0),
    });
    let issuer = Arc::clone(&rotated);
    let run = stream_signed_by(
        Source::RealTime { seconds: 6 },
        budgets(MEMORY),
        FaultRequest::default(),
        |uploader| {
            let session = &mut uploader.settings.session;
            session.credential_refresh_lead = Duration::from_secs(2);
            session.credential_rotation_margin = Duration::from_millis(500);
            // New connections keep coming, so some must be signed after key 1 is revoked.
            session.rotation_interval = Duration::from_millis(1200);
            session.rotation_jitter = Duration::ZERO;
        },
        move |endpoint| async move {
            tokio::time::sleep(Duration::from_millis(2000)).await;
            // The issuer rotates: key 2 is handed out, and the service knows only key 2.
            issuer.store(true, Ordering::SeqCst);
            endpoint
                .kvs()
                .require_signatures(vec![Credentials::new(KEY_ID_2, SECRET_2, None, None)], None);
        },
        Arc::clone(&provider) as Arc<dyn ProvideCredentials>,
        Duration::from_secs(2),
    )
    .await;
    let outcome = check(&run, "credentials expire", &[]);
    let first = provider.first_served.load(Ordering::SeqCst);
    let second = provider.second_served.load(Ordering::SeqCst);
    println!("credentials expire: key 1 served {first}, key 2 served {second}");
    assert!(rotated.load(Ordering::SeqCst));
    assert!(second >= 1, "key 2 was never fetched");
    assert!(run.summary.connections >= 3, "{:?}", run.summary);
    let frames: u64 = run.closed.values().map(|n| u64::from(*n)).sum();
    assert_eq!(outcome.frames_stored, frames, "every frame once");
    assert!(outcome.duplicates.is_empty(), "{:?}", outcome.duplicates);
}
