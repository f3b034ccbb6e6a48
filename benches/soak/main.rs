//! The soak: minutes of client churn through pgwarden in front of a real throwaway cluster,
//! then a check that nothing was left behind.
//!
//! Run with `cargo bench --bench soak` (needs PostgreSQL's server binaries). One run starts a
//! cluster prepared as `pgwarden dev` prepares it, pgwarden as a child process (the binary
//! this build made, so its resident memory is its own), and `SOAK_CLIENTS` client tasks that
//! each connect (TLS verify-full, SCRAM), run a few queries and disconnect, at random; some
//! stay a minute or more (past their lease's end, to be recycled with 57P01), some are killed
//! mid-query (the socket dropped, no Terminate). The credential source is the built-in one, or
//! with `SOAK_SOURCE=vault` the Vault double of the integration tests, which turns slow (past
//! `[vault] timeout`) and then down at intervals during the run.
//!
//! At the end it stops the clients, waits (bounded) for pgwarden to settle, and checks and
//! prints: no dynamic role left in the cluster, no lease pending revocation (and, with the
//! double, no lease it still holds), pgwarden's resident memory under load at the end within
//! 10 % of its value after the warm-up, and no client error other than 08006 (credential
//! source unavailable) and FATAL 57P01 (a session ended on purpose). It exits non-zero when a
//! check fails. Nothing here runs under `cargo test`: CI does not soak.
//!
//! Knobs (environment): `SOAK_MINUTES` (10), `SOAK_CLIENTS` (200), `SOAK_SOURCE`
//! (`builtin` or `vault`), `SOAK_WARMUP_SECONDS` (60).
// Benchmarks measure wall-clock time: std::time::Instant is what they need.
#![allow(clippy::disallowed_types)]

mod clients;
mod report;
mod setup;

use std::time::Duration;

use setup::Source;

/// The Vault double of the integration tests, compiled here from the same files.
#[path = "../../tests/it/support"]
mod support {
    pub mod vault_double;
}

pub struct Knobs {
    pub minutes: u64,
    pub clients: usize,
    pub source: Source,
    pub warmup: Duration,
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
    // `cargo test --all-targets` and nextest run bench binaries without `--bench`: the soak
    // has no tests, so it lists and runs nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let knobs = Knobs {
        minutes: knob("SOAK_MINUTES", 10),
        clients: knob("SOAK_CLIENTS", 200),
        source: match std::env::var("SOAK_SOURCE").as_deref() {
            Ok("vault") => Source::Vault,
            Ok("builtin") | Err(_) => Source::Builtin,
            Ok(other) => panic!("SOAK_SOURCE={other:?}: expected builtin or vault"),
        },
        warmup: Duration::from_secs(knob("SOAK_WARMUP_SECONDS", 60)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let passed = rt.block_on(run(&knobs));
    std::process::exit(if passed { 0 } else { 1 });
}

async fn run(knobs: &Knobs) -> bool {
    eprintln!(
        "soak: {} clients for {} min, credential source {:?}; starting a cluster and pgwarden …",
        knobs.clients, knobs.minutes, knobs.source
    );
    let mut soak = setup::Soak::start(knobs.source, knobs.clients + 50).await;
    let outcome = clients::churn(&soak, knobs).await;
    let end = report::settle(&mut soak).await;
    let passed = report::print(knobs, &soak, &outcome, &end);
    soak.stop();
    passed
}
