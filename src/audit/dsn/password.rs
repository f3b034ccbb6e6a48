//! Where the `--as` account's password comes from: `--password-file`, else
//! `PGPASSWORD`, else a passfile in libpq's format (`passfile=`,
//! `PGPASSFILE`, `~/.pgpass`).
//!
//! The password is a `SecretString` from the moment it is read, and the
//! files it is read from are wiped from memory once read. No error here
//! quotes a line of a file or a passfile: they name the file and the user.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use secrecy::zeroize::Zeroizing;

use super::AccountError;
use crate::config::UpstreamConfig;

/// Where the password is read from, decided when the DSN is parsed.
#[derive(Clone)]
pub(super) enum PasswordFrom {
    File(PathBuf),
    Env(SecretString),
    Passfile,
}

impl PasswordFrom {
    /// `password_file` is `--password-file`; `pgpassword` is `PGPASSWORD`.
    pub(super) fn choose(password_file: Option<&Path>, pgpassword: Option<String>) -> Self {
        match (password_file, pgpassword) {
            (Some(f), _) => PasswordFrom::File(f.to_owned()),
            (None, Some(p)) if !p.is_empty() => PasswordFrom::Env(SecretString::from(p)),
            _ => PasswordFrom::Passfile,
        }
    }

    /// The password of `user` for `upstream`; `passfile` is where to look
    /// when it comes from one.
    pub(super) fn read(
        &self,
        passfile: Option<&Path>,
        upstream: &UpstreamConfig,
        user: &str,
    ) -> Result<SecretString, AccountError> {
        match self {
            PasswordFrom::Env(p) => Ok(p.clone()),
            PasswordFrom::File(f) => {
                let text = std::fs::read_to_string(f)
                    .map(Zeroizing::new)
                    .map_err(|source| AccountError::PasswordFile {
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
                let found = passfile.and_then(|p| {
                    let text = Zeroizing::new(std::fs::read_to_string(p).ok()?);
                    passfile_lookup(
                        &text,
                        &upstream.host,
                        upstream.port,
                        &upstream.database,
                        user,
                    )
                });
                found.ok_or_else(|| AccountError::NoPassword(user.to_owned()))
            }
        }
    }
}

/// The password of the first passfile line matching (`*` matches anything;
/// `\:` and `\\` are escapes), as libpq reads `~/.pgpass`.
fn passfile_lookup(
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
