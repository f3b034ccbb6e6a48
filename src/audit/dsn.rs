//! `--as DSN`: an explicit auditor account, for checks that need more
//! privilege than Keycloak's roles have (pg_hba rules, password hashes).
//!
//! A URI (`postgresql://auditor@db.internal:5432/keycloak`) or key/value
//! conninfo (`user=auditor host=db.internal`). Its password never comes from
//! the command line: a DSN that carries one is refused, without being echoed.
//! The password comes from `--password-file`, else `PGPASSWORD`, else a
//! passfile (`passfile=`, `PGPASSFILE`, `~/.pgpass`, libpq's format). Host,
//! port and database default to the route's; TLS is the route's (its CA and
//! verification), or `sslmode=verify-full|verify-ca` with `sslrootcert=`.
//! Never weaker: `require`, `prefer` and `allow` are refused, and `disable`
//! only for a route that runs without TLS itself.

use std::path::{Path, PathBuf};
use tokio::time::Instant;

use secrecy::SecretString;

use crate::config::{UpstreamConfig, UpstreamTls};
use crate::credentials::{Credential, Lease, LeaseId};
use crate::tls::TlsError;
use crate::upstream::{TargetError, UpstreamTarget};

/// Why a `--as` DSN was refused. No variant holds a value from the DSN but
/// the name of a parameter pgwarden does not support.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DsnError {
    #[error(
        "the --as DSN carries a password: never put one on the command line; \
         use PGPASSWORD, a passfile or --password-file"
    )]
    CarriesPassword,
    #[error("a bad %-escape in the DSN")]
    BadEscape,
    /// Without the decoding error, whose `Debug` would show the bytes.
    #[error("the DSN is not UTF-8")]
    NotUtf8,
    #[error("an unclosed [ in the DSN's host")]
    UnclosedBracket,
    #[error("an unclosed quote in the DSN")]
    UnclosedQuote,
    #[error("a DSN parameter without a value")]
    NoValue,
    #[error("the DSN's port is not a number")]
    Port(#[source] std::num::ParseIntError),
    #[error("the DSN's `{0}` is not supported by pgwarden audit")]
    Unsupported(String),
    #[error("the --as DSN names no user")]
    NoUser,
}

/// Why the `--as` account cannot connect to a route's database.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AccountError {
    #[error(
        "the DSN's sslmode must be verify-full or verify-ca (the audit verifies the server it talks to)"
    )]
    WeakSslMode,
    #[error("no CA to verify the server: give sslrootcert=")]
    NoCa,
    #[error(transparent)]
    Tls(TlsError),
    #[error(transparent)]
    Target(TargetError),
    #[error("--password-file {}: {source}", path.display())]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--password-file {} is empty", .0.display())]
    EmptyPasswordFile(PathBuf),
    #[error(
        "no password for {0}: set PGPASSWORD, add it to a passfile (~/.pgpass, PGPASSFILE) or give --password-file"
    )]
    NoPassword(String),
}

/// The auditor account, as parsed (the password apart).
#[derive(Clone)]
pub(crate) struct Account {
    pub(crate) user: String,
    host: Option<String>,
    port: Option<u16>,
    dbname: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<PathBuf>,
    passfile: Option<PathBuf>,
    /// Where the password is read from.
    password: PasswordFrom,
}

#[derive(Clone)]
enum PasswordFrom {
    File(PathBuf),
    Env(SecretString),
    Passfile,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("user", &self.user)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// Percent-decoding of URI parts.
fn decode(s: &str) -> Result<String, DsnError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(DsnError::BadEscape)?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DsnError::NotUtf8)
}

