//! What the double knows: roles, tokens, leases, the call log, and the sweeper that expires
//! leases and tokens as Vault's expiration manager does.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use socket2::Socket;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::rules::{base62, expiry, statements, unix};
use super::text::{INVALID_TOKEN, PERMISSION_DENIED, SIMULATED_REVOCATION_FAILURE, rfc3339};
use super::{Call, LeaseInfo, Mode, PasswordGenerator, RoleDef, SqlRunner};

/// Policies of every login token (the root token has `root`).
pub(super) const POLICIES: [&str; 2] = ["default", "pgwarden"];
/// The AppRole role the configured role id belongs to.
pub(super) const APPROLE_ROLE_NAME: &str = "pgwarden";
/// What `sys/health` reports.
pub(super) const VAULT_VERSION: &str = "1.19.0";
/// The PostgreSQL plugin's renewal statement when a role has none.
pub(super) const DEFAULT_RENEW: &str = "ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}';";
/// Unlike Vault, whose default revocation first lists the role's grants in every schema, a fixed
/// approximation: revoke on schema `public`, then drop the role.
pub(super) const DEFAULT_REVOKE: &str = "REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA public FROM \"{{name}}\";\
     REVOKE ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA public FROM \"{{name}}\";\
     REVOKE USAGE ON SCHEMA public FROM \"{{name}}\";\
     DROP ROLE IF EXISTS \"{{name}}\";";
/// How often the sweeper looks for expired leases and tokens.
pub(super) const SWEEP_EVERY: Duration = Duration::from_millis(50);
/// Unlike Vault (10 s exponential backoff, then irrevocable), a failed expiry revocation is
/// retried every second for as long as it fails, so tests need not wait.
pub(super) const EXPIRY_RETRY: Duration = Duration::from_secs(1);

/// Everything the double holds, shared by the handle, the accept loops, the connections and the
/// sweeper. Locks are `std` mutexes never held across an `.await`.
pub(super) struct State {
    /// Mount path of the database secrets engine, without slashes.
    pub(super) mount: String,
    pub(super) approle: Option<(String, String)>,
    pub(super) kubernetes: Option<(String, String)>,
    pub(super) sql: SqlRunner,
    pub(super) password: PasswordGenerator,
    /// `{{password}}` is a SCRAM-SHA-256 verifier (`password_authentication`).
    pub(super) scram_passwords: bool,
    /// Lets the synchronous `set_mode` re-register a listener with the reactor.
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) tls: Option<TlsAcceptor>,
    /// Fixed for the double's life: leaving `Down` listens here again.
    pub(super) port: u16,
    /// Vault creates one identity entity per auth alias; these stand in for them.
    pub(super) approle_entity: String,
    pub(super) kubernetes_entity: String,
    /// What `sys/health` reports.
    pub(super) cluster_id: String,
    pub(super) cluster_name: String,
    /// Editable at runtime (`set_role_ttls`), like roles in Vault.
    pub(super) roles: Mutex<HashMap<String, RoleDef>>,
    /// TTL and max TTL of login tokens; read at login and at each renewal, as Vault does.
    pub(super) token_ttls: Mutex<(Duration, Duration)>,
    pub(super) mode: Mutex<Mode>,
    /// Valid tokens by id; expired ones linger until the sweeper removes them.
    pub(super) tokens: Mutex<HashMap<String, Token>>,
    /// Live leases by id (revoked ones are removed).
    pub(super) leases: Mutex<HashMap<String, Arc<LeaseSlot>>>,
    pub(super) calls: Mutex<Vec<Call>>,
    /// Usernames whose revocation statements succeeded, in order.
    pub(super) revoked: Mutex<Vec<String>>,
    /// While set, revocations fail as if the database refused them.
    pub(super) fail_revocations: AtomicBool,
    /// Whether a token's leases die with it (Vault: always).
    pub(super) revoke_leases_with_token: AtomicBool,
    /// Whether a request whose client went away is still handled to the end.
    pub(super) finish_abandoned: AtomicBool,
    /// A duplicate of the listening socket, so `Down` can shut it synchronously.
    pub(super) listener: Mutex<Option<Socket>>,
    /// Duplicates of open connections, so `Down` can cut them synchronously.
    pub(super) conns: Mutex<HashMap<u64, Socket>>,
    /// Keys `conns`.
    pub(super) next_conn: AtomicU64,
    /// Bumped whenever the listener is closed; accept loops of older epochs end.
    pub(super) epoch: watch::Sender<u64>,
    /// The last handle is gone: accept loops and the sweeper end.
    pub(super) stopped: AtomicBool,
}

/// Where a token came from, which decides how it renews.
#[derive(Clone)]
pub(super) enum TokenKind {
    Root,
    AppRole,
    Kubernetes,
    /// From `create_token`: keeps the TTLs it was created with.
    Created {
        ttl: u64,
        max_ttl: u64,
    },
}

