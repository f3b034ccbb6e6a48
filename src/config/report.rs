//! Configuration errors that say where and what, never what was written.
//!
//! TOML's own error text shows the offending source line, and serde's quotes
//! the value it could not take (`invalid type: string "…", expected u16`):
//! either can put a password, a verifier or a token on the terminal or in a
//! CI log when it sits on a broken line or under the wrong key. Every such
//! error goes through here and comes out as a position (line and column) or a
//! key, and the kind of problem. This module must never pass on text it has
//! not recognised as free of the file's contents: unknown shapes become a
//! generic "invalid value".

use super::raw::DURATION_HINT;

/// An environment variable that set `[section] key`.
#[derive(Debug, Clone)]
pub(super) struct Override {
    pub section: String,
    pub key: String,
    pub variable: String,
}

/// A TOML syntax error: `line L, column C: <what the parser expected>`.
///
/// The parser's descriptions are fixed texts (`invalid basic string, expected
/// `"``), never the input; the snippet `Display` would add is left out.
pub(super) fn syntax(text: &str, e: &toml::de::Error) -> String {
    let what = first_line(e.message());
    match e.span() {
        Some(span) => {
            let (line, column) = position(text, span.start);
            format!("configuration is not valid TOML: line {line}, column {column}: {what}")
        }
        None => format!("configuration is not valid TOML: {what}"),
    }
}

/// A section or entry that did not deserialize: `<what> `key`: <kind>`, and
/// the environment variable if one set that key.
pub(super) fn shape(what: &str, e: &toml::de::Error, overrides: &[Override]) -> String {
    let key = key_path(e);
    let kind = without_values(e.message());
    let section = what.trim_start_matches('[').trim_end_matches(']');
    let from_env = key.as_deref().and_then(|k| {
        let first = k.split('.').next().unwrap_or(k);
        overrides
            .iter()
            .find(|o| o.section == section && o.key == first)
    });
    match (key, from_env) {
        (Some(k), Some(o)) => format!("{what} `{k}` (set by {}): {kind}", o.variable),
        (Some(k), None) => format!("{what} `{k}`: {kind}"),
        (None, _) => format!("{what}: {kind}"),
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
fn position(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..at].chars().count() + 1;
    (line, column)
}

/// The dotted key toml records for a deserialization error (its `Display`,
/// without a source snippet, ends with "in `a.b`"). Keys are names the file
/// chose, not values.
fn key_path(e: &toml::de::Error) -> Option<String> {
    let mut e = e.clone();
    e.set_input(None);
    let shown = e.to_string();
    let tail = shown.get(e.message().len()..)?;
    let inner = tail.trim().strip_prefix("in `")?.strip_suffix('`')?;
    (!inner.is_empty()).then(|| inner.to_owned())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default().trim()
}

/// serde's kinds of value (`serde::de::Unexpected`), as its messages begin.
const VALUE_KINDS: &[&str] = &[
    "boolean",
    "integer",
    "floating point",
    "character",
    "string",
    "byte array",
    "unit value",
    "Option value",
    "newtype struct",
    "sequence",
    "map",
    "enum",
    "unit variant",
    "newtype variant",
    "tuple variant",
    "struct variant",
];

/// Messages that name only keys or counts, and so may be shown as they are.
const SAFE_PREFIXES: &[&str] = &[
    "unknown field `",
    "missing field `",
    "duplicate field `",
    "invalid length ",
    DURATION_HINT,
];

/// serde's message with the value it quoted taken out.
pub(super) fn without_values(message: &str) -> String {
    let m = first_line(message);
    for what in ["invalid type", "invalid value"] {
        if let Some(rest) = m.strip_prefix(what).and_then(|r| r.strip_prefix(": ")) {
            // The value comes first, the expectation (from the code) last.
            let (found, expected) = match rest.rsplit_once(", expected ") {
                Some((f, e)) => (f, Some(e)),
                None => (rest, None),
            };
            let kind = VALUE_KINDS
                .iter()
                .filter(|k| found.starts_with(**k))
                .max_by_key(|k| k.len())
                .copied()
                .unwrap_or("a value");
            return match expected {
                Some(e) => format!("{what}: found {kind}, expected {e}"),
                None => format!("{what}: found {kind}"),
            };
        }
    }
    if let Some(rest) = m.strip_prefix("unknown variant `") {
        return match rest.rsplit_once("`, expected ") {
            Some((_, e)) => format!("unknown value, expected {e}"),
            None => "unknown value".to_owned(),
        };
    }
    if SAFE_PREFIXES.iter().any(|p| m.starts_with(p)) {
        return m.to_owned();
    }
    "invalid value".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_taken_out_of_serde_messages() {
        let cases = [
            (
                "invalid type: string \"s3cret, expected x\", expected u16",
                "invalid type: found string, expected u16",
            ),
            (
                "invalid type: integer `42`, expected a string",
                "invalid type: found integer, expected a string",
            ),
            (
                "invalid value: floating point `1.5`, expected usize",
                "invalid value: found floating point, expected usize",
            ),
            ("invalid type: sequence", "invalid type: found sequence"),
            (
                "invalid type: s3cret-other, expected u8",
                "invalid type: found a value, expected u8",
            ),
            (
                "unknown variant `s3cret`, expected one of `a`, `b`",
                "unknown value, expected one of `a`, `b`",
            ),
            (
                "unknown variant `s3cret`, there are no variants",
                "unknown value",
            ),
            (
                "unknown field `typo`, expected `a` or `b`",
                "unknown field `typo`, expected `a` or `b`",
            ),
            ("missing field `auth`", "missing field `auth`"),
            ("something new about s3cret", "invalid value"),
        ];
        for (given, want) in cases {
            assert_eq!(without_values(given), want, "{given}");
        }
    }

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        let text = "a = 1\nbé = \"x\n";
        assert_eq!(position(text, 0), (1, 1));
        assert_eq!(position(text, 6), (2, 1));
        // After the two-byte é: column 3 in characters.
        assert_eq!(position(text, 9), (2, 3));
        assert_eq!(position(text, 999), (3, 1));
    }

    #[test]
    fn syntax_errors_name_the_line_without_quoting_it() {
        let text = "a = 1\npassword = \"s3cret\n";
        let e = text.parse::<toml::Table>().unwrap_err();
        let shown = syntax(text, &e);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("line 2, column "), "{shown}");
    }

    #[test]
    fn shape_errors_name_the_key_and_the_variable_that_set_it() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct S {
            port: u16,
        }
        let value: toml::Value = "port = \"s3cret\"".parse::<toml::Table>().unwrap().into();
        let e = value.try_into::<S>().unwrap_err();
        let overrides = [Override {
            section: "listen".into(),
            key: "port".into(),
            variable: "PGWARDEN_LISTEN_PORT".into(),
        }];
        assert_eq!(
            shape("[listen]", &e, &overrides),
            "[listen] `port` (set by PGWARDEN_LISTEN_PORT): invalid type: found string, expected u16"
        );
        assert_eq!(
            shape("[listen]", &e, &[]),
            "[listen] `port`: invalid type: found string, expected u16"
        );
    }
}
