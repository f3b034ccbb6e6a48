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

/// A valid file but for the lines a test adds; the `postgres` source's admin password is inline.
const BASE: &str = r#"
[listen]
require_tls = false
allow = ["127.0.0.1"]
[[users]]
name = "u"
auth = "trust"
trust_from = ["127.0.0.1"]
[[routes]]
database = "db"
users = ["u"]
credentials = "pg"
upstream = { host = "127.0.0.1", tls = "disable", allow_insecure_auth = true }
[credentials.pg]
source = "postgres"
admin_user = "admin"
"#;

#[test]
fn the_base_of_the_error_tests_is_valid() {
    let errs = errors(&format!("{BASE}admin_password = \"fine\"\n"), &[]);
    assert!(errs.is_empty(), "{errs:#?}");
}

/// TOML's own message shows the offending line, serde's quotes the value it
/// could not take: with a secret on that line, or as that value, either would
/// print the secret. Errors name the line and column, or the key, instead.
#[test]
fn syntax_and_type_errors_name_the_place_but_never_quote_the_file() {
    // A syntax error on the line holding a secret (the closing quote is missing).
    let line = BASE.lines().count() + 1;
    let errs = errors(
        &format!("{BASE}admin_password = \"Syntax-Secret-4821\n"),
        &[],
    );
    let all = errs.join("\n");
    assert!(!all.contains("Syntax-Secret-4821"), "{all}");
    assert!(all.contains(&format!("line {line}, column ")), "{all}");

    // A secret key given a number, and a list holding a secret.
    let errs = errors(&format!("{BASE}admin_password = 918273645546\n"), &[]);
    let all = errs.join("\n");
    assert!(!all.contains("918273645546"), "{all}");
    assert!(
        all.contains("[credentials.pg]") && all.contains("admin_password"),
        "{all}"
    );
    let errs = errors(
        &format!("{BASE}admin_password = [\"List-Secret-7733\"]\n"),
        &[],
    );
    let all = errs.join("\n");
    assert!(!all.contains("List-Secret-7733"), "{all}");
    assert!(all.contains("admin_password"), "{all}");

    // A secret pasted where a number, a choice or a duration belongs.
    for (key, value) in [
        ("max_connections", "\"Number-Secret-1029\""),
        ("handshake_timeout", "\"Duration-Secret-5561\""),
        ("tcp_keepalive", "42"),
    ] {
        let text = BASE.replace(
            "require_tls = false",
            &format!("require_tls = false\n{key} = {value}"),
        );
        let errs = errors(&text, &[]);
        let all = errs.join("\n");
        assert!(!all.contains("Secret"), "{all}");
        assert!(!all.contains("42"), "{all}");
        assert!(all.contains("[listen]") && all.contains(key), "{all}");
    }
    let errs = errors(
        &BASE.replace("tls = \"disable\"", "tls = \"Choice-Secret-3390\""),
        &[],
    );
    let all = errs.join("\n");
    assert!(!all.contains("Choice-Secret-3390"), "{all}");
    assert!(all.contains("tls") && all.contains("verify-full"), "{all}");
}

#[test]
fn env_overrides_with_bad_values_are_named_but_not_quoted() {
    let text = format!("{BASE}admin_password = \"fine\"\n");
    let errs = errors(
        &text,
        &[
            ("PGWARDEN_LISTEN_MAX_CONNECTIONS", "Env-Secret-6613"),
            ("PGWARDEN_SHUTDOWN_GRACE", "Env-Secret-9120"),
        ],
    );
    let all = errs.join("\n");
    assert!(!all.contains("Env-Secret"), "{all}");
    assert!(
        all.contains("max_connections") && all.contains("PGWARDEN_LISTEN_MAX_CONNECTIONS"),
        "{all}"
    );
    assert!(all.contains("PGWARDEN_SHUTDOWN_GRACE"), "{all}");
}

