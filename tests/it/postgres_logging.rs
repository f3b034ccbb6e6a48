//! The PostgreSQL side of the record: a cluster running with `config/postgres/logging.conf`
//! (and the non-file settings of `ssl.conf`) logs each session pgwarden relays so that it
//! joins pgwarden's `session_start` record by `upstream_user` and `upstream_pid`, logs the
//! session's DDL and its end, shows failed logins with the client's address — and, with the
//! documented per-role setting, never the passwords Vault's statements carry. The sample
//! `config/postgres/pg_hba.conf` loads without error and refuses everyone it does not name.

use std::path::Path;

use crate::support::harness::{GENEROUS, Harness, Options, VaultOptions, wait_until};
use secrecy::ExposeSecret;
use tokio_postgres::config::SslMode;

/// `name = value` settings of a postgresql.conf include file, comments dropped and the
/// value's quotes removed (the cluster quotes values itself).
pub(crate) fn settings(file: &str) -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let (name, rest) = line.split_once('=')?;
            let value = rest.trim();
            let value = match value.strip_prefix('\'') {
                Some(quoted) => quoted[..quoted.find('\'').expect("closing quote")].to_owned(),
                None => value.split('#').next().unwrap().trim().to_owned(),
            };
            Some((name.trim().to_owned(), value))
        })
        .collect()
}

#[test]
fn the_include_files_say_what_the_issue_asks() {
    let logging = settings("config/postgres/logging.conf");
    let get = |name: &str| {
        logging
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("logging.conf sets no {name}"))
    };
    assert_eq!(get("log_connections"), "on");
    assert_eq!(get("log_disconnections"), "on");
    assert_eq!(get("log_statement"), "ddl");
    let prefix = get("log_line_prefix");
    for escape in ["%p", "%u", "%d", "%h", "%a"] {
        assert!(prefix.contains(escape), "log_line_prefix lacks {escape}");
    }
    assert!(
        !logging.iter().any(|(n, _)| n == "logging_collector"),
        "the collector would move the log away from stderr"
    );
    let ssl = settings("config/postgres/ssl.conf");
    assert!(ssl.contains(&("ssl".into(), "on".into())));
    assert!(ssl.contains(&("password_encryption".into(), "scram-sha-256".into())));
}

