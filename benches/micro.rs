//! Micro-benchmarks of the per-connection and per-byte hot parts: the relay's round trip and
//! bulk path (over in-memory pipes, so only pgwarden's own work is measured, not TLS or the
//! network), the header-only frame tracker, and startup-packet parsing.
//!
//! `cargo bench --bench micro`. Under `cargo test`/nextest each benchmark runs once, as a smoke
//! test of the code it measures.
// Benchmarks measure wall-clock time: std::time::Instant is what they need.
#![allow(clippy::disallowed_types)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pgwarden::protocol::frame::FrameTracker;
use pgwarden::protocol::startup::{encode_startup, parse_body};
use pgwarden::relay::{RelayOptions, StopSignal, relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A result set as the server sends it: RowDescription, `rows` DataRows of ~100 bytes,
/// CommandComplete, ReadyForQuery.
fn result_set(rows: usize) -> Vec<u8> {
    let mut s = msg(b'T', &[0u8; 30]);
    let row = msg(b'D', &[7u8; 96]);
    for _ in 0..rows {
        s.extend_from_slice(&row);
    }
    s.extend(msg(b'C', b"SELECT 1000\0"));
    s.extend(msg(b'Z', b"I"));
    s
}

fn frame_tracker(c: &mut Criterion) {
    let stream = result_set(10_000);
    let mut g = c.benchmark_group("frame_tracker");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    for chunk in [64usize, 16 * 1024, 64 * 1024] {
        g.bench_with_input(BenchmarkId::new("observe", chunk), &chunk, |b, &chunk| {
            b.iter(|| {
                let mut t = FrameTracker::default();
                for part in stream.chunks(chunk) {
                    t.observe(black_box(part)).unwrap();
                }
                assert_eq!(t.ready_status(), Some(b'I'));
            })
        });
    }
    g.finish();
}

fn startup_parse(c: &mut Criterion) {
    // What pgjdbc sends.
    let packet = encode_startup(
        3,
        0,
        &[
            ("user", "keycloak"),
            ("database", "keycloak"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "2"),
            ("application_name", "PostgreSQL JDBC Driver"),
        ],
    );
    c.bench_function("startup/parse_pgjdbc", |b| {
        b.iter(|| parse_body(black_box(&packet[4..])).unwrap())
    });
}

/// One relay between two in-memory pipes, with a far end for each side.
struct Pipes {
    client_far: tokio::io::DuplexStream,
    upstream_far: tokio::io::DuplexStream,
    task: tokio::task::JoinHandle<()>,
}

fn start_relay() -> Pipes {
    let (client_far, mut client) = duplex(256 * 1024);
    let (upstream_far, mut upstream) = duplex(256 * 1024);
    let task = tokio::spawn(async move {
        let stop = StopSignal::default();
        relay(
            &mut client,
            &mut upstream,
            BytesMut::new(),
            BytesMut::new(),
            &RelayOptions::default(),
            &stop,
        )
        .await;
    });
    Pipes {
        client_far,
        upstream_far,
        task,
    }
}

fn relay_round_trip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // An extended-protocol query and its answer, as pgbench -S -M extended exchanges them.
    let query = {
        let mut q = msg(b'B', &[0u8; 40]);
        q.extend(msg(b'E', &[0, 0, 0, 0, 0]));
        q.extend(msg(b'S', b""));
        q
    };
    let answer = {
        let mut a = msg(b'2', b"");
        a.extend(msg(b'D', &[1u8; 20]));
        a.extend(msg(b'C', b"SELECT 1\0"));
        a.extend(msg(b'Z', b"I"));
        a
    };
    c.bench_function("relay/round_trip", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut p = start_relay();
                let mut qbuf = vec![0u8; query.len()];
                let mut abuf = vec![0u8; answer.len()];
                let start = Instant::now();
                for _ in 0..iters {
                    p.client_far.write_all(&query).await.unwrap();
                    p.upstream_far.read_exact(&mut qbuf).await.unwrap();
                    p.upstream_far.write_all(&answer).await.unwrap();
                    p.client_far.read_exact(&mut abuf).await.unwrap();
                }
                let elapsed = start.elapsed();
                drop(p.client_far);
                p.task.await.unwrap();
                drop(p.upstream_far);
                elapsed
            })
        })
    });

    let block = result_set(10_000);
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.bench_function("bulk_upstream_to_client", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut p = start_relay();
                let mut sink = vec![0u8; block.len()];
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let (w, r) = tokio::join!(
                        p.upstream_far.write_all(&block),
                        p.client_far.read_exact(&mut sink)
                    );
                    w.unwrap();
                    r.unwrap();
                    total += start.elapsed();
                }
                drop(p.client_far);
                p.task.await.unwrap();
                total
            })
        })
    });
    g.finish();
}

criterion_group!(benches, frame_tracker, startup_parse, relay_round_trip);
criterion_main!(benches);
