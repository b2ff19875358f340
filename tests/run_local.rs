//! `kinesis-edge run` end to end against the local endpoint: the real binary streams the test
//! sources, is stopped with SIGTERM (or killed and restarted), and what the endpoint stored is
//! checked with ffprobe / ffmpeg and the endpoint's fragment records.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kinesis_edge::aws::Credentials;
use kinesis_edge::buffer::{Budgets, FragmentLog};
use kinesis_edge::local::kvs::ack::AckEventType;
use kinesis_edge::local::kvs::faults::FaultRequest;
use kinesis_edge::local::kvs::store::FragmentRecord;
use kinesis_edge::local::kvs::{LocalEndpoint, LocalEndpointConfig};

const STREAM: &str = "porch";
const ACCESS_KEY: &str = "AKIDLOCALTEST";
const SECRET_KEY: &str = "local-test-secret-key";
const FRAGMENT_MS: u64 = 1000;

struct Setup {
    dir: tempfile::TempDir,
    endpoint: LocalEndpoint,
    config: PathBuf,
}

const TELEMETRY_STREAM: &str = "edge-telemetry";

async fn setup(shutdown_timeout_s: u32) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut endpoint_config = LocalEndpointConfig::new(dir.path().join("kvs"));
    endpoint_config.credentials = vec![Credentials::new(ACCESS_KEY, SECRET_KEY, None, None)];
    endpoint_config.signing_region = Some("us-west-2".into());
    let endpoint = LocalEndpoint::start(endpoint_config)
        .await
        .expect("local endpoint");
    assert!(endpoint.kds().create_stream(TELEMETRY_STREAM, 1));
    let config = dir.path().join("kinesis-edge.toml");
    let text = format!(
        r#"
[aws]
region = "us-west-2"
endpoint = "{url}"

[aws.credentials]
source = "static"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"

[[camera]]
name = "porch"
create_stream = true
retention_hours = 24
video = {{ source = "test", width = 320, height = 240, framerate = 15, bitrate_kbps = 300 }}
audio = {{ source = "test" }}
fragment = {{ duration_ms = {FRAGMENT_MS} }}
metadata = {{ site = "test-lab" }}

[buffer]
memory_mb = 4
disk = {{ dir = "{buffer}", max_mb = 64 }}

[telemetry]
enabled = true
stream = "{TELEMETRY_STREAM}"
interval_s = 2
endpoint = "{url}"
spool = {{ dir = "{spool}", max_mb = 4 }}

[service]
device_id = "test-device"
shutdown_timeout_s = {shutdown_timeout_s}
"#,
        url = endpoint.url(),
        buffer = dir.path().join("buffer").display(),
        spool = dir.path().join("telemetry").display(),
    );
    std::fs::write(&config, text).expect("write config");
    Setup {
        dir,
        endpoint,
        config,
    }
}

fn start_daemon(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_kinesis-edge"))
        .args(["run", "--config"])
        .arg(config)
        .env("KINESIS_EDGE_LOG", "info")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_KINESIS_VIDEO")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start kinesis-edge")
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} failed");
}

