//! The audit's catalogue: every check, the checklist item it serves, its
//! remedy, and what one run found for it.
//!
//! The set of checks and of statuses is fixed here, so the metric labels built
//! from them are bounded. A finding's evidence holds names, counts and
//! settings only: never a value read from a table, a password or a key.

use crate::metrics::{Entry, Label};

/// One check of the catalogue.
#[derive(Debug, PartialEq, Eq)]
pub struct Check {
    /// Stable id: the `check` label and the report's first column.
    pub id: &'static str,
    /// The item of the seed checklist it serves (`/work/shared/seed`, 1–10).
    pub item: u8,
    /// What to do when it does not pass, in one sentence.
    pub(crate) remedy: &'static str,
}

macro_rules! checks {
    ($($name:ident = $id:literal, $item:literal, $remedy:literal;)*) => {
        $(pub(crate) static $name: Check = Check { id: $id, item: $item, remedy: $remedy };)*
        /// Every check, in report order.
        pub(crate) static ALL: &[&Check] = &[$(&$name),*];
    };
}

checks! {
    TLS_SSL_ON = "tls.ssl_on", 1,
        "Set ssl = on in postgresql.conf (config/postgres/ssl.conf) with the server's certificate and key.";
    TLS_MIN_PROTOCOL = "tls.min_protocol", 1,
        "Set ssl_min_protocol_version = 'TLSv1.2' (or TLSv1.3) in postgresql.conf.";
    TLS_SERVER_CERTIFICATE = "tls.server_certificate", 1,
        "Renew the database server's certificate before it expires, signed by the CA in the route's ca_file.";
    TLS_UPSTREAM_VERIFY = "tls.upstream_verify", 1,
        "Set upstream.tls = \"verify-full\" on every route (and reach Vault over https://).";
    ACCOUNT_ROLE_ATTRIBUTES = "account.role_attributes", 2,
        "ALTER ROLE <role> NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS, and revoke powerful predefined roles, for the roles Keycloak's sessions log in as and act as.";
    ACCOUNT_GROUP_PRIVILEGES = "account.group_privileges", 2,
        "REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA <schema> FROM <steady-state role>: it needs SELECT, INSERT, UPDATE, DELETE and sequence usage only (config/vault/bootstrap.sql).";
    ACCOUNT_OWNS_NOTHING = "account.owns_nothing", 2,
        "REASSIGN OWNED BY <role> TO keycloak_owner: objects belong to the NOLOGIN owner role, never to the steady-state or per-connection roles.";
    ACCOUNT_NO_CREATE = "account.no_create", 2,
        "REVOKE CREATE ON SCHEMA <schema> and ON DATABASE <db> FROM the steady-state role; only the owner role migrates the schema.";
    ACCOUNT_NO_STATIC_LOGIN = "account.no_static_login", 2,
        "Drop the static LOGIN role (or revoke its membership) and let Keycloak reach the database only through pgwarden's per-connection roles.";
    ACCOUNT_PUBLIC_SCHEMA_CREATE = "account.public_schema_create", 2,
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC (config/vault/bootstrap.sql revokes everything).";
    PASSWORDS_ENCRYPTION = "passwords.encryption", 3,
        "Set password_encryption = 'scram-sha-256' in postgresql.conf (config/postgres/ssl.conf).";
    PASSWORDS_NO_MD5 = "passwords.no_md5", 3,
        "Set a new password for each listed role with password_encryption = 'scram-sha-256' (ALTER ROLE … PASSWORD with a verifier from `pgwarden scram-verifier`).";
    PASSWORDS_ISSUED_STRENGTH = "passwords.issued_strength", 3,
        "Give the credential source a password policy of at least 20 characters from 3 classes (config/vault/password-policy.hcl asks for 48).";
    ROTATION_DYNAMIC_SOURCE = "rotation.dynamic_source", 4,
        "Issue roles that expire by themselves: VALID UNTIL '{{expiration}}' in Vault's creation statements (config/vault/creation-*.sql).";
    ROTATION_LEASE_TTL = "rotation.lease_ttl", 4,
        "Shorten the credential's TTL to a day or less (Vault role default_ttl, or ttl of the built-in source).";
    ROTATION_MAX_TTL = "rotation.max_ttl", 4,
        "Set a maximum TTL of a week or less (Vault role max_ttl, or max_ttl of the built-in source) so no session renews its credential for ever.";
    ROTATION_ON_LEASE_END = "rotation.on_lease_end", 4,
        "Set on_lease_end = \"recycle-when-idle\" (or \"terminate\") so no session outlives its credential.";
    ROTATION_LEFTOVER_ROLES = "rotation.leftover_roles", 4,
        "Drop the expired leftover roles (their leases were never revoked) and find out from pgwarden's lease_revocation_failed records why.";
    ACCESS_HBA_METHODS = "access.hba_methods", 5,
        "Replace trust, password and md5 lines for the Keycloak database with scram-sha-256 (config/postgres/pg_hba.conf).";
    ACCESS_HBA_HOSTSSL = "access.hba_hostssl", 5,
        "Use hostssl (never host, hostnossl) for every line that admits the Keycloak database, and end pg_hba.conf with reject lines.";
    ACCESS_HBA_OPEN = "access.hba_open", 5,
        "Replace 0.0.0.0/0, ::/0 and all with the addresses of pgwarden and Vault only (/32 or the network they run in).";
    ACCESS_LISTEN_ADDRESSES = "access.listen_addresses", 5,
        "Set listen_addresses to the interfaces pgwarden and Vault reach, and firewall the port to those hosts.";
    ACCESS_ALLOWLIST = "access.allowlist", 5,
        "Narrow [listen] allow to Keycloak's addresses; never 0.0.0.0/0 or ::/0.";
    SENSITIVE_REALM_KEYS = "sensitive.realm_keys", 6,
        "Move realm keys out of the database: a java-keystore key provider backed by a keystore (or an HSM) and the generated providers disabled, with encrypted storage for the database.";
    SENSITIVE_CLIENT_SECRETS = "sensitive.client_secrets", 6,
        "Prefer client authentication without a shared secret (signed JWT with a key, or mutual TLS) for confidential clients; Keycloak must read remaining secrets itself, so pgcrypto cannot hide them.";
    SENSITIVE_LDAP_BIND = "sensitive.ldap_bind_credentials", 6,
        "Store the LDAP/Kerberos bind credential in Keycloak's vault SPI and write ${vault.<key>} in the provider instead of the password.";
    SENSITIVE_IDP_SECRETS = "sensitive.idp_client_secrets", 6,
        "Store identity providers' client secrets in Keycloak's vault SPI and write ${vault.<key>} instead of the secret.";
    SENSITIVE_OTP_SECRETS = "sensitive.otp_secrets", 6,
        "OTP seeds must stay readable to Keycloak: protect them with encrypted storage and backups, and restrict who can read the credential table.";
    SENSITIVE_SMTP_PASSWORDS = "sensitive.smtp_passwords", 6,
        "Store the realm's SMTP password in Keycloak's vault SPI and write ${vault.<key>} instead of the password.";
    SENSITIVE_PERSONAL_DATA = "sensitive.personal_data", 6,
        "Personal data stays readable to Keycloak: limit event retention (events expiration), keep admin events without representations, and encrypt storage and backups.";
    SENSITIVE_PGCRYPTO = "sensitive.pgcrypto", 6,
        "Install the pgcrypto extension (PostgreSQL contrib) for the deployment's own tables; Keycloak's own columns cannot use it.";
    LOGGING_CONNECTIONS = "logging.connections", 9,
        "Set log_connections = on and log_disconnections = on (config/postgres/logging.conf).";
    LOGGING_LINE_PREFIX = "logging.line_prefix", 9,
        "Set a log_line_prefix with %p, %u, %d and %h, e.g. '%m [%p] %q user=%u db=%d client=%h app=%a ' (config/postgres/logging.conf).";
    LOGGING_DDL = "logging.ddl", 9,
        "Set log_statement = 'ddl' so schema changes are recorded (config/postgres/logging.conf).";
    LOGGING_ISSUER_STATEMENTS = "logging.issuer_statements", 9,
        "Keep the credential issuer's statements out of the server log: ALTER ROLE <issuer> SET log_statement = 'none' and log_min_error_statement = 'panic' (config/vault/bootstrap.sql).";
    MONITORING_ADMIN_LISTENER = "monitoring.admin_listener", 10,
        "Configure [admin] address so pgwarden serves /metrics, /healthz and /readyz.";
    MONITORING_METRICS = "monitoring.metrics", 10,
        "Run pgwarden with its admin listener reachable where Prometheus scrapes it (config/prometheus/prometheus.yml).";
    MONITORING_CONTINUOUS = "monitoring.continuous_audit", 10,
        "Add [audit] interval = \"1h\" so pgwarden run checks the checklist continuously and alerts on a failing check.";
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Pass,
    Warn,
    /// Could not be checked: the auditing role lacks a privilege, or the
    /// database could not be reached. Never a guess.
    Unknown,
    Fail,
}

