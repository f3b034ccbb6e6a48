//! Tests of the Vault double itself: vaultrs must parse what it serves (vaultrs is strict about
//! Vault's envelopes), and the lease, token and fault behaviour must be Vault's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::vault_double::*;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

const ROLE_ID: &str = "8f1d6a52-role-id";
const SECRET_ID: &str = "3c9e1b07-secret-id";
const K8S_ROLE: &str = "pgwarden";
const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwZ3dhcmRlbiJ9.c2ln";
const ROOT: &str = "hvs.root-token-for-tests";
/// Deadlines are generous: these tests run in parallel on a loaded two-core machine.
const GENEROUS: Duration = Duration::from_secs(20);

const CREATE: &str = "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' \
                      VALID UNTIL '{{expiration}}' IN ROLE keycloak_owner; \
                      ALTER ROLE \"{{username}}\" SET role = 'keycloak_owner';";
const RENEW: &str = "ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}';";
const REVOKE: &str = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                      WHERE usename = '{{name}}'; DROP ROLE IF EXISTS \"{{name}}\";";

fn role(default_ttl: u64, max_ttl: u64) -> RoleDef {
    RoleDef {
        creation_statements: CREATE.to_owned(),
        renew_statements: RENEW.to_owned(),
        revocation_statements: REVOKE.to_owned(),
        default_ttl: Duration::from_secs(default_ttl),
        max_ttl: Duration::from_secs(max_ttl),
    }
}

struct Fixture {
    vault: VaultDouble,
    sql: SqlLog,
}

/// A double with role `keycloak` (60 s, max 120 s), AppRole, Kubernetes and a root token.
async fn start_with(edit: impl FnOnce(&mut DoubleConfig)) -> Fixture {
    let (runner, sql) = recording_runner();
    let mut cfg = DoubleConfig::new(runner);
    cfg.roles.insert("keycloak".to_owned(), role(60, 120));
    cfg.approle = Some((ROLE_ID.to_owned(), SECRET_ID.to_owned()));
    cfg.kubernetes = Some((K8S_ROLE.to_owned(), JWT.to_owned()));
    cfg.root_token = Some(ROOT.to_owned());
    edit(&mut cfg);
    Fixture {
        vault: VaultDouble::start(cfg).await,
        sql,
    }
}

async fn start() -> Fixture {
    start_with(|_| {}).await
}

fn vaultrs_client(url: &str, token: &str, namespace: Option<&str>) -> VaultClient {
    let settings = VaultClientSettingsBuilder::default()
        .address(url)
        .token(token)
        .ca_certs(Vec::new())
        .verify(true)
        .namespace(namespace.map(str::to_owned))
        .timeout(Some(GENEROUS))
        .build()
        .expect("vaultrs settings");
    VaultClient::new(settings).expect("vaultrs client")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(GENEROUS)
        .build()
        .expect("HTTP client")
}

struct Answer {
    status: u16,
    /// `Value::Null` for an empty body.
    body: Value,
    raw: String,
}

async fn call(
    vault: &VaultDouble,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut req = http().request(method, format!("{}{path}", vault.url()));
    if let Some(token) = token {
        req = req.header("X-Vault-Token", token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("the double answers");
    let status = resp.status().as_u16();
    let raw = resp.text().await.expect("body");
    let body = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&raw).expect("JSON body")
    };
    Answer { status, body, raw }
}

async fn creds(vault: &VaultDouble, token: &str, role: &str) -> Answer {
    let path = format!("/v1/database/creds/{role}");
    call(vault, Method::GET, &path, Some(token), None).await
}

async fn renew(vault: &VaultDouble, token: &str, body: Value) -> Answer {
    call(
        vault,
        Method::PUT,
        "/v1/sys/leases/renew",
        Some(token),
        Some(body),
    )
    .await
}

async fn revoke(vault: &VaultDouble, token: &str, lease_id: &str) -> Answer {
    let body = json!({ "lease_id": lease_id });
    call(
        vault,
        Method::PUT,
        "/v1/sys/leases/revoke",
        Some(token),
        Some(body),
    )
    .await
}