/// `key=value` pairs of a URI or a conninfo string.
fn pairs(dsn: &str) -> Result<Vec<(String, String)>, DsnError> {
    let mut out = Vec::new();
    if let Some(rest) = dsn
        .strip_prefix("postgresql://")
        .or_else(|| dsn.strip_prefix("postgres://"))
    {
        let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = main.split_once('/').unwrap_or((main, ""));
        let hostport = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                if userinfo.contains(':') {
                    return Err(DsnError::CarriesPassword);
                }
                out.push(("user".into(), decode(userinfo)?));
                hostport
            }
            None => authority,
        };
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => {
                let (h, p) = v6.split_once(']').ok_or(DsnError::UnclosedBracket)?;
                (h, p.strip_prefix(':').unwrap_or(""))
            }
            None => hostport.split_once(':').unwrap_or((hostport, "")),
        };
        for (k, v) in [
            ("host", decode(host)?),
            ("port", port.to_owned()),
            ("dbname", decode(path)?),
        ] {
            if !v.is_empty() {
                out.push((k.into(), v));
            }
        }
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or(DsnError::NoValue)?;
            let key = decode(k)?;
            if key == "password" {
                // Refused before its value is even decoded.
                return Err(DsnError::CarriesPassword);
            }
            out.push((key, decode(v)?));
        }
    } else {
        let mut chars = dsn.chars().peekable();
        loop {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.peek().is_none() {
                break;
            }
            let key: String =
                std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.next() != Some('=') {
                return Err(DsnError::NoValue);
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            let mut value = String::new();
            if chars.next_if_eq(&'\'').is_some() {
                loop {
                    match chars.next() {
                        Some('\\') => value.extend(chars.next()),
                        Some('\'') => break,
                        Some(c) => value.push(c),
                        None => return Err(DsnError::UnclosedQuote),
                    }
                }
            } else {
                while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                    if c == '\\' {
                        value.extend(chars.next());
                    } else {
                        value.push(c);
                    }
                }
            }
            out.push((key, value));
        }
    }
    if out.iter().any(|(k, _)| k == "password") {
        return Err(DsnError::CarriesPassword);
    }
    Ok(out)
}

