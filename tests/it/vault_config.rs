//! `config/vault/` proved on real PostgreSQL: the cluster prepared by the shipped
//! `bootstrap.sql`, the Vault double running the shipped statement files verbatim as
//! `vault_admin`, and sessions through pgwarden with `source = "vault"`. Also the shipped
//! policy (exactly what pgwarden needs, and enough for every call it makes) and the
//! password policy.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::support::harness::{GENEROUS, Harness, Options, VaultOptions, wait_until};
use crate::support::hcl;
use crate::support::shipped::{
    self, APP_GROUP, APP_ROLE, MIGRATE_ROLE, PasswordPolicy, VAULT_ADMIN,
};
use pgwarden::auth::ScramVerifier;
use secrecy::{ExposeSecret, SecretString};

const OWNER: &str = "keycloak_owner";

fn shipped_vault(role: &str, edit: impl FnOnce(&mut VaultOptions)) -> Options {
    let mut v = VaultOptions {
        shipped: true,
        role: role.into(),
        ..VaultOptions::default()
    };
    edit(&mut v);
    Options {
        vault: Some(v),
        ..Options::default()
    }
}

async fn one_text(c: &tokio_postgres::Client, sql: &str) -> String {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// The SQLSTATE a statement fails with (panics if it succeeds).
async fn refused(c: &tokio_postgres::Client, sql: &str) -> String {
    let err = c
        .batch_execute(sql)
        .await
        .err()
        .unwrap_or_else(|| panic!("{sql}: succeeded"));
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql}: not a server error: {err}"));
    format!("{} {}", db.code().code(), db.message())
}