/// The `status` label of `pgwarden_audit_check`, and the report's word.
impl Label for Status {
    const ALL: &'static [Status] = &[Status::Pass, Status::Warn, Status::Unknown, Status::Fail];

    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Unknown => "unknown",
            Status::Fail => "fail",
        }
    }
}

/// A check's `check` and `item` labels of `pgwarden_audit_check`.
impl Entry for Check {
    fn labels(&self) -> Vec<(&'static str, &'static str)> {
        vec![("check", self.id), ("item", item_label(self.item))]
    }
}

/// The `item` label: the checklist item's number.
fn item_label(item: u8) -> &'static str {
    const ITEMS: [&str; 11] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
    ITEMS.get(item as usize).copied().unwrap_or("0")
}

/// What one run found for one check.
#[derive(Debug, Clone)]
pub struct Finding {
    pub check: &'static Check,
    pub status: Status,
    /// Names, counts and settings that support the status.
    pub evidence: String,
    /// For `unknown`: the privilege (or access) the audit lacked.
    pub lacks: Option<String>,
}

impl Finding {
    pub(crate) fn new(check: &'static Check, status: Status, evidence: impl Into<String>) -> Self {
        Finding {
            check,
            status,
            evidence: evidence.into(),
            lacks: None,
        }
    }

