//! The `vault` credential source: one `GET <mount>/creds/<role>` per upstream
//! connection, its lease renewed and revoked through `sys/leases`.
//!
//! Never shared, never reused: each issued credential goes to exactly one
//! connection, straight away or after waiting in the optional prefetch pool
//! (`credentials::prefetch`, which takes the Vault round trip off the connect
//! path). A credential that waited too long in the pool is revoked, not
//! handed out.
//!
//! A `creds` request, once sent, is never abandoned by pgwarden: Vault may
//! create the role whether or not anyone waits for the answer. Its HTTP
//! exchange may run [`LATE_ANSWER_PATIENCE`] past `[vault] timeout` (a
//! connection stops waiting at the timeout; see `credentials::issuance`).

mod client;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use reqwest::Method;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::{Credential, CredentialError, ErrorKind, Lease, LeaseId, Renewal};
use crate::config::VaultSourceConfig;
pub use client::{NotReady, SetupError, Vault};

/// How much longer than `[vault] timeout` a `creds` request may take before
/// pgwarden gives up on it. Only a Vault that stops answering altogether makes
/// a request run this long, and only then can its credential be lost.
pub const LATE_ANSWER_PATIENCE: Duration = Duration::from_secs(60);

pub struct VaultSource {
    config: VaultSourceConfig,
    vault: Arc<Vault>,
}

#[derive(Deserialize)]
struct Creds {
    username: String,
    password: SecretString,
}

impl VaultSource {
    pub fn new(config: VaultSourceConfig, vault: Arc<Vault>) -> Self {
        Self { config, vault }
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// `GET <mount>/creds/<role>`. Callers must let it run to the end: once
    /// the request is sent, Vault may issue the credential.
    pub async fn fetch(&self, endpoint: &str) -> Result<Credential, CredentialError> {
        let path = format!("{}/creds/{}", self.config.mount, self.config.role);
        let patience = self.vault.timeout + LATE_ANSWER_PATIENCE;
        let envelope = self
            .vault
            .request_within(Method::GET, &path, None, patience)
            .await?
            .ok_or_else(|| {
                CredentialError::new(ErrorKind::Unavailable, format!("{path}: empty response"))
            })?;
        if envelope.lease_id.is_empty() {
            return Err(CredentialError::new(
                ErrorKind::Refused,
                format!("{path}: response has no lease_id (is this a dynamic role?)"),
            ));
        }
        let creds: Creds = envelope
            .data
            .ok_or_else(|| {
                CredentialError::new(
                    ErrorKind::Unavailable,
                    format!("{path}: response has no data"),
                )
            })
            .and_then(|d| {
                serde_json::from_value(d).map_err(|_| {
                    CredentialError::new(
                        ErrorKind::Unavailable,
                        format!("{path}: data lacks username or password"),
                    )
                })
            })?;
        Ok(Credential {
            scram_keys: None,
            lease: Lease {
                id: LeaseId::new(envelope.lease_id),
                username: creds.username.clone(),
                endpoint: endpoint.to_owned(),
                issuer: String::new(),
                duration: Duration::from_secs(envelope.lease_duration),
                renewable: envelope.renewable,
                issued_at: Instant::now(),
            },
            username: creds.username,
            password: creds.password,
        })
    }

    /// `PUT sys/leases/renew`. A lease Vault no longer knows is `LeaseGone`;
    /// one past its max TTL is `NotRenewable`.
    pub async fn renew(
        &self,
        lease: &Lease,
        increment: Duration,
    ) -> Result<Renewal, CredentialError> {
        let body = json!({ "lease_id": lease.id.expose(), "increment": increment.as_secs() });
        match self
            .vault
            .request(Method::PUT, "sys/leases/renew", Some(body))
            .await
        {
            Ok(Some(env)) => Ok(Renewal {
                duration: Duration::from_secs(env.lease_duration),
            }),
            Ok(None) => Err(CredentialError::new(
                ErrorKind::Unavailable,
                "lease renewal: empty response",
            )),
            Err(e) if e.kind == ErrorKind::Refused => {
                let kind = if e.detail.contains("past the max TTL")
                    || e.detail.contains("not renewable")
                {
                    ErrorKind::NotRenewable
                } else if e.detail.contains("lease not found")
                    || e.detail.contains("lease expired")
                    || e.detail.contains("invalid lease")
                {
                    ErrorKind::LeaseGone
                } else {
                    ErrorKind::Refused
                };
                Err(CredentialError::new(kind, e.detail))
            }
            Err(e) => Err(e),
        }
    }

    /// `PUT sys/leases/revoke` (synchronous: 204 once the role is gone). Vault
    /// answers 204 for unknown leases too. Any failure is worth retrying.
    pub async fn revoke(&self, lease: &Lease) -> Result<(), CredentialError> {
        let body = json!({ "lease_id": lease.id.expose() });
        self.vault
            .request(Method::PUT, "sys/leases/revoke", Some(body))
            .await
            .map(|_| ())
            .map_err(|e| CredentialError::new(ErrorKind::Unavailable, e.detail))
    }

    pub fn renew_increment(&self, lease: &Lease) -> Duration {
        self.config.renew_increment.unwrap_or(lease.duration)
    }
}
