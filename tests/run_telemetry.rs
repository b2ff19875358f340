//! `kinesis-edge run` with telemetry against the local endpoint: the real binary streams a test
//! camera and sends device and camera health every second to a two-shard Kinesis data stream
//! that the endpoint creates at start (`data_streams`, the `--data-stream` flag's setting). After
//! SIGTERM the stored records are read back from the endpoint, KPL aggregates decoded, and each
//! record's JSON, partition key and shard placement checked.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kinesis_edge::aws::Credentials;
use kinesis_edge::local::kvs::{LocalEndpoint, LocalEndpointConfig};
use kinesis_edge::telemetry::aggregate::{decode_aggregate, looks_aggregated};
use kinesis_edge::telemetry::{HashKey, Spool, SpoolConfig};
use serde_json::Value;

const DATA_STREAM: &str = "edge-telemetry";
const ACCESS_KEY: &str = "AKIDTELEMETRYTEST";
const SECRET_KEY: &str = "telemetry-test-secret";
const RUN_FOR: Duration = Duration::from_secs(6);
/// Samples expected at least (one per second over [`RUN_FOR`], with start-up time allowed).
const MIN_SAMPLES: usize = 4;

/// One user record as stored: its partition key, the shard that stored it, its JSON.
struct Sample {
    partition_key: String,
    json: Value,
}

fn write_config(dir: &Path, url: &str) -> std::path::PathBuf {
    let config = dir.join("kinesis-edge.toml");
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
video = {{ source = "test", width = 320, height = 240, framerate = 15, bitrate_kbps = 300 }}
fragment = {{ duration_ms = 1000 }}

[buffer]
memory_mb = 4
disk = {{ dir = "{buffer}", max_mb = 64 }}

[telemetry]
enabled = true
stream = "{DATA_STREAM}"
interval_s = 1
endpoint = "{url}"
spool = {{ dir = "{spool}", max_mb = 4 }}

[service]
device_id = "test-device"
shutdown_timeout_s = 5
"#,
        buffer = dir.join("buffer").display(),
        spool = dir.join("telemetry").display(),
    );
    std::fs::write(&config, text).expect("write config");
    config
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

