//! A running pgwarden: listener, background work, and orderly shutdown.
//!
//! Shutdown (SIGTERM or SIGINT in `pgwarden run`) goes in stages: stop
//! accepting; let live sessions finish for up to `[shutdown] grace`; then ask
//! the rest to end at a message boundary (FATAL 57P01), cutting any that cannot
//! within a few seconds; finally revoke every outstanding lease — those of
//! sessions, of the prefetch pool, and of credential requests still in flight,
//! once they arrive — all bounded by `[shutdown] revoke_timeout`. Tests drive
//! the same code in-process.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::reload::{LastReload, ReloadError, Reloaded, Reloader};
use crate::state::{BuildError, State};

/// The families with fixed labels, exported at zero from start-up; their
/// values come from the label enums themselves.
static METRICS_FROM_ZERO: [&dyn crate::metrics::Zeroed; 8] = [
    &crate::session::REJECTIONS,
    &crate::session::SESSIONS_ENDED,
    &crate::upstream::CONNECT_FAILURES,
    &crate::relay::RELAY_BYTES,
    &crate::cancel::CANCELS,
    &crate::credentials::outcome::RENEWALS,
    &crate::credentials::outcome::REVOCATIONS,
    &crate::reload::RELOADS,
];

pub struct Server {
    /// The address the proxy listens on (the real port when 0 was asked).
    pub addr: SocketAddr,
    /// The admin listener's address, when `[admin]` is configured.
    pub admin_addr: Option<SocketAddr>,
    /// The peer listener's address (forwarded cancels), with `[peering]`.
    pub peer_addr: Option<SocketAddr>,
    pub(crate) state: Arc<State>,
    accept: JoinHandle<()>,
    /// Token upkeep and health probes; stopped at shutdown.
    background: Vec<JoinHandle<()>>,
    /// The background audit (`[audit]`), ended before the revoker drains so
    /// the credentials of a run in progress are revoked with the rest.
    audit: Option<JoinHandle<()>>,
    /// Applies reloads (SIGHUP, the certificate watcher), one at a time.
    reloader: Arc<Reloader>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Build(#[from] BuildError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Server {
    /// Builds the state, binds the listener and starts accepting.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let metrics_handle = crate::metrics::install(&METRICS_FROM_ZERO);
        let addr = config.listen.address;
        let state = State::build(config)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let mut background = Vec::new();
        if let Some(vault) = &state.vault {
            // Log in now (failures are retried in the background), keep the
            // token alive, and keep readiness current.
            if let Err(e) = vault.login().await {
                tracing::error!(event = "vault_login_failed", error = %e, "cannot log in to Vault yet; new connections will fail until it works");
            }
            let v = vault.clone();
            background.push(tokio::spawn(async move { v.maintain_token().await }));
            let v = vault.clone();
            let every = state
                .snapshot()
                .config
                .vault
                .as_ref()
                .map(|c| c.health_check_interval)
                .unwrap_or_default();
            background.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    v.check_health().await;
                }
            }));
        }
        state.snapshot().start_sources().await;
        record_certificate_expiry(&state.snapshot().config);
        let admin_addr = match &state.snapshot().config.admin {
            Some(admin) => {
                let (bound, task) =
                    crate::admin::start(admin.clone(), state.clone(), metrics_handle)
                        .await
                        .map_err(|source| StartError::Bind {
                            addr: admin.address,
                            source,
                        })?;
                background.push(task);
                tracing::info!(event = "admin_listening", address = %bound);
                Some(bound)
            }
            None => None,
        };
        let peer_addr = match &state.snapshot().config.peering {
            Some(peering) => {
                let (bound, task) = start_peer_listener(peering.address, state.clone()).await?;
                // Runs through the drain (sessions still live can be
                // cancelled through other replicas); stopped with the rest.
                background.push(task);
                Some(bound)
            }
            None => None,
        };
        let audit = crate::audit::continuous::spawn(state.clone());
        let reloader = Arc::new(Reloader::new(state.clone()));
        background.push(tokio::spawn(crate::reload::watch::run(
            reloader.clone(),
            state.shutdown.stop_accepting.clone(),
        )));
        let accept = tokio::spawn(crate::listener::serve(state.clone(), listener));
        let snapshot = state.snapshot();
        tracing::info!(event = "listening", address = %addr, tls = snapshot.negotiator.tls.is_some(), require_tls = snapshot.config.listen.require_tls);
        Ok(Server {
            addr,
            admin_addr,
            peer_addr,
            state,
            accept,
            background,
            audit,
            reloader,
        })
    }

    /// Reads the configuration file at `path` again (with `env`'s
    /// `PGWARDEN_*` overrides), and every file it names, and applies it to
    /// new connections; live sessions keep the configuration they started
    /// with. What SIGHUP does. On error nothing changed, and every problem
    /// was logged (`config_reload_failed`).
    pub async fn reload(
        &self,
        path: &std::path::Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Reloaded, ReloadError> {
        self.reloader.reread(path, env.into_iter().collect()).await
    }

    /// Reads the TLS files of the running configuration again and applies
    /// them, as the certificate watcher does when it sees them change.
    pub async fn reload_certificates(&self) -> Result<Reloaded, ReloadError> {
        self.reloader.refresh(crate::reload::Trigger::Files).await
    }

    /// The last reload, if there was one since start-up.
    pub fn last_reload(&self) -> Option<LastReload> {
        self.reloader.last()
    }

    /// Whether pgwarden can serve now: the listener accepts and every
    /// credential source can issue (what `/readyz` answers); if not, the
    /// checks that fail.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let (ready, body) = crate::admin::readiness(&self.state);
        if ready {
            return Ok(());
        }
        let failing = body["checks"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| *v != "ok")
            .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("not ready")))
            .collect();
        Err(failing)
    }

    /// Sessions (connections being served), leases held, and revocations
    /// not yet done, now.
    pub fn load(&self) -> Load {
        Load {
            connections: self.state.sessions.len(),
            sessions: crate::metrics::SESSIONS_ACTIVE.get().max(0) as usize,
            leases: crate::metrics::LEASES_ACTIVE.get().max(0) as usize,
            pending_revocations: self.state.revoker.pending(),
        }
    }

    /// Leases handed over for revocation and not yet revoked.
    pub fn pending_revocations(&self) -> usize {
        self.state.revoker.pending()
    }

    /// Shuts down as described above. Returns how many leases were left unrevoked.
    pub async fn shutdown(self) -> usize {
        let state = &self.state;
        let grace = state.snapshot().config.shutdown.grace;
        state.shutdown.stop_accepting.cancel();
        let _ = self.accept.await;
        if let Some(audit) = self.audit {
            // Once this returns, the run's future is dropped and its
            // credentials' guards have handed them to the revoker.
            audit.abort();
            let _ = audit.await;
        }
        state.sessions.close();
        let live = state.sessions.len();
        if live > 0 {
            tracing::info!(
                event = "shutdown_draining",
                sessions = live,
                grace_s = grace.as_secs()
            );
            if tokio::time::timeout(grace, state.sessions.wait())
                .await
                .is_err()
            {
                tracing::info!(
                    event = "shutdown_ending_sessions",
                    sessions = state.sessions.len()
                );
                state.shutdown.end_sessions.cancel();
                state.sessions.wait().await;
            }
        }
        // One bound for the rest: credential requests still in flight end
        // (what they issue goes to the revoker), then the revoker drains.
        // Retries of failed revocations stop waiting out their backoff now and
        // run while requests in flight are waited for; then the revoker drains,
        // all within the one bound.
        let revoke_timeout = state.snapshot().config.shutdown.revoke_timeout;
        let deadline = tokio::time::Instant::now() + revoke_timeout;
        state.revoker.hurry();
        state.stop_sources(deadline).await;
        let left = state
            .revoker
            .drain(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await;
        for task in &self.background {
            task.abort();
        }
        tracing::info!(event = "shutdown_complete", unrevoked_leases = left);
        left
    }
}