/// Waits for the daemon to exit; returns its stdout.
async fn wait_exit(mut child: Child, within: Duration, log: &Path) -> String {
    let until = Instant::now() + within;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => {
                let mut out = String::new();
                if let Some(mut stdout) = child.stdout.take() {
                    std::io::Read::read_to_string(&mut stdout, &mut out).expect("stdout");
                }
                assert!(status.success(), "exit {status}; log:\n{}", tail(log));
                return out;
            }
            None if Instant::now() >= until => {
                let _ = child.kill();
                panic!(
                    "kinesis-edge did not stop within {within:?}; log:\n{}",
                    tail(log)
                );
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `key=value` from the summary line.
fn summary_field(stdout: &str, key: &str) -> u64 {
    let needle = format!("{key}=");
    stdout
        .split_whitespace()
        .find_map(|word| word.strip_prefix(&needle))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing from {stdout:?}"))
}

fn persisted(records: &[FragmentRecord]) -> Vec<&FragmentRecord> {
    records
        .iter()
        .filter(|r| r.acknowledged(AckEventType::Persisted))
        .collect()
}

fn check_media(path: &Path) -> u64 {
    let ffmpeg = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        ffmpeg.status.success(),
        "ffmpeg failed on {}",
        path.display()
    );
    assert!(
        ffmpeg.stderr.is_empty(),
        "ffmpeg -v error complains about {}:\n{}",
        path.display(),
        String::from_utf8_lossy(&ffmpeg.stderr)
    );
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_packets",
            "-show_entries",
            "stream=codec_name,nb_read_packets",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(
        probe.status.success(),
        "ffprobe failed on {}",
        path.display()
    );
    let text = String::from_utf8_lossy(&probe.stdout);
    let mut codecs = BTreeSet::new();
    let mut packets = 0;
    for line in text.lines() {
        let mut parts = line.split(',');
        let codec = parts.next().unwrap_or_default().to_owned();
        packets += parts
            .next()
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        codecs.insert(codec);
    }
    assert_eq!(
        codecs,
        BTreeSet::from(["aac".to_owned(), "h264".to_owned()]),
        "{text}"
    );
    packets
}

/// Every stored media file of the stream (one per PutMedia connection), checked by
/// [`check_media`]; returns the packets they hold together.
fn check_all_media(endpoint: &LocalEndpoint) -> (u64, u32) {
    let mut packets = 0;
    let mut files = 0;
    while endpoint.kvs().media_path(STREAM, files).exists() {
        packets += check_media(&endpoint.kvs().media_path(STREAM, files));
        files += 1;
    }
    assert!(files > 0, "no media stored");
    (packets, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_seconds_of_the_demo_arrive_complete_and_persisted() {
    demo_arrives_complete(60).await;
}

/// Runs the demo-like configuration for `seconds`, stops it with SIGTERM, and checks every
/// frame the daemon muxed is in exactly one PERSISTED fragment of a file ffmpeg accepts.
async fn demo_arrives_complete(seconds: u64) {
    let setup = setup(10).await;
    let log = setup.dir.path().join("daemon.log");
    let daemon = start_daemon(&setup.config, &log);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    signal(&daemon, "TERM");
    let stdout = wait_exit(daemon, Duration::from_secs(15), &log).await;

    let frames_muxed = summary_field(&stdout, "frames_muxed");
    let fragments = summary_field(&stdout, "fragments");
    let records = setup.endpoint.kvs().fragments(STREAM);
    let ok = persisted(&records);
    let timecodes: BTreeSet<u64> = ok.iter().map(|r| r.timecode).collect();
    let stored_frames: u64 = ok.iter().map(|r| r.total_frames()).sum();
    let evicted = summary_field(&stdout, "fragments_evicted");
    println!(
        "frames muxed {frames_muxed}, fragments {fragments}; stored {} fragments ({} records), \
         {stored_frames} frames, {} duplicates, {evicted} evictions",
        timecodes.len(),
        records.len(),
        ok.len() - timecodes.len()
    );
    assert_eq!(evicted, 0, "{stdout}");
    assert!(
        fragments * FRAGMENT_MS >= seconds * 1000 * 7 / 10,
        "{seconds} s at 1 s fragments: {stdout}"
    );
    assert_eq!(
        summary_field(&stdout, "fragments_left"),
        0,
        "log:\n{}",
        tail(&log)
    );
    assert_eq!(summary_field(&stdout, "fragments_skipped"), 0);
    assert!(
        records.iter().all(|r| r.error.is_none()),
        "ERROR ACKs: {:?}",
        records
            .iter()
            .filter_map(|r| r.error.as_ref())
            .collect::<Vec<_>>()
    );
    assert_eq!(ok.len(), records.len(), "every fragment PERSISTED");
    assert_eq!(timecodes.len(), ok.len(), "no fragment twice");
    assert_eq!(timecodes.len() as u64, fragments, "every fragment arrived");
    assert_eq!(stored_frames, frames_muxed, "every frame once");
    for record in &ok {
        assert!(
            record
                .tags
                .contains(&("site".to_owned(), "test-lab".to_owned())),
            "fragment {} tags {:?}",
            record.timecode,
            record.tags
        );
    }
    let (packets, files) = check_all_media(&setup.endpoint);
    println!("{seconds} s: ffprobe counts {packets} packets in {files} stored file(s)");
    assert_eq!(
        packets, frames_muxed,
        "ffprobe counts every frame in the stored files"
    );
    setup.endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_a_restart_uploads_what_was_left_first_and_exactly_once() {
    let setup = setup(8).await;
    let log = setup.dir.path().join("daemon-1.log");
    let mut daemon = start_daemon(&setup.config, &log);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The network goes away (the open connection is cut): fragments pile up in the buffer
    // and on disk until the kill.
    let outage = FaultRequest {
        refuse_connections_s: Some(3.3),
        ..FaultRequest::default()
    };
    setup.endpoint.kvs().inject(&outage).expect("inject outage");
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal(&daemon, "KILL");
    let _ = daemon.wait();
    let before_restart = setup.endpoint.kvs().fragments(STREAM);
    // What the killed daemon left on disk, as its buffer will recover it.
    let left: BTreeSet<u64> = {
        let budgets = Budgets {
            memory_bytes: 4 << 20,
            disk_bytes: 64 << 20,
            fsync: true,
        };
        let (writer, reader, report) =
            FragmentLog::open(setup.dir.path().join("buffer"), budgets, STREAM).expect("open log");
        let left = reader.fragments().iter().map(|f| f.timecode_ms).collect();
        assert_eq!(
            report.fragments_recovered as usize,
            reader.fragments().len()
        );
        drop(writer);
        drop(reader);
        left
    };
    let restarted_at = Instant::now();
    let log2 = setup.dir.path().join("daemon-2.log");
    let daemon = start_daemon(&setup.config, &log2);
    tokio::time::sleep(Duration::from_secs(5)).await;
    signal(&daemon, "TERM");
    let stdout = wait_exit(daemon, Duration::from_secs(12), &log2).await;
    println!("restart took {:?}", restarted_at.elapsed());

    assert!(
        left.len() >= 2,
        "the outage left fragments on disk: {left:?}"
    );
    assert_eq!(
        summary_field(&stdout, "recovered_fragments"),
        left.len() as u64,
        "{stdout}"
    );
    assert_eq!(
        summary_field(&stdout, "fragments_left"),
        0,
        "log:\n{}",
        tail(&log2)
    );
    let records = setup.endpoint.kvs().fragments(STREAM);
    let first_run: BTreeSet<u64> = persisted(&before_restart)
        .iter()
        .map(|r| r.timecode)
        .collect();
    let mut copies: BTreeMap<u64, u32> = BTreeMap::new();
    for record in persisted(&records) {
        *copies.entry(record.timecode).or_default() += 1;
    }
    // Everything closed before the kill: persisted then, or left on disk.
    let closed_before_kill: BTreeSet<u64> = first_run.union(&left).copied().collect();
    for timecode in &closed_before_kill {
        assert!(
            copies.contains_key(timecode),
            "fragment {timecode} closed before the kill never arrived"
        );
    }
    // No gap among them: one fragment a second.
    let ordered: Vec<u64> = closed_before_kill.iter().copied().collect();
    for pair in ordered.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap <= FRAGMENT_MS * 3 / 2,
            "gap of {gap} ms between fragments {} and {} before the kill",
            pair[0],
            pair[1]
        );
    }
    // Duplicates only of fragments the daemon had not recorded as acknowledged.
    let duplicates: Vec<u64> = copies
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(t, _)| *t)
        .collect();
    for timecode in &duplicates {
        assert!(
            left.contains(timecode),
            "fragment {timecode} was sent again although its PERSISTED ACK was recorded"
        );
    }
    let frames_stored: u64 = persisted(&records).iter().map(|r| r.total_frames()).sum();
    println!(
        "first run persisted {}, left on disk {}; restart muxed {} frames; stored {} fragments, \
         {frames_stored} frames; duplicates {}, evictions {}",
        first_run.len(),
        left.len(),
        summary_field(&stdout, "frames_muxed"),
        copies.len(),
        duplicates.len(),
        summary_field(&stdout, "fragments_evicted"),
    );
    assert_eq!(summary_field(&stdout, "fragments_evicted"), 0, "{stdout}");
    // The restart sent the recovered fragments before its own live ones.
    let second_run: Vec<&FragmentRecord> = records
        .iter()
        .filter(|r| !before_restart.contains(r) && r.acknowledged(AckEventType::Persisted))
        .collect();
    let live_start = second_run
        .iter()
        .position(|r| !left.contains(&r.timecode))
        .unwrap_or(second_run.len());
    assert!(
        second_run[live_start..]
            .iter()
            .all(|r| !left.contains(&r.timecode)),
        "recovered fragments were not all sent before the live edge"
    );
    let check = check_media(&setup.endpoint.kvs().media_path(STREAM, 0));
    assert!(check > 0);
    setup.endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_it_buffers_stops_without_waiting_out_the_timeout_and_uploads_at_the_next_start() {
    // 120 s to flush on stop; with nothing listening where the service should be, the stop
    // must not wait for it: everything is on disk.
    let setup = setup(120).await;
    let online = std::fs::read_to_string(&setup.config).expect("read config");
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let offline_config = setup.dir.path().join("offline.toml");
    std::fs::write(
        &offline_config,
        online.replace(
            &setup.endpoint.url(),
            &format!("http://127.0.0.1:{dead_port}"),
        ),
    )
    .expect("write offline config");

    let log = setup.dir.path().join("offline.log");
    let daemon = start_daemon(&offline_config, &log);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stop_at = Instant::now();
    signal(&daemon, "TERM");
    let stdout = wait_exit(daemon, Duration::from_secs(40), &log).await;
    let stopped_in = stop_at.elapsed();
    let left = summary_field(&stdout, "fragments_left");
    println!(
        "offline: stopped in {stopped_in:?} (timeout 120 s); muxed {} frames, {} fragments, \
         {left} left on disk, connections {}",
        summary_field(&stdout, "frames_muxed"),
        summary_field(&stdout, "fragments"),
        summary_field(&stdout, "connections"),
    );
    assert_eq!(summary_field(&stdout, "connections"), 0, "{stdout}");
    assert_eq!(summary_field(&stdout, "fragments_acked"), 0, "{stdout}");
    assert!(left >= 2, "captured while offline: {stdout}");
    assert!(
        tail(&log).contains("the service cannot be reached: stopping now"),
        "the uploader stopped itself rather than at the deadline; log:\n{}",
        tail(&log)
    );

    // Back online: what was buffered offline goes first, once.
    let log2 = setup.dir.path().join("online.log");
    let daemon = start_daemon(&setup.config, &log2);
    tokio::time::sleep(Duration::from_secs(4)).await;
    signal(&daemon, "TERM");
    let stdout = wait_exit(daemon, Duration::from_secs(30), &log2).await;
    assert_eq!(
        summary_field(&stdout, "recovered_fragments"),
        left,
        "{stdout}"
    );
    assert_eq!(summary_field(&stdout, "fragments_left"), 0, "{stdout}");
    let records = setup.endpoint.kvs().fragments(STREAM);
    let stored = persisted(&records);
    let timecodes: BTreeSet<u64> = stored.iter().map(|r| r.timecode).collect();
    println!(
        "online: stored {} fragments ({} recovered from the offline run), {} duplicates",
        timecodes.len(),
        left,
        stored.len() - timecodes.len()
    );
    assert_eq!(timecodes.len(), stored.len(), "no duplicates");
    assert!(timecodes.len() as u64 >= left + 2, "{stdout}");
    let (packets, _) = check_all_media(&setup.endpoint);
    let frames: u64 = stored.iter().map(|r| r.total_frames()).sum();
    assert_eq!(packets, frames, "the stored file holds every stored frame");
}
