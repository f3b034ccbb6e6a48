//! The churn: client tasks that connect through pgwarden, query and leave, at random, while
//! pgwarden's memory is sampled and (in the Vault mode) the double turns slow and down.
//!
//! Each session is one of: short (1–5 queries, a clean Terminate), long (a query every few
//! seconds for 65–95 s, past the lease's maximum lifetime, so pgwarden ends it with 57P01),
//! or killed (a `pg_sleep` in flight when the socket is dropped without a word). Every error a
//! client sees is tallied by SQLSTATE; errors of a session the soak killed itself are not.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use crate::Knobs;
use crate::setup::{MAX_TTL_SECS, Soak};
use crate::support::vault_double::{Mode, VaultDouble};

/// SQLSTATEs a client may see in a healthy run: the credential source was unavailable, and
/// pgwarden ended a session on purpose (its lease's end) with FATAL.
pub const EXPECTED: [&str; 2] = ["08006", "57P01"];

/// What the clients saw, and pgwarden's memory along the way.
#[derive(Debug, Default)]
pub struct Outcome {
    pub sessions: u64,
    pub connected: u64,
    pub queries: u64,
    pub killed: u64,
    pub long: u64,
    /// Errors by SQLSTATE (FATAL 57P01 only counts as 57P01 when it is FATAL).
    pub errors: BTreeMap<String, u64>,
    /// Up to five example messages per unexpected kind of error.
    pub examples: BTreeMap<String, Vec<String>>,
    /// Median RSS (KiB) of the samples right after the warm-up and of those at the end,
    /// both under the full load.
    pub rss_warm_kib: u64,
    pub rss_end_kib: u64,
    /// pgwarden's RSS (KiB) every 20 s of the churn, by seconds since it began.
    pub rss_timeline: Vec<(u64, u64)>,
    pub elapsed: Duration,
}

type Tally = Arc<Mutex<Outcome>>;

pub async fn churn(soak: &Soak, knobs: &Knobs) -> Outcome {
    let tally: Tally = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let run_for = Duration::from_secs(knobs.minutes * 60);
    let warmup = knobs.warmup.min(run_for / 3);

    let mut tasks: Vec<JoinHandle<()>> = (0..knobs.clients)
        .map(|i| {
            let (config, tls) = (soak.client_config(), soak.tls.clone());
            let (tally, stop) = (tally.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(i as u64 ^ 0x5eed);
                // Spread the first connections over a second.
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..1000))).await;
                while !stop.load(Ordering::Relaxed) {
                    session(&config, &tls, &mut rng, &tally, &stop).await;
                    let pause = rng.random_range(0..200);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            })
        })
        .collect();
    let timeline = {
        let (stop, pid) = (stop.clone(), soak.pgwarden_pid());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(kib) = crate::setup::rss_kib_of(pid) {
                    samples.push((started.elapsed().as_secs(), kib));
                }
                tokio::time::sleep(Duration::from_secs(20)).await;
            }
            samples
        })
    };
    let faults = soak.vault.clone().map(|double| {
        let stop = stop.clone();
        tokio::spawn(vault_faults(double, stop))
    });

    // With the Vault double, load follows its weather: the first sample is taken at the
    // same point of the fault cycle as the last, so the two see the same kind of load.
    let end_sampling = Duration::from_secs(30);
    let first_sample = match soak.vault {
        Some(_) => same_phase(warmup, run_for.saturating_sub(end_sampling), FAULT_CYCLE),
        None => warmup,
    };
    tokio::time::sleep(first_sample).await;
    eprintln!("soak: warm-up over after {first_sample:?}; sampling pgwarden's memory");
    let rss_warm_kib = sample_rss(soak).await;
    let sampled = started.elapsed();
    if run_for > sampled + end_sampling {
        tokio::time::sleep(run_for - sampled - end_sampling).await;
    }
    let rss_end_kib = sample_rss(soak).await;
    eprintln!(
        "soak: {:?} elapsed; stopping the clients",
        started.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = faults {
        let _ = f.await;
    }
    // Long sessions notice the stop within a few seconds; give stragglers two minutes.
    let deadline = Instant::now() + Duration::from_secs(120);
    for t in &mut tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, &mut *t).await.is_err() {
            t.abort();
            record(
                &tally,
                "client task did not end".into(),
                "still running 120 s after the stop".into(),
            );
        }
    }
    let mut out = std::mem::take(&mut *tally.lock().unwrap());
    out.rss_warm_kib = rss_warm_kib;
    out.rss_end_kib = rss_end_kib;
    out.rss_timeline = timeline.await.unwrap_or_default();
    out.elapsed = started.elapsed();
    out
}

