//! Telemetry hot path on one core: user records through KPL aggregation and request packing
//! (`RequestBuilder`, 4 shards), the same through the whole sans-I/O producer (add → plan →
//! acknowledge), and beside them the MD5 of the same bytes, the floor this path cannot beat
//! (every aggregate carries an MD5 of its contents).

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use kinesis_edge::telemetry::batch::{BatchLimits, Offer, RequestBuilder, ShardBudget};
use kinesis_edge::telemetry::producer::{Producer, ProducerConfig, RecordOutcome};
use kinesis_edge::telemetry::rate_limit::Jitter;
use kinesis_edge::telemetry::shard_map::{ShardDescription, ShardMap};
use kinesis_edge::telemetry::{HashKey, UserRecord};
use md5::{Digest, Md5};
use std::time::Instant;

const RECORDS: usize = 4096;

fn four_shards() -> ShardMap {
    let quarter = 1u128 << 126;
    let shards: Vec<ShardDescription> = (0..4u128)
        .map(|i| ShardDescription {
            shard_id: format!("shardId-{i:012}"),
            starting_hash_key: HashKey(i * quarter),
            ending_hash_key: HashKey(if i == 3 {
                u128::MAX
            } else {
                (i + 1) * quarter - 1
            }),
            open: true,
        })
        .collect();
    ShardMap::from_shards(&shards).unwrap_or_else(|e| panic!("{e}"))
}

fn records(size: usize) -> Vec<UserRecord> {
    let payload = Bytes::from(vec![b'x'; size]);
    (0..RECORDS)
        .map(|i| {
            UserRecord::new(
                format!("device-{}/camera-{}", i % 16, i % 4),
                None,
                payload.clone(),
                1 << 20,
            )
            .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}

fn pack(records: &[UserRecord], map: &ShardMap) -> usize {
    let limits = BatchLimits::default();
    let mut builder = RequestBuilder::new(limits);
    let mut kinesis_records = 0;
    for (i, record) in records.iter().enumerate() {
        let shard = map.shard_for(record.hash_key()).map(|s| s.id.clone());
        loop {
            match builder.offer(
                shard.as_ref(),
                ShardBudget::UNLIMITED,
                i,
                record,
                usize::MAX,
                500,
            ) {
                Offer::Added => break,
                Offer::TooLarge => break,
                _ => {
                    let full = std::mem::replace(&mut builder, RequestBuilder::new(limits));
                    kinesis_records += full.finish().0.len();
                }
            }
        }
    }
    kinesis_records + builder.finish().0.len()
}

fn through_producer(records: &[UserRecord], map: &ShardMap) -> usize {
    let t0 = Instant::now();
    let config = ProducerConfig {
        pacing: false,
        max_pending_records: usize::MAX,
        ..ProducerConfig::default()
    };
    let mut producer = Producer::new(config, Jitter::seeded(1));
    producer.set_shard_map(map.clone(), t0);
    for (i, record) in records.iter().enumerate() {
        producer.add(i as u64, record.clone(), t0);
    }
    producer.flush(true);
    let mut delivered = 0;
    while let Some(plan) = producer.poll_request(t0) {
        let outcomes = plan
            .records
            .iter()
            .map(|p| RecordOutcome::Stored {
                shard_id: p.shard.as_deref().unwrap_or_default().to_owned(),
                sequence_number: "1".into(),
            })
            .collect();
        producer.on_success(plan.id, outcomes, t0);
        delivered += producer.take_acked().len();
    }
    delivered
}

fn bench(c: &mut Criterion) {
    let map = four_shards();
    for size in [100usize, 10 * 1024] {
        let input = records(size);
        let mut group = c.benchmark_group(format!("telemetry_{size}B"));
        group.throughput(Throughput::Elements(RECORDS as u64));
        group.bench_with_input(
            BenchmarkId::new("aggregate_and_batch", size),
            &input,
            |b, input| b.iter(|| black_box(pack(input, &map))),
        );
        group.bench_with_input(
            BenchmarkId::new("producer_core", size),
            &input,
            |b, input| b.iter(|| black_box(through_producer(input, &map))),
        );
        group.bench_with_input(
            BenchmarkId::new("md5_of_same_bytes", size),
            &input,
            |b, input| {
                b.iter(|| {
                    for record in input {
                        black_box(Md5::digest(record.data()));
                    }
                })
            },
        );
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
