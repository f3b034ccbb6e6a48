//! What a soak runs against: a throwaway cluster prepared as `pgwarden dev` prepares it,
//! pgwarden as a child process with its admin listener on a known port, and, for the Vault
//! mode, the integration tests' Vault double issuing real roles in that cluster.
//!
//! The files (certificates, the admin password, the client's verifier, the Vault token) live
//! in a temporary directory removed at the end; nothing secret is printed. pgwarden's log
//! (warnings and errors) is kept in `target/soak/`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwarden::auth::ScramVerifier;
use pgwarden::auth::verifier::{GENERATED_PASSWORD_LEN, generate_password};
use pgwarden::dev::{ADMIN_ROLE, CLIENT_USER, DATABASE, OWNER_ROLE};
use pgwarden::embedded::cluster::{Cluster, ClusterOptions};
use pgwarden::embedded::pki::Pki;
use pgwarden::tls::pg_connector::{RustlsConnect, verify_full_client_config};
use secrecy::{ExposeSecret, SecretString};

use crate::support::vault_double::{DoubleConfig, RoleDef, SqlRunner, VaultDouble};

/// How long a server may take to accept connections on a loaded machine.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Lease lifetimes: short, so that renewals and lease ends happen many times in a run.
pub const TTL_SECS: u64 = 30;
pub const MAX_TTL_SECS: u64 = 60;

/// The credential source pgwarden issues logins from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `source = "postgres"`: pgwarden creates and drops the roles itself.
    Builtin,
    /// `source = "vault"`, served by the Vault double.
    Vault,
}

/// Everything one soak runs against.
pub struct Soak {
    /// Kept for its lifetime: dropping it stops the cluster.
    _cluster: Cluster,
    /// The cluster's superuser, to count the roles left behind.
    pub superuser: tokio_postgres::Client,
    pub pgwarden: Child,
    pub pgwarden_port: u16,
    pub admin_port: u16,
    pub log_path: PathBuf,
    pub vault: Option<VaultDouble>,
    /// Dynamic roles' names start with this (the admin role is left out).
    pub role_prefix: &'static str,
    pub client_password: SecretString,
    pub tls: RustlsConnect,
    /// Certificates, secrets and configuration; removed on drop.
    _dir: tempfile::TempDir,
}

impl Soak {
    pub async fn start(source: Source, max_connections: usize) -> Soak {
        let pki = Arc::new(Pki::new("pgwarden soak CA").expect("a CA"));
        let cluster = Cluster::start(ClusterOptions {
            pki: Some(pki.clone()),
            settings: vec![("max_connections".into(), (max_connections * 2).to_string())],
            ..ClusterOptions::default()
        })
        .await
        .unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"));
        let admin_password = pgwarden::dev::prepare_cluster(&cluster)
            .await
            .unwrap_or_else(|e| panic!("preparing the cluster: {e}"));
        let superuser = cluster
            .connect(DATABASE)
            .await
            .expect("a superuser connection");

        let dir = tempfile::Builder::new()
            .prefix("pgwarden-soak-")
            .tempdir()
            .expect("a temporary directory");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("writing a soak file")
        };
        let listener = pki
            .issue_server(&["localhost", "127.0.0.1"])
            .expect("a listener certificate");
        write("ca.crt", pki.ca_cert_pem());
        write("server.crt", &listener.cert_pem);
        write("server.key", listener.key_pem.expose_secret());
        write("admin_password", admin_password.expose_secret());
        let client_password = generate_password(GENERATED_PASSWORD_LEN);
        let verifier = ScramVerifier::from_password(&client_password).to_text();
        write("client.verifier", verifier.expose_secret());

        let (pgwarden_port, admin_port) = (free_port(), free_port());
        let mut config = base_config(pgwarden_port, admin_port, cluster.port(), max_connections);
        let vault = match source {
            Source::Builtin => {
                config += &builtin_credentials();
                None
            }
            Source::Vault => {
                let token = format!("hvs.{}", generate_password(32).expose_secret());
                write("vault_token", &token);
                let double = start_double(&cluster, token).await;
                // As Vault does: a request pgwarden gave up on (slow mode) is still carried
                // out, so its role gets a lease that expires. Dropped half-way instead, it
                // could leave a role created and no lease to ever drop it.
                double.set_finish_abandoned(true);
                config += &vault_credentials(&double.url());
                Some(double)
            }
        };
        write("soak.toml", &config);

