//! Property tests.
//!
//! * Aggregates built by the producer round-trip through AWS's `aws-kinesis-agg` de-aggregator
//!   for random keys (Unicode included, 1..=256 characters), explicit hash keys, data from 0
//!   bytes to 1 MiB and random record counts. Cases are generated first and checked by one
//!   Python process, to keep the test fast.
//! * No PutRecords request the producer plans ever breaks a limit, for random limits, shard
//!   maps, record sizes and orderings, and every record is delivered exactly once or (when
//!   larger than the stream allows) dead-lettered.

mod support;

use bytes::Bytes;
use kinesis_edge::telemetry::aggregate::AggregateBuilder;
use kinesis_edge::telemetry::batch::BatchLimits;
use kinesis_edge::telemetry::producer::{Producer, ProducerConfig, RecordOutcome};
use kinesis_edge::telemetry::rate_limit::Jitter;
use kinesis_edge::telemetry::shard_map::{ShardDescription, ShardMap};
use kinesis_edge::telemetry::{HashKey, UserRecord};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// 10 MiB of pseudo-random bytes; records are slices of it (no copy per record).
fn noise() -> &'static Bytes {
    static NOISE: OnceLock<Bytes> = OnceLock::new();
    NOISE.get_or_init(|| {
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut bytes = Vec::with_capacity(10 << 20);
        while bytes.len() < 10 << 20 {
            // xorshift64: cheap, and good enough to make every slice distinct.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.extend_from_slice(&state.to_le_bytes());
        }
        Bytes::from(bytes)
    })
}

fn data(offset: usize, len: usize) -> Bytes {
    let start = offset % (noise().len() - len + 1);
    noise().slice(start..start + len)
}

#[derive(Debug, Clone)]
struct Spec {
    key: String,
    explicit_hash_key: Option<u128>,
    len: usize,
    offset: usize,
}

fn spec_strategy(max_len: usize) -> impl Strategy<Value = Spec> {
    let len = prop_oneof![
        20 => 0usize..64,
        12 => 64usize..8192,
        1 => 8192usize..max_len,
    ];
    (
        "\\PC{1,256}",
        proptest::option::weighted(0.3, any::<u128>()),
        len,
        any::<usize>(),
    )
        .prop_map(|(key, explicit_hash_key, len, offset)| Spec {
            key,
            explicit_hash_key,
            len,
            offset,
        })
}

fn user_record(spec: &Spec, max_record_bytes: usize) -> Option<UserRecord> {
    UserRecord::new(
        spec.key.clone(),
        spec.explicit_hash_key.map(HashKey),
        data(spec.offset, spec.len),
        max_record_bytes,
    )
    .ok()
}