/// The same, end to end: what `pgwarden check-config` prints.
#[test]
fn check_config_prints_no_secret_from_the_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str, env: &[(&str, &str)]| {
        let path = dir.path().join("pgwarden.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let printed = check(&format!("{BASE}admin_password = \"Cli-Secret-1\n"), &[]);
    assert!(!printed.contains("Cli-Secret-1"), "{printed}");
    assert!(printed.contains("line "), "{printed}");
    let printed = check(&format!("{BASE}admin_password = 5550123\n"), &[]);
    assert!(!printed.contains("5550123"), "{printed}");
    assert!(printed.contains("admin_password"), "{printed}");
    let printed = check(
        &format!("{BASE}admin_password = \"fine\"\n"),
        &[("PGWARDEN_LISTEN_MAX_CONNECTIONS", "Cli-Secret-2")],
    );
    assert!(!printed.contains("Cli-Secret-2"), "{printed}");
    assert!(
        printed.contains("PGWARDEN_LISTEN_MAX_CONNECTIONS"),
        "{printed}"
    );
}

/// The `[vault] address` problems of a file whose `[vault]` is otherwise fine.
fn vault_address_errors(address: &str, extra: &str) -> Vec<String> {
    let text = format!(
        "{BASE}admin_password = \"fine\"\n[vault]\naddress = \"{address}\"\nauth = {{ method = \"token\" }}\n{extra}"
    );
    errors(&text, &[("VAULT_TOKEN", "hvs.test")])
        .into_iter()
        .filter(|e| e.starts_with("[vault]"))
        .collect()
}

/// Over plain HTTP the token, secret id, JWT and every issued password would
/// cross the network in clear: only a Vault on this host, or an explicit
/// opt-in, may be reached that way.
#[test]
fn vault_over_plain_http_only_on_loopback_or_when_allowed() {
    for ok in [
        "https://vault.internal:8200",
        "https://10.0.0.7:8200/",
        "http://127.0.0.1:8200",
        "http://127.8.9.10:8100",
        "http://[::1]:8200",
        "http://localhost:8200",
        "http://LocalHost",
    ] {
        let errs = vault_address_errors(ok, "");
        assert!(errs.is_empty(), "{ok}: {errs:#?}");
    }
    for refused in [
        "http://vault.internal:8200",
        "http://10.0.0.7:8200",
        "http://[fd00::1]:8200",
        "http://localhost.example.com:8200",
        "http://127.0.0.1.example.com",
        "http://0.0.0.0:8200",
    ] {
        let errs = vault_address_errors(refused, "");
        assert!(
            errs.iter().any(|e| e.contains("allow_insecure_http")),
            "{refused} was accepted: {errs:#?}"
        );
        let errs = vault_address_errors(refused, "allow_insecure_http = true\n");
        assert!(errs.is_empty(), "{refused} with the opt-in: {errs:#?}");
    }
    for bad in [
        "vault.internal:8200",
        "ftp://vault.internal",
        "https://",
        "",
    ] {
        let errs = vault_address_errors(bad, "");
        assert!(
            errs.iter().any(|e| e.contains("[vault] address")),
            "{bad:?}: {errs:#?}"
        );
    }
}

/// Without TLS the built-in source's admin connection could be asked for its
/// password in clear (tokio-postgres cannot insist on SCRAM there), so such a
/// route needs the explicit opt-in.
#[test]
fn the_built_in_source_without_tls_needs_the_insecure_auth_opt_in() {
    let text =
        format!("{BASE}admin_password = \"fine\"\n").replace(", allow_insecure_auth = true", "");
    let errs = errors(&text, &[]);
    assert!(
        errs.iter().any(|e| e.contains("[[routes]] #1 (db)")
            && e.contains("would run without TLS")
            && e.contains("allow_insecure_auth")),
        "{errs:#?}"
    );
}

/// BASE with `line` added to its route.
fn with_route_line(line: &str) -> String {
    format!("{BASE}admin_password = \"fine\"\n").replace(
        "credentials = \"pg\"\n",
        &format!("credentials = \"pg\"\n{line}\n"),
    )
}

