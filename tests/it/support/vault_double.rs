//! An in-process double of the HashiCorp Vault HTTP API, limited to what pgwarden uses.
//!
//! It serves the envelopes and error bodies real Vault sends (Vault's own texts, collected in
//! `text`), runs each role's SQL through an injected [`SqlRunner`] so dynamic roles really
//! appear in and disappear from the test PostgreSQL, lets leases and tokens expire by themselves,
//! and can be told at runtime to go down, go slow, seal, refuse or rate-limit.
//!
//! Which layer covers what: the double is for what a real server will not do on demand —
//! slow answers, 429s, going down or sealing at a precise moment, exact error bodies, a
//! revocation the database refuses, lease and token lifetimes of a few seconds with exact
//! timing. What a real server does of its own accord (its response fields and status codes,
//! its database plugin running the shipped statements, its ACLs, what happens to leases when
//! a token is revoked, seal and unseal) is proved against OpenBao, a real Vault API server
//! (`openbao.rs`, tests in `tests/it/openbao.rs`). Where the two were seen to differ, it is
//! said below ("OpenBao 2.7 answers …").
//!
//! It must never record a secret: the call log keeps method, path, status, time and namespace
//! only — never a token, secret id, JWT, password or request body.
//!
//! Layout: this file is the public surface (configuration, the handle and its controls);
//! `server` listens, applies the fault modes and routes; `handlers` answers each endpoint;
//! `state` holds tokens and leases and expires them; `rules` is how Vault computes TTLs, names
//! and statement lists; `response` and `text` are Vault's shapes and words. Where the double
//! knowingly differs from Vault, the item says so ("Unlike Vault").
// Every integration-test binary includes this module and uses a different part of it.
#![allow(dead_code)]

mod handlers;
mod response;
mod rules;
mod server;
mod state;
mod text;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use rules::{calculate_ttl, default_password, secs, unix, uuid};
use server::{bind_listener, tls_acceptor};
use state::{State, Token, TokenKind, lock, sweep};
// Vault's texts, for tests to compare answers with; a test binary may use none of them.
#[allow(unused_imports)]
pub use text::{
    INVALID_ROLE_OR_SECRET_ID, INVALID_TOKEN, LEASE_EXPIRED, LEASE_ID_REQUIRED, LEASE_NOT_FOUND,
    LEASE_NOT_RENEWABLE, PAST_MAX_TTL, PERMISSION_DENIED, RENEW_FAILED_PREFIX,
    REVOKE_FAILED_PREFIX, SEALED, SIMULATED_REVOCATION_FAILURE, capped_warning, go_expiration,
    human_duration, multierror1, rate_limited_text, unknown_role_text,
};

/// Runs one SQL statement against the test database. The double neither knows nor cares how.
pub type SqlRunner =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Makes the password of each issued credential.
pub type PasswordGenerator = Arc<dyn Fn() -> String + Send + Sync>;

/// How the double behaves towards its clients; switchable at any time with [`VaultDouble::set_mode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Serve normally.
    Up,
    /// Refuse TCP connections and cut the open ones. Leaving `Down` listens on the same port again.
    Down,
    /// Hold every request this long before handling it. A client that gives up first causes
    /// nothing (the request is never handled).
    Slow(Duration),
    /// 503 `Vault is sealed` everywhere; `sys/health` answers 503 with `"sealed": true`.
    /// Lease expiry pauses, as in a sealed Vault.
    Sealed,
    /// The token is valid but its policy denies the path: 403 on every authenticated endpoint
    /// except the token's own `lookup-self` and `renew-self` (Vault's `default` policy grants
    /// those). Logins and health are unauthenticated and keep working.
    Forbidden,
    /// 429 from a rate-limit quota on everything except `sys/health` (exempt in Vault).
    RateLimited,
}

/// A database secrets engine role.
#[derive(Clone, Debug)]
pub struct RoleDef {
    /// `;`-separated; `{{name}}`, `{{username}}`, `{{password}}`, `{{expiration}}`. Required.
    pub creation_statements: String,
    /// `;`-separated; `{{name}}`, `{{username}}`, `{{expiration}}`. Empty: PostgreSQL's default
    /// `ALTER ROLE "{{name}}" VALID UNTIL '{{expiration}}';`.
    pub renew_statements: String,
    /// `;`-separated; `{{name}}`, `{{username}}`. Empty: an approximation of the plugin's
    /// default (revoke on schema `public`, then `DROP ROLE IF EXISTS`).
    pub revocation_statements: String,
    /// Whole seconds; zero means Vault's system default (768h).
    pub default_ttl: Duration,
    /// Whole seconds; zero means Vault's system maximum (768h).
    pub max_ttl: Duration,
}

