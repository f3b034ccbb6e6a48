//! The built-in source's admin connections: one per server and TLS settings,
//! opened on first use, bounded on both sides (server-side lock and
//! statement timeouts, a client-side bound on every call, TCP keepalive), and
//! reopened when they break.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::sync::Mutex;

use super::quote_ident;
use crate::config::{PostgresSourceConfig, UpstreamConfig, UpstreamTls};
use crate::credentials::{CredentialError, ErrorKind};
use crate::error_text::with_causes;

/// The admin connection's server-side bounds: a role statement that waits on a
/// lock (a long transaction holding `pg_authid`, say) or runs away fails, and
/// is retried, rather than holding up credentials for every later session.
const ADMIN_LOCK_TIMEOUT: &str = "10s";
const ADMIN_STATEMENT_TIMEOUT: &str = "30s";
/// The client-side bound on one admin statement, for a server or network that
/// stops answering altogether: past it the connection is dropped and reopened.
const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(45);
/// TCP keepalive on the admin connection, so a dead peer is noticed.
const ADMIN_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const ADMIN_TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) struct AdminConnection {
    pub(super) upstream: UpstreamConfig,
    /// The database it connects to: the admin database, or a route's
    /// (where a revoked role's objects are cleaned up).
    pub(super) database: String,
    pub(super) client: Mutex<Option<Arc<tokio_postgres::Client>>>,
}

/// What an admin connection is for. Issuing has a connection of its own, so
/// a `CREATE ROLE` never queues behind renewals, revocations and their
/// clean-up (which may wait on locks, and retry) on the same connection.
/// Revocations share [`REVOKE_CONNECTIONS`] connections of their own: each
/// may wait up to 5 s for a killed session's backend to exit, and under
/// churn one connection could not drop roles as fast as sessions end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Purpose {
    Issue,
    /// Renewals and the search for leftovers.
    Upkeep,
    /// Dropping a role and cleaning up after it, on the connection with this
    /// number (below [`REVOKE_CONNECTIONS`]).
    Revoke(usize),
}

/// How many admin connections per server and database drop roles at once.
pub(super) const REVOKE_CONNECTIONS: usize = 4;

impl Purpose {
    /// The revocation connection for `role`: the same for every attempt at
    /// one role, spread evenly over issued roles' random names.
    pub(super) fn revoke(role: &str) -> Purpose {
        let hash = role.bytes().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        Purpose::Revoke(hash % REVOKE_CONNECTIONS)
    }
}

/// What makes two routes' admin connections the same one: the server and how
/// it is reached. Routes to one server with different TLS settings (another CA,
/// another name to verify, or TLS off) never share a connection, so a route's
/// settings never decide how another route's admin password travels.
pub(super) fn admin_key(upstream: &UpstreamConfig) -> String {
    format!(
        "{} tls={:?} ca_file={:?} server_name={:?} allow_insecure_auth={}",
        upstream.endpoint(),
        upstream.tls,
        upstream.ca_file,
        upstream.server_name,
        upstream.allow_insecure_auth
    )
}

impl AdminConnection {
    pub(super) async fn execute(
        &self,
        sql: &str,
        config: &PostgresSourceConfig,
    ) -> Result<(), CredentialError> {
        let client = self.client(config).await?;
        self.run(&client, sql).await
    }

    /// Runs `sql` on `client`, bounded.
    pub(super) async fn run(
        &self,
        client: &Arc<tokio_postgres::Client>,
        sql: &str,
    ) -> Result<(), CredentialError> {
        let result = self.bounded(client, client.batch_execute(sql)).await?;
        result.map_err(|e| self.failed(e))
    }