async fn approle_token(vault: &VaultDouble) -> String {
    let client = vaultrs_client(&vault.url(), "", None);
    vaultrs::auth::approle::login(&client, "approle", ROLE_ID, SECRET_ID)
        .await
        .expect("AppRole login")
        .client_token
}

fn errors_of(answer: &Answer) -> Vec<String> {
    serde_json::from_value(answer.body["errors"].clone()).expect("an errors body")
}

fn api_error(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, Vec<String>) {
    match result {
        Err(ClientError::APIError { code, errors }) => (code, errors),
        other => panic!("expected a Vault API error, got {other:?}"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

// ----- logins, tokens and health through vaultrs ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_login_parses_in_vaultrs_and_wrong_credentials_get_vaults_error() {
    let f = start_with(|cfg| cfg.token_ttl = Duration::from_secs(90)).await;
    let client = vaultrs_client(&f.vault.url(), "", None);

    let auth = vaultrs::auth::approle::login(&client, "approle", ROLE_ID, SECRET_ID)
        .await
        .expect("login");
    assert!(auth.client_token.starts_with("hvs."));
    assert_eq!(auth.lease_duration, 90);
    assert!(auth.renewable);
    assert_eq!(auth.token_type, "service");
    assert!(auth.orphan);
    assert_eq!(auth.policies, ["default", "pgwarden"]);
    let metadata = auth.metadata.expect("metadata");
    assert_eq!(metadata["role_name"], "pgwarden");

    let wrong = vaultrs::auth::approle::login(&client, "approle", ROLE_ID, "nope").await;
    assert_eq!(
        api_error(wrong),
        (400, vec![INVALID_ROLE_OR_SECRET_ID.to_owned()])
    );
    let wrong = vaultrs::auth::approle::login(&client, "approle", "nope", SECRET_ID).await;
    assert_eq!(
        api_error(wrong),
        (400, vec![INVALID_ROLE_OR_SECRET_ID.to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_login_parses_in_vaultrs_and_names_credentials_after_the_mount() {
    let f = start().await;
    let client = vaultrs_client(&f.vault.url(), "", None);

    let auth = vaultrs::auth::kubernetes::login(&client, "kubernetes", K8S_ROLE, JWT)
        .await
        .expect("login");
    assert!(auth.renewable);
    assert_eq!(auth.metadata.expect("metadata")["role"], K8S_ROLE);
    let answer = creds(&f.vault, &auth.client_token, "keycloak").await;
    let username = answer.body["data"]["username"].as_str().expect("username");
    assert!(username.starts_with("v-kubernet-keycloak-"), "{username}");

    let wrong = vaultrs::auth::kubernetes::login(&client, "kubernetes", K8S_ROLE, "x.y.z").await;
    assert_eq!(
        api_error(wrong),
        (403, vec!["permission denied".to_owned()])
    );
    let wrong = vaultrs::auth::kubernetes::login(&client, "kubernetes", "other", JWT).await;
    assert_eq!(
        api_error(wrong),
        (400, vec!["invalid role name \"other\"".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_lookup_and_renew_self_parse_in_vaultrs_and_renewal_is_capped_with_a_warning() {
    let f = start_with(|cfg| {
        cfg.token_ttl = Duration::from_secs(60);
        cfg.token_max_ttl = Duration::from_secs(120);
    })
    .await;
    let token = approle_token(&f.vault).await;
    let client = vaultrs_client(&f.vault.url(), &token, None);

    let me = client.lookup().await.expect("lookup-self");
    assert_eq!(me.id, token);
    assert_eq!(me.display_name, "approle");
    assert_eq!(me.path, "auth/approle/login");
    assert_eq!(me.policies, ["default", "pgwarden"]);
    assert_eq!(me.renewable, Some(true));
    assert!((55..=60).contains(&me.ttl), "ttl {}", me.ttl);
    assert!(me.expire_time.is_some());

    let renewed = client.renew(Some("30s")).await.expect("renew-self");
    assert_eq!(renewed.lease_duration, 30);
    assert_eq!(renewed.client_token, token);
    assert_eq!(f.vault.count("/v1/auth/token/renew-self"), 1);

    // Past the token's max TTL: capped, with Vault's warning.
    let answer = call(
        &f.vault,
        Method::PUT,
        "/v1/auth/token/renew-self",
        Some(&token),
        Some(json!({ "increment": "1h" })),
    )
    .await;
    assert_eq!(answer.status, 200);
    let granted = answer.body["auth"]["lease_duration"]
        .as_u64()
        .expect("lease");
    assert!((115..=120).contains(&granted), "granted {granted}");
    assert_eq!(
        answer.body["warnings"],
        json!([capped_warning(3600, granted)])
    );
    assert_eq!(answer.body["mount_type"], "token");

    // The root token never expires and cannot be renewed.
    let root = vaultrs_client(&f.vault.url(), ROOT, None);
    let me = root.lookup().await.expect("root lookup-self");
    assert_eq!(
        (me.ttl, me.policies, me.renewable),
        (0, vec!["root".to_owned()], Some(false))
    );
    assert!(me.expire_time.is_none());
    let answer = call(
        &f.vault,
        Method::PUT,
        "/v1/auth/token/renew-self",
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!(
        (answer.status, errors_of(&answer)),
        (400, vec![LEASE_NOT_RENEWABLE.to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_parses_in_vaultrs_and_reports_sealed_as_vault_does() {
    let f = start().await;
    let client = vaultrs_client(&f.vault.url(), "", None);

    let health = vaultrs::sys::health(&client).await.expect("health");
    assert!(health.initialized && !health.sealed && !health.standby);
    assert!(health.cluster_name.is_some());
    assert!(matches!(
        client.status().await,
        Ok(vaultrs::sys::ServerStatus::OK)
    ));

    f.vault.set_mode(Mode::Sealed);
    assert!(matches!(
        client.status().await,
        Ok(vaultrs::sys::ServerStatus::SEALED)
    ));
    let answer = call(&f.vault, Method::GET, "/v1/sys/health", None, None).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.body["sealed"], true);
    let answer = call(
        &f.vault,
        Method::GET,
        "/v1/sys/health?sealedcode=200",
        None,
        None,
    )
    .await;
    assert_eq!(answer.status, 200);
}

// ----- credentials ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_follow_vaults_envelope_username_template_and_run_statements_in_order() {
    let f = start().await;
    let token = approle_token(&f.vault).await;
    let before = unix_now();
    let earliest = go_expiration(SystemTime::now() + Duration::from_secs(64));

    let answer = creds(&f.vault, &token, "keycloak").await;
    let latest = go_expiration(SystemTime::now() + Duration::from_secs(66));
    assert_eq!(answer.status, 200);
    let b = &answer.body;
    for key in [
        "request_id",
        "lease_id",
        "renewable",
        "lease_duration",
        "data",
    ] {
        assert!(!b[key].is_null(), "{key} missing in {}", answer.raw);
    }
    for key in ["wrap_info", "warnings", "auth"] {
        assert!(b.get(key).is_some_and(Value::is_null), "{key} not null");
    }
    assert_eq!(b["mount_type"], "database");
    assert_eq!(b["renewable"], true);
    assert_eq!(b["lease_duration"], 60);
    assert!(
        answer.raw.ends_with('\n'),
        "Vault ends bodies with a newline"
    );

    let lease_id = b["lease_id"].as_str().expect("lease id");
    let suffix = lease_id
        .strip_prefix("database/creds/keycloak/")
        .expect(lease_id);
    assert_eq!(suffix.len(), 24);
    assert!(suffix.chars().all(|c| c.is_ascii_alphanumeric()));

    let username = b["data"]["username"].as_str().expect("username");
    let password = b["data"]["password"].as_str().expect("password");
    let parts: Vec<&str> = username.split('-').collect();
    assert_eq!(parts[..3], ["v", "approle", "keycloak"], "{username}");
    assert_eq!(parts[3].len(), 20);
    assert!(parts[3].chars().all(|c| c.is_ascii_alphanumeric()));
    let issued: u64 = parts[4].parse().expect("unix time");
    assert!((before..=unix_now()).contains(&issued));
    assert!(username.len() <= 63);
    assert!(password.len() >= 32);

    let sql = f.sql.statements();
    assert_eq!(sql.len(), 2, "{sql:?}");
    assert!(sql[0].starts_with(&format!(
        "CREATE ROLE \"{username}\" WITH LOGIN PASSWORD '{password}' VALID UNTIL '"
    )));
    let expiration = sql[0].split('\'').nth(3).expect("expiration literal");
    assert!(
        expiration.ends_with("+0000") && expiration.len() == 24,
        "{expiration}"
    );
    assert!(
        earliest.as_str() <= expiration && expiration <= latest.as_str(),
        "{expiration}"
    );
    assert_eq!(
        sql[1],
        format!("ALTER ROLE \"{username}\" SET role = 'keycloak_owner'")
    );

    let leases = f.vault.leases();
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (leases[0].lease_id.as_str(), leases[0].username.as_str()),
        (lease_id, username)
    );

    // Long role names are cut to eight characters; the root token's display name is `root`.
    let answer = creds(&f.vault, ROOT, "keycloak").await;
    let username = answer.body["data"]["username"].as_str().expect("username");
    assert!(username.starts_with("v-root-keycloak-"), "{username}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_statement_runs_whole_and_long_names_are_truncated() {
    let block = "DO $$ BEGIN CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}'; END $$;";
    let f = start_with(|cfg| {
        let mut def = role(60, 120);
        def.creation_statements = block.to_owned();
        cfg.roles.insert("a_very_long_role_name".to_owned(), def);
    })
    .await;
    let answer = creds(&f.vault, ROOT, "a_very_long_role_name").await;
    assert_eq!(answer.status, 200);
    let username = answer.body["data"]["username"].as_str().expect("username");
    assert!(username.starts_with("v-root-a_very_l-"), "{username}");
    let sql = f.sql.statements();
    assert_eq!(sql.len(), 1, "{sql:?}");
    assert!(sql[0].starts_with("DO $$ BEGIN CREATE ROLE \"v-root-") && sql[0].ends_with("END $$;"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_role_and_bad_tokens_get_vaults_errors() {
    let f = start().await;
    let answer = creds(&f.vault, ROOT, "nope").await;
    assert_eq!(
        (answer.status, errors_of(&answer)),
        (400, vec![unknown_role_text("nope")])
    );

    let answer = call(
        &f.vault,
        Method::GET,
        "/v1/database/creds/keycloak",
        None,
        None,
    )
    .await;
    assert_eq!(
        (answer.status, errors_of(&answer)),
        (403, vec![PERMISSION_DENIED.to_owned()])
    );
    let answer = creds(&f.vault, "hvs.made-up", "keycloak").await;
    assert_eq!(
        (answer.status, errors_of(&answer)),
        (403, vec![INVALID_TOKEN.to_owned()])
    );
    assert!(f.sql.statements().is_empty());
}

// ----- renewal --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_runs_renew_statements_and_caps_at_max_ttl_with_vaults_warning() {
    let f = start().await;
    let token = approle_token(&f.vault).await;
    let issued = creds(&f.vault, &token, "keycloak").await.body;
    let lease_id = issued["lease_id"].as_str().expect("lease id");
    let username = issued["data"]["username"].as_str().expect("username");
    f.sql.clear();

    let answer = renew(
        &f.vault,
        &token,
        json!({ "lease_id": lease_id, "increment": 30 }),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.raw);
    assert_eq!(answer.body["lease_id"], lease_id);
    assert_eq!(answer.body["lease_duration"], 30);
    assert_eq!(answer.body["renewable"], true);
    assert!(answer.body["warnings"].is_null());
    assert!(answer.body["data"].is_null());
    let sql = f.sql.statements();
    assert_eq!(sql.len(), 1);
    assert!(sql[0].starts_with(&format!("ALTER ROLE \"{username}\" VALID UNTIL '")));
    assert!(sql[0].ends_with("+0000'"), "{}", sql[0]);
    assert_eq!(f.vault.leases()[0].renew_count, 1);

    // No increment: the role's default TTL.
    let answer = renew(&f.vault, &token, json!({ "lease_id": lease_id })).await;
    assert_eq!(answer.body["lease_duration"], 60);

    // Beyond the max TTL (120 s from issue): capped, with the warning.
    let answer = renew(
        &f.vault,
        &token,
        json!({ "lease_id": lease_id, "increment": "1h" }),
    )
    .await;
    assert_eq!(answer.status, 200);
    let granted = answer.body["lease_duration"]
        .as_u64()
        .expect("lease duration");
    assert!((110..=120).contains(&granted), "granted {granted}");
    assert_eq!(
        answer.body["warnings"],
        json!([capped_warning(3600, granted)])
    );
    assert_eq!(f.vault.leases()[0].renew_count, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_past_the_max_ttl_or_an_unknown_lease_fails_as_in_vault() {
    let f = start_with(|cfg| {
        cfg.roles.insert("short".to_owned(), role(5, 5));
    })
    .await;
    let issued = creds(&f.vault, ROOT, "short").await.body;
    let lease_id = issued["lease_id"].as_str().expect("lease id").to_owned();
    let username = issued["data"]["username"].as_str().expect("username");
    let issued_at: u64 = username
        .rsplit('-')
        .next()
        .expect("time")
        .parse()
        .expect("time");

    // Shrink the role's max TTL to one second, then renew once that second is over.
    f.vault
        .set_role_ttls("short", Duration::from_secs(10), Duration::from_secs(1));
    assert!(wait_until(GENEROUS, || unix_now() >= issued_at + 2).await);
    let answer = renew(&f.vault, ROOT, json!({ "lease_id": lease_id })).await;
    assert_eq!(
        (answer.status, errors_of(&answer)),
        (400, vec![format!("{RENEW_FAILED_PREFIX}{PAST_MAX_TTL}")])
    );

    let answer = renew(
        &f.vault,
        ROOT,
        json!({ "lease_id": "database/creds/short/x" }),
    )
    .await;
    assert_eq!(
        (answer.status, errors_of(&answer)),
        (400, vec![LEASE_NOT_FOUND.to_owned()])
    );
    let answer = renew(&f.vault, ROOT, json!({})).await;
    assert_eq!(
        (answer.status, errors_of(&answer)),
        (400, vec![LEASE_ID_REQUIRED.to_owned()])
    );
}

// ----- revocation and expiry ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_runs_revocation_statements_once_and_answers_204_even_for_unknown_leases() {
    let f = start().await;
    let issued = creds(&f.vault, ROOT, "keycloak").await.body;
    let lease_id = issued["lease_id"].as_str().expect("lease id");
    let username = issued["data"]["username"].as_str().expect("username");
    f.sql.clear();

    let answer = revoke(&f.vault, ROOT, lease_id).await;
    assert_eq!((answer.status, answer.raw.as_str()), (204, ""));
    assert_eq!(
        f.sql.statements(),
        [
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE usename = '{username}'"
            ),
            format!("DROP ROLE IF EXISTS \"{username}\""),
        ]
    );
    assert_eq!(f.vault.revoked(), [username]);
    assert!(f.vault.leases().is_empty());

    let answer = revoke(&f.vault, ROOT, lease_id).await;
    assert_eq!(answer.status, 204);
    let answer = revoke(&f.vault, ROOT, "database/creds/keycloak/neverissued").await;
    assert_eq!(answer.status, 204);
    assert_eq!(f.sql.statements().len(), 2, "nothing ran again");
    let answer = call(
        &f.vault,
        Method::PUT,
        "/v1/sys/leases/revoke",
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!(
        (answer.status, errors_of(&answer)),
        (400, vec![LEASE_ID_REQUIRED.to_owned()])
    );

    // `sync=false` queues the revocation: 202 now, revoked shortly after.
    let issued = creds(&f.vault, ROOT, "keycloak").await.body;
    let lease_id = issued["lease_id"].as_str().expect("lease id");
    let username = issued["data"]["username"]
        .as_str()
        .expect("username")
        .to_owned();
    let body = json!({ "lease_id": lease_id, "sync": false });
    let answer = call(
        &f.vault,
        Method::PUT,
        "/v1/sys/leases/revoke",
        Some(ROOT),
        Some(body),
    );
    assert_eq!(answer.await.status, 202);
    assert!(wait_until(GENEROUS, || f.vault.revoked().contains(&username)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_revocation_keeps_the_lease_so_the_caller_can_retry() {
    let f = start().await;
    let issued = creds(&f.vault, ROOT, "keycloak").await.body;
    let lease_id = issued["lease_id"].as_str().expect("lease id");
    let username = issued["data"]["username"].as_str().expect("username");

    f.vault.set_revocation_failure(true);
    let answer = revoke(&f.vault, ROOT, lease_id).await;
    assert_eq!(
        (answer.status, errors_of(&answer)),
        (
            400,
            vec![format!(
                "{REVOKE_FAILED_PREFIX}{SIMULATED_REVOCATION_FAILURE}"
            )]
        )
    );
    assert_eq!(f.vault.leases().len(), 1);
    assert!(f.vault.revoked().is_empty());

    f.vault.set_revocation_failure(false);
    assert_eq!(revoke(&f.vault, ROOT, lease_id).await.status, 204);
    assert_eq!(f.vault.revoked(), [username]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_the_database_rejects_fails_revocation_with_the_database_error() {
    let refuse = Arc::new(AtomicBool::new(true));
    let refuse_in_runner = refuse.clone();
    let runner: SqlRunner = Arc::new(move |sql: String| {
        let refuse = refuse_in_runner.load(Ordering::SeqCst) && sql.starts_with("DROP ROLE");
        Box::pin(async move {
            if refuse {
                Err("ERROR: role \"x\" cannot be dropped (SQLSTATE 2BP01)".to_owned())
            } else {
                Ok(())
            }
        })
    });
    let mut cfg = DoubleConfig::new(runner);
    cfg.roles.insert("keycloak".to_owned(), role(60, 120));
    cfg.root_token = Some(ROOT.to_owned());
    let vault = VaultDouble::start(cfg).await;

    let issued = creds(&vault, ROOT, "keycloak").await.body;
    let lease_id = issued["lease_id"].as_str().expect("lease id");
    let answer = revoke(&vault, ROOT, lease_id).await;
    assert_eq!(
        (answer.status, errors_of(&answer)),
        (
            400,
            vec![format!(
                "{REVOKE_FAILED_PREFIX}ERROR: role \"x\" cannot be dropped (SQLSTATE 2BP01)"
            )]
        )
    );
    assert_eq!(vault.leases().len(), 1);
    refuse.store(false, Ordering::SeqCst);
    assert_eq!(revoke(&vault, ROOT, lease_id).await.status, 204);
    assert!(vault.leases().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_revoked_by_the_double_itself() {
    let f = start_with(|cfg| {
        cfg.roles.insert("short".to_owned(), role(1, 2));
    })
    .await;
    let issued = creds(&f.vault, ROOT, "short").await.body;
    let lease_id = issued["lease_id"].as_str().expect("lease id");
    let username = issued["data"]["username"]
        .as_str()
        .expect("username")
        .to_owned();

    assert!(wait_until(GENEROUS, || f.vault.revoked().contains(&username)).await);
    assert!(f.vault.leases().is_empty());
    let drop_role = format!("DROP ROLE IF EXISTS \"{username}\"");
    assert!(f.sql.statements().contains(&drop_role));
    let answer = renew(&f.vault, ROOT, json!({ "lease_id": lease_id })).await;
    assert_eq!(
        (answer.status, errors_of(&answer)),
        (400, vec![LEASE_NOT_FOUND.to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_whose_revocation_fails_is_expired_until_a_retry_succeeds() {
    let f = start_with(|cfg| {
        cfg.roles.insert("short".to_owned(), role(1, 2));
    })
    .await;
    f.vault.set_revocation_failure(true);
    let issued = creds(&f.vault, ROOT, "short").await.body;
    let lease_id = issued["lease_id"].as_str().expect("lease id");
    let username = issued["data"]["username"]
        .as_str()
        .expect("username")
        .to_owned();

    let expired_at = f.vault.leases()[0].expires_at;
    assert!(wait_until(GENEROUS, || std::time::Instant::now() > expired_at).await);
    let answer = renew(&f.vault, ROOT, json!({ "lease_id": lease_id })).await;
    assert_eq!(
        (answer.status, errors_of(&answer)),
        (400, vec![LEASE_EXPIRED.to_owned()])
    );
    assert_eq!(f.vault.leases().len(), 1, "kept while revocation fails");

    f.vault.set_revocation_failure(false);
    assert!(wait_until(GENEROUS, || f.vault.revoked().contains(&username)).await);
}

// ----- tokens ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_revoked_tokens_get_403_and_take_their_leases_with_them() {
    let f = start_with(|cfg| {
        cfg.token_ttl = Duration::from_secs(1);
        cfg.token_max_ttl = Duration::from_secs(2);
    })
    .await;
    let token = approle_token(&f.vault).await;
    let issued = creds(&f.vault, &token, "keycloak").await.body;
    let username = issued["data"]["username"]
        .as_str()
        .expect("username")
        .to_owned();

    let lookup = || {
        call(
            &f.vault,
            Method::GET,
            "/v1/auth/token/lookup-self",
            Some(&token),
            None,
        )
    };
    assert_eq!(lookup().await.status, 200);
    let deadline = std::time::Instant::now() + GENEROUS;
    let expired = loop {
        let answer = lookup().await;
        if answer.status != 200 || std::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (expired.status, errors_of(&expired)),
        (403, vec![INVALID_TOKEN.to_owned()])
    );
    // Vault revokes what an expired token created, whatever the leases' own TTLs.
    assert!(wait_until(GENEROUS, || f.vault.revoked().contains(&username)).await);

    f.vault
        .set_token_ttls(Duration::from_secs(600), Duration::from_secs(600));
    let token = approle_token(&f.vault).await;
    assert!(f.vault.revoke_token(&token));
    let answer = creds(&f.vault, &token, "keycloak").await;
    assert_eq!(
        (answer.status, errors_of(&answer)),
        (403, vec![INVALID_TOKEN.to_owned()])
    );

    let created = f.vault.create_token();
    let answer = call(
        &f.vault,
        Method::GET,
        "/v1/auth/token/lookup-self",
        Some(&created),
        None,
    );
    assert_eq!(answer.await.body["data"]["display_name"], "token");
    f.vault.revoke_all_tokens();
    assert_eq!(creds(&f.vault, ROOT, "keycloak").await.status, 403);
}

// ----- faults ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_mode_answers_with_vaults_status_and_body() {
    let f = start().await;
    let token = approle_token(&f.vault).await;

    f.vault.set_mode(Mode::Sealed);
    let answer = creds(&f.vault, &token, "keycloak").await;
    assert_eq!(
        (answer.status, errors_of(&answer)),
        (503, vec![SEALED.to_owned()])
    );
    let login = json!({ "role_id": ROLE_ID, "secret_id": SECRET_ID });
    let answer = call(
        &f.vault,
        Method::POST,
        "/v1/auth/approle/login",
        None,
        Some(login),
    )
    .await;
    assert_eq!(answer.status, 503);

    f.vault.set_mode(Mode::Forbidden);
    let answer = creds(&f.vault, &token, "keycloak").await;
    assert_eq!(
        (answer.status, errors_of(&answer)),
        (403, vec![PERMISSION_DENIED.to_owned()])
    );
    let answer = call(
        &f.vault,
        Method::GET,
        "/v1/auth/token/lookup-self",
        Some(&token),
        None,
    );
    assert_eq!(
        answer.await.status,
        200,
        "the default policy grants lookup-self"
    );
    assert_eq!(
        call(&f.vault, Method::GET, "/v1/sys/health", None, None)
            .await
            .status,
        200
    );

    f.vault.set_mode(Mode::RateLimited);
    let answer = creds(&f.vault, &token, "keycloak").await;
    assert_eq!(
        (answer.status, errors_of(&answer)),
        (429, vec![rate_limited_text("database/creds/keycloak")])
    );
    assert_eq!(
        errors_of(&answer),
        ["request path \"database/creds/keycloak\": rate limit quota exceeded"]
    );
    assert_eq!(
        call(&f.vault, Method::GET, "/v1/sys/health", None, None)
            .await
            .status,
        200
    );

    f.vault.set_mode(Mode::Slow(Duration::from_millis(400)));
    let started = std::time::Instant::now();
    assert_eq!(creds(&f.vault, &token, "keycloak").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(400));

    f.vault.set_mode(Mode::Up);
    assert_eq!(creds(&f.vault, &token, "keycloak").await.status, 200);
    assert_eq!(f.vault.mode(), Mode::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_refuses_connections_and_cuts_open_ones_then_up_serves_on_the_same_port() {
    let f = start().await;
    let addr = f.vault.addr();
    let url = f.vault.url();
    let mut open = tokio::net::TcpStream::connect(addr).await.expect("connect");
    assert_eq!(
        call(&f.vault, Method::GET, "/v1/sys/health", None, None)
            .await
            .status,
        200
    );

    f.vault.set_mode(Mode::Down);
    let refused = tokio::net::TcpStream::connect(addr)
        .await
        .expect_err("refused");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let mut byte = [0u8; 1];
    let cut = tokio::time::timeout(GENEROUS, open.read(&mut byte)).await;
    assert!(
        matches!(cut, Ok(Ok(0) | Err(_))),
        "open connection not cut: {cut:?}"
    );
    let err = http()
        .get(format!("{url}/v1/sys/health"))
        .send()
        .await
        .expect_err("down");
    assert!(err.is_connect(), "{err:?}");

    f.vault.set_mode(Mode::Up);
    assert_eq!(f.vault.url(), url);
    let client = vaultrs_client(&url, "", None);
    assert!(
        !vaultrs::sys::health(&client)
            .await
            .expect("up again")
            .sealed
    );
    assert_eq!(creds(&f.vault, ROOT, "keycloak").await.status, 200);
}

// ----- call log and TLS -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_log_records_requests_without_secrets() {
    let f = start().await;
    let client = vaultrs_client(&f.vault.url(), "", Some("team-a"));
    let token = vaultrs::auth::approle::login(&client, "approle", ROLE_ID, SECRET_ID)
        .await
        .expect("login")
        .client_token;
    let issued = creds(&f.vault, &token, "keycloak").await.body;
    let lease_id = issued["lease_id"].as_str().expect("lease id");
    let password = issued["data"]["password"].as_str().expect("password");
    renew(&f.vault, &token, json!({ "lease_id": lease_id })).await;
    revoke(&f.vault, &token, lease_id).await;
    creds(&f.vault, "hvs.bad", "keycloak").await;

    let calls = f.vault.calls();
    let seen: Vec<(&str, &str, u16, Option<&str>)> = calls
        .iter()
        .map(|c| {
            (
                c.method.as_str(),
                c.path.as_str(),
                c.status,
                c.namespace.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("POST", "/v1/auth/approle/login", 200, Some("team-a")),
            ("GET", "/v1/database/creds/keycloak", 200, None),
            ("PUT", "/v1/sys/leases/renew", 200, None),
            ("PUT", "/v1/sys/leases/revoke", 204, None),
            ("GET", "/v1/database/creds/keycloak", 403, None),
        ]
    );
    assert!(calls.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(f.vault.count("/v1/sys/leases/"), 2);
    assert_eq!(f.vault.count("/v1/database/creds/"), 2);
    let logged = format!("{calls:?}");
    for secret in [SECRET_ID, ROLE_ID, token.as_str(), password, lease_id] {
        assert!(!logged.contains(secret), "call log leaks a secret");
    }
    f.vault.clear_calls();
    assert!(f.vault.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_served_when_configured() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("certificate");
    let cert_pem = certified.cert.pem();
    let key_pem = certified.signing_key.serialize_pem();
    let f = start_with(|cfg| cfg.tls = Some((cert_pem.clone(), key_pem))).await;
    assert!(f.vault.url().starts_with("https://127.0.0.1:"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(GENEROUS)
        .build()
        .expect("TLS client");
    let resp = client
        .get(format!("{}/v1/sys/health", f.vault.url()))
        .send()
        .await
        .expect("HTTPS");
    assert_eq!(resp.status().as_u16(), 200);

    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert_pem).expect("write CA");
    let settings = VaultClientSettingsBuilder::default()
        .address(f.vault.url())
        .token(ROOT)
        .ca_certs(vec![ca.to_string_lossy().into_owned()])
        .verify(true)
        .timeout(Some(GENEROUS))
        .build()
        .expect("settings");
    let vaultrs = VaultClient::new(settings).expect("vaultrs over TLS");
    assert_eq!(
        vaultrs
            .lookup()
            .await
            .expect("lookup over TLS")
            .display_name,
        "root"
    );
}
