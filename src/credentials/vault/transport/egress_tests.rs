//! Where pgwarden's Vault requests may go: to `[vault] address` and nowhere
//! else. A redirect is not followed (its target never sees the token or the
//! body), and proxy variables in the environment are ignored — for vaultrs'
//! requests (login, token lookup) and the raw ones (leases) alike.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{VaultAuthConfig, VaultConfig};
use crate::credentials::ErrorKind;
use crate::credentials::vault::Vault;

const TOKEN: &str = "hvs.egress-test-token-0123456789";
const SECRET_ID: &str = "egress-test-secret-id-0123456789";
const LEASE: &str = "database/creds/keycloak/egress-test-lease-0123456789";

/// Every byte a server received, over all its connections.
type Received = Arc<Mutex<Vec<u8>>>;

/// An HTTP/1.1 server on 127.0.0.1 that reads each request (head and
/// `content-length` body), records it, answers `answer(path)` and closes.
async fn server(answer: impl Fn(&str) -> String + Send + Sync + 'static) -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let (answer, seen) = (Arc::new(answer), received.clone());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (answer, seen) = (answer.clone(), seen.clone());
            tokio::spawn(async move {
                let request = read_request(&mut tcp).await;
                seen.lock().unwrap().extend_from_slice(&request);
                let text = String::from_utf8_lossy(&request);
                let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
                let _ = tcp.write_all(answer(&path).as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    (addr, received)
}

async fn read_request(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = head_end {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return buf;
            }
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn response(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// `auth/token/lookup-self` for a root-like token that never expires.
fn lookup_self() -> String {
    let data = serde_json::json!({
        "accessor": "a", "creation_time": 0, "creation_ttl": 0, "display_name": "token",
        "entity_id": "", "expire_time": null, "explicit_max_ttl": 0, "id": "x",
        "identity_policies": null, "issue_time": null, "meta": null, "num_uses": 0,
        "orphan": true, "path": "auth/token/create", "policies": ["root"],
        "renewable": false, "role": null, "ttl": 0
    });
    let body = serde_json::json!({
        "request_id": "r", "lease_id": "", "renewable": false, "lease_duration": 0,
        "data": data, "wrap_info": null, "warnings": null, "auth": null
    });
    response("200 OK", "", &body.to_string())
}

/// A standby that answers the token lookup itself and redirects everything
/// else (307: the client is asked to send the same method and body again) to
/// `target`.
async fn redirecting_to(target: SocketAddr) -> SocketAddr {
    let (addr, _) = server(move |path| {
        if path == "/v1/auth/token/lookup-self" {
            lookup_self()
        } else {
            let location = format!("location: http://{target}{path}\r\n");
            response("307 Temporary Redirect", &location, "")
        }
    })
    .await;
    addr
}

fn config(address: String, auth: VaultAuthConfig) -> VaultConfig {
    VaultConfig {
        address,
        ca_file: None,
        client_cert_file: None,
        client_key_file: None,
        namespace: None,
        timeout: Duration::from_secs(60),
        health_check_interval: Duration::from_secs(10),
        auth,
    }
}

fn token_auth() -> VaultAuthConfig {
    VaultAuthConfig::Token {
        token: SecretString::from(TOKEN.to_owned()),
    }
}

fn assert_never_reached(elsewhere: &Received) {
    let seen = String::from_utf8_lossy(&elsewhere.lock().unwrap()).into_owned();
    assert!(!seen.contains(TOKEN), "the token reached another host");
    assert!(
        !seen.contains(SECRET_ID),
        "the secret id reached another host"
    );
    assert!(!seen.contains(LEASE), "the body reached another host");
    assert!(seen.is_empty(), "another host was asked: {seen}");
}

/// Control: the server pair does catch what a client that follows redirects
/// leaks, the token header and, on 307, the body.
#[tokio::test]
async fn a_client_following_redirects_would_leak_the_token_and_the_body() {
    let (elsewhere, received) = server(|_| response("200 OK", "", "{}")).await;
    let standby = redirecting_to(elsewhere).await;
    let following = reqwest::Client::builder().no_proxy().build().unwrap();
    following
        .put(format!("http://{standby}/v1/sys/leases/revoke"))
        .header("X-Vault-Token", TOKEN)
        .json(&serde_json::json!({ "lease_id": LEASE }))
        .send()
        .await
        .unwrap();
    let seen = String::from_utf8_lossy(&received.lock().unwrap()).into_owned();
    assert!(seen.contains(TOKEN) && seen.contains(LEASE), "{seen}");
}

/// A raw lease request (pgwarden's token, a lease id in the body) answered
/// with a redirect fails, says why, and sends nothing to the redirect's target.
#[tokio::test]
async fn a_raw_request_is_not_redirected() {
    let (elsewhere, received) = server(|_| response("200 OK", "", "{}")).await;
    let standby = redirecting_to(elsewhere).await;
    let vault = Vault::new(&config(format!("http://{standby}"), token_auth())).unwrap();
    vault.login().await.expect("the token lookup is answered");
    let answer = vault
        .request(
            Method::PUT,
            "sys/leases/revoke",
            Some(serde_json::json!({ "lease_id": LEASE })),
        )
        .await;
    assert_never_reached(&received);
    let Err(err) = answer else {
        panic!("a redirect is not an answer")
    };
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.detail.contains("redirect"), "{}", err.detail);
    assert!(
        !err.detail.contains(&elsewhere.to_string()),
        "{}",
        err.detail
    );
}

/// An AppRole login through vaultrs (the secret id in a POST body) answered
/// with a redirect fails, says why, and sends nothing to the target.
#[tokio::test]
async fn a_login_through_vaultrs_is_not_redirected() {
    let (elsewhere, received) = server(|_| response("200 OK", "", "{}")).await;
    let standby = redirecting_to(elsewhere).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_id_file = dir.path().join("secret_id");
    std::fs::write(&secret_id_file, SECRET_ID).unwrap();
    let auth = VaultAuthConfig::Approle {
        mount: "approle".into(),
        role_id: SecretString::from("role".to_owned()),
        secret_id_file,
    };
    let vault = Vault::new(&config(format!("http://{standby}"), auth)).unwrap();
    let login = vault.login().await;
    assert_never_reached(&received);
    let err = login.expect_err("a redirect is not a login");
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.detail.contains("redirect"), "{}", err.detail);
}

/// Where the parent test tells the child its Vault's address.
const VAULT_VAR: &str = "PGWARDEN_EGRESS_TEST_VAULT";
/// The header of the child's control request, for the parent to find at the proxy.
const CONTROL: &str = "x-egress-control";
const PROXY_PASSED: &str = "proxy checks passed";

/// With `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` pointing at a catcher,
/// pgwarden's client (the token lookup through vaultrs, a raw lease request)
/// still goes straight to a loopback Vault, while a default reqwest client in
/// the same environment goes to the proxy. reqwest reads the variables when a
/// client is built, and a test may not change its own environment: the checks
/// run in a child process started with them.
#[tokio::test]
async fn proxy_variables_are_ignored() {
    let (proxy, at_proxy) = server(|_| response("502 Bad Gateway", "", "")).await;
    let (vault, at_vault) = server(|path| {
        if path.ends_with("/v1/auth/token/lookup-self") {
            lookup_self()
        } else {
            response("204 No Content", "", "")
        }
    })
    .await;
    let proxy_url = format!("http://{proxy}");
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "credentials::vault::transport::egress_tests::checks_with_proxy_variables",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(VAULT_VAR, format!("http://{vault}"))
        .env("HTTP_PROXY", &proxy_url)
        .env("HTTPS_PROXY", &proxy_url)
        .env("ALL_PROXY", &proxy_url)
        .env("http_proxy", &proxy_url)
        .env("https_proxy", &proxy_url)
        .env("all_proxy", &proxy_url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    assert!(child.status.success(), "{text}");
    assert!(
        text.contains(PROXY_PASSED),
        "the checks did not run: {text}"
    );
    let proxied = String::from_utf8_lossy(&at_proxy.lock().unwrap()).into_owned();
    assert!(
        proxied.to_ascii_lowercase().contains(CONTROL),
        "control: a default client did not use the proxy variables: {proxied}"
    );
    assert!(!proxied.contains(TOKEN), "the token went through the proxy");
    assert!(
        !proxied.contains(LEASE),
        "a lease request went through the proxy"
    );
    let direct = String::from_utf8_lossy(&at_vault.lock().unwrap()).into_owned();
    assert!(direct.contains(TOKEN) && direct.contains(LEASE), "{direct}");
}

/// The child of [`proxy_variables_are_ignored`].
#[tokio::test]
#[ignore = "run by proxy_variables_are_ignored with proxy variables set"]
async fn checks_with_proxy_variables() {
    let address = std::env::var(VAULT_VAR).expect("run by its parent");
    // Control: a client with reqwest's defaults goes to the proxy (502).
    let default = reqwest::Client::new()
        .get(format!("{address}/v1/sys/health"))
        .header(CONTROL, "1")
        .send()
        .await
        .expect("the proxy answers");
    assert_eq!(default.status().as_u16(), 502, "control: no proxy was used");

    let vault = Vault::new(&config(address, token_auth())).unwrap();
    vault
        .login()
        .await
        .expect("vaultrs' token lookup goes straight to Vault");
    vault
        .request(
            Method::PUT,
            "sys/leases/revoke",
            Some(serde_json::json!({ "lease_id": LEASE })),
        )
        .await
        .expect("a raw request goes straight to Vault");
    println!("{PROXY_PASSED}");
}
