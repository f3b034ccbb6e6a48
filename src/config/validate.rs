//! From a TOML table to a [`Config`], collecting every problem on the way.
//!
//! Each section, and each entry of `users`, `routes` and `credentials`, is
//! deserialized on its own so that one bad entry does not hide the next one.
//! A deserialization error is reported through `report`, which names the key
//! and never the value. The credential sources and `[vault]` are in `sources`,
//! the checks between sections in `cross`, `[backup.*]` (and the reading of a
//! file for `pgwarden backup` alone) in `backup`, `[admin]` and a route's
//! `allowed_parameters` in `access`, the network edge (PROXY protocol, client
//! certificates, handshake budgets, `[peering]` and `[[peers]]`) in `edge`.

mod access;
mod backup;
mod cross;
mod edge;
mod sources;

pub(super) use backup::validate_backup;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use super::raw;
use super::report::{self, Override};
use super::*;
use crate::auth::ScramVerifier;

const KNOWN_SECTIONS: &[&str] = &[
    "listen",
    "admin",
    "log",
    "shutdown",
    "users",
    "routes",
    "credentials",
    "vault",
    "audit",
    "backup",
    "peering",
    "peers",
];

pub(super) fn validate(
    mut table: toml::Table,
    base: &Path,
    root: Option<&Path>,
    vault_token_env: Option<SecretString>,
    overrides: &[Override],
    errors: &mut Vec<String>,
) -> Option<Config> {
    for key in table.keys() {
        if !KNOWN_SECTIONS.contains(&key.as_str()) {
            errors.push(format!(
                "unknown section or key `{key}` (known: {})",
                KNOWN_SECTIONS.join(", ")
            ));
        }
    }
    let v = Validator {
        base,
        root,
        overrides,
        errors,
    };
    v.run(&mut table, vault_token_env)
}

struct Validator<'a> {
    base: &'a Path,
    /// Where files are looked up, for [`super::load_in_root`].
    root: Option<&'a Path>,
    /// Which keys the environment set, to name the variable in an error.
    overrides: &'a [Override],
    errors: &'a mut Vec<String>,
}

