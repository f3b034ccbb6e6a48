//! Checklist item 2, Keycloak's account: the roles Keycloak's sessions log in
//! as (the issued ones) and act as hold no administrative attribute, the
//! steady-state role has DML only, owns nothing and creates nothing, no static
//! LOGIN role serves Keycloak, and PUBLIC cannot create in the schema.
//!
//! Everything here reads world-readable catalogs (`pg_roles`,
//! `pg_auth_members`, ACLs through `has_*_privilege`), so it runs as the
//! issued role itself.

use super::super::check::{
    ACCOUNT_GROUP_PRIVILEGES, ACCOUNT_NO_CREATE, ACCOUNT_NO_STATIC_LOGIN, ACCOUNT_OWNS_NOTHING,
    ACCOUNT_PUBLIC_SCHEMA_CREATE, ACCOUNT_ROLE_ATTRIBUTES, Check, Finding, names,
};
use super::super::connection::{flag, literal, number, text};
use super::super::context::Ctx;
use crate::config::CredentialsConfig;

/// Predefined roles that reach beyond one database's data.
const POWERFUL_ROLES: &str = "'pg_read_all_data', 'pg_write_all_data', 'pg_read_server_files', \
                              'pg_write_server_files', 'pg_execute_server_program'";

/// Who Keycloak's sessions are, for the checks below.
struct Subject {
    login: String,
    acting: String,
    /// Keycloak's schema, or `public` when Keycloak has not created one.
    schema: String,
    /// The acting role has its schema owner's privileges (owns it, or owns
    /// the database whose `pg_database_owner` owns it): the migration role.
    owner_mode: bool,
}

pub(in crate::audit) async fn run(ctx: &mut Ctx<'_>, out: &mut Vec<Finding>) {
    let subject = match subject(ctx).await {
        Ok(s) => s,
        Err(f) => {
            for check in [
                &ACCOUNT_ROLE_ATTRIBUTES,
                &ACCOUNT_GROUP_PRIVILEGES,
                &ACCOUNT_OWNS_NOTHING,
                &ACCOUNT_NO_CREATE,
                &ACCOUNT_NO_STATIC_LOGIN,
            ] {
                out.push(Finding { check, ..f.clone() });
            }
            out.push(public_schema_create(ctx, "public").await);
            return;
        }
    };
    out.push(role_attributes(ctx, &subject).await);
    out.push(group_privileges(ctx, &subject).await);
    out.push(owns_nothing(ctx, &subject).await);
    out.push(no_create(ctx, &subject).await);
    out.push(no_static_login(ctx, &subject).await);
    out.push(public_schema_create(ctx, &subject.schema).await);
}

async fn subject(ctx: &mut Ctx<'_>) -> Result<Subject, Finding> {
    let check = &ACCOUNT_ROLE_ATTRIBUTES;
    let (login, acting) = {
        let p = ctx.probe(check)?;
        (p.login.clone(), p.acting.clone())
    };
    let schema = ctx
        .keycloak_schema(check)
        .await?
        .unwrap_or_else(|| "public".into());
    let row = ctx
        .query_one(
            check,
            "USAGE on the schema",
            &format!(
                "SELECT coalesce(bool_or(pg_has_role({}, nspowner, 'USAGE')), false) \
                 FROM pg_namespace WHERE nspname = {}",
                literal(&acting),
                literal(&schema)
            ),
        )
        .await?;
    Ok(Subject {
        owner_mode: flag(&row, 0),
        login,
        acting,
        schema,
    })
}

/// The roles whose attributes and ownership matter: the login role, and the
/// acting role unless it is the owner (migration mode).
fn roles(s: &Subject, with_owner: bool) -> Vec<&str> {
    let mut roles = vec![s.login.as_str()];
    if s.acting != s.login && (with_owner || !s.owner_mode) {
        roles.push(&s.acting);
    }
    roles
}

/// [`roles`] as an SQL list of literals.
fn roles_in(s: &Subject, with_owner: bool) -> String {
    let literals: Vec<String> = roles(s, with_owner).into_iter().map(literal).collect();
    literals.join(", ")
}

