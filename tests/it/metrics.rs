//! `/metrics` after scripted scenarios: every metric of the catalogue is exported from the
//! start (counters with fixed label values at zero) and moves by exactly what the scenario
//! did — sessions, bytes (the same as the session records say), credential requests by
//! outcome, lease renewals and revocations, upstream failures by failing step, cancel
//! requests, the latency histograms' counts, pgwarden's own Vault token — and nothing is
//! labelled with a value that was not configured. nextest runs each test in a process of
//! its own, so the process-global metrics start fresh for every test.

use std::time::Duration;

use crate::support::harness::{
    GENEROUS, Harness, Options, Route, UpstreamCa, VaultOptions, parse_metric, wait_until,
};
use crate::support::vault_double::Mode;
use crate::support::wire;
use secrecy::ExposeSecret;

/// One scrape of `/metrics`.
struct Scrape(String);

impl Scrape {
    async fn take(h: &Harness) -> Scrape {
        let (status, body) = h.admin_get("/metrics").await;
        assert_eq!(status, 200);
        Scrape(body)
    }

    /// The value of `series`; the test fails if it is not exported. A histogram is
    /// rendered from its first observation on, so its `_count` before that is 0.
    fn get(&self, series: &str) -> f64 {
        match parse_metric(&self.0, series) {
            Some(v) => v,
            None if series.split('{').next().unwrap().ends_with("_count") => 0.0,
            None => panic!("{series} is not exported:\n{}", self.0),
        }
    }

    fn has(&self, series: &str) -> bool {
        parse_metric(&self.0, series).is_some()
    }
}

/// `after - before` for `series`, both required to be exported.
fn delta(before: &Scrape, after: &Scrape, series: &str) -> f64 {
    after.get(series) - before.get(series)
}

/// Asserts the delta of each `(series, expected)`.
fn assert_deltas(before: &Scrape, after: &Scrape, expected: &[(&str, f64)]) {
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(s, want)| delta(before, after, s) != *want)
        .map(|(s, want)| format!("{s}: moved by {}, expected {want}", delta(before, after, s)))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Polls `/metrics` until `check` holds; on timeout, fails showing the last scrape.