impl Validator<'_> {
    fn run(
        mut self,
        table: &mut toml::Table,
        vault_token_env: Option<SecretString>,
    ) -> Option<Config> {
        let listen = match table.remove("listen") {
            Some(v) => self.section::<raw::Listen>("[listen]", v),
            None => {
                self.err("[listen] is required (at least `allow`)".into());
                None
            }
        };
        let admin = self.optional::<raw::Admin>(table, "admin");
        let log = self.optional::<raw::Log>(table, "log");
        let shutdown = self.optional::<raw::Shutdown>(table, "shutdown");
        let declared = cross::Declared::of(table);
        let backup_declared = backup::Declared::of(table);
        let vault = self.optional::<raw::Vault>(table, "vault");
        let users = self.array::<raw::User>(table, "users");
        let routes = self.array::<raw::Route>(table, "routes");
        let credentials = self.credentials(table);
        let audit = self.optional::<raw::Audit>(table, "audit");
        let peering = self.optional::<raw::Peering>(table, "peering");
        let peers = self.array::<raw::Peer>(table, "peers");

        let listen = listen.and_then(|l| self.listen(l));
        let admin = admin.flatten().and_then(|a| self.admin(a));
        let log = log.flatten().unwrap_or_default();
        self.log_level(&log.level);
        let shutdown = shutdown.flatten().unwrap_or_default();
        let users: Vec<UserConfig> = users
            .into_iter()
            .filter_map(|(i, u)| self.user(i, u))
            .collect();
        let credentials: BTreeMap<String, CredentialsConfig> = credentials
            .into_iter()
            .filter_map(|(name, c)| self.credential(&name, c).map(|c| (name, c)))
            .collect();
        let vault = vault.flatten().and_then(|v| self.vault(v, vault_token_env));
        let routes: Vec<RouteConfig> = routes
            .into_iter()
            .filter_map(|(i, r)| self.route(i, r))
            .collect();
        self.cross_checks(&declared, &users, &routes, &credentials, vault.is_some());
        if let Some(l) = &listen {
            self.cert_users(l, &users);
        }
        let peering = self.peering(peering, peers, listen.as_ref());
        let audit = audit.flatten().map(|a| self.audit(a, &declared));
        let backup = self.backups(
            table,
            &backup_declared,
            &routes,
            &credentials,
            vault.is_some(),
        );
        Some(Config {
            listen: listen?,
            admin,
            log: LogConfig {
                format: log.format,
                level: log.level,
            },
            shutdown: ShutdownConfig {
                grace: shutdown.grace,
                revoke_timeout: shutdown.revoke_timeout,
            },
            users,
            routes,
            credentials,
            vault,
            audit,
            backup,
            peering,
        })
    }

    fn err(&mut self, e: String) {
        self.errors.push(e);
    }

    fn section<T: DeserializeOwned>(&mut self, what: &str, value: toml::Value) -> Option<T> {
        match value.try_into::<T>() {
            Ok(t) => Some(t),
            Err(e) => {
                let e = report::shape(what, &e, self.overrides);
                self.err(e);
                None
            }
        }
    }

    /// `Some(None)`: absent; `None`: present but invalid (already reported).
    fn optional<T: DeserializeOwned>(
        &mut self,
        table: &mut toml::Table,
        key: &str,
    ) -> Option<Option<T>> {
        match table.remove(key) {
            None => Some(None),
            Some(v) => self.section(&format!("[{key}]"), v).map(Some),
        }
    }

    fn array<T: DeserializeOwned>(
        &mut self,
        table: &mut toml::Table,
        key: &str,
    ) -> Vec<(usize, T)> {
        match table.remove(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    self.section(&format!("[[{key}]] #{}", i + 1), v)
                        .map(|t| (i, t))
                })
                .collect(),
            Some(_) => {
                self.err(format!("`{key}` must be an array of tables ([[{key}]])"));
                Vec::new()
            }
        }
    }

    fn credentials(&mut self, table: &mut toml::Table) -> Vec<(String, raw::Credentials)> {
        match table.remove("credentials") {
            None => Vec::new(),
            Some(toml::Value::Table(t)) => t
                .into_iter()
                .filter_map(|(name, v)| self.source(&name, v).map(|c| (name, c)))
                .collect(),
            Some(_) => {
                self.err("`credentials` must be a table of sources ([credentials.<name>])".into());
                Vec::new()
            }
        }
    }

    fn path(&self, p: &Path) -> PathBuf {
        let p = if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        };
        match self.root {
            Some(root) => super::under_root(root, &p),
            None => p,
        }
    }

    /// How `value`, given for `what` (`[section] key …`), is named in an error:
    /// quoted, unless an environment override set it — an override may carry a
    /// secret, so its value is never echoed (see `env`); the variable is named.
    fn shown(&self, what: &str, value: impl std::fmt::Display) -> String {
        match self.override_of(what) {
            Some(o) => format!("the value of {}", o.variable),
            None => format!("`{value}`"),
        }
    }

    /// A path as an error names it: itself, or the variable that set it.
    fn shown_path(&self, what: &str, p: &Path) -> String {
        match self.override_of(what) {
            Some(o) => format!("the file {} names", o.variable),
            None => p.display().to_string(),
        }
    }

    /// The override that set the key `what` describes, if one did.
    fn override_of(&self, what: &str) -> Option<&Override> {
        let (section, rest) = what.strip_prefix('[')?.split_once(']')?;
        let key = rest.split_whitespace().next()?;
        self.overrides
            .iter()
            .find(|o| o.section == section && o.key == key)
    }

    fn readable(&mut self, what: &str, p: &Path) -> Option<PathBuf> {
        let p = self.path(p);
        match std::fs::read(&p) {
            Ok(_) => Some(p),
            Err(e) => {
                let shown = self.shown_path(what, &p);
                self.err(format!("{what}: cannot read {shown}: {e}"));
                None
            }
        }
    }

    /// Reads a secret from a file, trimming one trailing newline.
    fn secret_file(&mut self, what: &str, p: &Path) -> Option<SecretString> {
        let p = self.path(p);
        match std::fs::read_to_string(&p) {
            Ok(s) => {
                let s = s.strip_suffix('\n').unwrap_or(&s);
                let s = s.strip_suffix('\r').unwrap_or(s);
                if s.is_empty() {
                    let shown = self.shown_path(what, &p);
                    self.err(format!("{what}: {shown} is empty"));
                    return None;
                }
                Some(SecretString::from(s.to_owned()))
            }
            Err(e) => {
                let shown = self.shown_path(what, &p);
                self.err(format!("{what}: cannot read {shown}: {e}"));
                None
            }
        }
    }

    fn socket_addr(&mut self, what: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                let shown = self.shown(what, s);
                self.err(format!(
                    "{what}: {shown} is not an address:port (e.g. 0.0.0.0:6432 or [::]:6432)"
                ));
                None
            }
        }
    }

    fn cidrs(&mut self, what: &str, list: &[String]) -> Vec<IpNet> {
        list.iter()
            .filter_map(|s| match parse_cidr(s) {
                Some(n) => Some(n),
                None => {
                    let shown = self.shown(what, s);
                    self.err(format!(
                        "{what}: {shown} is not a CIDR (e.g. 10.0.5.0/24, ::1/128) or IP address"
                    ));
                    None
                }
            })
            .collect()
    }

    fn log_level(&mut self, level: &str) {
        if level.parse::<tracing_subscriber::EnvFilter>().is_err() {
            let shown = self.shown("[log] level", level);
            self.err(format!(
                "[log] level: {shown} is not a level or filter (error, warn, info, debug, trace)"
            ));
        }
    }

    fn listen(&mut self, l: raw::Listen) -> Option<ListenConfig> {
        let address = self.socket_addr("[listen] address", &l.address);
        let allow = match &l.allow {
            Some(list) if !list.is_empty() => self.cidrs("[listen] allow", list),
            _ => {
                self.err("[listen] allow: required and non-empty; nothing is open by default (e.g. allow = [\"10.0.5.0/24\"])".into());
                Vec::new()
            }
        };
        let tls = match (&l.tls_cert_file, &l.tls_key_file) {
            (Some(c), Some(k)) => {
                let cert = self.readable("[listen] tls_cert_file", c);
                let key = self.readable("[listen] tls_key_file", k);
                if let (Some(cert_file), Some(key_file)) = (cert, key) {
                    if let Err(e) = crate::tls::server_config(&cert_file, &key_file) {
                        self.err(format!("[listen] TLS certificate/key: {e}"));
                    } else if let Err(e) = crate::reload::watch::not_expired(&cert_file) {
                        self.err(format!("[listen] tls_cert_file: {e}"));
                    }
                    Some(TlsFiles {
                        cert_file,
                        key_file,
                    })
                } else {
                    None
                }
            }
            (None, None) => {
                if l.require_tls {
                    self.err(
                        "[listen] require_tls = true needs tls_cert_file and tls_key_file".into(),
                    );
                }
                None
            }
            _ => {
                self.err("[listen] tls_cert_file and tls_key_file go together".into());
                None
            }
        };
        if l.max_connections == 0 {
            self.err("[listen] max_connections must be at least 1".into());
        }
        if l.handshake_timeout.is_zero() {
            self.err("[listen] handshake_timeout must be more than 0s".into());
        }
        self.handshake_budget(l.max_handshakes, l.max_handshakes_per_address);
        let client_certs = self.client_certs(
            l.client_ca_file.as_deref(),
            l.client_crl_file.as_deref(),
            l.tls_cert_file.is_some() && l.tls_key_file.is_some(),
        );
        let proxy_protocol = l.proxy_protocol.map(|p| self.proxy_protocol(p));
        Some(ListenConfig {
            address: address?,
            tls,
            require_tls: l.require_tls,
            allow,
            max_connections: l.max_connections,
            handshake_timeout: l.handshake_timeout,
            tcp_keepalive: l.tcp_keepalive,
            idle_timeout: l.idle_timeout.filter(|d| !d.is_zero()),
            max_handshakes: l.max_handshakes,
            max_handshakes_per_address: l.max_handshakes_per_address,
            client_certs,
            proxy_protocol,
        })
    }

    fn user(&mut self, i: usize, u: raw::User) -> Option<UserConfig> {
        let what = format!("[[users]] #{} ({})", i + 1, u.name);
        if u.name.is_empty() {
            self.err(format!("{what}: name must not be empty"));
            return None;
        }
        let method = u.auth;
        if u.trust_from.is_some() && method != raw::UserAuthMethod::Trust {
            self.err(format!("{what}: trust_from is only for auth = \"trust\""));
        }
        let cert_names = self.cert_names(&what, &u.name, method, u.cert_names.as_deref());
        let auth = match method {
            raw::UserAuthMethod::Scram => UserAuth::Scram(self.verifier(&what, &u)?),
            raw::UserAuthMethod::CertScram => UserAuth::CertAndScram {
                names: cert_names,
                verifier: self.verifier(&what, &u)?,
            },
            raw::UserAuthMethod::Cert => {
                if u.scram_verifier.is_some() || u.scram_verifier_file.is_some() {
                    self.err(format!(
                        "{what}: a cert user has no verifier (auth = \"cert+scram\" asks for both)"
                    ));
                }
                UserAuth::Cert { names: cert_names }
            }
            raw::UserAuthMethod::Trust => {
                if u.scram_verifier.is_some() || u.scram_verifier_file.is_some() {
                    self.err(format!("{what}: a trust user has no verifier"));
                }
                match &u.trust_from {
                    Some(list) if !list.is_empty() => UserAuth::Trust {
                        from: self.cidrs(&format!("{what} trust_from"), list),
                    },
                    _ => {
                        self.err(format!(
                            "{what}: auth = \"trust\" needs a non-empty trust_from list of CIDRs"
                        ));
                        return None;
                    }
                }
            }
        };
        Some(UserConfig { name: u.name, auth })
    }

    /// A SCRAM user's verifier, inline or from its file.
    fn verifier(&mut self, what: &str, u: &raw::User) -> Option<ScramVerifier> {
        let text = match (&u.scram_verifier, &u.scram_verifier_file) {
            (Some(v), None) => Some(v.clone()),
            (None, Some(f)) => self.secret_file(&format!("{what} scram_verifier_file"), f),
            (Some(_), Some(_)) => {
                self.err(format!(
                    "{what}: give scram_verifier or scram_verifier_file, not both"
                ));
                None
            }
            (None, None) => {
                self.err(format!("{what}: needs scram_verifier or scram_verifier_file (make one with `pgwarden scram-verifier`), or auth = \"trust\" or \"cert\""));
                None
            }
        }?;
        match text.expose_secret().parse::<ScramVerifier>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(format!("{what}: {e}"));
                None
            }
        }
    }

    fn route(&mut self, i: usize, r: raw::Route) -> Option<RouteConfig> {
        let what = format!("[[routes]] #{} ({})", i + 1, r.database);
        if r.users.is_empty() {
            self.err(format!(
                "{what}: users must name at least one user (or \"*\")"
            ));
        }
        let upstream = self.upstream(&what, r.upstream, r.database.clone());
        Some(RouteConfig {
            database: r.database,
            users: r.users,
            upstream,
            credentials: r.credentials,
            session_role: r.session_role,
            allowed_parameters: self.allowed_parameters(&what, r.allowed_parameters),
        })
    }

    /// A route's `upstream` table (also a backup target's); `what` names it in
    /// errors, `database` is the default database.
    fn upstream(&mut self, what: &str, u: raw::Upstream, database: String) -> UpstreamConfig {
        let ca_file = match (u.tls, &u.ca_file) {
            (UpstreamTls::Disable, _) => None,
            (_, Some(f)) => {
                let f = self.readable(&format!("{what} upstream.ca_file"), f);
                if let Some(Err(e)) = f.as_deref().map(crate::tls::load_roots) {
                    self.err(format!("{what} upstream.ca_file: {e}"));
                }
                f
            }
            (_, None) => {
                self.err(format!(
                    "{what}: upstream.ca_file is required unless upstream.tls = \"disable\""
                ));
                None
            }
        };
        let name = u.server_name.as_deref().unwrap_or(&u.host);
        if rustls_pki_types::ServerName::try_from(name.to_owned()).is_err() {
            self.err(format!(
                "{what}: `{name}` is not a valid server name for TLS"
            ));
        }
        UpstreamConfig {
            host: u.host,
            port: u.port,
            database: u.database.unwrap_or(database),
            tls: u.tls,
            ca_file,
            server_name: u.server_name,
            connect_timeout: u.connect_timeout,
            allow_insecure_auth: u.allow_insecure_auth,
        }
    }
}

