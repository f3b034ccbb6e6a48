//! `pgwarden audit` against real clusters: one set up the way `config/postgres/` and
//! `config/vault/` say, where nothing fails; one wrong in each way the audit checks, where
//! each check fails (or warns) for its own reason; both holding a Keycloak-shaped schema with
//! planted secrets that must never reach a report. Run as the issued (unprivileged) role, the
//! checks that need privilege say `unknown`; run `--as` a superuser they pass. The exit codes
//! are checked through the real binary, and the continuous mode through `/metrics`.

mod fixture;

use std::process::Command;

use pgwarden::audit::command::{Format, Options, run};
use serde_json::Value;

use crate::support::harness::{GENEROUS, parse_metric, wait_until};
use fixture::Fixture;

/// Runs the audit in-process; its exit code, JSON report and stderr.
async fn audit(fx: &Fixture, auditor: Option<String>, format: Format) -> (i32, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let opts = Options {
        config: fx.config_path.clone(),
        route: None,
        format,
        auditor,
        password_file: None,
    };
    let code = run(opts, fx.env(), &mut out, &mut err).await;
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

/// Every check of a JSON report: id → (status, evidence, lacks).
fn checks(json: &str) -> std::collections::BTreeMap<String, (String, String, String)> {
    let report: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let route = report["routes"][0]["checks"].as_array().unwrap().iter();
    route
        .chain(report["pgwarden"].as_array().unwrap())
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("id"), (s("status"), s("evidence"), s("lacks")))
        })
        .collect()
}

fn expect(
    all: &std::collections::BTreeMap<String, (String, String, String)>,
    id: &str,
    status: &str,
    evidence: &str,
) {
    let (s, e, l) = all.get(id).unwrap_or_else(|| panic!("no check {id}"));
    assert_eq!(s, status, "{id}: {e} {l}");
    assert!(e.contains(evidence), "{id}: `{evidence}` not in `{e}`");
}

