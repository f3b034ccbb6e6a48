//! Checklist item 6, sensitive data: where Keycloak keeps secrets and personal
//! data in its own schema (DESIGN.md §7, a real Keycloak 26.1 schema), as
//! counts, and whether pgcrypto is there for the deployment's own tables.
//!
//! Every query returns counts only. The vault-reference test (`${vault.…}`)
//! runs inside the server; no value of these tables ever reaches pgwarden.
//! pgcrypto cannot protect Keycloak's own columns — Keycloak reads them
//! itself — so the remedies name Keycloak's vault SPI, a keystore or HSM key
//! provider, and encrypted storage instead.

use super::super::check::{
    Check, Finding, SENSITIVE_CLIENT_SECRETS, SENSITIVE_IDP_SECRETS, SENSITIVE_LDAP_BIND,
    SENSITIVE_OTP_SECRETS, SENSITIVE_PERSONAL_DATA, SENSITIVE_PGCRYPTO, SENSITIVE_REALM_KEYS,
    SENSITIVE_SMTP_PASSWORDS,
};
use super::super::connection::{ident, literal, number, text};
use super::super::context::Ctx;

/// A value that is a reference into Keycloak's vault SPI, not the secret
/// (an escape string, so it reads the same whatever
/// `standard_conforming_strings` says).
const VAULT_REF: &str = r"E'^\\$\\{vault\\.[^}]+\\}$'";
const KEY_PROVIDER: &str = "'org.keycloak.keys.KeyProvider'";
const USER_STORAGE: &str = "'org.keycloak.storage.UserStorageProvider'";

/// The tables read here, as Keycloak 26 names them.
const TABLES: &[&str] = &[
    "component",
    "component_config",
    "client",
    "identity_provider_config",
    "credential",
    "realm_smtp_config",
    "user_entity",
    "user_attribute",
    "event_entity",
    "admin_event_entity",
];

const SECRET_CHECKS: [&Check; 7] = [
    &SENSITIVE_REALM_KEYS,
    &SENSITIVE_CLIENT_SECRETS,
    &SENSITIVE_LDAP_BIND,
    &SENSITIVE_IDP_SECRETS,
    &SENSITIVE_OTP_SECRETS,
    &SENSITIVE_SMTP_PASSWORDS,
    &SENSITIVE_PERSONAL_DATA,
];

/// Keycloak's schema and which of [`TABLES`] it has.
struct Schema {
    name: String,
    tables: Vec<String>,
}

impl Schema {
    fn has(&self, table: &str) -> bool {
        self.tables.iter().any(|t| t == table)
    }
    fn t(&self, table: &str) -> String {
        format!("{}.{}", ident(&self.name), ident(table))
    }
}

pub(in crate::audit) async fn run(ctx: &mut Ctx<'_>, out: &mut Vec<Finding>) {
    match schema(ctx).await {
        Ok(Some(s)) => {
            out.push(realm_keys(ctx, &s).await);
            out.push(client_secrets(ctx, &s).await);
            out.push(clear_secrets(ctx, &s, &SENSITIVE_LDAP_BIND).await);
            out.push(clear_secrets(ctx, &s, &SENSITIVE_IDP_SECRETS).await);
            out.push(otp_secrets(ctx, &s).await);
            out.push(clear_secrets(ctx, &s, &SENSITIVE_SMTP_PASSWORDS).await);
            out.push(personal_data(ctx, &s).await);
        }
        Ok(None) => {
            let db = &ctx.route.upstream.database;
            for check in SECRET_CHECKS {
                out.push(Finding::warn(
                    check,
                    format!("no Keycloak schema (no `realm` table) in database {db}: nothing to inventory yet"),
                ));
            }
        }
        Err(f) => {
            for check in SECRET_CHECKS {
                out.push(Finding { check, ..f.clone() });
            }
        }
    }
    out.push(pgcrypto(ctx).await);
}

async fn schema(ctx: &mut Ctx<'_>) -> Result<Option<Schema>, Finding> {
    let check = &SENSITIVE_REALM_KEYS;
    let Some(name) = ctx.keycloak_schema(check).await? else {
        return Ok(None);
    };
    let list: Vec<String> = TABLES.iter().map(|t| literal(t)).collect();
    let rows = ctx
        .query(
            check,
            "USAGE on Keycloak's schema",
            &format!(
                "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = {} AND c.relname IN ({})",
                literal(&name),
                list.join(", ")
            ),
        )
        .await?;
    Ok(Some(Schema {
        name,
        tables: rows.iter().map(|r| text(r, 0)).collect(),
    }))
}

