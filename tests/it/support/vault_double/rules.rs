//! How Vault computes things: TTLs (`framework.CalculateTTL`), usernames (the PostgreSQL
//! plugin's default template), lease and token ids, passwords, and statement lists.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rand::distr::Alphanumeric;

use super::text::{PAST_MAX_TTL, capped_warning};

/// Vault's system default and maximum lease TTL (32 days).
pub(super) const SYSTEM_MAX_TTL: u64 = 768 * 3600;

/// Splits a `;`-separated list and substitutes `{{key}}`s, as the PostgreSQL plugin does: a
/// list holding a block (the word `END` outside quotes) runs whole when `blocks_allowed`
/// (creation and revocation). Unlike Vault, a `;` inside quotes never splits.
pub(super) fn statements(
    template: &str,
    blocks_allowed: bool,
    subs: &[(&str, &str)],
) -> Vec<String> {
    let pieces = if blocks_allowed && contains_block(template) {
        vec![template.trim().to_owned()]
    } else {
        split_outside_quotes(template)
    };
    pieces
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            subs.iter().fold(p, |sql, (key, value)| {
                sql.replace(&format!("{{{{{key}}}}}"), value)
            })
        })
        .collect()
}

fn split_outside_quotes(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match (quote, c) {
            (None, ';') => out.push(std::mem::take(&mut current).trim().to_owned()),
            (None, '\'' | '"') => {
                quote = Some(c);
                current.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                current.push(c);
            }
            _ => current.push(c),
        }
    }
    out.push(current.trim().to_owned());
    out
}

/// `containsMultilineStatement` of the PostgreSQL plugin: `\bEND\b` outside quoted phrases.
fn contains_block(s: &str) -> bool {
    let unquoted = split_quoted_out(s);
    let bytes = unquoted.as_bytes();
    let word = |i: usize| {
        bytes
            .get(i)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
    };
    unquoted
        .match_indices("END")
        .any(|(i, _)| (i == 0 || !word(i - 1)) && !word(i + 3))
}

fn split_quoted_out(s: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None => out.push(c),
        }
    }
    out
}

/// Vault keeps TTLs in whole seconds.
pub(super) fn secs(d: Duration) -> u64 {
    d.as_secs()
}

/// When something given `ttl` seconds from now ends, on both clocks.
pub(super) fn expiry(ttl: u64) -> (Instant, SystemTime) {
    let ttl = Duration::from_secs(ttl);
    (Instant::now() + ttl, SystemTime::now() + ttl)
}

pub(super) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `framework.CalculateTTL` for the non-periodic case, on whole (truncated) seconds:
/// the TTL is the increment, else the backend TTL, else the system default; it may not reach
/// past `start + max`; capping adds Vault's warning.
pub(super) fn calculate_ttl(
    increment: u64,
    backend_ttl: u64,
    backend_max: u64,
    start: u64,
    now: u64,
) -> Result<(u64, Vec<String>), &'static str> {
    let max_ttl = if backend_max > 0 && backend_max < SYSTEM_MAX_TTL {
        backend_max
    } else {
        SYSTEM_MAX_TTL
    };
    let ttl = if increment > 0 {
        increment
    } else if backend_ttl > 0 {
        backend_ttl
    } else {
        SYSTEM_MAX_TTL
    };
    let max_valid = (start + max_ttl) as i64 - now as i64;
    if max_valid <= 0 {
        return Err(PAST_MAX_TTL);
    }
    let max_valid = max_valid as u64;
    if max_valid < ttl {
        return Ok((max_valid, vec![capped_warning(ttl, max_valid)]));
    }
    Ok((ttl, Vec::new()))
}

/// The PostgreSQL plugin's default username template:
/// `{{ printf "v-%s-%s-%s-%s" (.DisplayName | truncate 8) (.RoleName | truncate 8)
/// (random 20) (unix_time) | truncate 63 }}`.
pub(super) fn username(display_name: &str, role: &str, unix_time: u64) -> String {
    let name = format!(
        "v-{}-{}-{}-{}",
        truncate(display_name, 8),
        truncate(role, 8),
        base62(20),
        unix_time
    );
    truncate(&name, 63).to_owned()
}

/// Go template `truncate`: at most `max_bytes` bytes.
fn truncate(s: &str, max_bytes: usize) -> &str {
    let mut end = s.len().min(max_bytes);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Vault's random ids (lease id suffixes, accessors, the username's random part): base62.
pub(super) fn base62(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// A random UUID in its textual form, as Vault's request and entity ids.
pub(super) fn uuid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Vault's default password policy (`[a-zA-Z0-9-]`, at least one of each class), 32 long.
pub(super) fn default_password() -> String {
    const CHARSET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-";
    let mut rng = rand::rng();
    loop {
        let p: String = (0..32)
            .map(|_| char::from(CHARSET[rng.random_range(0..CHARSET.len())]))
            .collect();
        if p.chars().any(|c| c.is_ascii_lowercase())
            && p.chars().any(|c| c.is_ascii_uppercase())
            && p.chars().any(|c| c.is_ascii_digit())
            && p.contains('-')
        {
            return p;
        }
    }
}

/// Whole seconds of `3600`, `90s`, `1h30m`, `1.5h`, `2d`, `500ms` (rounded down).
pub(super) fn parse_go_duration(s: &str) -> Option<u64> {
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    let mut rest = s;
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86400e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        nanos += number * scale;
    }
    Some((nanos / 1e9) as u64)
}
