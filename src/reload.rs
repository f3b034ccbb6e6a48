//! Live reload: a new configuration, or new certificate files, for new
//! connections, while live sessions keep the snapshot they started with.
//!
//! A reload (SIGHUP, `systemctl reload`, or [`watch`] noticing that a TLS file
//! changed) builds a whole new [`Snapshot`] — every file read again, every
//! check `check-config` makes — and only then swaps it in; a configuration
//! that is invalid, or that changes what cannot change in a running process
//! (the listen address, `[admin]`, `[vault]`, the log format: see
//! [`compare::refusals`]), changes nothing, and every problem is logged at
//! once. Credential sources whose settings did not change are carried over;
//! replaced or removed ones are retired (see `State::retire`): what they hold
//! in reserve is revoked, the leases of live sessions stay theirs.
//!
//! Reloads run one at a time. What this module logs names settings, users,
//! routes and files, never a value that could be a secret.

pub(crate) mod compare;
pub(crate) mod watch;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{Config, ConfigErrors};
use crate::metrics::{self, Counter, Gauge, Label};
use crate::state::{BuildError, Snapshot, State};

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP (`systemctl reload`), or a library caller.
    Signal,
    /// The certificate watcher saw a TLS file change.
    Files,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::Files => "certificate_files",
        }
    }
}

/// `pgwarden_config_reloads_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The new snapshot serves new connections.
    Success,
    /// The configuration or a file it names is invalid: nothing changed.
    Invalid,
    /// It changes what cannot change live: nothing changed.
    Refused,
}

impl Label for Outcome {
    const ALL: &'static [Self] = &[Outcome::Success, Outcome::Invalid, Outcome::Refused];
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Invalid => "invalid",
            Outcome::Refused => "refused",
        }
    }
}

pub(crate) static RELOADS: Counter<Outcome> =
    Counter::new(metrics::name::CONFIG_RELOADS, "outcome");
static LAST_SUCCESS: Gauge = Gauge::new(metrics::name::CONFIG_LAST_RELOAD_SUCCESS);
static LAST_SUCCESSFUL: Gauge = Gauge::new(metrics::name::CONFIG_LAST_RELOAD_SUCCESSFUL);

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the configuration is invalid: {0}")]
    Invalid(ConfigErrors),
    #[error("{0}")]
    Build(BuildError),
    #[error("cannot change in a running pgwarden: {}", .0.join("; "))]
    Refused(Vec<String>),
}

impl ReloadError {
    fn outcome(&self) -> Outcome {
        match self {
            ReloadError::Invalid(_) | ReloadError::Build(_) => Outcome::Invalid,
            ReloadError::Refused(_) => Outcome::Refused,
        }
    }

    /// Every problem, one line each, as `check-config` lists them.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(errors) => errors.0.clone(),
            ReloadError::Build(e) => vec![e.to_string()],
            ReloadError::Refused(why) => why.clone(),
        }
    }
}

/// What a successful reload changed.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// One line per change, names only (see [`compare::changes`]).
    pub changes: Vec<String>,
    /// SHA-256 of the listener certificate now served, in hex.
    pub listener_fingerprint: Option<String>,
}

/// The last reload's time and whether it was applied, for status lines.
#[derive(Debug, Clone, Copy)]
pub struct LastReload {
    pub at: SystemTime,
    pub applied: bool,
    pub trigger: Trigger,
}

/// Applies reloads to a running pgwarden, one at a time.
pub(crate) struct Reloader {
    pub(crate) state: Arc<State>,
    one_at_a_time: tokio::sync::Mutex<()>,
    last: Mutex<Option<LastReload>>,
}

impl Reloader {
    pub(crate) fn new(state: Arc<State>) -> Reloader {
        LAST_SUCCESS.set(unix_now());
        LAST_SUCCESSFUL.set(1.0);
        Reloader {
            state,
            one_at_a_time: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
        }
    }

