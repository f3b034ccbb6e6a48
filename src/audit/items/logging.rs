//! Checklist item 9, logging: connections and their end are logged with a
//! prefix that names user, database, client and pid, DDL is logged, and the
//! credential issuer's statements (whose `CREATE ROLE … PASSWORD` carries a
//! password or verifier) never are. The last uses the same rule as the
//! built-in source's start-up warning ([`crate::audit::statement_logging`]),
//! applied to each issuer role's effective settings: its per-role and
//! per-database defaults (`pg_db_role_setting`) over the server's.

use std::collections::BTreeMap;

use super::super::check::{
    Finding, LOGGING_CONNECTIONS, LOGGING_DDL, LOGGING_ISSUER_STATEMENTS, LOGGING_LINE_PREFIX,
};
use super::super::connection::{literal, text};
use super::super::context::Ctx;
use super::super::statement_logging;
use crate::config::CredentialsConfig;

const STATEMENT_SETTINGS: [&str; 3] = [
    "log_statement",
    "log_min_duration_statement",
    "log_min_error_statement",
];

/// Settings by name, as text.
type Settings = BTreeMap<String, String>;

/// Where a setting's value comes from when it is the server's own, not the
/// audit session's (a role or database default, or the client).
const SERVER_SOURCES: &[&str] = &[
    "default",
    "configuration file",
    "command line",
    "environment variable",
    "override",
];

pub(in crate::audit) async fn run(ctx: &mut Ctx<'_>, out: &mut Vec<Finding>) {
    out.push(connections(ctx).await);
    out.push(
        match ctx.setting(&LOGGING_LINE_PREFIX, "log_line_prefix").await {
            Ok(v) => line_prefix(&v),
            Err(f) => f,
        },
    );
    out.push(match ctx.setting(&LOGGING_DDL, "log_statement").await {
        Ok(v) if matches!(v.as_str(), "ddl" | "mod" | "all") => {
            Finding::pass(&LOGGING_DDL, format!("log_statement = {v}"))
        }
        Ok(v) => Finding::fail(
            &LOGGING_DDL,
            format!("log_statement = {v}: schema changes are not logged"),
        ),
        Err(f) => f,
    });
    out.push(issuer_statements(ctx).await);
}

async fn connections(ctx: &mut Ctx<'_>) -> Finding {
    let check = &LOGGING_CONNECTIONS;
    let mut values = Vec::new();
    for name in ["log_connections", "log_disconnections"] {
        match ctx.setting(check, name).await {
            Ok(v) => values.push((name, v)),
            Err(f) => return f,
        }
    }
    connections_finding(&values)
}

