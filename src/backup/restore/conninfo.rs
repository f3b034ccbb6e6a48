//! Keeping passwords off pg_restore's command line, where `ps` and
//! `/proc/<pid>/cmdline` show them to every user of the host.
//!
//! [`holds_password`] is a guard rail, deliberately wider than libpq: it
//! refuses any `password` keyword (`password=…`, `password = …`, a URI's
//! `?password=…` or `&password=…`), with the percent-escapes that libpq
//! decodes in URIs undone first, and any `postgres://` or `postgresql://` URI
//! whose user part has a `:` — in a `--dbname` and in every argument given
//! to pg_restore after `--`. A false alarm costs a rename; a miss, a password
//! in the process list.

const KEYWORD: &str = "password";
const SCHEMES: [&str; 2] = ["postgresql://", "postgres://"];

/// Whether `arg` (a connection string or a pg_restore argument) holds a password.
pub(super) fn holds_password(arg: &str) -> bool {
    let raw = arg.to_ascii_lowercase();
    let decoded = percent_decoded(arg).to_ascii_lowercase();
    [raw, decoded]
        .iter()
        .any(|s| password_keyword(s) || uri_userinfo_password(s))
}

/// `password` followed by optional whitespace and `=`, anywhere.
fn password_keyword(s: &str) -> bool {
    s.match_indices(KEYWORD)
        .any(|(at, _)| s[at + KEYWORD.len()..].trim_start().starts_with('='))
}

/// A PostgreSQL URI anywhere in `s` whose user information holds a `:`.
fn uri_userinfo_password(s: &str) -> bool {
    SCHEMES.iter().any(|scheme| {
        s.match_indices(scheme).any(|(at, _)| {
            let rest = &s[at + scheme.len()..];
            let authority = rest.split(['/', '?', ' ', '\t', '\n']).next().unwrap_or("");
            authority
                .rsplit_once('@')
                .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        })
    })
}

/// `s` with every `%XX` escape decoded (bytes that do not form UTF-8 are
/// replaced); a `%` not followed by two hex digits stays as it is.
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_with_a_password_are_refused() {
        for bad in [
            "host=db password=x dbname=k",
            "host=db  PASSWORD = x",
            "postgresql://u:secret@db/k",
            "postgres://db/k?password=x",
            "postgres://db/k?sslmode=require&password=x",
        ] {
            assert!(holds_password(bad), "{bad}");
        }
        for good in [
            "host=db dbname=k user=u sslmode=verify-full",
            "postgresql://u@db:5432/k?sslmode=verify-full",
            "postgresql://db/k",
            "host=db passfile=/home/u/.pgpass",
            "--no-owner",
            "--single-transaction",
        ] {
            assert!(!holds_password(good), "{good}");
        }
    }

    #[test]
    fn percent_escapes_and_arguments_do_not_hide_a_password() {
        for bad in [
            // libpq decodes escapes in a URI's parameter names and user part.
            "postgresql://db/k?pass%77ord=secret",
            "postgresql://db/k?%70%61%73%73%77%6F%72%64=secret",
            "postgresql://u:p%2F@db/k",
            // After `--`, as pg_restore's own arguments.
            "--dbname=postgresql://u:secret@db/k",
            "--dbname=host=db password=secret",
        ] {
            assert!(holds_password(bad), "{bad}");
        }
        assert_eq!(percent_decoded("a%41%zz%4"), "aA%zz%4");
    }
}
