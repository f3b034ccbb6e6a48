//! `[audit] interval`: the same checks inside `pgwarden run`, in the
//! background, exported as `pgwarden_audit_check{check,item,status}` (1 for
//! the status each check had in the last run, 0 for the others) and
//! `pgwarden_audit_last_run_timestamp_seconds`, and logged.
//!
//! Label values are the catalogue's ids and items and the four statuses, so
//! the series are bounded and exported (at 0) from the start. A run never
//! affects `/readyz`. The task ends as soon as shutdown begins, and the
//! server waits for it to end before the revoker drains, so the credential
//! of a run in progress is revoked with the rest.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;

use super::check::{ALL, Check, Status};
use super::{Auditor, Mode, Report};
use crate::metrics::{self, AUDIT_INTERVAL, AUDIT_LAST_RUN, StateSet, Zeroed};
use crate::state::State;

/// `pgwarden_audit_check{check,item,status}`: each check's status in the last run.
static CHECKS: StateSet<Check, Status> = StateSet::new(metrics::name::AUDIT_CHECK, "status", ALL);

/// Starts the background audit when `[audit]` is configured.
pub(crate) fn spawn(state: Arc<State>) -> Option<JoinHandle<()>> {
    let snapshot = state.snapshot();
    let audit = snapshot.config.audit.clone()?;
    CHECKS.zero();
    AUDIT_INTERVAL.set(audit.interval.as_secs_f64());
    AUDIT_LAST_RUN.set(0.0);
    let auditor = match &audit.credentials {
        Some(name) => match snapshot.sources.get(name) {
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

/// Exports a run's results and logs what did not pass.
pub(crate) fn export(report: &Report) {
    for (check, status) in report.worst() {
        CHECKS.set(check, Some(status));
    }
    if report.complete() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        AUDIT_LAST_RUN.set(now);
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