/// A CIDR, or a bare address meaning just that host.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    /// Found by the `config_loader` fuzz target: validation quoted the value of
    /// an environment override back (`[listen] address: `<value>` is not an
    /// address:port`), though an override may carry a secret (`env`).
    #[test]
    fn an_overrides_value_is_never_echoed() {
        const BASE: &str = "[listen]\nrequire_tls = false\nallow = [\"127.0.0.1\"]\n\
            [[users]]\nname = \"u\"\nauth = \"trust\"\ntrust_from = [\"127.0.0.1\"]\n\
            [[routes]]\ndatabase = \"db\"\nusers = [\"u\"]\ncredentials = \"pg\"\n\
            upstream = { host = \"127.0.0.1\", tls = \"disable\", allow_insecure_auth = true }\n\
            [credentials.pg]\nsource = \"postgres\"\nadmin_user = \"admin\"\n";
        let secret = "Zq7SECRETvx9Kp2";
        let dir = tempfile::tempdir().unwrap();
        for (variable, value, in_file) in [
            ("PGWARDEN_LISTEN_ADDRESS", secret.to_owned(), ""),
            ("PGWARDEN_LISTEN_ALLOW", format!("[\"{secret}\"]"), ""),
            ("PGWARDEN_ADMIN_ADDRESS", secret.to_owned(), ""),
            ("PGWARDEN_LOG_LEVEL", format!("{secret}=nonsense="), ""),
            (
                "PGWARDEN_LISTEN_TLS_CERT_FILE",
                secret.to_owned(),
                "tls_key_file = \"k\"\n",
            ),
            ("PGWARDEN_AUDIT_CREDENTIALS", secret.to_owned(), ""),
        ] {
            let env = [(variable.to_owned(), value)];
            let text = BASE.replace("[listen]\n", &format!("[listen]\n{in_file}"));
            let errors = crate::config::from_str(&text, dir.path(), env)
                .expect_err("the override is invalid")
                .to_string();
            assert!(!errors.contains(secret), "{variable}: {errors}");
            assert!(errors.contains(variable), "{variable}: {errors}");
        }
        // A value written in the file is still quoted: it is the file's author's.
        let errors = crate::config::from_str(
            &BASE.replace("[listen]\n", "[listen]\naddress = \"nowhere\"\n"),
            dir.path(),
            [],
        )
        .expect_err("the address is invalid")
        .to_string();
        assert!(
            errors.contains("`nowhere` is not an address:port"),
            "{errors}"
        );
    }
}
