//! `pgwarden audit`: the security checklist pgwarden was built from, checked
//! against the live database — on demand (`pgwarden audit`) and continuously
//! (`[audit] interval` in `pgwarden run`).
//!
//! For each route the audit connects the way pgwarden does: a fresh
//! credential from the route's own source (the *probe*, which shows what
//! Keycloak's sessions get), logged in through the route's TLS and SCRAM
//! rules; or, for checks that need more privilege, an auditor account (`--as`
//! a DSN or another credential source). Every credential it is issued is
//! revoked when the route's audit ends, however it ends.
//!
//! Layout: `check` (the catalogue, statuses, findings), `connection` (the
//! read-only session), `context` (what checks read, failures as `unknown`),
//! `items/` (one file per checklist item), `dsn` (`--as`), `error` (why a
//! route or a run fell short), `report` (table, JSON, exit code),
//! `continuous` (the background run and its metrics),
//! `command` (the CLI), `statement_logging` (a rule shared with the built-in
//! source).
//!
//! This module must never print, log or export a password, key, token or a
//! value read from a table; never change the database (its sessions are
//! read-only); and never keep a credential past the audit.

mod check;
pub mod command;
mod connection;
mod context;
pub(crate) mod continuous;
mod dsn;
mod error;
mod items;
mod report;
pub(crate) mod statement_logging;

use std::sync::Arc;

use secrecy::ExposeSecret;

pub use check::{Check, Finding, Status};
use connection::Session;
use context::{Ctx, Probe};
use error::{IssueError, ProbeError, SessionError};
pub(crate) use report::{Report, RouteReport};

use crate::config::RouteConfig;
use crate::credentials::lease::LeaseGuard;
use crate::credentials::{Credential, CredentialSource, Issued};
use crate::route::Route;
use crate::state::{Snapshot, State};

/// Where the audit runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `pgwarden audit`: pgwarden's admin listener is asked over HTTP.
    OnDemand,
    /// Inside `pgwarden run`.
    Running,
}

/// Whom the checks connect as.
pub(crate) enum Auditor {
    /// Each route's own credential (the probe's session).
    Route,
    /// A credential from another `[credentials.*]` source.
    Source(Arc<CredentialSource>),
    /// A fixed account (`--as` a DSN).
    Account(dsn::Account),
}

/// Audits every route (or only `only`) of `state`'s configuration.
pub(crate) async fn run(
    state: &State,
    only: Option<&str>,
    auditor: &Auditor,
    mode: Mode,
) -> Report {
    let mut report = Report::default();
    let snapshot = state.snapshot();
    for route in &snapshot.config.routes {
        if only.is_some_and(|o| o != route.database) {
            continue;
        }
        report
            .routes
            .push(audit_route(&snapshot, route, auditor).await);
    }
    report
        .global
        .push(items::access::allowlist(&snapshot.config));
    items::monitoring::run(&snapshot.config, mode, &mut report.global).await;
    report
}

/// The checks that read pgwarden's configuration alone, for every route:
/// what `pgwarden audit` concludes before it connects anywhere.
pub fn configuration_findings(config: &crate::config::Config) -> Vec<Finding> {
    let mut out = Vec::new();
    for route in &config.routes {
        out.push(items::tls::upstream_verify(route, config));
        if let Some(source) = config.credentials.get(&route.credentials) {
            out.push(items::rotation::max_ttl(source));
            out.push(items::rotation::on_lease_end(source));
        }
    }
    out.push(items::access::allowlist(config));
    out.push(items::monitoring::admin_listener(config));
    out.push(items::monitoring::continuous(config));
    out
}