/// Everything the double needs up front. Build with [`DoubleConfig::new`] and set fields.
pub struct DoubleConfig {
    /// Database roles by name.
    pub roles: HashMap<String, RoleDef>,
    /// Mount path of the database secrets engine, e.g. `database`.
    pub mount: String,
    /// `(role_id, secret_id)` accepted by `auth/approle/login`; `None`: AppRole not mounted.
    pub approle: Option<(String, String)>,
    /// `(role, jwt)` accepted by `auth/kubernetes/login`; `None`: Kubernetes auth not mounted.
    pub kubernetes: Option<(String, String)>,
    /// A root token (policy `root`, never expires, not renewable), for `auth = token` setups.
    pub root_token: Option<String>,
    /// TTL of tokens issued by logins (whole seconds).
    pub token_ttl: Duration,
    /// Max TTL of tokens issued by logins (whole seconds).
    pub token_max_ttl: Duration,
    /// `(certificate chain PEM, private key PEM)`: serve HTTPS (HTTP/1.1) instead of HTTP.
    pub tls: Option<(String, String)>,
    /// Runs the roles' statements.
    pub sql: SqlRunner,
    /// Password maker; default: 32 characters of `[A-Za-z0-9-]`, each class at least once.
    pub password_generator: Option<PasswordGenerator>,
    /// The connection's `password_authentication = "scram-sha-256"` (Vault 1.14+): `{{password}}`
    /// in creation statements is a SCRAM-SHA-256 verifier of the password, never the password.
    pub scram_passwords: bool,
}

impl DoubleConfig {
    /// No roles, mount `database`, no auth methods, token TTL 1h / max 24h, plain HTTP.
    pub fn new(sql: SqlRunner) -> Self {
        DoubleConfig {
            roles: HashMap::new(),
            mount: "database".to_owned(),
            approle: None,
            kubernetes: None,
            root_token: None,
            token_ttl: Duration::from_secs(3600),
            token_max_ttl: Duration::from_secs(24 * 3600),
            tls: None,
            sql,
            password_generator: None,
            scram_passwords: false,
        }
    }
}

/// One request the double answered. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub method: String,
    /// URL path only (no query string), e.g. `/v1/database/creds/keycloak`.
    pub path: String,
    pub status: u16,
    /// When the request arrived.
    pub at: Instant,
    /// The `X-Vault-Namespace` header, if sent.
    pub namespace: Option<String>,
}

/// A live lease, as [`VaultDouble::leases`] reports it.
#[derive(Clone, Debug)]
pub struct LeaseInfo {
    pub lease_id: String,
    pub role: String,
    pub username: String,
    pub issued_at: Instant,
    pub expires_at: Instant,
    pub renew_count: u32,
}

/// Handle on a running double. Clones share it; dropping the last clone stops it.
#[derive(Clone)]
pub struct VaultDouble {
    inner: Arc<StopOnDrop>,
}

/// Owns the shared state on behalf of the handles; background tasks hold `State` directly and
/// notice the stop flag.
struct StopOnDrop {
    state: Arc<State>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.state.stop();
    }
}

impl VaultDouble {
    /// Binds `127.0.0.1:0` and starts serving. Must be called inside a tokio runtime.
    pub async fn start(cfg: DoubleConfig) -> VaultDouble {
        let (listener, listener_dup) = bind_listener(0).expect("bind the Vault double");
        let port = listener.local_addr().expect("local address").port();
        let tls = cfg.tls.as_ref().map(|(cert, key)| tls_acceptor(cert, key));
        let mut tokens = HashMap::new();
        if let Some(root) = &cfg.root_token {
            tokens.insert(root.clone(), Token::root(root));
        }
        let state = Arc::new(State {
            mount: cfg.mount.trim_matches('/').to_owned(),
            approle: cfg.approle,
            kubernetes: cfg.kubernetes,
            sql: cfg.sql,
            password: cfg
                .password_generator
                .unwrap_or_else(|| Arc::new(default_password)),
            scram_passwords: cfg.scram_passwords,
            runtime: tokio::runtime::Handle::current(),
            tls,
            port,
            approle_entity: uuid(),
            kubernetes_entity: uuid(),
            cluster_id: uuid(),
            cluster_name: format!("vault-cluster-{}", &uuid()[..8]),
            roles: Mutex::new(cfg.roles),
            token_ttls: Mutex::new((cfg.token_ttl, cfg.token_max_ttl)),
            mode: Mutex::new(Mode::Up),
            tokens: Mutex::new(tokens),
            leases: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
            revoked: Mutex::new(Vec::new()),
            fail_revocations: AtomicBool::new(false),
            revoke_leases_with_token: AtomicBool::new(true),
            finish_abandoned: AtomicBool::new(false),
            listener: Mutex::new(Some(listener_dup)),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            epoch: watch::channel(0).0,
            stopped: AtomicBool::new(false),
        });
        state.spawn_accept(listener);
        tokio::spawn(sweep(state.clone()));
        VaultDouble {
            inner: Arc::new(StopOnDrop { state }),
        }
    }

    fn state(&self) -> &Arc<State> {
        &self.inner.state
    }