/// A Vault service token (or the root token).
#[derive(Clone)]
pub(super) struct Token {
    pub(super) id: String,
    pub(super) accessor: String,
    pub(super) kind: TokenKind,
    pub(super) display_name: String,
    pub(super) path: String,
    pub(super) meta: Option<BTreeMap<String, String>>,
    pub(super) entity_id: String,
    pub(super) orphan: bool,
    pub(super) issued: SystemTime,
    pub(super) creation_ttl: u64,
    /// `None` for the root token, which never expires.
    pub(super) expires: Option<(Instant, SystemTime)>,
    pub(super) last_renewal: Option<SystemTime>,
}

impl Token {
    pub(super) fn root(id: &str) -> Token {
        Token {
            id: id.to_owned(),
            accessor: base62(24),
            kind: TokenKind::Root,
            display_name: "root".to_owned(),
            path: "auth/token/root".to_owned(),
            meta: None,
            entity_id: String::new(),
            orphan: true,
            issued: SystemTime::now(),
            creation_ttl: 0,
            expires: None,
            last_renewal: None,
        }
    }

    pub(super) fn service(
        kind: TokenKind,
        display_name: &str,
        path: &str,
        meta: Option<BTreeMap<String, String>>,
        entity_id: String,
        orphan: bool,
        ttl: u64,
    ) -> Token {
        let issued = SystemTime::now();
        Token {
            id: format!("hvs.{}", base62(24)),
            accessor: base62(24),
            kind,
            display_name: display_name.to_owned(),
            path: path.to_owned(),
            meta,
            entity_id,
            orphan,
            issued,
            creation_ttl: ttl,
            expires: Some(expiry(ttl)),
            last_renewal: None,
        }
    }

    pub(super) fn policies(&self) -> Vec<&'static str> {
        match self.kind {
            TokenKind::Root => vec!["root"],
            _ => POLICIES.to_vec(),
        }
    }

    pub(super) fn is_valid(&self) -> bool {
        self.expires.is_none_or(|(at, _)| at > Instant::now())
    }

    /// The `auth` block of login and renew-self responses.
    pub(super) fn auth_block(&self, lease_duration: u64) -> Value {
        json!({
            "client_token": self.id,
            "accessor": self.accessor,
            "policies": self.policies(),
            "token_policies": self.policies(),
            "metadata": self.meta,
            "lease_duration": lease_duration,
            "renewable": self.expires.is_some(),
            "entity_id": self.entity_id,
            "token_type": "service",
            "orphan": self.orphan,
            "mfa_requirement": null,
            "num_uses": 0,
        })
    }

    /// The `data` of `auth/token/lookup-self`.
    pub(super) fn lookup_data(&self) -> Value {
        let ttl = self.expires.map_or(0, |(at, _)| {
            at.saturating_duration_since(Instant::now())
                .as_secs_f64()
                .round() as u64
        });
        let mut data = json!({
            "accessor": self.accessor,
            "creation_time": unix(self.issued),
            "creation_ttl": self.creation_ttl,
            "display_name": self.display_name,
            "entity_id": self.entity_id,
            "expire_time": self.expires.map(|(_, wall)| rfc3339(wall)),
            "explicit_max_ttl": 0,
            "id": self.id,
            "issue_time": rfc3339(self.issued),
            "meta": self.meta,
            "num_uses": 0,
            "orphan": self.orphan,
            "path": self.path,
            "policies": self.policies(),
            "renewable": self.expires.is_some(),
            "ttl": ttl,
            "type": "service",
        });
        if let Some(at) = self.last_renewal {
            data["last_renewal"] = json!(rfc3339(at));
            data["last_renewal_time"] = json!(unix(at));
        }
        data
    }
}

/// A lease and the lock that serialises renew / revoke / expiry on it (Vault's per-lease lock).
pub(super) struct LeaseSlot {
    pub(super) op: tokio::sync::Mutex<()>,
    pub(super) data: Mutex<LeaseData>,
}

/// What Vault's lease entry holds that the double needs.
pub(super) struct LeaseData {
    pub(super) lease_id: String,
    pub(super) role: String,
    pub(super) username: String,
    /// The token that issued it; never exposed.
    pub(super) token: String,
    pub(super) issued_at: Instant,
    pub(super) issued_wall: SystemTime,
    pub(super) expires_at: Instant,
    pub(super) renew_count: u32,
    /// The sweeper has a revocation for it in flight.
    pub(super) revoking: bool,
    /// After a failed expiry revocation: not before this instant.
    pub(super) retry_at: Option<Instant>,
}

impl LeaseData {
    pub(super) fn info(&self) -> LeaseInfo {
        LeaseInfo {
            lease_id: self.lease_id.clone(),
            role: self.role.clone(),
            username: self.username.clone(),
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            renew_count: self.renew_count,
        }
    }
}

