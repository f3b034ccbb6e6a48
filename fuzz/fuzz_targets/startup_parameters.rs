//! The `options` startup parameter's parser (`protocol::options`) and the
//! route's parameter filter (`session::parameters::forwarded`).
//!
//! Input: NUL-separated fields (startup parameters cannot hold a NUL):
//! an `options` value, a comma-separated allowlist, then name, value pairs
//! of a StartupMessage.
//!
//! Checked against a model of PostgreSQL's `pg_split_opts` written here byte
//! by byte (whitespace is C's `isspace`; a backslash makes the next byte
//! literal and a trailing one is dropped):
//! - `split` splits as PostgreSQL does, and `escape(word)` is one word;
//! - settings that parse, written back with `encode`, split (as PostgreSQL
//!   would) into `-c` and `name=value` words that give the same settings;
//! - `forwarded` lets through exactly the permitted parameters, in order,
//!   with their values, never `user`/`database`/`replication`/`_pq_.*`, and an
//!   `options` that PostgreSQL would split into exactly the permitted
//!   settings the client gave; what it refuses, it refuses for a reason the
//!   model sees too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwarden::fuzzing::forwarded;
use pgwarden::protocol::options::{Setting, encode, escape, settings, split};
use pgwarden::protocol::startup::StartupMessage;
use pgwarden::session::ParameterRefusal;

/// pg_split_opts, byte by byte.
fn pg_split_opts(s: &[u8]) -> Vec<Vec<u8>> {
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let mut words = Vec::new();
    let mut i = 0;
    while i < s.len() {
        while i < s.len() && is_space(s[i]) {
            i += 1;
        }
        if i == s.len() {
            break;
        }
        let mut word = Vec::new();
        let mut escaped = false;
        while i < s.len() {
            if is_space(s[i]) && !escaped {
                break;
            }
            if !escaped && s[i] == b'\\' {
                escaped = true;
            } else {
                escaped = false;
                word.push(s[i]);
            }
            i += 1;
        }
        words.push(word);
    }
    words
}

/// The settings PostgreSQL reads from words that are all `-c`, `name=value`
/// pairs (what pgwarden writes), `-` in a name read as `_`.
fn postgres_reads(words: &[Vec<u8>]) -> Vec<Setting> {
    assert!(words.len() % 2 == 0, "odd number of words: {words:?}");
    words
        .chunks(2)
        .map(|pair| {
            assert_eq!(pair[0], b"-c", "pgwarden wrote another switch");
            let text = String::from_utf8(pair[1].clone()).unwrap();
            let (name, value) = text.split_once('=').expect("a setting without =");
            Setting {
                name: name.replace('-', "_"),
                value: value.to_owned(),
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut fields = text.split('\0');
    let options = fields.next().unwrap_or_default();
    let allowed: Vec<String> = fields
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect();
    let rest: Vec<&str> = fields.collect();
    let params: Vec<(String, String)> = rest
        .chunks(2)
        .map(|p| {
            (
                p[0].to_owned(),
                p.get(1).copied().unwrap_or_default().to_owned(),
            )
        })
        .collect();

    check_options(options);
    check_forwarded(params, &allowed);
});

fn check_options(options: &str) {
    let words: Vec<Vec<u8>> = split(options).into_iter().map(String::into_bytes).collect();
    assert_eq!(words, pg_split_opts(options.as_bytes()));
    for w in &words {
        let Ok(w) = std::str::from_utf8(w) else {
            continue;
        };
        if w.is_empty() {
            continue;
        }
        assert_eq!(pg_split_opts(escape(w).as_bytes()), [w.as_bytes()]);
    }
    if let Ok(parsed) = settings(options) {
        let written: Vec<String> = parsed.iter().map(encode).collect();
        let written = written.join(" ");
        assert_eq!(postgres_reads(&pg_split_opts(written.as_bytes())), parsed);
        assert_eq!(settings(&written).as_ref(), Ok(&parsed));
    }
}

fn check_forwarded(params: Vec<(String, String)>, allowed: &[String]) {
    let startup = StartupMessage {
        major: 3,
        minor: 0,
        params,
    };
    let permitted = |name: &str| allowed.iter().any(|a| a.eq_ignore_ascii_case(name));
    let special = |name: &str| {
        matches!(name, "user" | "database" | "replication") || name.starts_with("_pq_.")
    };
    match forwarded(&startup, allowed) {
        Ok(out) => {
            let (options, plain): (Vec<_>, Vec<_>) = out.iter().partition(|(k, _)| k == "options");
            let expected_plain: Vec<_> = startup
                .params
                .iter()
                .filter(|(k, _)| !special(k) && k != "options")
                .collect();
            assert_eq!(plain, expected_plain);
            assert!(plain.iter().all(|(k, _)| permitted(k)));
            let given: Vec<Setting> = startup
                .params
                .iter()
                .filter(|(k, _)| k == "options")
                .flat_map(|(_, v)| {
                    settings(v).expect("forwarded an options value that does not parse")
                })
                .collect();
            assert!(given.iter().all(|s| permitted(&s.name)));
            match options.as_slice() {
                [] => assert!(given.is_empty()),
                [(_, v)] => {
                    assert_eq!(postgres_reads(&pg_split_opts(v.as_bytes())), given);
                }
                _ => panic!("options forwarded twice"),
            }
        }
        Err(refusal) => {
            let shown = |s: &str| match s.char_indices().nth(64) {
                Some((cut, _)) => format!("{}…", &s[..cut]),
                None => s.to_owned(),
            };
            let any_bad_options = startup
                .params
                .iter()
                .any(|(k, v)| k == "options" && settings(v).is_err());
            match refusal {
                ParameterRefusal::NotAllowed(name) => {
                    let names = startup.params.iter().flat_map(|(k, v)| {
                        if k == "options" {
                            settings(v)
                                .unwrap_or_default()
                                .into_iter()
                                .map(|s| s.name)
                                .collect()
                        } else if special(k) {
                            vec![]
                        } else {
                            vec![k.clone()]
                        }
                    });
                    assert!(
                        names
                            .into_iter()
                            .any(|n| !permitted(&n) && shown(&n) == name),
                        "refused {name:?}, which is allowed or absent"
                    );
                }
                ParameterRefusal::Switch(_) | ParameterRefusal::Malformed(_) => {
                    assert!(any_bad_options, "refused options that parse");
                }
            }
        }
    }
}