    pub(crate) fn pass(check: &'static Check, evidence: impl Into<String>) -> Self {
        Self::new(check, Status::Pass, evidence)
    }

    pub(crate) fn warn(check: &'static Check, evidence: impl Into<String>) -> Self {
        Self::new(check, Status::Warn, evidence)
    }

    pub(crate) fn fail(check: &'static Check, evidence: impl Into<String>) -> Self {
        Self::new(check, Status::Fail, evidence)
    }

    /// Not checked, because the audit lacked `lacks`.
    pub(crate) fn unknown(
        check: &'static Check,
        lacks: impl Into<String>,
        evidence: impl Into<String>,
    ) -> Self {
        Finding {
            check,
            status: Status::Unknown,
            evidence: evidence.into(),
            lacks: Some(lacks.into()),
        }
    }
}

/// At most `n` names, then how many more: evidence stays one line.
pub(crate) fn names(list: &[String], n: usize) -> String {
    let shown: Vec<&str> = list.iter().take(n).map(String::as_str).collect();
    match list.len().saturating_sub(n) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_items_are_the_checklist_s() {
        let mut ids: Vec<&str> = ALL.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), ALL.len());
        for c in ALL {
            assert!([1, 2, 3, 4, 5, 6, 9, 10].contains(&c.item), "{}", c.id);
            assert!(c.remedy.ends_with('.'), "{}", c.id);
            assert_eq!(
                c.labels(),
                [("check", c.id), ("item", c.item.to_string().as_str())]
            );
            assert!(c.id.chars().all(|ch| ch.is_ascii_lowercase()
                || ch.is_ascii_digit()
                || ch == '.'
                || ch == '_'));
        }
    }

    #[test]
    fn a_failure_is_worse_than_an_unknown_which_is_worse_than_a_warning() {
        assert!(Status::Fail > Status::Unknown);
        assert!(Status::Unknown > Status::Warn);
        assert!(Status::Warn > Status::Pass);
        assert_eq!(
            names(&["a".into(), "b".into(), "c".into()], 2),
            "a, b and 1 more"
        );
    }
}
