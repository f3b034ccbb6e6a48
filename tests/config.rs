//! Configuration: every problem reported at once, overrides that fail loudly,
//! and an example file that documents only keys pgwarden knows.

use std::path::Path;

use pgwarden::config;

fn errors(text: &str, env: &[(&str, &str)]) -> Vec<String> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match config::from_str(text, Path::new("/nonexistent-base"), env) {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    }
}

#[test]
fn example_file_uses_only_known_keys() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/pgwarden.example.toml"
    ))
    .unwrap();
    let errs = errors(&text, &[]);
    // The files it names do not exist here; nothing else may be wrong.
    assert!(!errs.is_empty());
    for e in &errs {
        assert!(
            e.contains("cannot read"),
            "unexpected problem in the example: {e}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
        bogus_section = 1
        [listen]
        address = "not an address"
        allow = ["10.0.0.0/33", "::1/128"]
        require_tls = true
        unknown_key = true
        [[users]]
        name = "a"
        scram_verifier = "md5notascramverifier"
        [[users]]
        name = "b"
        auth = "trust"
        [[routes]]
        database = "db"
        users = ["a", "nobody"]
        credentials = "missing"
        upstream = { host = "h", tls = "verify-full" }
    "#;
    let errs = errors(text, &[]);
    let has = |needle: &str| errs.iter().any(|e| e.contains(needle));
    assert!(has("bogus_section"), "{errs:#?}");
    assert!(has("unknown field `unknown_key`"), "{errs:#?}");
    assert!(has("[[users]] #1 (a)"), "{errs:#?}");
    assert!(has("trust_from"), "{errs:#?}");
    assert!(has("`nobody` is not defined"), "{errs:#?}");
    assert!(has("credentials `missing` is not defined"), "{errs:#?}");
    assert!(has("ca_file is required"), "{errs:#?}");
    // The [listen] section failed to deserialize as a whole (unknown key), so its
    // other values are reported once that is fixed; check them separately.
    let errs = errors(
        r#"[listen]
        address = "not an address"
        allow = ["10.0.0.0/33"]
        require_tls = true"#,
        &[],
    );
    assert!(
        errs.iter().any(|e| e.contains("not an address")),
        "{errs:#?}"
    );
    assert!(errs.iter().any(|e| e.contains("10.0.0.0/33")), "{errs:#?}");
    assert!(
        errs.iter().any(|e| e.contains("tls_cert_file")),
        "{errs:#?}"
    );
}

#[test]
fn nothing_is_open_by_default() {
    let errs = errors("[listen]\nrequire_tls = false\n", &[]);
    assert!(
        errs.iter().any(|e| e.contains("allow: required")),
        "{errs:#?}"
    );
}

#[test]
fn env_overrides_apply_and_fail_loudly() {
    let base = "[listen]\nrequire_tls = false\nallow = [\"127.0.0.1\"]\n";
    let errs = errors(base, &[("PGWARDEN_LISTEN_MAX_CONNECTIONS", "lots")]);
    assert!(
        errs.iter()
            .any(|e| e.contains("[listen]") && e.contains("max_connections")),
        "{errs:#?}"
    );
    let errs = errors(base, &[("PGWARDEN_NOPE_X", "1")]);
    assert!(
        errs.iter().any(|e| e.contains("PGWARDEN_NOPE_X")),
        "{errs:#?}"
    );
    let errs = errors(base, &[("PGWARDEN_LISTEN_TYPO", "1")]);
    assert!(
        errs.iter().any(|e| e.contains("unknown field `typo`")),
        "{errs:#?}"
    );
}

#[test]
fn secrets_never_appear_in_errors() {
    let secret = "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$not-base64!!:AAAA";
    let text = format!(
        "[listen]\nrequire_tls = false\nallow = [\"127.0.0.1\"]\n[[users]]\nname = \"u\"\nscram_verifier = \"{secret}\"\n"
    );
    let errs = errors(&text, &[("PGWARDEN_VAULT_TOKEN", "hvs.supersecret")]);
    let all = errs.join("\n");
    assert!(!all.contains("c2FsdHNhbHQ"), "{all}");
    assert!(!all.contains("hvs.supersecret"), "{all}");
}