    /// Runs one call on `client` for at most [`ADMIN_CALL_TIMEOUT`]; past it
    /// the connection is forgotten (and so closed once the call is dropped),
    /// to be reopened by the next call, unless another call did so already.
    async fn bounded<T>(
        &self,
        client: &Arc<tokio_postgres::Client>,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T, CredentialError> {
        match tokio::time::timeout(ADMIN_CALL_TIMEOUT, call).await {
            Ok(result) => Ok(result),
            Err(_) => {
                let mut slot = self.client.lock().await;
                if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
                    slot.take();
                }
                Err(CredentialError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "admin connection to {}: no answer within {ADMIN_CALL_TIMEOUT:?}",
                        self.upstream.endpoint()
                    ),
                ))
            }
        }
    }

    /// The pids of the sessions logged in as `role`.
    pub(super) async fn backends_of(
        &self,
        role: &str,
        config: &PostgresSourceConfig,
    ) -> Result<Vec<i32>, CredentialError> {
        let client = self.client(config).await?;
        let rows = self
            .bounded(
                &client,
                client.query(
                    "SELECT pid FROM pg_stat_activity WHERE usename = $1",
                    &[&role],
                ),
            )
            .await?
            .map_err(|e| self.failed(e))?;
        Ok(rows.iter().map(|r| r.get::<_, i32>(0)).collect())
    }

    pub(super) async fn query_names(
        &self,
        sql: &str,
        param: &str,
        config: &PostgresSourceConfig,
    ) -> Result<Vec<String>, CredentialError> {
        let client = self.client(config).await?;
        let rows = self
            .bounded(&client, client.query(sql, &[&param]))
            .await?
            .map_err(|e| self.failed(e))?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    pub(super) async fn client(
        &self,
        config: &PostgresSourceConfig,
    ) -> Result<Arc<tokio_postgres::Client>, CredentialError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        // tokio-postgres bounds only the TCP connect; TLS, authentication and
        // the first query are bounded here (the slot's lock is held meanwhile).
        let client = tokio::time::timeout(ADMIN_CALL_TIMEOUT, self.connect(config))
            .await
            .unwrap_or_else(|_| {
                Err(CredentialError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "admin connection to {}: not established within {ADMIN_CALL_TIMEOUT:?}",
                        self.upstream.endpoint()
                    ),
                ))
            })?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn connect(
        &self,
        config: &PostgresSourceConfig,
    ) -> Result<tokio_postgres::Client, CredentialError> {
        let u = &self.upstream;
        let mut pg = tokio_postgres::Config::new();
        // Dial `host`, as sessions do; verify the certificate against
        // `server_name` when one is given (tokio-postgres verifies `host`
        // and dials `hostaddr`, so the name to dial is resolved here).
        match &u.server_name {
            Some(name) => {
                // Each address `host` resolves to is tried in turn.
                for ip in dial_addresses(u).await? {
                    pg.host(name).hostaddr(ip);
                }
            }
            None => {
                pg.host(&u.host).hostaddr_if_ip(&u.host);
            }
        }
        pg.port(u.port)
            .user(&config.admin_user)
            .password(config.admin_password.expose_secret())
            .dbname(&self.database)
            .application_name("pgwarden-admin")
            .options(format!(
                "-c lock_timeout={ADMIN_LOCK_TIMEOUT} -c statement_timeout={ADMIN_STATEMENT_TIMEOUT}"
            ))
            // No cleartext, MD5 or trust from the server unless the route
            // opts in. tokio-postgres can only say so by requiring channel
            // binding, so over TLS the admin login must be SCRAM-SHA-256-PLUS
            // (stricter than a session's login, which also takes plain SCRAM):
            // a server that does not offer it (a pooler in between; an Ed25519
            // certificate, which has no tls-server-end-point hash) needs the
            // opt-in. Without TLS, validation demands the opt-in.
            .channel_binding(
                if u.allow_insecure_auth || u.tls == UpstreamTls::Disable {
                    tokio_postgres::config::ChannelBinding::Prefer
                } else {
                    tokio_postgres::config::ChannelBinding::Require
                },
            )
            .keepalives(true)
            .keepalives_idle(ADMIN_KEEPALIVE_IDLE)
            .tcp_user_timeout(ADMIN_TCP_USER_TIMEOUT)
            .connect_timeout(u.connect_timeout);
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            CredentialError::new(
                ErrorKind::Unavailable,
                format!("admin connection to {}: {what}: {e}", u.endpoint()),
            )
        };
        let client = match u.tls {
            UpstreamTls::Disable => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let (client, conn) = pg
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| unavailable("connect", &with_causes(&e)))?;
                tokio::spawn(conn);
                client
            }
            mode => {
                let ca = u
                    .ca_file
                    .as_deref()
                    .ok_or_else(|| unavailable("tls", &"no ca_file"))?;
                let verification = if mode == UpstreamTls::VerifyCa {
                    crate::tls::Verification::CaOnly
                } else {
                    crate::tls::Verification::Full
                };
                let tls_config = crate::tls::upstream_config(ca, verification)
                    .map_err(|e| unavailable("tls", &e))?;
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                let connector = crate::tls::pg_connector::RustlsConnect::new(tls_config);
                let (client, conn) = pg
                    .connect(connector)
                    .await
                    .map_err(|e| unavailable("connect", &with_causes(&e)))?;
                tokio::spawn(conn);
                client
            }
        };
        warn_if_statements_logged(&client, &u.endpoint(), &config.admin_user).await;
        Ok(client)
    }

    fn failed(&self, e: tokio_postgres::Error) -> CredentialError {
        match e.as_db_error() {
            // Keep the SQLSTATE in the detail: callers match on it.
            Some(db) => CredentialError::new(
                ErrorKind::Refused,
                format!(
                    "{}: {} ({})",
                    self.upstream.endpoint(),
                    db.message(),
                    db.code().code()
                ),
            ),
            None => CredentialError::new(
                ErrorKind::Unavailable,
                format!(
                    "admin connection to {}: {}",
                    self.upstream.endpoint(),
                    with_causes(&e)
                ),
            ),
        }
    }
}

