//! pgwarden's connection to Vault: its own token, and the raw lease requests.
//!
//! Login, token renewal, lookup and health go through vaultrs. Issuing
//! credentials and renewing/revoking leases are raw requests on the same HTTP
//! client (same TLS, same namespace): vaultrs drops `lease_id` from
//! `database/creds` and has no lease API. That client is pgwarden's own
//! (`transport::http_client`: no redirects, no proxy), put in place of the one
//! vaultrs builds. The token is logged in at start,
//! renewed at ~2/3 of its TTL, and logged in again when renewal fails, the
//! token is revoked, or it nears its max TTL. Every setting vaultrs would
//! otherwise read from the environment (VAULT_SKIP_VERIFY among them) is set
//! explicitly. No token, secret id or JWT ever reaches a log line or an error.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::RwLock;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};

use crate::config::{VaultAuthConfig, VaultConfig};
use crate::credentials::{CredentialError, ErrorKind};
use crate::metrics::{self, Label};

pub use super::transport::SetupError;
use super::transport::{
    REDIRECT_HINT, classify_client_error, error_text, http_client, identity, read_secret,
    without_url,
};

/// What became of an attempt to keep pgwarden's own token: the `outcome` of
/// `pgwarden_vault_token_renewals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOutcome {
    Renewed,
    RenewalFailure,
    Login,
    LoginFailure,
}

impl Label for TokenOutcome {
    const ALL: &'static [Self] = &[
        TokenOutcome::Renewed,
        TokenOutcome::RenewalFailure,
        TokenOutcome::Login,
        TokenOutcome::LoginFailure,
    ];

    fn as_str(self) -> &'static str {
        match self {
            TokenOutcome::Renewed => "renewed",
            TokenOutcome::RenewalFailure => "renewal_failure",
            TokenOutcome::Login => "login",
            TokenOutcome::LoginFailure => "login_failure",
        }
    }
}

static TOKEN_RENEWALS: metrics::Counter<TokenOutcome> =
    metrics::Counter::new(metrics::name::VAULT_TOKEN_RENEWALS, "outcome");

/// Retries of a failed login or token renewal wait at most this long.
const MAX_TOKEN_RETRY: Duration = Duration::from_secs(30);

/// pgwarden's current Vault token.
struct Token {
    value: SecretString,
    /// TTL granted at the last login or renewal; zero means it never expires.
    ttl: Duration,
    /// TTL granted at login, to tell a capped renewal.
    login_ttl: Duration,
    renewable: bool,
    since: Instant,
}

/// Why a credential source cannot issue credentials now (for `/readyz`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct NotReady(pub String);

/// A response envelope, as far as pgwarden reads it.
#[derive(Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub lease_id: String,
    #[serde(default)]
    pub lease_duration: u64,
    #[serde(default)]
    pub renewable: bool,
    pub data: Option<Value>,
}

pub struct Vault {
    /// vaultrs' client; its token is swapped at each login.
    client: RwLock<VaultClient>,
    /// pgwarden's HTTP client (the one vaultrs uses too), for raw requests.
    http: reqwest::Client,
    address: String,
    namespace: Option<String>,
    auth: VaultAuthConfig,
    pub timeout: Duration,
    token: Mutex<Option<Token>>,
    /// One login at a time; others wait for its result.
    login_lock: tokio::sync::Mutex<()>,
    /// Counts logins, so that requests refused together log in once.
    generation: AtomicU64,
    /// Signalled at each login, so that token upkeep follows the new token's
    /// TTL instead of sleeping on the schedule of the token it replaced.
    logged_in: tokio::sync::Notify,
    /// Whether the last exchange with Vault succeeded (for readiness).
    reachable: AtomicBool,
    /// Why Vault is not usable, when it is not.
    last_error: Mutex<Option<String>>,
}

impl Vault {
    pub fn new(config: &VaultConfig) -> Result<Vault, SetupError> {
        let mut settings = VaultClientSettingsBuilder::default();
        settings
            .address(&config.address)
            .token("")
            .verify(true)
            .timeout(Some(config.timeout))
            .namespace(config.namespace.clone())
            // vaultrs would add these to the system's roots; pgwarden trusts
            // `ca_file` alone when it is given (below).
            .ca_certs(Vec::new())
            .identity(identity(config)?);
        let settings = settings
            .build()
            .map_err(|e| SetupError::Client(e.to_string()))?;
        let mut client =
            VaultClient::new(settings).map_err(|e| SetupError::Client(e.to_string()))?;
        // vaultrs' client follows redirects and honours proxy variables:
        // pgwarden's own does neither, for its requests and for vaultrs'.
        client.http.http = http_client(config)?;
        let http = client.http.http.clone();
        // Exported at zero only where Vault is configured.
        metrics::Zeroed::zero(&TOKEN_RENEWALS);
        Ok(Vault {
            client: RwLock::new(client),
            http,
            address: config.address.clone(),
            namespace: config.namespace.clone(),
            auth: config.auth.clone(),
            timeout: config.timeout,
            token: Mutex::new(None),
            login_lock: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            logged_in: tokio::sync::Notify::new(),
            reachable: AtomicBool::new(false),
            last_error: Mutex::new(Some("not logged in to Vault yet".into())),
        })
    }

