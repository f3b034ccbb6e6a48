//! `[backup.<target>]` sections, and the reading of a configuration file for
//! `pgwarden backup` alone ([`validate_backup`]), which checks only what a
//! backup uses so that a backup host needs none of the proxy's own files.
//!
//! Recipients are public keys, but a value in the wrong place may be a secret
//! (an identity pasted as a recipient): no value is ever echoed in an error.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use secrecy::SecretString;

use super::super::raw;
use super::super::report::Override;
use super::super::{
    BackupConfig, BackupFile, CredentialsConfig, LogConfig, Retention, RouteConfig, UpstreamTls,
};
use super::{KNOWN_SECTIONS, Validator};

/// The prefix of an age identity (a private key), which must never sit on the
/// host that takes backups.
const IDENTITY_PREFIX: &str = "AGE-SECRET-KEY-";

/// Sections `pgwarden backup` reads; the others belong to the proxy and are
/// not checked here.
const BACKUP_SECTIONS: &[&str] = &["log", "credentials", "vault", "routes", "backup"];

/// Validates what `pgwarden backup` reads of a configuration file.
pub(in super::super) fn validate_backup(
    mut table: toml::Table,
    base: &Path,
    root: Option<&Path>,
    vault_token_env: Option<SecretString>,
    overrides: &[Override],
    errors: &mut Vec<String>,
) -> Option<BackupFile> {
    for key in table.keys() {
        if !KNOWN_SECTIONS.contains(&key.as_str()) {
            errors.push(format!(
                "unknown section or key `{key}` (known: {})",
                KNOWN_SECTIONS.join(", ")
            ));
        }
    }
    table.retain(|k, _| BACKUP_SECTIONS.contains(&k));
    let declared = Declared::of(&table);
    let has_backup = table.contains_key("backup");
    let mut v = Validator {
        base,
        root,
        overrides,
        errors,
    };
    let log = v.optional::<raw::Log>(&mut table, "log");
    let has_vault = table.contains_key("vault");
    let vault = v.optional::<raw::Vault>(&mut table, "vault");
    let routes: Vec<RouteConfig> = v
        .array::<raw::Route>(&mut table, "routes")
        .into_iter()
        .filter_map(|(i, r)| v.route(i, r))
        .collect();
    let credentials: BTreeMap<String, CredentialsConfig> = v
        .credentials(&mut table)
        .into_iter()
        .filter_map(|(name, c)| v.credential(&name, c).map(|c| (name, c)))
        .collect();
    let vault = vault.flatten().and_then(|x| v.vault(x, vault_token_env));
    let backup = v.backups(&mut table, &declared, &routes, &credentials, has_vault);
    if !has_backup {
        v.err("[backup.<target>]: no backup target is configured".into());
    }
    let log = log.flatten().unwrap_or_default();
    v.log_level(&log.level);
    Some(BackupFile {
        log: LogConfig {
            format: log.format,
            level: log.level,
        },
        credentials,
        vault,
        backup,
    })
}

/// Names the file declares, read before validation, so that a reference to
/// an entry that was itself invalid (and reported) is not reported again.
pub(super) struct Declared {
    credentials: HashSet<String>,
    routes: HashSet<String>,
    /// Whether there is a `[vault]` section, valid or not.
    vault: bool,
}

impl Declared {
    pub(super) fn of(table: &toml::Table) -> Declared {
        Declared {
            credentials: table
                .get("credentials")
                .and_then(|c| c.as_table())
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default(),
            routes: table
                .get("routes")
                .and_then(|r| r.as_array())
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("database").and_then(|d| d.as_str()))
                .map(str::to_owned)
                .collect(),
            vault: table.contains_key("vault"),
        }
    }
}

