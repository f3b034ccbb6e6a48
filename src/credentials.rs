//! Credential sources: where each upstream connection's database login comes from.
//!
//! Every upstream connection gets a credential of its own, issued for it and
//! never reused, and held as a [`Lease`]: an id, a duration, whether it can be
//! renewed. [`lease::LeaseGuard`] renews it while the session lives and hands
//! it to the [`revoker::Revoker`] however the session ends, so no exit path
//! forgets a revocation. The guard exists from the moment the source answers:
//! [`issuance`] runs each request in a task no deadline can cancel. Passwords are `SecretString`s; lease ids are logged
//! only as a short hash; errors carry no secret.

pub mod issuance;
pub mod lease;
pub mod outcome;
pub mod postgres;
mod prefetch;
pub mod revoker;
pub mod vault;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use secrecy::SecretString;

use crate::auth::verifier::ScramKeys;

use crate::config::{CredentialsConfig, OnLeaseEnd, UpstreamConfig};
pub use issuance::Issued;
use outcome::{RequestOutcome, SourceType};

/// A database login issued for one upstream connection.
pub struct Credential {
    pub username: String,
    pub password: SecretString,
    /// The SCRAM keys of `password` for the role's verifier, when the source
    /// made that verifier itself (the built-in source): the upstream login
    /// then proves the password without PBKDF2.
    pub scram_keys: Option<Arc<ScramKeys>>,
    pub lease: Lease,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// How long a credential lives and how to renew or revoke it.
#[derive(Debug, Clone)]
pub struct Lease {
    pub id: LeaseId,
    /// The database role the credential logs in as.
    pub username: String,
    /// The upstream `host:port` it was issued for.
    pub endpoint: String,
    /// Which of its source's connections issued it, so that renewal and
    /// revocation go through the same one: the built-in source's admin
    /// connection (upstream address and TLS settings); empty for Vault.
    pub issuer: String,
    /// Lifetime granted at issue.
    pub duration: Duration,
    pub renewable: bool,
    pub issued_at: Instant,
}

/// A lease id. Shown only as a short hash, in `Debug` and `Display` alike.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LeaseId(String);

impl LeaseId {
    pub fn new(id: impl Into<String>) -> Self {
        LeaseId(id.into())
    }

    /// The id itself, for the request that renews or revokes it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// First 12 hex digits of the id's SHA-256: enough to correlate log lines.
    pub fn hash(&self) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.0.as_bytes());
        digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseId({})", self.hash())
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hash())
    }
}

/// The outcome of a successful renewal.
#[derive(Debug, Clone, Copy)]
pub struct Renewal {
    /// Time left on the lease from now.
    pub duration: Duration,
}

/// What kind of failure a credential operation met; decides retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth retrying: network, timeout, sealed, rate-limited, 5xx.
    Unavailable,
    /// The source said no (permission denied, bad request).
    Refused,
    /// The lease is unknown or expired: nothing left to renew or revoke.
    LeaseGone,
    /// The lease cannot be extended any further (max TTL reached).
    NotRenewable,
}

/// A failed credential operation. `detail` is for the log only; it never holds
/// a secret and never reaches a client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct CredentialError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl CredentialError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// Runs one credential request to a source of kind `source`, counting it in
/// `pgwarden_credential_requests_total` and timing it.
pub(crate) async fn measured(
    source: SourceType,
    request: impl std::future::Future<Output = Result<Credential, CredentialError>>,
) -> Result<Credential, CredentialError> {
    let started = Instant::now();
    let result = request.await;
    let outcome = match &result {
        Ok(_) => RequestOutcome::Success,
        Err(e) => e.request_outcome(),
    };
    outcome::REQUEST_DURATION.record(source, started.elapsed());
    outcome::REQUESTS.increment(source, outcome);
    result
}

/// A configured credential source.
pub struct CredentialSource {
    /// Its name in `[credentials.<name>]`.
    pub name: String,
    pub on_lease_end: OnLeaseEnd,
    kind: SourceKind,
    /// Told when the source proves healthy, so failed revocations retry now;
    /// and where issued leases go.
    revoker: revoker::Revoker,
    /// Credential requests in flight, which no deadline may cancel.
    issuing: issuance::Issuing,
    /// `prefetch` and `prefetch_max_age`.
    prefetch: (usize, Duration),
    /// The prefetch pools, made at start when `prefetch` > 0, by
    /// [`CredentialSource::pool_key`].
    pools: OnceLock<HashMap<String, prefetch::Pool>>,
}

