//! The operational files hold together: `config/prometheus/` passes `promtool check config`,
//! `check rules` and its own unit tests (`test rules`); every alert has a summary, a
//! description, a runbook and unit tests that see it fire and not fire; the Grafana
//! dashboard parses, every panel has a query against the provisioned datasource, and every
//! query is valid PromQL; and every `pgwarden_*` metric (and label value) the alerts, their
//! tests and the dashboard use is one a live pgwarden exports — read from `/metrics` of a
//! running harness, not from a list kept by hand — while the dashboard shows every metric
//! pgwarden exports.
//!
//! promtool comes from Debian's `prometheus` package, which `.ci/run` installs. When it is
//! missing these tests fail; they never skip.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::harness::{Harness, Options, VaultOptions};
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub(crate) fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs promtool in `dir`; fails the test with promtool's output unless it succeeds.
fn promtool(dir: &Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install Debian's `prometheus` package \
                 (.ci/run installs it when it is missing)"
            )
        });
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

/// A temporary directory holding copies of `files` from `config/prometheus/`, so rule
/// paths resolve the way Prometheus resolves them (next to the configuration).
fn prometheus_copy(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        std::fs::copy(repo(&format!("config/prometheus/{f}")), dir.path().join(f)).unwrap();
    }
    dir
}

#[test]
fn prometheus_configuration_and_rules_pass_promtool() {
    let dir = prometheus_copy(&["prometheus.yml", "alerts.yml", "alerts.test.yml"]);
    let config = promtool(dir.path(), &["check", "config", "prometheus.yml"], None);
    assert!(config.contains("1 rule files found"), "{config}");
    let rules = promtool(dir.path(), &["check", "rules", "alerts.yml"], None);
    assert!(rules.contains("SUCCESS"), "{rules}");
    let tests = promtool(dir.path(), &["test", "rules", "alerts.test.yml"], None);
    assert!(tests.contains("SUCCESS"), "{tests}");
    // The scrape targets docker-compose.yml provides.
    let config = read("config/prometheus/prometheus.yml");
    for target in ["pgwarden:9187", "postgres-exporter:9187", "keycloak:9000"] {
        assert!(config.contains(&format!("\"{target}\"")), "no {target}");
    }
}

/// Each rule of alerts.yml: its name and its text.
fn alert_rules() -> Vec<(String, String)> {
    let text = read("config/prometheus/alerts.yml");
    text.split("- alert: ")
        .skip(1)
        .map(|block| {
            let name = block.lines().next().unwrap().trim().to_owned();
            (name, block.to_owned())
        })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_and_tests_that_see_it_fire_and_stay_quiet() {
    let rules = alert_rules();
    let required = [
        "PgwardenDown",
        "PgwardenUpstreamConnectFailures",
        "PgwardenCredentialIssuanceFailing",
        "PgwardenClientAuthFailuresSpiking",
        "PgwardenAllowlistDenials",
        "PgwardenLeaseRevocationsFailing",
        "PgwardenLeaseRevocationBacklogGrowing",
        "PgwardenTlsCertificateExpiringSoon",
        "KeycloakDatabasePoolStarved",
    ];
    for name in required {
        assert!(rules.iter().any(|(n, _)| n == name), "no alert {name}");
    }
    let tests = read("config/prometheus/alerts.test.yml");
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for (name, block) in &rules {
        for key in ["summary:", "description:", "runbook: |", "severity:"] {
            assert!(block.contains(key), "{name} has no {key}");
        }
        let runbook = block.split("runbook: |").nth(1).unwrap();
        assert!(
            runbook.contains("1. ") && runbook.contains("2. "),
            "{name}: the runbook has steps"
        );
        // What each `alertname: <name>` check expects: none, or some.
        let expectations: Vec<bool> = lines
            .windows(2)
            .filter(|w| w[0] == format!("alertname: {name}"))
            .map(|w| w[1] != "exp_alerts: []")
            .collect();
        assert!(expectations.contains(&true), "{name}: no test sees it fire");
        assert!(
            expectations.contains(&false),
            "{name}: no test sees it stay quiet"
        );
    }
    // The alert expressions use a TLS threshold of 14 days and agroal_awaiting_count > 0.
    let tls = &rules
        .iter()
        .find(|(n, _)| n == "PgwardenTlsCertificateExpiringSoon")
        .unwrap()
        .1;
    assert!(tls.contains("< 14 * 86400"), "{tls}");
    let pool = &rules
        .iter()
        .find(|(n, _)| n == "KeycloakDatabasePoolStarved")
        .unwrap()
        .1;
    assert!(pool.contains("(agroal_awaiting_count) > 0"), "{pool}");
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested.iter().cloned());
        }
        out.push(p.clone());
    }
    out
}

fn dashboard() -> Value {
    serde_json::from_str(&read("config/grafana/dashboards/pgwarden.json"))
        .expect("the dashboard is JSON")
}

/// Every query of the dashboard, with Grafana's variables replaced by PromQL text.
pub(crate) fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(&dashboard()) {
        let title = p["title"].as_str().unwrap_or_default().to_owned();
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            out.push((title.clone(), expr.to_owned()));
        }
    }
    out
}

