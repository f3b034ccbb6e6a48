//! What pgwarden logs about sessions, and that no secret ever reaches a log line — captured
//! at `debug`, with pgwarden's own JSON format, from pgwarden and every library it logs
//! through — and that no client can forge a log line, in either format.

use crate::support::harness::{GENEROUS, Harness, Options, User, UserAuth, wait_until};
use crate::support::wire;
use pgwarden::config::LogFormat;
use secrecy::ExposeSecret;
use serde_json::Value;

const ALICE_PASSWORD: &str = "alice-Password-0123456789";
const WRONG_PASSWORD: &str = "wrong-Password-0123456789";

/// The base64 fields of a `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` verifier.
fn verifier_parts(verifier: &str) -> Vec<String> {
    let rest = verifier
        .strip_prefix("SCRAM-SHA-256$")
        .expect("a SCRAM verifier");
    let (params, keys) = rest.split_once('$').unwrap();
    let (_, salt) = params.split_once(':').unwrap();
    let (stored, server) = keys.split_once(':').unwrap();
    vec![salt.to_owned(), stored.to_owned(), server.to_owned()]
}

/// The longest run of the characters a generated password is made of (letters and digits),
/// leaving out lowercase hex (certificate bytes in rustls's debug output): a 40-character
/// password from 62 symbols is lowercase hex with a probability of about 10^-23.
fn longest_password_like_run(text: &str) -> usize {
    let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|run| !hex(run))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_recorded_and_no_secret_reaches_any_log_line() {
    let h = Harness::start(Options {
        users: vec![User {
            name: "alice".into(),
            auth: UserAuth::Password(ALICE_PASSWORD.into()),
        }],
        ..Options::default()
    })
    .await;

    // A session through tokio-postgres; while it lives, the issued role's verifier is read
    // from the catalogue so the logs can be searched for it.
    let client = h.connect().await;
    let user: String = client
        .query_one("SELECT session_user::text", &[])
        .await
        .unwrap()
        .get(0);
    let issued: String = h
        .direct()
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    // A psql session as another user, with channel binding required.
    let out = h
        .psql(
            &h.conninfo("channel_binding=require")
                .replace("user=keycloak", "user=alice"),
            ALICE_PASSWORD,
            "SELECT 1",
        )
        .await;
    assert!(out.success, "{}", out.stderr);
    // Failed logins: a wrong password, an unknown user.
    for (name, password) in [("keycloak", WRONG_PASSWORD), ("mallory", WRONG_PASSWORD)] {
        let config = h.pg_config_as(name, password, "keycloak");
        assert!(h.try_connect(&config).await.is_err());
    }
    drop(client);
    h.wait_for_no_dynamic_roles().await;
    h.logs.wait_for("session_end", 2).await;

    // One start and one end record per session, with the session's facts on its span.
    let starts = h.logs.events("session_start");
    let ends = h.logs.events("session_end");
    assert_eq!(starts.len(), 2, "{starts:?}");
    let span = |e: &Value, f: &str| e["span"][f].as_str().map(str::to_owned);
    let mut users: Vec<_> = ends.iter().map(|e| span(e, "user").unwrap()).collect();
    users.sort();
    assert_eq!(users, ["alice", "keycloak"]);
    for e in &ends {
        assert_eq!(span(e, "database").as_deref(), Some("keycloak"), "{e}");
        assert!(
            span(e, "upstream_user").unwrap().starts_with("pgwarden_"),
            "{e}"
        );
        assert!(span(e, "session_id").is_some(), "{e}");
        // Both clients log out with Terminate.
        assert_eq!(e["close_reason"], "client_terminated", "{e}");
        assert!(e["bytes_client_to_upstream"].as_u64().unwrap() > 0, "{e}");
        assert!(e["bytes_upstream_to_client"].as_u64().unwrap() > 0, "{e}");
    }
    let keycloak_end = ends
        .iter()
        .find(|e| span(e, "user").unwrap() == "keycloak")
        .unwrap();
    assert_eq!(span(keycloak_end, "upstream_user"), Some(user.clone()));
    let alice_end = ends
        .iter()
        .find(|e| span(e, "user").unwrap() == "alice")
        .unwrap();
    assert_eq!(
        span(alice_end, "auth_method").as_deref(),
        Some("SCRAM-SHA-256-PLUS")
    );
    let rejected = h.logs.wait_for("connection_rejected", 2).await;
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(
        rejected.iter().all(|e| e["reason"] == "auth_failed"),
        "{rejected:?}"
    );

    // No secret, anywhere.
    let logs = &h.logs;
    logs.assert_absent("the client password", h.client_password.expose_secret());
    logs.assert_absent("alice's password", ALICE_PASSWORD);
    logs.assert_absent("the wrong password", WRONG_PASSWORD);
    logs.assert_absent("the admin password", h.admin_password.expose_secret());
    logs.assert_absent(
        "the cluster superuser password",
        h.cluster.superuser_password().expose_secret(),
    );
    let client_verifier =
        std::fs::read_to_string(h.ca_path.with_file_name("client.verifier")).unwrap();
    logs.assert_absent("the client verifier", &client_verifier);
    logs.assert_absent("the issued verifier", &issued);
    for part in verifier_parts(&client_verifier) {
        logs.assert_absent("a field of the client verifier", &part);
    }
    for part in verifier_parts(&issued) {
        logs.assert_absent("a field of the issued verifier", &part);
    }
    // The issued password itself is never seen by the test; it is 40 letters and digits,
    // and no log line carries a run that long.
    for (i, line) in logs.text().lines().enumerate() {
        let run = longest_password_like_run(line);
        assert!(
            run < 40,
            "log line {} has a {run}-character run that could be a password: {line}",
            i + 1
        );
    }
}

