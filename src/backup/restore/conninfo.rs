//! Keeping passwords off pg_restore's command line, where `ps` and
//! `/proc/<pid>/cmdline` show them to every user of the host.

/// Whether the connection string `conninfo` holds a password.
pub(super) fn holds_password(conninfo: &str) -> bool {
    let lower = conninfo.to_ascii_lowercase();
    let keyword = lower
        .split(|c: char| c.is_whitespace())
        .any(|w| w.trim_start().starts_with("password"));
    let uri_password = (lower.starts_with("postgres://") || lower.starts_with("postgresql://"))
        && lower
            .split_once("://")
            .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or(""))
            .and_then(|authority| authority.rsplit_once('@'))
            .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let query_password = lower.contains("?password=") || lower.contains("&password=");
    keyword || uri_password || query_password
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
        ] {
            assert!(!holds_password(good), "{good}");
        }
    }
}
