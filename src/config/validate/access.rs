//! Who may connect to what, and what a client may set: `[admin]`'s
//! allowlist, connection cap and timeouts, and a route's
//! `allowed_parameters`.

use super::super::AdminConfig;
use super::super::raw;
use super::{Validator, parse_cidr};

impl Validator<'_> {
    pub(super) fn admin(&mut self, a: raw::Admin) -> Option<AdminConfig> {
        let address = self.socket_addr("[admin] address", &a.address);
        let allow = match &a.allow {
            None => raw::DEFAULT_ADMIN_ALLOW
                .iter()
                .filter_map(|s| parse_cidr(s))
                .collect(),
            Some(list) if list.is_empty() => {
                self.err(
                    "[admin] allow: must not be empty (leave it out for loopback only)".into(),
                );
                Vec::new()
            }
            Some(list) => self.cidrs("[admin] allow", list),
        };
        if a.max_connections == 0 {
            self.err("[admin] max_connections must be at least 1".into());
        }
        if a.header_timeout.is_zero() || a.request_timeout.is_zero() {
            self.err("[admin] header_timeout and request_timeout must be more than 0s".into());
        } else if a.header_timeout > a.request_timeout {
            self.err("[admin] header_timeout may not be longer than request_timeout".into());
        }
        Some(AdminConfig {
            address: address?,
            allow,
            max_connections: a.max_connections,
            header_timeout: a.header_timeout,
            request_timeout: a.request_timeout,
        })
    }

    /// `allowed_parameters`, lowercase, or the default list. Names pgwarden
    /// sets or handles itself, and `post_auth_delay`, may not be listed.
    pub(super) fn allowed_parameters(
        &mut self,
        what: &str,
        list: Option<Vec<String>>,
    ) -> Vec<String> {
        let Some(list) = list else {
            return raw::DEFAULT_ALLOWED_PARAMETERS
                .iter()
                .map(|p| p.to_ascii_lowercase())
                .collect();
        };
        let mut out: Vec<String> = Vec::with_capacity(list.len());
        for name in list {
            let lower = name.to_ascii_lowercase();
            let why = if !is_setting_name(&name) {
                Some("is not a setting name (letters, digits, `_` and `.`)")
            } else if matches!(
                lower.as_str(),
                "user" | "database" | "replication" | "options"
            ) || lower.starts_with("_pq_.")
            {
                Some("is handled by pgwarden itself and cannot be allowed")
            } else if matches!(lower.as_str(), "role" | "session_authorization") {
                Some("would let clients act as another role than session_role and the issued login")
            } else if lower == "post_auth_delay" {
                Some("would let clients park database backends after pgwarden gave up on them")
            } else {
                None
            };
            match why {
                Some(why) => self.err(format!("{what} allowed_parameters: `{name}` {why}")),
                None if !out.contains(&lower) => out.push(lower),
                None => {}
            }
        }
        out
    }
}

/// A configuration parameter's name as PostgreSQL accepts one: a letter or
/// `_`, then letters, digits, `_`, `$` or `.` (`.` for extensions' settings).
fn is_setting_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.'))
}
