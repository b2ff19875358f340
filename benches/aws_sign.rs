//! SigV4 signing cost per request: a PutMedia connection (streamed body, empty-payload hash)
//! and Kinesis PutRecords batches whose JSON body is hashed.

use std::hint::black_box;
use std::time::{Duration, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kinesis_edge::aws::{Credentials, PayloadHash, Secret, Service, sign};

fn credentials() -> Credentials {
    Credentials::new(
        "ASIAEXAMPLEEXAMPLE00",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        Some(Secret::new("x".repeat(800))),
        None,
    )
}

fn bench_sign(c: &mut Criterion) {
    let creds = credentials();
    let time = UNIX_EPOCH + Duration::from_secs(1_700_000_000);

    c.bench_function("sign put_media (empty streaming hash)", |b| {
        b.iter(|| {
            let mut request = http::Request::builder()
                .method("POST")
                .uri("https://s-1234abcd.kinesisvideo.us-west-2.amazonaws.com/putMedia")
                .header("x-amzn-stream-name", "front-door")
                .header("x-amzn-fragment-timecode-type", "ABSOLUTE")
                .header("x-amzn-producer-start-timestamp", "1700000000.000")
                .header("x-amzn-fragment-acknowledgment-required", "1")
                .body(())
                .unwrap_or_default();
            let result = sign(
                &mut request,
                &creds,
                "us-west-2",
                Service::KinesisVideo,
                time,
                PayloadHash::EmptyStreaming,
            );
            black_box((result.is_ok(), request))
        })
    });

    let mut group = c.benchmark_group("sign put_records");
    for body_len in [1024usize, 256 * 1024, 5 * 1024 * 1024] {
        let body = vec![b'a'; body_len];
        group.throughput(Throughput::Bytes(body_len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(body_len), &body, |b, body| {
            b.iter(|| {
                let mut request = http::Request::builder()
                    .method("POST")
                    .uri("https://kinesis.us-west-2.amazonaws.com/")
                    .header("content-type", "application/x-amz-json-1.1")
                    .header("x-amz-target", "Kinesis_20131202.PutRecords")
                    .body(())
                    .unwrap_or_default();
                let result = sign(
                    &mut request,
                    &creds,
                    "us-west-2",
                    Service::Kinesis,
                    time,
                    PayloadHash::Bytes(body),
                );
                black_box((result.is_ok(), request))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_sign);
criterion_main!(benches);