/// Says so when the server would log the admin connection's statements:
/// every `CREATE ROLE` logged carries the issued role's SCRAM verifier (see
/// [`crate::audit::statement_logging`], which `pgwarden audit` also uses).
async fn warn_if_statements_logged(client: &tokio_postgres::Client, endpoint: &str, admin: &str) {
    let Ok(row) = client
        .query_one(
            "SELECT current_setting('log_statement'), \
                    current_setting('log_min_duration_statement'), \
                    current_setting('log_min_error_statement')",
            &[],
        )
        .await
    else {
        return;
    };
    let (statement, duration, error): (String, String, String) =
        (row.get(0), row.get(1), row.get(2));
    let fixes = crate::audit::statement_logging::fixes(&statement, &duration, &error);
    if fixes.is_empty() {
        return;
    }
    let admin = quote_ident(admin);
    let fix = fixes
        .iter()
        .map(|f| format!("ALTER ROLE {admin} SET {f};"))
        .collect::<Vec<_>>()
        .join(" ");
    tracing::warn!(
        event = "admin_statements_logged",
        upstream = %endpoint,
        log_statement = %statement,
        log_min_duration_statement = %duration,
        log_min_error_statement = %error,
        "the server may log the admin connection's statements, and with them issued roles' SCRAM verifiers; run: {fix} (see config/postgres/logging.conf)"
    );
}

/// The addresses `host` resolves to, to dial while verifying another name.
async fn dial_addresses(u: &UpstreamConfig) -> Result<Vec<std::net::IpAddr>, CredentialError> {
    if let Ok(ip) = u.host.parse() {
        return Ok(vec![ip]);
    }
    let resolved = tokio::time::timeout(
        u.connect_timeout,
        tokio::net::lookup_host((u.host.as_str(), u.port)),
    )
    .await
    .map_err(|_| {
        CredentialError::new(
            ErrorKind::Unavailable,
            format!(
                "admin connection to {}: resolving the host timed out",
                u.endpoint()
            ),
        )
    })?
    .map_err(|e| {
        CredentialError::new(
            ErrorKind::Unavailable,
            format!(
                "admin connection to {}: cannot resolve the host: {e}",
                u.endpoint()
            ),
        )
    })?;
    let ips: Vec<_> = resolved.map(|a| a.ip()).collect();
    if ips.is_empty() {
        return Err(CredentialError::new(
            ErrorKind::Unavailable,
            format!(
                "admin connection to {}: the host resolves to no address",
                u.endpoint()
            ),
        ));
    }
    Ok(ips)
}

trait HostAddr {
    fn hostaddr_if_ip(&mut self, host: &str) -> &mut Self;
}

impl HostAddr for tokio_postgres::Config {
    /// Connect to the literal address when `host` is one, while verifying the
    /// certificate against the server name.
    fn hostaddr_if_ip(&mut self, host: &str) -> &mut Self {
        if let Ok(ip) = host.parse() {
            self.hostaddr(ip);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::{Purpose, REVOKE_CONNECTIONS};

    #[test]
    fn revocations_of_one_role_share_a_connection_and_roles_spread_over_all() {
        assert_eq!(
            Purpose::revoke("pgwarden_ab12"),
            Purpose::revoke("pgwarden_ab12")
        );
        let mut used = [0usize; REVOKE_CONNECTIONS];
        for i in 0..400 {
            match Purpose::revoke(&format!("pgwarden_{i:08x}")) {
                Purpose::Revoke(n) => used[n] += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(used.iter().all(|&n| n >= 50), "{used:?}");
    }
}