    pub(crate) fn last(&self) -> Option<LastReload> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the configuration at `path` again (with `env`'s overrides) and
    /// every file it names, and applies it.
    pub(crate) async fn reread(
        &self,
        path: &Path,
        env: Vec<(String, String)>,
    ) -> Result<Reloaded, ReloadError> {
        let _one = self.one_at_a_time.lock().await;
        let loaded = crate::config::load(path, env);
        let result = match loaded {
            Ok(config) => self.apply(Arc::new(config)).await,
            Err(errors) => Err(ReloadError::Invalid(errors)),
        };
        self.record(Trigger::Signal, result)
    }

    /// Builds the current configuration again, reading its files anew (the
    /// certificate watcher saw them change).
    pub(crate) async fn refresh(&self, trigger: Trigger) -> Result<Reloaded, ReloadError> {
        let _one = self.one_at_a_time.lock().await;
        let config = self.state.snapshot().config.clone();
        let result = self.apply(config).await;
        self.record(trigger, result)
    }

    async fn apply(&self, config: Arc<Config>) -> Result<Reloaded, ReloadError> {
        let state = &self.state;
        let old = state.snapshot();
        let refusals = compare::refusals(&old.config, &config);
        if !refusals.is_empty() {
            return Err(ReloadError::Refused(refusals));
        }
        let next = Snapshot::build(config, state.vault.as_ref(), &state.revoker, Some(&old))
            .map_err(ReloadError::Build)?;
        let next = Arc::new(next);
        let changes = compare::changes(&old, &next);
        if old.config.log.level != next.config.log.level
            && let Err(e) = crate::logging::set_level(&next.config.log.level)
        {
            tracing::warn!(event = "log_level_unchanged", error = %e);
        }
        if old.config.listen.max_connections != next.config.listen.max_connections {
            state.resize_permits(next.config.listen.max_connections);
        }
        state.replace(next.clone());
        let kept = |s: &Arc<crate::credentials::CredentialSource>, in_: &Snapshot| {
            in_.sources.values().any(|o| Arc::ptr_eq(o, s))
        };
        let retired: Vec<_> = old
            .sources
            .values()
            .filter(|s| !kept(s, &next))
            .cloned()
            .collect();
        state.retire(retired);
        let fresh: Vec<_> = next
            .sources
            .values()
            .filter(|s| !kept(s, &old))
            .cloned()
            .collect();
        if !fresh.is_empty() {
            // Leftover clean-up (built-in source) and prefetch (Vault) of the
            // new sources, without holding the reload up.
            let snapshot = next.clone();
            tokio::spawn(async move { snapshot.start_sources_among(&fresh).await });
        }
        crate::server::record_certificate_expiry(&next.config);
        Ok(Reloaded {
            changes,
            listener_fingerprint: next.listener_fingerprint.clone(),
        })
    }

    /// Counts, logs and remembers a reload's outcome.
    fn record(
        &self,
        trigger: Trigger,
        result: Result<Reloaded, ReloadError>,
    ) -> Result<Reloaded, ReloadError> {
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err(e) => e.outcome(),
        };
        RELOADS.increment(outcome);
        let applied = result.is_ok();
        LAST_SUCCESSFUL.set(if applied { 1.0 } else { 0.0 });
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(LastReload {
            at: SystemTime::now(),
            applied,
            trigger,
        });
        match &result {
            Ok(r) => {
                LAST_SUCCESS.set(unix_now());
                let changes = if r.changes.is_empty() {
                    "nothing".to_owned()
                } else {
                    r.changes.join("; ")
                };
                tracing::info!(
                    event = "config_reloaded",
                    trigger = trigger.as_str(),
                    changes = %changes,
                    listener_certificate_sha256 = r.listener_fingerprint.as_deref().unwrap_or("none"),
                    "new connections use the new configuration; live sessions keep theirs"
                );
            }
            Err(e) => {
                let problems = e.problems();
                tracing::error!(
                    event = "config_reload_failed",
                    trigger = trigger.as_str(),
                    outcome = outcome.as_str(),
                    problem_count = problems.len(),
                    problems = %problems.join("; "),
                    "nothing changed: the running configuration still serves"
                );
            }
        }
        result
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