    /// `http://127.0.0.1:<port>` or `https://…`.
    pub fn url(&self) -> String {
        let scheme = if self.state().tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.state().port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.state().port))
    }

    /// Takes effect at once: after `set_mode(Mode::Down)` returns, connects are refused and open
    /// connections are cut; after leaving `Down`, the port accepts again.
    pub fn set_mode(&self, mode: Mode) {
        let state = self.state();
        *lock(&state.mode) = mode;
        if mode == Mode::Down {
            state.close_sockets();
        } else {
            state.ensure_listening();
        }
    }

    pub fn mode(&self) -> Mode {
        self.state().mode()
    }

    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state().calls).clone()
    }

    /// Number of recorded calls whose path starts with `path_prefix`.
    pub fn count(&self, path_prefix: &str) -> usize {
        lock(&self.state().calls)
            .iter()
            .filter(|c| c.path.starts_with(path_prefix))
            .count()
    }

    pub fn clear_calls(&self) {
        lock(&self.state().calls).clear();
    }

    /// Live leases (not yet revoked), oldest first.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        let mut out: Vec<LeaseInfo> = lock(&self.state().leases)
            .values()
            .map(|slot| lock(&slot.data).info())
            .collect();
        out.sort_by_key(|l| l.issued_at);
        out
    }

    /// Usernames whose revocation statements ran successfully, in that order.
    pub fn revoked(&self) -> Vec<String> {
        lock(&self.state().revoked).clone()
    }

    /// Revokes one token (as `auth/token/revoke`). Returns whether it existed.
    pub fn revoke_token(&self, token: &str) -> bool {
        let removed = lock(&self.state().tokens).remove(token).is_some();
        if removed {
            self.state().expire_leases_of(&[token.to_owned()]);
        }
        removed
    }

    /// Revokes one lease now, as an operator's `vault lease revoke` would: runs the role's
    /// revocation statements. `Ok(false)`: no such lease.
    pub async fn revoke_lease(&self, lease_id: &str) -> Result<bool, String> {
        self.state().revoke(lease_id, false).await
    }

    /// Revokes every token, the root token included.
    pub fn revoke_all_tokens(&self) {
        let ids: Vec<String> = lock(&self.state().tokens)
            .drain()
            .map(|(id, _)| id)
            .collect();
        self.state().expire_leases_of(&ids);
    }

    /// Vault revokes every lease a token created when that token expires or is revoked, and so
    /// does the double by default. Turn off to test token handling in isolation.
    pub fn set_revoke_leases_with_token(&self, on: bool) {
        self.state()
            .revoke_leases_with_token
            .store(on, Ordering::SeqCst);
    }

    /// Changes a role's TTLs; affects later issues and renewals (as editing the role in Vault).
    pub fn set_role_ttls(&self, role: &str, default_ttl: Duration, max_ttl: Duration) {
        let mut roles = lock(&self.state().roles);
        let def = roles.get_mut(role).expect("set_role_ttls: unknown role");
        def.default_ttl = default_ttl;
        def.max_ttl = max_ttl;
    }

    /// Changes the TTLs of login tokens; affects later logins and renewals (as editing the
    /// AppRole / Kubernetes role in Vault).
    pub fn set_token_ttls(&self, ttl: Duration, max_ttl: Duration) {
        *lock(&self.state().token_ttls) = (ttl, max_ttl);
    }

    /// While on, a request whose client gives up (say, while [`Mode::Slow`] holds it) is still
    /// handled to the end and logged, as Vault may do: its database plugin can have created the
    /// user before it notices the client is gone. Off (the default): such a request is dropped
    /// unhandled.
    pub fn set_finish_abandoned(&self, on: bool) {
        self.state().finish_abandoned.store(on, Ordering::SeqCst);
    }

    /// While on, revocations fail as if the database refused the revocation statements.
    pub fn set_revocation_failure(&self, on: bool) {
        self.state().fail_revocations.store(on, Ordering::SeqCst);
    }

    /// Creates a service token as `auth/token/create` would (display name `token`), with the
    /// current login token TTLs. Useful for `auth = token` with an expiring token.
    pub fn create_token(&self) -> String {
        let (ttl, max_ttl) = *lock(&self.state().token_ttls);
        let (ttl, max_ttl) = (secs(ttl), secs(max_ttl));
        let now = unix(SystemTime::now());
        let (granted, _) =
            calculate_ttl(0, ttl, max_ttl, now, now).expect("token TTLs leave room for a token");
        let token = Token::service(
            TokenKind::Created { ttl, max_ttl },
            "token",
            "auth/token/create",
            None,
            String::new(),
            false,
            granted,
        );
        let id = token.id.clone();
        lock(&self.state().tokens).insert(id.clone(), token);
        id
    }
}

/// A runner that records every statement and succeeds, for tests without PostgreSQL.
pub fn recording_runner() -> (SqlRunner, SqlLog) {
    let log = SqlLog::default();
    let sink = log.clone();
    let runner: SqlRunner = Arc::new(move |sql: String| {
        lock(&sink.statements).push(sql);
        Box::pin(async { Ok(()) })
    });
    (runner, log)
}

/// The statements a [`recording_runner`] has seen.
#[derive(Clone, Default)]
pub struct SqlLog {
    statements: Arc<Mutex<Vec<String>>>,
}

impl SqlLog {
    pub fn statements(&self) -> Vec<String> {
        lock(&self.statements).clone()
    }

    pub fn clear(&self) {
        lock(&self.statements).clear();
    }
}

/// Polls `check` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
