//! After every run: the `backup_finished` record and the run's metrics.
//!
//! `pgwarden backup` is a one-shot command, so its metrics must outlive it.
//! They are rendered in Prometheus' text format and written atomically to the
//! target's `metrics_file` (for node exporter's textfile collector) and/or
//! PUT to a Pushgateway. Gauges that say when the newest good backup was
//! taken are recomputed from the destination's manifests at every run, so
//! they are right even after a metrics file was lost; the failure counters
//! are kept in a small state object in the destination. Label values are the
//! configured target name and fixed reasons; nothing secret is exported.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::destination::{Destination, LocalDir, replace_file};
use super::{Reason, Report};

pub const LAST_SUCCESS_TIMESTAMP: &str = "pgwarden_backup_last_success_timestamp_seconds";
pub const LAST_SUCCESS_SIZE: &str = "pgwarden_backup_last_success_size_bytes";
pub const LAST_SUCCESS_DURATION: &str = "pgwarden_backup_last_success_duration_seconds";
pub const LAST_RUN_TIMESTAMP: &str = "pgwarden_backup_last_run_timestamp_seconds";
pub const LAST_RUN_SUCCESS: &str = "pgwarden_backup_last_run_success";
pub const FAILURES: &str = "pgwarden_backup_failures_total";
pub const STORED: &str = "pgwarden_backups_stored";

/// The Pushgateway job the metrics are grouped under (with the target).
pub const PUSH_JOB: &str = "pgwarden_backup";
/// How long a push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Failure counts by reason, kept between runs in the destination.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stats {
    failures: BTreeMap<String, u64>,
}

fn state_name(target: &str) -> String {
    format!("pgwarden-backup-state-{target}.json")
}

/// Logs the run, updates the failure counts, and publishes the metrics.
/// Returns what could not be published (also logged).
pub async fn publish(report: &Report) -> Vec<String> {
    log(report);
    let dest = LocalDir::new(&report.destination);
    let mut stats: Stats = dest
        .state(&state_name(&report.target))
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut problems = Vec::new();
    if let Err(f) = &report.outcome {
        *stats
            .failures
            .entry(f.reason.as_str().to_owned())
            .or_default() += 1;
        let saved = serde_json::to_vec(&stats)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                dest.set_state(&state_name(&report.target), &b)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = saved {
            problems.push(format!("failure counts not saved: {e}"));
        }
    }
    let text = render(report, &stats.failures);
    if let Some(path) = &report.metrics_file
        && let Err(e) = replace_file(path, text.as_bytes())
    {
        problems.push(format!("metrics file {}: {e}", path.display()));
    }
    if let Some(url) = &report.pushgateway
        && let Err(e) = push(url, &report.target, &text).await
    {
        problems.push(format!("Pushgateway: {e}"));
    }
    for p in &problems {
        tracing::warn!(event = "backup_metrics_failed", target = %report.target, error = %p);
    }
    problems
}

fn log(r: &Report) {
    let removed = r.removed.len();
    let lease_revoked = r.lease_revoked.map(|b| if b { "yes" } else { "no" });
    let duration_ms = super::manifest::millis(r.duration);
    match &r.outcome {
        Ok(s) => tracing::info!(
            event = "backup_finished",
            target = %r.target,
            outcome = "success",
            file = %s.manifest.file,
            database = %s.manifest.database,
            server_version = s.manifest.server_version.as_deref().unwrap_or("unknown"),
            dump_bytes = s.manifest.dump_bytes,
            encrypted_bytes = s.manifest.encrypted_bytes,
            sha256 = %s.manifest.sha256,
            duration_ms,
            lease_revoked = lease_revoked.unwrap_or("none"),
            removed,
        ),
        Err(f) => tracing::error!(
            event = "backup_finished",
            target = %r.target,
            outcome = "failure",
            reason = f.reason.as_str(),
            detail = %f.detail,
            duration_ms,
            lease_revoked = lease_revoked.unwrap_or("none"),
        ),
    }
}

