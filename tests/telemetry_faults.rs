//! The producer against the in-repo fault-injecting Kinesis fake (`local` feature): per-record
//! throttling, 500/503 bursts, request timeouts, ExpiredTokenException, operator-fixable
//! errors, a poison record, a reshard between two batches, and SIGKILL of a producer process
//! mid-batch followed by a restart.
//!
//! Every check reads what the fake stored the way a KCL consumer would (an aggregate whose
//! sub-records do not all hash into the shard that stored it is discarded whole) and asserts:
//! every accepted record delivered at least once, and a record stored more than once only when
//! a request's outcome was unknown to the producer (the fake records which requests those were).
//! The figures are printed.

mod support;

use bytes::Bytes;
use kinesis_edge::aws::{Credentials, CredentialsCache, ProvideCredentials, ProvideFuture};
use kinesis_edge::local::LocalServer;
use kinesis_edge::local::kds::{FaultPlan, KdsHandler, ScriptedError};
use kinesis_edge::telemetry::aggregate::{decode_aggregate, looks_aggregated};
use kinesis_edge::telemetry::batch::BatchLimits;
use kinesis_edge::telemetry::{
    DeadLetterFile, DriverSettings, HashKey, ProducerConfig, ProducerStats, ProducerTask,
    SharedSpool, Spool, SpoolConfig, UserRecord,
};
use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const STREAM: &str = "edge-telemetry";

struct Fake {
    server: LocalServer,
    kds: Arc<KdsHandler>,
}

async fn fake(shards: u32, faults: FaultPlan) -> Fake {
    let kds = KdsHandler::new();
    assert!(kds.create_stream(STREAM, shards));
    kds.set_faults(faults);
    let server = LocalServer::start(
        "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
        vec![kds.clone()],
    )
    .await
    .unwrap_or_else(|e| panic!("local endpoint: {e}"));
    Fake { server, kds }
}

fn records(prefix: &str, count: usize) -> Vec<UserRecord> {
    (0..count)
        .map(|i| {
            let data = format!(
                "{{\"src\":\"{prefix}\",\"i\":{i},\"pad\":\"{}\"}}",
                "x".repeat(50 + (i * 37) % 400)
            );
            UserRecord::new(
                format!("{prefix}-{}", i % 64),
                None,
                Bytes::from(data),
                1 << 20,
            )
            .unwrap_or_else(|e| panic!("record: {e}"))
        })
        .collect()
}

fn quick_config() -> ProducerConfig {
    ProducerConfig {
        linger: Duration::from_millis(10),
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(300),
        operator_pause: Duration::from_millis(200),
        ..ProducerConfig::default()
    }
}

