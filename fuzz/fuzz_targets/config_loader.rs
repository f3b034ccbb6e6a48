//! The configuration loader, `pgwarden::config::from_str`, on arbitrary TOML
//! text with a secret planted in it.
//!
//! Input: a byte choosing where the secret goes (a verifier, an admin
//! password or an AppRole role id in the file, quoted well or badly, or the
//! value of `VAULT_TOKEN` or of a `PGWARDEN_*` override), a byte choosing the
//! line it is inserted before, then the file's text.
//!
//! Checked: no panic, and the secret never appears in any error message nor
//! in the `Debug` of a configuration that loads — unless the file, as TOML
//! reads it, holds the marker somewhere other than a secret's value (a key,
//! a user name, a path), where quoting it back is fair.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// The planted secret: nothing in the loader's own text can produce it.
const MARKER: &str = "Zq7SECRETvx9Kp2";

/// Keys whose values are secrets in pgwarden's configuration.
const SECRET_KEYS: &[&str] = &["scram_verifier", "admin_password", "role_id"];

/// Where the marker goes: a snippet inserted into the file, with `@` for it.
const FILE_SLOTS: &[&str] = &[
    "[[users]]\nname = \"m\"\nscram_verifier = \"@\"\n",
    "[credentials.c]\nsource = \"postgres\"\nadmin_user = \"a\"\nadmin_password = \"@\"\n",
    "[vault]\naddress = \"http://127.0.0.1:8200\"\nauth = { method = \"approle\", role_id = \"@\", secret_id_file = \"s\" }\n",
    "scram_verifier = \"@\"\n",
    "admin_password = '@'\n",
    "role_id = \"\"\"@\"\"\"\n",
    "scram_verifier = @\n",
    "admin_password = \"@\n",
    "scram_verifier = \"SCRAM-SHA-256$4096:@$AAAA:AAAA\"\n",
    "scram_verifier = [\"@\"]\n",
];

/// Override keys tried with the marker as their value.
const OVERRIDE_KEYS: &[&str] = &[
    "PGWARDEN_LISTEN_ADDRESS",
    "PGWARDEN_LISTEN_ALLOW",
    "PGWARDEN_LISTEN_MAX_CONNECTIONS",
    "PGWARDEN_LISTEN_TLS_CERT_FILE",
    "PGWARDEN_VAULT_ADDRESS",
    "PGWARDEN_VAULT_AUTH",
    "PGWARDEN_VAULT_NAMESPACE",
    "PGWARDEN_LOG_LEVEL",
    "PGWARDEN_SHUTDOWN_GRACE",
    "PGWARDEN_ADMIN_ADDRESS",
    "PGWARDEN_AUDIT_INTERVAL",
    "VAULT_TOKEN",
];

fn base() -> &'static Path {
    static BASE: OnceLock<tempfile_dir::Dir> = OnceLock::new();
    BASE.get_or_init(tempfile_dir::Dir::new).path()
}

/// An empty directory for relative paths to resolve against (left behind
/// in the system's temporary directory; it stays empty).
mod tempfile_dir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p =
                std::env::temp_dir().join(format!("pgwarden-fuzz-config-{}", std::process::id()));
            std::fs::create_dir_all(&p).expect("a scratch directory");
            Dir(p)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [slot, line, rest @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    // Paths the loader would read and that never end (/dev/zero, /proc/kmsg),
    // also reached from the scratch directory with `..`: not what this target
    // is about. Relative paths otherwise resolve in an empty directory.
    if ["/dev", "/proc", "/sys", ".."]
        .iter()
        .any(|p| text.contains(p))
        || text.contains(MARKER)
    {
        return;
    }
    let slot = usize::from(*slot) % (FILE_SLOTS.len() + OVERRIDE_KEYS.len());
    let (file, env) = if let Some(snippet) = FILE_SLOTS.get(slot) {
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let at = usize::from(*line) % (lines.len() + 1);
        let mut file: String = lines[..at].concat();
        if !file.is_empty() && !file.ends_with('\n') {
            file.push('\n');
        }
        file.push_str(&snippet.replace('@', MARKER));
        file.push_str(&lines[at..].concat());
        (file, Vec::new())
    } else {
        let key = OVERRIDE_KEYS[slot - FILE_SLOTS.len()];
        (text.to_owned(), vec![(key.to_owned(), MARKER.to_owned())])
    };
    let from_file = env.is_empty();
    // The same, spelled with TOML escapes (which need a backslash: without
    // one, the text check above saw every string as TOML reads it).
    if file.contains('\\')
        && let Ok(table) = file.parse::<toml::Table>()
        && any_string(&toml::Value::Table(table), &|s| {
            ["/dev", "/proc", "/sys", ".."]
                .iter()
                .any(|p| s.contains(p))
        })
    {
        return;
    }

    let shown = match pgwarden::config::from_str(&file, base(), env) {
        Ok(config) => format!("{config:?}"),
        Err(errors) => {
            let mut all = errors.to_string();
            all.push_str(&format!("{errors:?}"));
            all
        }
    };
    if !shown.contains(MARKER) {
        return;
    }
    if from_file && !only_in_secrets(&file) {
        return;
    }
    panic!("the planted secret was shown: {shown}");
});

/// Whether any key or string in `v` satisfies `f`.
fn any_string(v: &toml::Value, f: &dyn Fn(&str) -> bool) -> bool {
    match v {
        toml::Value::String(s) => f(s),
        toml::Value::Array(items) => items.iter().any(|i| any_string(i, f)),
        toml::Value::Table(t) => t.iter().any(|(k, v)| f(k) || any_string(v, f)),
        _ => false,
    }
}

/// Whether the marker, in the file as TOML reads it, sits only in the values
/// of secret keys (or the file is not TOML, when no error may quote it).
fn only_in_secrets(file: &str) -> bool {
    let Ok(table) = file.parse::<toml::Table>() else {
        return true;
    };
    fn walk(key: Option<&str>, v: &toml::Value) -> bool {
        match v {
            toml::Value::String(s) => {
                !s.contains(MARKER) || key.is_some_and(|k| SECRET_KEYS.contains(&k))
            }
            toml::Value::Array(items) => items.iter().all(|i| walk(key, i)),
            toml::Value::Table(t) => t
                .iter()
                .all(|(k, v)| !k.contains(MARKER) && walk(Some(k), v)),
            _ => true,
        }
    }
    walk(None, &toml::Value::Table(table))
}
