//! `PGWARDEN_<SECTION>_<KEY>` environment overrides.
//!
//! `PGWARDEN_LISTEN_ADDRESS=0.0.0.0:6432` sets `[listen] address`. Values are read
//! as TOML literals when they parse as one (`500`, `true`, `["10.0.0.0/8"]`) and as
//! strings otherwise. A variable naming no section fails loudly; a key the section
//! does not know fails when the section is validated. Values are never echoed in
//! errors (an override may carry a secret).

use super::report::Override;

/// Sections that can be overridden; arrays of tables (users, routes) and the
/// credential sources are configured in the file only.
const SECTIONS: &[&str] = &[
    "listen", "admin", "log", "shutdown", "vault", "audit", "peering",
];

/// Variables with the prefix that are not configuration overrides.
const NOT_OVERRIDES: &[&str] = &["PGWARDEN_CONFIG"];

/// Applies every override to `table`; returns which key each one set, so that
/// errors about those keys can name the variable.
pub(super) fn apply_overrides(
    table: &mut toml::Table,
    env: &[(String, String)],
    errors: &mut Vec<String>,
) -> Vec<Override> {
    let mut applied = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("PGWARDEN_") else {
            continue;
        };
        if NOT_OVERRIDES.contains(&name.as_str()) {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        let Some((section, key)) = SECTIONS.iter().find_map(|s| {
            lower
                .strip_prefix(s)
                .and_then(|k| k.strip_prefix('_'))
                .filter(|k| !k.is_empty())
                .map(|k| (*s, k.to_owned()))
        }) else {
            errors.push(format!(
                "environment variable {name}: not a known override (expected PGWARDEN_<{}>_<KEY>)",
                SECTIONS.join("|").to_ascii_uppercase()
            ));
            continue;
        };
        let entry = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section_table) = entry.as_table_mut() else {
            errors.push(format!(
                "environment variable {name}: [{section}] is not a table"
            ));
            continue;
        };
        applied.push(Override {
            section: section.to_owned(),
            key: key.clone(),
            variable: name.clone(),
        });
        section_table.insert(key, literal(value));
    }
    applied
}

/// The value as a TOML literal if it is one, else as a string.
fn literal(value: &str) -> toml::Value {
    format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(env: &[(&str, &str)]) -> (toml::Table, Vec<String>) {
        let mut table = toml::Table::new();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut errors = Vec::new();
        apply_overrides(&mut table, &env, &mut errors);
        (table, errors)
    }

    #[test]
    fn sets_typed_values() {
        let (t, errors) = run(&[
            ("PGWARDEN_LISTEN_ADDRESS", "0.0.0.0:6432"),
            ("PGWARDEN_LISTEN_MAX_CONNECTIONS", "7"),
            ("PGWARDEN_LISTEN_ALLOW", "[\"10.0.0.0/8\"]"),
            ("PGWARDEN_LOG_LEVEL", "debug"),
            ("HOME", "/root"),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(t["listen"]["address"].as_str(), Some("0.0.0.0:6432"));
        assert_eq!(t["listen"]["max_connections"].as_integer(), Some(7));
        assert_eq!(t["listen"]["allow"][0].as_str(), Some("10.0.0.0/8"));
        assert_eq!(t["log"]["level"].as_str(), Some("debug"));
    }

    #[test]
    fn unknown_sections_fail_loudly_without_echoing_values() {
        let (_, errors) = run(&[("PGWARDEN_BOGUS_KEY", "s3cret"), ("PGWARDEN_LISTEN", "x")]);
        assert_eq!(errors.len(), 2);
        assert!(errors.iter().all(|e| !e.contains("s3cret")));
    }
}