fn seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A label value, escaped as the text format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics of `r`, in Prometheus' text format.
fn render(r: &Report, failures: &BTreeMap<String, u64>) -> String {
    let t = label(&r.target);
    let newest = r.inventory.as_ref().and_then(|i| i.newest.as_ref());
    let success_time = newest
        .and_then(|m| humantime::parse_rfc3339(&m.finished_at).ok())
        .map(seconds)
        .unwrap_or(0.0);
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{target=\"{t}\"}} {value}");
    };
    gauge(
        LAST_SUCCESS_TIMESTAMP,
        "When the newest complete backup finished, Unix time (0: none)",
        success_time,
    );
    gauge(
        LAST_SUCCESS_SIZE,
        "Size of the newest complete backup, encrypted, in bytes",
        newest.map(|m| m.encrypted_bytes as f64).unwrap_or(0.0),
    );
    gauge(
        LAST_SUCCESS_DURATION,
        "How long the newest complete backup took, in seconds",
        newest.map(|m| m.duration_ms as f64 / 1000.0).unwrap_or(0.0),
    );
    gauge(
        LAST_RUN_TIMESTAMP,
        "When the last backup run started, Unix time",
        seconds(r.started),
    );
    gauge(
        LAST_RUN_SUCCESS,
        "1 if the last backup run succeeded, else 0",
        if r.outcome.is_ok() { 1.0 } else { 0.0 },
    );
    gauge(
        STORED,
        "Complete backups in the destination after the last run",
        r.inventory
            .as_ref()
            .map(|i| i.complete() as f64)
            .unwrap_or(0.0),
    );
    let _ = writeln!(out, "# HELP {FAILURES} Failed backup runs, by reason");
    let _ = writeln!(out, "# TYPE {FAILURES} counter");
    for reason in Reason::ALL {
        let n = failures.get(reason.as_str()).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{FAILURES}{{target=\"{t}\",reason=\"{}\"}} {n}",
            reason.as_str()
        );
    }
    out
}

/// PUTs `text` as the group job=pgwarden_backup, target=`target`.
async fn push(url: &str, target: &str, text: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(PUSH_TIMEOUT)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let mut endpoint = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    endpoint
        .path_segments_mut()
        .map_err(|_| "not a base URL".to_owned())?
        .pop_if_empty()
        .extend(["metrics", "job", PUSH_JOB, "target", target]);
    let response = client
        .put(endpoint)
        .header("content-type", "text/plain; version=0.0.4")
        .body(text.to_owned())
        .send()
        .await
        .map_err(|e| crate::error_text::with_causes(&e))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::Failure;

    fn report(reason: Reason) -> Report {
        Report {
            target: "key\"cloak".into(),
            started: UNIX_EPOCH + Duration::from_secs(1000),
            duration: Duration::from_secs(3),
            outcome: Err(Failure::new(reason, "x")),
            lease_revoked: Some(true),
            removed: Vec::new(),
            inventory: None,
            metrics_file: None,
            pushgateway: None,
            destination: "/nonexistent".into(),
        }
    }

    #[test]
    fn every_reason_is_exported_and_labels_are_escaped() {
        let failures = BTreeMap::from([("dump".to_owned(), 2)]);
        let text = render(&report(Reason::Dump), &failures);
        assert!(
            text.contains(r#"pgwarden_backup_failures_total{target="key\"cloak",reason="dump"} 2"#),
            "{text}"
        );
        for r in Reason::ALL {
            assert!(
                text.contains(&format!("reason=\"{}\"", r.as_str())),
                "{r:?}"
            );
        }
        assert!(text.contains(r#"pgwarden_backup_last_run_success{target="key\"cloak"} 0"#));
        assert!(
            text.contains(
                r#"pgwarden_backup_last_success_timestamp_seconds{target="key\"cloak"} 0"#
            )
        );
        assert!(
            text.contains(
                r#"pgwarden_backup_last_run_timestamp_seconds{target="key\"cloak"} 1000"#
            )
        );
    }
}
