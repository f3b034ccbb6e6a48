//! What an audit found, and its two renderings: a table for people (one line
//! per check) and JSON for CI and collectors; plus the exit code.
//!
//! Everything rendered comes from findings, whose evidence holds names,
//! counts and settings only, and from the configuration (route names,
//! endpoints, source names). Nothing here ever holds a secret.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::check::{ALL, Check, Finding, Status};
use super::error::{RunError, SessionError};
use crate::config::RouteConfig;
use crate::metrics::Label;

/// The audit of one route.
#[derive(Debug)]
pub(crate) struct RouteReport {
    /// The client-facing database name (the route's name).
    pub(crate) route: String,
    /// `host:port/database` upstream.
    pub(crate) upstream: String,
    /// The route's `[credentials.*]` source.
    pub(crate) credentials: String,
    /// The role the checks ran as, and the role it acted as.
    pub(crate) connected_as: Option<String>,
    pub(crate) findings: Vec<Finding>,
    /// Why this route could not be audited (the audit could not run).
    pub(crate) error: Option<SessionError>,
}

impl RouteReport {
    pub(crate) fn new(route: &RouteConfig) -> Self {
        RouteReport {
            route: route.database.clone(),
            upstream: format!("{}/{}", route.upstream.endpoint(), route.upstream.database),
            credentials: route.credentials.clone(),
            connected_as: None,
            findings: Vec::new(),
            error: None,
        }
    }
}

/// A whole audit.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) routes: Vec<RouteReport>,
    /// Checks of pgwarden itself (allowlist, monitoring).
    pub(crate) global: Vec<Finding>,
    /// Problems that kept the audit from running at all.
    pub(crate) errors: Vec<RunError>,
}

impl Report {
    /// Every finding, routes first.
    pub(crate) fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.routes
            .iter()
            .flat_map(|r| r.findings.iter())
            .chain(&self.global)
    }

    /// Whether the audit ran everywhere it was asked to.
    pub(crate) fn complete(&self) -> bool {
        self.errors.is_empty() && self.routes.iter().all(|r| r.error.is_none())
    }

    /// 2 when the audit could not run, else 1 when a check failed, else 0.
    pub(crate) fn exit_code(&self) -> i32 {
        if !self.complete() {
            2
        } else if self.findings().any(|f| f.status == Status::Fail) {
            1
        } else {
            0
        }
    }

    /// How many findings have each status.
    pub(crate) fn counts(&self) -> BTreeMap<Status, usize> {
        let mut counts: BTreeMap<Status, usize> = Status::ALL.iter().map(|s| (*s, 0)).collect();
        for f in self.findings() {
            *counts.entry(f.status).or_default() += 1;
        }
        counts
    }

    /// Each check's worst status over every route (fail > unknown > warn > pass).
    pub(crate) fn worst(&self) -> Vec<(&'static Check, Status)> {
        ALL.iter()
            .filter_map(|c| {
                self.findings()
                    .filter(|f| f.check == *c)
                    .map(|f| f.status)
                    .max()
                    .map(|s| (*c, s))
            })
            .collect()
    }

    /// The report as JSON.
    pub(crate) fn to_json(&self) -> Value {
        let summary: serde_json::Map<String, Value> = self
            .counts()
            .into_iter()
            .map(|(s, n)| (s.as_str().to_owned(), json!(n)))
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                json!({
                    "route": r.route,
                    "upstream": r.upstream,
                    "credentials": r.credentials,
                    "connected_as": r.connected_as,
                    "error": r.error.as_ref().map(ToString::to_string),
                    "checks": r.findings.iter().map(finding_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "pgwarden_version": env!("CARGO_PKG_VERSION"),
            "exit_code": self.exit_code(),
            "summary": summary,
            "errors": self.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "routes": routes,
            "pgwarden": self.global.iter().map(finding_json).collect::<Vec<_>>(),
        })
    }

    /// The report as a table: a header per route, one line per check.
    pub(crate) fn to_table(&self) -> String {
        let mut out = String::new();
        for e in &self.errors {
            out += &format!("error: {e}\n");
        }
        for r in &self.routes {
            out += &format!(
                "route {} → {} (credentials {})",
                r.route, r.upstream, r.credentials
            );
            if let Some(who) = &r.connected_as {
                out += &format!(", audited as {who}");
            }
            out += "\n";
            if let Some(e) = &r.error {
                out += &format!("  could not audit this route: {e}\n");
            }
            lines(&mut out, &r.findings);
        }
        out += "pgwarden\n";
        lines(&mut out, &self.global);
        let counts = self.counts();
        out += &format!(
            "{} checks: {} pass, {} warn, {} unknown, {} fail; exit {}\n",
            counts.values().sum::<usize>(),
            counts[&Status::Pass],
            counts[&Status::Warn],
            counts[&Status::Unknown],
            counts[&Status::Fail],
            self.exit_code()
        );
        out
    }
}

fn finding_json(f: &Finding) -> Value {
    json!({
        "id": f.check.id,
        "item": f.check.item,
        "status": f.status.as_str(),
        "evidence": f.evidence,
        "lacks": f.lacks,
        "remedy": f.check.remedy,
    })
}

fn lines(out: &mut String, findings: &[Finding]) {
    let width = findings.iter().map(|f| f.check.id.len()).max().unwrap_or(0);
    for f in findings {
        let status = match &f.lacks {
            Some(l) => format!("unknown (lacks {l})"),
            None => f.status.as_str().to_owned(),
        };
        *out += &format!(
            "  {:width$}  §{:<2}  {status}  {}",
            f.check.id, f.check.item, f.evidence
        );
        if f.status != Status::Pass {
            *out += &format!("  → {}", f.check.remedy);
        }
        *out += "\n";
    }
}