#[test]
fn allowed_parameters_are_validated_and_default_to_what_clients_send() {
    let errs = errors(
        &with_route_line(
            r#"allowed_parameters = ["role", "Session_Authorization", "post_auth_delay", "options", "_pq_.x", "bad name", "", "statement_timeout"]"#,
        ),
        &[],
    );
    for bad in [
        "`role`",
        "`Session_Authorization`",
        "`post_auth_delay`",
        "`options`",
        "`_pq_.x`",
        "`bad name`",
        "``",
    ] {
        assert!(
            errs.iter()
                .any(|e| e.contains("allowed_parameters") && e.contains(bad)),
            "{bad}: {errs:#?}"
        );
    }
    assert!(
        !errs.iter().any(|e| e.contains("statement_timeout")),
        "{errs:#?}"
    );
    let parse = |text: &str| config::from_str(text, Path::new("/nonexistent-base"), []).unwrap();
    let listed = parse(&with_route_line(
        r#"allowed_parameters = ["Statement_Timeout", "work_mem", "myext.setting"]"#,
    ));
    assert_eq!(
        listed.routes[0].allowed_parameters,
        ["statement_timeout", "work_mem", "myext.setting"]
    );
    let default = parse(&format!("{BASE}admin_password = \"fine\"\n"));
    for p in [
        "application_name",
        "client_encoding",
        "datestyle",
        "timezone",
        "extra_float_digits",
    ] {
        assert!(
            default.routes[0].allowed_parameters.iter().any(|a| a == p),
            "{p} is not allowed by default"
        );
    }
    assert!(
        !default.routes[0]
            .allowed_parameters
            .iter()
            .any(|a| a == "role")
    );
}

#[test]
fn admin_bounds_are_validated_and_default_to_loopback() {
    let base = format!("{BASE}admin_password = \"fine\"\n");
    let errs = errors(
        &format!(
            "{base}[admin]\nallow = []\nmax_connections = 0\nheader_timeout = \"20s\"\nrequest_timeout = \"10s\"\n"
        ),
        &[],
    );
    let has = |needle: &str| errs.iter().any(|e| e.contains(needle));
    assert!(has("[admin] allow: must not be empty"), "{errs:#?}");
    assert!(has("[admin] max_connections"), "{errs:#?}");
    assert!(has("header_timeout may not be longer"), "{errs:#?}");
    let errs = errors(&format!("{base}[admin]\nallow = [\"nope\"]\n"), &[]);
    assert!(
        errs.iter()
            .any(|e| e.contains("[admin] allow") && e.contains("nope")),
        "{errs:#?}"
    );
    let parse = |text: &str| config::from_str(text, Path::new("/nonexistent-base"), []).unwrap();
    let admin = parse(&format!("{base}[admin]\n")).admin.unwrap();
    let allows = |ip: &str| {
        admin
            .allow
            .iter()
            .any(|n| n.contains(&ip.parse::<std::net::IpAddr>().unwrap()))
    };
    assert!(allows("127.0.0.1") && allows("::1"));
    assert!(!allows("10.0.0.1") && !allows("172.30.89.5"));
    assert_eq!(admin.max_connections, 16);
    assert_eq!(admin.header_timeout, std::time::Duration::from_secs(5));
    assert_eq!(admin.request_timeout, std::time::Duration::from_secs(15));
}

#[test]
fn without_a_log_section_pgwarden_logs_at_info() {
    let text = format!("{BASE}admin_password = \"fine\"\n");
    let config = pgwarden::config::from_str(&text, std::path::Path::new("."), std::iter::empty())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.log.level, pgwarden::config::raw::DEFAULT_LOG_LEVEL);
    let with = format!("{text}[log]\nformat = \"text\"\n");
    let config = pgwarden::config::from_str(&with, std::path::Path::new("."), std::iter::empty())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.log.level, pgwarden::config::raw::DEFAULT_LOG_LEVEL);
}

/// The built-in source's `scram_iterations`: 1 to 1 000 000 (the most pgwarden's own
/// login computes), 16 when not set.
#[test]
fn scram_iterations_of_the_built_in_source_are_bounded() {
    for (value, ok) in [
        ("0", false),
        ("1", true),
        ("4096", true),
        ("1000000", true),
        ("1000001", false),
    ] {
        let text = format!("{BASE}admin_password = \"fine\"\nscram_iterations = {value}\n");
        let errs = errors(&text, &[]);
        let refused = errs.iter().any(|e| {
            e.contains("[credentials.pg]") && e.contains("scram_iterations must be 1 to 1000000")
        });
        assert_eq!(refused, !ok, "scram_iterations = {value}: {errs:#?}");
    }
    let text = format!("{BASE}admin_password = \"fine\"\n");
    let cfg =
        config::from_str(&text, Path::new("/nonexistent-base"), Vec::new()).expect("BASE is valid");
    let sources: Vec<u32> = cfg
        .credentials
        .values()
        .filter_map(|c| match c {
            config::CredentialsConfig::Postgres(p) => Some(p.scram_iterations.get()),
            _ => None,
        })
        .collect();
    assert_eq!(sources, [16]);
}
