//! The producer against real Kinesis stand-ins on 127.0.0.1: moto_server and kinesalite,
//! started by the tests. Records written through the spool and the producer are read back with
//! boto3 (GetShardIterator/GetRecords) and de-aggregated with AWS's `aws-kinesis-agg`: every
//! record must be present, and every sub-record's hash key must lie in the range of the shard
//! that stored it (the filter a KCL consumer applies).
//!
//! A test is skipped, with the reason printed, only when its server or the Python tools
//! cannot be installed.

mod support;

use bytes::Bytes;
use kinesis_edge::telemetry::collect::{CameraCounters, Collector, CollectorSettings};
use kinesis_edge::telemetry::{
    DeadLetterFile, DriverSettings, HashKey, KdsClient, ProducerConfig, ProducerTask, SharedSpool,
    Spool, SpoolConfig, UserRecord, put_record_once,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const STREAM: &str = "edge-telemetry";

async fn create_active_stream(client: &KdsClient, shards: u32) {
    client
        .create_stream(shards)
        .await
        .unwrap_or_else(|e| panic!("CreateStream: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.describe_stream_summary().await {
            Ok(summary) if summary.status == "ACTIVE" => return,
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("stream never became ACTIVE: {other:?}"),
        }
    }
}

/// Records like the daemon's: collected device and camera records, plus records from "other
/// processes" with varied (some non-ASCII) keys and sizes.
fn records_to_send() -> Vec<UserRecord> {
    let dir = std::env::temp_dir();
    let mut collector = Collector::new(CollectorSettings::new("pi-test-01", dir));
    let front = Arc::new(CameraCounters::default());
    let back = Arc::new(CameraCounters::default());
    collector.add_camera("front-door", Arc::clone(&front));
    collector.add_camera("back-yard", Arc::clone(&back));
    let mut records = Vec::new();
    let start = Instant::now();
    for round in 0..5u64 {
        front.frames_captured.fetch_add(300, Ordering::Relaxed);
        back.bytes_captured.fetch_add(1_000_000, Ordering::Relaxed);
        records.extend(
            collector
                .collect(
                    start + Duration::from_secs(10 * round),
                    1_700_000_000_000 + round * 10_000,
                    Some(true),
                )
                .unwrap_or_else(|e| panic!("collect: {e}")),
        );
    }
    for i in 0..400usize {
        let key = match i % 4 {
            0 => format!("sensor-{i}"),
            1 => format!("température/{i}"),
            2 => format!("カメラ-{}", i % 37),
            _ => format!("door-{}", i % 11),
        };
        let size = [20, 100, 700, 3_000, 9_000][i % 5] + i;
        let mut data = format!("{{\"i\":{i},\"pad\":\"").into_bytes();
        data.resize(size, b'x');
        data.extend_from_slice(b"\"}");
        records.push(
            UserRecord::new(key, None, Bytes::from(data), 1 << 20)
                .unwrap_or_else(|e| panic!("record: {e}")),
        );
    }
    // One large record goes out alone.
    records.push(
        UserRecord::new("big", None, Bytes::from(vec![b'b'; 300_000]), 1 << 20)
            .unwrap_or_else(|e| panic!("record: {e}")),
    );
    records
}

async fn round_trip(server: &support::ExternalServer) {
    let endpoint = server.endpoint();
    let client = support::client(&endpoint, STREAM);
    create_active_stream(&client, 2).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let spool = Spool::open(SpoolConfig::new(dir.path().join("spool"), 64 << 20))
        .unwrap_or_else(|e| panic!("spool: {e}"));
    let shared = SharedSpool::new(spool);
    let records = records_to_send();
    for record in &records {
        shared
            .enqueue(record)
            .unwrap_or_else(|e| panic!("enqueue: {e}"));
    }
    let dead = DeadLetterFile::open(dir.path().join("dead.jsonl"), 1 << 20)
        .unwrap_or_else(|e| panic!("dead letters: {e}"));
    let task = ProducerTask::new(
        client.clone(),
        shared.clone(),
        dead,
        ProducerConfig::default(),
        DriverSettings::default(),
    )
    .unwrap_or_else(|e| panic!("task: {e}"));
    let watcher = shared.clone();
    let started = Instant::now();
    let stats = task
        .run(async move {
            while watcher.stats().pending_records > 0 && started.elapsed() < Duration::from_secs(30)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|e| panic!("producer: {e}"));
    assert_eq!(
        shared.stats().pending_records,
        0,
        "spool drained ({stats:?})"
    );

    // PutRecord path used by `put-record`.
    let single = UserRecord::new(
        "cli-key",
        None,
        Bytes::from_static(b"from the command line"),
        1 << 20,
    )
    .unwrap_or_else(|e| panic!("record: {e}"));
    let outcome = put_record_once(
        &client,
        single.clone(),
        ProducerConfig::default(),
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("put_record_once: {e}"));
    assert!(!outcome.sequence_number.is_empty());

    let (shards, read) = tokio::task::spawn_blocking({
        let endpoint = endpoint.clone();
        move || support::read_back(&endpoint, STREAM)
    })
    .await
    .unwrap_or_else(|e| panic!("readback task: {e}"));
    let ranges: HashMap<&str, (u128, u128)> = shards
        .iter()
        .map(|s| (s.id.as_str(), (s.start, s.end)))
        .collect();
    let mut seen: HashMap<(String, Vec<u8>), usize> = HashMap::new();
    let mut aggregated_subs = 0;
    for record in &read {
        let hash = match &record.sub.explicit_hash_key {
            Some(text) => {
                HashKey::parse_decimal(text)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .0
            }
            None => HashKey::from_partition_key(&record.sub.partition_key).0,
        };
        let (start, end) = ranges
            .get(record.shard.as_str())
            .copied()
            .unwrap_or_else(|| panic!("record in unknown shard {}", record.shard));
        assert!(
            start <= hash && hash <= end,
            "{}: sub-record {:?} (hash {hash}) stored in {} [{start}, {end}]",
            server.name,
            record.sub.partition_key,
            record.shard
        );
        if record.aggregated {
            aggregated_subs += 1;
        }
        *seen
            .entry((record.sub.partition_key.clone(), record.sub.data.clone()))
            .or_default() += 1;
    }
    for record in records.iter().chain(std::iter::once(&single)) {
        let key = (record.partition_key().to_owned(), record.data().to_vec());
        assert!(
            seen.contains_key(&key),
            "{}: record {:?} missing",
            server.name,
            record.partition_key()
        );
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "{}: {} user records sent, {} read back ({} inside aggregates) from {} Kinesis records in {} requests; {} shards; duplicates {}; aggregates {}",
        server.name,
        records.len() + 1,
        read.len(),
        aggregated_subs,
        stats.kinesis_records_stored,
        stats.requests,
        shards.len(),
        duplicates,
        stats.aggregates_stored,
    );
    assert!(stats.aggregates_stored > 0, "aggregation was used");
    assert_eq!(duplicates, 0, "no failures were injected, so no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_stores_every_record_in_its_shard() {
    if let Err(reason) = support::ensure_aggregation_tools() {
        support::skip(&format!(
            "aws-kinesis-agg/boto3 cannot be installed: {reason}"
        ));
        return;
    }
    match support::start_moto() {
        Ok(server) => round_trip(&server).await,
        Err(reason) => support::skip(&format!(
            "moto_server cannot be installed or started: {reason}"
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesalite_stores_every_record_in_its_shard() {
    if let Err(reason) = support::ensure_aggregation_tools() {
        support::skip(&format!(
            "aws-kinesis-agg/boto3 cannot be installed: {reason}"
        ));
        return;
    }
    match support::start_kinesalite() {
        Ok(server) => round_trip(&server).await,
        Err(reason) => support::skip(&format!(
            "kinesalite cannot be installed or started: {reason}"
        )),
    }
}
