//! Which startup parameters reach the database: the route's allowed settings, as parameters or
//! in `options`, and nothing else — `role=` (which would override `session_role`) and
//! `options=-c post_auth_delay=…` (which would park a backend) are refused with FATAL 42501
//! naming them, before a credential is issued.

use crate::support::harness::{GENEROUS, Harness, Options, Route, UpstreamCa, parse_metric};
use crate::support::{venv, wire};
use secrecy::ExposeSecret;

const CREDENTIAL_REQUESTS: &str = "pgwarden_credential_requests_total";

/// Logs in with raw `params` (user `keycloak`), and returns the welcome or the FATAL.
async fn open(
    h: &Harness,
    params: &[(&str, &str)],
) -> (wire::Tls, Result<wire::Welcome, wire::Message>) {
    wire::open(
        h.proxy_addr,
        &h.ca_pem,
        params,
        h.client_password.expose_secret(),
    )
    .await
}

/// Every credential request so far, whatever its outcome.
async fn credential_requests(h: &Harness) -> f64 {
    let (_, body) = h.admin_get("/metrics").await;
    ["success", "unavailable", "refused"]
        .iter()
        .filter_map(|o| parse_metric(&body, &format!("{CREDENTIAL_REQUESTS}{{outcome=\"{o}\"}}")))
        .sum()
}