async fn role_attributes(ctx: &mut Ctx<'_>, s: &Subject) -> Finding {
    let check = &ACCOUNT_ROLE_ATTRIBUTES;
    let sql = format!(
        "SELECT r.rolname::text, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, \
                r.rolbypassrls, coalesce((SELECT string_agg(p.rolname::text, ' ' ORDER BY 1) \
                  FROM pg_roles p WHERE p.rolname IN ({POWERFUL_ROLES}) \
                  AND pg_has_role(r.oid, p.oid, 'MEMBER')), '') \
         FROM pg_roles r WHERE r.rolname IN ({}) ORDER BY 1",
        roles_in(s, true)
    );
    let rows = match ctx.query(check, "SELECT on pg_roles", &sql).await {
        Ok(r) => r,
        Err(f) => return f,
    };
    let mut bad = Vec::new();
    for row in &rows {
        let attrs: Vec<&str> = [
            (1, "SUPERUSER"),
            (2, "CREATEROLE"),
            (3, "CREATEDB"),
            (4, "REPLICATION"),
            (5, "BYPASSRLS"),
        ]
        .iter()
        .filter(|(i, _)| flag(row, *i))
        .map(|(_, a)| *a)
        .collect();
        let mut all: Vec<String> = attrs.iter().map(|a| a.to_string()).collect();
        all.extend(
            text(row, 6)
                .split_whitespace()
                .map(|p| format!("member of {p}")),
        );
        if !all.is_empty() {
            bad.push(format!("{} has {}", text(row, 0), all.join(", ")));
        }
    }
    let who = format!("logs in as {} and acts as {}", s.login, s.acting);
    if bad.is_empty() {
        Finding::pass(check, format!("{who}: no administrative attribute"))
    } else {
        Finding::fail(check, format!("{who}: {}", bad.join("; ")))
    }
}

fn migration_mode(check: &'static Check, s: &Subject) -> Finding {
    Finding::warn(
        check,
        format!(
            "sessions act as {}, which owns schema {}: the migration role (DDL possible); \
             switch the route to the steady-state role once the schema exists",
            s.acting, s.schema
        ),
    )
}

async fn group_privileges(ctx: &mut Ctx<'_>, s: &Subject) -> Finding {
    let check = &ACCOUNT_GROUP_PRIVILEGES;
    if s.owner_mode {
        return migration_mode(check, s);
    }
    let mut extra = vec!["TRUNCATE", "REFERENCES", "TRIGGER"];
    if ctx.version() >= 170000 {
        extra.push("MAINTAIN");
    }
    let role = literal(&s.acting);
    let counts: Vec<String> = extra
        .iter()
        .map(|p| format!("count(*) FILTER (WHERE has_table_privilege({role}, c.oid, '{p}'))"))
        .collect();
    let sql = format!(
        "SELECT count(*), {} FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = {} AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        counts.join(", "),
        literal(&s.schema)
    );
    let row = match ctx.query_one(check, "SELECT on pg_class", &sql).await {
        Ok(r) => r,
        Err(f) => return f,
    };
    let total = number(&row, 0);
    let bad: Vec<String> = extra
        .iter()
        .enumerate()
        .filter(|(i, _)| number(&row, i + 1) > 0)
        .map(|(i, p)| format!("{p} on {} of {total} tables", number(&row, i + 1)))
        .collect();
    if bad.is_empty() {
        Finding::pass(
            check,
            format!(
                "{} holds no TRUNCATE, REFERENCES or TRIGGER on the {total} tables of schema {}",
                s.acting, s.schema
            ),
        )
    } else {
        Finding::fail(check, format!("{} holds {}", s.acting, bad.join(", ")))
    }
}

async fn owns_nothing(ctx: &mut Ctx<'_>, s: &Subject) -> Finding {
    let check = &ACCOUNT_OWNS_NOTHING;
    let sql = format!(
        "SELECT r.rolname::text, \
           (SELECT count(*) FROM pg_class WHERE relowner = r.oid) \
         + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid) \
         + (SELECT count(*) FROM pg_proc WHERE proowner = r.oid) \
         + (SELECT count(*) FROM pg_database WHERE datdba = r.oid) \
         + (SELECT count(*) FROM pg_largeobject_metadata WHERE lomowner = r.oid) \
         FROM pg_roles r WHERE r.rolname IN ({}) ORDER BY 1",
        roles_in(s, false)
    );
    let rows = match ctx.query(check, "SELECT on the catalogs", &sql).await {
        Ok(r) => r,
        Err(f) => return f,
    };
    let owners: Vec<String> = rows
        .iter()
        .filter(|r| number(r, 1) > 0)
        .map(|r| format!("{} owns {} objects", text(r, 0), number(r, 1)))
        .collect();
    let checked: Vec<String> = rows.iter().map(|r| text(r, 0)).collect();
    if !owners.is_empty() {
        return Finding::fail(check, owners.join("; "));
    }
    let note = if s.owner_mode {
        format!("; {} owns the schema (migration role)", s.acting)
    } else {
        String::new()
    };
    let verb = if checked.len() == 1 { "owns" } else { "own" };
    Finding::pass(
        check,
        format!("{} {verb} nothing{note}", checked.join(" and ")),
    )
}

