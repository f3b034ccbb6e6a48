//! What every check of one route reads: the route's configuration, the audit
//! connection, and the probe (a credential issued by the route's own source,
//! which shows what Keycloak's sessions get).
//!
//! [`Ctx::query`] turns every way a query can fail into an `unknown` finding
//! naming what the audit lacked, so a check never guesses.

use std::sync::Arc;
use std::time::Duration;

use super::check::{Check, Finding};
use super::connection::{QueryError, Row, Session, TlsFacts, flag, literal, text};
use super::error::{ProbeError, SessionError};
use crate::config::{Config, CredentialsConfig, RouteConfig};

/// Where a setting's value is the role's own rather than the server's or the
/// database's (`pg_settings.source`).
const ROLE_SOURCES: &[&str] = &["user", "database user"];

/// What the probe credential showed.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    /// The issued role (`session_user`).
    pub(crate) login: String,
    /// The role its sessions act as (`current_user`).
    pub(crate) acting: String,
    /// Length and character classes of the issued password (never the password).
    pub(crate) password_len: usize,
    pub(crate) password_classes: usize,
    /// The lease as issued.
    pub(crate) lease_duration: Duration,
    pub(crate) renewable: bool,
    /// TLS as seen on the probe's connection.
    pub(crate) tls: Option<TlsFacts>,
}