#[test]
fn the_dashboard_parses_and_every_panel_queries_the_provisioned_prometheus() {
    let d = dashboard();
    assert_eq!(d["uid"], "pgwarden");
    let datasource = read("config/grafana/provisioning/datasources/prometheus.yml");
    assert!(datasource.contains("uid: prometheus"), "{datasource}");
    assert!(
        datasource.contains("url: http://prometheus:9090"),
        "{datasource}"
    );
    let provider = read("config/grafana/provisioning/dashboards/pgwarden.yml");
    assert!(
        provider.contains("type: file") && provider.contains("path: "),
        "{provider}"
    );
    let all = panels(&d);
    let mut ids = BTreeSet::new();
    let mut shown = 0;
    for p in &all {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("an id")),
            "duplicate id: {title}"
        );
        if p["type"] == "row" {
            continue;
        }
        shown += 1;
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{title}: an empty query");
            let uid = t["datasource"]["uid"]
                .as_str()
                .or(p["datasource"]["uid"].as_str());
            assert_eq!(
                uid,
                Some("prometheus"),
                "{title}: not the provisioned datasource"
            );
        }
    }
    assert!(shown >= 20, "{shown} panels");
    // What the issue asks the dashboard to show, by the metrics it reads.
    let text = dashboard_queries()
        .into_iter()
        .map(|(_, e)| e)
        .collect::<Vec<_>>()
        .join("\n");
    for needed in [
        "pgwarden_sessions_active",
        "pgwarden_connections_accepted_total",
        "pgwarden_connections_rejected_total",
        "histogram_quantile(0.95, sum by (le) (rate(pgwarden_handshake_duration_seconds_bucket",
        "pgwarden_credential_request_duration_seconds_bucket",
        "pgwarden_upstream_connect_failures_total",
        "pgwarden_leases_active",
        "pgwarden_lease_renewals_total",
        "pgwarden_lease_revocations_total",
        "pgwarden_lease_revocations_pending",
        "pgwarden_relay_bytes_total",
        "agroal_active_count",
        "agroal_awaiting_count",
        "pg_stat_activity_count",
    ] {
        assert!(
            text.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // As recording rules, promtool parses each expression.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in dashboard_queries().iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        assert!(
            !expr.contains('$'),
            "{title}: an unknown variable in {expr}"
        );
        rules += &format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
    promtool(dir.path(), &["check", "rules", "dashboard.yml"], None);
}

/// Every `pgwarden_*` name in `text`, with the label matchers right after it.
pub(crate) fn pgwarden_selectors(text: &str) -> Vec<(String, Labels)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("pgwarden_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_owned();
        let mut matchers = Vec::new();
        if let Some(body) = tail[end..].strip_prefix('{') {
            let body = &body[..body.find('}').unwrap()];
            for m in body.split(',') {
                // name="value" and name!="value"; regular expressions are the dashboard's.
                if let Some((k, v)) = m.split_once("!=").or_else(|| m.split_once('=')) {
                    let (k, v) = (k.trim(), v.trim());
                    if !v.starts_with('~') && !k.ends_with('~') && !k.ends_with('!') {
                        matchers.push((k.to_owned(), v.trim_matches('"').to_owned()));
                    }
                }
            }
        }
        out.push((name, matchers));
        rest = &tail[end..];
    }
    out
}

/// The prefix of `pgwarden backup`'s metrics.
pub(crate) const BACKUP_METRICS: &str = "pgwarden_backup";

/// A series' labels.
pub(crate) type Labels = Vec<(String, String)>;
/// Metric families by name: their type and the labels of each of their series.
pub(crate) type Families = BTreeMap<String, (String, Vec<Labels>)>;

/// The families of a `/metrics` body.
pub(crate) fn families(body: &str) -> Families {
    let mut out = Families::new();
    for line in body.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            out.entry(name.to_owned()).or_default().0 = kind.to_owned();
        }
    }
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.rsplit_once(' ').unwrap().0;
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| out.contains_key(*f)))
            .unwrap_or(name);
        let labels = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        if let Some(f) = out.get_mut(family) {
            f.1.push(labels);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pgwarden_metric_the_alerts_and_dashboard_use_is_exported() {
    // A pgwarden with a Vault source and the background audit, after one whole session:
    // every family it has is rendered (histograms from their first observation).
    let h = Harness::start(Options {
        vault: Some(VaultOptions::default()),
        admin: true,
        audit: true,
        ..Options::default()
    })
    .await;
    let client = h.connect().await;
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    h.logs.wait_for("session_end", 1).await;
    let (_, body) = h.admin_get("/metrics").await;
    promtool(Path::new("."), &["check", "metrics"], Some(&body));
    let exported = families(&body);
    assert!(exported.contains_key("pgwarden_handshake_duration_seconds"));

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
    let mut used_by_dashboard = BTreeSet::new();
    for (file, text) in &sources {
        let selectors = pgwarden_selectors(text);
        assert!(!selectors.is_empty(), "{file} uses no pgwarden metric");
        for (name, matchers) in selectors {
            // `pgwarden backup`'s metrics come from its runs, not from the proxy's /metrics:
            // tests/it/backup.rs checks them against a real run's metrics file.
            if name.starts_with(BACKUP_METRICS) {
                continue;
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| exported.get(*f).is_some_and(|(k, _)| k == "histogram"))
                })
                .unwrap_or(&name)
                .to_owned();
            let (_, series) = exported.get(&family).unwrap_or_else(|| {
                panic!("{file} uses {name}, which pgwarden does not export:\n{body}")
            });
            for (label, value) in matchers {
                // Synthetic series name the scrape target (instance, job) and configured
                // names (a source's name) of a deployment, not of this harness.
                if file.ends_with(".test.yml")
                    && matches!(label.as_str(), "instance" | "job" | "name")
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
                used_by_dashboard.insert(family);
            }
        }
    }
    let not_shown: Vec<&String> = exported
        .keys()
        .filter(|n| n.starts_with("pgwarden_") && !used_by_dashboard.contains(*n))
        .collect();
    assert!(
        not_shown.is_empty(),
        "the dashboard does not show {not_shown:?}"
    );
    h.assert_no_secrets_logged();
}
