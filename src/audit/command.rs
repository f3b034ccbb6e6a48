//! `pgwarden audit`: load the configuration, connect, run every check, print
//! the report, revoke what was issued. Exit 0 when nothing fails, 1 when a
//! check fails, 2 when the audit could not run.
//!
//! A DSN given to `--as` is never echoed, and one carrying a password is
//! refused. Ctrl-C or SIGTERM stops the audit and still revokes its
//! credentials.

use std::io::Write;
use std::path::PathBuf;

use super::error::RunError;
use super::{Auditor, Mode, Report, dsn};
use crate::state::State;

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// The command line of `pgwarden audit`.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// Only the route for this database name.
    pub route: Option<String>,
    pub format: Format,
    /// A `[credentials.*]` source name, or a DSN.
    pub auditor: Option<String>,
    /// Where the `--as` DSN's password is.
    pub password_file: Option<PathBuf>,
}

/// Runs the audit; returns the exit code.
pub async fn run(
    opts: Options,
    env: Vec<(String, String)>,
    out: &mut impl Write,
    err: &mut impl Write,
) -> i32 {
    let config = match crate::config::load(&opts.config, env.clone()) {
        Ok(c) => c,
        Err(errors) => {
            let _ = writeln!(
                err,
                "{}: {} problem(s):",
                opts.config.display(),
                errors.0.len()
            );
            for e in &errors.0 {
                let _ = writeln!(err, "  - {e}");
            }
            return 2;
        }
    };
    if let Some(r) = &opts.route
        && !config.routes.iter().any(|c| &c.database == r)
    {
        let _ = writeln!(
            err,
            "--route {r}: no [[routes]] entry has database = \"{r}\""
        );
        return 2;
    }
    let auditor_spec = opts.auditor.clone();
    let account = match &auditor_spec {
        Some(s) if !config.credentials.contains_key(s) => {
            match dsn::Account::parse(s, opts.password_file.as_deref(), &env) {
                Ok(a) => Some(a),
                Err(e) => {
                    let _ = writeln!(err, "--as: {e}");
                    return 2;
                }
            }
        }
        _ => None,
    };
    let revoke_timeout = config.shutdown.revoke_timeout;
    let state = match State::build(config) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "cannot prepare the audit: {e}");
            return 2;
        }
    };
    let auditor = match (account, &auditor_spec) {
        (Some(a), _) => Auditor::Account(a),
        (None, Some(name)) => Auditor::Source(state.sources[name].clone()),
        (None, None) => Auditor::Route,
    };
    let mut report = Report::default();
    if let Some(vault) = &state.vault
        && let Err(e) = vault.login().await
    {
        report.errors.push(RunError::VaultLogin(e));
    }
    if report.errors.is_empty() {
        tokio::select! {
            r = super::run(&state, opts.route.as_deref(), &auditor, Mode::OnDemand) => report = r,
            _ = crate::server::wait_for_signal() => report.errors.push(RunError::Interrupted),
        }
    }
    // Every credential issued goes back now, before the report is printed.
    let deadline = tokio::time::Instant::now() + revoke_timeout;
    state.revoker.hurry();
    state.stop_sources(deadline).await;
    let left = state
        .revoker
        .drain(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    if left > 0 {
        report.errors.push(RunError::Unrevoked(left));
    }
    let text = match opts.format {
        Format::Table => report.to_table(),
        Format::Json => format!("{:#}\n", report.to_json()),
    };
    let _ = out.write_all(text.as_bytes());
    report.exit_code()
}
