//! pgjdbc, the driver Keycloak uses, through pgwarden with Keycloak's URL
//! (`sslmode=verify-full&sslrootcert=…&targetServerType=primary`): its migrations, batches,
//! server-side prepared statements, rollbacks and `Statement.cancel()` all work, on a fresh
//! role acting as `keycloak_owner`, and its sessions are recorded as ended by the client.
//! The Java programs are in `tests/java/`.

use crate::support::harness::{GENEROUS, Harness, Options, wait_until};
use crate::support::java::{self, Interactive};
use pgwarden::dev::OWNER_ROLE;
use secrecy::ExposeSecret;

/// Keycloak's `KC_DB_URL` for this pgwarden, plus `extra` parameters.
fn keycloak_url(h: &Harness, extra: &str) -> String {
    format!(
        "jdbc:postgresql://127.0.0.1:{}/keycloak?user=keycloak&sslmode=verify-full&sslrootcert={}&targetServerType=primary{extra}",
        h.port(),
        h.ca_path.display()
    )
}

/// `42.5.5` → (42, 5, 5).
fn version(text: &str) -> (u32, u32, u32) {
    let mut parts = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap());
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloaks_workload_runs_as_a_fresh_role_acting_as_the_owner() {
    let h = Harness::start(Options::default()).await;
    // The cluster logs every statement of new sessions, to see what pgjdbc sent.
    h.direct()
        .batch_execute("ALTER DATABASE keycloak SET log_statement = 'all'")
        .await
        .unwrap();
    let run = java::run(
        "KeycloakWorkload",
        &[&keycloak_url(&h, "")],
        Some(h.client_password.expose_secret()),
    )
    .await;
    run.assert_success();
    let session_user = run.get("session_user");
    assert!(session_user.starts_with("pgwarden_"), "{run}");
    assert_eq!(run.get("current_user"), OWNER_ROLE);
    assert_eq!(run.get("done"), "true");

    // DDL: the table and its index belong to the owner role, not to the login role.
    assert_eq!(run.get("table_owner"), OWNER_ROLE);
    let owners: Vec<(String, String)> = h
        .direct()
        .query(
            "SELECT relname::text, pg_get_userbyid(relowner)::text FROM pg_class \
             WHERE relname IN ('kc_realm', 'kc_realm_pkey', 'kc_realm_name') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(String, String)> = ["kc_realm", "kc_realm_name", "kc_realm_pkey"]
        .iter()
        .map(|t| (t.to_string(), OWNER_ROLE.to_string()))
        .collect();
    assert_eq!(owners, expected);

    // Batches, prepared statements past the threshold, rollback and commit.
    assert_eq!(run.get("batch_inserted"), "500");
    assert_eq!(run.get("rows_after_batch"), "500");
    assert_eq!(run.get("prepare_threshold"), "5");
    assert_eq!(run.get("prepared_correct"), "12");
    assert_eq!(run.get("prepared_server_side"), "true");
    let named = run.get("named_statements");
    assert!(
        named.starts_with("S_") && !named.contains(','),
        "one named server-side statement, not {named:?}"
    );
    assert_eq!(run.get("rows_in_transaction"), "502");
    assert_eq!(run.get("rows_after_rollback"), "500");
    assert_eq!(run.get("rows_after_commit"), "499");
    assert_eq!(run.get("updated_enabled"), "f");
    let stored: i64 = h
        .direct()
        .query_one("SELECT count(*) FROM kc_realm", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 499);

    // What pgjdbc sent, as the server saw it: the primary check targetServerType asks for,
    // and the named statement executed.
    let log = h.cluster.server_log();
    let ours: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("{session_user}@keycloak")))
        .collect();
    assert!(
        ours.iter()
            .any(|l| l.contains("show transaction_read_only")),
        "no `show transaction_read_only` from {session_user} in the server log:\n{}",
        ours.join("\n")
    );
    assert!(
        ours.iter()
            .any(|l| l.contains(&format!("execute {named}:"))),
        "no execution of {named} in the server log"
    );

    // The session record: pgjdbc closed it with Terminate, whichever side hung up first.
    let ends = h.logs.wait_for("session_end", 1).await;
    assert_eq!(ends.len(), 1, "{ends:?}");
    let end = &ends[0];
    assert_eq!(end["close_reason"], "client_terminated", "{end}");
    assert_eq!(end["span"]["upstream_user"], session_user, "{end}");
    let pid: i64 = run.get("backend_pid").parse().unwrap();
    assert_eq!(end["span"]["upstream_pid"], pid, "{end}");
    // pgjdbc negotiates SCRAM channel binding (-PLUS) only from 42.7.4 on.
    let driver = version(run.get("driver_version"));
    let expected = if driver >= (42, 7, 4) {
        "SCRAM-SHA-256-PLUS"
    } else {
        "SCRAM-SHA-256"
    };
    assert_eq!(
        end["span"]["auth_method"], expected,
        "pgjdbc {driver:?}: {end}"
    );
    assert!(end["span"]["tls_version"].is_string(), "{end}");
    h.wait_for_no_dynamic_roles().await;
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_and_target_server_type_primary_are_honoured() {
    let h = Harness::start(Options::default()).await;
    let password = Some(h.client_password.expose_secret());
    let who = java::run("WhoAmI", &[&keycloak_url(&h, "")], password).await;
    who.assert_success();
    assert!(who.get("session_user").starts_with("pgwarden_"), "{who}");
    assert_eq!(who.get("current_user"), OWNER_ROLE);
    assert_eq!(who.get("database"), "keycloak");

    // verify-full against a CA that did not sign pgwarden's certificate: no connection.
    let unrelated = h.ca_path.with_file_name("unrelated-ca.crt");
    let url = keycloak_url(&h, "").replace(
        &h.ca_path.display().to_string(),
        &unrelated.display().to_string(),
    );
    let refused = java::run("WhoAmI", &[&url], password).await;
    assert!(!refused.success, "{refused}");
    assert_eq!(refused.get("error_sqlstate"), "08006", "{refused}");

    // targetServerType=primary takes pgwarden's answer to `show transaction_read_only`: a
    // database whose sessions are read-only is refused, and accepted with `any`.
    h.direct()
        .batch_execute("ALTER DATABASE keycloak SET default_transaction_read_only = on")
        .await
        .unwrap();
    let secondary = java::run("WhoAmI", &[&keycloak_url(&h, "")], password).await;
    assert!(!secondary.success, "{secondary}");
    assert!(
        secondary.get("error_message").contains("targetServerType"),
        "{secondary}"
    );
    let any = keycloak_url(&h, "").replace("targetServerType=primary", "targetServerType=any");
    java::run("WhoAmI", &[&any], password)
        .await
        .assert_success();
    h.wait_for_no_dynamic_roles().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_cancel_is_a_plaintext_cancel_request_that_pgwarden_forwards() {
    let h = Harness::start(Options::default()).await;
    let mut program = Interactive::start(
        "CancelSleep",
        &[&keycloak_url(&h, "")],
        Some(h.client_password.expose_secret()),
    );
    let pid: i32 = program.wait_for("backend_pid").await.parse().unwrap();
    program.wait_for("sleeping").await;
    wait_until(GENEROUS, "pg_sleep runs upstream", async || {
        let n: i64 = h
            .direct()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE pid = $1 AND state = 'active' AND wait_event = 'PgSleep'",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        n == 1
    })
    .await;
    program.send_line("cancel").await;
    let run = program.finish().await;
    run.assert_success();
    assert_eq!(run.get("sleep_sqlstate"), "57014", "query_canceled");
    assert_eq!(run.get("after_cancel"), "42", "the session goes on");

    let cancels = h.logs.wait_for("cancel_request", 1).await;
    assert_eq!(cancels.len(), 1, "{cancels:?}");
    assert_eq!(cancels[0]["outcome"], "forwarded");
    assert_eq!(cancels[0]["pid"], pid);
    assert_eq!(
        cancels[0]["tls"], false,
        "pgjdbc sends its cancel in plaintext"
    );
    let ends = h.logs.wait_for("session_end", 1).await;
    assert_eq!(ends[0]["close_reason"], "client_terminated", "{}", ends[0]);
}
