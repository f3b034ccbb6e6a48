//! psycopg 3 through pgwarden: the third real client beside psql and pgjdbc, and the one
//! that uses libpq's asynchronous API and libpq 17+'s cancel API. The scripts live in
//! `tests/it/python/` (see `pgw.py` there for how they run); the binary wheel bundles
//! libpq 18, and `PSYCOPG_IMPL=python` makes the same scripts use the system's libpq 15.
//!
//! Everything runs with sslmode=verify-full against the harness's CA; where PostgreSQL's
//! own behaviour is the measure, the same script also runs straight against the cluster.

use serde_json::{Value, json};

use crate::support::harness::{Harness, Options};
use crate::support::psycopg::{Target, run};
use crate::support::tls_tap::Tap;

/// `PSYCOPG_IMPL=python`: psycopg's ctypes binding over the system's libpq (15).
const SYSTEM_LIBPQ: &[(&str, &str)] = &[("PSYCOPG_IMPL", "python")];

fn assert_no_stall(out: &Value, what: &str) {
    assert_eq!(
        out["stalled"],
        Value::Null,
        "{what}: a result stalled after {} complete queries: {out}",
        out["queries"]
    );
    // Both phases ran to the end: 642 swept results and 40 executemany rounds.
    assert_eq!(out["queries"], 682, "{what}: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_libpq_15_async_reads_large_results_through_pgwarden_without_stalling() {
    // The stall this guards against: with 16 KiB records, libpq 15's async API waits
    // forever within the first few hundred of these results (the script stops at the
    // first result that takes 45 s and reports it).
    let h = Harness::start(Options::default()).await;
    let proxied = run("async_results.py", &Target::proxy(&h), "", SYSTEM_LIBPQ).await;
    assert_eq!(proxied["impl"], "python", "{proxied}");
    let libpq = proxied["libpq"].as_i64().unwrap();
    assert!(libpq < 170000, "expected the system libpq 15, got {libpq}");
    assert_no_stall(&proxied, "through pgwarden");
    let direct = run("async_results.py", &Target::direct(&h), "", SYSTEM_LIBPQ).await;
    assert_no_stall(&direct, "straight to PostgreSQL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_async_reads_large_results_through_pgwarden_without_stalling() {
    let h = Harness::start(Options::default()).await;
    let out = run("async_results.py", &Target::proxy(&h), "", &[]).await;
    assert_eq!(out["impl"], "binary", "{out}");
    assert!(out["libpq"].as_i64().unwrap() >= 170000, "{out}");
    assert_no_stall(&out, "psycopg's own libpq");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_mode_works_through_pgwarden() {
    let h = Harness::start(Options::default()).await;
    let out = run("pipeline.py", &Target::proxy(&h), "", &[]).await;
    assert_eq!(
        out,
        json!({"results": 11, "sizes_ok": true, "error": "22012", "after": 3})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_safe_over_tls_succeeds_through_pgwarden_as_it_does_directly() {
    let h = Harness::start(Options::default()).await;
    let expected =
        json!({"protocol": 30000, "cancel": "ok", "query": "cancelled", "after": 1, "tls": true});
    let direct = run("cancel.py", &Target::direct(&h), "", &[]).await;
    assert_eq!(direct, expected, "straight to PostgreSQL");
    let proxied = run("cancel.py", &Target::proxy(&h), "", &[]).await;
    assert_eq!(proxied, expected, "through pgwarden");
    let tls_cancels = h
        .logs
        .events("cancel_request")
        .iter()
        .filter(|e| e["tls"] == true && e["outcome"] == "forwarded")
        .count();
    assert_eq!(tls_cancels, 1, "the cancel came inside TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_3_2_is_answered_by_pgwarden_in_front_of_postgresql_15() {
    let h = Harness::start(Options::default()).await;
    // PostgreSQL 15 answers 3.2 with NegotiateProtocolVersion: libpq settles on 3.0.
    let direct = run(
        "cancel.py",
        &Target::direct(&h),
        "max_protocol_version=3.2",
        &[],
    )
    .await;
    assert_eq!(direct["protocol"], 30000, "{direct}");
    assert_eq!(direct["cancel"], "ok", "{direct}");
    // pgwarden speaks 3.2 to the client (a 32-byte cancel key of its own) and 3.0
    // upstream; a cancel with that key reaches the backend.
    let proxied = run(
        "cancel.py",
        &Target::proxy(&h),
        "max_protocol_version=3.2",
        &[],
    )
    .await;
    assert_eq!(
        proxied,
        json!({"protocol": 30002, "cancel": "ok", "query": "cancelled", "after": 1, "tls": true})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_carries_the_payload_and_the_real_sender_pid() {
    let h = Harness::start(Options::default()).await;
    let out = run("notify.py", &Target::proxy(&h), "", &[]).await;
    assert_eq!(out["channel"], "pgwarden_test", "{out}");
    assert_eq!(out["payload_ok"], true, "{out}");
    assert_eq!(out["payload_len"], 7000, "{out}");
    assert_eq!(out["sender_pid"], out["talker_pid"], "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_round_trips_byte_for_byte() {
    let h = Harness::start(Options::default()).await;
    let out = run("copy_rows.py", &Target::proxy(&h), "", &[]).await;
    assert_eq!(out["rows"], 1500, "{out}");
    assert_eq!(out["out_matches"], true, "{out}");
    assert_eq!(out["server_md5"], out["client_md5"], "{out}");
    assert!(out["bytes_out"].as_u64().unwrap() > 6_000_000, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn_works_through_pgwarden() {
    let h = Harness::start(Options::default()).await;
    let tap = Tap::start(h.proxy_addr).await;
    let out = run(
        "direct_tls.py",
        &Target::proxy(&h).via(tap.addr),
        "sslnegotiation=direct",
        &[],
    )
    .await;
    assert_eq!(
        out,
        json!({"connected": true, "error": null, "tls": true, "protocol": 30000, "one": 1})
    );
    let conns = tap.connections();
    assert_eq!(conns.len(), 1);
    // A TLS ClientHello first, no SSLRequest.
    assert_eq!(conns[0].client_first_byte, Some(0x16));
    let session = h.logs.wait_for("session_start", 1).await;
    assert_eq!(session[0]["span"]["alpn"], "postgresql", "{session:?}");
    // PostgreSQL 15 knows no direct TLS: the option really changes what libpq sends.
    let direct = run(
        "direct_tls.py",
        &Target::direct(&h),
        "sslnegotiation=direct",
        &[],
    )
    .await;
    assert_eq!(direct["connected"], false, "{direct}");
}
