//! The credential sources (`[credentials.*]`) and `[vault]`: each dispatched
//! on its tag (`source`, `auth.method`) by hand rather than by serde, so that
//! an error inside one names its key.

use std::time::Duration;

use secrecy::SecretString;

use super::super::raw;
use super::super::{
    CredentialsConfig, PostgresSourceConfig, VaultAuthConfig, VaultConfig, VaultSourceConfig,
};
use super::Validator;
use crate::auth::verifier::MAX_SCRAM_ITERATIONS;

/// The most credentials a source issues ahead (per upstream for the built-in
/// source): each is a live role or lease waiting to be used.
pub const MAX_PREFETCH: usize = 64;

impl Validator<'_> {
    /// One `[credentials.<name>]` table.
    pub(super) fn source(&mut self, name: &str, v: toml::Value) -> Option<raw::Credentials> {
        let what = format!("[credentials.{name}]");
        let (tag, rest) = self.tagged(&what, v, "source", &["postgres", "vault"])?;
        Some(match tag.as_str() {
            "postgres" => raw::Credentials::Postgres(self.section(&what, rest)?),
            _ => raw::Credentials::Vault(self.section(&what, rest)?),
        })
    }

    fn vault_auth(&mut self, v: toml::Value) -> Option<raw::VaultAuth> {
        let what = "[vault] auth";
        let (tag, rest) = self.tagged(what, v, "method", &["approle", "kubernetes", "token"])?;
        Some(match tag.as_str() {
            "approle" => raw::VaultAuth::Approle(self.section(what, rest)?),
            "kubernetes" => raw::VaultAuth::Kubernetes(self.section(what, rest)?),
            _ => raw::VaultAuth::Token(self.section(what, rest)?),
        })
    }

    /// `https://`, or `http://` to a loopback address (a Vault Agent on this
    /// host) or with `allow_insecure_http`: over plain HTTP pgwarden's token,
    /// secret id or JWT and every issued password cross the network in clear.
    /// The address is not echoed (it is no secret, but may carry userinfo).
    fn vault_address(&mut self, address: &str, allow_insecure_http: bool) {
        let url = match reqwest::Url::parse(address) {
            Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => u,
            _ => {
                self.err(
                    "[vault] address: not a URL with a host (e.g. https://vault.internal:8200)"
                        .into(),
                );
                return;
            }
        };
        match url.scheme() {
            "https" => {}
            "http" if allow_insecure_http || is_loopback(&url) => {}
            "http" => self.err(
                "[vault] address: http:// sends pgwarden's Vault token and every issued password \
                 in clear; use https://, or http:// only to a loopback address (127.0.0.0/8, ::1, \
                 localhost), or set allow_insecure_http = true to accept the risk"
                    .into(),
            ),
            _ => self.err("[vault] address: must start with https:// (or http://)".into()),
        }
    }

    /// Splits the string `tag` off a table: `(its value, the rest)`.
    fn tagged(
        &mut self,
        what: &str,
        value: toml::Value,
        tag: &str,
        known: &[&str],
    ) -> Option<(String, toml::Value)> {
        let expected = known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let toml::Value::Table(mut table) = value else {
            self.err(format!("{what}: must be a table"));
            return None;
        };
        match table.remove(tag) {
            Some(toml::Value::String(s)) if known.contains(&s.as_str()) => {
                Some((s, toml::Value::Table(table)))
            }
            Some(_) => {
                self.err(format!(
                    "{what} `{tag}`: unknown value, expected one of {expected}"
                ));
                None
            }
            None => {
                self.err(format!("{what}: missing field `{tag}` (one of {expected})"));
                None
            }
        }
    }

    pub(super) fn credential(
        &mut self,
        name: &str,
        c: raw::Credentials,
    ) -> Option<CredentialsConfig> {
        let what = format!("[credentials.{name}]");
        match c {
            raw::Credentials::Postgres(p) => {
                let password = match (p.admin_password, &p.admin_password_file) {
                    (Some(pw), None) => Some(pw),
                    (None, Some(f)) => self.secret_file(&format!("{what} admin_password_file"), f),
                    (Some(_), Some(_)) => {
                        self.err(format!(
                            "{what}: give admin_password or admin_password_file, not both"
                        ));
                        None
                    }
                    (None, None) => {
                        self.err(format!(
                            "{what}: needs admin_password_file (or admin_password)"
                        ));
                        None
                    }
                };
                if p.ttl.as_secs() < 1 {
                    self.err(format!("{what}: ttl must be at least 1s"));
                }
                if matches!(p.max_ttl, Some(m) if m < p.ttl) {
                    self.err(format!("{what}: max_ttl must not be shorter than ttl"));
                }
                if p.role_prefix.is_empty() || p.role_prefix.len() > 32 {
                    self.err(format!("{what}: role_prefix must be 1 to 32 characters"));
                }
                self.prefetch(&what, p.prefetch, p.prefetch_max_age);
                if !(1..=MAX_SCRAM_ITERATIONS).contains(&p.scram_iterations) {
                    self.err(format!(
                        "{what}: scram_iterations must be 1 to {MAX_SCRAM_ITERATIONS}"
                    ));
                }
                if p.prefetch > 0 && p.prefetch_max_age >= p.ttl {
                    self.err(format!(
                        "{what}: prefetch_max_age must be shorter than ttl (a credential \
                         waiting longer would be stopped as soon as it is used)"
                    ));
                }
                Some(CredentialsConfig::Postgres(PostgresSourceConfig {
                    admin_user: p.admin_user,
                    admin_password: password?,
                    admin_database: p.admin_database,
                    member_of: p.member_of,
                    ttl: p.ttl,
                    max_ttl: p.max_ttl,
                    role_prefix: p.role_prefix,
                    prefetch: p.prefetch,
                    prefetch_max_age: p.prefetch_max_age,
                    on_lease_end: p.on_lease_end,
                    // 0 was reported above; the configuration is refused then.
                    scram_iterations: std::num::NonZeroU32::new(p.scram_iterations)
                        .unwrap_or(std::num::NonZeroU32::MIN),
                }))
            }
            raw::Credentials::Vault(v) => {
                if v.role.is_empty() || v.mount.is_empty() {
                    self.err(format!("{what}: mount and role must not be empty"));
                }
                self.prefetch(&what, v.prefetch, v.prefetch_max_age);
                Some(CredentialsConfig::Vault(VaultSourceConfig {
                    mount: v.mount.trim_matches('/').to_owned(),
                    role: v.role,
                    prefetch: v.prefetch,
                    prefetch_max_age: v.prefetch_max_age,
                    renew_increment: v.renew_increment,
                    on_lease_end: v.on_lease_end,
                }))
            }
        }
    }

    /// `prefetch` within [`MAX_PREFETCH`], and a `prefetch_max_age` a
    /// credential can be used within.
    fn prefetch(&mut self, what: &str, prefetch: usize, max_age: Duration) {
        if prefetch > MAX_PREFETCH {
            self.err(format!("{what}: prefetch must be at most {MAX_PREFETCH}"));
        }
        if max_age < Duration::from_secs(1) {
            self.err(format!("{what}: prefetch_max_age must be at least 1s"));
        }
    }

    pub(super) fn vault(
        &mut self,
        v: raw::Vault,
        token_env: Option<SecretString>,
    ) -> Option<VaultConfig> {
        self.vault_address(&v.address, v.allow_insecure_http);
        let ca_file = v
            .ca_file
            .as_deref()
            .and_then(|f| self.readable("[vault] ca_file", f));
        let client_cert_file = v
            .client_cert_file
            .as_deref()
            .and_then(|f| self.readable("[vault] client_cert_file", f));
        let client_key_file = v
            .client_key_file
            .as_deref()
            .and_then(|f| self.readable("[vault] client_key_file", f));
        if client_cert_file.is_some() != client_key_file.is_some() {
            self.err("[vault] client_cert_file and client_key_file go together".into());
        }
        let auth = match self.vault_auth(v.auth)? {
            raw::VaultAuth::Approle(a) => {
                let role_id = match (a.role_id, &a.role_id_file) {
                    (Some(r), None) => Some(r),
                    (None, Some(f)) => self.secret_file("[vault] auth role_id_file", f),
                    _ => {
                        self.err(
                            "[vault] auth: approle needs exactly one of role_id, role_id_file"
                                .into(),
                        );
                        None
                    }
                };
                let secret_id_file =
                    self.readable("[vault] auth secret_id_file", &a.secret_id_file);
                VaultAuthConfig::Approle {
                    mount: a.mount,
                    role_id: role_id?,
                    secret_id_file: secret_id_file?,
                }
            }
            raw::VaultAuth::Kubernetes(k) => VaultAuthConfig::Kubernetes {
                mount: k.mount,
                role: k.role,
                jwt_file: self.readable("[vault] auth jwt_file", &k.jwt_file)?,
            },
            raw::VaultAuth::Token(t) => {
                let token = match &t.token_file {
                    Some(f) => self.secret_file("[vault] auth token_file", f),
                    None => {
                        if token_env.is_none() {
                            self.err("[vault] auth: method = \"token\" needs token_file or the VAULT_TOKEN environment variable".into());
                        }
                        token_env
                    }
                };
                VaultAuthConfig::Token { token: token? }
            }
        };
        Some(VaultConfig {
            address: v.address.trim_end_matches('/').to_owned(),
            ca_file,
            client_cert_file,
            client_key_file,
            namespace: v.namespace,
            timeout: v.timeout,
            health_check_interval: v
                .health_check_interval
                .max(std::time::Duration::from_millis(100)),
            auth,
        })
    }
}

/// Whether `url` names this host: 127.0.0.0/8, ::1 or `localhost`.
pub fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}
