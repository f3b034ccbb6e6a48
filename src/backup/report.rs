//! After every run: the `backup_finished` record and the run's metrics.
//!
//! `pgwarden backup` is a one-shot command, so its metrics must outlive it.
//! They are rendered in Prometheus' text format and written atomically to the
//! target's `metrics_file` (for node exporter's textfile collector) and/or
//! PUT to a Pushgateway. Gauges that say when the newest good backup was
//! taken are recomputed from the destination's manifests at every run, so
//! they are right even after a metrics file was lost; the failure counters
//! are kept in a small state object in the destination.
//!
//! Label values are the configured target name and the values of
//! [`Reason`], a [`Label`]: every reason is written at every run, from the
//! enum, and a count the state object holds for any other text is dropped.
//! Nothing secret is exported, and a Pushgateway URL's user and password
//! (basic auth) appear in no error, log line or `Debug`.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::destination::{Destination, LocalDir, replace_file};
use super::{Reason, Report};
use crate::metrics::{Label, name};

/// The Pushgateway job the metrics are grouped under (with the target).
const PUSH_JOB: &str = "pgwarden_backup";
/// How long a push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// What could not be published (the run itself is not failed for it).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("failure counts not saved: {0}")]
    StateEncode(#[source] serde_json::Error),
    #[error("failure counts not saved: {0}")]
    StateWrite(#[source] std::io::Error),
    #[error("metrics file {}: {source}", path.display())]
    MetricsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Pushgateway: {0}")]
    Push(#[source] PushError),
}

/// Why a push failed. `endpoint` is the URL without its user and password,
/// and reqwest's error is kept without its URL.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot build an HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("not a URL: {0}")]
    Url(#[source] <reqwest::Url as FromStr>::Err),
    #[error("{0} cannot take a path")]
    NotBase(String),
    #[error("{endpoint}: {}", crate::error_text::with_causes(source))]
    Send {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{endpoint} answered {status}")]
    Status {
        endpoint: String,
        status: reqwest::StatusCode,
    },
}

/// A target's `pushgateway` URL, which may carry a user and password for
/// basic auth: its `Debug` and every error show it without them.
#[derive(Clone)]
pub(crate) struct Pushgateway(String);

impl Pushgateway {
    pub(crate) fn new(url: &str) -> Self {
        Pushgateway(url.to_owned())
    }
}

impl fmt::Debug for Pushgateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match reqwest::Url::parse(&self.0) {
            Ok(u) => f.write_str(&shown(&u)),
            Err(_) => f.write_str("<not a URL>"),
        }
    }
}

/// `url` without its user and password.
fn shown(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// Failure counts by reason, kept between runs in the destination.
#[derive(Debug, Default)]
struct Stats {
    failures: BTreeMap<Reason, u64>,
}

/// The state object as stored: counts by label text.
#[derive(Default, Serialize, Deserialize)]
struct Stored {
    failures: BTreeMap<String, u64>,
}

impl Stats {
    fn state_name(target: &str) -> String {
        format!("pgwarden-backup-state-{target}.json")
    }

    /// The counts in `dest` (none if absent or unreadable).
    fn read(dest: &dyn Destination, target: &str) -> Stats {
        let stored: Stored = dest
            .state(&Self::state_name(target))
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let failures = stored
            .failures
            .iter()
            .filter_map(|(k, n)| Reason::from_label(k).map(|r| (r, *n)))
            .collect();
        Stats { failures }
    }

    fn count(&self, reason: Reason) -> u64 {
        self.failures.get(&reason).copied().unwrap_or(0)
    }

    fn save(&self, dest: &dyn Destination, target: &str) -> Result<(), PublishError> {
        let stored = Stored {
            failures: self
                .failures
                .iter()
                .map(|(r, n)| (r.as_str().to_owned(), *n))
                .collect(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(PublishError::StateEncode)?;
        dest.set_state(&Self::state_name(target), &bytes)
            .map_err(PublishError::StateWrite)
    }
}

/// Logs the run, updates the failure counts, and publishes the metrics.
/// Returns what could not be published (also logged).
pub async fn publish(report: &Report) -> Vec<PublishError> {
    log(report);
    let dest = LocalDir::new(&report.destination);
    let mut stats = Stats::read(&dest, &report.target);
    let mut problems = Vec::new();
    if let Err(f) = &report.outcome {
        *stats.failures.entry(f.reason()).or_default() += 1;
        if let Err(e) = stats.save(&dest, &report.target) {
            problems.push(e);
        }
    }
    let text = render(report, &stats);
    if let Some(path) = &report.metrics_file
        && let Err(source) = replace_file(path, text.as_bytes())
    {
        problems.push(PublishError::MetricsFile {
            path: path.clone(),
            source,
        });
    }
    if let Some(gateway) = &report.pushgateway
        && let Err(e) = push(gateway, &report.target, &text).await
    {
        problems.push(PublishError::Push(e));
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
            reason = f.reason().as_str(),
            detail = %f,
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

/// Metric families of one target in the text format.
struct Text {
    out: String,
    /// The `target` label, escaped.
    target: String,
}

impl Text {
    fn new(target: &str) -> Text {
        Text {
            out: String::new(),
            target: escaped(target),
        }
    }

    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        let _ = writeln!(self.out, "{name}{{target=\"{}\"}} {value}", self.target);
    }

    /// A counter with one series per value of `L` (all of them, at zero too).
    fn counter<L: Label>(&mut self, name: &str, help: &str, key: &str, count: impl Fn(L) -> u64) {
        self.family(name, "counter", help);
        for value in L::ALL {
            let _ = writeln!(
                self.out,
                "{name}{{target=\"{}\",{key}=\"{}\"}} {}",
                self.target,
                value.as_str(),
                count(*value)
            );
        }
    }
}

/// A label value, escaped as the text format requires.
fn escaped(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics of `r`, in Prometheus' text format.
fn render(r: &Report, stats: &Stats) -> String {
    let newest = r.inventory.as_ref().and_then(|i| i.newest.as_ref());
    let success_time = newest
        .and_then(|m| humantime::parse_rfc3339(&m.finished_at).ok())
        .map(seconds)
        .unwrap_or(0.0);
    let stored = r.inventory.as_ref().map(|i| i.complete()).unwrap_or(0);
    let mut text = Text::new(&r.target);
    text.gauge(
        name::BACKUP_LAST_SUCCESS_TIMESTAMP,
        "When the newest complete backup finished, Unix time (0: none)",
        success_time,
    );
    text.gauge(
        name::BACKUP_LAST_SUCCESS_SIZE,
        "Size of the newest complete backup, encrypted, in bytes",
        newest.map(|m| m.encrypted_bytes as f64).unwrap_or(0.0),
    );
    text.gauge(
        name::BACKUP_LAST_SUCCESS_DURATION,
        "How long the newest complete backup took, in seconds",
        newest.map(|m| m.duration_ms as f64 / 1000.0).unwrap_or(0.0),
    );
    text.gauge(
        name::BACKUP_LAST_RUN_TIMESTAMP,
        "When the last backup run started, Unix time",
        seconds(r.started),
    );
    text.gauge(
        name::BACKUP_LAST_RUN_SUCCESS,
        "1 if the last backup run succeeded, else 0",
        if r.outcome.is_ok() { 1.0 } else { 0.0 },
    );
    text.gauge(
        name::BACKUPS_STORED,
        "Complete backups in the destination after the last run",
        stored as f64,
    );
    text.counter(
        name::BACKUP_FAILURES,
        "Failed backup runs, by reason",
        "reason",
        |r: Reason| stats.count(r),
    );
    text.out
}

/// PUTs `text` as the group job=pgwarden_backup, target=`target`.
async fn push(gateway: &Pushgateway, target: &str, text: &str) -> Result<(), PushError> {
    let client = reqwest::Client::builder()
        .timeout(PUSH_TIMEOUT)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| PushError::Client(e.without_url()))?;
    let mut endpoint = reqwest::Url::parse(&gateway.0).map_err(PushError::Url)?;
    let base = shown(&endpoint);
    endpoint
        .path_segments_mut()
        .map_err(|_| PushError::NotBase(base))?
        .pop_if_empty()
        .extend(["metrics", "job", PUSH_JOB, "target", target]);
    let described = shown(&endpoint);
    let response = client
        .put(endpoint)
        .header("content-type", "text/plain; version=0.0.4")
        .body(text.to_owned())
        .send()
        .await
        .map_err(|e| PushError::Send {
            endpoint: described.clone(),
            source: e.without_url(),
        })?;
    match response.status() {
        s if s.is_success() => Ok(()),
        status => Err(PushError::Status {
            endpoint: described,
            status,
        }),
    }
}

#[cfg(test)]
mod tests;
