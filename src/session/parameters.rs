//! Which of the client's startup parameters reach the database.
//!
//! PostgreSQL applies every startup parameter it does not handle itself as a
//! setting, after the `options` switches: a client's `role=…` would override
//! the route's `session_role`, and `options=-c post_auth_delay=…` would park
//! a backend long after pgwarden gave up on it. So pgwarden forwards only the
//! settings the route allows (`[[routes]] allowed_parameters`), given either
//! as startup parameters or as `-c name=value` / `--name=value` in `options`,
//! and refuses the connection over anything else, naming the parameter.
//! `options` is never forwarded as sent: the settings read from it are written
//! anew ([`options::encode`]), so the server parses exactly what was checked.
//! `user`, `database`, `replication` and `_pq_.*` are handled before this
//! (`establish::identify`, `establish::protocol_version`).

use crate::protocol::options::{self, OptionsError, Setting};
use crate::protocol::startup::StartupMessage;

/// What in a startup message a route does not let through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParameterRefusal {
    /// A setting the route does not allow, as a parameter or in `options`.
    #[error("parameter \"{0}\" is not allowed on this route")]
    NotAllowed(String),
    /// `options` holds a switch that is not a setting (`-F`, `-B 100`, …).
    #[error("options: {0} is not allowed")]
    Switch(String),
    /// `options` holds a setting without a value.
    #[error("options: {0}")]
    Malformed(String),
}

/// The parameters to send upstream (besides user and database): the allowed
/// ones as given, and `options` rebuilt from its allowed settings.
pub fn forwarded(
    startup: &StartupMessage,
    allowed: &[String],
) -> Result<Vec<(String, String)>, ParameterRefusal> {
    let permitted = |name: &str| allowed.iter().any(|a| a.eq_ignore_ascii_case(name));
    let mut out = Vec::new();
    let mut settings: Vec<Setting> = Vec::new();
    for (name, value) in &startup.params {
        match name.as_str() {
            "user" | "database" | "replication" => {}
            _ if name.starts_with("_pq_.") => {}
            "options" => {
                for setting in options::settings(value).map_err(|e| match e {
                    OptionsError::Switch(s) => ParameterRefusal::Switch(shown(&s)),
                    OptionsError::NoValue(_) => ParameterRefusal::Malformed(shown(&e.to_string())),
                })? {
                    if !permitted(&setting.name) {
                        return Err(ParameterRefusal::NotAllowed(shown(&setting.name)));
                    }
                    settings.push(setting);
                }
            }
            _ if permitted(name) => out.push((name.clone(), value.clone())),
            _ => return Err(ParameterRefusal::NotAllowed(shown(name))),
        }
    }
    if !settings.is_empty() {
        let encoded: Vec<String> = settings.iter().map(options::encode).collect();
        out.push(("options".to_owned(), encoded.join(" ")));
    }
    Ok(out)
}

/// The longest piece of a client's name that is quoted back to it.
const SHOWN_MAX: usize = 64;

/// A client-chosen name as it is quoted back: at most [`SHOWN_MAX`] characters.
fn shown(name: &str) -> String {
    match name.char_indices().nth(SHOWN_MAX) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> StartupMessage {
        StartupMessage {
            major: 3,
            minor: 0,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn defaults() -> Vec<String> {
        crate::config::raw::DEFAULT_ALLOWED_PARAMETERS
            .iter()
            .map(|p| p.to_ascii_lowercase())
            .collect()
    }

    #[test]
    fn what_pgjdbc_sends_is_forwarded_as_sent() {
        let s = startup(&[
            ("user", "keycloak"),
            ("database", "keycloak"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "2"),
            ("application_name", "PostgreSQL JDBC Driver"),
            ("_pq_.test", "1"),
        ]);
        let out = forwarded(&s, &defaults()).unwrap();
        assert_eq!(
            out.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            [
                "client_encoding",
                "DateStyle",
                "TimeZone",
                "extra_float_digits",
                "application_name"
            ]
        );
    }

    #[test]
    fn a_role_parameter_is_refused() {
        let s = startup(&[("user", "keycloak"), ("role", "postgres")]);
        assert_eq!(
            forwarded(&s, &defaults()),
            Err(ParameterRefusal::NotAllowed("role".into()))
        );
        let s = startup(&[("user", "keycloak"), ("ROLE", "postgres")]);
        assert!(forwarded(&s, &defaults()).is_err());
    }

    #[test]
    fn settings_in_options_are_checked_and_written_anew() {
        let s = startup(&[
            ("user", "k"),
            (
                "options",
                r"-c statement_timeout=5s  --lock-timeout=1s -cSearch_Path=a\ b",
            ),
        ]);
        let out = forwarded(&s, &defaults()).unwrap();
        assert_eq!(
            out,
            [(
                "options".to_owned(),
                r"-c statement_timeout=5s -c lock_timeout=1s -c Search_Path=a\ b".to_owned()
            )]
        );
        for bad in [
            "-c post_auth_delay=1800",
            "-c statement_timeout=1 --post-auth-delay=1800",
            "-c role=postgres",
            "-c session_authorization=postgres",
        ] {
            let s = startup(&[("user", "k"), ("options", bad)]);
            assert!(
                matches!(
                    forwarded(&s, &defaults()),
                    Err(ParameterRefusal::NotAllowed(_))
                ),
                "{bad}"
            );
        }
        let s = startup(&[("user", "k"), ("options", "-c post_auth_delay=1800")]);
        assert_eq!(
            forwarded(&s, &defaults()),
            Err(ParameterRefusal::NotAllowed("post_auth_delay".into()))
        );
    }

    #[test]
    fn other_switches_and_settings_without_values_are_refused() {
        let s = startup(&[("user", "k"), ("options", "-F")]);
        assert_eq!(
            forwarded(&s, &defaults()),
            Err(ParameterRefusal::Switch("-F".into()))
        );
        let s = startup(&[("user", "k"), ("options", "-c statement_timeout")]);
        assert!(matches!(
            forwarded(&s, &defaults()),
            Err(ParameterRefusal::Malformed(_))
        ));
    }

    #[test]
    fn a_route_list_replaces_the_default() {
        let only = vec!["application_name".to_owned()];
        let s = startup(&[("user", "k"), ("application_name", "a")]);
        assert!(forwarded(&s, &only).is_ok());
        let s = startup(&[("user", "k"), ("TimeZone", "UTC")]);
        assert_eq!(
            forwarded(&s, &only),
            Err(ParameterRefusal::NotAllowed("TimeZone".into()))
        );
    }

    #[test]
    fn a_long_name_is_quoted_back_cut() {
        let long = "x".repeat(1000);
        let s = startup(&[("user", "k"), (long.as_str(), "1")]);
        let Err(ParameterRefusal::NotAllowed(name)) = forwarded(&s, &defaults()) else {
            panic!("refused")
        };
        assert_eq!(name.chars().count(), SHOWN_MAX + 1);
    }
}