/// Runs the built binary; exit code, stdout, stderr.
fn binary(args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwarden"));
    cmd.arg("audit").args(args);
    for var in [
        "PGPASSWORD",
        "PGPASSFILE",
        "PGWARDEN_CONFIG",
        "PGHOST",
        "PGUSER",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", "/nonexistent").envs(env.iter().cloned());
    let out = cmd.output().expect("the pgwarden binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_configuration_passes_and_missing_privilege_is_unknown() {
    let fx = Fixture::shipped().await;

    // As Keycloak's own (issued) role: nothing fails; what needs privilege is unknown.
    let (code, json, err) = audit(&fx, None, Format::Json).await;
    let all = checks(&json);
    let failing: Vec<_> = all.iter().filter(|(_, (s, _, _))| s == "fail").collect();
    assert!(failing.is_empty(), "{failing:#?}\n{err}");
    assert_eq!(code, 0, "{json}\n{err}");
    for id in [
        "access.hba_methods",
        "access.hba_hostssl",
        "access.hba_open",
        "passwords.no_md5",
    ] {
        let (status, _, lacks) = &all[id];
        assert_eq!(status, "unknown", "{id} is not guessed");
        assert!(lacks.contains("superuser"), "{id}: {lacks}");
    }
    let report: Value = serde_json::from_str(&json).unwrap();
    let who = report["routes"][0]["connected_as"].as_str().unwrap();
    assert!(
        who.starts_with("v-") && who.ends_with("acting as keycloak_app"),
        "{who}"
    );
    expect(
        &all,
        "account.role_attributes",
        "pass",
        "acts as keycloak_app",
    );
    expect(
        &all,
        "account.group_privileges",
        "pass",
        "keycloak_app holds no TRUNCATE",
    );
    expect(&all, "account.no_static_login", "pass", "no LOGIN role");
    expect(&all, "logging.issuer_statements", "pass", "vault_admin");
    expect(&all, "logging.line_prefix", "pass", "%u");
    expect(
        &all,
        "passwords.issued_strength",
        "pass",
        "48 characters from 4 classes",
    );
    expect(&all, "rotation.dynamic_source", "pass", "expires by itself");
    expect(&all, "rotation.max_ttl", "unknown", "not visible");
    expect(
        &all,
        "sensitive.realm_keys",
        "warn",
        "3 key providers in 1 realms",
    );
    expect(&all, "sensitive.client_secrets", "warn", "1 of 2 clients");
    expect(
        &all,
        "sensitive.ldap_bind_credentials",
        "pass",
        "1 LDAP/Kerberos bind credentials, all ${vault.…} references",
    );
    expect(&all, "sensitive.idp_client_secrets", "pass", "all ${vault");
    expect(&all, "sensitive.smtp_passwords", "pass", "all ${vault");
    expect(
        &all,
        "sensitive.otp_secrets",
        "warn",
        "1 OTP secrets of 1 users",
    );
    expect(
        &all,
        "sensitive.personal_data",
        "pass",
        "1 users with an e-mail",
    );
    expect(&all, "sensitive.pgcrypto", "pass", "pgcrypto");
    expect(
        &all,
        "tls.server_certificate",
        "pass",
        "the server's certificate expires",
    );
    fx.assert_no_secret_in("the JSON report", &json);
    fx.assert_no_secret_in("stderr", &err);

    // As a superuser (--as a DSN, password from PGPASSWORD): the unknowns are known, and pass.
    let (code, json, err) = audit(&fx, Some(fx.superuser_dsn()), Format::Table).await;
    assert_eq!(code, 0, "{json}\n{err}");
    for id in [
        "access.hba_methods",
        "access.hba_hostssl",
        "access.hba_open",
        "passwords.no_md5",
        "tls.min_protocol",
    ] {
        let line = json
            .lines()
            .find(|l| l.trim_start().starts_with(id))
            .unwrap();
        assert!(line.contains(" pass "), "{line}");
    }
    assert!(
        json.contains("audited as postgres acting as postgres"),
        "{json}"
    );
    fx.assert_no_secret_in("the table report", &json);

    // Every credential the audits were issued is revoked.
    let vault = fx.vault.as_ref().unwrap();
    wait_until(GENEROUS, "the audit's leases are revoked", async || {
        vault.double.leases().is_empty()
    })
    .await;
    assert!(vault.issued_passwords().len() >= 2);

    // The binary: exit 0, and no secret in what it prints.
    let config = fx.config_path.display().to_string();
    let (code, out, err) = binary(&["--config", &config, "--format", "json"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    fx.assert_no_secret_in("the binary's output", &(out + &err));

    // Continuously: pgwarden run exports each check's status; readiness does not depend on it.
    let config = pgwarden::config::load(&fx.config_path, std::iter::empty()).unwrap();
    let server = pgwarden::server::Server::start(config).await.unwrap();
    let admin = server.admin_addr.unwrap();
    let metrics = async || {
        reqwest::get(format!("http://{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    wait_until(
        GENEROUS,
        "the first background audit completes",
        async || {
            parse_metric(
                &metrics().await,
                "pgwarden_audit_last_run_timestamp_seconds",
            )
            .unwrap_or(0.0)
                > 0.0
        },
    )
    .await;
    let body = metrics().await;
    let gauge = |labels: &str| parse_metric(&body, &format!("pgwarden_audit_check{{{labels}}}"));
    assert_eq!(
        gauge(r#"check="tls.ssl_on",item="1",status="pass""#),
        Some(1.0)
    );
    assert_eq!(
        gauge(r#"check="tls.ssl_on",item="1",status="fail""#),
        Some(0.0)
    );
    assert_eq!(
        gauge(r#"check="access.hba_open",item="5",status="unknown""#),
        Some(1.0)
    );
    assert_eq!(
        parse_metric(&body, "pgwarden_audit_interval_seconds"),
        Some(3600.0)
    );
    let ready = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    fx.assert_no_secret_in("/metrics", &body);
    // Shutdown ends the background audit before the revoker drains: when it
    // returns, every credential the audit was issued has been revoked.
    assert_eq!(server.shutdown().await, 0);
    assert!(
        vault.double.leases().is_empty(),
        "the background audit's lease is revoked by shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_cluster_fails_each_check_for_its_reason() {
    let fx = Fixture::misconfigured().await;
    let (code, json, err) = audit(&fx, Some(fx.superuser_dsn()), Format::Json).await;
    assert_eq!(code, 1, "{json}\n{err}");
    let all = checks(&json);
    for (id, status, evidence) in [
        ("tls.min_protocol", "fail", "'TLSv1'"),
        ("tls.server_certificate", "fail", "not encrypted"),
        ("tls.upstream_verify", "fail", "tls = disable"),
        (
            "account.role_attributes",
            "fail",
            "keycloak_app has CREATEDB, BYPASSRLS",
        ),
        ("account.group_privileges", "fail", "TRUNCATE on"),
        (
            "account.owns_nothing",
            "fail",
            "keycloak_app owns 1 objects",
        ),
        (
            "account.no_create",
            "fail",
            "keycloak_app may CREATE in schema public",
        ),
        ("account.no_static_login", "fail", "keycloak_static"),
        (
            "account.public_schema_create",
            "fail",
            "PUBLIC may CREATE in schema public",
        ),
        // The superuser's own setting is not what Keycloak's sessions get.
        (
            "passwords.encryption",
            "unknown",
            "password_encryption = scram-sha-256 is the role's own",
        ),
        ("passwords.no_md5", "fail", "keycloak_static"),
        ("rotation.lease_ttl", "warn", "ttl = 30days"),
        ("rotation.max_ttl", "warn", "max_ttl is not set"),
        ("rotation.on_lease_end", "fail", "keep"),
        ("rotation.leftover_roles", "fail", "pgwarden_leftover"),
        ("access.hba_methods", "fail", "10.0.0.0/255.0.0.0 trust"),
        ("access.hba_hostssl", "fail", "(host 127.0.0.1"),
        ("access.hba_open", "fail", "0.0.0.0/0.0.0.0 md5"),
        ("access.allowlist", "fail", "0.0.0.0/0"),
        ("sensitive.realm_keys", "warn", "3 key providers"),
        (
            "sensitive.ldap_bind_credentials",
            "fail",
            "1 of 1 LDAP/Kerberos bind credentials are stored in clear",
        ),
        (
            "sensitive.idp_client_secrets",
            "fail",
            "1 of 1 identity provider client secrets",
        ),
        // A ${vault.…} reference is told apart even with standard_conforming_strings off.
        (
            "sensitive.smtp_passwords",
            "fail",
            "1 of 2 realm SMTP passwords",
        ),
        ("sensitive.otp_secrets", "warn", "1 OTP secrets"),
        ("logging.connections", "fail", "log_connections = off"),
        (
            "logging.line_prefix",
            "fail",
            "lacks pid, user, database, client",
        ),
        ("logging.ddl", "fail", "log_statement = none"),
        (
            "logging.issuer_statements",
            "fail",
            "pgwarden_admin would have its statements logged",
        ),
        ("monitoring.admin_listener", "fail", "no [admin]"),
        ("monitoring.metrics", "fail", "no admin listener"),
        ("monitoring.continuous_audit", "warn", "no [audit]"),
    ] {
        expect(&all, id, status, evidence);
    }
    fx.assert_no_secret_in("the JSON report", &json);
    fx.assert_no_secret_in("stderr", &err);

    // --as a credential source: the checks run as a role it issues, acting as itself.
    let (code, json, err) = audit(&fx, Some("test".into()), Format::Json).await;
    assert_eq!(code, 1, "{json}\n{err}");
    let report: Value = serde_json::from_str(&json).unwrap();
    let who = report["routes"][0]["connected_as"].as_str().unwrap();
    assert!(
        who.starts_with("pgwarden_") && !who.ends_with("keycloak_app"),
        "{who}"
    );
    let all = checks(&json);
    assert_eq!(all["access.hba_open"].0, "unknown");
    // Its own settings are the server's, so it sees MD5.
    expect(
        &all,
        "passwords.encryption",
        "fail",
        "password_encryption = md5",
    );
    // Row-level security hides client's rows from it: not "no client of 0".
    expect(
        &all,
        "sensitive.client_secrets",
        "unknown",
        "row-level security",
    );
    // The probe's role and the auditor's are dropped again; the planted leftover stays.
    let direct = fx.cluster.connect("postgres").await.unwrap();
    wait_until(GENEROUS, "the audit's role is dropped", async || {
        let rows = direct
            .query(
                "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, 'pgwarden_') ORDER BY 1",
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>()
            == ["pgwarden_admin", "pgwarden_leftover"]
    })
    .await;

    // The binary: exit 1 on failures, 2 when it cannot run.
    let config = fx.config_path.display().to_string();
    let dsn = fx.superuser_dsn();
    let password_file = fx.dir.path().join("superuser-password");
    std::fs::write(&password_file, &fx.env()[0].1).unwrap();
    let password_file = password_file.display().to_string();
    let (code, out, err) = binary(
        &[
            "--config",
            &config,
            "--as",
            &dsn,
            "--password-file",
            &password_file,
        ],
        &[],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("fail"), "{out}");
    fx.assert_no_secret_in("the binary's output", &(out + &err));

    let password = fx.env()[0].1.clone();
    let with_password = dsn.replace("postgres@", &format!("postgres:{password}@"));
    let (code, out, err) = binary(&["--config", &config, "--as", &with_password], &[]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("carries a password"), "{err}");
    assert!(
        !out.contains(&password) && !err.contains(&password),
        "the password is echoed"
    );

    let free = crate::support::harness::refusing_port();
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    let down = fx.dir.path().join("down.toml");
    std::fs::write(
        &down,
        text.replace(
            &format!("port = {}", fx.cluster.port()),
            &format!("port = {free}"),
        ),
    )
    .unwrap();
    let (code, out, err) = binary(&["--config", &down.display().to_string()], &[]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.contains("could not audit this route"), "{out}");
    let (code, _, err) = binary(&["--config", &config, "--route", "nope"], &[]);
    assert_eq!((code, err.contains("--route nope")), (2, true), "{err}");
}