impl Validator<'_> {
    /// Every `[backup.<target>]`. `routes` and `credentials` are the valid
    /// entries of the same file; `table` still holds `backup` (taken here).
    pub(super) fn backups(
        &mut self,
        table: &mut toml::Table,
        declared: &Declared,
        routes: &[RouteConfig],
        credentials: &BTreeMap<String, CredentialsConfig>,
        have_vault: bool,
    ) -> BTreeMap<String, BackupConfig> {
        let entries = match table.remove("backup") {
            None => return BTreeMap::new(),
            Some(toml::Value::Table(t)) => t,
            Some(_) => {
                self.err("`backup` must be a table of targets ([backup.<target>])".into());
                return BTreeMap::new();
            }
        };
        let mut out = BTreeMap::new();
        for (name, value) in entries {
            if !target_name(&name) {
                self.err(format!(
                    "[backup.{name:?}]: a target's name is 1 to 64 letters, digits, `.`, `_` or \
                     `-`, starting with a letter or a digit: it names the backup files (a \
                     name starting with `.` would hide them from retention) and a metric label"
                ));
                continue;
            }
            let what = format!("[backup.{name}]");
            let Some(raw) = self.section::<raw::Backup>(&what, value) else {
                continue;
            };
            let context = Context {
                routes,
                credentials,
                declared,
                have_vault,
            };
            if let Some(b) = self.backup(&what, raw, &context) {
                out.insert(name, b);
            }
        }
        out
    }

    fn backup(&mut self, what: &str, b: raw::Backup, cx: &Context<'_>) -> Option<BackupConfig> {
        // Everything is checked even when the server is unknown, to report it all.
        let (mut upstream, route_source) = match (b.route, b.upstream) {
            (Some(route), None) => match self.backup_route(what, &route, cx) {
                Some((u, source)) => (Some(u), source),
                None => (None, None),
            },
            (None, Some(u)) => (Some(self.upstream(what, u, String::new())), None),
            _ => {
                self.err(format!(
                    "{what}: give `route` (a [[routes]] database) or `upstream`, exactly one"
                ));
                (None, None)
            }
        };
        if let Some(u) = &mut upstream {
            if let Some(db) = b.database {
                u.database = db;
            }
            if u.database.is_empty() {
                self.err(format!("{what}: `database` is required with `upstream`"));
            }
            if u.tls == UpstreamTls::Disable {
                self.err(format!(
                    "{what}: the dump would cross the network in clear; a backup's upstream \
                     needs tls = \"verify-full\" or \"verify-ca\""
                ));
            }
        }
        let credentials = b.credentials.or(route_source);
        let credentials = match credentials {
            Some(c) => {
                self.backup_source(what, &c, cx);
                c
            }
            None => {
                self.err(format!(
                    "{what}: `credentials` (a [credentials.<name>]) is required with `upstream`"
                ));
                String::new()
            }
        };
        let recipients = self.recipients(what, &b.recipients, b.recipients_file.as_deref());
        if b.keep_last == 0 {
            self.err(format!(
                "{what}: keep_last must be at least 1 (the newest backup is always kept)"
            ));
        }
        if b.compression_level.is_some_and(|l| l > 9) {
            self.err(format!("{what}: compression_level must be 0 to 9"));
        }
        if b.timeout.is_zero() {
            self.err(format!("{what}: timeout must be more than 0s"));
        }
        if let Some(url) = &b.pushgateway {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                _ => self.err(format!(
                    "{what}: pushgateway is not an http(s) URL (e.g. http://pushgateway:9091)"
                )),
            }
        }
        Some(BackupConfig {
            upstream: upstream?,
            credentials,
            directory: self.path(&b.directory),
            recipients,
            retention: Retention {
                keep_last: b.keep_last,
                keep_daily: b.keep_daily,
                keep_weekly: b.keep_weekly,
                keep_monthly: b.keep_monthly,
            },
            pg_dump: self.program(&b.pg_dump),
            compression_level: b.compression_level,
            timeout: b.timeout,
            metrics_file: b.metrics_file.as_deref().map(|p| self.path(p)),
            pushgateway: b.pushgateway.map(|u| u.trim_end_matches('/').to_owned()),
        })
    }

    /// The upstream and credential source of the route for client database `route`.
    fn backup_route(
        &mut self,
        what: &str,
        route: &str,
        cx: &Context<'_>,
    ) -> Option<(super::super::UpstreamConfig, Option<String>)> {
        let matching: Vec<&RouteConfig> =
            cx.routes.iter().filter(|r| r.database == route).collect();
        let Some(first) = matching.first() else {
            if !cx.declared.routes.contains(route) {
                self.err(format!(
                    "{what}: route `{route}` is not a [[routes]] database"
                ));
            }
            return None;
        };
        let same = |r: &&RouteConfig| {
            r.upstream.endpoint() == first.upstream.endpoint()
                && r.upstream.database == first.upstream.database
        };
        if !matching.iter().all(same) {
            self.err(format!(
                "{what}: the routes for `{route}` lead to different servers or databases; \
                 give `upstream` instead"
            ));
        }
        Some((first.upstream.clone(), Some(first.credentials.clone())))
    }

    fn backup_source(&mut self, what: &str, name: &str, cx: &Context<'_>) {
        match cx.credentials.get(name) {
            None if cx.declared.credentials.contains(name) => {}
            None => self.err(format!(
                "{what}: credentials `{name}` is not defined in [credentials.*]"
            )),
            Some(CredentialsConfig::Vault(_)) if !cx.have_vault && !cx.declared.vault => {
                self.err(format!(
                    "[credentials.{name}] uses source = \"vault\" but there is no [vault] section"
                ))
            }
            Some(_) => {}
        }
    }

    /// Inline recipients and those of `file`, each an age X25519 recipient.
    fn recipients(&mut self, what: &str, inline: &[String], file: Option<&Path>) -> Vec<String> {
        let mut all: Vec<(String, String)> = inline
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("recipients #{}", i + 1), r.trim().to_owned()))
            .collect();
        if let Some(f) = file {
            let path = self.path(f);
            match std::fs::read_to_string(&path) {
                Ok(text) => all.extend(
                    text.lines()
                        .enumerate()
                        .map(|(i, l)| (i, l.trim()))
                        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
                        .map(|(i, l)| {
                            (
                                format!("recipients_file {} line {}", path.display(), i + 1),
                                l.to_owned(),
                            )
                        }),
                ),
                Err(e) => self.err(format!(
                    "{what} recipients_file: cannot read {}: {e}",
                    path.display()
                )),
            }
        }
        let mut valid = Vec::new();
        for (where_, r) in all {
            if r.starts_with(IDENTITY_PREFIX) {
                self.err(format!(
                    "{what} {where_}: this is an age identity (a private key), not a recipient; \
                     give its public key (age-keygen -y) and keep the identity off this host"
                ));
            } else if age::x25519::Recipient::from_str(&r).is_err() {
                self.err(format!(
                    "{what} {where_}: not an age X25519 recipient (age1…)"
                ));
            } else {
                valid.push(r);
            }
        }
        if valid.is_empty() && inline.is_empty() && file.is_none() {
            self.err(format!(
                "{what}: needs `recipients` or `recipients_file`: backups are encrypted to them"
            ));
        }
        valid
    }

    /// A program: a bare name is looked up on PATH when it runs; a path is
    /// resolved like every other path of the file.
    fn program(&self, p: &Path) -> PathBuf {
        if p.components().count() == 1 && !p.is_absolute() {
            p.to_owned()
        } else {
            self.path(p)
        }
    }
}

/// Whether `name` can name a target's files: no separator, no leading dot
/// (dot files are pgwarden's own: temporary files, the lock, the state).
fn target_name(name: &str) -> bool {
    let chars_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    chars_ok && first_ok && name.len() <= 64
}

/// What a backup target may refer to.
struct Context<'a> {
    routes: &'a [RouteConfig],
    credentials: &'a BTreeMap<String, CredentialsConfig>,
    declared: &'a Declared,
    have_vault: bool,
}
