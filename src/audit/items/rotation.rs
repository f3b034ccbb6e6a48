//! Checklist item 4, rotation: every route's credentials are dynamic (the
//! issued role expires by itself), short-lived, capped, never outlived by a
//! session, and none is left behind after its expiry.

use std::time::Duration;

use super::super::check::{
    Finding, ROTATION_DYNAMIC_SOURCE, ROTATION_LEASE_TTL, ROTATION_LEFTOVER_ROLES,
    ROTATION_MAX_TTL, ROTATION_ON_LEASE_END, names,
};
use super::super::connection::{literal, text};
use super::super::context::Ctx;
use crate::config::{CredentialsConfig, OnLeaseEnd};

/// Longest credential TTL that passes.
pub(crate) const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest maximum TTL that passes.
pub(crate) const MAX_MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// A dynamic role whose VALID UNTIL passed longer ago than this is a leftover
/// (revocation normally follows the session's end within seconds).
pub(crate) const LEFTOVER_GRACE: &str = "10 minutes";

pub(in crate::audit) async fn run(ctx: &mut Ctx<'_>, out: &mut Vec<Finding>) {
    out.push(dynamic_source(ctx).await);
    out.push(lease_ttl(ctx));
    out.push(max_ttl(ctx.source));
    out.push(on_lease_end(ctx.source));
    out.push(leftover_roles(ctx).await);
}

async fn dynamic_source(ctx: &mut Ctx<'_>) -> Finding {
    let check = &ROTATION_DYNAMIC_SOURCE;
    let login = match ctx.probe(check) {
        Ok(p) => p.login.clone(),
        Err(f) => return f,
    };
    let sql = format!(
        "SELECT rolvaliduntil IS NOT NULL AND rolvaliduntil <> 'infinity', \
                coalesce(justify_interval(date_trunc('minute', rolvaliduntil - now()))::text, '') \
         FROM pg_roles WHERE rolname = {}",
        literal(&login)
    );
    let rows = match ctx.query(check, "SELECT on pg_roles", &sql).await {
        Ok(r) => r,
        Err(f) => return f,
    };
    let kind = ctx.source.kind();
    match rows.first() {
        Some(r) if text(r, 0) == "t" => Finding::pass(
            check,
            format!(
                "[credentials.{}] ({kind}) issued {login}, which expires by itself (VALID UNTIL in {})",
                ctx.route.credentials,
                text(r, 1)
            ),
        ),
        Some(_) => Finding::fail(
            check,
            format!(
                "the issued role {login} has no VALID UNTIL: it never expires if its revocation is lost"
            ),
        ),
        None => Finding::fail(check, format!("the issued role {login} is not in pg_roles")),
    }
}

fn lease_ttl(ctx: &Ctx<'_>) -> Finding {
    let check = &ROTATION_LEASE_TTL;
    let (ttl, how) = match ctx.source {
        CredentialsConfig::Postgres(p) => (p.ttl, "ttl"),
        CredentialsConfig::Vault(_) => match ctx.probe(check) {
            Ok(p) if p.renewable => (p.lease_duration, "Vault's lease_duration (renewable)"),
            Ok(p) => (p.lease_duration, "Vault's lease_duration (not renewable)"),
            Err(f) => return f,
        },
    };
    ttl_finding(ttl, how)
}

pub(in crate::audit) fn ttl_finding(ttl: Duration, how: &str) -> Finding {
    let check = &ROTATION_LEASE_TTL;
    let evidence = format!("{how} = {}", humantime::format_duration(ttl));
    if ttl.is_zero() {
        Finding::fail(check, format!("{evidence}: the credential has no lease"))
    } else if ttl <= MAX_LEASE_TTL {
        Finding::pass(check, evidence)
    } else {
        Finding::warn(check, evidence)
    }
}