/// Runs a count query on Keycloak's tables for `check`.
async fn counts(
    ctx: &mut Ctx<'_>,
    check: &'static Check,
    s: &Schema,
    tables: &[&str],
    sql: String,
) -> Result<Option<Vec<i64>>, Finding> {
    if tables.iter().any(|t| !s.has(t)) {
        return Ok(None);
    }
    let privilege = format!(
        "SELECT, unrestricted by row-level security, on {}",
        tables
            .iter()
            .map(|t| format!("{}.{t}", s.name))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let row = ctx.query_one(check, &privilege, &sql).await?;
    Ok(Some((0..row.len()).map(|i| number(&row, i)).collect()))
}

fn absent(check: &'static Check, tables: &[&str]) -> Finding {
    Finding::pass(
        check,
        format!("no {} table in Keycloak's schema", tables.join("/")),
    )
}

async fn realm_keys(ctx: &mut Ctx<'_>, s: &Schema) -> Finding {
    let check = &SENSITIVE_REALM_KEYS;
    let tables = ["component", "component_config"];
    let sql = format!(
        "SELECT count(DISTINCT c.id) FILTER (WHERE cc.name ILIKE '%privatekey' OR cc.name = 'secret'), \
                count(DISTINCT c.realm_id) FILTER (WHERE cc.name ILIKE '%privatekey' OR cc.name = 'secret'), \
                count(DISTINCT c.id) FILTER (WHERE cc.name IN ('keystorePassword', 'keyPassword') \
                                             AND cc.value !~ {VAULT_REF}) \
         FROM {} c JOIN {} cc ON cc.component_id = c.id \
         WHERE c.provider_type = {KEY_PROVIDER} AND coalesce(cc.value, '') <> ''",
        s.t("component"),
        s.t("component_config")
    );
    match counts(ctx, check, s, &tables, sql).await {
        Ok(None) => absent(check, &tables),
        Ok(Some(n)) if n[0] == 0 && n[2] == 0 => Finding::pass(
            check,
            "no key provider keeps a private key or secret in component_config",
        ),
        Ok(Some(n)) => Finding::warn(
            check,
            format!(
                "{} key providers in {} realms keep private keys or HMAC/AES secrets in component_config; \
                 {} keystore providers keep their password in clear",
                n[0], n[1], n[2]
            ),
        ),
        Err(f) => f,
    }
}

async fn client_secrets(ctx: &mut Ctx<'_>, s: &Schema) -> Finding {
    let check = &SENSITIVE_CLIENT_SECRETS;
    let sql = format!(
        "SELECT count(*) FILTER (WHERE NOT public_client AND coalesce(secret, '') <> ''), count(*) FROM {}",
        s.t("client")
    );
    match counts(ctx, check, s, &["client"], sql).await {
        Ok(None) => absent(check, &["client"]),
        Ok(Some(n)) if n[0] == 0 => Finding::pass(
            check,
            format!("no client of {} keeps a secret in client.secret", n[1]),
        ),
        Ok(Some(n)) => Finding::warn(
            check,
            format!(
                "{} of {} clients are confidential with a secret in client.secret",
                n[0], n[1]
            ),
        ),
        Err(f) => f,
    }
}

/// Credentials Keycloak can take from its vault SPI: any stored in clear fails.
async fn clear_secrets(ctx: &mut Ctx<'_>, s: &Schema, check: &'static Check) -> Finding {
    let (tables, sql, what): (&[&str], String, &str) = if check == &SENSITIVE_LDAP_BIND {
        (
            &["component", "component_config"],
            format!(
                "SELECT count(*) FILTER (WHERE cc.value !~ {VAULT_REF}), count(*) \
                 FROM {} c JOIN {} cc ON cc.component_id = c.id \
                 WHERE c.provider_type = {USER_STORAGE} AND cc.name = 'bindCredential' \
                   AND coalesce(cc.value, '') <> ''",
                s.t("component"),
                s.t("component_config")
            ),
            "LDAP/Kerberos bind credentials",
        )
    } else if check == &SENSITIVE_IDP_SECRETS {
        (
            &["identity_provider_config"],
            format!(
                "SELECT count(*) FILTER (WHERE value !~ {VAULT_REF}), count(*) FROM {} \
                 WHERE name = 'clientSecret' AND coalesce(value, '') <> ''",
                s.t("identity_provider_config")
            ),
            "identity provider client secrets",
        )
    } else {
        (
            &["realm_smtp_config"],
            format!(
                "SELECT count(*) FILTER (WHERE value !~ {VAULT_REF}), count(*) FROM {} \
                 WHERE name = 'password' AND coalesce(value, '') <> ''",
                s.t("realm_smtp_config")
            ),
            "realm SMTP passwords",
        )
    };
    match counts(ctx, check, s, tables, sql).await {
        Ok(None) => absent(check, tables),
        Ok(Some(n)) if n[0] == 0 => Finding::pass(
            check,
            format!("{} {what}, all ${{vault.…}} references", n[1]),
        ),
        Ok(Some(n)) => Finding::fail(
            check,
            format!(
                "{} of {} {what} are stored in clear, not as ${{vault.…}} references",
                n[0], n[1]
            ),
        ),
        Err(f) => f,
    }
}

async fn otp_secrets(ctx: &mut Ctx<'_>, s: &Schema) -> Finding {
    let check = &SENSITIVE_OTP_SECRETS;
    let sql = format!(
        "SELECT count(*), count(DISTINCT user_id) FROM {} WHERE type IN ('otp', 'totp', 'hotp')",
        s.t("credential")
    );
    match counts(ctx, check, s, &["credential"], sql).await {
        Ok(None) => absent(check, &["credential"]),
        Ok(Some(n)) if n[0] == 0 => {
            Finding::pass(check, "no OTP credential in credential.secret_data")
        }
        Ok(Some(n)) => Finding::warn(
            check,
            format!(
                "{} OTP secrets of {} users in clear in credential.secret_data",
                n[0], n[1]
            ),
        ),
        Err(f) => f,
    }
}

async fn personal_data(ctx: &mut Ctx<'_>, s: &Schema) -> Finding {
    let check = &SENSITIVE_PERSONAL_DATA;
    let parts: [(&str, &str, &str); 6] = [
        ("user_entity", "email IS NOT NULL", "users with an e-mail"),
        (
            "user_entity",
            "first_name IS NOT NULL OR last_name IS NOT NULL",
            "users with a name",
        ),
        ("user_attribute", "true", "user attributes"),
        (
            "event_entity",
            "ip_address IS NOT NULL",
            "events with an IP address",
        ),
        (
            "admin_event_entity",
            "ip_address IS NOT NULL",
            "admin events with an IP address",
        ),
        (
            "admin_event_entity",
            "representation IS NOT NULL",
            "admin events with a representation",
        ),
    ];
    let present: Vec<&(&str, &str, &str)> = parts.iter().filter(|(t, _, _)| s.has(t)).collect();
    if present.is_empty() {
        return absent(check, &["user_entity", "event_entity"]);
    }
    let columns: Vec<String> = present
        .iter()
        .map(|(t, w, _)| format!("(SELECT count(*) FROM {} WHERE {w})", s.t(t)))
        .collect();
    let tables: Vec<&str> = present.iter().map(|(t, _, _)| *t).collect();
    let sql = format!("SELECT {}", columns.join(", "));
    match counts(ctx, check, s, &tables, sql).await {
        Ok(Some(n)) => Finding::pass(
            check,
            format!(
                "inventory: {}",
                present
                    .iter()
                    .zip(n)
                    .map(|((_, _, what), n)| format!("{n} {what}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Ok(None) => absent(check, &tables),
        Err(f) => f,
    }
}

async fn pgcrypto(ctx: &mut Ctx<'_>) -> Finding {
    let check = &SENSITIVE_PGCRYPTO;
    let rows = match ctx
        .query(
            check,
            "SELECT on pg_available_extensions",
            "SELECT default_version, coalesce(installed_version, '') \
             FROM pg_available_extensions WHERE name = 'pgcrypto'",
        )
        .await
    {
        Ok(r) => r,
        Err(f) => return f,
    };
    pgcrypto_finding(
        rows.first().map(|r| (text(r, 0), text(r, 1))),
        &ctx.route.upstream.database,
    )
}

pub(in crate::audit) fn pgcrypto_finding(found: Option<(String, String)>, db: &str) -> Finding {
    let check = &SENSITIVE_PGCRYPTO;
    let scope = "for the deployment's own tables; Keycloak's columns need its vault SPI, a keystore key provider and encrypted storage";
    match found {
        None => Finding::warn(
            check,
            format!("pgcrypto is not available on the server ({scope})"),
        ),
        Some((version, installed)) if installed.is_empty() => Finding::pass(
            check,
            format!("pgcrypto {version} is available, not installed in {db} ({scope})"),
        ),
        Some((_, installed)) => Finding::pass(
            check,
            format!("pgcrypto {installed} is installed in {db} ({scope})"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::check::Status;
    use super::*;

    #[test]
    fn pgcrypto_missing_warns() {
        assert_eq!(pgcrypto_finding(None, "kc").status, Status::Warn);
        let there = pgcrypto_finding(Some(("1.3".into(), String::new())), "kc");
        assert_eq!(there.status, Status::Pass);
        assert!(there.evidence.contains("available, not installed"));
    }
}
