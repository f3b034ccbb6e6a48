//! The end of a soak: wait (bounded) for pgwarden to settle, then check and print what was
//! left behind and what the clients saw.
//!
//! Every check prints its figures and PASS or FAIL; the soak fails when any check does.

use std::time::{Duration, Instant};

use pgwarden::metrics::name;

use crate::Knobs;
use crate::clients::{EXPECTED, Outcome};
use crate::setup::Soak;

/// How long pgwarden may take, once the clients stopped, to close the last sessions and
/// revoke the last leases (revocations that failed while the source was down back off).
const SETTLE_DEADLINE: Duration = Duration::from_secs(240);
/// Resident memory at the end, under load, may exceed the post-warm-up figure by this much.
const RSS_TOLERANCE: f64 = 0.10;

/// The state after the clients stopped and pgwarden had time to settle.
pub struct End {
    pub waited: Duration,
    pub dynamic_roles: i64,
    pub pending_revocations: f64,
    pub leases_active: f64,
    pub sessions_active: f64,
    pub rss_idle_kib: u64,
    /// Sessions pgwarden ended, by `close_reason`.
    pub session_ends: Vec<(String, f64)>,
    /// With the Vault double: leases it still holds, credentials it issued, and revocations
    /// pgwarden asked for and got (`204`).
    pub vault: Option<VaultEnd>,
}

pub struct VaultEnd {
    /// Credentials pgwarden received (the rest of those issued it had given up on).
    pub received: usize,
    pub leases_held: usize,
    pub issued: usize,
    pub revoked_by_pgwarden: usize,
    pub expired_unrevoked: usize,
}

pub async fn settle(soak: &mut Soak) -> End {
    let started = Instant::now();
    loop {
        let end = observe(soak, started).await;
        let vault_clear = end.vault.as_ref().is_none_or(|v| v.leases_held == 0);
        let clear = end.dynamic_roles == 0
            && end.pending_revocations == 0.0
            && end.leases_active == 0.0
            && end.sessions_active == 0.0
            && vault_clear;
        if clear || started.elapsed() > SETTLE_DEADLINE {
            return end;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn observe(soak: &Soak, started: Instant) -> End {
    End {
        waited: started.elapsed(),
        dynamic_roles: soak.dynamic_roles().await,
        pending_revocations: soak.metric(name::LEASE_REVOCATIONS_PENDING).await,
        leases_active: soak.metric(name::LEASES_ACTIVE).await,
        sessions_active: soak.metric(name::SESSIONS_ACTIVE).await,
        rss_idle_kib: soak.rss_kib(),
        session_ends: soak.metric_series(name::SESSIONS).await,
        vault: match &soak.vault {
            None => None,
            Some(double) => Some(vault_end(
                double,
                soak.metric_labelled(name::CREDENTIAL_REQUESTS, "outcome=\"success\"")
                    .await as usize,
            )),
        },
    }
}

fn vault_end(double: &crate::support::vault_double::VaultDouble, received: usize) -> VaultEnd {
    let calls = double.calls();
    let ok = |path: &str, status: u16| {
        calls
            .iter()
            .filter(|c| c.path.contains(path) && c.status == status)
            .count()
    };
    let revoked_by_pgwarden = ok("/sys/leases/revoke", 204);
    VaultEnd {
        received,
        leases_held: double.leases().len(),
        issued: ok("/creds/", 200),
        revoked_by_pgwarden,
        expired_unrevoked: double.revoked().len().saturating_sub(revoked_by_pgwarden),
    }
}

/// Prints the figures and the checks; returns whether every check passed.
pub fn print(knobs: &Knobs, soak: &Soak, o: &Outcome, end: &End) -> bool {
    println!();
    println!(
        "soak: {:?} source, {} clients, {:.1} min of churn",
        knobs.source,
        knobs.clients,
        o.elapsed.as_secs_f64() / 60.0
    );
    println!(
        "sessions {} (connected {}, long {}, killed mid-query {}), queries {}",
        o.sessions, o.connected, o.long, o.killed, o.queries
    );
    let timeline: Vec<String> = o
        .rss_timeline
        .iter()
        .map(|(s, kib)| format!("{s}s {:.1}", *kib as f64 / 1024.0))
        .collect();
    println!("pgwarden RSS, MiB, every 20 s: {}", timeline.join(", "));
    println!("client errors by SQLSTATE: {:?}", o.errors);
    for (kind, texts) in &o.examples {
        for text in texts {
            println!("  e.g. {kind}: {text}");
        }
    }
    println!(
        "pgwarden settled {:.1} s after the clients stopped; its log ({} WARN, {} ERROR lines): {}",
        end.waited.as_secs_f64(),
        soak.log_lines("WARN"),
        soak.log_lines("ERROR"),
        soak.log_path.display()
    );
    let ends: Vec<String> = end
        .session_ends
        .iter()
        .filter(|(_, n)| *n > 0.0)
        .map(|(labels, n)| format!("{labels} {n}"))
        .collect();
    println!("pgwarden's session ends: {}", ends.join(", "));
    let mut passed = true;
    let mut check = |ok: bool, what: String| {
        println!("{} {what}", if ok { "PASS" } else { "FAIL" });
        passed &= ok;
    };
    check(
        end.dynamic_roles == 0,
        format!("dynamic roles left in the cluster: {}", end.dynamic_roles),
    );
    check(
        end.pending_revocations == 0.0 && end.leases_active == 0.0,
        format!(
            "leases pending revocation: {}, leases still active: {}, sessions still active: {}",
            end.pending_revocations, end.leases_active, end.sessions_active
        ),
    );
    if let Some(v) = &end.vault {
        // Every credential pgwarden received it revoked itself (a revocation repeated after
        // a timeout is answered 204 again); only those it gave up on were left to expire.
        check(
            v.leases_held == 0
                && v.revoked_by_pgwarden >= v.received
                && v.expired_unrevoked <= v.issued.saturating_sub(v.received),
            format!(
                "Vault double: {} leases issued, {} received by pgwarden, {} revocations by pgwarden, {} expired (issued after pgwarden gave up), {} still held",
                v.issued, v.received, v.revoked_by_pgwarden, v.expired_unrevoked, v.leases_held
            ),
        );
    }
    let limit = o.rss_warm_kib as f64 * (1.0 + RSS_TOLERANCE);
    check(
        (o.rss_end_kib as f64) <= limit,
        format!(
            "pgwarden RSS under load: {} KiB after warm-up, {} KiB at the end ({:+.1} %); {} KiB idle after settling",
            o.rss_warm_kib,
            o.rss_end_kib,
            (o.rss_end_kib as f64 / o.rss_warm_kib as f64 - 1.0) * 100.0,
            end.rss_idle_kib
        ),
    );
    let unexpected: u64 = o
        .errors
        .iter()
        .filter(|(k, _)| !EXPECTED.contains(&k.as_str()))
        .map(|(_, n)| n)
        .sum();
    check(
        unexpected == 0,
        format!("client errors other than 08006 and FATAL 57P01: {unexpected}"),
    );
    passed
}