    /// `Ok` when pgwarden holds a live token and Vault answered last time.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let has_token = self.current_token().is_some();
        if has_token && self.reachable.load(Ordering::Acquire) {
            return Ok(());
        }
        let why = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Err(NotReady(
            why.unwrap_or_else(|| "Vault is not reachable".into()),
        ))
    }

    fn mark(&self, result: Result<(), &str>) {
        self.reachable.store(result.is_ok(), Ordering::Release);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            result.err().map(str::to_owned);
    }

    fn current_token(&self) -> Option<SecretString> {
        let guard = self.token.lock().unwrap_or_else(|p| p.into_inner());
        let t = guard.as_ref()?;
        let expired = !t.ttl.is_zero() && t.since.elapsed() >= t.ttl;
        (!expired).then(|| t.value.clone())
    }

    /// Logs in with the configured method (one login at a time).
    pub async fn login(&self) -> Result<(), CredentialError> {
        self.login_unless_since(None).await
    }

    /// Logs in, unless a login finished since generation `seen` (when given):
    /// requests that found the token refused at the same moment then share
    /// the one login instead of each making its own.
    async fn login_unless_since(&self, seen: Option<u64>) -> Result<(), CredentialError> {
        let _one = self.login_lock.lock().await;
        if seen.is_some_and(|g| g != self.generation.load(Ordering::Acquire)) {
            return Ok(());
        }
        let result = self.login_once().await;
        match &result {
            Ok(()) => {
                TOKEN_RENEWALS.increment(TokenOutcome::Login);
                self.mark(Ok(()));
            }
            Err(e) => {
                TOKEN_RENEWALS.increment(TokenOutcome::LoginFailure);
                self.mark(Err(&format!("Vault login failed: {e}")));
            }
        }
        result
    }

    async fn login_once(&self) -> Result<(), CredentialError> {
        let mut client = self.client.write().await;
        let login = |e: vaultrs::error::ClientError| classify_client_error("login", &e);
        let (value, ttl, renewable) = match &self.auth {
            VaultAuthConfig::Approle {
                mount,
                role_id,
                secret_id_file,
            } => {
                let secret_id = read_secret(secret_id_file)?;
                let auth = vaultrs::auth::approle::login(
                    &*client,
                    mount,
                    role_id.expose_secret(),
                    secret_id.expose_secret(),
                )
                .await
                .map_err(login)?;
                (
                    SecretString::from(auth.client_token),
                    auth.lease_duration,
                    auth.renewable,
                )
            }
            VaultAuthConfig::Kubernetes {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = read_secret(jwt_file)?;
                let auth =
                    vaultrs::auth::kubernetes::login(&*client, mount, role, jwt.expose_secret())
                        .await
                        .map_err(login)?;
                (
                    SecretString::from(auth.client_token),
                    auth.lease_duration,
                    auth.renewable,
                )
            }
            VaultAuthConfig::Token { token } => {
                client.set_token(token.expose_secret());
                let info = vaultrs::token::lookup_self(&*client).await.map_err(login)?;
                (token.clone(), info.ttl, info.renewable.unwrap_or(false))
            }
        };
        client.set_token(value.expose_secret());
        let ttl = Duration::from_secs(ttl);
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(Token {
            value,
            ttl,
            login_ttl: ttl,
            renewable,
            since: Instant::now(),
        });
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.logged_in.notify_one();
        tracing::info!(event = "vault_login", ttl_s = ttl.as_secs(), renewable);
        Ok(())
    }

    /// Keeps the token alive for as long as the process runs: renews at ~2/3
    /// of its TTL (of the newest token, whoever logged in), logs in again when
    /// renewal is refused or the max TTL nears, retries with backoff while
    /// Vault is unreachable.
    pub async fn maintain_token(&self) {
        let mut retry = Duration::from_secs(1);
        loop {
            let wait = {
                let guard = self.token.lock().unwrap_or_else(|p| p.into_inner());
                match guard.as_ref() {
                    None => None,
                    Some(t) if t.ttl.is_zero() => Some(Duration::from_secs(3600)),
                    Some(t) => Some((t.ttl * 2 / 3).saturating_sub(t.since.elapsed())),
                }
            };
            let outcome = match wait {
                None => self.login().await,
                Some(w) => tokio::select! {
                    () = tokio::time::sleep(w) => self.renew_or_login().await,
                    // A request refused with 403 logged in again: a new token,
                    // perhaps with a shorter TTL. Plan again from it.
                    () = self.logged_in.notified() => continue,
                },
            };
            match outcome {
                Ok(()) => retry = Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(event = "vault_token_failed", error = %e, retry_in_ms = retry.as_millis() as u64);
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_TOKEN_RETRY);
                }
            }
        }
    }

    async fn renew_or_login(&self) -> Result<(), CredentialError> {
        let current = {
            let guard = self.token.lock().unwrap_or_else(|p| p.into_inner());
            guard.as_ref().map(|t| (t.renewable, t.login_ttl, t.ttl))
        };
        let Some((renewable, login_ttl, ttl)) = current else {
            return self.login().await;
        };
        if ttl.is_zero() {
            return Ok(());
        }
        if !renewable {
            return self.login().await;
        }
        let renewed = {
            let client = self.client.read().await;
            vaultrs::token::renew_self(&*client, None).await
        };
        match renewed {
            Ok(auth) => {
                let new_ttl = Duration::from_secs(auth.lease_duration);
                TOKEN_RENEWALS.increment(TokenOutcome::Renewed);
                tracing::info!(event = "vault_token_renewed", ttl_s = new_ttl.as_secs());
                self.mark(Ok(()));
                let capped = new_ttl + Duration::from_secs(1) < login_ttl;
                if let Some(t) = self
                    .token
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                {
                    t.ttl = new_ttl;
                    t.since = Instant::now();
                    // Near the token's max TTL renewals get shorter: log in again
                    // at 2/3 of what is left rather than let it run out.
                    t.renewable = !capped;
                }
                Ok(())
            }
            Err(e) => {
                let err = classify_client_error("token renewal", &e);
                TOKEN_RENEWALS.increment(TokenOutcome::RenewalFailure);
                if err.kind == ErrorKind::Unavailable {
                    self.mark(Err(&err.detail));
                    return Err(err);
                }
                // Refused (revoked, expired, past max TTL): a new login.
                self.login().await
            }
        }
    }

    /// A raw request with pgwarden's token. On 403 it logs in again once and
    /// retries: the token may have been revoked behind pgwarden's back.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Option<Envelope>, CredentialError> {
        self.request_within(method, path, body, self.timeout).await
    }

    /// [`Vault::request`] whose HTTP exchanges may each take up to `timeout`
    /// instead of `[vault] timeout`.
    pub async fn request_within(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Option<Envelope>, CredentialError> {
        let mut relogged = false;
        loop {
            // Read before the token: a login in between only makes it newer.
            let generation = self.generation.load(Ordering::Acquire);
            let token = match self.current_token() {
                Some(t) => t,
                None => {
                    self.login_unless_since(Some(generation)).await?;
                    relogged = true;
                    self.current_token().ok_or_else(|| {
                        CredentialError::new(ErrorKind::Unavailable, "no Vault token after login")
                    })?
                }
            };
            match self
                .send(method.clone(), path, body.as_ref(), &token, timeout)
                .await
            {
                Err(e)
                    if e.kind == ErrorKind::Refused && e.detail.starts_with("403") && !relogged =>
                {
                    relogged = true;
                    self.login_unless_since(Some(generation)).await?;
                }
                other => return other,
            }
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        token: &SecretString,
        timeout: Duration,
    ) -> Result<Option<Envelope>, CredentialError> {
        let url = format!("{}/v1/{}", self.address, path);
        let mut req = self
            .http
            .request(method, &url)
            .timeout(timeout)
            .header("X-Vault-Token", token.expose_secret());
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let response = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let detail = format!("{path}: {}", without_url(&e));
                self.mark(Err(&detail));
                return Err(CredentialError::new(ErrorKind::Unavailable, detail));
            }
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            self.mark(Ok(()));
            if status == StatusCode::NO_CONTENT || text.trim().is_empty() {
                return Ok(None);
            }
            return serde_json::from_str(&text).map(Some).map_err(|e| {
                CredentialError::new(
                    ErrorKind::Unavailable,
                    format!("{path}: unreadable response: {e}"),
                )
            });
        }
        if status.is_redirection() {
            let detail = format!("{} {path}: {REDIRECT_HINT}", status.as_u16());
            self.mark(Err(&detail));
            return Err(CredentialError::new(ErrorKind::Unavailable, detail));
        }
        let errors = error_text(&text);
        let detail = format!("{} {path}: {errors}", status.as_u16());
        let kind = match status.as_u16() {
            429 | 500..=599 => {
                self.mark(Err(&detail));
                ErrorKind::Unavailable
            }
            _ => {
                // Vault answered: reachable, even if it said no.
                self.mark(Ok(()));
                ErrorKind::Refused
            }
        };
        Err(CredentialError::new(kind, detail))
    }

    /// Probes `sys/health` (no token needed) to keep readiness current. A
    /// standby answers requests by forwarding them, so it counts as up; sealed
    /// or uninitialised does not.
    pub async fn check_health(&self) {
        let url = format!("{}/v1/sys/health", self.address);
        let answer = self.http.get(&url).timeout(self.timeout).send().await;
        let health = match answer {
            Err(e) => Err(format!("health: {}", without_url(&e))),
            Ok(r) => match r.status().as_u16() {
                200 | 429 | 472 | 473 => Ok(()),
                501 => Err("health: Vault is not initialized".to_owned()),
                503 => Err("health: Vault is sealed".to_owned()),
                code => Err(format!("health: HTTP {code}")),
            },
        };
        match health {
            Ok(()) if self.current_token().is_some() => self.mark(Ok(())),
            Ok(()) => self.mark(Err("Vault is up but pgwarden holds no valid token")),
            Err(why) => self.mark(Err(&why)),
        }
    }
}
