//! The `pgwarden` binary's commands, run as a user would: `scram-verifier` makes verifiers
//! PostgreSQL itself accepts, `check-config` exits 0 or 1 and names every problem, and
//! `pgwarden dev` prints a libpq URI and a JDBC URL that work as printed with psql and pgjdbc
//! and leaves nothing behind after SIGTERM.

use std::path::Path;
use std::process::Stdio;

use crate::support::harness::GENEROUS;
use crate::support::java;
use aws_lc_rs::{digest, hmac, pbkdf2};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use pgwarden::dev::OWNER_ROLE;
use pgwarden::embedded::cluster::{Cluster, ClusterOptions};
use pgwarden::embedded::pki::Pki;
use pgwarden::tls::pg_connector::{RustlsConnect, verify_full_client_config};
use secrecy::ExposeSecret;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const PGWARDEN: &str = env!("CARGO_BIN_EXE_pgwarden");

/// What one run of the binary gave.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn pgwarden(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(PGWARDEN)
        .args(args)
        .env_remove("PGWARDEN_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run pgwarden");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = tokio::time::timeout(GENEROUS, child.wait_with_output())
        .await
        .expect("pgwarden finishes")
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The quoted value of the `name = "…"` line in `scram-verifier`'s output.
fn printed(out: &str, name: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let v = l.strip_prefix(name)?.strip_prefix(" = \"")?;
        Some(v.strip_suffix('"')?.to_owned())
    })
}

