//! The shared state every session reads, handed down as `Arc<State>`. Nothing
//! in pgwarden is global.
//!
//! Two lifetimes live here. A [`Snapshot`] is what one configuration builds —
//! the listener's TLS (with the client CA and CRLs), the users, the routes,
//! the credential sources, the peer link to other replicas — and a
//! connection keeps the snapshot it was accepted under for its whole life.
//! The rest lives as long as the process: the cancel map, the revoker,
//! pgwarden's Vault connection, the session and handshake budgets, shutdown,
//! the session tracker. Replacing the current snapshot (`crate::reload`)
//! changes what new connections get and nothing of the live ones; the
//! credential sources a reload replaces are retired here, not dropped, since
//! live sessions' leases still renew and revoke through them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Authenticator, ScramServer, UserAuth};
use crate::cancel::CancelMap;
use crate::cancel::peer::Peering;
use crate::config::{Config, CredentialsConfig, RouteConfig, UpstreamTls};
use crate::credentials::CredentialSource;
use crate::credentials::revoker::Revoker;
use crate::credentials::vault::{SetupError, Vault};
use crate::handshake::Negotiator;
use crate::listener::HandshakeBudget;
use crate::reload::watch::WatchedFile;
use crate::route::{Route, Routes};
use crate::tls::{TlsError, Verification};
use crate::upstream::{TargetError, UpstreamTarget};
use rustls::ServerConfig;

pub struct State {
    /// What new connections are served with; see the module documentation.
    current: RwLock<Arc<Snapshot>>,
    pub(crate) cancel: Arc<CancelMap>,
    pub(crate) revoker: Revoker,
    /// pgwarden's Vault connection, when `[vault]` is configured.
    pub(crate) vault: Option<Arc<Vault>>,
    /// One permit per authenticated session, `max_connections` in all.
    pub(crate) permits: Arc<Semaphore>,
    /// Handshakes in progress: `max_handshakes`, and a cap per address.
    pub(crate) handshakes: Arc<HandshakeBudget>,
    pub(crate) shutdown: Shutdown,
    /// Every session task, so shutdown can wait for them.
    pub(crate) sessions: TaskTracker,
    pub(crate) reject_log: RateLimitedLog,
    /// Credential sources a reload replaced or removed. The leases of live
    /// sessions still hold them (renewal, revocation); shutdown stops them
    /// with the current ones, so their requests in flight are waited for.
    retired: Mutex<Vec<Arc<CredentialSource>>>,
    /// The `max_connections` that `permits` was sized for.
    max_connections: Mutex<usize>,
}

/// One configuration and what is built from it.
pub struct Snapshot {
    pub(crate) config: Arc<Config>,
    pub(crate) negotiator: Negotiator,
    pub(crate) authenticator: Authenticator,
    pub(crate) routes: Routes,
    /// Every credential source by name (for start-up work and readiness).
    pub(crate) sources: HashMap<String, Arc<CredentialSource>>,
    /// The other replicas and the peer link's TLS, with `[peering]`.
    pub(crate) peering: Option<Peering>,
    /// The TLS files this was built from, with their contents' digests taken
    /// before they were read (the certificate watcher compares them).
    pub(crate) files: Vec<WatchedFile>,
    /// SHA-256 of the listener's certificate, in hex (public; for the logs).
    pub(crate) listener_fingerprint: Option<String>,
}

/// The two stages of shutdown.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop accepting connections.
    pub stop_accepting: CancellationToken,
    /// Ask live sessions to end (at a message boundary).
    pub end_sessions: CancellationToken,
}

/// Why the shared state could not be built from a validated configuration
/// (files that changed since validation, TLS material rustls refuses).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("listener TLS: {0}")]
    ListenerTls(TlsError),
    #[error("listener certificate: {0}")]
    ListenerCertificate(std::io::Error),
    #[error("[peering]: {0}")]
    Peering(TlsError),
    #[error("listener certificate: {0}")]
    ListenerExpired(String),
    #[error("{0}")]
    Vault(#[from] SetupError),
    #[error("[credentials.{name}]: {error}")]
    Source {
        name: String,
        error: crate::credentials::CredentialError,
    },
    #[error("route {route}: {error}")]
    RouteTls { route: String, error: TlsError },
    #[error("route {route}: {error}")]
    RouteTarget { route: String, error: TargetError },
    #[error("route {route}: upstream ca_file missing")]
    RouteCaMissing { route: String },
    #[error("route {route}: unknown credentials {name}")]
    UnknownCredentials { route: String, name: String },
}

