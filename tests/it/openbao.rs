//! pgwarden against a real Vault API server: OpenBao's dev server, configured by the shipped
//! `config/vault/setup.sh` (unchanged, `vault` being `bao`) on a cluster the shipped
//! `bootstrap.sql` prepared, with pgwarden logging in with the AppRole `setup.sh` wrote.
//! What the Vault double cannot prove: that a real server, its PostgreSQL plugin and its
//! ACLs agree with what pgwarden and `config/vault/` expect.

use std::time::Duration;

use crate::support::harness::{GENEROUS, Harness, Options, session_user, wait_until};
use crate::support::openbao_setup::{MIGRATE_DATABASE, OpenBaoOptions};
use crate::support::shipped::APP_GROUP;
use pgwarden::dev::CLIENT_USER;
use secrecy::ExposeSecret;

const OWNER: &str = "keycloak_owner";
const APP_LEASES: &str = "database/creds/keycloak/";
const MIGRATE_LEASES: &str = "database/creds/keycloak-migrate/";

async fn start(opts: OpenBaoOptions) -> Harness {
    Harness::start(Options {
        openbao: Some(opts),
        admin: true,
        ..Options::default()
    })
    .await
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
    db.code().code().to_owned()
}

/// A session through pgwarden with the `keycloak-migrate` credential source.
async fn connect_migrate(h: &Harness) -> tokio_postgres::Client {
    let config = h.pg_config_as(
        CLIENT_USER,
        h.client_password.expose_secret(),
        MIGRATE_DATABASE,
    );
    h.try_connect(&config).await.expect("a migrate session")
}

/// Waits until OpenBao holds exactly `n` leases under `prefix`.
async fn wait_for_leases(h: &Harness, prefix: &str, n: usize) {
    wait_until(
        GENEROUS,
        &format!("{n} leases under {prefix}"),
        async || h.openbao().bao.leases(prefix).await.len() == n,
    )
    .await;
}