/// Checks `verifier` against `password` the way RFC 5802 and PostgreSQL define it, with
/// nothing of pgwarden's: SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, i);
/// StoredKey = SHA-256(HMAC(SaltedPassword, "Client Key"));
/// ServerKey = HMAC(SaltedPassword, "Server Key").
fn assert_verifies(verifier: &str, password: &str) {
    let rest = verifier
        .strip_prefix("SCRAM-SHA-256$")
        .unwrap_or_else(|| panic!("not a SCRAM-SHA-256 verifier: {verifier}"));
    let (params, keys) = rest.split_once('$').expect("$ between salt and keys");
    let (iterations, salt) = params.split_once(':').expect("iterations:salt");
    let (stored, server) = keys.split_once(':').expect("StoredKey:ServerKey");
    let iterations: u32 = iterations.parse().expect("numeric iterations");
    assert_eq!(iterations, 4096, "PostgreSQL's default iteration count");
    let salt = STANDARD.decode(salt).expect("base64 salt");
    assert_eq!(salt.len(), 16, "PostgreSQL's salt length");
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations.try_into().unwrap(),
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    assert_eq!(
        STANDARD.decode(stored).unwrap(),
        stored_key.as_ref(),
        "StoredKey"
    );
    assert_eq!(
        STANDARD.decode(server).unwrap(),
        server_key.as_ref(),
        "ServerKey"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_verifier_prints_strong_passwords_with_verifiers_that_verify_them() {
    let first = pgwarden(&["scram-verifier"], None).await;
    let second = pgwarden(&["scram-verifier"], None).await;
    let mut pairs = Vec::new();
    for run in [&first, &second] {
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let password = printed(&run.stdout, "password").expect("a password line");
        let verifier = printed(&run.stdout, "scram_verifier").expect("a verifier line");
        assert!(password.len() >= 32, "{} characters", password.len());
        assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_verifies(&verifier, &password);
        pairs.push((password, verifier));
    }
    assert_ne!(pairs[0].0, pairs[1].0, "two runs, two passwords");
    assert_ne!(pairs[0].1, pairs[1].1);

    // A given password: no password line, and a fresh salt on every run.
    let given = "correct horse battery staple é";
    let a = pgwarden(
        &["scram-verifier", "--password-stdin"],
        Some(&format!("{given}\n")),
    )
    .await;
    let b = pgwarden(&["scram-verifier", "--password-stdin"], Some(given)).await;
    for run in [&a, &b] {
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert_eq!(printed(&run.stdout, "password"), None, "{}", run.stdout);
        assert!(!run.stdout.contains(given) && !run.stderr.contains(given));
        assert_verifies(&printed(&run.stdout, "scram_verifier").unwrap(), given);
    }
    assert_ne!(a.stdout, b.stdout, "same password, different salts");

    let empty = pgwarden(&["scram-verifier", "--password-stdin"], Some("\n")).await;
    assert_eq!(empty.code, Some(1));
    assert!(empty.stderr.contains("empty"), "{}", empty.stderr);
    assert_eq!(empty.stdout, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_accepts_the_verifiers_for_their_passwords_only() {
    let generated = pgwarden(&["scram-verifier"], None).await;
    let given = "a password chosen by its owner";
    let from_stdin = pgwarden(&["scram-verifier", "--password-stdin"], Some(given)).await;
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("start a cluster");
    let admin = cluster.connect("postgres").await.unwrap();
    let tls = verify_full_client_config(cluster.ca_cert_pem().as_bytes()).unwrap();
    let login = async |user: &str, password: &str| {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(cluster.port())
            .user(user)
            .password(password)
            .dbname("postgres")
            .ssl_mode(tokio_postgres::config::SslMode::Require)
            .connect_timeout(GENEROUS);
        let (client, connection) = c.connect(RustlsConnect::new(tls.clone())).await?;
        tokio::spawn(connection);
        let who: String = client
            .query_one("SELECT session_user::text", &[])
            .await?
            .get(0);
        Ok::<_, tokio_postgres::Error>(who)
    };
    let password = printed(&generated.stdout, "password").unwrap();
    for (role, run, password) in [
        ("generated_role", &generated, password.as_str()),
        ("given_role", &from_stdin, given),
    ] {
        let verifier = printed(&run.stdout, "scram_verifier").unwrap();
        // PostgreSQL stores a verifier given as the password as it is, without hashing it.
        admin
            .batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD '{verifier}'"))
            .await
            .unwrap();
        let stored: String = admin
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[&role],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored, verifier);
        assert_eq!(login(role, password).await.expect("login"), role);
        let err = login(role, "not the password").await.unwrap_err();
        assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("28P01"));
    }
    cluster.stop().await.unwrap();
}

/// Writes a configuration directory pgwarden can load: certificates, key, secrets.
fn write_valid_config(dir: &Path) -> String {
    let pki = Pki::new("check-config CA").unwrap();
    let cert = pki.issue_server(&["localhost"]).unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write("ca.crt", pki.ca_cert_pem());
    write("server.crt", &cert.cert_pem);
    write("server.key", cert.key_pem.expose_secret());
    write("admin_password", "an admin password of some length");
    let verifier = postgres_protocol::password::scram_sha_256(b"keycloak password");
    write("keycloak.verifier", &verifier);
    let config = r#"
[listen]
address = "127.0.0.1:6432"
tls_cert_file = "server.crt"
tls_key_file = "server.key"
allow = ["10.0.5.0/24", "::1/128"]

[[users]]
name = "keycloak"
scram_verifier_file = "keycloak.verifier"

[[routes]]
database = "keycloak"
users = ["keycloak"]
upstream = { host = "db.internal", port = 5432, database = "keycloak", tls = "verify-full", ca_file = "ca.crt" }
credentials = "dynamic"
session_role = "keycloak_owner"

[credentials.dynamic]
source = "postgres"
admin_user = "pgwarden_admin"
admin_password_file = "admin_password"
member_of = ["keycloak_owner"]
ttl = "1h"
"#;
    write("pgwarden.toml", config);
    config.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_exits_0_on_a_valid_file_and_1_naming_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let valid = write_valid_config(dir.path());
    let path = dir.path().join("pgwarden.toml");
    let ok = pgwarden(&["check-config", "--config", path.to_str().unwrap()], None).await;
    assert_eq!(ok.code, Some(0), "{}\n{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout.contains("configuration is valid"),
        "{}",
        ok.stdout
    );
    assert!(ok.stdout.contains("route keycloak"), "{}", ok.stdout);

    // Seven problems in one file, in every part of it.
    let broken = valid
        .replace("\"10.0.5.0/24\"", "\"10.0.5.0/33\"")
        .replace(
            "tls_key_file = \"server.key\"",
            "tls_key_file = \"missing.key\"",
        )
        .replace(
            "users = [\"keycloak\"]",
            "users = [\"keycloak\", \"nobody\"]",
        )
        .replace(
            "credentials = \"dynamic\"",
            "credentials = \"undefined_source\"",
        )
        .replace(
            "scram_verifier_file = \"keycloak.verifier\"",
            "scram_verifier = \"md5abc\"",
        )
        .replace("ttl = \"1h\"", "ttl = \"an hour\"")
        + "\n[surprise]\nkey = 1\n";
    let bad_path = dir.path().join("broken.toml");
    std::fs::write(&bad_path, &broken).unwrap();
    let bad = pgwarden(
        &["check-config", "--config", bad_path.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(bad.code, Some(1), "{}\n{}", bad.stdout, bad.stderr);
    let problems: Vec<&str> = bad
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .collect();
    for needle in [
        "10.0.5.0/33",
        "missing.key",
        "`nobody` is not defined",
        "`undefined_source` is not defined",
        "[[users]] #1 (keycloak)",
        // Named by its key; the value itself is never echoed.
        "[credentials.dynamic] `ttl`: not a duration",
        "surprise",
    ] {
        let n = problems.iter().filter(|p| p.contains(needle)).count();
        assert_eq!(
            n, 1,
            "`{needle}` in exactly one problem of:\n{}",
            bad.stderr
        );
    }
    assert_eq!(problems.len(), 7, "{}", bad.stderr);
    assert!(!bad.stderr.contains("an hour"), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("broken.toml: 7 problem(s):"),
        "{}",
        bad.stderr
    );
    assert!(
        !bad.stderr.contains("an admin password"),
        "secrets stay out"
    );

    let missing = pgwarden(
        &["check-config", "--config", "/nonexistent/pgwarden.toml"],
        None,
    )
    .await;
    assert_eq!(missing.code, Some(1), "{}", missing.stderr);
}

/// `session_user|current_user` through psql with `uri`, the only connection setting.
async fn psql_whoami(uri: &str) -> String {
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-A", "-t", "-c", "SELECT session_user, current_user"])
        .arg(uri)
        .kill_on_drop(true);
    for (var, _) in std::env::vars() {
        if var.starts_with("PG") {
            cmd.env_remove(var);
        }
    }
    let out = tokio::time::timeout(GENEROUS, cmd.output())
        .await
        .expect("psql finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Names in `dir` (pgwarden's own temporary directories show up there).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_prints_urls_that_work_as_printed_and_cleans_up_on_sigterm() {
    // A TMPDIR of its own, to see what dev creates and removes there; the cluster runs as
    // an unprivileged user when we are root, so it must be able to enter it.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut child = Command::new(PGWARDEN)
        .args(["dev", "--port", "0"])
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run pgwarden dev");
    let mut stderr = child.stderr.take().unwrap();
    let stderr_text = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    // Starting a cluster from nothing (initdb) takes a while on a loaded machine.
    let deadline = GENEROUS * 4;
    while !printed
        .iter()
        .any(|l: &String| l.starts_with("Configuration: "))
    {
        let line = tokio::time::timeout(deadline, lines.next_line())
            .await
            .expect("pgwarden dev prints its URLs")
            .unwrap();
        match line {
            Some(l) => printed.push(l),
            None => panic!(
                "pgwarden dev ended early; printed {printed:?}; stderr:\n{}",
                stderr_text.await.unwrap()
            ),
        }
    }
    let starting = |prefix: &str| {
        let found: Vec<&String> = printed.iter().filter(|l| l.starts_with(prefix)).collect();
        assert_eq!(
            found.len(),
            1,
            "one line starting {prefix:?} in {printed:#?}"
        );
        found[0].clone()
    };
    let uri = starting("postgresql://");
    let jdbc = starting("jdbc:postgresql://");
    let first = starting("pgwarden is listening on 127.0.0.1:");
    let cluster_port: u16 = first
        .rsplit("127.0.0.1:")
        .next()
        .unwrap()
        .trim_end_matches('.')
        .parse()
        .expect("the cluster's port");
    let made = entries(tmp.path());
    assert!(
        made.iter().any(|e| e.starts_with("pgwarden-dev-")),
        "{made:?}"
    );
    assert!(
        made.iter().any(|e| e.starts_with("pgwarden-cluster-")),
        "{made:?}"
    );

    // psql with the libpq URI exactly as printed.
    let via_psql = psql_whoami(&uri).await;
    let (psql_session, psql_current) = via_psql.split_once('|').expect("two columns");
    assert!(psql_session.starts_with("pgwarden_"), "{via_psql}");
    assert_eq!(psql_current, OWNER_ROLE);
    // pgjdbc with the JDBC URL exactly as printed.
    let via_jdbc = java::run("WhoAmI", &[&jdbc], None).await;
    via_jdbc.assert_success();
    assert!(
        via_jdbc.get("session_user").starts_with("pgwarden_"),
        "{via_jdbc}"
    );
    assert_ne!(
        via_jdbc.get("session_user"),
        psql_session,
        "a fresh role each"
    );
    assert_eq!(via_jdbc.get("current_user"), OWNER_ROLE);

    let pid = child.id().expect("still running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(GENEROUS, child.wait())
        .await
        .expect("pgwarden dev exits after SIGTERM")
        .unwrap();
    let stderr = stderr_text.await.unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stopped and cleaned up."), "{stderr}");
    // Both clients logged out with Terminate, and the session records say so.
    let ends: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("session_end"))
        .collect();
    assert_eq!(ends.len(), 2, "{stderr}");
    for end in ends {
        assert!(end.contains("close_reason=\"client_terminated\""), "{end}");
    }
    // Its files and its cluster are gone; only the reusable initdb template stays.
    let left: Vec<String> = entries(tmp.path())
        .into_iter()
        .filter(|e| !e.starts_with("pgwarden-initdb-"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", cluster_port)).is_err(),
        "the cluster's port is closed"
    );
}

#[tokio::test]
async fn run_exits_with_a_distinct_code_for_each_kind_of_start_up_failure() {
    let dir = tempfile::tempdir().unwrap();
    // No such file: EX_NOINPUT.
    let missing = dir.path().join("missing.toml");
    let out = pgwarden(&["run", "--config", missing.to_str().unwrap()], None).await;
    assert_eq!(out.code, Some(66), "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot read configuration file"),
        "{}",
        out.stderr
    );
    // A configuration that does not validate: EX_CONFIG, with every problem named.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[listen]\nmax_connections = \"many\"\n").unwrap();
    let out = pgwarden(&["run", "--config", bad.to_str().unwrap()], None).await;
    assert_eq!(out.code, Some(78), "{}", out.stderr);
    assert!(out.stderr.contains("problem(s)"), "{}", out.stderr);
    // A wrong command line: EX_USAGE; asking for help is no error.
    let out = pgwarden(&["run", "--no-such-flag"], None).await;
    assert_eq!(out.code, Some(64), "{}", out.stderr);
    let out = pgwarden(&["--help"], None).await;
    assert_eq!(out.code, Some(0));
    assert!(out.stdout.contains("Usage"), "{}", out.stdout);
}

#[tokio::test]
async fn dev_refuses_a_postgres_bin_without_the_server_programs() {
    let dir = tempfile::tempdir().unwrap();
    let out = pgwarden(
        &[
            "dev",
            "--port",
            "0",
            "--postgres-bin",
            dir.path().to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(out.code, Some(64), "{}", out.stderr);
    assert!(
        out.stderr.contains("initdb, pg_ctl and postgres"),
        "{}",
        out.stderr
    );
}
