//! `pgwarden backup` with a Vault source: the Vault double serving the shipped
//! `keycloak-backup` role on a cluster prepared by `config/vault/bootstrap.sql`. The dump
//! runs as a read-only login that can write nothing, its lease is revoked after success and
//! after a failed dump, and every call the run makes is granted by
//! `pgwarden-backup-policy.hcl`.

use pgwarden::backup::Reason;

use crate::support::backup::{BackupEnv, BackupOptions, fingerprint, seed};
use crate::support::harness::{GENEROUS, wait_until};
use crate::support::{hcl, shipped};

/// A pg_dump that dies after 100 KiB of its output.
const DYING: &str = r#"#!/bin/bash
[ "$1" = --version ] && exec "{real}" "$@"
"{real}" "$@" | dd bs=4096 count=25 iflag=fullblock status=none
kill -KILL $$
"#;

fn vault(env: &BackupEnv) -> &crate::support::vault_double::VaultDouble {
    &env.vault.as_ref().expect("a Vault double").double
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_backup_runs_read_only_and_its_lease_is_revoked() {
    let env = BackupEnv::start(BackupOptions {
        vault: true,
        ..BackupOptions::default()
    })
    .await;
    seed(env.direct(), 3000, "marker-vault").await;
    let before = fingerprint(env.direct()).await;
    let report = env.run().await;
    let m = report.outcome.expect("the backup succeeds").manifest;
    assert_eq!(report.lease_revoked, Some(true));
    // One lease, issued for keycloak-backup, and revoked; its role is gone.
    assert_eq!(vault(&env).count("/v1/database/creds/keycloak-backup"), 1);
    let revoked = vault(&env).revoked();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert!(
        revoked[0].starts_with("v-"),
        "the issued login: {revoked:?}"
    );
    assert!(vault(&env).leases().is_empty(), "no lease left");
    assert!(env.backup_roles().await.is_empty());
    // The shipped statements ran: the login acted as keycloak_backup.
    let statements = env.vault.as_ref().unwrap().statements().join("\n");
    assert!(
        statements.contains("IN ROLE keycloak_backup"),
        "{statements}"
    );

    // The backup restores to the same rows.
    let file = env.backups().join(&m.file);
    env.direct()
        .batch_execute("CREATE DATABASE restored")
        .await
        .unwrap();
    let out = env
        .pgwarden(&["restore", "--identity"])
        .arg(&env.identity_path)
        .arg("--dbname")
        .arg(env.superuser_conninfo("restored"))
        .arg("--pg-restore")
        .arg(env.pg_restore())
        .arg(&file)
        .args(["--", "--no-owner", "--no-privileges", "--exit-on-error"])
        .env(
            "PGPASSWORD",
            secrecy::ExposeSecret::expose_secret(env.superuser_password()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = env.cluster.connect("restored").await.unwrap();
    assert_eq!(fingerprint(&restored).await, before);

    // Every call of the run is granted by the backup's policy, and nothing more was needed.
    let policy = hcl::acl_policy(&shipped::file("pgwarden-backup-policy.hcl")).unwrap();
    let unauthenticated = ["auth/approle/login", "auth/kubernetes/login", "sys/health"];
    let mut used = Vec::new();
    for call in vault(&env).calls() {
        let path = call.path.trim_start_matches("/v1/").to_owned();
        if unauthenticated.contains(&path.as_str()) {
            continue;
        }
        let cap = if call.method == "GET" {
            "read"
        } else {
            "update"
        };
        assert!(
            hcl::allows(&policy, &path, cap),
            "{} {path} is not granted",
            call.method
        );
        used.push(format!("{cap} {path}"));
    }
    assert!(
        used.contains(&"read database/creds/keycloak-backup".to_owned()),
        "{used:?}"
    );
    assert!(
        used.contains(&"update sys/leases/revoke".to_owned()),
        "{used:?}"
    );
    env.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_role_reads_everything_and_writes_nothing() {
    let env = BackupEnv::start(BackupOptions {
        vault: true,
        ..BackupOptions::default()
    })
    .await;
    seed(env.direct(), 10, "marker-read-only").await;
    // A credential of the shipped role, as pg_dump gets it.
    let body: serde_json::Value = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(
                std::fs::read(env.dir().join("ca.crt")).unwrap().as_slice(),
            )
            .unwrap(),
        )
        .build()
        .unwrap()
        .get(format!(
            "{}/v1/database/creds/keycloak-backup",
            vault(&env).url()
        ))
        .header(
            "X-Vault-Token",
            std::fs::read_to_string(env.dir().join("vault_token")).unwrap(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user = body["data"]["username"].as_str().unwrap().to_owned();
    let password = body["data"]["password"].as_str().unwrap().to_owned();
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=keycloak user={user} sslmode=verify-full sslrootcert={}",
        env.cluster.port(),
        env.cluster.ca_cert_path().display()
    );
    let psql = |sql: &str| {
        std::process::Command::new(env.bindir.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(&conninfo)
            .env("PGPASSWORD", &password)
            .output()
            .unwrap()
    };
    let read = psql("SELECT current_user, count(*) FROM public.realm_secret");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&read.stdout).trim(),
        "keycloak_backup|10"
    );
    for write in [
        "INSERT INTO public.realm_secret VALUES (99, 'x')",
        "UPDATE public.realm_secret SET secret = 'x'",
        "DELETE FROM public.realm_secret",
        "CREATE TABLE public.intruder (id int)",
        "SET ROLE keycloak_owner",
    ] {
        let out = psql(write);
        assert!(!out.status.success(), "{write} was allowed");
    }
    let lease = body["lease_id"].as_str().unwrap().to_owned();
    vault(&env).revoke_lease(&lease).await.unwrap();
    env.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_vault_backup_revokes_its_lease_too() {
    let env = BackupEnv::start(BackupOptions {
        vault: true,
        pg_dump_wrapper: Some(DYING.into()),
        ..BackupOptions::default()
    })
    .await;
    seed(env.direct(), 20_000, "marker-vault-dying").await;
    let report = env.run().await;
    assert_eq!(report.outcome.expect_err("fails").reason(), Reason::Dump);
    assert_eq!(report.lease_revoked, Some(true));
    assert_eq!(vault(&env).count("/v1/database/creds/keycloak-backup"), 1);
    assert_eq!(vault(&env).revoked().len(), 1);
    assert!(vault(&env).leases().is_empty(), "no lease left");
    wait_until(GENEROUS, "the role is dropped", async || {
        env.backup_roles().await.is_empty()
    })
    .await;
    assert!(
        env.backup_files()
            .iter()
            .all(|f| f.starts_with(".pgwarden-backup")),
        "{:?}",
        env.backup_files()
    );
    env.assert_no_secrets_logged();
}