async fn audit_route(snapshot: &Snapshot, config: &RouteConfig, auditor: &Auditor) -> RouteReport {
    let mut report = RouteReport::new(config);
    let source_config = &snapshot.config.credentials[&config.credentials];
    let first_user = config.users.first().map(String::as_str).unwrap_or("*");
    let Ok(route) = snapshot.routes.lookup(&config.database, first_user) else {
        report.error = Some(SessionError::NotRouted);
        return report;
    };
    // Held until this route's audit ends: dropping them revokes the credentials.
    let mut leases: Vec<LeaseGuard> = Vec::new();
    let (probe, db) = connect(auditor, &route, snapshot, &mut leases).await;
    if let Ok(s) = &db {
        report.connected_as = Some(format!("{} acting as {}", s.login, s.acting));
    }
    let mut ctx = Ctx::new(&snapshot.config, config, source_config, db, probe);
    let out = &mut report.findings;
    items::tls::run(&mut ctx, out).await;
    items::account::run(&mut ctx, out).await;
    items::passwords::run(&mut ctx, out).await;
    items::rotation::run(&mut ctx, out).await;
    items::access::run(&mut ctx, out).await;
    items::sensitive::run(&mut ctx, out).await;
    items::logging::run(&mut ctx, out).await;
    match ctx.db {
        Ok(db) => db.close().await,
        Err(e) => report.error = Some(e),
    }
    drop(leases);
    report
}

/// The probe, and the session the checks run in: the probe's own when the
/// audit runs as the route, else the auditor's (the probe's is closed).
async fn connect(
    auditor: &Auditor,
    route: &Arc<Route>,
    snapshot: &Snapshot,
    leases: &mut Vec<LeaseGuard>,
) -> (
    Result<Probe, Arc<ProbeError>>,
    Result<Session, SessionError>,
) {
    let probed = probe(route, leases).await;
    let closed = async |probed: Result<(Probe, Session), ProbeError>| match probed {
        Ok((probe, session)) => {
            session.close().await;
            Ok(probe)
        }
        Err(e) => Err(Arc::new(e)),
    };
    match (auditor, probed) {
        (Auditor::Route, Ok((probe, session))) => (Ok(probe), Ok(session)),
        (Auditor::Route, Err(e)) => {
            let e = Arc::new(e);
            (Err(e.clone()), Err(SessionError::Probe(e)))
        }
        (Auditor::Source(source), probed) => {
            let probe = closed(probed).await;
            (probe, auditor_session(source, route, leases).await)
        }
        (Auditor::Account(account), probed) => {
            let probe = closed(probed).await;
            (probe, account_session(account, route, snapshot).await)
        }
    }
}

/// A credential from `source` for `route`'s database, its lease kept in `leases`.
async fn issue(
    source: &Arc<CredentialSource>,
    route: &Route,
    leases: &mut Vec<LeaseGuard>,
) -> Result<Credential, IssueError> {
    let Issued { credential, lease } =
        source
            .issue(&route.upstream.config)
            .await
            .map_err(|error| IssueError {
                source_name: source.name.clone(),
                error,
            })?;
    leases.push(lease);
    Ok(credential)
}

/// A credential from the route's own source, and a session logged in with it
/// as a pgwarden session would be.
async fn probe(
    route: &Arc<Route>,
    leases: &mut Vec<LeaseGuard>,
) -> Result<(Probe, Session), ProbeError> {
    let credential = issue(&route.source, route, leases).await?;
    let password = credential.password.expose_secret();
    let (password_len, password_classes) = (
        password.chars().count(),
        items::passwords::classes(password),
    );
    let (lease_duration, renewable) = (credential.lease.duration, credential.lease.renewable);
    let session = Session::open(&route.upstream, &credential, route.session_role.as_deref())
        .await
        .map_err(ProbeError::Login)?;
    drop(credential);
    let probe = Probe {
        login: session.login.clone(),
        acting: session.acting.clone(),
        password_len,
        password_classes,
        lease_duration,
        renewable,
        tls: session.tls.clone(),
    };
    Ok((probe, session))
}

/// A session with a credential from the auditor's source.
async fn auditor_session(
    source: &Arc<CredentialSource>,
    route: &Route,
    leases: &mut Vec<LeaseGuard>,
) -> Result<Session, SessionError> {
    let credential = issue(source, route, leases).await?;
    Session::open(&route.upstream, &credential, None)
        .await
        .map_err(SessionError::AuditorLogin)
}

/// A session as the `--as` account.
async fn account_session(
    account: &dsn::Account,
    route: &Route,
    snapshot: &Snapshot,
) -> Result<Session, SessionError> {
    let (target, credential, who) = account
        .target(&route.upstream.config, snapshot.config.listen.tcp_keepalive)
        .map_err(SessionError::Account)?;
    Session::open(&target, &credential, None)
        .await
        .map_err(|source| SessionError::AccountLogin { who, source })
}