pub(in crate::audit) fn max_ttl(source: &CredentialsConfig) -> Finding {
    let check = &ROTATION_MAX_TTL;
    match source {
        CredentialsConfig::Postgres(p) => match p.max_ttl {
            None => Finding::warn(
                check,
                "max_ttl is not set: sessions renew their credential for ever",
            ),
            Some(m) if m <= MAX_MAX_TTL => Finding::pass(
                check,
                format!("max_ttl = {}", humantime::format_duration(m)),
            ),
            Some(m) => Finding::warn(
                check,
                format!("max_ttl = {}", humantime::format_duration(m)),
            ),
        },
        CredentialsConfig::Vault(v) => Finding::unknown(
            check,
            format!(
                "read on {}/roles/{} (pgwarden's policy grants creds, renew and revoke only)",
                v.mount, v.role
            ),
            "Vault's max_ttl is not visible to pgwarden; config/vault/setup.sh sets 24h",
        ),
    }
}

pub(in crate::audit) fn on_lease_end(source: &CredentialsConfig) -> Finding {
    let check = &ROTATION_ON_LEASE_END;
    match source.on_lease_end() {
        OnLeaseEnd::Keep => Finding::fail(
            check,
            "on_lease_end = \"keep\": sessions run on after their credential expired",
        ),
        OnLeaseEnd::RecycleWhenIdle => Finding::pass(check, "on_lease_end = \"recycle-when-idle\""),
        OnLeaseEnd::Terminate => Finding::pass(check, "on_lease_end = \"terminate\""),
    }
}

/// Dynamic roles — members of the issued role's groups, or under the built-in
/// source's prefix — whose VALID UNTIL passed more than [`LEFTOVER_GRACE`] ago.
async fn leftover_roles(ctx: &mut Ctx<'_>) -> Finding {
    let check = &ROTATION_LEFTOVER_ROLES;
    let login = match ctx.probe(check) {
        Ok(p) => literal(&p.login),
        Err(f) => return f,
    };
    let prefix = match ctx.source {
        CredentialsConfig::Postgres(p) => {
            format!("OR starts_with(r.rolname, {})", literal(&p.role_prefix))
        }
        CredentialsConfig::Vault(_) => String::new(),
    };
    let sql = format!(
        "WITH g AS (SELECT m.roleid FROM pg_auth_members m JOIN pg_roles l ON l.oid = m.member \
                    WHERE l.rolname = {login}) \
         SELECT r.rolname::text, r.rolvaliduntil < now() - interval '{LEFTOVER_GRACE}' FROM pg_roles r \
         WHERE r.rolcanlogin AND NOT r.rolsuper AND r.rolvaliduntil IS NOT NULL \
           AND r.rolvaliduntil <> 'infinity' \
           AND (EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid \
                        AND m.roleid IN (SELECT roleid FROM g)) {prefix}) \
         ORDER BY 1"
    );
    let rows = match ctx.query(check, "SELECT on pg_roles", &sql).await {
        Ok(r) => r,
        Err(f) => return f,
    };
    let expired: Vec<String> = rows
        .iter()
        .filter(|r| text(r, 1) == "t")
        .map(|r| text(r, 0))
        .collect();
    let live = rows.len() - expired.len();
    if expired.is_empty() {
        Finding::pass(
            check,
            format!(
                "{live} dynamic roles exist, none past its VALID UNTIL by more than {LEFTOVER_GRACE}"
            ),
        )
    } else {
        Finding::fail(
            check,
            format!(
                "{} dynamic roles expired more than {LEFTOVER_GRACE} ago and still exist: {}",
                expired.len(),
                names(&expired, 5)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::check::Status;
    use super::*;

    #[test]
    fn long_or_missing_ttls_do_not_pass() {
        assert_eq!(
            ttl_finding(Duration::from_secs(3600), "ttl").status,
            Status::Pass
        );
        assert_eq!(
            ttl_finding(Duration::from_secs(30 * 86_400), "ttl").status,
            Status::Warn
        );
        assert_eq!(ttl_finding(Duration::ZERO, "ttl").status, Status::Fail);
    }
}
