//! The built-in `postgres` credential source: a LOGIN role per connection,
//! created through an admin connection and dropped when the session ends.
//!
//! Each role gets a random name under the configured prefix, a random 40-character
//! password sent to the server only as a SCRAM verifier (so not even the
//! server's statement log sees it), `VALID UNTIL now + ttl`, and membership in
//! the configured roles. Renewal moves `VALID UNTIL`; revocation drops the role.
//! At start-up, roles under the prefix whose validity has passed are removed.
//! This source never logs a password or a verifier.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use secrecy::ExposeSecret;
use tokio::sync::Mutex;

use super::{Credential, CredentialError, ErrorKind, Lease, LeaseId, Renewal};
use crate::auth::verifier::{GENERATED_PASSWORD_LEN, ScramKeys, generate_password};
use crate::config::{PostgresSourceConfig, UpstreamConfig};

mod admin;
use admin::{AdminConnection, Purpose, admin_key};

/// Length of the random part of a role name.
const ROLE_SUFFIX_LEN: usize = 20;
pub struct PostgresSource {
    config: PostgresSourceConfig,
    /// Admin connections by upstream server and TLS settings (see
    /// [`admin_key`]), database and [`Purpose`], opened on first use and
    /// reopened when they break.
    admins: Mutex<HashMap<(String, String, Purpose), Arc<AdminConnection>>>,
    /// The upstream each lease's `issuer` names (its server, TLS settings and
    /// the route's database), for renewal and revocation.
    issuers: std::sync::Mutex<HashMap<String, UpstreamConfig>>,
    /// See [`PostgresSource::take_orphans`].
    orphans: std::sync::Mutex<Vec<Lease>>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PostgresSource {
    pub fn new(config: PostgresSourceConfig) -> Self {
        Self {
            config,
            admins: Mutex::new(HashMap::new()),
            issuers: std::sync::Mutex::new(HashMap::new()),
            orphans: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.config.ttl
    }

    pub async fn issue(&self, upstream: &UpstreamConfig) -> Result<Credential, CredentialError> {
        let admin = self
            .admin(upstream, &self.config.admin_database, Purpose::Issue)
            .await;
        let username = format!(
            "{}{}",
            self.config.role_prefix,
            random_lowercase(ROLE_SUFFIX_LEN)
        );
        let password = generate_password(GENERATED_PASSWORD_LEN);
        // The keys made here serve the verifier and, later, the upstream login.
        // A count above the default runs PBKDF2 long enough to belong on the
        // blocking pool, off the runtime workers that relay sessions.
        let iterations = self.config.scram_iterations;
        let keys = if iterations.get() <= 1024 {
            ScramKeys::for_new_password(&password, iterations)
        } else {
            let password = password.clone();
            tokio::task::spawn_blocking(move || ScramKeys::for_new_password(&password, iterations))
                .await
                .map_err(|_| {
                    CredentialError::new(
                        ErrorKind::Unavailable,
                        "SCRAM key derivation did not finish",
                    )
                })?
        };
        let verifier = keys.verifier().to_text();
        let mut sql = format!(
            "CREATE ROLE {} LOGIN PASSWORD {} VALID UNTIL {}",
            quote_ident(&username),
            quote_literal(verifier.expose_secret()),
            quote_literal(&timestamp_in(self.config.ttl)),
        );
        if !self.config.member_of.is_empty() {
            let roles: Vec<String> = self
                .config
                .member_of
                .iter()
                .map(|r| quote_ident(r))
                .collect();
            sql.push_str(" IN ROLE ");
            sql.push_str(&roles.join(", "));
        }
        let lease = Lease {
            id: LeaseId::new(format!("postgres/{}/{}", upstream.endpoint(), username)),
            username: username.clone(),
            endpoint: upstream.endpoint(),
            issuer: self.issuer(upstream),
            duration: self.config.ttl,
            renewable: true,
            issued_at: Instant::now(),
        };
        let client = admin.client(&self.config).await?;
        if let Err(e) = admin.run(&client, &sql).await {
            if e.kind == ErrorKind::Unavailable {
                // Sent, but no answer: the role may exist. Revoking it
                // (DROP ROLE IF EXISTS) is harmless if it does not. Best
                // effort: should the old backend commit only after the drop
                // ran (a commit waiting on a synchronous standby), the role
                // stays until its VALID UNTIL and the next start-up's sweep;
                // nobody holds its password.
                lock(&self.orphans).push(lease);
            }
            return Err(e);
        }
        Ok(Credential {
            lease,
            username,
            password,
            scram_keys: Some(Arc::new(keys)),
        })
    }

    /// Leases of `CREATE ROLE`s that were sent but got no answer, for the
    /// revoker: each may have created its role.
    pub fn take_orphans(&self) -> Vec<Lease> {
        std::mem::take(&mut *lock(&self.orphans))
    }

    pub async fn renew(
        &self,
        lease: &Lease,
        increment: Duration,
    ) -> Result<Renewal, CredentialError> {
        let mut duration = increment;
        if let Some(max) = self.config.max_ttl {
            let left = max.saturating_sub(lease.issued_at.elapsed());
            if left < Duration::from_secs(1) {
                return Err(CredentialError::new(
                    ErrorKind::NotRenewable,
                    "max_ttl reached",
                ));
            }
            duration = duration.min(left);
        }
        let upstream = self.upstream_of(lease)?;
        let admin = self
            .admin(&upstream, &self.config.admin_database, Purpose::Upkeep)
            .await;
        let sql = format!(
            "ALTER ROLE {} VALID UNTIL {}",
            quote_ident(&lease.username),
            quote_literal(&timestamp_in(duration))
        );
        match admin.execute(&sql, &self.config).await {
            Err(e) if e.detail.contains("42704") => Err(CredentialError::new(
                ErrorKind::LeaseGone,
                "role no longer exists",
            )),
            other => other.map(|_| Renewal { duration }),
        }
    }

    pub async fn revoke(&self, lease: &Lease) -> Result<(), CredentialError> {
        let upstream = self.upstream_of(lease)?;
        self.drop_role(&upstream, &lease.username).await
    }

    /// Ends the role's sessions, then drops it. PostgreSQL would drop a role
    /// that is still logged in and leave its sessions running: a backend a
    /// client left mid-loop would go on with the role's rights. Should the
    /// role own objects or hold privileges (a client that ran `SET ROLE NONE`
    /// and created something), they are handed to the admin user and revoked
    /// first, in the route's database — where the role could act — and in the
    /// admin database, since `REASSIGN OWNED` and `DROP OWNED` act only in the
    /// database they run in.
    async fn drop_role(
        &self,
        upstream: &UpstreamConfig,
        role: &str,
    ) -> Result<(), CredentialError> {
        let admin_db = &self.config.admin_database;
        let upkeep = self.admin(upstream, admin_db, Purpose::revoke(role)).await;
        let member = format!("GRANT {} TO CURRENT_USER", quote_ident(role));
        let backends = upkeep.backends_of(role, &self.config).await?;
        if !backends.is_empty() {
            // Signalling a backend needs the privileges of its role.
            let pids: Vec<String> = backends.iter().map(i32::to_string).collect();
            let terminate = format!(
                "{member}; SELECT pg_terminate_backend(pid, 5000) FROM unnest(ARRAY[{}]::int[]) AS pid",
                pids.join(",")
            );
            upkeep.execute(&terminate, &self.config).await?;
        }
        let drop = format!("DROP ROLE IF EXISTS {}", quote_ident(role));
        match upkeep.execute(&drop, &self.config).await {
            Err(e) if e.detail.contains("2BP01") => {
                // Membership in the role is what REASSIGN/DROP OWNED require.
                let clean = format!(
                    "{member}; REASSIGN OWNED BY {0} TO {1}; DROP OWNED BY {0}",
                    quote_ident(role),
                    quote_ident(&self.config.admin_user),
                );
                let mut databases = vec![upstream.database.as_str()];
                if upstream.database != *admin_db {
                    databases.push(admin_db);
                }
                for database in databases {
                    let admin = self.admin(upstream, database, Purpose::revoke(role)).await;
                    admin.execute(&clean, &self.config).await?;
                }
                upkeep.execute(&drop, &self.config).await
            }
            other => other,
        }
    }

    /// Drops roles under our prefix whose `VALID UNTIL` has passed: leftovers
    /// of a run that could not revoke them.
    pub async fn remove_expired_leftovers(&self, upstreams: &[&UpstreamConfig]) {
        for upstream in upstreams {
            let admin = self
                .admin(upstream, &self.config.admin_database, Purpose::Upkeep)
                .await;
            let pattern = format!("{}%", like_escape(&self.config.role_prefix));
            let rows = match admin
                .query_names(
                    "SELECT rolname FROM pg_roles WHERE rolname LIKE $1 AND rolvaliduntil < now()",
                    &pattern,
                    &self.config,
                )
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(upstream = %upstream.endpoint(), error = %e, "could not look for leftover roles");
                    continue;
                }
            };
            for name in rows {
                match self.drop_role(upstream, &name).await {
                    Ok(()) => {
                        tracing::info!(upstream = %upstream.endpoint(), role = %name, "removed expired leftover role")
                    }
                    Err(e) => {
                        tracing::warn!(upstream = %upstream.endpoint(), role = %name, error = %e, "could not remove leftover role")
                    }
                }
            }
        }
    }