/// Binds `[peering] address` and serves forwarded cancels there.
async fn start_peer_listener(
    addr: SocketAddr,
    state: Arc<State>,
) -> Result<(SocketAddr, JoinHandle<()>), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    tracing::info!(event = "peer_listening", address = %bound);
    let task = tokio::spawn(crate::cancel::peer_listener::serve(state, listener));
    Ok((bound, task))
}

/// What a running pgwarden holds now (for systemd's `STATUS=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Client connections being served, from accept to close.
    pub connections: usize,
    /// Sessions relaying.
    pub sessions: usize,
    /// Credential leases held (by sessions and prefetch pools).
    pub leases: usize,
    /// Leases handed to the revoker and not yet revoked.
    pub pending_revocations: usize,
}

/// `pgwarden_tls_certificate_expiry_timestamp_seconds` for every certificate
/// pgwarden serves or trusts: the listener's, each upstream CA, Vault's CA.
pub(crate) fn record_certificate_expiry(config: &Config) {
    let mut certs: Vec<(String, &std::path::Path)> = Vec::new();
    if let Some(tls) = &config.listen.tls {
        certs.push(("listener".into(), &tls.cert_file));
    }
    for r in &config.routes {
        if let Some(ca) = &r.upstream.ca_file {
            certs.push((format!("upstream_ca:{}", r.database), ca));
        }
    }
    if let Some(ca) = config.vault.as_ref().and_then(|v| v.ca_file.as_ref()) {
        certs.push(("vault_ca".into(), ca));
    }
    if let Some(c) = &config.listen.client_certs {
        certs.push(("client_ca".into(), &c.ca_file));
    }
    if let Some(p) = &config.peering {
        certs.push(("peer".into(), &p.tls.cert_file));
        certs.push(("peer_ca".into(), &p.ca_file));
    }
    for (label, path) in certs {
        match crate::tls::certificate_not_after(path) {
            Ok(t) => crate::metrics::TLS_CERTIFICATE_EXPIRY.set(&label, t as f64),
            Err(e) => {
                tracing::warn!(certificate = %label, error = %e, "cannot read certificate expiry")
            }
        }
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop pgwarden");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(event = "signal", signal = "SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!(event = "signal", signal = "SIGINT"),
    }
}
