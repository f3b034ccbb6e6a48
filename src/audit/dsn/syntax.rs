//! The two spellings of a libpq connection string, as `key=value` pairs: a
//! URI (`postgresql://user@host:port/dbname?key=value`) and key/value
//! conninfo (`user=auditor host='db 1'`).
//!
//! A password in either is refused, before its value is decoded, and no
//! error carries a piece of the string: a stray word may be a pasted password.

use super::DsnError;

/// `key=value` pairs of a URI or a conninfo string; refused when one is a password.
pub(super) fn pairs(dsn: &str) -> Result<Vec<(String, String)>, DsnError> {
    let out = match dsn
        .strip_prefix("postgresql://")
        .or_else(|| dsn.strip_prefix("postgres://"))
    {
        Some(rest) => uri_pairs(rest)?,
        None => conninfo_pairs(dsn)?,
    };
    if out.iter().any(|(k, _)| k == "password") {
        return Err(DsnError::CarriesPassword);
    }
    Ok(out)
}

/// The pairs of a URI after its scheme.
fn uri_pairs(rest: &str) -> Result<Vec<(String, String)>, DsnError> {
    let mut out = Vec::new();
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            if userinfo.contains(':') {
                return Err(DsnError::CarriesPassword);
            }
            out.push(("user".into(), decode(userinfo)?));
            hostport
        }
        None => authority,
    };
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (h, p) = v6.split_once(']').ok_or(DsnError::UnclosedBracket)?;
            (h, p.strip_prefix(':').unwrap_or(""))
        }
        None => hostport.split_once(':').unwrap_or((hostport, "")),
    };
    for (k, v) in [
        ("host", decode(host)?),
        ("port", port.to_owned()),
        ("dbname", decode(path)?),
    ] {
        if !v.is_empty() {
            out.push((k.into(), v));
        }
    }
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').ok_or(DsnError::NoValue)?;
        let key = decode(k)?;
        if key == "password" {
            // Refused before its value is even decoded.
            return Err(DsnError::CarriesPassword);
        }
        out.push((key, decode(v)?));
    }
    Ok(out)
}

/// The pairs of key/value conninfo: `key = value`, values quoted with `'`
/// when they hold spaces, `\` escaping the next character.
fn conninfo_pairs(dsn: &str) -> Result<Vec<(String, String)>, DsnError> {
    let mut out = Vec::new();
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(DsnError::NoValue);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(DsnError::UnclosedQuote),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// Percent-decoding of URI parts.
fn decode(s: &str) -> Result<String, DsnError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(DsnError::BadEscape)?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DsnError::NotUtf8)
}
