//! What `pgwarden backup` reports and reads: its metrics against the alerts and the
//! dashboard that use them, the Pushgateway push, the configuration's checks, and the
//! manifest's tool versions.

use std::path::Path;

use secrecy::ExposeSecret;

use crate::backup::{metrics, promtool_accepts};
use crate::support::backup::{BackupEnv, BackupOptions, seed};
use crate::support::harness::GENEROUS;

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

[backup.".k.tmp-1"]
upstream = {{ host = "db", database = "k", ca_file = "ca.crt" }}
credentials = "b"
directory = "/var/backups"
recipients = ["{}"]
"#,
        identity.to_public(),
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
        "[backup.\".k.tmp-1\"]: a target's name is 1 to 64 letters",
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