/// One route's audit.
pub(crate) struct Ctx<'a> {
    pub(crate) config: &'a Config,
    pub(crate) route: &'a RouteConfig,
    pub(crate) source: &'a CredentialsConfig,
    /// The connection checks query; `Err`: why there is none.
    pub(crate) db: Result<Session, SessionError>,
    /// The route's own credential, or why it could not be had and used.
    pub(crate) probe: Result<Probe, Arc<ProbeError>>,
    /// Keycloak's schema, once looked up: `Ok(None)` when there is none,
    /// `Err` with the candidates when it cannot be told which.
    schema: Option<Result<Option<String>, Vec<String>>>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        config: &'a Config,
        route: &'a RouteConfig,
        source: &'a CredentialsConfig,
        db: Result<Session, SessionError>,
        probe: Result<Probe, Arc<ProbeError>>,
    ) -> Self {
        Ctx {
            config,
            route,
            source,
            db,
            probe,
            schema: None,
        }
    }

    /// `server_version_num` of the audited server (0 when not connected).
    pub(crate) fn version(&self) -> i32 {
        self.db.as_ref().map(|s| s.version).unwrap_or(0)
    }

    /// Runs `sql` for `check`; any failure becomes the check's `unknown`
    /// finding. `privilege` names what a denied query lacked.
    pub(crate) async fn query(
        &mut self,
        check: &'static Check,
        privilege: &str,
        sql: &str,
    ) -> Result<Vec<Row>, Finding> {
        let db = match &mut self.db {
            Ok(db) => db,
            Err(why) => {
                return Err(Finding::unknown(
                    check,
                    "a connection to the database",
                    format!("not checked: {why}"),
                ));
            }
        };
        db.query(sql).await.map_err(|e| match e {
            QueryError::Denied(m) => Finding::unknown(check, privilege, m),
            other => Finding::unknown(check, "a query that runs", format!("not checked: {other}")),
        })
    }

    /// Like [`Ctx::query`], for a statement that returns one row.
    pub(crate) async fn query_one(
        &mut self,
        check: &'static Check,
        privilege: &str,
        sql: &str,
    ) -> Result<Row, Finding> {
        let mut rows = self.query(check, privilege, sql).await?;
        if rows.len() != 1 {
            return Err(Finding::unknown(
                check,
                "a query that runs",
                format!("not checked: expected one row, got {}", rows.len()),
            ));
        }
        Ok(rows.remove(0))
    }

    /// A setting as Keycloak's sessions get it. The audit session's value
    /// serves unless it is the auditing role's own (`ALTER ROLE … SET`) and
    /// the audit does not run as the route: then Keycloak's is not visible.
    pub(crate) async fn setting(
        &mut self,
        check: &'static Check,
        name: &str,
    ) -> Result<String, Finding> {
        let row = self
            .query_one(
                check,
                "pg_read_all_settings (or superuser) to read this setting",
                &format!(
                    "SELECT current_setting({n}), (SELECT source FROM pg_settings WHERE name = {n})",
                    n = literal(name)
                ),
            )
            .await?;
        let (value, source) = (text(&row, 0), text(&row, 1));
        if ROLE_SOURCES.contains(&source.as_str()) && !self.as_route() {
            return Err(Finding::unknown(
                check,
                format!(
                    "the {name} Keycloak's sessions get (audit as the route, or as a role without its own {name})"
                ),
                format!(
                    "not checked: {name} = {value} is the role's own ({source} setting) of the auditing role"
                ),
            ));
        }
        Ok(value)
    }

    /// Whether the checks run in the probe's own session, as Keycloak's sessions do.
    fn as_route(&self) -> bool {
        matches!((&self.db, &self.probe), (Ok(db), Ok(p)) if db.login == p.login)
    }
    /// The probe, or `check`'s unknown finding saying why there is none.
    pub(crate) fn probe(&self, check: &'static Check) -> Result<&Probe, Finding> {
        self.probe.as_ref().map_err(|why| {
            Finding::unknown(
                check,
                format!("a credential from [credentials.{}]", self.route.credentials),
                format!("not checked: {why}"),
            )
        })
    }

    /// The schema holding Keycloak's tables (where `realm` is, first in the
    /// search path), or `None` when the database has none yet; `unknown`
    /// when several have one and none is on the search path.
    pub(crate) async fn keycloak_schema(
        &mut self,
        check: &'static Check,
    ) -> Result<Option<String>, Finding> {
        let chosen = match &self.schema {
            Some(chosen) => chosen.clone(),
            None => {
                let chosen = choose_schema(self.schema_candidates(check).await?);
                self.schema = Some(chosen.clone());
                chosen
            }
        };
        chosen.map_err(|several| {
            Finding::unknown(
                check,
                "which schema Keycloak uses (several hold a realm table, none on the search path)",
                format!(
                    "not checked: schemas {} each hold a realm table",
                    several.join(", ")
                ),
            )
        })
    }

    /// Every schema holding a `realm` table, those on the session's search
    /// path first (in its order), each with whether it is on it.
    async fn schema_candidates(
        &mut self,
        check: &'static Check,
    ) -> Result<Vec<(String, bool)>, Finding> {
        // The schemas the session searched before the audit pinned its path.
        let path: Vec<String> = match &self.db {
            Ok(db) => db.schemas.iter().map(|s| literal(s)).collect(),
            Err(_) => Vec::new(),
        };
        let sql = format!(
            "SELECT n.nspname::text, array_position(p.path, n.nspname) IS NOT NULL \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, \
                  (SELECT ARRAY[{}]::name[] AS path) p \
             WHERE c.relname = 'realm' AND c.relkind IN ('r', 'p') \
             ORDER BY coalesce(array_position(p.path, n.nspname), 1000), 1",
            path.join(", ")
        );
        let rows = self
            .query(check, "USAGE on Keycloak's schema", &sql)
            .await?;
        Ok(rows.iter().map(|r| (text(r, 0), flag(r, 1))).collect())
    }
}

/// Keycloak's schema among `candidates` (on-path ones first): the first on
/// the search path, else the only one; `Err` with them all when several
/// are and none is on the path.
fn choose_schema(candidates: Vec<(String, bool)>) -> Result<Option<String>, Vec<String>> {
    match candidates.as_slice() {
        [] => Ok(None),
        [(first, true), ..] | [(first, false)] => Ok(Some(first.clone())),
        _ => Err(candidates.into_iter().map(|(name, _)| name).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keycloak_s_schema_is_the_one_on_the_path_or_the_only_one() {
        let c = |list: &[(&str, bool)]| {
            choose_schema(list.iter().map(|(n, p)| (n.to_string(), *p)).collect())
        };
        assert_eq!(c(&[]), Ok(None));
        assert_eq!(c(&[("kc", false)]), Ok(Some("kc".into())));
        assert_eq!(
            c(&[("public", true), ("kc", false)]),
            Ok(Some("public".into()))
        );
        // Two copies, neither searched: which one Keycloak uses is not visible.
        assert_eq!(
            c(&[("kc", false), ("kc_old", false)]),
            Err(vec!["kc".into(), "kc_old".into()])
        );
    }
}