#[test]
fn aggregates_round_trip_through_aws_kinesis_agg() {
    if let Err(reason) = support::ensure_aggregation_tools() {
        support::skip(&format!("aws-kinesis-agg cannot be installed: {reason}"));
        return;
    }
    let mut runner = TestRunner::new(Config {
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        ..Config::default()
    });
    let case_strategy = proptest::collection::vec(spec_strategy(1 << 20), 1..40);
    let mut cases: Vec<Vec<UserRecord>> = Vec::new();
    for _ in 0..32 {
        let tree = case_strategy
            .new_tree(&mut runner)
            .unwrap_or_else(|e| panic!("strategy: {e}"));
        let records: Vec<UserRecord> = tree
            .current()
            .iter()
            .filter_map(|s| user_record(s, 1 << 20))
            .collect();
        cases.push(records);
    }
    // Fixed edge cases: empty data, a record of exactly 1 MiB with its key, two halves that
    // fill one aggregate, a 256-character non-ASCII key.
    let exact = UserRecord::new("k", None, data(0, (1 << 20) - 1), 1 << 20)
        .unwrap_or_else(|e| panic!("{e}"));
    let half = |o| {
        UserRecord::new("half", None, data(o, 500_000), 1 << 20).unwrap_or_else(|e| panic!("{e}"))
    };
    let wide = UserRecord::new(
        "鍵".repeat(256),
        Some(HashKey(u128::MAX)),
        Bytes::new(),
        1 << 20,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let empty = UserRecord::new("e", Some(HashKey(0)), Bytes::new(), 1 << 20)
        .unwrap_or_else(|e| panic!("{e}"));
    cases.push(vec![exact, half(1), half(2), wide, empty]);

    // Aggregate each case as the producer does for one shard: add until the limit, then start
    // a new aggregate; a lone record goes raw.
    let mut outer: Vec<(String, Vec<u8>)> = Vec::new();
    let mut expected: Vec<(bool, Vec<UserRecord>)> = Vec::new();
    let mut user_records = 0;
    for case in &cases {
        let mut builder = AggregateBuilder::new(1 << 20);
        let mut members = Vec::new();
        let mut flush = |builder: AggregateBuilder<usize>, members: &mut Vec<UserRecord>| {
            if let Some(kinesis) = builder.finish() {
                assert!(
                    kinesis.billed_bytes() <= 1 << 20,
                    "aggregate over the record limit"
                );
                outer.push((kinesis.partition_key.clone(), kinesis.data.to_vec()));
                expected.push((kinesis.aggregated, std::mem::take(members)));
            }
        };
        for (i, record) in case.iter().enumerate() {
            user_records += 1;
            if builder.try_add(i, record).is_err() {
                flush(
                    std::mem::replace(&mut builder, AggregateBuilder::new(1 << 20)),
                    &mut members,
                );
                builder
                    .try_add(i, record)
                    .unwrap_or_else(|_| panic!("first record always fits"));
            }
            members.push(record.clone());
        }
        flush(builder, &mut members);
    }
    let decoded = support::deaggregate_with_python(&outer);
    assert_eq!(decoded.len(), expected.len());
    let mut aggregates = 0;
    for ((aggregated, subs), (was_aggregated, members)) in decoded.iter().zip(&expected) {
        assert_eq!(
            aggregated, was_aggregated,
            "aws-kinesis-agg disagrees on whether this is an aggregate"
        );
        assert_eq!(subs.len(), members.len());
        if *was_aggregated {
            aggregates += 1;
        }
        for (sub, member) in subs.iter().zip(members) {
            assert_eq!(sub.partition_key, member.partition_key());
            assert_eq!(sub.data.as_slice(), member.data().as_ref());
            if *was_aggregated {
                assert_eq!(
                    sub.explicit_hash_key,
                    member.explicit_hash_key().map(|k| k.to_string())
                );
            }
        }
    }
    println!(
        "aws-kinesis-agg round trip: {} cases, {user_records} user records in {} Kinesis records ({aggregates} aggregates), {} MiB",
        cases.len(),
        outer.len(),
        outer.iter().map(|(_, d)| d.len()).sum::<usize>() >> 20
    );
}

fn shard_map(count: u32) -> ShardMap {
    let count = u128::from(count.max(1));
    let step = u128::MAX / count;
    let shards: Vec<ShardDescription> = (0..count)
        .map(|i| ShardDescription {
            shard_id: format!("shardId-{i:012}"),
            starting_hash_key: HashKey(i * step + u128::from(i > 0)),
            ending_hash_key: HashKey(if i + 1 == count {
                u128::MAX
            } else {
                (i + 1) * step
            }),
            open: true,
        })
        .collect();
    ShardMap::from_shards(&shards).unwrap_or_else(|e| panic!("{e}"))
}

fn limits_strategy() -> impl Strategy<Value = BatchLimits> {
    (
        1usize..=500,
        1usize..=10,
        0usize..=9,
        any::<bool>(),
        64usize..=(1 << 20),
    )
        .prop_map(
            |(records, record_mib, extra_mib, aggregation, aggregation_max)| {
                let max_record_bytes = record_mib << 20;
                BatchLimits {
                    max_records_per_request: records,
                    max_record_bytes,
                    max_request_bytes: (max_record_bytes + (extra_mib << 20)).min(10 << 20),
                    aggregation,
                    aggregation_max_bytes: aggregation_max,
                }
            },
        )
}

proptest! {
    #![proptest_config(Config { cases: 32, ..Config::default() })]

    #[test]
    fn no_request_ever_breaks_a_limit(
        limits in limits_strategy(),
        shards in 1u32..8,
        strict in any::<bool>(),
        specs in proptest::collection::vec(spec_strategy(3 << 20), 1..120),
    ) {
        let t0 = Instant::now();
        let config = ProducerConfig {
            limits,
            pacing: false,
            strict_ordering: strict,
            max_in_flight_requests: 1,
            ..ProducerConfig::default()
        };
        let mut producer = Producer::new(config, Jitter::seeded(5));
        let map = shard_map(shards);
        producer.set_shard_map(map.clone(), t0);
        let mut expected = HashSet::new();
        let mut too_large = HashSet::new();
        for (id, spec) in specs.iter().enumerate() {
            let Ok(record) = UserRecord::with_valid_key(
                spec.key.clone(),
                spec.explicit_hash_key.map(HashKey),
                data(spec.offset, spec.len),
            ) else {
                continue;
            };
            if record.raw_bytes() > limits.max_record_bytes {
                too_large.insert(id as u64);
            } else {
                expected.insert(id as u64);
            }
            producer.add(id as u64, record, t0);
        }
        producer.flush(true);
        let mut delivered = HashSet::new();
        let mut now = t0;
        for _ in 0..10_000 {
            let Some(plan) = producer.poll_request(now) else { break };
            prop_assert!(plan.records.len() <= limits.max_records_per_request);
            let bytes: usize = plan.records.iter().map(|r| r.record.billed_bytes()).sum();
            prop_assert!(bytes <= limits.max_request_bytes, "request of {} bytes", bytes);
            let mut shards_in_request = HashSet::new();
            for planned in &plan.records {
                prop_assert!(planned.record.billed_bytes() <= limits.max_record_bytes);
                if planned.record.aggregated {
                    prop_assert!(limits.aggregation);
                    prop_assert!(planned.record.billed_bytes() <= limits.aggregation_max_bytes.min(limits.max_record_bytes));
                    let shard = planned.shard.as_ref().and_then(|id| map.get(id));
                    prop_assert!(shard.is_some());
                    if let Some(shard) = shard {
                        for key in &planned.record.member_hash_keys {
                            prop_assert!(shard.contains(*key), "aggregate mixes shards");
                        }
                    }
                }
                if strict {
                    prop_assert!(shards_in_request.insert(planned.shard.clone()), "strict: two records for one shard");
                }
            }
            let outcomes = plan
                .records
                .iter()
                .map(|planned| RecordOutcome::Stored {
                    shard_id: planned.shard.as_deref().unwrap_or_default().to_owned(),
                    sequence_number: "1".into(),
                })
                .collect();
            producer.on_success(plan.id, outcomes, now);
            for id in producer.take_acked() {
                prop_assert!(delivered.insert(id), "record {} delivered twice", id);
            }
            now += Duration::from_millis(1);
        }
        let dead: HashSet<u64> = producer.take_dead_letters().into_iter().map(|d| d.id).collect();
        prop_assert_eq!(delivered, expected);
        prop_assert_eq!(dead, too_large);
    }
}
