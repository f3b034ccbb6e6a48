//! A running `pgwarden run` (or `pgwarden dev`) between start-up and exit:
//! signals, reloads, and what systemd is told.
//!
//! SIGTERM and SIGINT drain and stop; SIGHUP reloads the configuration file
//! ([`Server::reload`]). Under a `Type=notify` unit, systemd hears `READY=1`
//! once the listener and admin endpoint are up and every credential source
//! can issue — or after [`READY_WAIT`], with a status saying which cannot
//! yet — then `RELOADING=1` … `READY=1` around each reload, `STOPPING=1` when
//! draining begins, a `STATUS=` line every [`STATUS_EVERY`], and `WATCHDOG=1`
//! at half of `WatchdogSec=`. Nothing said to systemd or logged here carries
//! a secret.

use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::server::Server;
use crate::systemd::Notifier;

/// The longest start-up waits for the credential sources before saying
/// `READY=1` anyway (systemd's default start timeout is 90 s).
pub const READY_WAIT: Duration = Duration::from_secs(30);

/// How often `systemctl status` gets a fresh `STATUS=` line.
pub const STATUS_EVERY: Duration = Duration::from_secs(10);

/// The signals a running pgwarden answers, installed before start-up so that
/// an early SIGHUP cannot end the process (its default action).
pub struct Signals {
    term: Signal,
    hangup: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

/// Where the configuration comes from, to read it again at SIGHUP.
pub struct ConfigSource {
    pub path: PathBuf,
}

/// Runs `server` until SIGTERM or SIGINT, reloading at SIGHUP, telling
/// systemd along the way; then shuts it down. Returns how many leases were
/// left unrevoked.
pub async fn supervise(server: Server, config: ConfigSource, mut signals: Signals) -> usize {
    let notifier = match Notifier::from_env(|k| std::env::var(k).ok()) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(event = "sd_notify_unavailable", error = %e);
            None
        }
    };
    let watchdog = crate::systemd::watchdog_interval(|k| std::env::var(k).ok());
    if let Some(n) = &notifier {
        let status = wait_until_ready(&server).await;
        n.ready(&status);
    }
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    loop {
        tokio::select! {
            _ = signals.term.recv() => {
                tracing::info!(event = "signal", signal = "SIGTERM");
                break;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!(event = "signal", signal = "SIGINT");
                break;
            }
            _ = signals.hangup.recv() => {
                tracing::info!(event = "signal", signal = "SIGHUP");
                if let Some(n) = &notifier {
                    n.reloading();
                }
                let _ = server.reload(&config.path, std::env::vars()).await;
                if let Some(n) = &notifier {
                    n.ready(&status(&server));
                }
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                if let Some(n) = &notifier {
                    n.watchdog();
                }
            }
            _ = status_tick.tick() => {
                if let Some(n) = &notifier {
                    n.status(&status(&server));
                }
            }
        }
    }
    if let Some(n) = &notifier {
        let load = server.load();
        n.stopping(&format!(
            "draining {} session(s), then revoking {} lease(s)",
            load.sessions, load.leases
        ));
    }
    server.shutdown().await
}

/// Waits up to [`READY_WAIT`] for every readiness check to pass; the status
/// to report then.
async fn wait_until_ready(server: &Server) -> String {
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    loop {
        match server.readiness() {
            Ok(()) => return status(server),
            Err(failing) if tokio::time::Instant::now() >= deadline => {
                let why = failing.join("; ");
                tracing::warn!(event = "ready_without_sources", not_ready = %why, "telling systemd pgwarden is up although not everything is ready");
                return format!("serving, but not ready: {why}");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The `STATUS=` line: what pgwarden holds, and the last reload.
fn status(server: &Server) -> String {
    let load = server.load();
    let mut line = format!(
        "{} session(s), {} lease(s), {} revocation(s) pending",
        load.sessions, load.leases, load.pending_revocations
    );
    if let Some(last) = server.last_reload() {
        let at = humantime::format_rfc3339_seconds(last.at);
        line.push_str(&format!(
            "; last reload {at} {}",
            if last.applied {
                "applied"
            } else {
                "FAILED (old configuration serves; see the log)"
            }
        ));
    }
    line
}