/// Objects in the current database, and shared ones, that `role` owns or holds rights on.
async fn dependencies_of(h: &Harness, role: &str) -> i64 {
    h.direct()
        .query_one(
            "SELECT count(*) FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid \
             WHERE r.rolname = $1 AND d.deptype IN ('o', 'a')",
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

async fn role_exists(h: &Harness, role: &str) -> bool {
    h.direct()
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .is_some()
}

/// Tables a migration would have made, created as keycloak_owner (what the migrate role's
/// sessions act as), so the default privileges apply.
async fn schema_as_migrations_leave_it(h: &Harness) {
    h.direct()
        .batch_execute(&format!(
            "BEGIN; SET LOCAL ROLE {OWNER};
             CREATE TABLE realm (id bigserial PRIMARY KEY, name text NOT NULL);
             CREATE SEQUENCE hibernate_sequence;
             INSERT INTO realm (name) VALUES ('master');
             COMMIT;"
        ))
        .await
        .unwrap();
}

async fn finish(mut h: Harness) {
    assert_eq!(h.shutdown().await, 0, "every lease revoked at shutdown");
    h.wait_for_no_dynamic_roles().await;
    assert!(h.vault().leases().is_empty(), "leases left in Vault");
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_role_creates_objects_owned_by_keycloak_owner_and_is_dropped_after() {
    let h = Harness::start(shipped_vault(MIGRATE_ROLE, |_| {})).await;
    let c = h.connect().await;
    let role = one_text(&c, "SELECT session_user::text").await;
    assert!(role.starts_with("v-"), "a Vault dynamic role: {role}");
    assert_eq!(one_text(&c, "SELECT current_user::text").await, OWNER);

    // What Keycloak's migrations do: tables, indexes, sequences, constraints.
    c.batch_execute(
        "CREATE TABLE client (id bigserial PRIMARY KEY, client_id text NOT NULL UNIQUE);
         CREATE INDEX client_lower ON client (lower(client_id));
         CREATE SEQUENCE client_seq;
         ALTER TABLE client ADD COLUMN enabled boolean NOT NULL DEFAULT true;
         INSERT INTO client (client_id) VALUES ('admin-cli');",
    )
    .await
    .expect("DDL as the migration role");
    let owners = h
        .direct()
        .query(
            "SELECT relname::text, pg_get_userbyid(relowner)::text FROM pg_class \
             WHERE relname IN ('client', 'client_pkey', 'client_client_id_key', \
                               'client_lower', 'client_seq', 'client_id_seq') ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(owners.len(), 6, "every object was created");
    for row in &owners {
        let (name, owner): (String, String) = (row.get(0), row.get(1));
        assert_eq!(owner, OWNER, "{name} belongs to the owner role");
    }
    assert_eq!(dependencies_of(&h, &role).await, 0, "{role} owns nothing");
    // Tables created later by the owner are open to the steady role, DML only.
    let privileges = h
        .direct()
        .query_one(
            "SELECT has_table_privilege($1, 'client', 'SELECT, INSERT, UPDATE, DELETE'), \
                    has_table_privilege($1, 'client', 'TRUNCATE'), \
                    has_table_privilege($1, 'client', 'REFERENCES'), \
                    has_sequence_privilege($1, 'client_seq', 'USAGE, SELECT, UPDATE')",
            &[&APP_GROUP],
        )
        .await
        .unwrap();
    let (dml, truncate, references, sequence): (bool, bool, bool, bool) = (
        privileges.get(0),
        privileges.get(1),
        privileges.get(2),
        privileges.get(3),
    );
    assert!(dml && sequence && !truncate && !references);
    // The dynamic role itself: a member that inherits nothing, one session, an expiry.
    let attributes = h
        .direct()
        .query_one(
            "SELECT rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolconnlimit, \
                    rolvaliduntil IS NOT NULL, pg_has_role(rolname, $2, 'MEMBER') \
             FROM pg_roles WHERE rolname = $1",
            &[&role, &OWNER],
        )
        .await
        .unwrap();
    assert!(!attributes.get::<_, bool>(0), "not a superuser");
    assert!(!attributes.get::<_, bool>(1), "NOINHERIT");
    assert!(!attributes.get::<_, bool>(2) && !attributes.get::<_, bool>(3));
    assert_eq!(attributes.get::<_, i32>(4), 1, "CONNECTION LIMIT 1");
    assert!(attributes.get::<_, bool>(5), "VALID UNTIL is set");
    assert!(attributes.get::<_, bool>(6), "member of {OWNER}");

    drop(c);
    wait_until(GENEROUS, "the migration role is revoked", async || {
        h.vault().revoked().contains(&role)
    })
    .await;
    assert!(!role_exists(&h, &role).await, "{role} is dropped");
    let left: i64 = h
        .direct()
        .query_one("SELECT count(*) FROM client", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1, "the schema outlives the role that created it");

    // Vault substituted a SCRAM verifier for {{password}}: no password reached PostgreSQL.
    let statements = h.vault_setup().statements();
    let creation = statements
        .iter()
        .find(|s| s.contains("CREATE ROLE"))
        .expect("the creation statement ran");
    assert!(creation.contains("PASSWORD 'SCRAM-SHA-256$4096:"));
    for p in h.vault_setup().issued_passwords() {
        assert!(
            statements.iter().all(|s| !s.contains(&p)),
            "a password reached SQL"
        );
    }
    finish(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_role_reads_and_writes_and_is_refused_everything_else() {
    let h = Harness::start(shipped_vault(APP_ROLE, |_| {})).await;
    schema_as_migrations_leave_it(&h).await;
    let c = h.connect().await;
    assert!(
        one_text(&c, "SELECT session_user::text")
            .await
            .starts_with("v-")
    );
    assert_eq!(one_text(&c, "SELECT current_user::text").await, APP_GROUP);
    assert_eq!(one_text(&c, "SHOW is_superuser").await, "off");

    c.batch_execute(
        "INSERT INTO realm (name) VALUES ('keycloak');
         UPDATE realm SET name = 'kc' WHERE name = 'keycloak';
         DELETE FROM realm WHERE name = 'kc';
         SELECT nextval('hibernate_sequence'), nextval('realm_id_seq');
         SELECT setval('hibernate_sequence', 100);
         CREATE TEMPORARY TABLE scratch (x int);",
    )
    .await
    .expect("read, update, write and sequences");
    let name = one_text(&c, "SELECT name FROM realm").await;
    assert_eq!(name, "master");

    for sql in [
        "CREATE TABLE intruder (x int)",
        "DROP TABLE realm",
        "TRUNCATE realm",
        "ALTER TABLE realm ADD COLUMN y int",
        "CREATE INDEX ON realm (name)",
        "CREATE ROLE intruder",
        "CREATE SCHEMA intruder",
        "SET ROLE keycloak_owner",
        "COPY realm TO PROGRAM 'true'",
        // Back to the login role itself: it has no rights of its own.
        "SET ROLE NONE; CREATE TEMPORARY TABLE mine (x int)",
        "SET ROLE NONE; SELECT * FROM public.realm",
    ] {
        let answer = refused(&c, sql).await;
        assert!(answer.starts_with("42501 "), "{sql}: {answer}");
        c.batch_execute("RESET ROLE").await.unwrap();
    }
    assert_eq!(one_text(&c, "SELECT current_user::text").await, APP_GROUP);
    let superuser: bool = c
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = session_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!superuser, "the login role is no superuser");
    drop(c);
    finish(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_moves_valid_until_with_the_shipped_statement() {
    let h = Harness::start(shipped_vault(APP_ROLE, |v| {
        v.default_ttl = Duration::from_secs(3);
        v.max_ttl = Duration::from_secs(300);
    }))
    .await;
    let c = h.connect().await;
    let role = one_text(&c, "SELECT session_user::text").await;
    let valid_until = async || -> String {
        h.direct()
            .query_one(
                "SELECT rolvaliduntil::text FROM pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await
            .unwrap()
            .get(0)
    };
    let first = valid_until().await;
    let mut seen = vec![first.clone()];
    let renewals = || {
        h.vault()
            .leases()
            .iter()
            .find(|l| l.username == role)
            .expect("the session's lease")
            .renew_count
    };
    // The double counts a renewal once its statement has run, so the count
    // may trail the VALID UNTIL it moved by a moment: wait for both.
    wait_until(
        GENEROUS,
        "VALID UNTIL moved twice, by two renewals through Vault",
        async || {
            let now = valid_until().await;
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            seen.len() >= 3 && renewals() >= 2
        },
    )
    .await;
    // Past three original lease lifetimes, the session still works, on the same role.
    let start = Instant::now();
    wait_until(GENEROUS, "three lease lifetimes pass", async || {
        start.elapsed() > Duration::from_secs(9)
    })
    .await;
    assert_eq!(one_text(&c, "SELECT session_user::text").await, role);
    let in_future: bool = h
        .direct()
        .query_one(
            "SELECT rolvaliduntil > now() FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    assert!(in_future, "VALID UNTIL stays ahead: {seen:?}");
    drop(c);
    finish(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_a_live_session_and_succeeds_whatever_the_role_did() {
    let mut h = Harness::start(shipped_vault(APP_ROLE, |_| {})).await;
    // 1. An operator revokes the lease of a connected session (`vault lease revoke`):
    // the backend is ended first, then the role is dropped.
    let (c, conn) = h.connect_parts(&h.pg_config()).await.unwrap();
    let conn = tokio::spawn(conn);
    let role = one_text(&c, "SELECT session_user::text").await;
    let lease = h.vault().leases()[0].lease_id.clone();
    assert_eq!(h.vault().revoke_lease(&lease).await, Ok(true));
    assert!(!role_exists(&h, &role).await, "dropped by the revocation");
    let ended = tokio::time::timeout(GENEROUS, conn)
        .await
        .expect("the session ends")
        .unwrap();
    let err = ended.expect_err("ended by the server");
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("57P01"),
        "{err}"
    );
    // pgwarden's own revocation of that lease then finds it gone: 204, nothing pending.
    wait_until(GENEROUS, "pgwarden's revocation is done", async || {
        h.pending_revocations() == 0
    })
    .await;

    // 2. A session that made itself objects of its own (back to the login role, a large
    // object, default privileges) cannot make its role undroppable.
    let c = h.connect().await;
    let role = one_text(&c, "SELECT session_user::text").await;
    c.batch_execute(
        "SET ROLE NONE; SELECT lo_create(0); \
         ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC;",
    )
    .await
    .expect("these need no privilege");
    assert!(dependencies_of(&h, &role).await >= 2, "it owns things now");
    drop(c);
    wait_until(GENEROUS, "the role is revoked", async || {
        h.vault().revoked().contains(&role)
    })
    .await;
    assert!(!role_exists(&h, &role).await);
    let large_objects: i64 = h
        .direct()
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(large_objects, 0, "its large object went with it");

    // 3. A role a DBA already dropped: revocation still succeeds (nothing left to do).
    let c = h.connect().await;
    let role = one_text(&c, "SELECT session_user::text").await;
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    h.direct()
        .batch_execute(&format!(
            "DROP ROLE \"{role}\"; SELECT pg_terminate_backend({pid}, 10000);"
        ))
        .await
        .unwrap();
    drop(c);
    wait_until(
        GENEROUS,
        "the lease of a vanished role is revoked",
        async || h.vault().revoked().contains(&role),
    )
    .await;

    // 4. Shutdown with a session still open: ended, revoked, dropped.
    let open = h.connect().await;
    let role = one_text(&open, "SELECT session_user::text").await;
    assert_eq!(h.shutdown().await, 0, "nothing left unrevoked");
    assert!(h.vault().revoked().contains(&role));
    h.wait_for_no_dynamic_roles().await;
    assert!(h.vault().leases().is_empty());
    drop(open);
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issued_credential_opens_one_session_only() {
    let h = Harness::start(shipped_vault(APP_ROLE, |_| {})).await;
    let c = h.connect().await;
    let role = one_text(&c, "SELECT session_user::text").await;
    let issued = h.vault_setup().issued_passwords();
    assert_eq!(issued.len(), 1, "one credential issued so far");
    // Someone who learnt the credential cannot open a second session with it.
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(h.cluster.port())
        .user(&role)
        .password(&issued[0])
        .dbname("keycloak")
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(GENEROUS);
    let tls = pgwarden::tls::pg_connector::RustlsConnect::new(
        pgwarden::tls::pg_connector::verify_full_client_config(h.cluster.ca_cert_pem().as_bytes())
            .unwrap(),
    );
    let err = config.connect(tls).await.err().expect("a second session");
    // 53300 comes after authentication: the password was right, the limit refused it.
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("53300"),
        "{err}"
    );
    drop(c);
    finish(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_runs_again_and_leaves_no_superuser_but_the_dba() {
    let h = Harness::start(shipped_vault(APP_ROLE, |_| {})).await;
    // Again, without a verifier: vault_admin keeps its password.
    let again = shipped::run_bootstrap(&h.cluster, None).await;
    assert!(again.success, "second run:\n{}", again.stderr);
    let c = h.connect().await;
    assert!(
        one_text(&c, "SELECT session_user::text")
            .await
            .starts_with("v-")
    );
    drop(c);
    // A password where the verifier belongs is refused, and not echoed.
    let not_a_verifier = SecretString::from("plain-password-Hq8v3Lx2");
    let refused_run = shipped::run_bootstrap(&h.cluster, Some(&not_a_verifier)).await;
    assert!(!refused_run.success, "a password is not a verifier");
    assert!(
        refused_run
            .stderr
            .contains("VAULT_ADMIN_VERIFIER is not a SCRAM-SHA-256 verifier")
    );
    assert!(!refused_run.stderr.contains(not_a_verifier.expose_secret()));
    assert!(!refused_run.stdout.contains(not_a_verifier.expose_secret()));
    // The line `pgwarden scram-verifier` prints is taken as it is (same password, new salt).
    let verifier = ScramVerifier::from_password(&h.admin_password).to_text();
    let line = SecretString::from(format!(
        "scram_verifier = \"{}\"\n",
        verifier.expose_secret()
    ));
    let run = shipped::run_bootstrap(&h.cluster, Some(&line)).await;
    assert!(run.success, "with the CLI's line:\n{}", run.stderr);
    let stored: String = h
        .direct()
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'vault_admin'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, verifier.expose_secret(), "stored as given");
    let c = h.connect().await;
    assert!(
        one_text(&c, "SELECT session_user::text")
            .await
            .starts_with("v-")
    );
    drop(c);

    let superusers: Vec<String> = h
        .direct()
        .query("SELECT rolname::text FROM pg_roles WHERE rolsuper", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(superusers, [h.cluster.superuser()]);
    let row = h
        .direct()
        .query_one(
            "SELECT a.rolcanlogin, a.rolcreaterole, a.rolcreatedb, a.rolreplication, a.rolbypassrls, \
                    o.rolcanlogin, k.rolcanlogin, o.rolcreaterole OR k.rolcreaterole, \
                    pg_has_role('vault_admin', 'pg_signal_backend', 'USAGE'), \
                    pg_has_role('vault_admin', 'keycloak_owner', 'USAGE'), \
                    pg_has_role('vault_admin', 'keycloak_app', 'USAGE'), \
                    (SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = 'keycloak'), \
                    (SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = 'public'), \
                    has_schema_privilege('public', 'public', 'CREATE'), \
                    has_database_privilege('public', 'keycloak', 'TEMPORARY'), \
                    has_schema_privilege('keycloak_app', 'public', 'CREATE') \
             FROM pg_roles a, pg_roles o, pg_roles k \
             WHERE a.rolname = $1 AND o.rolname = 'keycloak_owner' AND k.rolname = $2",
            &[&VAULT_ADMIN, &APP_GROUP],
        )
        .await
        .unwrap();
    let b = |i: usize| row.get::<_, bool>(i);
    assert!(b(0) && b(1), "vault_admin: LOGIN CREATEROLE");
    assert!(!b(2) && !b(3) && !b(4), "vault_admin: nothing more");
    assert!(
        !b(5) && !b(6) && !b(7),
        "the group roles: NOLOGIN, no CREATEROLE"
    );
    assert!(b(8), "vault_admin may end a dynamic role's sessions");
    assert!(
        !b(9) && !b(10),
        "vault_admin does not act as the group roles"
    );
    assert_eq!(row.get::<_, String>(11), OWNER);
    assert_eq!(row.get::<_, String>(12), OWNER);
    assert!(
        !b(13) && !b(14) && !b(15),
        "no CREATE or TEMP for PUBLIC, no CREATE for the app"
    );
    finish(h).await;
}

/// pgwarden-policy.hcl as path → capabilities.
fn shipped_policy() -> BTreeMap<String, BTreeSet<String>> {
    hcl::acl_policy(&shipped::file("pgwarden-policy.hcl"))
        .unwrap_or_else(|e| panic!("pgwarden-policy.hcl: {e}"))
}

/// What a path grants, as Vault maps HTTP methods to capabilities.
fn capability(method: &str) -> &'static str {
    match method {
        "GET" | "HEAD" => "read",
        "LIST" => "list",
        "DELETE" => "delete",
        // POST and PUT are `update` on these endpoints (`create` only where a resource is
        // made at that path, which pgwarden never does).
        _ => "update",
    }
}

#[test]
fn the_policy_grants_exactly_what_pgwarden_needs() {
    let want: BTreeMap<String, BTreeSet<String>> = [
        ("database/creds/keycloak-migrate", "read"),
        ("database/creds/keycloak", "read"),
        ("sys/leases/renew", "update"),
        ("sys/leases/revoke", "update"),
        ("auth/token/renew-self", "update"),
        ("auth/token/lookup-self", "read"),
    ]
    .into_iter()
    .map(|(p, c)| (p.to_owned(), BTreeSet::from([c.to_owned()])))
    .collect();
    let policy = shipped_policy();
    assert_eq!(policy, want);
    // The matcher is not vacuous: neighbours of what is granted are refused.
    for (path, cap) in [
        ("database/creds/keycloak", "update"),
        ("database/creds/other", "read"),
        ("database/config/keycloak", "read"),
        ("database/roles/keycloak", "update"),
        ("sys/leases/lookup", "update"),
        ("sys/leases/revoke-prefix/database", "update"),
        ("auth/token/create", "update"),
        ("sys/policies/acl/pgwarden", "update"),
    ] {
        assert!(!hcl::allows(&policy, path, cap), "{cap} on {path}");
    }
}

#[test]
fn the_backup_policy_grants_exactly_what_a_backup_run_needs() {
    let want: BTreeMap<String, BTreeSet<String>> = [
        ("database/creds/keycloak-backup", "read"),
        ("sys/leases/renew", "update"),
        ("sys/leases/revoke", "update"),
        ("auth/token/renew-self", "update"),
        ("auth/token/lookup-self", "read"),
    ]
    .into_iter()
    .map(|(p, c)| (p.to_owned(), BTreeSet::from([c.to_owned()])))
    .collect();
    let policy = hcl::acl_policy(&shipped::file("pgwarden-backup-policy.hcl")).unwrap();
    assert_eq!(policy, want);
    // Neither token can take the other's credentials.
    assert!(!hcl::allows(&policy, "database/creds/keycloak", "read"));
    assert!(!hcl::allows(
        &policy,
        "database/creds/keycloak-migrate",
        "read"
    ));
    assert!(!hcl::allows(
        &shipped_policy(),
        "database/creds/keycloak-backup",
        "read"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_pgwarden_makes_is_covered_by_the_policy() {
    // Renewals come at 2/3 of these TTLs: the slack (a third) must hold on a
    // loaded machine, or the double expires the token before its renewal.
    let mut h = Harness::start(shipped_vault(MIGRATE_ROLE, |v| {
        v.default_ttl = Duration::from_secs(9);
        v.max_ttl = Duration::from_secs(300);
        v.token_ttl = Duration::from_secs(9);
        v.token_max_ttl = Duration::from_secs(300);
    }))
    .await;
    let c = h.connect().await;
    wait_until(GENEROUS, "a lease and the token are renewed", async || {
        h.vault().count("/v1/sys/leases/renew") > 0
            && h.vault().count("/v1/auth/token/renew-self") > 0
    })
    .await;
    drop(c);
    wait_until(GENEROUS, "the lease is revoked", async || {
        h.vault().count("/v1/sys/leases/revoke") > 0 && h.pending_revocations() == 0
    })
    .await;
    h.shutdown().await;

    let policy = shipped_policy();
    // Logins and health need no token, and so no policy.
    let unauthenticated = ["auth/approle/login", "auth/kubernetes/login", "sys/health"];
    let mut used = BTreeSet::new();
    for call in h.vault().calls() {
        let path = call.path.trim_start_matches("/v1/");
        if unauthenticated.contains(&path) {
            continue;
        }
        let cap = capability(&call.method);
        assert!(
            hcl::allows(&policy, path, cap),
            "pgwarden called {} {path}, which the policy does not grant ({cap})",
            call.method
        );
        used.insert(format!("{cap} {path}"));
    }
    for needed in [
        "read database/creds/keycloak-migrate",
        "update sys/leases/renew",
        "update sys/leases/revoke",
        "update auth/token/renew-self",
    ] {
        assert!(used.contains(needed), "{needed} was exercised: {used:?}");
    }
    h.wait_for_no_dynamic_roles().await;
    h.assert_no_secrets_logged();
}

#[test]
fn the_password_policy_makes_long_passwords_safe_in_sql_and_urls() {
    let policy = PasswordPolicy::shipped();
    assert!(policy.length >= 32, "length {}", policy.length);
    assert!(policy.rules.len() >= 3, "at least three character classes");
    let minimums: usize = policy.rules.iter().map(|(_, m)| m).sum();
    assert!(minimums <= policy.length, "the minimums fit the length");
    for (set, min) in &policy.rules {
        assert!(*min >= 1 && !set.is_empty(), "every class is required");
    }
    for c in policy.alphabet() {
        assert!(
            c.is_ascii_graphic() && !"'\"\\@:/?#%&=+ ".contains(c),
            "{c:?} would need quoting somewhere"
        );
    }
    // Vault's generator and this reading of the policy agree (the double uses it).
    for _ in 0..100 {
        let p = policy.generate();
        assert!(policy.accepts(&p), "{} characters", p.len());
    }
    assert!(!policy.accepts("too-short"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_admin_statements_stay_out_of_a_ddl_logging_server_log() {
    let mut opts = shipped_vault(MIGRATE_ROLE, |_| {});
    // What config/postgres/logging.conf asks for: every DDL statement logged.
    opts.cluster_settings = vec![
        ("log_statement".into(), "ddl".into()),
        ("log_min_error_statement".into(), "error".into()),
    ];
    let h = Harness::start(opts).await;
    let c = h.connect().await;
    let role = one_text(&c, "SELECT session_user::text").await;
    c.batch_execute("CREATE TABLE ddl_log_probe (id int)")
        .await
        .unwrap();
    drop(c);
    h.wait_for_no_dynamic_roles().await;

    let log = h.cluster.server_log();
    // The session's own DDL is logged, so statement logging is on...
    assert!(
        log.lines()
            .any(|l| l.contains("statement: CREATE TABLE ddl_log_probe")),
        "the session's DDL is not in the server log:\n{log}"
    );
    // ...but not vault_admin's creation and revocation of the dynamic role, which carry
    // its password (here a SCRAM verifier), nor bootstrap.sql's setting of vault_admin's
    // own verifier, nor any other verifier.
    let quoted = format!("\"{role}\"");
    for line in log.lines() {
        let names_the_role = line.contains("statement:") && line.contains(&quoted);
        let carries_a_secret = line.contains("SCRAM-SHA-256$") || line.contains("PASSWORD");
        assert!(
            !names_the_role && !carries_a_secret,
            "a credential statement reached the server log: {line}"
        );
    }
    assert!(log.contains(&role), "the dynamic role's login is logged");
    finish(h).await;
}