async fn no_create(ctx: &mut Ctx<'_>, s: &Subject) -> Finding {
    let check = &ACCOUNT_NO_CREATE;
    if s.owner_mode {
        return migration_mode(check, s);
    }
    let sql = format!(
        "SELECT r.rolname::text, has_database_privilege(r.oid, current_database(), 'CREATE'), \
                coalesce((SELECT string_agg(n.nspname::text, ' ' ORDER BY 1) FROM pg_namespace n \
                  WHERE n.nspname IN ({}, 'public') AND has_schema_privilege(r.oid, n.oid, 'CREATE')), '') \
         FROM pg_roles r WHERE r.rolname IN ({}) ORDER BY 1",
        literal(&s.schema),
        roles_in(s, false)
    );
    let rows = match ctx.query(check, "SELECT on the catalogs", &sql).await {
        Ok(r) => r,
        Err(f) => return f,
    };
    let mut bad = Vec::new();
    for row in &rows {
        if flag(row, 1) {
            bad.push(format!("{} may CREATE in the database", text(row, 0)));
        }
        for schema in text(row, 2).split_whitespace() {
            bad.push(format!("{} may CREATE in schema {schema}", text(row, 0)));
        }
    }
    if bad.is_empty() {
        Finding::pass(
            check,
            format!(
                "{} may create no schema or object",
                roles(s, false).join(", ")
            ),
        )
    } else {
        Finding::fail(check, bad.join("; "))
    }
}

async fn no_static_login(ctx: &mut Ctx<'_>, s: &Subject) -> Finding {
    let check = &ACCOUNT_NO_STATIC_LOGIN;
    let can_set = if ctx.version() >= 160000 {
        "SET"
    } else {
        "MEMBER"
    };
    let issuer = match ctx.source {
        CredentialsConfig::Postgres(p) => literal(&p.admin_user),
        CredentialsConfig::Vault(_) => "''".into(),
    };
    let (login, acting, schema) = (literal(&s.login), literal(&s.acting), literal(&s.schema));
    let sql = format!(
        "WITH k AS (SELECT oid FROM pg_roles WHERE rolname = {acting} AND NOT rolcanlogin \
                    UNION SELECT m.roleid FROM pg_auth_members m JOIN pg_roles l ON l.oid = m.member \
                    WHERE l.rolname = {login}), \
              owners AS (SELECT nspowner AS oid FROM pg_namespace WHERE nspname = {schema} \
                    UNION SELECT datdba FROM pg_database WHERE datname = current_database()) \
         SELECT r.rolname::text FROM pg_roles r \
         WHERE r.rolcanlogin AND NOT r.rolsuper AND r.rolname NOT IN ({login}, {issuer}) \
           AND (r.rolvaliduntil IS NULL OR r.rolvaliduntil = 'infinity') \
           AND (r.oid IN (SELECT oid FROM owners) OR EXISTS (SELECT 1 FROM k WHERE k.oid <> r.oid \
                AND (pg_has_role(r.oid, k.oid, 'USAGE') OR pg_has_role(r.oid, k.oid, '{can_set}')))) \
         ORDER BY 1"
    );
    let rows = match ctx.query(check, "SELECT on pg_roles", &sql).await {
        Ok(r) => r,
        Err(f) => return f,
    };
    let found: Vec<String> = rows.iter().map(|r| text(r, 0)).collect();
    if found.is_empty() {
        Finding::pass(
            check,
            format!(
                "no LOGIN role without an expiry owns or can act as {} (or the issued role's groups)",
                s.acting
            ),
        )
    } else {
        Finding::fail(
            check,
            format!(
                "LOGIN roles without an expiry that own or can act as Keycloak's roles: {}",
                names(&found, 8)
            ),
        )
    }
}

async fn public_schema_create(ctx: &mut Ctx<'_>, schema: &str) -> Finding {
    let check = &ACCOUNT_PUBLIC_SCHEMA_CREATE;
    let sql = format!(
        "SELECT n.nspname::text FROM pg_namespace n, \
                aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a \
         WHERE a.grantee = 0 AND a.privilege_type = 'CREATE' AND n.nspname IN ('public', {}) \
         ORDER BY 1",
        literal(schema)
    );
    match ctx.query(check, "SELECT on pg_namespace", &sql).await {
        Ok(rows) if rows.is_empty() => Finding::pass(
            check,
            format!(
                "PUBLIC has no CREATE on schema public{}",
                if schema == "public" {
                    String::new()
                } else {
                    format!(" or {schema}")
                }
            ),
        ),
        Ok(rows) => Finding::fail(
            check,
            format!(
                "PUBLIC may CREATE in schema {}",
                rows.iter()
                    .map(|r| text(r, 0))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Err(f) => f,
    }
}