/// What a client would like the log to say on a line of its own.
const FORGED: &str = "1970-01-01T00:00:00.000000Z  INFO event=\"session_end\" forged=yes";

/// Three ways a client puts a newline into what pgwarden logs: a user name (the span's
/// `user`), a startup parameter's name (pgwarden's refusal names it) and an allowed setting's
/// value (PostgreSQL's refusal quotes it, and pgwarden logs the server's answer). Returns once
/// the three records are written (`records` counts them in the captured text).
async fn forge_log_lines(h: &Harness, records: impl Fn(&str) -> bool) {
    let user = format!("mallory\n{FORGED}");
    let (_, refused) = wire::open(
        h.proxy_addr,
        &h.ca_pem,
        &[("user", user.as_str()), ("database", "keycloak")],
        WRONG_PASSWORD,
    )
    .await;
    refused.expect_err("an unknown user").assert_fatal(
        "28P01",
        &format!("password authentication failed for user \"{user}\""),
    );
    let name = format!("x\n{FORGED}");
    let (_, refused) = wire::open(
        h.proxy_addr,
        &h.ca_pem,
        &[
            ("user", "keycloak"),
            ("database", "keycloak"),
            (name.as_str(), "1"),
        ],
        h.client_password.expose_secret(),
    )
    .await;
    assert_eq!(refused.unwrap_err().field(b'C').as_deref(), Some("42501"));
    let value = format!("ISO\n{FORGED}");
    let (_, refused) = wire::open(
        h.proxy_addr,
        &h.ca_pem,
        &[
            ("user", "keycloak"),
            ("database", "keycloak"),
            ("DateStyle", value.as_str()),
        ],
        h.client_password.expose_secret(),
    )
    .await;
    assert_eq!(refused.unwrap_err().field(b'C').as_deref(), Some("08006"));
    wait_until(GENEROUS, "the three records are written", async || {
        records(&h.logs.text())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_text_forges_a_line_in_the_text_log() {
    let h = Harness::start(Options {
        log_format: LogFormat::Text,
        ..Options::default()
    })
    .await;
    forge_log_lines(&h, |text| {
        text.matches("connection_rejected").count() >= 2 && text.contains("session_failed")
    })
    .await;
    let text = h.logs.text();
    // No line of the log is the client's…
    for line in text.lines() {
        assert!(
            !line.starts_with("1970-01-01") && !line.starts_with("forged=yes"),
            "a client forged a log line: {line:?}\nin:\n{text}"
        );
    }
    // …and its text is there, escaped, in the records that quote it.
    for event in ["connection_rejected", "session_failed"] {
        assert!(
            text.lines()
                .any(|l| l.contains(event) && l.contains("forged=yes")),
            "no {event} record quotes the client's text:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_text_forges_a_line_in_the_json_log() {
    let h = Harness::start(Options::default()).await;
    forge_log_lines(&h, |text| {
        text.matches("\"connection_rejected\"").count() >= 2 && text.contains("\"session_failed\"")
    })
    .await;
    // Every line is one JSON record (`lines` fails on any other), and the newlines are in
    // the records' fields, escaped.
    let lines = h.logs.lines();
    let with_newline = lines
        .iter()
        .filter(|l| l.to_string().contains(&format!("\\n{}", &FORGED[..10])))
        .count();
    assert!(with_newline >= 3, "{lines:?}");
    let users: Vec<_> = h
        .logs
        .events("connection_rejected")
        .iter()
        .filter_map(|e| e["span"]["user"].as_str().map(str::to_owned))
        .collect();
    assert!(users.contains(&format!("mallory\n{FORGED}")), "{users:?}");
}