    async fn admin(
        &self,
        upstream: &UpstreamConfig,
        database: &str,
        purpose: Purpose,
    ) -> Arc<AdminConnection> {
        let mut admins = self.admins.lock().await;
        admins
            .entry((admin_key(upstream), database.to_owned(), purpose))
            .or_insert_with(|| {
                Arc::new(AdminConnection {
                    upstream: upstream.clone(),
                    database: database.to_owned(),
                    client: Mutex::new(None),
                })
            })
            .clone()
    }

    /// The `issuer` of leases issued for `upstream`, remembered so that
    /// renewal and revocation reach the same server the same way.
    fn issuer(&self, upstream: &UpstreamConfig) -> String {
        let key = issuer_key(upstream);
        lock(&self.issuers)
            .entry(key.clone())
            .or_insert_with(|| upstream.clone());
        key
    }

    fn upstream_of(&self, lease: &Lease) -> Result<UpstreamConfig, CredentialError> {
        lock(&self.issuers)
            .get(&lease.issuer)
            .cloned()
            .ok_or_else(|| {
                CredentialError::new(ErrorKind::LeaseGone, "lease belongs to no known upstream")
            })
    }
}

/// What a lease's `issuer` says for `upstream`: its server, TLS settings and
/// database. Roles issued for one upstream are used only for that one.
pub fn issuer_key(upstream: &UpstreamConfig) -> String {
    format!("{} database={:?}", admin_key(upstream), upstream.database)
}

/// `"name"`, with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'`, with embedded quotes doubled (standard_conforming_strings is on).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// `now + d` as an ISO 8601 UTC timestamp PostgreSQL accepts.
fn timestamp_in(d: Duration) -> String {
    humantime::format_rfc3339_seconds(SystemTime::now() + d).to_string()
}

fn random_lowercase(n: usize) -> String {
    use secrecy::ExposeSecret;
    // Letters and digits, lower-cased: role names stay unquoted-looking.
    let raw = generate_password(n * 2);
    raw.expose_secret()
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(like_escape("pg_w%"), "pg\\_w\\%");
    }

    #[test]
    fn role_names_fit_postgres_limits() {
        let n = format!(
            "{}{}",
            crate::config::raw::DEFAULT_ROLE_PREFIX,
            random_lowercase(ROLE_SUFFIX_LEN)
        );
        assert!(n.len() <= 63);
        assert!(
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
    }
}
