//! Whether the server would log a role's statements — and with them the
//! passwords or SCRAM verifiers in a credential issuer's `CREATE ROLE … PASSWORD`.
//!
//! One rule, used by the built-in source when it opens its admin connection
//! and by `pgwarden audit` for every issuer role. Statements are logged by
//! `log_statement` (ddl, mod, all), by `log_min_duration_statement` (any value
//! but -1, for a slow one), and when one fails by `log_min_error_statement`
//! (at `error` or below, the default). Not covered: the sampling settings
//! (`log_transaction_sample_rate`, `log_min_duration_sample`) and extensions
//! such as pgaudit.

/// The settings to change (as `name = value`) so that a session with these
/// values logs none of its statements; empty when none would be logged.
pub(crate) fn fixes(
    log_statement: &str,
    log_min_duration_statement: &str,
    log_min_error_statement: &str,
) -> Vec<&'static str> {
    let mut fixes = Vec::new();
    if log_statement != "none" {
        fixes.push("log_statement = 'none'");
    }
    if log_min_duration_statement != "-1" {
        fixes.push("log_min_duration_statement = -1");
    }
    if !matches!(log_min_error_statement, "log" | "fatal" | "panic") {
        fixes.push("log_min_error_statement = 'panic'");
    }
    fixes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_setting_that_logs_a_statement_needs_a_fix() {
        assert!(fixes("none", "-1", "panic").is_empty());
        assert_eq!(fixes("ddl", "-1", "panic"), ["log_statement = 'none'"]);
        assert_eq!(
            fixes("none", "0", "fatal"),
            ["log_min_duration_statement = -1"]
        );
        assert_eq!(
            fixes("none", "-1", "error"),
            ["log_min_error_statement = 'panic'"]
        );
    }
}