        // The log outlives the run, for a person to read when a check fails.
        let log_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/soak");
        std::fs::create_dir_all(&log_dir).expect("target/soak");
        let log_path = log_dir.join(format!("pgwarden-{source:?}.log").to_lowercase());
        let pgwarden = start_pgwarden(&dir.path().join("soak.toml"), &log_path, pgwarden_port);
        let tls = RustlsConnect::new(
            verify_full_client_config(pki.ca_cert_pem().as_bytes()).expect("the soak CA"),
        );
        Soak {
            _cluster: cluster,
            superuser,
            pgwarden,
            pgwarden_port,
            admin_port,
            log_path,
            vault,
            role_prefix: match source {
                Source::Builtin => "pgwarden_",
                Source::Vault => "v-",
            },
            client_password,
            tls,
            _dir: dir,
        }
    }

    /// A client configuration for pgwarden: TLS required (verified by the connector), SCRAM.
    pub fn client_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.pgwarden_port)
            .user(CLIENT_USER)
            .password(self.client_password.expose_secret())
            .dbname(DATABASE)
            .application_name("soak")
            .ssl_mode(tokio_postgres::config::SslMode::Require)
            .connect_timeout(Duration::from_secs(30));
        c
    }

    /// Dynamic roles in the cluster.
    pub async fn dynamic_roles(&self) -> i64 {
        self.superuser
            .query_one(
                "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1) AND rolname <> $2",
                &[&self.role_prefix, &ADMIN_ROLE],
            )
            .await
            .expect("counting dynamic roles")
            .get(0)
    }

    /// Lines of pgwarden's log at level `level` (`WARN`, `ERROR`).
    pub fn log_lines(&self, level: &str) -> usize {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let tag = format!(" {level} ");
        log.lines().filter(|l| l.contains(&tag)).count()
    }

    /// pgwarden's resident set, in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pgwarden.id()).expect("VmRSS in pgwarden's /proc status")
    }

    pub fn pgwarden_pid(&self) -> u32 {
        self.pgwarden.id()
    }

    /// The sum of a metric's series on pgwarden's admin endpoint.
    pub async fn metric(&self, name: &str) -> f64 {
        self.metric_labelled(name, "").await
    }

    /// The sum of a metric's series whose labels contain `label` (`outcome="success"`).
    pub async fn metric_labelled(&self, name: &str, label: &str) -> f64 {
        let body = admin_get(self.admin_port, "/metrics").await;
        body.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
                    && l.contains(label)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// A labelled metric's series on pgwarden's admin endpoint: labels and value.
    pub async fn metric_series(&self, name: &str) -> Vec<(String, f64)> {
        let body = admin_get(self.admin_port, "/metrics").await;
        body.lines()
            .filter_map(|l| {
                let (labels, value) = l.strip_prefix(name)?.strip_prefix('{')?.rsplit_once("} ")?;
                Some((labels.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// Ends pgwarden (SIGTERM would drain; the checks are done, so kill is enough).
    pub fn stop(&mut self) {
        let _ = self.pgwarden.kill();
        let _ = self.pgwarden.wait();
    }
}

fn base_config(port: u16, admin_port: u16, pg_port: u16, max_connections: usize) -> String {
    format!(
        r#"[listen]
address = "127.0.0.1:{port}"
tls_cert_file = "server.crt"
tls_key_file = "server.key"
require_tls = true
allow = ["127.0.0.0/8"]
max_connections = {max_connections}
# Every soak client comes from 127.0.0.1: the per-address handshake budget
# (default 32) would close most of their connections unread.
max_handshakes = {max_connections}
max_handshakes_per_address = {max_connections}
handshake_timeout = "30s"

[admin]
address = "127.0.0.1:{admin_port}"

[shutdown]
grace = "5s"
revoke_timeout = "30s"

[[users]]
name = "{CLIENT_USER}"
scram_verifier_file = "client.verifier"

[[routes]]
database = "{DATABASE}"
users = ["{CLIENT_USER}"]
upstream = {{ host = "127.0.0.1", port = {pg_port}, database = "{DATABASE}", tls = "verify-full", ca_file = "ca.crt" }}
credentials = "soak"
session_role = "{OWNER_ROLE}"

"#
    )
}

fn builtin_credentials() -> String {
    format!(
        r#"[credentials.soak]
source = "postgres"
admin_user = "{ADMIN_ROLE}"
admin_password_file = "admin_password"
member_of = ["{OWNER_ROLE}"]
ttl = "{TTL_SECS}s"
max_ttl = "{MAX_TTL_SECS}s"
"#
    )
}

fn vault_credentials(url: &str) -> String {
    format!(
        r#"[vault]
address = "{url}"
timeout = "3s"
health_check_interval = "1s"
auth = {{ method = "token", token_file = "vault_token" }}

[credentials.soak]
source = "vault"
mount = "database"
role = "keycloak"
"#
    )
}

/// The double, with a role in the Keycloak pattern whose statements run as the superuser;
/// revocation ends the role's backends and drops it.
async fn start_double(cluster: &Cluster, root_token: String) -> VaultDouble {
    let sql = Arc::new(
        cluster
            .connect("postgres")
            .await
            .expect("a superuser connection for the Vault double"),
    );
    let runner: SqlRunner = Arc::new(move |statement: String| {
        let sql = sql.clone();
        Box::pin(async move {
            sql.batch_execute(&statement)
                .await
                .map_err(|e| format!("{e:?}"))
        })
    });
    let mut config = DoubleConfig::new(runner);
    config.roles.insert(
        "keycloak".to_owned(),
        RoleDef {
            creation_statements: format!(
                "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}' IN ROLE \"{OWNER_ROLE}\";"
            ),
            renew_statements: "ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}';".into(),
            revocation_statements: "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}'; DROP ROLE IF EXISTS \"{{name}}\";".into(),
            default_ttl: Duration::from_secs(TTL_SECS),
            max_ttl: Duration::from_secs(MAX_TTL_SECS),
        },
    );
    config.root_token = Some(root_token);
    VaultDouble::start(config).await
}

/// A process's resident set, in KiB, from /proc.
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn start_pgwarden(config: &std::path::Path, log_path: &std::path::Path, port: u16) -> Child {
    let log = std::fs::File::create(log_path).expect("a log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwarden"));
    // pgwarden refuses PGWARDEN_* variables it does not know; pass only the one we mean.
    for (k, _) in std::env::vars() {
        if k.starts_with("PGWARDEN_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(["run", "--config"])
        .arg(config)
        .env(
            "PGWARDEN_LOG_LEVEL",
            crate::knob("SOAK_LOG_LEVEL", "warn".to_owned()),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting pgwarden");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "pgwarden exited ({status}); its log:\n{}",
                std::fs::read_to_string(log_path).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < READY_DEADLINE,
            "pgwarden did not listen in time"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One GET on the admin listener (one request per connection), the body as text.
async fn admin_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connecting to pgwarden's admin listener");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("sending an admin request");
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .expect("reading the admin answer");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}
