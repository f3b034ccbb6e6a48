//! Equality for the configuration types that hold secrets, so a reload can
//! tell a setting that changed from one that did not (a credential source
//! whose admin password file changed is rebuilt; one whose settings are the
//! same is carried over, connections and all).
//!
//! The secrets are compared, never printed; and each type is destructured in
//! full, so a field added later cannot be forgotten here.

use secrecy::{ExposeSecret, SecretString};

use super::{PostgresSourceConfig, VaultAuthConfig};

fn same_secret(a: &SecretString, b: &SecretString) -> bool {
    a.expose_secret() == b.expose_secret()
}

impl PartialEq for PostgresSourceConfig {
    fn eq(&self, other: &Self) -> bool {
        let PostgresSourceConfig {
            admin_user,
            admin_password,
            admin_database,
            member_of,
            ttl,
            max_ttl,
            role_prefix,
            prefetch,
            prefetch_max_age,
            on_lease_end,
            scram_iterations,
        } = self;
        *admin_user == other.admin_user
            && same_secret(admin_password, &other.admin_password)
            && *admin_database == other.admin_database
            && *member_of == other.member_of
            && *ttl == other.ttl
            && *max_ttl == other.max_ttl
            && *role_prefix == other.role_prefix
            && *prefetch == other.prefetch
            && *prefetch_max_age == other.prefetch_max_age
            && *on_lease_end == other.on_lease_end
            && *scram_iterations == other.scram_iterations
    }
}

impl PartialEq for VaultAuthConfig {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                VaultAuthConfig::Approle {
                    mount,
                    role_id,
                    secret_id_file,
                },
                VaultAuthConfig::Approle {
                    mount: m,
                    role_id: r,
                    secret_id_file: s,
                },
            ) => mount == m && same_secret(role_id, r) && secret_id_file == s,
            (
                VaultAuthConfig::Kubernetes {
                    mount,
                    role,
                    jwt_file,
                },
                VaultAuthConfig::Kubernetes {
                    mount: m,
                    role: r,
                    jwt_file: j,
                },
            ) => mount == m && role == r && jwt_file == j,
            (VaultAuthConfig::Token { token }, VaultAuthConfig::Token { token: t }) => {
                same_secret(token, t)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::OnLeaseEnd;

    fn source(password: &str) -> PostgresSourceConfig {
        PostgresSourceConfig {
            admin_user: "admin".into(),
            admin_password: SecretString::from(password.to_owned()),
            admin_database: "postgres".into(),
            member_of: vec!["owner".into()],
            ttl: Duration::from_secs(3600),
            max_ttl: None,
            role_prefix: "pgwarden_".into(),
            prefetch: 0,
            prefetch_max_age: Duration::from_secs(300),
            on_lease_end: OnLeaseEnd::default(),
            scram_iterations: std::num::NonZeroU32::new(16).unwrap(),
        }
    }

    #[test]
    fn a_changed_secret_makes_a_different_setting() {
        assert_eq!(source("one"), source("one"));
        assert_ne!(source("one"), source("two"));
        let token = |t: &str| VaultAuthConfig::Token {
            token: SecretString::from(t.to_owned()),
        };
        assert_eq!(token("a"), token("a"));
        assert_ne!(token("a"), token("b"));
    }
}
