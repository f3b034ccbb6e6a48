//! `pgwarden backup`, `backup verify` and `restore` with the real PostgreSQL tools against
//! a real cluster and the built-in credential source: a round trip into a fresh database,
//! a wrong identity, no plaintext on disk, the credential revoked after success and after a
//! failed dump, nothing under a final name after a dump or a process killed halfway, the
//! metrics a one-shot run leaves, and the configuration's checks. (Vault: backup_vault.rs.)

use std::path::Path;
use std::process::Stdio;

use pgwarden::backup::Reason;
use pgwarden::backup::manifest::{DUMP_SUFFIX, MANIFEST_SUFFIX, Manifest};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::support::backup::{BackupEnv, BackupOptions, files_containing, fingerprint, seed};
use crate::support::harness::{GENEROUS, parse_metric, wait_until};

/// A pg_dump that passes 128 KiB of the real dump, then waits for the file `go` beside the
/// script (having created `ready`), then passes the rest; pg_dump's failure stays visible.
const PAUSING: &str = r#"#!/bin/bash
set -o pipefail
[ "$1" = --version ] && exec "{real}" "$@"
here=$(dirname "$0")
"{real}" "$@" | { dd bs=4096 count=32 iflag=fullblock status=none; : > "$here/ready"; while [ ! -e "$here/go" ]; do sleep 0.05; done; cat; }
"#;

/// A pg_dump killed halfway: 100 KiB of the real dump, then SIGKILL.
const DYING: &str = r#"#!/bin/bash
[ "$1" = --version ] && exec "{real}" "$@"
"{real}" "$@" | dd bs=4096 count=25 iflag=fullblock status=none
kill -KILL $$
"#;

fn manifest_path(env: &BackupEnv, m: &Manifest) -> std::path::PathBuf {
    env.backups()
        .join(m.file.replace(DUMP_SUFFIX, MANIFEST_SUFFIX))
}

fn metrics(env: &BackupEnv) -> String {
    std::fs::read_to_string(env.metrics_file()).expect("the metrics file")
}

fn metric(env: &BackupEnv, series: &str) -> f64 {
    parse_metric(&metrics(env), series).unwrap_or_else(|| panic!("no {series}"))
}

