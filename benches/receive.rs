//! Micro-benchmarks of the receiver's CPU work per delivery: the signature check and reading
//! the envelope. `cargo bench --bench receive`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use dsyncd::config::Secret;
use dsyncd::envelope::Envelope;
use dsyncd::signature::{sign, SignatureHeader, Verifier};

const BODY: &str = include_str!("../samples/dsync.user.created.json");

fn signature(c: &mut Criterion) {
    let body = BODY.trim_end().as_bytes();
    let now = SystemTime::now();
    let now_ms = now.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let header = sign(&Secret::new("whsec_current"), now_ms, body);
    let one = Verifier::new(&[Secret::new("whsec_current")], Duration::from_secs(180));
    let rotating = Verifier::new(
        &[Secret::new("whsec_previous"), Secret::new("whsec_current")],
        Duration::from_secs(180),
    );

    let mut group = c.benchmark_group("signature");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse header", |b| {
        b.iter(|| SignatureHeader::parse(black_box(header.as_bytes())).unwrap())
    });
    group.bench_function("verify, one secret", |b| {
        b.iter(|| {
            one.verify(Some(black_box(header.as_bytes())), black_box(body), now)
                .unwrap()
        })
    });
    group.bench_function("verify, second of two secrets", |b| {
        b.iter(|| {
            rotating
                .verify(Some(black_box(header.as_bytes())), black_box(body), now)
                .unwrap()
        })
    });
    group.finish();
}

fn envelope(c: &mut Criterion) {
    let body = BODY.trim_end().as_bytes();
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse", |b| {
        b.iter(|| Envelope::parse(black_box(body)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, signature, envelope);
criterion_main!(benches);