async fn the_value_of(s: &mut wire::Tls, setting: &str) -> String {
    let rows = wire::query(s, &format!("SHOW {setting}"))
        .await
        .expect("SHOW answers");
    rows[0][0].clone().expect("a value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_and_post_auth_delay_are_refused_before_a_credential_is_issued() {
    let h = Harness::start(Options {
        admin: true,
        ..Options::default()
    })
    .await;
    let before = credential_requests(&h).await;
    let base = [("user", "keycloak"), ("database", "keycloak")];

    // `role=none` would leave the session as the issued login role instead of session_role,
    // so what it creates would be owned by a role about to be dropped.
    let mut with_role = base.to_vec();
    with_role.push(("role", "none"));
    let (_, refused) = open(&h, &with_role).await;
    refused.expect_err("role= is refused").assert_fatal(
        "42501",
        "permission denied to set parameter \"role\": pgwarden forwards only the settings this route allows",
    );

    for options in [
        "-c post_auth_delay=1",
        "-c statement_timeout=5s --post-auth-delay=1",
    ] {
        let mut with_delay = base.to_vec();
        with_delay.push(("options", options));
        let (_, refused) = open(&h, &with_delay).await;
        refused.expect_err(options).assert_fatal(
            "42501",
            "permission denied to set parameter \"post_auth_delay\": pgwarden forwards only the settings this route allows",
        );
    }

    // A switch that is not a setting, and a setting without a value.
    let mut with_switch = base.to_vec();
    with_switch.push(("options", "-F"));
    let (_, refused) = open(&h, &with_switch).await;
    refused.expect_err("-F").assert_fatal(
        "42501",
        "command-line option \"-F\" is not allowed in options: pgwarden forwards only -c name=value settings",
    );
    let mut without_value = base.to_vec();
    without_value.push(("options", "-c statement_timeout"));
    let (_, refused) = open(&h, &without_value).await;
    refused.expect_err("no value").assert_fatal(
        "42601",
        "invalid options: -c statement_timeout requires a value",
    );

    // tokio-postgres's options go the same way.
    let mut config = h.pg_config();
    config.options("-c post_auth_delay=1");
    let err = h.try_connect(&config).await.expect_err("refused");
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");

    assert_eq!(
        credential_requests(&h).await,
        before,
        "a refused connection got a credential"
    );
    assert!(h.dynamic_roles().await.is_empty());
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_settings_reach_the_backend() {
    let h = Harness::start(Options::default()).await;
    // In options (every form, escapes kept), and as a parameter.
    let (mut s, welcome) = open(
        &h,
        &[
            ("user", "keycloak"),
            ("database", "keycloak"),
            (
                "options",
                r"-c statement_timeout=4321ms --lock-timeout=1234ms -capplication_name=a\ b\\c",
            ),
            ("IntervalStyle", "iso_8601"),
            ("search_path", "pg_catalog, public"),
        ],
    )
    .await;
    welcome.expect("allowed settings are accepted");
    assert_eq!(the_value_of(&mut s, "statement_timeout").await, "4321ms");
    assert_eq!(the_value_of(&mut s, "lock_timeout").await, "1234ms");
    assert_eq!(the_value_of(&mut s, "application_name").await, r"a b\c");
    assert_eq!(the_value_of(&mut s, "IntervalStyle").await, "iso_8601");
    assert_eq!(
        the_value_of(&mut s, "search_path").await,
        "pg_catalog, public"
    );
    // session_role still applies, after the client's own settings.
    assert_eq!(the_value_of(&mut s, "role").await, "keycloak_owner");
    wire::terminate(&mut s).await;

    // Through tokio-postgres too.
    let mut config = h.pg_config();
    config.options("-c statement_timeout=2500ms");
    let client = h.try_connect(&config).await.expect("connects");
    let row = client
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "2500ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_allows_its_own_list() {
    let h = Harness::start(Options {
        extra_routes: vec![Route {
            database: "strict".into(),
            users: vec!["*".into()],
            upstream_ca: UpstreamCa::Right,
            upstream_database: None,
            allowed_parameters: Some(vec!["application_name".into(), "Work_Mem".into()]),
        }],
        ..Options::default()
    })
    .await;
    // A setting outside the default list, allowed on this route only.
    let strict = [("user", "keycloak"), ("database", "strict")];
    let mut with_work_mem = strict.to_vec();
    with_work_mem.push(("options", "-c work_mem=8MB"));
    let (mut s, welcome) = open(&h, &with_work_mem).await;
    welcome.expect("work_mem is allowed on this route");
    assert_eq!(the_value_of(&mut s, "work_mem").await, "8MB");
    wire::terminate(&mut s).await;
    let mut default_route = with_work_mem.clone();
    default_route[1] = ("database", "keycloak");
    let (_, refused) = open(&h, &default_route).await;
    refused
        .expect_err("work_mem is not in the default list")
        .assert_fatal("42501", "permission denied to set parameter \"work_mem\": pgwarden forwards only the settings this route allows");
    // And a default setting is not allowed on the strict route.
    let mut with_timeout = strict.to_vec();
    with_timeout.push(("options", "-c statement_timeout=1s"));
    let (_, refused) = open(&h, &with_timeout).await;
    refused
        .expect_err("statement_timeout is not in this route's list")
        .assert_fatal("42501", "permission denied to set parameter \"statement_timeout\": pgwarden forwards only the settings this route allows");
}

/// libpq's clients as people run them: psql, and psycopg 3 on libpq 18, each with an options
/// setting and what they send by themselves (application_name, client_encoding for psycopg).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_psycopg_keep_working_with_their_own_parameters() {
    let h = Harness::start(Options::default()).await;
    let password = h.client_password.expose_secret();
    let conninfo = h.conninfo("options='-c statement_timeout=3s'");
    let out = h.psql(&conninfo, password, "SHOW statement_timeout").await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout, "3s");

    let script = "import psycopg, sys\n\
                  with psycopg.connect(sys.argv[1]) as c:\n\
                  \x20   print(c.execute('SHOW statement_timeout').fetchone()[0])\n\
                  \x20   print(c.execute('SHOW application_name').fetchone()[0])";
    let mut python = tokio::process::Command::new(venv::bin("python"));
    python
        .args(["-c", script, &conninfo])
        .env("PGPASSWORD", password)
        .kill_on_drop(true);
    let out = tokio::time::timeout(GENEROUS, python.output())
        .await
        .expect("psycopg finishes")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["3s", "pgwarden-tests"]);
}