async fn wait_exit(mut child: Child, within: Duration, log: &Path) {
    let until = Instant::now() + within;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => {
                assert!(status.success(), "exit {status}; log:\n{}", tail(log));
                return;
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

/// Every user record of the stream, aggregates decoded; checks each one's shard placement.
fn read_back(endpoint: &LocalEndpoint) -> (Vec<Sample>, usize) {
    let shards = endpoint.kds().shards(DATA_STREAM);
    assert_eq!(
        shards.len(),
        2,
        "the stream created at start has two shards"
    );
    let mut samples = Vec::new();
    let mut aggregates = 0;
    for shard in &shards {
        for stored in &shard.records {
            let members: Vec<(String, HashKey, Bytes)> = if looks_aggregated(&stored.data) {
                aggregates += 1;
                decode_aggregate(&stored.data)
                    .unwrap_or_else(|e| panic!("aggregate in {} does not decode: {e}", shard.id))
                    .into_iter()
                    .map(|m| (m.partition_key.clone(), m.hash_key(), m.data))
                    .collect()
            } else {
                let key = HashKey::from_partition_key(&stored.partition_key);
                vec![(stored.partition_key.clone(), key, stored.data.clone())]
            };
            for (partition_key, hash_key, data) in members {
                assert!(
                    (shard.start..=shard.end).contains(&hash_key.0),
                    "record {partition_key:?} stored in {} outside its hash key range",
                    shard.id
                );
                let json: Value = serde_json::from_slice(&data).unwrap_or_else(|e| {
                    panic!("record {partition_key:?} is not JSON: {e}: {data:?}")
                });
                samples.push(Sample {
                    partition_key,
                    json,
                });
            }
        }
    }
    (samples, aggregates)
}

fn number(json: &Value, field: &str) -> u64 {
    json.get(field)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{field} missing or not a count in {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sends_device_and_camera_health_to_the_data_stream() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut endpoint_config = LocalEndpointConfig::new(dir.path().join("kvs"));
    endpoint_config.credentials = vec![Credentials::new(ACCESS_KEY, SECRET_KEY, None, None)];
    endpoint_config.signing_region = Some("us-west-2".into());
    endpoint_config.data_streams = vec![(DATA_STREAM.to_owned(), 2)];
    let endpoint = LocalEndpoint::start(endpoint_config)
        .await
        .expect("local endpoint");
    let config = write_config(dir.path(), &endpoint.url());

    let log = dir.path().join("run.log");
    let child = Command::new(env!("CARGO_BIN_EXE_kinesis-edge"))
        .args(["run", "--config"])
        .arg(&config)
        .env("KINESIS_EDGE_LOG", "info")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_KINESIS")
        .env_remove("AWS_ENDPOINT_URL_KINESIS_VIDEO")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start kinesis-edge");
    tokio::time::sleep(RUN_FOR).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_exit(child, Duration::from_secs(12), &log).await;

    let (samples, aggregates) = read_back(&endpoint);
    let device: Vec<&Value> = samples
        .iter()
        .filter(|s| s.json["kind"] == "device")
        .map(|s| &s.json)
        .collect();
    let mut camera: Vec<&Value> = samples
        .iter()
        .filter(|s| s.json["kind"] == "camera")
        .map(|s| &s.json)
        .collect();
    println!(
        "telemetry: {} device and {} camera records ({} stored Kinesis records, {aggregates} aggregates)",
        device.len(),
        camera.len(),
        endpoint.kds().stats().records_stored,
    );
    assert!(
        device.len() >= MIN_SAMPLES && camera.len() >= MIN_SAMPLES,
        "{} device and {} camera records; log:\n{}",
        device.len(),
        camera.len(),
        tail(&log)
    );
    assert_eq!(samples.len(), device.len() + camera.len(), "unknown kinds");
    for sample in &samples {
        let expected_key = match sample.json["kind"].as_str() {
            Some("device") => "test-device/",
            _ => "test-device/porch",
        };
        assert_eq!(sample.partition_key, expected_key);
        assert_eq!(sample.json["device_id"], "test-device");
        assert!(number(&sample.json, "time_unix_ms") > 1_600_000_000_000);
    }
    for record in &device {
        assert!(record.get("uptime_s").is_some(), "{record}");
        assert!(record.get("memory").is_some(), "{record}");
        assert!(record.get("network").is_some(), "{record}");
    }

    // Counters only grow; the last sample is taken after the uploads stopped.
    camera.sort_by_key(|r| number(r, "time_unix_ms"));
    for pair in camera.windows(2) {
        for field in ["frames_captured", "fragments_sent", "fragments_persisted"] {
            assert!(
                number(pair[0], field) <= number(pair[1], field),
                "{field} went down: {} then {}",
                pair[0],
                pair[1]
            );
        }
    }
    let last = camera.last().copied().unwrap_or(&Value::Null);
    assert_eq!(last["camera"], "porch");
    assert!(number(last, "frames_captured") > 0, "{last}");
    assert!(number(last, "fragments_persisted") > 0, "{last}");
    assert!(
        number(last, "fragments_sent") >= number(last, "fragments_persisted"),
        "{last}"
    );
    assert_eq!(number(last, "frames_dropped"), 0, "{last}");
    assert_eq!(number(last, "error_acks"), 0, "{last}");
    assert!(
        camera
            .iter()
            .any(|r| r["bitrate_bps"].as_u64().unwrap_or(0) > 0),
        "no sample measured a bitrate"
    );
    assert!(
        camera.iter().any(|r| r["upload_state"] == "streaming"),
        "no sample saw the uploader streaming"
    );
    assert!(
        camera.iter().any(|r| number(r, "last_ack_latency_ms") > 0),
        "no sample carried an ACK latency"
    );

    // Everything spooled was delivered: nothing is left for the next start.
    let spool = Spool::open(SpoolConfig::new(dir.path().join("telemetry"), 4 << 20))
        .expect("reopen the spool");
    assert_eq!(
        spool.stats().recovered_records,
        0,
        "records left in the spool"
    );
    endpoint.shutdown().await;
}