/// Runs a producer task over a fresh spool holding `waves[0]`; each later wave is enqueued
/// once the spool drained, after `between` ran. Returns the producer's counters.
async fn run(
    fake: &Fake,
    dir: &Path,
    waves: Vec<Vec<UserRecord>>,
    config: ProducerConfig,
    credentials: CredentialsCache,
    request_timeout: Duration,
    between: impl Fn(usize) + Send + 'static,
) -> ProducerStats {
    let client = support::client_with(&fake.server.url(), STREAM, credentials, request_timeout);
    let spool = Spool::open(SpoolConfig::new(dir.join("spool"), 32 << 20))
        .unwrap_or_else(|e| panic!("spool: {e}"));
    let shared = SharedSpool::new(spool);
    let mut waves = waves.into_iter();
    for record in waves.next().unwrap_or_default() {
        shared
            .enqueue(&record)
            .unwrap_or_else(|e| panic!("enqueue: {e}"));
    }
    let dead = DeadLetterFile::open(dir.join("dead.jsonl"), 1 << 20)
        .unwrap_or_else(|e| panic!("dead letters: {e}"));
    let settings = DriverSettings {
        sync_interval: Duration::from_millis(200),
        drain_timeout: Duration::from_secs(2),
    };
    let task = ProducerTask::new(client, shared.clone(), dead, config, settings)
        .unwrap_or_else(|e| panic!("task: {e}"));
    let watcher = shared.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = task
        .run(async move {
            let mut wave_index = 0;
            loop {
                while watcher.stats().pending_records > 0 {
                    assert!(Instant::now() < deadline, "records not delivered in 30 s");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let Some(wave) = waves.next() else { break };
                wave_index += 1;
                between(wave_index);
                for record in wave {
                    watcher
                        .enqueue(&record)
                        .unwrap_or_else(|e| panic!("enqueue: {e}"));
                }
            }
        })
        .await
        .unwrap_or_else(|e| panic!("producer: {e}"));
    assert_eq!(shared.stats().pending_records, 0);
    stats
}

#[derive(Debug, Default)]
struct Figures {
    delivered: usize,
    duplicates: usize,
    discarded_aggregates: usize,
    stored_kinesis_records: usize,
}

/// Reads the fake's shards as a KCL consumer would and checks delivery and duplicates.
fn verify(fake: &Fake, sent: &[UserRecord], skip_keys: &[&str], name: &str) -> Figures {
    let stats = fake.kds.stats();
    let ambiguous = &stats.ambiguous_requests;
    // (key, data) → request indices of every copy visible to a consumer.
    let mut copies: HashMap<(String, Vec<u8>), Vec<u64>> = HashMap::new();
    let mut figures = Figures::default();
    for shard in fake.kds.shards(STREAM) {
        for stored in &shard.records {
            figures.stored_kinesis_records += 1;
            let subs: Vec<(String, Option<HashKey>, Vec<u8>)> = if looks_aggregated(&stored.data) {
                decode_aggregate(&stored.data)
                    .unwrap_or_else(|e| panic!("stored aggregate does not decode: {e}"))
                    .into_iter()
                    .map(|s| (s.partition_key, s.explicit_hash_key, s.data.to_vec()))
                    .collect()
            } else {
                let ehk = stored
                    .explicit_hash_key
                    .as_deref()
                    .map(|t| HashKey::parse_decimal(t).unwrap_or_else(|e| panic!("{e}")));
                vec![(stored.partition_key.clone(), ehk, stored.data.to_vec())]
            };
            let inside = subs.iter().all(|(key, ehk, _)| {
                let hash = ehk.unwrap_or_else(|| HashKey::from_partition_key(key)).0;
                shard.start <= hash && hash <= shard.end
            });
            if !inside {
                // Only an aggregate can straddle shards; a KCL consumer drops it whole.
                assert!(subs.len() > 1, "a raw record was stored outside its shard");
                figures.discarded_aggregates += 1;
                continue;
            }
            for (key, _, data) in subs {
                copies
                    .entry((key, data))
                    .or_default()
                    .push(stored.request_index);
            }
        }
    }
    for record in sent {
        if skip_keys.contains(&record.partition_key()) {
            continue;
        }
        let key = (record.partition_key().to_owned(), record.data().to_vec());
        let Some(indices) = copies.get(&key) else {
            panic!(
                "{name}: record {:?} was accepted but never delivered",
                record.partition_key()
            );
        };
        figures.delivered += 1;
        if indices.len() > 1 {
            figures.duplicates += indices.len() - 1;
            let certain = indices.iter().filter(|i| !ambiguous.contains(i)).count();
            assert!(
                certain <= 1,
                "{name}: record {:?} stored by requests {indices:?}, more than once outside the unknown-outcome requests {ambiguous:?}",
                record.partition_key()
            );
        }
    }
    println!(
        "{name}: accepted {} delivered {} duplicates {} (unknown-outcome requests {:?}); fake stored {} Kinesis records in {} requests, throttled {} records, {} scripted errors, {} stalls, {} reshards, {} aggregates discarded by the KCL range filter",
        sent.len(),
        figures.delivered,
        figures.duplicates,
        ambiguous,
        figures.stored_kinesis_records,
        stats.put_requests,
        stats.records_throttled,
        stats.scripted_errors,
        stats.stalls,
        stats.reshards,
        figures.discarded_aggregates,
    );
    figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_record_throttling_resends_only_the_failed_records() {
    let fake = fake(
        2,
        FaultPlan {
            throttle_every: Some(3),
            throttle_budget: 200,
            internal_failure_every: Some(7),
            internal_failure_budget: 40,
            ..FaultPlan::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sent = records("thr", 700);
    let config = ProducerConfig {
        limits: BatchLimits {
            aggregation: false,
            ..BatchLimits::default()
        },
        ..quick_config()
    };
    let stats = run(
        &fake,
        dir.path(),
        vec![sent.clone()],
        config,
        support::credentials(),
        Duration::from_secs(5),
        |_| {},
    )
    .await;
    let figures = verify(&fake, &sent, &[], "per-record throttling");
    let fake_stats = fake.kds.stats();
    println!("  producer: {stats:?}");
    assert_eq!(figures.duplicates, 0, "successful records are never resent");
    assert_eq!(fake_stats.records_stored, 700);
    assert_eq!(stats.throttled_records, fake_stats.records_throttled);
    assert_eq!(stats.internal_failures, fake_stats.records_internal_failure);
    assert!(fake_stats.records_throttled > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_bursts_are_retried_and_only_unknown_outcomes_duplicate() {
    let after_store = |status, code: &str| ScriptedError {
        after_store: true,
        ..ScriptedError::new(status, code, "scripted after storing")
    };
    let fake = fake(
        2,
        FaultPlan {
            scripted: [
                ScriptedError::new(500, "InternalFailure", "burst"),
                ScriptedError::new(503, "ServiceUnavailable", "burst"),
                ScriptedError::new(500, "InternalFailure", "burst"),
                after_store(500, "InternalFailure"),
                after_store(503, "ServiceUnavailable"),
            ]
            .into(),
            ..FaultPlan::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sent = records("burst", 400);
    let config = ProducerConfig {
        max_in_flight_requests: 1,
        limits: BatchLimits {
            max_records_per_request: 20,
            ..BatchLimits::default()
        },
        ..quick_config()
    };
    let stats = run(
        &fake,
        dir.path(),
        vec![sent.clone()],
        config,
        support::credentials(),
        Duration::from_secs(5),
        |_| {},
    )
    .await;
    let figures = verify(&fake, &sent, &[], "500/503 bursts");
    println!("  producer: {stats:?}");
    assert_eq!(stats.failed_requests, 5);
    assert!(stats.ambiguous_records > 0);
    assert!(
        figures.duplicates > 0,
        "the after-store errors stored records the producer had to resend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeouts_are_retried_as_unknown_outcomes() {
    let fake = fake(
        2,
        FaultPlan {
            stall_requests: 2,
            stall_for: Duration::from_millis(1500),
            stall_after_store: true,
            ..FaultPlan::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sent = records("timeout", 300);
    let config = ProducerConfig {
        limits: BatchLimits {
            max_records_per_request: 10,
            ..BatchLimits::default()
        },
        ..quick_config()
    };
    let stats = run(
        &fake,
        dir.path(),
        vec![sent.clone()],
        config,
        support::credentials(),
        Duration::from_millis(400),
        |_| {},
    )
    .await;
    let figures = verify(&fake, &sent, &[], "request timeouts");
    println!("  producer: {stats:?}");
    assert!(
        stats.ambiguous_records > 0,
        "timeouts counted as unknown outcomes"
    );
    assert_eq!(fake.kds.stats().stalls, 2);
    assert!(figures.delivered == sent.len());
}

struct CountingProvider {
    calls: AtomicU64,
}

impl ProvideCredentials for CountingProvider {
    fn provide(&self) -> ProvideFuture<'_> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::ready(Ok(Credentials::new(
            format!("AKIDTEST{n:08}"),
            "secret",
            None,
            None,
        ))))
    }

    fn name(&self) -> &'static str {
        "counting"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_forces_fresh_credentials() {
    let expired = || {
        ScriptedError::new(
            400,
            "ExpiredTokenException",
            "The security token included in the request is expired",
        )
    };
    let fake = fake(
        2,
        FaultPlan {
            scripted: [expired(), expired()].into(),
            ..FaultPlan::default()
        },
    )
    .await;
    let provider = Arc::new(CountingProvider {
        calls: AtomicU64::new(0),
    });
    let cache = CredentialsCache::new(provider.clone(), Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sent = records("token", 200);
    let config = ProducerConfig {
        max_in_flight_requests: 1,
        ..quick_config()
    };
    let stats = run(
        &fake,
        dir.path(),
        vec![sent.clone()],
        config,
        cache,
        Duration::from_secs(5),
        |_| {},
    )
    .await;
    let figures = verify(&fake, &sent, &[], "ExpiredTokenException");
    let calls = provider.calls.load(Ordering::SeqCst);
    println!("  producer: {stats:?}; credential fetches {calls}");
    assert_eq!(stats.credential_refreshes, 2);
    assert!(
        calls >= 3,
        "first fetch plus one per expired token, got {calls}"
    );
    assert_eq!(figures.duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_errors_pause_sending_and_keep_every_record() {
    let fake = fake(
        2,
        FaultPlan {
            scripted: [
                ScriptedError::new(
                    400,
                    "AccessDeniedException",
                    "not authorized to perform kinesis:PutRecords",
                ),
                ScriptedError::new(
                    400,
                    "ResourceNotFoundException",
                    "Stream edge-telemetry not found",
                ),
                ScriptedError::new(400, "KMSDisabledException", "key disabled"),
            ]
            .into(),
            ..FaultPlan::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sent = records("operator", 150);
    let config = ProducerConfig {
        max_in_flight_requests: 1,
        ..quick_config()
    };
    let started = Instant::now();
    let stats = run(
        &fake,
        dir.path(),
        vec![sent.clone()],
        config,
        support::credentials(),
        Duration::from_secs(5),
        |_| {},
    )
    .await;
    let figures = verify(&fake, &sent, &[], "operator-fixable errors");
    println!("  producer: {stats:?}");
    assert_eq!(stats.operator_pauses, 3);
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "three pauses of 200 ms"
    );
    assert_eq!(stats.dead_lettered, 0);
    assert_eq!(figures.duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_isolated_and_dead_lettered_with_the_reason() {
    let fake = fake(
        2,
        FaultPlan {
            poison_partition_key: Some("poison".into()),
            ..FaultPlan::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut sent = records("ok", 120);
    let poison = UserRecord::new(
        "poison",
        None,
        Bytes::from_static(b"{\"bad\":true}"),
        1 << 20,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    sent.insert(60, poison);
    let stats = run(
        &fake,
        dir.path(),
        vec![sent.clone()],
        quick_config(),
        support::credentials(),
        Duration::from_secs(5),
        |_| {},
    )
    .await;
    let figures = verify(&fake, &sent, &["poison"], "poison record");
    println!("  producer: {stats:?}");
    let dead =
        std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(lines.len(), 1, "{dead}");
    assert_eq!(lines[0]["partition_key"], "poison");
    assert!(
        lines[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ValidationException"))
    );
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(figures.delivered, 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_between_two_batches_is_followed() {
    let fake = fake(
        2,
        FaultPlan {
            list_shards_page_size: Some(1),
            ..FaultPlan::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let first = records("before", 300);
    let second = records("after", 600);
    let kds = fake.kds.clone();
    let config = ProducerConfig {
        max_in_flight_requests: 1,
        ..quick_config()
    };
    let stats = run(
        &fake,
        dir.path(),
        vec![first.clone(), second.clone()],
        config,
        support::credentials(),
        Duration::from_secs(5),
        move |_| kds.reshard(STREAM),
    )
    .await;
    let all: Vec<UserRecord> = first.into_iter().chain(second).collect();
    let figures = verify(&fake, &all, &[], "reshard between batches");
    println!("  producer: {stats:?}");
    let shards = fake.kds.shards(STREAM);
    assert_eq!(shards.iter().filter(|s| !s.closed).count(), 4);
    assert!(
        stats.shard_map_changes_seen > 0,
        "responses showed the new shards"
    );
    // Records after the reshard landed in the children.
    let children_records: usize = shards
        .iter()
        .filter(|s| s.parent.is_some())
        .map(|s| s.records.len())
        .sum();
    assert!(children_records > 0);
    assert_eq!(
        figures.discarded_aggregates > 0,
        stats.wrong_shard_resends > 0,
        "every straddling aggregate was resent"
    );
}

// ---- SIGKILL mid-batch, then restart ----

const CHILD_ENV: &str = "KE_TELEMETRY_CHILD_SPOOL";

/// Entry point of the producer process the SIGKILL test starts (this test binary again).
/// Ignored in normal runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run only as the child process of sigkill_mid_batch_then_restart_loses_nothing"]
async fn child_producer_process() {
    let Ok(spool_dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let endpoint = std::env::var("KE_TELEMETRY_CHILD_ENDPOINT").unwrap_or_else(|e| panic!("{e}"));
    let to_accept: usize = std::env::var("KE_TELEMETRY_CHILD_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let dir = Path::new(&spool_dir);
    let spool = Spool::open(SpoolConfig::new(dir.join("spool"), 32 << 20))
        .unwrap_or_else(|e| panic!("spool: {e}"));
    let shared = SharedSpool::new(spool);
    let client = support::client_with(
        &endpoint,
        STREAM,
        support::credentials(),
        Duration::from_secs(5),
    );
    let dead =
        DeadLetterFile::open(dir.join("dead.jsonl"), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
    let config = ProducerConfig {
        max_in_flight_requests: 4,
        limits: BatchLimits {
            max_records_per_request: 50,
            aggregation_max_bytes: 4096,
            ..BatchLimits::default()
        },
        ..quick_config()
    };
    let task = ProducerTask::new(
        client,
        shared.clone(),
        dead,
        config,
        DriverSettings::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let writer = shared.clone();
    let stats = task
        .run(async move {
            let all = records("kill", to_accept);
            for (i, chunk) in all.chunks(25).enumerate() {
                for record in chunk {
                    writer
                        .enqueue(record)
                        .unwrap_or_else(|e| panic!("enqueue: {e}"));
                }
                // The parent counts a record as accepted once this line is printed.
                println!("ACCEPTED {}", (i * 25 + chunk.len()));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            while writer.stats().pending_records > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|e| panic!("producer: {e}"));
    println!("CHILD DONE {stats:?}");
}

fn spawn_child(dir: &Path, endpoint: &str, records: usize) -> std::process::Child {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    std::process::Command::new(exe)
        .args([
            "child_producer_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .env("KE_TELEMETRY_CHILD_ENDPOINT", endpoint)
        .env("KE_TELEMETRY_CHILD_RECORDS", records.to_string())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the child producer: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_then_restart_loses_nothing() {
    // Every request is stored, then answered 150 ms later: a kill lands with requests in flight.
    let fake = fake(
        2,
        FaultPlan {
            stall_requests: u32::MAX,
            stall_for: Duration::from_millis(150),
            stall_after_store: true,
            ..FaultPlan::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let total = 2000;
    let mut child = spawn_child(dir.path(), &fake.server.url(), total);
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Kill once several requests were stored, with more in flight (each is answered 150 ms
    // after it was stored).
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.kds.stats().put_requests < 8 {
        if Instant::now() >= deadline {
            let lines: Vec<String> = rx.try_iter().collect();
            panic!(
                "child made no progress: fake {:?}, child said {lines:?}",
                fake.kds.stats()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap_or_else(|e| panic!("SIGKILL: {e}"));
    let requests_at_kill = fake.kds.stats().put_requests;
    let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(!status.success(), "the child was killed");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let accepted = rx
        .try_iter()
        .filter_map(|line| {
            line.strip_prefix("ACCEPTED ")
                .and_then(|n| n.trim().parse::<usize>().ok())
        })
        .max()
        .unwrap_or(0);
    let stored_at_kill: usize = fake
        .kds
        .shards(STREAM)
        .iter()
        .flat_map(|s| s.records.iter())
        .map(|r| decode_aggregate(&r.data).map_or(1, |subs| subs.len()))
        .sum();
    assert!(accepted > 0);

    // Restart: no new records, drain the spool. The fake stops stalling.
    fake.kds.with_faults(|f| f.stall_requests = 0);
    let mut restarted = spawn_child(dir.path(), &fake.server.url(), 0);
    let status = restarted.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "the restarted producer drained the spool");

    // Requests in flight at the kill were at most the child's 4 last ones: only their records
    // may be stored twice.
    let in_flight_at_kill: Vec<u64> =
        (requests_at_kill.saturating_sub(4)..requests_at_kill).collect();
    let all = records("kill", total);
    let sent = &all[..accepted];
    let mut copies: HashMap<(String, Vec<u8>), Vec<u64>> = HashMap::new();
    for shard in fake.kds.shards(STREAM) {
        for stored in &shard.records {
            let subs: Vec<(String, Vec<u8>)> = if looks_aggregated(&stored.data) {
                decode_aggregate(&stored.data)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .into_iter()
                    .map(|s| (s.partition_key, s.data.to_vec()))
                    .collect()
            } else {
                vec![(stored.partition_key.clone(), stored.data.to_vec())]
            };
            for sub in subs {
                copies.entry(sub).or_default().push(stored.request_index);
            }
        }
    }
    let mut duplicates = 0;
    for record in sent {
        let key = (record.partition_key().to_owned(), record.data().to_vec());
        let indices = copies.get(&key).unwrap_or_else(|| {
            panic!(
                "accepted record {:?} lost across SIGKILL",
                record.partition_key()
            )
        });
        if indices.len() > 1 {
            duplicates += indices.len() - 1;
            assert!(
                indices
                    .iter()
                    .filter(|i| !in_flight_at_kill.contains(i))
                    .count()
                    <= 1,
                "record stored by {indices:?}; only requests {in_flight_at_kill:?} were in flight at the kill"
            );
        }
    }
    let delivered_beyond = copies.len().saturating_sub(accepted);
    println!(
        "SIGKILL mid-batch: accepted before kill {accepted} (printed), user records stored at kill {stored_at_kill}, requests at kill {requests_at_kill}, after restart every accepted record delivered; duplicates {duplicates} (all from the {} requests in flight at the kill); {delivered_beyond} more records enqueued after the last ACCEPTED line were delivered too",
        in_flight_at_kill.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_endpoint_speaks_kds_to_boto3_and_takes_faults_over_http() {
    let fake = fake(3, FaultPlan::default()).await;
    let http = reqwest::Client::new();
    let plan = r#"{"throttle_every": 2, "throttle_budget": 20,
                   "scripted": [{"status": 503, "code": "ServiceUnavailable", "message": "burst"}]}"#;
    let answer = http
        .post(format!(
            "{}{}",
            fake.server.url(),
            kinesis_edge::local::kds::FAULTS_PATH
        ))
        .body(plan)
        .send()
        .await
        .unwrap_or_else(|e| panic!("fault control: {e}"));
    assert_eq!(answer.status().as_u16(), 200);
    let bad = http
        .post(format!(
            "{}{}",
            fake.server.url(),
            kinesis_edge::local::kds::FAULTS_PATH
        ))
        .body(r#"{"throttle_evry": 2}"#)
        .send()
        .await
        .unwrap_or_else(|e| panic!("fault control: {e}"));
    assert_eq!(bad.status().as_u16(), 400, "unknown fields are refused");

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sent = records("boto", 200);
    let config = ProducerConfig {
        limits: BatchLimits {
            aggregation: false,
            ..BatchLimits::default()
        },
        ..quick_config()
    };
    run(
        &fake,
        dir.path(),
        vec![sent.clone()],
        config,
        support::credentials(),
        Duration::from_secs(5),
        |_| {},
    )
    .await;
    let stats = http
        .get(format!(
            "{}{}",
            fake.server.url(),
            kinesis_edge::local::kds::STATS_PATH
        ))
        .send()
        .await
        .unwrap_or_else(|e| panic!("stats: {e}"))
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("stats body: {e}"));
    let stats: serde_json::Value =
        serde_json::from_slice(&stats).unwrap_or_else(|e| panic!("stats JSON: {e}"));
    assert_eq!(stats["records_throttled"], 20);
    assert_eq!(stats["scripted_errors"], 1);
    assert_eq!(stats["unsigned_requests"], 0, "every request was signed");

    if let Err(reason) = support::ensure_aggregation_tools() {
        support::skip(&format!("boto3 read-back: {reason}"));
        return;
    }
    let endpoint = fake.server.url();
    let (shards, read) = tokio::task::spawn_blocking(move || support::read_back(&endpoint, STREAM))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(shards.len(), 3);
    let ranges: HashMap<&str, (u128, u128)> = shards
        .iter()
        .map(|s| (s.id.as_str(), (s.start, s.end)))
        .collect();
    let mut seen = HashSet::new();
    for record in &read {
        let (start, end) = ranges[record.shard.as_str()];
        let hash = HashKey::from_partition_key(&record.sub.partition_key).0;
        assert!(start <= hash && hash <= end);
        seen.insert((record.sub.partition_key.clone(), record.sub.data.clone()));
    }
    for record in &sent {
        assert!(seen.contains(&(record.partition_key().to_owned(), record.data().to_vec())));
    }
    println!(
        "boto3 read back {} records from the local endpoint's 3 shards",
        read.len()
    );
}