enum SourceKind {
    Postgres(Box<postgres::PostgresSource>),
    Vault(Arc<vault::VaultSource>),
}

impl CredentialSource {
    /// Builds the source named `name` from its configuration. `vault` is the
    /// process's Vault connection, required by `vault` sources.
    pub fn new(
        name: &str,
        config: &CredentialsConfig,
        vault: Option<&Arc<vault::Vault>>,
        revoker: revoker::Revoker,
    ) -> Result<Arc<Self>, CredentialError> {
        let kind = match config {
            CredentialsConfig::Postgres(p) => {
                SourceKind::Postgres(Box::new(postgres::PostgresSource::new(p.clone())))
            }
            CredentialsConfig::Vault(v) => {
                let vault = vault.ok_or_else(|| {
                    CredentialError::new(
                        ErrorKind::Refused,
                        "a vault source needs a [vault] section",
                    )
                })?;
                SourceKind::Vault(Arc::new(vault::VaultSource::new(v.clone(), vault.clone())))
            }
        };
        let source = CredentialSource {
            name: name.to_owned(),
            on_lease_end: config.on_lease_end(),
            kind,
            revoker,
            issuing: issuance::Issuing::default(),
            prefetch: config.prefetch(),
            pools: OnceLock::new(),
        };
        outcome::REQUESTS.zero(source.kind());
        Ok(Arc::new(source))
    }

    /// `postgres` or `vault`: the metric label and log field.
    pub fn kind(&self) -> SourceType {
        match self.kind {
            SourceKind::Postgres(_) => SourceType::Postgres,
            SourceKind::Vault(_) => SourceType::Vault,
        }
    }

    /// Issues a fresh credential for one connection to `upstream`, guarded
    /// from the moment the source answers. The request itself runs to the end
    /// even if this future is dropped or `[vault] timeout` passes (see
    /// [`issuance`]). The credential may come from the prefetch pool.
    pub async fn issue(
        self: &Arc<Self>,
        upstream: &UpstreamConfig,
    ) -> Result<Issued, CredentialError> {
        if let Some(mut c) = self.take_prefetched(upstream) {
            c.lease.endpoint = upstream.endpoint();
            self.revoker.nudge();
            return Ok(Issued::new(c, self.clone()));
        }
        let me = self.clone();
        let target = upstream.clone();
        let request = async move { me.request(&target).await };
        let result = self
            .issuing
            .issue(self.clone(), request, self.answer_within())
            .await;
        if result.is_ok() {
            self.revoker.nudge();
        }
        result
    }

    /// A credential from the pool that serves `upstream`, if one is ready.
    fn take_prefetched(&self, upstream: &UpstreamConfig) -> Option<Credential> {
        self.pools.get()?.get(&self.pool_key(upstream))?.take()
    }

    /// Which pool serves `upstream`: Vault's credentials work for any
    /// upstream of the source (one pool); the built-in source's roles live in
    /// the cluster that created them (a pool per upstream server, TLS
    /// settings and database, as its leases' `issuer`).
    fn pool_key(&self, upstream: &UpstreamConfig) -> String {
        match &self.kind {
            SourceKind::Postgres(_) => postgres::issuer_key(upstream),
            SourceKind::Vault(_) => String::new(),
        }
    }

    /// One request to the source, measured however long it takes (a
    /// credential taken from the prefetch pool was measured when the pool
    /// fetched it).
    async fn request(
        self: &Arc<Self>,
        upstream: &UpstreamConfig,
    ) -> Result<Credential, CredentialError> {
        match &self.kind {
            SourceKind::Postgres(p) => {
                let result = measured(SourceType::Postgres, p.issue(upstream)).await;
                for lease in p.take_orphans() {
                    tracing::warn!(
                        event = "credential_abandoned",
                        lease_id_hash = %lease.id,
                        upstream_user = %lease.username,
                        "CREATE ROLE got no answer; dropping the role in case it was created"
                    );
                    self.revoker.submit(self.clone(), lease);
                }
                result
            }
            SourceKind::Vault(v) => {
                measured(SourceType::Vault, v.fetch(&upstream.endpoint())).await
            }
        }
    }

    /// How long a connection waits for its credential: `[vault] timeout` for
    /// Vault; for the built-in source, as long as its handshake deadline allows.
    fn answer_within(&self) -> Option<Duration> {
        match &self.kind {
            SourceKind::Postgres(_) => None,
            SourceKind::Vault(v) => Some(v.vault().timeout),
        }
    }