/// The server log lines of backend `pid`.
fn lines_of(log: &str, pid: i64) -> Vec<String> {
    let tag = format!(" [{pid}] ");
    log.lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgwarden_session_joins_the_postgres_log_by_role_and_pid() {
    let mut cluster_settings = settings("config/postgres/logging.conf");
    // ssl.conf's certificate paths are the deployment's; the cluster has its own files.
    cluster_settings.extend(
        settings("config/postgres/ssl.conf")
            .into_iter()
            .filter(|(n, _)| !n.ends_with("_file")),
    );
    let h = Harness::start(Options {
        vault: Some(VaultOptions::default()),
        cluster_settings,
        // What logging.conf tells the operator to do for the role Vault connects as (here
        // the double runs its statements as the superuser).
        cluster_sql: vec!["ALTER ROLE postgres SET log_statement = 'none'".into()],
        ..Options::default()
    })
    .await;

    let client = h.connect().await;
    client
        .batch_execute("CREATE TABLE logging_probe (id int)")
        .await
        .unwrap();
    let row = client
        .query_one("SELECT session_user::text, pg_backend_pid()", &[])
        .await
        .unwrap();
    let (role, pid): (String, i32) = (row.get(0), row.get(1));
    drop(client);
    h.logs.wait_for("session_end", 1).await;

    let start = &h.logs.events("session_start")[0];
    let upstream_user = start["span"]["upstream_user"].as_str().unwrap().to_owned();
    let upstream_pid = start["span"]["upstream_pid"].as_i64().unwrap();
    assert_eq!(
        (upstream_user.as_str(), upstream_pid),
        (role.as_str(), pid as i64)
    );

    // The backend's lines, found by pgwarden's upstream_pid, carry its upstream_user.
    wait_until(GENEROUS, "PostgreSQL logs the disconnection", async || {
        lines_of(&h.cluster.server_log(), upstream_pid)
            .iter()
            .any(|l| l.contains("disconnection: session time:"))
    })
    .await;
    let log = h.cluster.server_log();
    let lines = lines_of(&log, upstream_pid);
    let prefix = format!("user={upstream_user} db=keycloak client=127.0.0.1 ");
    let find = |what: &str| {
        lines
            .iter()
            .find(|l| l.contains(what) && l.contains(&prefix))
            .unwrap_or_else(|| panic!("no `{what}` line with `{prefix}` in:\n{}", lines.join("\n")))
    };
    let authorized = find("connection authorized:");
    assert!(
        authorized.contains(&format!("user={upstream_user} database=keycloak"))
            && authorized.contains("SSL enabled"),
        "{authorized}"
    );
    assert!(find("statement: CREATE TABLE logging_probe").contains("app=pgwarden-tests"));
    find("disconnection: session time:");

    // A failed login straight to the server: FATAL, with the client's address.
    let mut direct = tokio_postgres::Config::new();
    direct
        .host("127.0.0.1")
        .port(h.cluster.port())
        .user("keycloak_owner")
        .password("certainly-not-the-password-42")
        .dbname("keycloak")
        .ssl_mode(SslMode::Require);
    assert!(direct.connect(h.tls()).await.is_err());
    wait_until(GENEROUS, "PostgreSQL logs the failed login", async || {
        h.cluster.server_log().lines().any(|l| {
            l.contains("FATAL:")
                && l.contains("user=keycloak_owner db=keycloak client=127.0.0.1")
                && (l.contains("password authentication failed") || l.contains("not permitted"))
        })
    })
    .await;

    // The issuer's CREATE ROLE ... PASSWORD for this session ran (the role logged in) but
    // was not logged, while the session's own DDL was.
    let log = h.cluster.server_log();
    let issued = format!("CREATE ROLE \"{upstream_user}\"");
    assert!(
        !log.contains(&issued),
        "the issuer's statement reached the server log: {}",
        log.lines().find(|l| l.contains(&issued)).unwrap()
    );
    h.assert_no_secrets_logged();
    for (i, line) in log.lines().enumerate() {
        assert!(
            !line.contains(h.client_password.expose_secret()),
            "server log line {i} has the client password"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_pg_hba_loads_and_refuses_whoever_it_does_not_name() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/postgres/pg_hba.conf");
    let hba: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert!(
        hba.iter()
            .filter(|l| l.starts_with("hostssl"))
            .all(|l| l.ends_with("scram-sha-256")),
        "every accepted network login is SCRAM over TLS"
    );
    assert!(hba.last().unwrap().ends_with("reject"));
    // The cluster puts a line for its own superuser first, so the test can still look in.
    let h = Harness::start(Options {
        cluster_hba: Some(hba),
        cluster_sql: vec!["CREATE ROLE someone LOGIN PASSWORD 'someone-Password-123456'".into()],
        ..Options::default()
    })
    .await;
    let errors: i64 = h
        .direct()
        .query_one(
            "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(errors, 0, "pg_hba.conf has lines PostgreSQL cannot read");
    // From 127.0.0.1, which the sample does not name: refused by the final line, over TLS
    // and without.
    for mode in [SslMode::Require, SslMode::Disable] {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(h.cluster.port())
            .user("someone")
            .password("someone-Password-123456")
            .dbname("keycloak")
            .ssl_mode(mode);
        let err = c.connect(h.tls()).await.err().expect("refused");
        let db = err.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "28000", "{mode:?}: {}", db.message());
        assert!(
            db.message().contains("rejects connection"),
            "{}",
            db.message()
        );
    }
}

/// The built-in source warns when the server would log its `CREATE ROLE`
/// statements (and with them each issued role's SCRAM verifier), and is quiet
/// when the admin role's statement logging is off as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_source_warns_when_its_statements_would_be_logged() {
    let admin = pgwarden::dev::ADMIN_ROLE;
    let logged = Harness::start(Options {
        cluster_sql: vec![format!("ALTER ROLE {admin} SET log_statement = 'ddl'")],
        ..Options::default()
    })
    .await;
    drop(logged.connect().await);
    let warnings = logged.logs.wait_for("admin_statements_logged", 1).await;
    assert_eq!(warnings[0]["log_statement"], "ddl", "{warnings:?}");
    logged.wait_for_no_dynamic_roles().await;
    // The log capture is the test process's: count what the next harness adds
    // from before it starts (its start-up already opens the admin connection).
    let before = logged.logs.events("admin_statements_logged").len();
    drop(logged);

    let quiet = Harness::start(Options::default()).await;
    drop(quiet.connect().await);
    quiet.wait_for_no_dynamic_roles().await;
    assert_eq!(
        quiet.logs.events("admin_statements_logged").len(),
        before,
        "no warning while the admin role's statements are not logged"
    );
}
