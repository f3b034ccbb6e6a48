//! Checks between sections: unique user names, routes naming defined users
//! and credential sources, a `[vault]` section for Vault sources.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::super::raw;
use super::super::{AuditConfig, CredentialsConfig, RouteConfig, UpstreamTls, UserConfig};
use super::Validator;

impl Validator<'_> {
    /// Checks between sections. Names come from `declared`, so an entry that
    /// was itself invalid (and already reported) does not cause more errors.
    pub(super) fn cross_checks(
        &mut self,
        declared: &Declared,
        users: &[UserConfig],
        routes: &[RouteConfig],
        credentials: &BTreeMap<String, CredentialsConfig>,
        have_vault: bool,
    ) {
        let mut names = HashSet::new();
        for u in users {
            if !names.insert(u.name.as_str()) {
                self.err(format!("[[users]]: user `{}` is defined twice", u.name));
            }
        }
        if declared.users == 0 {
            self.err("[[users]]: at least one user is required".into());
        }
        if declared.routes == 0 {
            self.err("[[routes]]: at least one route is required".into());
        }
        let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            for u in &r.users {
                if u != "*" && !declared.user_names.contains(u) {
                    self.err(format!(
                        "[[routes]] #{} ({}): user `{u}` is not defined in [[users]]",
                        i + 1,
                        r.database
                    ));
                }
                if let Some(prev) = seen.insert((r.database.as_str(), u.as_str()), i) {
                    self.err(format!(
                        "[[routes]] #{} and #{} both route user `{u}` to database `{}`",
                        prev + 1,
                        i + 1,
                        r.database
                    ));
                }
            }
            match credentials.get(&r.credentials) {
                None if declared.credentials.contains(&r.credentials) => {}
                None => self.err(format!(
                    "[[routes]] #{} ({}): credentials `{}` is not defined in [credentials.*]",
                    i + 1,
                    r.database,
                    r.credentials
                )),
                Some(CredentialsConfig::Vault(_)) if !have_vault && !declared.vault => {
                    self.err(format!(
                        "[credentials.{}] uses source = \"vault\" but there is no [vault] section",
                        r.credentials
                    ))
                }
                Some(CredentialsConfig::Postgres(_))
                    if r.upstream.tls == UpstreamTls::Disable
                        && !r.upstream.allow_insecure_auth =>
                {
                    // tokio-postgres cannot insist on SCRAM without TLS: a
                    // server (or anyone on the path) asking for a cleartext
                    // password would get the admin password.
                    self.err(format!(
                        "[[routes]] #{} ({}): the built-in source's admin connection would run \
                         without TLS and could be asked for its password in clear; use \
                         upstream.tls = \"verify-full\", or set upstream.allow_insecure_auth = true \
                         to accept the risk",
                        i + 1,
                        r.database
                    ))
                }
                Some(_) => {}
            }
        }
    }
}

impl Validator<'_> {
    /// `[audit]`: a long enough interval, and a credential source that exists.
    pub(super) fn audit(&mut self, a: raw::Audit, declared: &Declared) -> AuditConfig {
        if a.interval < raw::MIN_AUDIT_INTERVAL {
            self.err(format!(
                "[audit] interval must be at least {} (each run issues a credential)",
                humantime::format_duration(raw::MIN_AUDIT_INTERVAL)
            ));
        }
        if let Some(name) = &a.credentials
            && !declared.credentials.contains(name)
        {
            let shown = self.shown("[audit] credentials", name);
            self.err(format!(
                "[audit] credentials {shown} is not defined in [credentials.*]"
            ));
        }
        AuditConfig {
            interval: a.interval,
            credentials: a.credentials,
        }
    }
}

/// What the file declares, read before validation: names of users and
/// credential sources, and how many users and routes there are.
pub(super) struct Declared {
    users: usize,
    routes: usize,
    user_names: HashSet<String>,
    credentials: HashSet<String>,
    vault: bool,
}

impl Declared {
    pub(super) fn of(table: &toml::Table) -> Declared {
        let array = |key: &str| {
            table
                .get(key)
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default()
        };
        let users = array("users");
        Declared {
            users: users.len(),
            routes: array("routes").len(),
            user_names: users
                .iter()
                .filter_map(|u| u.get("name").and_then(|n| n.as_str()).map(str::to_owned))
                .collect(),
            vault: table.contains_key("vault"),
            credentials: table
                .get("credentials")
                .and_then(|c| c.as_table())
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }
}
