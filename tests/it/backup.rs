//! `pgwarden backup`, `backup verify` and `restore` with the real PostgreSQL tools against
//! a real cluster and the built-in credential source: a round trip into a fresh database,
//! a wrong identity, no plaintext on disk, the credential revoked after success and after a
//! failed dump, nothing under a final name after a dump or a process killed halfway, the
//! metrics a one-shot run leaves. (Vault: backup_vault.rs; metrics, alerts and the
//! configuration: backup_reporting.rs.)

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

pub(crate) fn metrics(env: &BackupEnv) -> String {
    std::fs::read_to_string(env.metrics_file()).expect("the metrics file")
}

fn metric(env: &BackupEnv, series: &str) -> f64 {
    parse_metric(&metrics(env), series).unwrap_or_else(|| panic!("no {series}"))
}

/// promtool accepts the metrics file (node exporter's textfile collector reads this format).
pub(crate) fn promtool_accepts(text: &str) {
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
        assert_eq!(failure.reason(), Reason::Dump, "{failure}");
        assert!(failure.to_string().contains("pg_dump exited"), "{failure}");
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
    assert_eq!(failure.reason(), Reason::Interrupted);
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
    assert_eq!(report.outcome.expect_err("busy").reason(), Reason::Busy);
    assert_eq!(report.lease_revoked, None, "no credential was issued");
    drop(held);
    assert!(env.run().await.outcome.is_ok());
}