pub(in crate::audit) fn connections_finding(values: &[(&str, String)]) -> Finding {
    let check = &LOGGING_CONNECTIONS;
    let evidence = values
        .iter()
        .map(|(n, v)| format!("{n} = {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let off = values
        .iter()
        .any(|(_, v)| matches!(v.as_str(), "off" | "" | "false" | "0"));
    if off {
        Finding::fail(check, evidence)
    } else {
        Finding::pass(check, evidence)
    }
}

pub(in crate::audit) fn line_prefix(value: &str) -> Finding {
    let check = &LOGGING_LINE_PREFIX;
    let mut missing: Vec<&str> = [("%p", "pid"), ("%u", "user"), ("%d", "database")]
        .iter()
        .filter(|(e, _)| !value.contains(e))
        .map(|(_, what)| *what)
        .collect();
    if !value.contains("%h") && !value.contains("%r") {
        missing.push("client");
    }
    let evidence = format!("log_line_prefix = '{value}'");
    if missing.is_empty() {
        Finding::pass(check, evidence)
    } else {
        Finding::fail(check, format!("{evidence} lacks {}", missing.join(", ")))
    }
}

/// The roles that run `CREATE ROLE … PASSWORD`: the built-in source's admin,
/// or for Vault (whose connection role pgwarden does not know) every
/// non-superuser LOGIN role with CREATEROLE.
async fn issuers(ctx: &mut Ctx<'_>) -> Result<Vec<String>, Finding> {
    if let CredentialsConfig::Postgres(p) = ctx.source {
        return Ok(vec![p.admin_user.clone()]);
    }
    let rows = ctx
        .query(
            &LOGGING_ISSUER_STATEMENTS,
            "SELECT on pg_roles",
            "SELECT rolname::text FROM pg_roles WHERE rolcanlogin AND rolcreaterole AND NOT rolsuper ORDER BY 1",
        )
        .await?;
    Ok(rows.iter().map(|r| text(r, 0)).collect())
}

async fn issuer_statements(ctx: &mut Ctx<'_>) -> Finding {
    let check = &LOGGING_ISSUER_STATEMENTS;
    let issuers = match issuers(ctx).await {
        Ok(i) if i.is_empty() => {
            return Finding::warn(
                check,
                "no LOGIN role with CREATEROLE besides superusers: the issuer may be a superuser, \
                 whose statements (and the passwords in them) follow log_statement",
            );
        }
        Ok(i) => i,
        Err(f) => return f,
    };
    let global = match server_settings(ctx).await {
        Ok(g) => g,
        Err(f) => return f,
    };
    let mut bad = Vec::new();
    for issuer in &issuers {
        let effective = match role_settings(ctx, issuer, &global).await {
            Ok(e) => e,
            Err(f) => return f,
        };
        let get = |n: &str| effective.get(n).cloned().unwrap_or_default();
        let fixes = statement_logging::fixes(
            &get("log_statement"),
            &get("log_min_duration_statement"),
            &get("log_min_error_statement"),
        );
        if !fixes.is_empty() {
            bad.push(format!(
                "{issuer} would have its statements logged (needs {})",
                fixes.join(", ")
            ));
        }
    }
    if bad.is_empty() {
        Finding::pass(
            check,
            format!("issuer roles {} log no statements", issuers.join(", ")),
        )
    } else {
        Finding::fail(check, bad.join("; "))
    }
}

/// The server-wide statement-logging settings, as the audit session sees
/// them; `unknown` when the session's own come from elsewhere (its role or
/// database), which hides the server's.
async fn server_settings(ctx: &mut Ctx<'_>) -> Result<Settings, Finding> {
    let check = &LOGGING_ISSUER_STATEMENTS;
    let names: Vec<String> = STATEMENT_SETTINGS.iter().map(|n| literal(n)).collect();
    let rows = ctx
        .query(
            check,
            "pg_read_all_settings (or superuser) to read logging settings",
            &format!(
                "SELECT name::text, setting, source FROM pg_settings WHERE name IN ({})",
                names.join(", ")
            ),
        )
        .await?;
    let mut global = Settings::new();
    for r in &rows {
        if !SERVER_SOURCES.contains(&text(r, 2).as_str()) {
            return Err(Finding::unknown(
                check,
                "the server-wide value (pg_file_settings, superuser only)",
                format!(
                    "the audit session's {} comes from its {}",
                    text(r, 0),
                    text(r, 2)
                ),
            ));
        }
        global.insert(text(r, 0), text(r, 1));
    }
    Ok(global)
}

/// `role`'s statement-logging settings in this database: role-and-database
/// defaults over role defaults over database defaults over `global`.
async fn role_settings(
    ctx: &mut Ctx<'_>,
    role: &str,
    global: &Settings,
) -> Result<Settings, Finding> {
    // Only the statement-logging entries leave the server: a role's other
    // defaults (a custom setting may hold a key) are none of the audit's business.
    let names: Vec<String> = STATEMENT_SETTINGS.iter().map(|n| literal(n)).collect();
    let sql = format!(
        "SELECT scope, entry FROM ( \
           SELECT (s.setrole <> 0)::int + 2 * (s.setdatabase <> 0)::int AS scope, \
                  unnest(s.setconfig) AS entry \
           FROM pg_db_role_setting s \
           WHERE s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = {})) \
             AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())) \
         ) settings WHERE split_part(entry, '=', 1) IN ({})",
        literal(role),
        names.join(", ")
    );
    let rows = ctx
        .query(
            &LOGGING_ISSUER_STATEMENTS,
            "SELECT on pg_db_role_setting",
            &sql,
        )
        .await?;
    // Precedence: role+database (3) > role (1) > database (2) > server.
    let rank = |scope: &str| match scope {
        "3" => 3,
        "1" => 2,
        "2" => 1,
        _ => 0,
    };
    let mut best: BTreeMap<String, (u8, String)> = global
        .iter()
        .map(|(k, v)| (k.clone(), (0, v.clone())))
        .collect();
    for r in &rows {
        let Some((name, value)) = text(r, 1)
            .split_once('=')
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        else {
            continue;
        };
        if !STATEMENT_SETTINGS.contains(&name.as_str()) {
            continue;
        }
        let r = rank(&text(r, 0));
        if best.get(&name).is_none_or(|(have, _)| r > *have) {
            best.insert(name, (r, value));
        }
    }
    Ok(best.into_iter().map(|(k, (_, v))| (k, v)).collect())
}

#[cfg(test)]
mod tests {
    use super::super::super::check::Status;
    use super::*;

    #[test]
    fn prefixes_without_who_and_where_fail() {
        assert_eq!(
            line_prefix("%m [%p] %q user=%u db=%d client=%h app=%a ").status,
            Status::Pass
        );
        assert_eq!(line_prefix("%m [%p] %u@%d %r").status, Status::Pass);
        let bad = line_prefix("%m ");
        assert_eq!(bad.status, Status::Fail);
        assert!(
            bad.evidence.contains("pid, user, database, client"),
            "{}",
            bad.evidence
        );
        assert_eq!(
            connections_finding(&[("log_connections", "on".into())]).status,
            Status::Pass
        );
        assert_eq!(
            connections_finding(&[("log_connections", "off".into())]).status,
            Status::Fail
        );
    }
}
