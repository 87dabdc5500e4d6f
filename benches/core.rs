//! Micro-benchmarks of the broker core, without Python or sockets:
//! `cargo bench --bench core`.
//!
//! - frame: decoding a buffer of length-prefixed frames, and encoding one.
//! - envelope: parsing a publish request (the per-message cost of the protocol).
//! - matcher: matching a topic against an index of many unrelated subscriptions.
//! - router: publishing to 1 and to 8 subscribers (encode once, queue to each).

#[path = "support/routing.rs"]
mod routing;

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use message_broker::broker::router::Publish;
use message_broker::index::SubscriptionIndex;
use message_broker::protocol::frame::{FrameDecoder, Framing};
use message_broker::protocol::jsonrpc;
use serde_json::value::RawValue;

const PUBLISH: &str = r#"{"jsonrpc":"2.0","method":"publish","params":{"topic":"jobs.activated","payload":{"job_id":123456,"status":"activated","worker":"saw-01","note":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},"message_id":"0f3c2a9e11d3-42"},"id":"pub:0f3c2a9e11d3-42"}"#;

fn frame(c: &mut Criterion) {
    let mut wire = BytesMut::new();
    for _ in 0..1000 {
        Framing::LengthPrefixed.encode(PUBLISH.as_bytes(), &mut wire);
    }
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("decode 1000 frames", |b| {
        b.iter_batched(
            || wire.clone(),
            |mut buf| {
                let mut decoder = FrameDecoder::new(1 << 20);
                while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                    black_box(frame);
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode 1 frame", |b| {
        let mut out = BytesMut::with_capacity(4096);
        b.iter(|| {
            out.clear();
            Framing::LengthPrefixed.encode(black_box(PUBLISH.as_bytes()), &mut out);
        })
    });
    group.finish();
}

fn envelope(c: &mut Criterion) {
    c.bench_function("envelope/parse publish request", |b| {
        b.iter(|| {
            let parsed = jsonrpc::parse(black_box(PUBLISH.as_bytes())).unwrap();
            black_box(parsed);
        })
    });
}

fn matcher(c: &mut Criterion) {
    let mut index = SubscriptionIndex::new();
    for i in 0..10_000u64 {
        index.insert(i, format!("other.{i}.event").into());
    }
    index.insert(10_001, "jobs.*".into());
    index.insert(10_002, "jobs.#".into());
    index.insert(10_003, "#".into());
    index.insert(10_004, "jobs.activated".into());
    let mut out = Vec::with_capacity(16);
    c.bench_function("matcher/4 matches among 10,004 subscriptions", |b| {
        b.iter(|| {
            out.clear();
            index.collect(black_box("jobs.activated"), &mut out);
            black_box(&out);
        })
    });
}

fn router(c: &mut Criterion) {
    let mut group = c.benchmark_group("router");
    for subscribers in [1usize, 8] {
        let (router, mut queues) = routing::router_with_subscribers(subscribers);
        let payload = RawValue::from_string(r#"{"job_id":123456,"status":"activated"}"#.into()).unwrap();
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(format!("publish to {subscribers}"), |b| {
            b.iter(|| {
                let published = router.publish(Publish::new("jobs.activated", &payload, "bench")).unwrap();
                black_box(published);
                for queue in &mut queues {
                    black_box(queue.try_recv());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, frame, envelope, matcher, router);
criterion_main!(benches);
