//! Memory per idle session: the growth of a proxy's resident set while it holds `n` idle TLS
//! sessions, divided by `n`.

use std::time::Duration;

use pgwarden::tls::pg_connector::{RustlsConnect, verify_full_client_config};
use tokio_postgres::config::SslMode;

use crate::targets::{Bench, Target};

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Opens `n` sessions through `target`, runs one query on each (so every session is fully
/// established and has moved data both ways), and compares the proxy's resident set before
/// and while they are held. `None` for the direct target (backends are processes of their own).
pub async fn kib_per_session(bench: &Bench, target: Target, n: usize) -> Option<f64> {
    let pid = bench.pid(target)?;
    let tls = RustlsConnect::new(
        verify_full_client_config(std::fs::read(&bench.env.ca_path).ok()?.as_slice())
            .expect("a client TLS configuration"),
    );
    let env = bench.client_env(target);
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let mut config = tokio_postgres::Config::new();
    config
        .host(get("PGHOST")?)
        .port(get("PGPORT")?.parse().ok()?)
        .user(get("PGUSER")?)
        .password(get("PGPASSWORD")?)
        .dbname(get("PGDATABASE")?)
        .ssl_mode(SslMode::Require)
        .connect_timeout(Duration::from_secs(60));

    // A few sessions first, so one-off allocations (pools, caches) are not counted per session.
    let warm = open(&config, &tls, 5).await;
    let before = rss_kib(pid)?;
    let held = open(&config, &tls, n).await;
    let during = rss_kib(pid)?;
    drop(held);
    drop(warm);
    Some((during - before) / n as f64)
}

async fn open(
    config: &tokio_postgres::Config,
    tls: &RustlsConnect,
    n: usize,
) -> Vec<tokio_postgres::Client> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let (client, conn) = config
            .connect(tls.clone())
            .await
            .expect("opening an idle session");
        tokio::spawn(conn);
        client
            .simple_query("SELECT 1")
            .await
            .expect("a query on the idle session");
        clients.push(client);
    }
    clients
}
