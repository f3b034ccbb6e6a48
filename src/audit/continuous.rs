//! `[audit] interval`: the same checks inside `pgwarden run`, in the
//! background, exported as `pgwarden_audit_check{check,item,status}` (1 for
//! the status each check had in the last run, 0 for the others) and
//! `pgwarden_audit_last_run_timestamp_seconds`, and logged.
//!
//! Label values are the catalogue's ids and items and the four statuses, so
//! the series are bounded and exported (at 0) from the start. A run never
//! affects `/readyz`. The task ends as soon as shutdown begins, so the
//! credential of a run in progress reaches the revoker before it drains.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;

use super::check::{ALL, Check, Status};
use super::{Auditor, Mode, Report};
use crate::metrics::name::{AUDIT_CHECK, AUDIT_INTERVAL, AUDIT_LAST_RUN};
use crate::state::State;

/// Starts the background audit when `[audit]` is configured.
pub fn spawn(state: Arc<State>) -> Option<JoinHandle<()>> {
    let audit = state.config.audit.clone()?;
    for check in ALL {
        set(check, None);
    }
    ::metrics::gauge!(AUDIT_INTERVAL).set(audit.interval.as_secs_f64());
    ::metrics::gauge!(AUDIT_LAST_RUN).set(0.0);
    let auditor = match &audit.credentials {
        Some(name) => match state.sources.get(name) {
            Some(s) => Auditor::Source(s.clone()),
            None => Auditor::Route,
        },
        None => Auditor::Route,
    };
    let stop = state.shutdown.stop_accepting.clone();
    Some(tokio::spawn(async move {
        loop {
            tokio::select! {
                report = super::run(&state, None, &auditor, Mode::Running) => export(&report),
                _ = stop.cancelled() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(audit.interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    }))
}

/// Sets `check`'s gauges: 1 for `status`, 0 for the others (all 0 for `None`).
fn set(check: &'static Check, status: Option<Status>) {
    for s in Status::ALL {
        ::metrics::gauge!(AUDIT_CHECK, "check" => check.id, "item" => item_label(check.item), "status" => s.as_str())
            .set(if Some(s) == status { 1.0 } else { 0.0 });
    }
}

/// The `item` label: the checklist item's number.
fn item_label(item: u8) -> &'static str {
    const ITEMS: [&str; 11] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
    ITEMS.get(item as usize).copied().unwrap_or("0")
}

/// Exports a run's results and logs what did not pass.
pub fn export(report: &Report) {
    for (check, status) in report.worst() {
        set(check, Some(status));
    }
    if report.complete() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        ::metrics::gauge!(AUDIT_LAST_RUN).set(now);
    }
    for e in &report.errors {
        tracing::warn!(event = "audit_incomplete", error = %e, "the audit could not check everything");
    }
    for (route, e) in report
        .routes
        .iter()
        .filter_map(|r| Some((&r.route, r.error.as_ref()?)))
    {
        tracing::warn!(event = "audit_incomplete", route = %route, error = %e, "the audit could not check everything");
    }
    for r in &report.routes {
        for f in r.findings.iter().filter(|f| f.status == Status::Fail) {
            tracing::warn!(event = "audit_check_failed", route = %r.route, check = f.check.id, item = f.check.item, evidence = %f.evidence, remedy = f.check.remedy);
        }
    }
    for f in report.global.iter().filter(|f| f.status == Status::Fail) {
        tracing::warn!(event = "audit_check_failed", check = f.check.id, item = f.check.item, evidence = %f.evidence, remedy = f.check.remedy);
    }
    let counts = report.counts();
    tracing::info!(
        event = "audit_run",
        pass = counts[&Status::Pass],
        warn = counts[&Status::Warn],
        unknown = counts[&Status::Unknown],
        fail = counts[&Status::Fail],
        complete = report.complete()
    );
}