impl State {
    pub fn build(config: Config) -> Result<Arc<State>, BuildError> {
        let vault = match &config.vault {
            Some(v) => Some(Arc::new(Vault::new(v)?)),
            None => None,
        };
        let revoker = Revoker::new();
        let max_connections = config.listen.max_connections;
        let max_handshakes = config.listen.max_handshakes;
        let snapshot = Snapshot::build(Arc::new(config), vault.as_ref(), &revoker, None)?;
        Ok(Arc::new(State {
            current: RwLock::new(Arc::new(snapshot)),
            cancel: Arc::new(CancelMap::default()),
            revoker,
            vault,
            permits: Arc::new(Semaphore::new(max_connections)),
            handshakes: HandshakeBudget::new(max_handshakes),
            shutdown: Shutdown::default(),
            sessions: TaskTracker::new(),
            reject_log: RateLimitedLog::new(20),
            retired: Mutex::new(Vec::new()),
            max_connections: Mutex::new(max_connections),
        }))
    }

    /// Makes `next` the snapshot new connections are served with; returns
    /// the one it replaces (live connections keep theirs).
    pub(crate) fn replace(&self, next: Arc<Snapshot>) -> Arc<Snapshot> {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *current, next)
    }

    /// Sources no snapshot names any more: what their prefetch pools hold
    /// goes to the revoker now; they stay here so that shutdown waits for
    /// their requests in flight. Leases issued by them keep renewing and are
    /// revoked through them.
    pub(crate) fn retire(&self, sources: Vec<Arc<CredentialSource>>) {
        for source in &sources {
            source.retire();
        }
        lock(&self.retired).extend(sources);
    }

    /// Resizes the connection limit to `max`. Lowering it takes permits as
    /// sessions end, so live sessions are never cut; until then new
    /// connections over the new limit are refused (53300).
    pub(crate) fn resize_permits(&self, max: usize) {
        let mut current = lock(&self.max_connections);
        if max > *current {
            self.permits.add_permits(max - *current);
        } else if max < *current {
            let excess = *current - max;
            let forgotten = self.permits.forget_permits(excess);
            if forgotten < excess {
                let permits = self.permits.clone();
                let rest = (excess - forgotten) as u32;
                tokio::spawn(async move {
                    if let Ok(p) = permits.acquire_many_owned(rest).await {
                        p.forget();
                    }
                });
            }
        }
        *current = max;
    }

    /// The snapshot new connections are served with now.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Shutdown: the current snapshot's sources hand what they hold in
    /// reserve to the revoker, and so do their credential requests in flight,
    /// waited for until `deadline`.
    pub async fn stop_sources(&self, deadline: tokio::time::Instant) {
        self.snapshot().stop_sources(deadline).await;
        let retired = lock(&self.retired).clone();
        for source in retired {
            source.stop(deadline).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Snapshot {
    /// Builds what `config` describes, reading every file it names again.
    /// Credential sources get pgwarden's Vault connection and revoker, which
    /// outlive any one snapshot; a source of `previous` whose settings are
    /// the same is carried over rather than rebuilt (its connections and
    /// prefetch pool live on).
    pub(crate) fn build(
        config: Arc<Config>,
        vault: Option<&Arc<Vault>>,
        revoker: &Revoker,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, BuildError> {
        // Digests first: a file that changes while it is read is read again
        // at the watcher's next look.
        let files = crate::reload::watch::digests(&config);
        let (server_tls, listener_cert_pem) = listener_tls(&config)?;
        let users: HashMap<String, UserAuth> = config
            .users
            .iter()
            .map(|u| (u.name.clone(), u.auth.clone()))
            .collect();
        let authenticator =
            Authenticator::new(users, ScramServer::new(listener_cert_pem.as_deref()));
        let mut sources = HashMap::new();
        for (name, c) in &config.credentials {
            let kept = previous.and_then(|p| {
                let same = p.config.credentials.get(name) == Some(c);
                same.then(|| p.sources.get(name).cloned()).flatten()
            });
            let source = match kept {
                Some(source) => source,
                None => {
                    CredentialSource::new(name, c, vault, revoker.clone()).map_err(|error| {
                        BuildError::Source {
                            name: name.clone(),
                            error,
                        }
                    })?
                }
            };
            sources.insert(name.clone(), source);
        }
        let listener_fingerprint = listener_cert_pem
            .as_deref()
            .and_then(crate::reload::watch::certificate_fingerprint);
        let mut routes = Routes::default();
        for r in &config.routes {
            routes.add(route(&config, r, &sources)?);
        }
        let peering = match &config.peering {
            Some(p) => Some(Peering::build(p).map_err(BuildError::Peering)?),
            None => None,
        };
        Ok(Snapshot {
            peering,
            negotiator: Negotiator {
                tls: crate::handshake::acceptor(server_tls),
                require_tls: config.listen.require_tls,
            },
            authenticator,
            routes,
            sources,
            files,
            listener_fingerprint,
            config,
        })
    }

    /// Start-up work of the credential sources (leftover clean-up, prefetch).
    pub(crate) async fn start_sources(&self) {
        let all: Vec<_> = self.sources.values().cloned().collect();
        self.start_sources_among(&all).await;
    }

    /// Start-up work of `sources`, which this snapshot's routes name.
    pub(crate) async fn start_sources_among(&self, sources: &[Arc<CredentialSource>]) {
        for source in sources {
            let upstreams: Vec<_> = self
                .routes
                .all()
                .filter(|r| Arc::ptr_eq(&r.source, source))
                .map(|r| &r.upstream.config)
                .collect();
            source.start(&upstreams).await;
        }
    }

    /// The sources hand what they hold in reserve to the revoker, and so do
    /// their credential requests in flight, waited for until `deadline`.
    pub(crate) async fn stop_sources(&self, deadline: tokio::time::Instant) {
        for source in self.sources.values() {
            source.stop(deadline).await;
        }
    }
}

/// The listener's TLS configuration, and its certificate (for channel binding).
type ListenerTls = (Option<Arc<ServerConfig>>, Option<Vec<u8>>);

fn listener_tls(config: &Config) -> Result<ListenerTls, BuildError> {
    let Some(files) = &config.listen.tls else {
        return Ok((None, None));
    };
    // Client certificates (and their CRLs) are read anew with every snapshot.
    let clients = match &config.listen.client_certs {
        Some(c) => Some(
            crate::tls::mtls::client_verifier(
                &c.ca_file,
                c.crl_file.as_deref(),
                crate::tls::mtls::ClientCerts::Optional,
            )
            .map_err(BuildError::ListenerTls)?,
        ),
        None => None,
    };
    let server = crate::tls::server_config_verifying(&files.cert_file, &files.key_file, clients)
        .map_err(BuildError::ListenerTls)?;
    crate::reload::watch::not_expired(&files.cert_file).map_err(BuildError::ListenerExpired)?;
    let pem = std::fs::read(&files.cert_file).map_err(BuildError::ListenerCertificate)?;
    Ok((Some(server), Some(pem)))
}

/// One route: its upstream target (with its TLS) and its credential source.
fn route(
    config: &Config,
    r: &RouteConfig,
    sources: &HashMap<String, Arc<CredentialSource>>,
) -> Result<Route, BuildError> {
    let tls = match (r.upstream.tls, &r.upstream.ca_file) {
        (UpstreamTls::Disable, _) => None,
        (mode, Some(ca)) => {
            let v = if mode == UpstreamTls::VerifyCa {
                Verification::CaOnly
            } else {
                Verification::Full
            };
            let tls = crate::tls::upstream_config(ca, v).map_err(|error| BuildError::RouteTls {
                route: r.database.clone(),
                error,
            })?;
            Some(tls)
        }
        (_, None) => {
            return Err(BuildError::RouteCaMissing {
                route: r.database.clone(),
            });
        }
    };
    let target = UpstreamTarget::new(r.upstream.clone(), tls, config.listen.tcp_keepalive)
        .map_err(|error| BuildError::RouteTarget {
            route: r.database.clone(),
            error,
        })?;
    let source =
        sources
            .get(&r.credentials)
            .cloned()
            .ok_or_else(|| BuildError::UnknownCredentials {
                route: r.database.clone(),
                name: r.credentials.clone(),
            })?;
    if let (CredentialsConfig::Postgres(_), UpstreamTls::Disable) =
        (&config.credentials[&r.credentials], r.upstream.tls)
    {
        tracing::warn!(route = %r.database, "upstream TLS is disabled: credentials travel unencrypted to the database");
    }
    Ok(Route::new(
        r.database.clone(),
        r.users.clone(),
        Arc::new(target),
        source,
        r.session_role.clone(),
        r.allowed_parameters.clone(),
    ))
}

/// Lets through at most `per_second` records a second and counts the rest,
/// so a flood of bad connections cannot flood the log.
pub struct RateLimitedLog {
    per_second: u32,
    window: Mutex<(Instant, u32, u64)>,
}

impl RateLimitedLog {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(n)`: log this record, and say `n` were suppressed before it.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_duration_since(w.0) >= Duration::from_secs(1) {
            w.0 = now;
            w.1 = 0;
        }
        if w.1 < self.per_second {
            w.1 += 1;
            let suppressed = w.2;
            w.2 = 0;
            Some(suppressed)
        } else {
            w.2 += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_log_admits_per_second_and_reports_what_it_left_out() {
        let log = RateLimitedLog::new(3);
        let t0 = log.window.lock().unwrap().0;
        let first: Vec<_> = (0..10).map(|_| log.admit_at(t0)).collect();
        assert_eq!(
            first,
            [
                Some(0),
                Some(0),
                Some(0),
                None,
                None,
                None,
                None,
                None,
                None,
                None
            ]
        );
        // Still the same second: nothing more.
        assert_eq!(log.admit_at(t0 + Duration::from_millis(999)), None);
        // The next second: the first record says how many were left out.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(log.admit_at(t1), Some(8));
        assert_eq!(log.admit_at(t1), Some(0));
        assert_eq!(log.admit_at(t1), Some(0));
        assert_eq!(log.admit_at(t1), None);
        assert_eq!(log.admit_at(t1 + Duration::from_secs(5)), Some(1));
    }
}