async fn wait_metric(h: &Harness, what: &str, check: impl Fn(&Scrape) -> bool) {
    let deadline = std::time::Instant::now() + GENEROUS;
    loop {
        let s = Scrape::take(h).await;
        if check(&s) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {GENEROUS:?} waiting until {what}; last scrape:\n{}",
            s.0
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const SESSIONS_CLIENT_CLOSED: &str = "pgwarden_sessions_total{close_reason=\"client_closed\"}";
const SESSIONS_UPSTREAM_CLOSED: &str = "pgwarden_sessions_total{close_reason=\"upstream_closed\"}";
const SESSIONS_TERMINATED: &str = "pgwarden_sessions_total{close_reason=\"client_terminated\"}";
const SESSIONS_LEASE_ENDED: &str = "pgwarden_sessions_total{close_reason=\"lease_ended\"}";
const C2U: &str = "pgwarden_relay_bytes_total{direction=\"client_to_upstream\"}";
const U2C: &str = "pgwarden_relay_bytes_total{direction=\"upstream_to_client\"}";
const VAULT_OK: &str = "pgwarden_credential_requests_total{source=\"vault\",outcome=\"success\"}";
const VAULT_UNAVAILABLE: &str =
    "pgwarden_credential_requests_total{source=\"vault\",outcome=\"unavailable\"}";
const VAULT_REFUSED: &str =
    "pgwarden_credential_requests_total{source=\"vault\",outcome=\"refused\"}";
const VAULT_DURATION_COUNT: &str =
    "pgwarden_credential_request_duration_seconds_count{source=\"vault\"}";
const HANDSHAKE_COUNT: &str = "pgwarden_handshake_duration_seconds_count";
const UPSTREAM_COUNT: &str = "pgwarden_upstream_connect_duration_seconds_count";
const SESSION_COUNT: &str = "pgwarden_session_duration_seconds_count";
const RENEWED: &str = "pgwarden_lease_renewals_total{outcome=\"success\"}";
const RENEWAL_UNAVAILABLE: &str = "pgwarden_lease_renewals_total{outcome=\"unavailable\"}";
const REVOKED: &str = "pgwarden_lease_revocations_total{outcome=\"success\"}";
const REVOKE_FAILED: &str = "pgwarden_lease_revocations_total{outcome=\"failure\"}";
const PENDING: &str = "pgwarden_lease_revocations_pending";
const SESSIONS_ACTIVE: &str = "pgwarden_sessions_active";
const LEASES_ACTIVE: &str = "pgwarden_leases_active";
const ACCEPTED: &str = "pgwarden_connections_accepted_total";
const FORWARDED: &str = "pgwarden_cancel_requests_total{outcome=\"forwarded\"}";
const UNKNOWN_KEY: &str = "pgwarden_cancel_requests_total{outcome=\"unknown_key\"}";

fn failures(reason: &str) -> String {
    format!("pgwarden_upstream_connect_failures_total{{reason=\"{reason}\"}}")
}

/// Counters whose every label value is known up front, at zero before anything happened.
const ZEROED_AT_START: &[&str] = &[
    "pgwarden_connections_accepted_total",
    "pgwarden_connections_rejected_total{reason=\"ip_not_allowed\"}",
    "pgwarden_connections_rejected_total{reason=\"too_many_connections\"}",
    "pgwarden_connections_rejected_total{reason=\"tls_required\"}",
    "pgwarden_connections_rejected_total{reason=\"tls_handshake\"}",
    "pgwarden_connections_rejected_total{reason=\"protocol\"}",
    "pgwarden_connections_rejected_total{reason=\"handshake_timeout\"}",
    "pgwarden_connections_rejected_total{reason=\"auth_failed\"}",
    "pgwarden_connections_rejected_total{reason=\"unknown_database\"}",
    "pgwarden_connections_rejected_total{reason=\"parameter_not_allowed\"}",
    "pgwarden_connections_rejected_total{reason=\"proxy_protocol\"}",
    "pgwarden_connections_rejected_total{reason=\"too_many_handshakes\"}",
    "pgwarden_sessions_active",
    "pgwarden_sessions_total{close_reason=\"client_terminated\"}",
    "pgwarden_sessions_total{close_reason=\"client_closed\"}",
    "pgwarden_sessions_total{close_reason=\"upstream_closed\"}",
    "pgwarden_sessions_total{close_reason=\"client_error\"}",
    "pgwarden_sessions_total{close_reason=\"upstream_error\"}",
    "pgwarden_sessions_total{close_reason=\"upstream_protocol\"}",
    "pgwarden_sessions_total{close_reason=\"idle_timeout\"}",
    "pgwarden_sessions_total{close_reason=\"lease_ended\"}",
    "pgwarden_sessions_total{close_reason=\"shutdown\"}",
    "pgwarden_leases_active",
    "pgwarden_lease_renewals_total{outcome=\"success\"}",
    "pgwarden_lease_renewals_total{outcome=\"unavailable\"}",
    "pgwarden_lease_renewals_total{outcome=\"refused\"}",
    "pgwarden_lease_renewals_total{outcome=\"lease_gone\"}",
    "pgwarden_lease_renewals_total{outcome=\"not_renewable\"}",
    "pgwarden_lease_revocations_total{outcome=\"success\"}",
    "pgwarden_lease_revocations_total{outcome=\"failure\"}",
    "pgwarden_lease_revocations_total{outcome=\"lease_gone\"}",
    "pgwarden_lease_revocations_pending",
    "pgwarden_upstream_connect_failures_total{reason=\"connect\"}",
    "pgwarden_upstream_connect_failures_total{reason=\"tls\"}",
    "pgwarden_upstream_connect_failures_total{reason=\"auth\"}",
    "pgwarden_upstream_connect_failures_total{reason=\"startup\"}",
    "pgwarden_upstream_connect_failures_total{reason=\"credentials\"}",
    "pgwarden_relay_bytes_total{direction=\"client_to_upstream\"}",
    "pgwarden_relay_bytes_total{direction=\"upstream_to_client\"}",
    "pgwarden_cancel_requests_total{outcome=\"forwarded\"}",
    "pgwarden_cancel_requests_total{outcome=\"unknown_key\"}",
    "pgwarden_cancel_requests_total{outcome=\"rate_limited\"}",
    "pgwarden_cancel_requests_total{outcome=\"upstream_failed\"}",
    "pgwarden_cancel_requests_total{outcome=\"forwarded_to_peer\"}",
    "pgwarden_cancel_requests_total{outcome=\"peer_failed\"}",
];

/// The sum of a field over every `session_end` record so far.
fn logged_bytes(h: &Harness, field: &str) -> f64 {
    h.logs
        .events("session_end")
        .iter()
        .map(|e| e[field].as_u64().unwrap())
        .sum::<u64>() as f64
}

/// The `notAfter` of a PEM certificate file, Unix seconds.
fn not_after(path: &std::path::Path) -> f64 {
    let pem = std::fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    cert.validity().not_after.timestamp() as f64
}

fn scenario_options() -> Options {
    Options {
        vault: Some(VaultOptions {
            default_ttl: Duration::from_secs(3),
            max_ttl: Duration::from_secs(3600),
            timeout: "3s".into(),
            ..VaultOptions::default()
        }),
        admin: true,
        extra_routes: vec![
            Route {
                database: "wrong_ca".into(),
                users: vec!["*".into()],
                upstream_ca: UpstreamCa::Unrelated,
                upstream_database: None,
                allowed_parameters: None,
            },
            Route {
                database: "missing".into(),
                users: vec!["*".into()],
                upstream_ca: UpstreamCa::Right,
                upstream_database: Some("no_such_upstream_db".into()),
                allowed_parameters: None,
            },
            Route {
                database: "refused".into(),
                users: vec!["*".into()],
                upstream_ca: UpstreamCa::Right,
                upstream_database: Some("refused_db".into()),
                allowed_parameters: None,
            },
        ],
        unreachable_route: Some("unreachable".into()),
        cluster_hba: Some(vec![
            "hostssl refused_db all 127.0.0.1/32 reject".into(),
            "hostssl all all 127.0.0.1/32 scram-sha-256".into(),
        ]),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_moves_by_what_a_vault_scenario_did() {
    let h = Harness::start(scenario_options()).await;
    let password = h.client_password.expose_secret().to_owned();
    let start = Scrape::take(&h).await;
    for series in ZEROED_AT_START {
        assert_eq!(start.get(series), 0.0, "{series} at start");
    }
    for o in ["success", "unavailable", "refused"] {
        let series =
            format!("pgwarden_credential_requests_total{{source=\"vault\",outcome=\"{o}\"}}");
        assert_eq!(start.get(&series), 0.0, "{series}");
    }
    assert!(
        !start.has("pgwarden_credential_requests_total{source=\"postgres\"}"),
        "no postgres source is configured"
    );
    assert_eq!(start.get("pgwarden_build_info{version=\"0.1.0\"}"), 1.0);
    assert_eq!(
        start.get("pgwarden_credential_source_up{name=\"test\"}"),
        1.0
    );
    assert!(start.get("pgwarden_vault_token_renewals_total{outcome=\"login\"}") >= 1.0);
    for (label, file) in [
        ("listener", "server.crt"),
        ("upstream_ca:keycloak", "ca.crt"),
        ("vault_ca", "ca.crt"),
    ] {
        let series =
            format!("pgwarden_tls_certificate_expiry_timestamp_seconds{{certificate=\"{label}\"}}");
        assert_eq!(
            start.get(&series),
            not_after(&h.ca_path.with_file_name(file)),
            "{series}"
        );
    }

    // 1. A session that runs, is renewed, cancels one query, sends one bogus cancel, ends.
    let (client, conn) = h.connect_parts(&h.pg_config()).await.unwrap();
    tokio::spawn(conn);
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let live = Scrape::take(&h).await;
    assert_eq!(live.get(SESSIONS_ACTIVE), 1.0);
    assert_eq!(live.get(LEASES_ACTIVE), 1.0);
    assert!(
        live.get(U2C) > 0.0 && live.get(C2U) > 0.0,
        "bytes are counted while the session lives"
    );
    wait_metric(&h, "the lease is renewed", |s| s.get(RENEWED) >= 1.0).await;
    let token = client.cancel_token();
    let client = std::sync::Arc::new(client);
    let sleeper = client.clone();
    let query = tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(60)").await });
    wait_until(GENEROUS, "pg_sleep runs", async || {
        h.direct()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'",
                &[&pid],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    token.cancel_query(h.tls()).await.unwrap();
    assert!(query.await.unwrap().is_err(), "the query was cancelled");
    let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    wire::send(&mut tls, &wire::encode_cancel(pid, &[0, 0, 0, 0])).await;
    let _ = wire::read_until_closed(&mut tls).await;
    wait_metric(&h, "both cancels are counted", |s| {
        s.get(FORWARDED) + s.get(UNKNOWN_KEY) == 2.0
    })
    .await;
    drop(client);
    wait_metric(&h, "the session's lease is revoked", |s| {
        s.get(REVOKED) == 1.0 && s.get(SESSIONS_ACTIVE) == 0.0
    })
    .await;
    let after_session = Scrape::take(&h).await;
    assert_deltas(
        &start,
        &after_session,
        &[
            // The session, the pgjdbc-style cancel connection and the bogus cancel.
            (ACCEPTED, 3.0),
            (SESSIONS_TERMINATED, 1.0),
            (SESSIONS_CLIENT_CLOSED, 0.0),
            (SESSIONS_UPSTREAM_CLOSED, 0.0),
            (SESSIONS_ACTIVE, 0.0),
            (LEASES_ACTIVE, 0.0),
            (SESSION_COUNT, 1.0),
            (HANDSHAKE_COUNT, 1.0),
            (UPSTREAM_COUNT, 1.0),
            (VAULT_OK, 1.0),
            (VAULT_DURATION_COUNT, 1.0),
            (REVOKED, 1.0),
            (REVOKE_FAILED, 0.0),
            (PENDING, 0.0),
            (FORWARDED, 1.0),
            (UNKNOWN_KEY, 1.0),
        ],
    );
    assert!(after_session.get(RENEWED) >= 1.0);
    h.logs.wait_for("session_end", 1).await;
    assert_eq!(
        after_session.get(C2U),
        logged_bytes(&h, "bytes_client_to_upstream")
    );
    assert_eq!(
        after_session.get(U2C),
        logged_bytes(&h, "bytes_upstream_to_client")
    );

    // 2. Each upstream step failing: a credential is issued (and revoked) every time.
    let mut before = Scrape::take(&h).await;
    for (database, step) in [
        ("wrong_ca", "tls"),
        ("missing", "startup"),
        ("refused", "auth"),
        ("unreachable", "connect"),
    ] {
        let err = h
            .try_connect(&h.pg_config_as("keycloak", &password, database))
            .await
            .expect_err("the upstream step fails");
        assert_eq!(
            err.as_db_error().unwrap().code().code(),
            "08006",
            "{database}"
        );
        wait_metric(&h, &format!("{step} is counted"), |s| {
            delta(&before, s, &failures(step)) == 1.0
        })
        .await;
        let after = Scrape::take(&h).await;
        let mut expected = vec![
            (ACCEPTED, 1.0),
            (VAULT_OK, 1.0),
            (VAULT_DURATION_COUNT, 1.0),
        ];
        let all: Vec<String> = ["connect", "tls", "auth", "startup", "credentials"]
            .iter()
            .map(|s| failures(s))
            .collect();
        for (s, name) in ["connect", "tls", "auth", "startup", "credentials"]
            .iter()
            .zip(&all)
        {
            expected.push((name, if *s == step { 1.0 } else { 0.0 }));
        }
        expected.extend([(HANDSHAKE_COUNT, 0.0), (UPSTREAM_COUNT, 0.0)]);
        assert_deltas(&before, &after, &expected);
        let failed = h.logs.events("session_failed");
        assert_eq!(failed.last().unwrap()["reason"], step, "{failed:?}");
        before = after;
    }
    wait_metric(&h, "the four credentials are revoked", |s| {
        s.get(REVOKED) == 5.0 && s.get(PENDING) == 0.0
    })
    .await;

    // 3. Credential requests failing: Vault down (unavailable), Vault refusing (refused).
    for (mode, outcome) in [
        (Mode::Down, VAULT_UNAVAILABLE),
        (Mode::Forbidden, VAULT_REFUSED),
    ] {
        let before = Scrape::take(&h).await;
        h.vault().set_mode(mode);
        let err = h
            .try_connect(&h.pg_config())
            .await
            .expect_err("no credential");
        assert_eq!(err.as_db_error().unwrap().code().code(), "08006");
        h.vault().set_mode(Mode::Up);
        wait_metric(&h, &format!("{mode:?} is counted"), |s| {
            delta(&before, s, outcome) == 1.0
        })
        .await;
        let after = Scrape::take(&h).await;
        assert_deltas(
            &before,
            &after,
            &[
                (outcome, 1.0),
                (VAULT_OK, 0.0),
                (VAULT_DURATION_COUNT, 1.0),
                (&failures("credentials"), 1.0),
                (ACCEPTED, 1.0),
            ],
        );
    }

    // 4. Vault goes down under a live session: the renewal fails, the lease ends, the
    //    session is recycled, its revocation waits for Vault and then succeeds.
    let before = Scrape::take(&h).await;
    let (client, conn) = h.connect_parts(&h.pg_config()).await.unwrap();
    let conn = tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();
    h.vault().set_mode(Mode::Down);
    wait_metric(&h, "the renewal fails, the revocation is pending", |s| {
        delta(&before, s, RENEWAL_UNAVAILABLE) >= 1.0
            && delta(&before, s, SESSIONS_LEASE_ENDED) == 1.0
            && delta(&before, s, REVOKE_FAILED) >= 1.0
            && s.get(PENDING) == 1.0
    })
    .await;
    let ended = tokio::time::timeout(GENEROUS, conn).await.unwrap().unwrap();
    assert_eq!(
        ended.unwrap_err().as_db_error().map(|d| d.code().code()),
        Some("57P01")
    );
    h.vault().set_mode(Mode::Up);
    wait_metric(&h, "the backlog drains", |s| {
        s.get(PENDING) == 0.0 && delta(&before, s, REVOKED) == 1.0
    })
    .await;
    let after = Scrape::take(&h).await;
    assert_deltas(
        &before,
        &after,
        &[
            (SESSIONS_LEASE_ENDED, 1.0),
            (SESSIONS_TERMINATED, 0.0),
            (SESSIONS_CLIENT_CLOSED, 0.0),
            (SESSIONS_UPSTREAM_CLOSED, 0.0),
            (SESSION_COUNT, 1.0),
            (VAULT_OK, 1.0),
            (REVOKED, 1.0),
            (LEASES_ACTIVE, 0.0),
            (SESSIONS_ACTIVE, 0.0),
        ],
    );
    let failed_revocations = h.logs.events("lease_revocation_failed");
    assert_eq!(
        failed_revocations.len() as f64,
        after.get(REVOKE_FAILED),
        "one record per failed attempt"
    );
    assert!(!h.logs.events("lease_renewal_failed").is_empty());
    assert_eq!(after.get(C2U), logged_bytes(&h, "bytes_client_to_upstream"));
    assert_eq!(after.get(U2C), logged_bytes(&h, "bytes_upstream_to_client"));
    // Nothing was refused before a session began.
    for reason in [
        "ip_not_allowed",
        "too_many_connections",
        "tls_required",
        "tls_handshake",
        "protocol",
        "handshake_timeout",
        "auth_failed",
        "unknown_database",
        "parameter_not_allowed",
        "proxy_protocol",
        "too_many_handshakes",
    ] {
        let series = format!("pgwarden_connections_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(after.get(&series), 0.0, "{series}");
    }
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_token_upkeep_is_counted_by_outcome() {
    let h = Harness::start(Options {
        vault: Some(VaultOptions {
            token_ttl: Duration::from_secs(3),
            token_max_ttl: Duration::from_secs(7),
            ..VaultOptions::default()
        }),
        admin: true,
        ..Options::default()
    })
    .await;
    let series = |o: &str| format!("pgwarden_vault_token_renewals_total{{outcome=\"{o}\"}}");
    let start = Scrape::take(&h).await;
    assert_eq!(start.get(&series("login")), 1.0);
    for o in ["renewed", "renewal_failure", "login_failure"] {
        assert_eq!(start.get(&series(o)), 0.0, "{o}");
    }
    // Renewed at 2/3 of its TTL, then logged in again once the max TTL nears.
    wait_metric(&h, "renewed, then a fresh login", |s| {
        s.get(&series("renewed")) >= 1.0 && s.get(&series("login")) >= 2.0
    })
    .await;
    // Vault down: the upkeep fails, and says so.
    h.vault().set_mode(Mode::Down);
    wait_metric(&h, "a failed renewal or login", |s| {
        s.get(&series("renewal_failure")) + s.get(&series("login_failure")) >= 1.0
    })
    .await;
    let upkept = |s: &Scrape| s.get(&series("renewed")) + s.get(&series("login"));
    let before_up = upkept(&Scrape::take(&h).await);
    h.vault().set_mode(Mode::Up);
    // The token may have expired while Vault was down: connections work again
    // once the upkeep has renewed it or logged in afresh, not before.
    wait_metric(&h, "a renewal or login after Vault is back", |s| {
        upkept(s) > before_up
    })
    .await;
    let c = h.connect().await;
    c.simple_query("SELECT 1").await.unwrap();
    assert!(!h.logs.events("vault_token_failed").is_empty());
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_source_is_counted_under_its_own_label() {
    let h = Harness::start(Options {
        admin: true,
        unreachable_route: Some("unreachable".into()),
        ..Options::default()
    })
    .await;
    let ok = "pgwarden_credential_requests_total{source=\"postgres\",outcome=\"success\"}";
    let unavailable =
        "pgwarden_credential_requests_total{source=\"postgres\",outcome=\"unavailable\"}";
    let count = "pgwarden_credential_request_duration_seconds_count{source=\"postgres\"}";
    let start = Scrape::take(&h).await;
    assert_eq!(start.get(ok), 0.0);
    assert!(!start.has("pgwarden_credential_requests_total{source=\"vault\"}"));
    assert!(!start.has("pgwarden_vault_token_renewals_total"));
    // The built-in source creates the role through the route's server: when that server
    // cannot be reached, there is no credential at all.
    let err = h
        .try_connect(&h.pg_config_as("keycloak", h.client_password.expose_secret(), "unreachable"))
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "08006");
    let c = h.connect().await;
    c.simple_query("SELECT 1").await.unwrap();
    wait_metric(&h, "both requests are counted", |s| s.get(count) == 2.0).await;
    let after = Scrape::take(&h).await;
    assert_deltas(
        &start,
        &after,
        &[
            (ok, 1.0),
            (unavailable, 1.0),
            (count, 2.0),
            (&failures("credentials"), 1.0),
            (&failures("tls"), 0.0),
            (HANDSHAKE_COUNT, 1.0),
            (UPSTREAM_COUNT, 1.0),
            (SESSIONS_ACTIVE, 1.0),
            (LEASES_ACTIVE, 1.0),
        ],
    );
    drop(c);
    wait_metric(&h, "the session ends", |s| {
        s.get(SESSIONS_TERMINATED) == 1.0 && s.get(REVOKED) == 1.0
    })
    .await;
    h.assert_no_secrets_logged();
}
