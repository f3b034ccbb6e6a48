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

mod password;
mod syntax;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use tokio::time::Instant;

use password::PasswordFrom;

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

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("user", &self.user)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
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
        for (k, v) in syntax::pairs(dsn)? {
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
        account.password = PasswordFrom::choose(password_file, var("PGPASSWORD"));
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
        let upstream = self.upstream(route)?;
        let target = UpstreamTarget::new(upstream.clone(), tls(&upstream)?, keepalive)
            .map_err(AccountError::Target)?;
        let password = self
            .password
            .read(self.passfile.as_deref(), &upstream, &self.user)?;
        let describe = format!(
            "{}@{}/{}",
            self.user,
            upstream.endpoint(),
            upstream.database
        );
        let credential = Credential {
            username: self.user.clone(),
            password,
            scram_keys: None,
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

    /// The route's upstream with what the DSN names instead; its TLS never
    /// weaker than verify-ca, nor than the route's own when that is off.
    fn upstream(&self, route: &UpstreamConfig) -> Result<UpstreamConfig, AccountError> {
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
        Ok(upstream)
    }
}

/// The TLS configuration verifying `upstream`'s server against its CA.
fn tls(upstream: &UpstreamConfig) -> Result<Option<Arc<ClientConfig>>, AccountError> {
    let verification = match upstream.tls {
        UpstreamTls::Disable => return Ok(None),
        UpstreamTls::VerifyCa => crate::tls::Verification::CaOnly,
        UpstreamTls::VerifyFull => crate::tls::Verification::Full,
    };
    let ca = upstream.ca_file.as_ref().ok_or(AccountError::NoCa)?;
    crate::tls::upstream_config(ca, verification)
        .map(Some)
        .map_err(AccountError::Tls)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
