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
pub async fn kib_per_session(
    bench: &Bench,
    target: Target,
    n: usize,
) -> Result<Option<f64>, String> {
    let Some(pid) = bench.pid(target) else {
        return Ok(None);
    };
    let fail = |what: &str| format!("{what} for {}", target.name());
    let tls = RustlsConnect::new(
        verify_full_client_config(
            std::fs::read(&bench.env.ca_path)
                .map_err(|e| e.to_string())?
                .as_slice(),
        )
        .map_err(|e| e.to_string())?,
    );
    let env = bench.client_env(target);
    let get = |k: &str| {
        env.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut config = tokio_postgres::Config::new();
    config
        .host(get("PGHOST"))
        .port(get("PGPORT").parse().map_err(|_| fail("no port"))?)
        .user(get("PGUSER"))
        .password(get("PGPASSWORD"))
        .dbname(get("PGDATABASE"))
        .ssl_mode(SslMode::Require)
        .connect_timeout(Duration::from_secs(60));

    // A few sessions first, so one-off allocations (pools, caches) are not counted per session.
    let warm = open(&config, &tls, 5).await?;
    let before = rss_kib(pid).ok_or_else(|| fail("no resident set size"))?;
    let held = open(&config, &tls, n).await?;
    let during = rss_kib(pid).ok_or_else(|| fail("no resident set size"))?;
    drop(held);
    drop(warm);
    Ok(Some((during - before) / n as f64))
}

async fn open(
    config: &tokio_postgres::Config,
    tls: &RustlsConnect,
    n: usize,
) -> Result<Vec<tokio_postgres::Client>, String> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let (client, conn) = config
            .connect(tls.clone())
            .await
            .map_err(|e| format!("opening idle session {}: {e}", i + 1))?;
        tokio::spawn(conn);
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| format!("a query on idle session {}: {e}", i + 1))?;
        clients.push(client);
    }
    Ok(clients)
}