async fn role_exists(h: &Harness, role: &str) -> bool {
    h.direct()
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_roles_act_as_documented_and_every_exit_leaves_no_lease_or_role() {
    let mut h = start(OpenBaoOptions::default()).await;
    // setup.sh ran against the real server and printed none of its secrets.
    let printed = &h.openbao().setup_output;
    assert!(printed.contains("wrote role_id and secret_id"), "{printed}");
    for secret in h.openbao().secrets() {
        assert!(!printed.contains(&secret), "setup.sh printed a secret");
    }
    assert!(!printed.contains(h.admin_password.expose_secret()));
    let migrate = connect_migrate(&h).await;
    let closing = h.connect().await;
    let (killed, killed_conn) = h.connect_parts(&h.pg_config()).await.unwrap();
    let killed_conn = tokio::spawn(killed_conn);

    // A role and a lease per connection.
    let users = [
        session_user(&migrate).await,
        session_user(&closing).await,
        session_user(&killed).await,
    ];
    let mut distinct = users.to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{users:?}");
    assert_eq!(h.dynamic_roles().await, distinct);
    assert_eq!(h.openbao().bao.leases(MIGRATE_LEASES).await.len(), 1);
    assert_eq!(h.openbao().bao.leases(APP_LEASES).await.len(), 2);

    // Sessions act as the group roles; DDL belongs to keycloak_owner.
    assert_eq!(one_text(&migrate, "SELECT current_user::text").await, OWNER);
    assert_eq!(
        one_text(&closing, "SELECT current_user::text").await,
        APP_GROUP
    );
    migrate
        .batch_execute("CREATE TABLE realm (id bigserial PRIMARY KEY, name text NOT NULL)")
        .await
        .expect("DDL as the migration role");
    let owner: String = h
        .direct()
        .query_one(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE relname = 'realm'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, OWNER);
    // The steady role reads and writes, and may neither create nor truncate.
    closing
        .batch_execute(
            "INSERT INTO realm (name) VALUES ('master');
             UPDATE realm SET name = 'main';
             DELETE FROM realm WHERE name = 'none'",
        )
        .await
        .expect("DML as the steady role");
    assert_eq!(one_text(&closing, "SELECT name FROM realm").await, "main");
    assert_eq!(refused(&closing, "CREATE TABLE t (i int)").await, "42501");
    assert_eq!(refused(&closing, "TRUNCATE realm").await, "42501");

    // Disconnect: its lease and role go.
    drop(closing);
    wait_for_leases(&h, APP_LEASES, 1).await;
    assert!(!role_exists(&h, &users[1]).await);

    // Client killed mid-query.
    let sleeper = tokio::spawn(async move { killed.query("SELECT pg_sleep(60)", &[]).await });
    wait_until(GENEROUS, "the query runs", async || {
        h.direct()
            .query_opt(
                "SELECT 1 FROM pg_stat_activity WHERE usename = $1 AND query LIKE '%pg_sleep%'",
                &[&users[2]],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
    killed_conn.abort();
    sleeper.abort();
    wait_for_leases(&h, APP_LEASES, 0).await;
    assert!(!role_exists(&h, &users[2]).await);

    // Shutdown with the migration session still open.
    assert_eq!(h.shutdown().await, 0, "every lease revoked at shutdown");
    assert!(h.openbao().bao.leases(MIGRATE_LEASES).await.is_empty());
    assert!(h.dynamic_roles().await.is_empty());
    drop(migrate);
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_moves_valid_until_and_the_max_ttl_recycles_an_idle_session() {
    // Leases of 3 s, at most 8 s, set on both roles after setup.sh as an operator would
    // (renewed every 2 s: a second of slack on a loaded machine before OpenBao would
    // revoke the lease itself).
    let mut h = start(OpenBaoOptions {
        lease_ttl: Some((Duration::from_secs(3), Duration::from_secs(8))),
        ..OpenBaoOptions::default()
    })
    .await;
    let (c, conn) = h.connect_parts(&h.pg_config()).await.unwrap();
    let conn = tokio::spawn(conn);
    let role = session_user(&c).await;
    let first = h.valid_until(&role).await.expect("VALID UNTIL is set");
    // Each renewal runs renewal.sql: VALID UNTIL moves (seen twice before the max TTL).
    let mut seen = vec![first.clone()];
    wait_until(GENEROUS, "VALID UNTIL moved twice", async || {
        if let Some(now) = h.valid_until(&role).await
            && !seen.contains(&now)
        {
            seen.push(now);
        }
        seen.len() >= 3
    })
    .await;
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    // At the max TTL the idle session is recycled, with a FATAL the client can read.
    let (code, message) = crate::support::harness::ended_with(conn).await;
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("lease"), "{message}");
    let ends = h.logs.wait_for("lease_end", 1).await;
    assert_eq!(
        ends[0]["reason"], "lease reached its maximum TTL",
        "{ends:?}"
    );
    assert_eq!(ends[0]["action"], "stop_when_idle", "{ends:?}");
    wait_for_leases(&h, APP_LEASES, 0).await;
    assert!(!role_exists(&h, &role).await, "{role} is dropped");
    // The next connection gets a fresh lease.
    let again = h.connect().await;
    assert_ne!(session_user(&again).await, role);
    assert_eq!(h.openbao().bao.leases(APP_LEASES).await.len(), 1);
    drop((c, again));
    wait_for_leases(&h, APP_LEASES, 0).await;
    h.wait_for_no_dynamic_roles().await;
    assert_eq!(h.shutdown().await, 0);
}

/// pgwarden's own tokens: those OpenBao issued through the AppRole.
async fn pgwarden_tokens(h: &Harness) -> Vec<serde_json::Value> {
    let mut tokens = h.openbao().bao.tokens().await;
    tokens.retain(|t| t["path"] == "auth/approle/login");
    tokens
}

/// What pgwarden-policy.hcl grants, path by path, and paths it must not.
const GRANTED: [(&str, &str); 6] = [
    ("database/creds/keycloak", "read"),
    ("database/creds/keycloak-migrate", "read"),
    ("sys/leases/renew", "update"),
    ("sys/leases/revoke", "update"),
    ("auth/token/renew-self", "update"),
    ("auth/token/lookup-self", "read"),
];
const NOT_GRANTED: [&str; 12] = [
    "database/creds/another-role",
    "database/config/keycloak",
    "database/roles/keycloak",
    "database/rotate-root/keycloak",
    "sys/leases/lookup/database/creds/keycloak/",
    "sys/leases/revoke-prefix/database/creds/keycloak",
    "sys/policies/acl/pgwarden",
    "sys/mounts",
    "auth/approle/role/pgwarden/secret-id",
    "auth/token/create",
    "auth/token/revoke-self",
    "cubbyhole/anything",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgwarden_token_is_periodic_within_its_policy_and_obtained_again_when_revoked() {
    use reqwest::Method;
    let mut h = start(OpenBaoOptions::default()).await;
    let bao = &h.openbao().bao;
    let first = h.connect().await;
    let first_role = session_user(&first).await;

    // The token setup.sh's AppRole gives: periodic (1 h), no max TTL, pgwarden's policy only.
    let tokens = pgwarden_tokens(&h).await;
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let token = &tokens[0];
    assert_eq!(token["period"], 3600, "{token}");
    assert_eq!(token["explicit_max_ttl"], 0, "{token}");
    assert_eq!(
        token["policies"],
        serde_json::json!(["pgwarden"]),
        "{token}"
    );
    let accessor = token["accessor"].as_str().unwrap().to_owned();

    // Its policy grants exactly what pgwarden calls (it has just used creds), nothing else.
    let paths: Vec<&str> = GRANTED.iter().map(|(p, _)| *p).collect();
    for ((path, want), got) in GRANTED
        .iter()
        .zip(bao.capabilities(&accessor, &paths).await)
    {
        assert_eq!(got, [*want], "{path}");
    }
    for (path, got) in NOT_GRANTED
        .iter()
        .zip(bao.capabilities(&accessor, &NOT_GRANTED).await)
    {
        assert_eq!(got, ["deny"], "{path}");
    }
    // And the server enforces it: a token of the same AppRole gets 403 outside it.
    let (role_id, secret_id) = h.openbao().approle();
    let body = serde_json::json!({ "role_id": role_id, "secret_id": secret_id.expose_secret() });
    let (status, login) = bao
        .api(Method::POST, "auth/approle/login", None, Some(body))
        .await;
    assert_eq!(status, 200, "{login}");
    let ours =
        secrecy::SecretString::from(login["auth"]["client_token"].as_str().unwrap().to_owned());
    let list = Method::from_bytes(b"LIST").unwrap();
    for (method, path) in [
        (Method::GET, "database/creds/another-role"),
        (Method::GET, "database/config/keycloak"),
        (list, "sys/leases/lookup/database/creds/keycloak/"),
        (
            Method::PUT,
            "sys/leases/revoke-prefix/database/creds/keycloak",
        ),
        (Method::POST, "auth/token/create"),
        (Method::GET, "sys/mounts"),
    ] {
        let (status, answer) = bao.api(method, path, Some(&ours), None).await;
        assert_eq!(status, 403, "{path}: {answer}");
    }
    let (status, _) = bao
        .api(Method::GET, "auth/token/lookup-self", Some(&ours), None)
        .await;
    assert_eq!(status, 200, "inside the policy");
    let (status, answer) = bao
        .root_api(
            Method::POST,
            "auth/token/revoke",
            Some(serde_json::json!({ "token": ours.expose_secret() })),
        )
        .await;
    assert_eq!(status, 204, "{answer}");
    // A revoked token is refused like any unknown one.
    let (status, answer) = bao
        .api(Method::GET, "auth/token/lookup-self", Some(&ours), None)
        .await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("permission denied")),
        "{answer}"
    );

    // Revoked behind pgwarden's back: OpenBao revokes the leases it obtained, which ends
    // their sessions; pgwarden logs in again for the next connection.
    bao.cli(&["write", "auth/approle/role/pgwarden", "token_period=4s"])
        .await;
    bao.cli(&["token", "revoke", "-accessor", &accessor]).await;
    wait_until(
        GENEROUS,
        "the session of the revoked token is ended",
        async || first.is_closed() && !role_exists(&h, &first_role).await,
    )
    .await;
    let second = h.connect().await;
    let second_role = session_user(&second).await;
    assert_eq!(h.logs.events("vault_login").len(), 2, "logged in again");
    let tokens = pgwarden_tokens(&h).await;
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0]["period"], 4, "{:?}", tokens[0]);

    // A 4 s periodic token renewed twice: the session opened under it outlives a period.
    h.logs.wait_for("vault_token_renewed", 2).await;
    second
        .query_one("SELECT 1", &[])
        .await
        .expect("the session outlives its token's first period");
    assert!(role_exists(&h, &second_role).await);
    assert_eq!(bao.leases(APP_LEASES).await.len(), 1);
    assert_eq!(
        h.logs.events("vault_login").len(),
        2,
        "renewed, not replaced"
    );
    drop(second);
    wait_for_leases(&h, APP_LEASES, 0).await;
    h.wait_for_no_dynamic_roles().await;
    assert_eq!(h.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_fails_new_connections_fast_and_unseal_recovers_without_a_restart() {
    let mut h = start(OpenBaoOptions::default()).await;
    let bao = &h.openbao().bao;
    let live = h.connect().await;
    wait_until(GENEROUS, "/readyz is 200", async || {
        h.admin_get("/readyz").await.0 == 200
    })
    .await;

    bao.seal().await;
    assert_eq!(bao.health().await, 503);
    // A 30 s client deadline: pgwarden answers long before it.
    let mut config = h.pg_config();
    config.connect_timeout(Duration::from_secs(30));
    let err = h
        .try_connect(&config)
        .await
        .expect_err("no connection while OpenBao is sealed");
    let (code, message) = crate::support::harness::server_error(&err);
    assert_eq!(code, "08006");
    assert_eq!(message, "could not obtain database credentials");
    wait_until(GENEROUS, "/readyz is 503, saying sealed", async || {
        let (status, body) = h.admin_get("/readyz").await;
        status == 503 && body.contains("sealed")
    })
    .await;
    // The live session goes on: its lease has most of an hour left.
    let n: i32 = live.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);

    bao.unseal().await;
    wait_until(GENEROUS, "/readyz is 200 again", async || {
        h.admin_get("/readyz").await.0 == 200
    })
    .await;
    let again = h.connect().await;
    assert!(
        session_user(&again)
            .await
            .starts_with("v-approle-keycloak-")
    );
    live.query_one("SELECT 1", &[])
        .await
        .expect("the live session is still there");
    assert_eq!(bao.leases(APP_LEASES).await.len(), 2);
    drop((live, again));
    wait_for_leases(&h, APP_LEASES, 0).await;
    h.wait_for_no_dynamic_roles().await;
    assert_eq!(h.shutdown().await, 0);
}

/// `setup.sh` with `PGWARDEN_K8S_SERVICE_ACCOUNT`: a real server takes the Kubernetes auth
/// method, its configuration and both roles as written — each bound to one account in one
/// namespace, for the projected token's audience, with the proxy's periodic token and
/// policy (no Kubernetes API runs here, so no login is tried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_configures_kubernetes_auth_roles_a_real_server_accepts() {
    let h = start(OpenBaoOptions {
        kubernetes_account: Some("keycloak/keycloak".into()),
        ..OpenBaoOptions::default()
    })
    .await;
    let bao = &h.openbao().bao;
    let read = async |path: &str| -> serde_json::Value {
        let out = bao.cli(&["read", "-format=json", path]).await;
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["data"].clone()
    };
    let config = read("auth/kubernetes/config").await;
    assert_eq!(config["kubernetes_host"], "https://kubernetes.default.svc");
    assert_eq!(
        config["kubernetes_ca_cert"].as_str().map(str::trim),
        Some(std::fs::read_to_string(bao.ca_path()).unwrap().trim())
    );
    for (role, account, policy, period) in [
        ("pgwarden", "keycloak", "pgwarden", 3600),
        ("pgwarden-backup", "pgwarden-backup", "pgwarden-backup", 0),
    ] {
        let r = read(&format!("auth/kubernetes/role/{role}")).await;
        assert_eq!(
            r["bound_service_account_names"],
            serde_json::json!([account]),
            "{role}: {r}"
        );
        assert_eq!(
            r["bound_service_account_namespaces"],
            serde_json::json!(["keycloak"])
        );
        assert_eq!(r["audience"], "vault", "{role}: {r}");
        assert_eq!(r["token_policies"], serde_json::json!([policy]));
        assert_eq!(r["token_no_default_policy"], true);
        assert_eq!(r["token_period"], period, "{role}: {r}");
        assert_eq!(r["token_explicit_max_ttl"], 0);
    }
    assert!(
        !h.openbao()
            .setup_output
            .contains(bao.root_token().expose_secret())
    );
    // pgwarden itself still runs on the AppRole setup.sh also wrote.
    h.connect().await.simple_query("SELECT 1").await.unwrap();
}
