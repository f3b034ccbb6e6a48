//! The syntax of the `options` startup parameter, as PostgreSQL reads it.
//!
//! `pg_split_opts` splits the value at unescaped whitespace (C's `isspace`:
//! space, tab, newline, vertical tab, form feed, carriage return); a backslash
//! makes the next character literal, and a trailing one is dropped. The words
//! are then command-line switches: `-c name=value` (or `-cname=value`) and
//! `--name=value` set a configuration parameter, `-` in the name standing for
//! `_`. Anything pgwarden writes into `options` is escaped with [`escape`], so
//! the server splits it exactly where pgwarden meant it to.

/// Whitespace to PostgreSQL's splitter.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// The words of an `options` value, as `pg_split_opts` makes them.
pub fn split(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = options.chars().peekable();
    loop {
        while chars.next_if(|c| is_space(*c)).is_some() {}
        if chars.peek().is_none() {
            return words;
        }
        let mut word = String::new();
        let mut escaped = false;
        while let Some(&c) = chars.peek() {
            if is_space(c) && !escaped {
                break;
            }
            chars.next();
            if !escaped && c == '\\' {
                escaped = true;
            } else {
                escaped = false;
                word.push(c);
            }
        }
        words.push(word);
    }
}

/// One setting found in `options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// As the server will read it: `-` replaced by `_` (case kept).
    pub name: String,
    pub value: String,
}

/// Why an `options` value is not a list of settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// A switch other than `-c`/`--` (`-F`, `-B 100`, …), or a word that is no switch.
    #[error("command-line switch \"{0}\"")]
    Switch(String),
    /// `-c` at the end, or a setting without `=`.
    #[error("{0} requires a value")]
    NoValue(String),
}

/// The settings of an `options` value; any other switch is an error.
pub fn settings(options: &str) -> Result<Vec<Setting>, OptionsError> {
    let mut words = split(options).into_iter();
    let mut out = Vec::new();
    while let Some(word) = words.next() {
        let (switch, assignment) = if word == "-c" {
            let next = words
                .next()
                .ok_or_else(|| OptionsError::NoValue("-c".into()))?;
            ("-c", next)
        } else if let Some(rest) = word.strip_prefix("--") {
            ("--", rest.to_owned())
        } else if let Some(rest) = word.strip_prefix("-c") {
            ("-c", rest.to_owned())
        } else {
            return Err(OptionsError::Switch(word));
        };
        let Some((name, value)) = assignment.split_once('=') else {
            return Err(OptionsError::NoValue(format!("{switch} {assignment}")));
        };
        out.push(Setting {
            name: name.replace('-', "_"),
            value: value.to_owned(),
        });
    }
    Ok(out)
}

/// `word` escaped for `options`: a backslash before every whitespace
/// character and every backslash, so that it stays one word.
pub fn escape(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if is_space(c) || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `-c name=value`, escaped.
pub fn encode(setting: &Setting) -> String {
    format!("-c {}={}", escape(&setting.name), escape(&setting.value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(name: &str, value: &str) -> Setting {
        Setting {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn words_split_at_unescaped_whitespace_as_postgresql_does() {
        assert_eq!(split("  -c  a=b\t-c\nc=d  "), ["-c", "a=b", "-c", "c=d"]);
        assert_eq!(
            split(r"-c search_path=a\ b\\c"),
            ["-c", r"search_path=a b\c"]
        );
        assert_eq!(split("a\\\tb"), ["a\tb"]);
        // A trailing backslash is dropped, as pg_split_opts drops it.
        assert_eq!(split("a\\"), ["a"]);
        assert!(split(" \t ").is_empty());
    }

    #[test]
    fn settings_take_every_form_postgresql_accepts() {
        assert_eq!(
            settings("-c statement_timeout=5s -clock_timeout=1s --idle-in-transaction-session-timeout=1min").unwrap(),
            [
                setting("statement_timeout", "5s"),
                setting("lock_timeout", "1s"),
                setting("idle_in_transaction_session_timeout", "1min"),
            ]
        );
        assert_eq!(
            settings(r"-c search_path=a\ b,c=d").unwrap(),
            [setting("search_path", "a b,c=d")]
        );
        assert_eq!(settings("").unwrap(), []);
    }

    #[test]
    fn other_switches_and_missing_values_are_errors() {
        assert_eq!(settings("-F"), Err(OptionsError::Switch("-F".into())));
        assert_eq!(settings("-B 100"), Err(OptionsError::Switch("-B".into())));
        assert_eq!(
            settings("statement_timeout=1"),
            Err(OptionsError::Switch("statement_timeout=1".into()))
        );
        assert_eq!(settings("-c"), Err(OptionsError::NoValue("-c".into())));
        assert_eq!(
            settings("-c statement_timeout"),
            Err(OptionsError::NoValue("-c statement_timeout".into()))
        );
    }

    #[test]
    fn an_encoded_setting_splits_back_to_itself() {
        let tricky = setting("search_path", "a\tb -c role=x\\ \n\x0b\x0c\r");
        let encoded = encode(&tricky);
        assert_eq!(settings(&encoded).unwrap(), [tricky]);
    }
}