impl Account {
    /// Parses `dsn`; `password_file` is `--password-file`, `env` the process
    /// environment (for `PGPASSWORD`, `PGPASSFILE`, `HOME`).
    pub(crate) fn parse(
        dsn: &str,
        password_file: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Account, DsnError> {
        let mut account = Account {
            user: String::new(),
            host: None,
            port: None,
            dbname: None,
            sslmode: None,
            sslrootcert: None,
            passfile: None,
            password: PasswordFrom::Passfile,
        };
        for (k, v) in pairs(dsn)? {
            match k.as_str() {
                "user" => account.user = v,
                "host" => account.host = Some(v),
                "port" => account.port = Some(v.parse().map_err(DsnError::Port)?),
                "dbname" => account.dbname = Some(v),
                "sslmode" => account.sslmode = Some(v),
                "sslrootcert" => account.sslrootcert = Some(v.into()),
                "passfile" => account.passfile = Some(v.into()),
                "application_name" | "connect_timeout" => {}
                other => return Err(DsnError::Unsupported(other.to_owned())),
            }
        }
        if account.user.is_empty() {
            return Err(DsnError::NoUser);
        }
        let var = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        account.password = match (password_file, var("PGPASSWORD")) {
            (Some(f), _) => PasswordFrom::File(f.to_owned()),
            (None, Some(p)) if !p.is_empty() => PasswordFrom::Env(SecretString::from(p)),
            _ => PasswordFrom::Passfile,
        };
        if account.passfile.is_none() {
            account.passfile = var("PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| Path::new(&h).join(".pgpass")));
        }
        Ok(account)
    }

    /// The upstream the account connects to for a route, its login, and a
    /// description for the report (never the password).
    pub(crate) fn target(
        &self,
        route: &UpstreamConfig,
        keepalive: std::time::Duration,
    ) -> Result<(UpstreamTarget, Credential, String), AccountError> {
        let mut upstream = route.clone();
        if let Some(h) = &self.host {
            upstream.host = h.clone();
            upstream.server_name = None;
        }
        upstream.port = self.port.unwrap_or(upstream.port);
        if let Some(d) = &self.dbname {
            upstream.database = d.clone();
        }
        if let Some(ca) = &self.sslrootcert {
            upstream.ca_file = Some(ca.clone());
        }
        upstream.tls = match self.sslmode.as_deref() {
            None => route.tls,
            Some("verify-full") => UpstreamTls::VerifyFull,
            Some("verify-ca") => UpstreamTls::VerifyCa,
            Some("disable") if route.tls == UpstreamTls::Disable => UpstreamTls::Disable,
            Some(_) => return Err(AccountError::WeakSslMode),
        };
        let tls = match (upstream.tls, &upstream.ca_file) {
            (UpstreamTls::Disable, _) => None,
            (mode, Some(ca)) => {
                let v = if mode == UpstreamTls::VerifyCa {
                    crate::tls::Verification::CaOnly
                } else {
                    crate::tls::Verification::Full
                };
                Some(crate::tls::upstream_config(ca, v).map_err(AccountError::Tls)?)
            }
            (_, None) => return Err(AccountError::NoCa),
        };
        let target =
            UpstreamTarget::new(upstream.clone(), tls, keepalive).map_err(AccountError::Target)?;
        let password = self.password(&upstream)?;
        let describe = format!(
            "{}@{}/{}",
            self.user,
            upstream.endpoint(),
            upstream.database
        );
        let credential = Credential {
            username: self.user.clone(),
            password,
            lease: Lease {
                id: LeaseId::new(format!("static/{}", self.user)),
                username: self.user.clone(),
                endpoint: upstream.endpoint(),
                issuer: String::new(),
                duration: std::time::Duration::ZERO,
                renewable: false,
                issued_at: Instant::now(),
            },
        };
        Ok((target, credential, describe))
    }

    fn password(&self, upstream: &UpstreamConfig) -> Result<SecretString, AccountError> {
        match &self.password {
            PasswordFrom::Env(p) => Ok(p.clone()),
            PasswordFrom::File(f) => {
                let text =
                    std::fs::read_to_string(f).map_err(|source| AccountError::PasswordFile {
                        path: f.clone(),
                        source,
                    })?;
                let line = text.lines().next().unwrap_or_default();
                if line.is_empty() {
                    return Err(AccountError::EmptyPasswordFile(f.clone()));
                }
                Ok(SecretString::from(line.to_owned()))
            }
            PasswordFrom::Passfile => {
                let found = self.passfile.as_deref().and_then(|p| {
                    let text = std::fs::read_to_string(p).ok()?;
                    passfile_lookup(
                        &text,
                        &upstream.host,
                        upstream.port,
                        &upstream.database,
                        &self.user,
                    )
                });
                found.ok_or_else(|| AccountError::NoPassword(self.user.clone()))
            }
        }
    }
}

/// The password of the first passfile line matching (`*` matches anything;
/// `\:` and `\\` are escapes), as libpq reads `~/.pgpass`.
pub(crate) fn passfile_lookup(
    text: &str,
    host: &str,
    port: u16,
    database: &str,
    user: &str,
) -> Option<SecretString> {
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => field.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        fields.push(field);
        if fields.len() != 5 {
            continue;
        }
        let ok = |f: &str, want: &str| f == "*" || f == want;
        if ok(&fields[0], host)
            && ok(&fields[1], &port)
            && ok(&fields[2], database)
            && ok(&fields[3], user)
        {
            return Some(SecretString::from(fields.remove(4)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn dsns_with_a_password_are_refused_without_echoing_it() {
        for dsn in [
            "postgresql://auditor:s3cret@db/keycloak",
            "user=auditor password=s3cret host=db",
            "postgres://auditor@db/keycloak?password=s3cret",
        ] {
            let e = Account::parse(dsn, None, &[]).unwrap_err();
            let (text, debug) = (e.to_string(), format!("{e:?}"));
            assert!(!text.contains("s3cret") && !debug.contains("s3cret"), "{e}");
            assert!(text.contains("password"), "{e}");
        }
    }

    #[test]
    fn a_word_without_a_value_is_not_echoed() {
        // A password pasted after a space is a word without `=`: refused unseen.
        for dsn in [
            "user=auditor host=db s3cret",
            "postgresql://auditor@db/kc?s3cret",
        ] {
            let e = Account::parse(dsn, None, &[]).unwrap_err();
            let (text, debug) = (e.to_string(), format!("{e:?}"));
            assert!(!text.contains("s3cret") && !debug.contains("s3cret"), "{e}");
            assert!(matches!(e, DsnError::NoValue), "{e}");
        }
    }

    #[test]
    fn uris_and_conninfo_give_the_same_account() {
        let a = Account::parse(
            "postgresql://aud%40it@[::1]:5433/kc?sslmode=verify-full",
            None,
            &[],
        )
        .unwrap();
        assert_eq!(
            (a.user.as_str(), a.host.as_deref(), a.port),
            ("aud@it", Some("::1"), Some(5433))
        );
        assert_eq!(a.dbname.as_deref(), Some("kc"));
        let b = Account::parse("user='aud it' host=db port=5433 dbname=kc", None, &[]).unwrap();
        assert_eq!((b.user.as_str(), b.host.as_deref()), ("aud it", Some("db")));
        assert!(Account::parse("host=db", None, &[]).is_err(), "no user");
        assert!(Account::parse("user=a bogus=1", None, &[]).is_err());
    }

    #[test]
    fn passfile_lines_match_with_wildcards_and_escapes() {
        let text =
            "# comment\nother:5432:*:auditor:no\ndb:*:keycloak:auditor:pa\\:ss\n*:*:*:*:fallback\n";
        let get =
            |h, p, d, u| passfile_lookup(text, h, p, d, u).map(|s| s.expose_secret().to_owned());
        assert_eq!(
            get("db", 5432, "keycloak", "auditor").as_deref(),
            Some("pa:ss")
        );
        assert_eq!(get("x", 1, "y", "z").as_deref(), Some("fallback"));
        assert_eq!(
            get("other", 5432, "keycloak", "auditor").as_deref(),
            Some("no")
        );
    }
}