/// promtool accepts the metrics file (node exporter's textfile collector reads this format).
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_verified_and_restored_into_a_fresh_database_with_the_same_rows() {
    let env = BackupEnv::start(BackupOptions::default()).await;
    seed(env.direct(), 5000, "marker-round-trip").await;
    let before = fingerprint(env.direct()).await;

    let report = env.run().await;
    let m = report
        .outcome
        .as_ref()
        .expect("the backup succeeds")
        .manifest
        .clone();
    assert_eq!(report.lease_revoked, Some(true));
    assert!(env.backup_roles().await.is_empty(), "the login is dropped");
    // One backup: the dump and its manifest, under their final names, nothing else visible.
    let visible: Vec<String> = env
        .backup_files()
        .into_iter()
        .filter(|f| !f.starts_with('.'))
        .collect();
    assert_eq!(
        visible,
        [m.file.clone(), m.file.replace(DUMP_SUFFIX, MANIFEST_SUFFIX)]
    );
    let on_disk: Manifest =
        serde_json::from_slice(&std::fs::read(manifest_path(&env, &m)).unwrap()).unwrap();
    assert_eq!(on_disk, m);
    let file = env.backups().join(&m.file);
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(m.encrypted_bytes, bytes.len() as u64);
    let sha = pgwarden::backup::pipeline::sha256_of(&mut bytes.as_slice()).unwrap();
    assert_eq!(m.sha256, sha);
    assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "an age file");
    let version: String = env
        .direct()
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(m.server_version.as_deref(), Some(version.as_str()));
    assert!(
        m.tools.pg_dump.starts_with("pg_dump (PostgreSQL) "),
        "{}",
        m.tools.pg_dump
    );
    assert_eq!(m.database, "keycloak");
    assert_eq!(m.recipients, [env.identity.to_public().to_string()]);
    let mode = std::fs::metadata(&file).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // backup verify: pg_restore --list reads it, nothing is restored.
    let pg_restore = env.pg_restore();
    let out = env
        .pgwarden(&["backup", "verify", "--identity"])
        .arg(&env.identity_path)
        .arg("--pg-restore")
        .arg(&pg_restore)
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("SHA-256 matches the manifest"), "{stdout}");
    assert!(
        stdout.contains(&format!("dumped from PostgreSQL {version}")),
        "{stdout}"
    );

    // restore into a database that did not exist, with the password in the environment only.
    env.direct()
        .batch_execute("CREATE DATABASE restored")
        .await
        .unwrap();
    let out = env
        .pgwarden(&["restore", "--identity"])
        .arg(&env.identity_path)
        .arg("--dbname")
        .arg(env.superuser_conninfo("restored"))
        .arg("--pg-restore")
        .arg(&pg_restore)
        .arg(&file)
        .args(["--", "--no-owner", "--no-privileges", "--exit-on-error"])
        .env("PGPASSWORD", env.superuser_password().expose_secret())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = env.cluster.connect("restored").await.unwrap();
    assert_eq!(fingerprint(&restored).await, before, "the same rows");

    // What the run left for Prometheus and the log.
    let text = metrics(&env);
    promtool_accepts(&text);
    assert_eq!(
        metric(
            &env,
            "pgwarden_backup_last_run_success{target=\"keycloak\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &env,
            "pgwarden_backup_last_success_size_bytes{target=\"keycloak\"}"
        ),
        m.encrypted_bytes as f64
    );
    let finished = humantime::parse_rfc3339(&m.finished_at).unwrap();
    let ts = metric(
        &env,
        "pgwarden_backup_last_success_timestamp_seconds{target=\"keycloak\"}",
    );
    assert_eq!(
        ts as u64,
        finished
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );
    assert_eq!(
        metric(&env, "pgwarden_backups_stored{target=\"keycloak\"}"),
        1.0
    );
    let records = env.logs.events("backup_finished");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["outcome"], "success");
    assert_eq!(records[0]["sha256"], m.sha256.as_str());
    assert!(!env.logs.events("lease_revoked").is_empty());
    env.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_recipients_identity_decrypts_and_a_changed_file_is_refused() {
    let env = BackupEnv::start(BackupOptions::default()).await;
    seed(env.direct(), 500, "marker-identity").await;
    let m = env.run().await.outcome.expect("backup").manifest;
    let file = env.backups().join(&m.file);
    let stranger = env.dir().join("operator/stranger.txt");
    let other = age::x25519::Identity::generate();
    std::fs::write(&stranger, other.to_string().expose_secret()).unwrap();

    let verify = |identity: &Path, backup: &Path| {
        env.pgwarden(&["backup", "verify", "--identity"])
            .arg(identity)
            .arg("--pg-restore")
            .arg(env.pg_restore())
            .arg(backup)
            .output()
            .unwrap()
    };
    let out = verify(&stranger, &file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("can decrypt this backup"), "{stderr}");
    assert!(!stderr.contains(other.to_string().expose_secret()));
    let out = env
        .pgwarden(&["restore", "--stdout", "--identity"])
        .arg(&stranger)
        .arg(&file)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing decrypted");

    // The right identity works (the check above can pass)...
    assert!(verify(&env.identity_path, &file).status.success());
    // ...but not on a file changed after it was written: its manifest says so, and without
    // the manifest, decryption does.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x01;
    let copy_dir = env.dir().join("tampered");
    std::fs::create_dir(&copy_dir).unwrap();
    let tampered = copy_dir.join(&m.file);
    std::fs::write(&tampered, &bytes).unwrap();
    std::fs::copy(
        manifest_path(&env, &m),
        copy_dir.join(m.file.replace(DUMP_SUFFIX, MANIFEST_SUFFIX)),
    )
    .unwrap();
    let out = verify(&env.identity_path, &tampered);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("differs from its manifest"));
    std::fs::remove_file(copy_dir.join(m.file.replace(DUMP_SUFFIX, MANIFEST_SUFFIX))).unwrap();
    let out = verify(&env.identity_path, &tampered);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("damaged or was cut short"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_byte_of_the_dump_reaches_the_disk() {
    // Uncompressed, so the marker is in the dump's bytes as they stream past.
    let env = BackupEnv::start(BackupOptions {
        pg_dump_wrapper: Some(PAUSING.into()),
        compression_level: Some(0),
        ..BackupOptions::default()
    })
    .await;
    let marker = format!("PLAINTEXT-MARKER-{}", rand::random::<u64>());
    seed(env.direct(), 20_000, &marker).await;
    let started = std::time::SystemTime::now();
    let run = {
        let env = &env;
        async move { env.run().await }
    };
    let ready = env.dir().join("ready");
    let scan = |when: &str| {
        let skip = [env.cluster.data_dir()];
        let mut hits = files_containing(env.dir(), marker.as_bytes(), &skip);
        // Other tests' files in the temporary directory, written since this test started.
        for e in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
            let p = e.path();
            let fresh = std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= started);
            if fresh && !p.starts_with(env.dir()) && !p.starts_with(env.cluster.data_dir()) {
                hits.extend(files_containing(&p, marker.as_bytes(), &skip));
                if p.is_file()
                    && std::fs::read(&p)
                        .is_ok_and(|b| b.windows(marker.len()).any(|w| w == marker.as_bytes()))
                {
                    hits.push(p);
                }
            }
        }
        assert!(
            hits.is_empty(),
            "{when}: the plaintext marker is on disk in {hits:?}"
        );
    };
    let checks = async {
        wait_until(GENEROUS, "the dump is halfway", async || ready.exists()).await;
        // Mid-dump: the pending file has ciphertext in it, and a login of the source exists.
        let roles = env.backup_roles().await;
        assert_eq!(roles.len(), 1, "{roles:?}");
        let sessions: i64 = env
            .direct()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND application_name = 'pgwarden-backup'",
                &[&roles[0]],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(sessions, 1, "pg_dump runs as the issued login");
        let pending: Vec<String> = env
            .backup_files()
            .into_iter()
            .filter(|f| f.contains(".tmp-"))
            .collect();
        assert_eq!(pending.len(), 1, "{pending:?}");
        scan("mid-dump");
        std::fs::write(env.dir().join("go"), b"").unwrap();
    };
    let (report, ()) = tokio::join!(run, checks);
    let m = report.outcome.expect("the backup succeeds").manifest;
    scan("after the run");

    // The scan finds plaintext where there is some: the decrypted dump holds the marker.
    let out = env
        .pgwarden(&["restore", "--stdout", "--identity"])
        .arg(&env.identity_path)
        .arg(env.backups().join(&m.file))
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let control = env.dir().join("control");
    std::fs::create_dir(&control).unwrap();
    std::fs::write(control.join("plain.dump"), &out.stdout).unwrap();
    assert_eq!(
        files_containing(&control, marker.as_bytes(), &[]),
        [control.join("plain.dump")]
    );
    assert_eq!(m.dump_bytes, out.stdout.len() as u64);
    env.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_killed_halfway_leaves_nothing_and_its_credential_is_revoked() {
    let env = BackupEnv::start(BackupOptions {
        pg_dump_wrapper: Some(DYING.into()),
        ..BackupOptions::default()
    })
    .await;
    seed(env.direct(), 20_000, "marker-dying").await;
    for attempt in 1..=2 {
        let report = env.run().await;
        let failure = report.outcome.expect_err("the dump fails");
        assert_eq!(failure.reason, Reason::Dump, "{}", failure.detail);
        assert!(
            failure.detail.contains("pg_dump exited"),
            "{}",
            failure.detail
        );
        assert_eq!(report.lease_revoked, Some(true));
        assert!(env.backup_roles().await.is_empty(), "the login is dropped");
        // Nothing under a final name, and no temporary file either.
        let files: Vec<String> = env
            .backup_files()
            .into_iter()
            .filter(|f| !f.starts_with(".pgwarden-backup"))
            .collect();
        assert!(files.is_empty(), "{files:?}");
        assert_eq!(
            metric(
                &env,
                "pgwarden_backup_last_run_success{target=\"keycloak\"}"
            ),
            0.0
        );
        assert_eq!(
            metric(
                &env,
                "pgwarden_backup_failures_total{target=\"keycloak\",reason=\"dump\"}"
            ),
            f64::from(attempt),
            "failures are counted across runs"
        );
        assert_eq!(
            metric(
                &env,
                "pgwarden_backup_last_success_timestamp_seconds{target=\"keycloak\"}"
            ),
            0.0
        );
    }
    let records = env.logs.events("backup_finished");
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["reason"], "dump");
    promtool_accepts(&metrics(&env));
    env.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_process_killed_mid_dump_leaves_nothing_under_a_final_name() {
    // A short TTL, so that the killed run's login expires and the next run sweeps it.
    let env = BackupEnv::start(BackupOptions {
        pg_dump_wrapper: Some(PAUSING.into()),
        ttl: Some("3s".into()),
        ..BackupOptions::default()
    })
    .await;
    seed(env.direct(), 20_000, "marker-killed").await;
    let mut child = env
        .pgwarden(&["backup", "--config"])
        .arg(env.config_path())
        .args(["--target", "keycloak"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = env.dir().join("ready");
    wait_until(
        GENEROUS,
        "the dump is halfway and ciphertext is written",
        async || {
            ready.exists()
                && env.backup_files().iter().any(|f| {
                    f.contains(".tmp-")
                        && std::fs::metadata(env.backups().join(f)).is_ok_and(|m| m.len() > 65_536)
                })
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::write(env.dir().join("go"), b"").unwrap();
    let finals: Vec<String> = env
        .backup_files()
        .into_iter()
        .filter(|f| f.ends_with(DUMP_SUFFIX) || f.ends_with(MANIFEST_SUFFIX))
        .filter(|f| !f.starts_with('.'))
        .collect();
    assert!(finals.is_empty(), "{finals:?}");
    // A killed process revokes nothing: its login lives until its VALID UNTIL...
    assert_eq!(env.backup_roles().await.len(), 1);
    wait_until(GENEROUS, "the killed run's login has expired", async || {
        env.direct()
            .query_one(
                "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, 'pgwarden_backup_') AND rolvaliduntil < now()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    // ...and the next run removes it, and the leftover temporary file, and succeeds.
    std::fs::remove_file(env.dir().join("ready")).unwrap();
    let report = env.run().await;
    report.outcome.as_ref().expect("the next run succeeds");
    assert!(env.backup_roles().await.is_empty());
    assert!(
        env.backup_files().iter().all(|f| !f.contains(".tmp-")),
        "{:?}",
        env.backup_files()
    );
    assert_eq!(env.logs.events("backup_leftovers_removed").len(), 1);
    env.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_backup_stops_the_dump_and_revokes_its_credential() {
    let env = BackupEnv::start(BackupOptions {
        pg_dump_wrapper: Some(PAUSING.into()),
        ..BackupOptions::default()
    })
    .await;
    seed(env.direct(), 20_000, "marker-interrupted").await;
    let interrupt = CancellationToken::new();
    let ready = env.dir().join("ready");
    let stopper = async {
        wait_until(GENEROUS, "the dump is halfway", async || ready.exists()).await;
        interrupt.cancel();
    };
    let (report, ()) = tokio::join!(env.run_until(interrupt.clone()), stopper);
    let failure = report.outcome.expect_err("interrupted");
    assert_eq!(failure.reason, Reason::Interrupted);
    assert_eq!(report.lease_revoked, Some(true));
    assert!(env.backup_roles().await.is_empty());
    assert!(
        env.backup_files()
            .iter()
            .all(|f| f.starts_with(".pgwarden-backup")),
        "{:?}",
        env.backup_files()
    );
    std::fs::write(env.dir().join("go"), b"").unwrap();
    env.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_a_busy_destination_is_refused() {
    let env = BackupEnv::start(BackupOptions::default()).await;
    seed(env.direct(), 10, "marker-busy").await;
    let dest = pgwarden::backup::destination::LocalDir::new(&env.backups());
    let held = pgwarden::backup::destination::Destination::lock(&dest)
        .unwrap()
        .expect("free");
    let report = env.run().await;
    assert_eq!(report.outcome.expect_err("busy").reason, Reason::Busy);
    assert_eq!(report.lease_revoked, None, "no credential was issued");
    drop(held);
    assert!(env.run().await.outcome.is_ok());
}

#[test]
fn backup_configuration_errors_are_all_reported_without_echoing_values() {
    let dir = tempfile::tempdir().unwrap();
    let identity = age::x25519::Identity::generate();
    let secret = identity.to_string().expose_secret().to_owned();
    std::fs::write(
        dir.path().join("ca.crt"),
        pgwarden::embedded::pki::Pki::new("ca")
            .unwrap()
            .ca_cert_pem(),
    )
    .unwrap();
    let text = format!(
        r#"
[credentials.b]
source = "postgres"
admin_user = "a"
admin_password = "x"

[backup.one]
route = "nowhere"
directory = "/var/backups"
recipients = ["{secret}", "age1notakey"]
compression_level = 12
keep_last = 0

[backup.two]
upstream = {{ host = "db", database = "k", tls = "disable" }}
directory = "/var/backups"

[backup.three]
upstream = {{ host = "db", database = "k", ca_file = "ca.crt" }}
credentials = "b"
directory = "/var/backups"
recipients = ["{}"]
pushgateway = "ftp://x"
"#,
        identity.to_public()
    );
    let errors = pgwarden::config::backup_from_str(&text, dir.path(), None, std::iter::empty())
        .expect_err("invalid")
        .0;
    let all = errors.join("\n");
    for expected in [
        "[backup.one]: route `nowhere` is not a [[routes]] database",
        "recipients #1: this is an age identity",
        "recipients #2: not an age X25519 recipient",
        "compression_level must be 0 to 9",
        "keep_last must be at least 1",
        "[backup.two]: the dump would cross the network in clear",
        "[backup.two]: `credentials`",
        "[backup.two]: needs `recipients` or `recipients_file`",
        "[backup.three]: pushgateway is not an http(s) URL",
    ] {
        assert!(all.contains(expected), "missing `{expected}` in:\n{all}");
    }
    assert!(
        !all.contains(&secret[15..]),
        "an identity was echoed:\n{all}"
    );
    assert!(!all.contains("age1notakey"));
    // The same file with the errors fixed loads, and needs no [listen] or [[users]].
    let fixed = format!(
        "[credentials.b]\nsource = \"postgres\"\nadmin_user = \"a\"\nadmin_password = \"x\"\n\n\
         [backup.three]\nupstream = {{ host = \"db\", database = \"k\", ca_file = \"ca.crt\" }}\n\
         credentials = \"b\"\ndirectory = \"backups\"\nrecipients = [\"{}\"]\n",
        identity.to_public()
    );
    let file = pgwarden::config::backup_from_str(&fixed, dir.path(), None, std::iter::empty())
        .unwrap_or_else(|e| panic!("{e}"));
    let b = &file.backup["three"];
    assert_eq!(b.directory, dir.path().join("backups"));
    assert_eq!(
        b.retention.keep_last,
        pgwarden::config::raw::DEFAULT_BACKUP_KEEP_LAST
    );
    assert_eq!(b.pg_dump, Path::new("pg_dump"));
}

#[test]
fn the_manifest_names_the_age_crate_the_build_uses() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"age\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .expect("age in Cargo.lock")
        .trim_end_matches('"')
        .to_owned();
    let named = pgwarden::backup::manifest::AGE_CRATE;
    let minor = version.rsplit_once('.').unwrap().0;
    assert!(
        named.starts_with(&format!("age {minor} ")),
        "{named} vs {version}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_and_the_dashboard_use_the_metrics_a_run_writes() {
    use crate::observability_files::{
        BACKUP_METRICS, dashboard_queries, families, pgwarden_selectors, read,
    };
    let env = BackupEnv::start(BackupOptions::default()).await;
    seed(env.direct(), 10, "marker-metrics").await;
    env.run().await.outcome.expect("backup");
    let text = metrics(&env);
    promtool_accepts(&text);
    let exported = families(&text);
    assert!(
        exported.keys().all(|k| k.starts_with("pgwarden_backup")),
        "{exported:?}"
    );
    let sources = [
        ("alerts.yml", read("config/prometheus/alerts.yml")),
        ("alerts.test.yml", read("config/prometheus/alerts.test.yml")),
        (
            "pgwarden.json",
            dashboard_queries()
                .into_iter()
                .map(|(_, e)| e)
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    ];
    let mut shown = std::collections::BTreeSet::new();
    for (file, source) in &sources {
        let used: Vec<_> = pgwarden_selectors(source)
            .into_iter()
            .filter(|(n, _)| n.starts_with(BACKUP_METRICS))
            .collect();
        assert!(!used.is_empty(), "{file} uses no backup metric");
        for (name, matchers) in used {
            let (_, series) = exported.get(&name).unwrap_or_else(|| {
                panic!("{file} uses {name}, which a run does not write:\n{text}")
            });
            for (label, value) in matchers {
                if file.ends_with(".test.yml")
                    && matches!(label.as_str(), "instance" | "job" | "target")
                {
                    continue;
                }
                assert!(
                    series
                        .iter()
                        .any(|s| s.contains(&(label.clone(), value.clone()))),
                    "{file}: {name} has no series with {label}=\"{value}\""
                );
            }
            if *file == "pgwarden.json" {
                shown.insert(name);
            }
        }
    }
    let not_shown: Vec<&String> = exported.keys().filter(|k| !shown.contains(*k)).collect();
    assert!(
        not_shown.is_empty(),
        "the dashboard does not show {not_shown:?}"
    );
    // Each alert names the metric it is about.
    let alerts = read("config/prometheus/alerts.yml");
    for (alert, metric) in [
        (
            "PgwardenBackupTooOld",
            "pgwarden_backup_last_success_timestamp_seconds",
        ),
        ("PgwardenBackupFailing", "pgwarden_backup_last_run_success"),
    ] {
        let block = alerts
            .split(&format!("- alert: {alert}"))
            .nth(1)
            .expect(alert);
        assert!(
            block.split("- alert:").next().unwrap().contains(metric),
            "{alert}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_pushed_to_a_pushgateway_too() {
    // A stand-in Pushgateway: records the one request it gets and answers 200.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    return (head.to_owned(), body.to_owned());
                }
            }
        }
    });
    let env = BackupEnv::start(BackupOptions::default()).await;
    seed(env.direct(), 10, "marker-push").await;
    let config = std::fs::read_to_string(env.config_path()).unwrap().replace(
        "keep_last = 3\n",
        &format!("keep_last = 3\npushgateway = \"http://{addr}/\"\n"),
    );
    std::fs::write(env.config_path(), config).unwrap();
    env.run().await.outcome.expect("backup");
    let (head, body) = tokio::time::timeout(GENEROUS, server)
        .await
        .unwrap()
        .unwrap();
    assert!(
        head.starts_with("PUT /metrics/job/pgwarden_backup/target/keycloak HTTP/1.1"),
        "{head}"
    );
    assert_eq!(body, metrics(&env), "the same text as the textfile");
    promtool_accepts(&body);
}
