//! The load harness: pgbench and psql against PostgreSQL directly, through PgBouncer and
//! through pgwarden, in the same run, on the same throwaway cluster, reported as ratios.
//!
//! Run with `cargo bench --bench load` (needs PostgreSQL's server binaries, `pgbench`, `psql`
//! and `pgbouncer`). Every leg is TLS: clients verify the listener's certificate, PgBouncer and
//! pgwarden verify PostgreSQL's (`verify-full`). PgBouncer runs in session mode with a pool, so
//! it reuses server connections; pgwarden opens a fresh backend with a fresh credential for
//! every client connection — the connection set-up figures show what that costs.
//!
//! Each scenario runs `BENCH_ROUNDS` times per target, the targets' order rotating from
//! round to round, and the report gives medians. Nothing here asserts a timing: the figures are
//! printed (and written as JSON to `BENCH_OUT` when set) for a person to read.
//!
//! Knobs (environment): `BENCH_SECONDS` (per pgbench run, default 10),
//! `BENCH_ROUNDS` (3), `BENCH_CLIENTS` (8), `BENCH_SCALE` (10),
//! `BENCH_COPY_MB` (100), `BENCH_IDLE` (200 idle sessions for memory),
//! `BENCH_PREFETCH` (pgwarden's `prefetch`, 4), `BENCH_ONLY` (a comma-separated subset of
//! `throughput,latency,connect,copy,idle`).
//!
//! `cargo bench --bench load -- count` runs the counting mode instead ([`count`]):
//! instructions, system calls and context switches per transaction, under callgrind and
//! strace, which a busy machine does not blur.
// Benchmarks measure wall-clock time: std::time::Instant is what they need.
#![allow(clippy::disallowed_types)]

mod count;
mod idle;
mod report;
mod run;
mod targets;

use report::{Report, Scenario};
use targets::{Bench, Target};

struct Knobs {
    seconds: u64,
    rounds: usize,
    clients: usize,
    scale: u32,
    copy_mb: usize,
    idle: usize,
    prefetch: usize,
    /// Scenarios to run; all when empty.
    only: Vec<String>,
}

impl Knobs {
    fn runs(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

fn main() {
    // `cargo test --all-targets` and nextest run bench binaries without `--bench` (nextest
    // first asks for a test list): this harness has no tests, so it lists and runs nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let knobs = Knobs {
        seconds: knob("BENCH_SECONDS", 10),
        rounds: knob("BENCH_ROUNDS", 3),
        clients: knob("BENCH_CLIENTS", 8),
        scale: knob("BENCH_SCALE", 10),
        copy_mb: knob("BENCH_COPY_MB", 100),
        idle: knob("BENCH_IDLE", 200),
        prefetch: knob("BENCH_PREFETCH", 4),
        only: knob("BENCH_ONLY", String::new())
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if std::env::args().any(|a| a == "count") {
        let counting = count::Counting {
            transactions: knob("BENCH_COUNT_TX", 2000),
            clients: knob("BENCH_COUNT_CLIENTS", 4),
            connections: knob("BENCH_COUNT_CONNECTIONS", 20),
        };
        let rows = rt.block_on(count::run(&counting, counting.clients + 20));
        if let Ok(path) = std::env::var("BENCH_OUT") {
            std::fs::write(&path, rows.to_string()).expect("writing BENCH_OUT");
            eprintln!("results written to {path}");
        }
        return;
    }
    let report = rt.block_on(run_all(&knobs));
    report.print();
    if let Ok(path) = std::env::var("BENCH_OUT") {
        std::fs::write(&path, report.to_json()).expect("writing BENCH_OUT");
        eprintln!("results written to {path}");
    }
}

async fn run_all(k: &Knobs) -> Report {
    eprintln!("starting a cluster, pgwarden and PgBouncer …");
    let bench = Bench::start(k.clients + k.idle + 20, k.prefetch, false).await;
    bench.init_pgbench(k.scale);
    let copy_file = run::copy_input(&bench, k.copy_mb);
    let mut report = Report::new(k.seconds, k.clients, k.scale, k.copy_mb, k.idle);
    let secs = k.seconds.to_string();
    let clients = k.clients.to_string();
    let jobs = k.clients.min(2).to_string();

    for round in 0..k.rounds {
        for target in Target::rotated(round) {
            eprintln!("round {} of {}: {}", round + 1, k.rounds, target.name());
            if k.runs("throughput") {
                let cpu_before = bench.pid(target).and_then(run::cpu_seconds);
                let tps = run::pgbench(
                    &bench,
                    target,
                    &["-S", "-c", &clients, "-j", &jobs, "-T", &secs],
                );
                report.add(Scenario::Throughput, target, tps.tps);
                let cpu_after = bench.pid(target).and_then(run::cpu_seconds);
                if let (Some(b), Some(a)) = (cpu_before, cpu_after) {
                    let us = (a - b) * 1e6 / tps.transactions;
                    report.add(Scenario::ProxyCpuUsPerTransaction, target, us);
                }
            }
            if k.runs("latency") {
                let one = run::pgbench(&bench, target, &["-S", "-c", "1", "-j", "1", "-T", &secs]);
                report.add(Scenario::RoundTripMs, target, one.latency_ms);
            }
            if k.runs("connect") {
                let conn = run::pgbench(
                    &bench,
                    target,
                    &["-S", "-C", "-c", "2", "-j", "2", "-T", &secs],
                );
                report.add(Scenario::ConnectionsPerSecond, target, conn.tps);
                if let Some(ms) = conn.connection_ms {
                    report.add(Scenario::ConnectionSetupMs, target, ms);
                }
            }
            if k.runs("copy") {
                let out = run::copy_out(&bench, target, k.copy_mb);
                report.add(
                    Scenario::CopyOutMBps,
                    target,
                    k.copy_mb as f64 / out.as_secs_f64(),
                );
                let into = run::copy_in(&bench, target, &copy_file);
                report.add(
                    Scenario::CopyInMBps,
                    target,
                    k.copy_mb as f64 / into.as_secs_f64(),
                );
            }
        }
    }
    // pgwarden first: its backends end with its sessions, while PgBouncer keeps its
    // server connections pooled after its clients leave.
    for target in [Target::Pgwarden, Target::PgBouncer] {
        if !k.runs("idle") {
            break;
        }
        bench.wait_for_backends_below(50).await;
        eprintln!("memory: {} idle sessions through {}", k.idle, target.name());
        match idle::kib_per_session(&bench, target, k.idle).await {
            Ok(Some(kib)) => report.add(Scenario::IdleKiBPerSession, target, kib),
            Ok(None) => {}
            Err(e) => eprintln!("memory per idle session not measured: {e}"),
        }
    }
    bench.stop().await;
    report
}