    /// Asks for `increment` more time on `lease`.
    pub async fn renew(
        &self,
        lease: &Lease,
        increment: Duration,
    ) -> Result<Renewal, CredentialError> {
        match &self.kind {
            SourceKind::Postgres(p) => p.renew(lease, increment).await,
            SourceKind::Vault(v) => v.renew(lease, increment).await,
        }
    }

    /// Ends `lease`: the credential stops working. A lease the source no
    /// longer knows counts as revoked.
    pub async fn revoke(&self, lease: &Lease) -> Result<(), CredentialError> {
        match &self.kind {
            SourceKind::Postgres(p) => p.revoke(lease).await,
            SourceKind::Vault(v) => v.revoke(lease).await,
        }
    }

    /// How much more time to ask for at each renewal.
    pub fn renew_increment(&self, lease: &Lease) -> Duration {
        match &self.kind {
            SourceKind::Postgres(p) => p.ttl(),
            SourceKind::Vault(v) => v.renew_increment(lease),
        }
    }

    /// Start-up work: removes leftovers of earlier runs (postgres), then
    /// starts the prefetch pools for `upstreams`, if configured.
    pub async fn start(self: &Arc<Self>, upstreams: &[&UpstreamConfig]) {
        self.clean_up(upstreams).await;
        self.start_prefetch(upstreams);
    }

    /// Removes leftovers of earlier runs (postgres): roles under the prefix
    /// whose validity has passed.
    pub async fn clean_up(&self, upstreams: &[&UpstreamConfig]) {
        if let SourceKind::Postgres(p) = &self.kind {
            p.remove_expired_leftovers(upstreams).await;
        }
    }

    /// One pool per [`CredentialSource::pool_key`] of `upstreams`, each
    /// filled by this source's own request (measured, never cut short) and
    /// emptied into the revoker.
    fn start_prefetch(self: &Arc<Self>, upstreams: &[&UpstreamConfig]) {
        let (size, max_age) = self.prefetch;
        if size == 0 {
            return;
        }
        let mut targets = HashMap::new();
        for upstream in upstreams {
            targets
                .entry(self.pool_key(upstream))
                .or_insert_with(|| (*upstream).clone());
        }
        let pools = targets
            .keys()
            .map(|key| (key.clone(), prefetch::Pool::new(size, max_age)))
            .collect();
        if self.pools.set(pools).is_err() {
            return;
        }
        let Some(pools) = self.pools.get() else {
            return;
        };
        for (key, target) in targets {
            let me = Arc::downgrade(self);
            let source = self.clone();
            let revoker = self.revoker.clone();
            pools[&key].start(
                move || {
                    let me = me.clone();
                    let target = target.clone();
                    async move {
                        match me.upgrade() {
                            Some(me) => me.request(&target).await,
                            None => Err(CredentialError::new(ErrorKind::Refused, "source gone")),
                        }
                    }
                },
                Box::new(move |lease| revoker.submit(source.clone(), lease)),
            );
        }
    }

    /// Shutdown: credentials held in reserve go to the revoker, and so do
    /// those of requests still in flight once they arrive, waited for until
    /// `deadline`; those still in flight then are logged.
    pub async fn stop(&self, deadline: Instant) {
        if let Some(pools) = self.pools.get() {
            for pool in pools.values() {
                pool.stop(deadline).await;
            }
        }
        let left = self.issuing.finish(deadline).await;
        if left > 0 {
            tracing::error!(
                event = "credential_requests_abandoned",
                source = %self.name,
                count = left,
                "credential requests still in flight at exit; what they issue expires at the end of its TTL"
            );
        }
    }

    /// A reload replaced or removed this source: credentials held in reserve
    /// go to the revoker now, and no more are fetched. Leases it issued are
    /// still renewed and revoked through it; [`CredentialSource::stop`] at
    /// shutdown still waits for its requests in flight.
    pub fn retire(&self) {
        if let Some(pools) = self.pools.get() {
            pools.values().for_each(prefetch::Pool::halt);
        }
    }

    /// Whether the source can issue credentials now, and if not, why.
    pub fn readiness(&self) -> Result<(), vault::NotReady> {
        match &self.kind {
            SourceKind::Postgres(_) => Ok(()),
            SourceKind::Vault(v) => v.vault().readiness(),
        }
    }
}