/// The median of six samples of pgwarden's RSS, five seconds apart.
async fn sample_rss(soak: &Soak) -> u64 {
    let mut samples = Vec::new();
    for _ in 0..6 {
        samples.push(soak.rss_kib());
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// The double's weather: up 60 s, slow (past `[vault] timeout`) 20 s, up 60 s, down 20 s, …
const WEATHER: [(Mode, u64); 4] = [
    (Mode::Up, 60),
    (Mode::Slow(Duration::from_secs(4)), 20),
    (Mode::Up, 60),
    (Mode::Down, 20),
];
/// One turn of [`WEATHER`].
const FAULT_CYCLE: Duration = Duration::from_secs(160);

/// The first moment at or after `earliest` at the same point of a `cycle` as `at`.
fn same_phase(earliest: Duration, at: Duration, cycle: Duration) -> Duration {
    let phase = at.as_secs() % cycle.as_secs();
    let mut t = earliest.as_secs() - earliest.as_secs() % cycle.as_secs() + phase;
    if t < earliest.as_secs() {
        t += cycle.as_secs();
    }
    Duration::from_secs(t)
}

async fn vault_faults(double: VaultDouble, stop: Arc<AtomicBool>) {
    'outer: loop {
        for (mode, secs) in WEATHER {
            double.set_mode(mode);
            for _ in 0..secs {
                if stop.load(Ordering::Relaxed) {
                    break 'outer;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    double.set_mode(Mode::Up);
}

#[derive(Clone, Copy)]
enum Plan {
    Short,
    Long,
    Kill,
}

impl Plan {
    fn name(self) -> &'static str {
        match self {
            Plan::Short => "short session",
            Plan::Long => "long session",
            Plan::Kill => "session to kill",
        }
    }
}

async fn session(
    config: &tokio_postgres::Config,
    tls: &pgwarden::tls::pg_connector::RustlsConnect,
    rng: &mut StdRng,
    tally: &Tally,
    stop: &AtomicBool,
) {
    let plan = match rng.random_range(0..100) {
        0..10 => Plan::Kill,
        10..13 => Plan::Long,
        _ => Plan::Short,
    };
    tally.lock().unwrap().sessions += 1;
    let (client, connection) = match config.connect(tls.clone()).await {
        Ok(pair) => pair,
        Err(e) => return failed(tally, &e, "connecting"),
    };
    tally.lock().unwrap().connected += 1;
    let connected = Instant::now();
    let mut connection = tokio::spawn(connection);
    let result = match plan {
        Plan::Short => short(&client, rng, tally).await,
        Plan::Long => {
            tally.lock().unwrap().long += 1;
            long(&client, rng, tally, stop).await
        }
        Plan::Kill => {
            // The query is in flight when the socket goes: dropping the connection task
            // drops the socket without a Terminate.
            let sleep = client.simple_query("SELECT pg_sleep(5)");
            let wait = Duration::from_millis(rng.random_range(20..500));
            tokio::select! {
                r = sleep => r.map(|_| ()),
                _ = tokio::time::sleep(wait) => {
                    connection.abort();
                    tally.lock().unwrap().killed += 1;
                    return;
                }
            }
        }
    };
    drop(client);
    // The connection's own end tells why a query failed: a FATAL that came while no
    // query was pending ends the connection with it. One that came while a query was
    // pending goes to the query, and the connection then ends "closed": whichever of
    // the two errors carries a SQLSTATE is the one that says why.
    let ended = tokio::time::timeout(Duration::from_secs(30), &mut connection).await;
    let result = match (result, &ended) {
        (Err(e), Ok(Ok(Err(c)))) if e.as_db_error().is_none() && c.as_db_error().is_some() => {
            Ok(())
        }
        (result, _) => result,
    };
    // How the connection itself ended, for the example of an error without SQLSTATE.
    let connection_end = match &ended {
        Ok(Ok(Ok(()))) => "ended cleanly".to_owned(),
        Ok(Ok(Err(c))) => format!("ended with {c:?}"),
        Ok(Err(_)) => "panicked".to_owned(),
        Err(_) => "still open".to_owned(),
    };
    match (result, ended) {
        (Err(e), _) | (_, Ok(Ok(Err(e)))) => {
            let step = format!(
                "{} ({:.1} s after connecting; the connection {connection_end})",
                plan.name(),
                connected.elapsed().as_secs_f64()
            );
            failed(tally, &e, &step)
        }
        (Ok(()), Ok(Ok(Ok(())))) => {}
        (Ok(()), Ok(Err(join))) => {
            record(tally, "connection task panicked".into(), join.to_string())
        }
        (Ok(()), Err(_)) => {
            connection.abort();
            record(
                tally,
                "connection did not close".into(),
                "30 s after the client was dropped".into(),
            );
        }
    }
}

async fn short(
    client: &tokio_postgres::Client,
    rng: &mut StdRng,
    tally: &Tally,
) -> Result<(), tokio_postgres::Error> {
    for _ in 0..rng.random_range(1..=5) {
        query(client, rng).await?;
        tally.lock().unwrap().queries += 1;
    }
    Ok(())
}

/// Queries every 1–3 s for longer than a lease may live; ends early when the soak stops.
async fn long(
    client: &tokio_postgres::Client,
    rng: &mut StdRng,
    tally: &Tally,
    stop: &AtomicBool,
) -> Result<(), tokio_postgres::Error> {
    let until = Instant::now() + Duration::from_secs(MAX_TTL_SECS + rng.random_range(5..35));
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        query(client, rng).await?;
        tally.lock().unwrap().queries += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
    }
    Ok(())
}

async fn query(
    client: &tokio_postgres::Client,
    rng: &mut StdRng,
) -> Result<(), tokio_postgres::Error> {
    match rng.random_range(0..5) {
        0 => client.simple_query("SELECT 1").await.map(|_| ()),
        1 => {
            let n: i32 = rng.random_range(0..1000);
            client
                .query_one("SELECT $1::int + 1", &[&n])
                .await
                .map(|_| ())
        }
        2 => {
            client
                .batch_execute(
                    "BEGIN; CREATE TEMP TABLE IF NOT EXISTS t (x int); \
                 INSERT INTO t SELECT generate_series(1, 100); COMMIT",
                )
                .await
        }
        3 => client
            .simple_query("SELECT pg_sleep(0.05)")
            .await
            .map(|_| ()),
        _ => client
            .query("SELECT repeat('x', 1000) FROM generate_series(1, 200)", &[])
            .await
            .map(|_| ()),
    }
}

/// Tallies a client error by SQLSTATE; a FATAL 57P01 only as 57P01 when it is FATAL; an
/// error without one with the step it came in (`connecting`, or the session's plan).
fn failed(tally: &Tally, e: &tokio_postgres::Error, step: &str) {
    let (kind, text) = match e.as_db_error() {
        Some(db) if db.code().code() == "57P01" && db.severity() != "FATAL" => {
            ("57P01 (not FATAL)".to_owned(), db.message().to_owned())
        }
        Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
        None => (
            format!("no SQLSTATE, {}", step.split(" (").next().unwrap_or(step)),
            format!("{e} in a {step}"),
        ),
    };
    record(tally, kind, text);
}

fn record(tally: &Tally, kind: String, text: String) {
    let mut t = tally.lock().unwrap();
    if !EXPECTED.contains(&kind.as_str()) {
        let examples = t.examples.entry(kind.clone()).or_default();
        if examples.len() < 5 {
            examples.push(text);
        }
    }
    *t.errors.entry(kind).or_default() += 1;
}
