//! Vault's texts byte for byte (error messages and warnings, with where they come from) and the
//! Go formats they are written in (`%q`, `time.Duration`, times).

use std::time::{SystemTime, UNIX_EPOCH};

/// Valid token, path denied by policy (vault/request_handling.go wraps it in a multierror).
pub const PERMISSION_DENIED: &str = "1 error occurred:\n\t* permission denied\n\n";
/// Unknown, expired or revoked token (Vault ≥ 1.15 adds `invalid token`; OpenBao 2.7
/// answers `{"errors":["permission denied"]}`, one bare error, in both cases). pgwarden goes
/// by the 403 alone.
pub const INVALID_TOKEN: &str = "2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n";
/// consts.ErrSealed.
pub const SEALED: &str = "Vault is sealed";
/// Renewing a lease Vault does not hold (leaseEntry.renewable() in vault/expiration.go).
pub const LEASE_NOT_FOUND: &str = "lease not found";
/// Renewing a lease past its expiry that Vault has not managed to revoke yet.
pub const LEASE_EXPIRED: &str = "lease expired";
/// Renewing the root token (or any non-renewable lease).
pub const LEASE_NOT_RENEWABLE: &str = "lease is not renewable";
/// handleRenew / handleRevoke in vault/logical_system.go.
pub const LEASE_ID_REQUIRED: &str = "lease_id must be specified";
/// framework.CalculateTTL.
pub const PAST_MAX_TTL: &str = "past the max TTL, cannot renew";
/// ExpirationManager.renewEntry wraps a backend error so (its `resp` is always nil here);
/// the sys handler answers it with 400.
pub const RENEW_FAILED_PREFIX: &str = "failed to renew entry: resp: (*logical.Response)(nil) err: ";
/// ExpirationManager.revokeEntry likewise: a failed revocation is a 400, and the lease stays.
pub const REVOKE_FAILED_PREFIX: &str =
    "failed to revoke entry: resp: (*logical.Response)(nil) err: ";
/// builtin/credential/approle/path_login.go.
pub const INVALID_ROLE_OR_SECRET_ID: &str = "invalid role or secret ID";
/// What the double's simulated database answers while revocations are set to fail (shaped like
/// the pgx error Vault would pass on).
pub const SIMULATED_REVOCATION_FAILURE: &str =
    "ERROR: role cannot be dropped because some objects depend on it (SQLSTATE 2BP01)";

/// Error text of a 429 from a rate-limit quota (http/handler.go), `path` without `/v1/`.
pub fn rate_limited_text(path: &str) -> String {
    format!("request path {}: rate limit quota exceeded", go_quote(path))
}

/// builtin/logical/database/path_creds_create.go.
pub fn unknown_role_text(role: &str) -> String {
    format!("unknown role: {role}")
}

/// A Go error that went through Vault's request handler as a one-element multierror.
pub fn multierror1(msg: &str) -> String {
    format!("1 error occurred:\n\t* {msg}\n\n")
}

/// The warning CalculateTTL adds when a TTL is capped; both durations in whole seconds.
pub fn capped_warning(requested_secs: u64, allowed_secs: u64) -> String {
    format!(
        "TTL of {} exceeded the effective max_ttl of {}; TTL value is capped accordingly",
        go_quote(&human_duration(requested_secs)),
        go_quote(&human_duration(allowed_secs))
    )
}

/// Go's `time.Duration.String()` for whole seconds.
pub(super) fn go_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// `humanDuration` of sdk/framework/lease.go: Go's form without zero minutes and seconds.
pub fn human_duration(secs: u64) -> String {
    let mut s = go_duration(secs);
    if s.ends_with("m0s") {
        s.truncate(s.len() - 2);
    }
    if let Some(i) = s.find("h0m").filter(|i| *i > 0) {
        s = format!("{}{}", &s[..=i], &s[i + 3..]);
    }
    s
}

/// Go's `%q` for the ASCII strings the double quotes.
pub(super) fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A UTC calendar time.
struct Utc {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
    nanos: u32,
}

fn utc(t: SystemTime) -> Utc {
    let since_epoch = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let in_day = secs % 86_400;
    Utc {
        year,
        month,
        day,
        hour: in_day / 3600,
        minute: in_day % 3600 / 60,
        second: in_day % 60,
        nanos: since_epoch.subsec_nanos(),
    }
}

/// Go's `2006-01-02 15:04:05-0700` in UTC, as the PostgreSQL plugin formats `{{expiration}}`.
pub fn go_expiration(t: SystemTime) -> String {
    let u = utc(t);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}+0000",
        u.year, u.month, u.day, u.hour, u.minute, u.second
    )
}

/// Go's `time.RFC3339Nano` in UTC, as Vault's JSON carries times.
pub(super) fn rfc3339(t: SystemTime) -> String {
    let u = utc(t);
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        u.year, u.month, u.day, u.hour, u.minute, u.second
    );
    if u.nanos > 0 {
        let frac = format!("{:09}", u.nanos);
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}
