//! The configuration files an embedded cluster is given: `pg_hba.conf`, the
//! settings appended to `postgresql.conf`, and the checks that keep options
//! from corrupting them.

use super::{ClusterError, ClusterOptions, HOST};

/// Settings for every embedded cluster; [`ClusterOptions::settings`] come after and win.
const BASE_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", HOST),
    ("unix_socket_directories", ""),
    ("ssl", "on"),
    ("ssl_cert_file", "server.crt"),
    ("ssl_key_file", "server.key"),
    // Lets tests use `cert` authentication with client certificates from the same CA.
    ("ssl_ca_file", "ca.crt"),
    ("ssl_min_protocol_version", "TLSv1.2"),
    ("password_encryption", "scram-sha-256"),
    ("max_connections", "300"),
    // Throwaway data: durability only costs time.
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("log_connections", "on"),
    ("log_disconnections", "on"),
    ("log_line_prefix", "%m [%p] %q%u@%d "),
];

pub(super) fn hba_conf(superuser: &str, lines: Option<&[String]>) -> String {
    let su = quote_ident(superuser);
    let mut conf = format!(
        "# Written by pgwarden's embedded cluster.\n\
         hostssl all {su} 127.0.0.1/32 scram-sha-256\n"
    );
    match lines {
        Some(lines) => lines.iter().for_each(|l| {
            conf.push_str(l);
            conf.push('\n');
        }),
        None => conf.push_str(
            "hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostssl all all ::1/128 scram-sha-256\n",
        ),
    }
    conf
}

pub(super) fn settings_conf(extra: &[(String, String)]) -> String {
    let base = BASE_SETTINGS.iter().map(|&(n, v)| (n, v));
    let extra = extra.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    let mut conf = String::from("\n# Written by pgwarden's embedded cluster.\n");
    for (name, value) in base.chain(extra) {
        conf.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
    }
    conf
}

/// `"name"` with embedded quotes doubled, for SQL and pg_hba.conf.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Reject options that would corrupt the files we write.
pub(super) fn validate(opts: &ClusterOptions) -> Result<(), ClusterError> {
    let bad = |what: String| Err(ClusterError::InvalidOption(what));
    let line_safe = |s: &str| !s.contains(['\n', '\r', '\0']);
    let su = &opts.superuser;
    if su.is_empty() || su.len() > 63 || su.contains('"') || !line_safe(su) {
        return bad(format!("superuser name {su:?}"));
    }
    if let Some(line) = opts.hba.iter().flatten().find(|l| !line_safe(l)) {
        return bad(format!("pg_hba.conf line {line:?} spans lines"));
    }
    for (name, value) in &opts.settings {
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !name_ok || !line_safe(value) {
            return bad(format!("setting {name:?}"));
        }
    }
    if opts.server_names.is_empty() {
        return bad("server_names is empty".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_quoted_and_ours_come_first() {
        let conf = settings_conf(&[("log_statement".into(), "it's".into())]);
        assert!(conf.contains("ssl = 'on'\n"));
        assert!(conf.contains("log_line_prefix = '%m [%p] %q%u@%d '\n"));
        assert!(conf.ends_with("log_statement = 'it''s'\n"));
    }

    #[test]
    fn hba_always_admits_the_superuser_first() {
        let conf = hba_conf(
            "post\"gres",
            Some(&["hostssl all all 0.0.0.0/0 cert".into()]),
        );
        let lines: Vec<&str> = conf.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "hostssl all \"post\"\"gres\" 127.0.0.1/32 scram-sha-256",
                "hostssl all all 0.0.0.0/0 cert"
            ]
        );
        assert!(hba_conf("postgres", None).contains("hostssl all all ::1/128 scram-sha-256"));
    }

    #[test]
    fn options_that_would_corrupt_files_are_refused() {
        let with = |f: fn(&mut ClusterOptions)| {
            let mut opts = ClusterOptions::default();
            f(&mut opts);
            validate(&opts)
        };
        assert!(with(|_| {}).is_ok());
        assert!(with(|o| o.superuser = "a\"b".into()).is_err());
        assert!(with(|o| o.hba = Some(vec!["host all all\nlocal".into()])).is_err());
        assert!(with(|o| o.settings = vec![("a = 1\nb".into(), "x".into())]).is_err());
        assert!(with(|o| o.settings = vec![("work_mem".into(), "1\n".into())]).is_err());
        assert!(with(|o| o.server_names.clear()).is_err());
    }
}