/// Locks, ignoring poisoning (a panicking test must not hide the double's state).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    pub(super) fn mode(&self) -> Mode {
        *lock(&self.mode)
    }

    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.close_sockets();
    }

    pub(super) fn record(&self, call: Call) {
        lock(&self.calls).push(call);
    }

    /// The token of a request, or Vault's 403 text: no token is a policy denial, an unknown,
    /// expired or revoked one is also an invalid token.
    pub(super) fn check_token(&self, token: Option<&str>) -> Result<Token, &'static str> {
        let token = token.filter(|t| !t.is_empty()).ok_or(PERMISSION_DENIED)?;
        lock(&self.tokens)
            .get(token)
            .filter(|t| t.is_valid())
            .cloned()
            .ok_or(INVALID_TOKEN)
    }

    /// Vault revokes the leases a token created once the token is gone.
    pub(super) fn expire_leases_of(&self, tokens: &[String]) {
        if tokens.is_empty() || !self.revoke_leases_with_token.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        for slot in lock(&self.leases).values() {
            let mut data = lock(&slot.data);
            if tokens.contains(&data.token) && data.expires_at > now {
                data.expires_at = now;
            }
        }
    }

    pub(super) fn lease(&self, lease_id: &str) -> Option<Arc<LeaseSlot>> {
        lock(&self.leases).get(lease_id).cloned()
    }

    /// Whether `slot` is still the live lease `lease_id` (not revoked meanwhile).
    pub(super) fn still_holds(&self, lease_id: &str, slot: &Arc<LeaseSlot>) -> bool {
        lock(&self.leases)
            .get(lease_id)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
    }

    /// Runs statements one at a time, in order, stopping at the first error.
    pub(super) async fn run_statements(&self, statements: &[String]) -> Result<(), String> {
        for sql in statements {
            (self.sql)(sql.clone()).await?;
        }
        Ok(())
    }

    /// Runs the revocation statements and forgets the lease. `Ok(false)`: nothing to revoke
    /// (unknown, already revoked, or — for an expiry — renewed meanwhile).
    pub(super) async fn revoke(
        &self,
        lease_id: &str,
        only_if_expired: bool,
    ) -> Result<bool, String> {
        let Some(slot) = self.lease(lease_id) else {
            return Ok(false);
        };
        let _op = slot.op.lock().await;
        if !self.still_holds(lease_id, &slot) {
            return Ok(false);
        }
        let (role, username) = {
            let mut data = lock(&slot.data);
            if only_if_expired && data.expires_at > Instant::now() {
                data.revoking = false;
                return Ok(false);
            }
            (data.role.clone(), data.username.clone())
        };
        let result = if self.fail_revocations.load(Ordering::SeqCst) {
            Err(SIMULATED_REVOCATION_FAILURE.to_owned())
        } else {
            let template = lock(&self.roles)
                .get(&role)
                .map(|r| r.revocation_statements.clone())
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_REVOKE.to_owned());
            let subs = [("name", username.as_str()), ("username", username.as_str())];
            self.run_statements(&statements(&template, true, &subs))
                .await
        };
        match result {
            Ok(()) => {
                lock(&self.leases).remove(lease_id);
                lock(&self.revoked).push(username);
                Ok(true)
            }
            Err(e) => {
                let mut data = lock(&slot.data);
                data.revoking = false;
                data.retry_at = Some(Instant::now() + EXPIRY_RETRY);
                Err(e)
            }
        }
    }
}

/// Revokes expired leases and forgets expired tokens, until the double stops.
pub(super) async fn sweep(state: Arc<State>) {
    while !state.stopped.load(Ordering::SeqCst) {
        tokio::time::sleep(SWEEP_EVERY).await;
        if state.mode() == Mode::Sealed {
            continue;
        }
        let now = Instant::now();
        let expired_tokens: Vec<String> = {
            let mut tokens = lock(&state.tokens);
            let expired: Vec<String> = tokens
                .values()
                .filter(|t| !t.is_valid())
                .map(|t| t.id.clone())
                .collect();
            for id in &expired {
                tokens.remove(id);
            }
            expired
        };
        state.expire_leases_of(&expired_tokens);
        let due: Vec<String> = lock(&state.leases)
            .values()
            .filter_map(|slot| {
                let mut data = lock(&slot.data);
                let due = data.expires_at <= now
                    && !data.revoking
                    && data.retry_at.is_none_or(|at| at <= now);
                due.then(|| {
                    data.revoking = true;
                    data.lease_id.clone()
                })
            })
            .collect();
        for lease_id in due {
            let state = state.clone();
            tokio::spawn(async move {
                let _ = state.revoke(&lease_id, true).await;
            });
        }
    }
}
