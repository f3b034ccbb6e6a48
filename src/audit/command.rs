//! `pgwarden audit`: load the configuration, connect, run every check, print
//! the report, revoke what was issued. Exit 0 when nothing fails, 1 when a
//! check fails, 2 when the audit could not run.
//!
//! A DSN given to `--as` is never echoed, and one carrying a password is
//! refused. Ctrl-C or SIGTERM stops the audit and still revokes its
//! credentials.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use super::dsn::{self, DsnError};
use super::error::RunError;
use super::{Auditor, Mode, Report};
use crate::config::ConfigErrors;
use crate::state::{BuildError, State};

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// The command line of `pgwarden audit`. Its `Debug` never shows `--as`,
/// which may be a DSN someone wrote a password into.
#[derive(Clone)]
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

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("config", &self.config)
            .field("route", &self.route)
            .field("format", &self.format)
            .field("auditor", &self.auditor.as_ref().map(|_| "(given)"))
            .field("password_file", &self.password_file)
            .finish()
    }
}

/// Why the audit could not start: exit code 2, before anything was issued.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("{}: {} problem(s):{}", path.display(), errors.0.len(), list(&errors.0))]
    Config { path: PathBuf, errors: ConfigErrors },
    #[error("--route {0}: no [[routes]] entry has database = \"{0}\"")]
    UnknownRoute(String),
    #[error("--as: {0}")]
    Dsn(#[source] DsnError),
    #[error("cannot prepare the audit: {0}")]
    State(#[source] BuildError),
}

/// Each problem on a line of its own, indented.
fn list(problems: &[String]) -> String {
    problems.iter().map(|e| format!("\n  - {e}")).collect()
}

/// Runs the audit; returns the exit code.
pub async fn run(
    opts: Options,
    env: Vec<(String, String)>,
    out: &mut impl Write,
    err: &mut impl Write,
) -> i32 {
    let (state, auditor) = match prepare(&opts, env) {
        Ok(prepared) => prepared,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return 2;
        }
    };
    let mut report = audit(&state, opts.route.as_deref(), &auditor).await;
    // Every credential issued goes back now, before the report is printed.
    if let Some(e) = revoke(&state).await {
        report.errors.push(e);
    }
    let text = match opts.format {
        Format::Table => report.to_table(),
        Format::Json => format!("{:#}\n", report.to_json()),
    };
    let _ = out.write_all(text.as_bytes());
    report.exit_code()
}

/// The configuration, checked against the command line, the state built from
/// it, and whom the checks connect as.
fn prepare(
    opts: &Options,
    env: Vec<(String, String)>,
) -> Result<(Arc<State>, Auditor), SetupError> {
    let config =
        crate::config::load(&opts.config, env.clone()).map_err(|errors| SetupError::Config {
            path: opts.config.clone(),
            errors,
        })?;
    if let Some(r) = &opts.route
        && !config.routes.iter().any(|c| &c.database == r)
    {
        return Err(SetupError::UnknownRoute(r.clone()));
    }
    let account = match &opts.auditor {
        Some(s) if !config.credentials.contains_key(s) => Some(
            dsn::Account::parse(s, opts.password_file.as_deref(), &env).map_err(SetupError::Dsn)?,
        ),
        _ => None,
    };
    let state = State::build(config).map_err(SetupError::State)?;
    let auditor = match (account, &opts.auditor) {
        (Some(a), _) => Auditor::Account(a),
        (None, Some(name)) => Auditor::Source(state.snapshot().sources[name].clone()),
        (None, None) => Auditor::Route,
    };
    Ok((state, auditor))
}

/// Logs in to Vault when there is one, then audits until done or interrupted
/// (Ctrl-C, SIGTERM); an interrupted audit drops its credentials' guards, so
/// they reach the revoker.
async fn audit(state: &State, only: Option<&str>, auditor: &Auditor) -> Report {
    let mut report = Report::default();
    if let Some(vault) = &state.vault
        && let Err(e) = vault.login().await
    {
        report.errors.push(RunError::VaultLogin(e));
        return report;
    }
    tokio::select! {
        r = super::run(state, only, auditor, Mode::OnDemand) => report = r,
        _ = crate::server::wait_for_signal() => report.errors.push(RunError::Interrupted),
    }
    report
}

/// Revokes what the audit was issued, within `[shutdown] revoke_timeout`;
/// says how many credentials are left when some could not be.
async fn revoke(state: &State) -> Option<RunError> {
    let deadline = tokio::time::Instant::now() + state.snapshot().config.shutdown.revoke_timeout;
    state.revoker.hurry();
    state.stop_sources(deadline).await;
    let left = state
        .revoker
        .drain(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    (left > 0).then_some(RunError::Unrevoked(left))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_as_dsn() {
        let opts = Options {
            config: "pgwarden.toml".into(),
            route: None,
            format: Format::Table,
            auditor: Some("postgresql://auditor:s3cret@db/keycloak".into()),
            password_file: None,
        };
        let debug = format!("{opts:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("pgwarden.toml"), "{debug}");
    }
}
