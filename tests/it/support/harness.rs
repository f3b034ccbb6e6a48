//! pgwarden in front of a throwaway PostgreSQL, in-process, for one test.
//!
//! [`Harness::start`] starts a TLS + SCRAM cluster and prepares it the way `pgwarden dev`
//! does (a NOLOGIN owner role owning the `keycloak` database and granted
//! `pg_signal_backend`, a CREATEROLE admin), writes certificates, secrets and a
//! configuration built from [`Options`] into a temporary directory, and starts pgwarden on
//! 127.0.0.1 with a random port. It then offers clients of every kind through pgwarden, a
//! superuser connection straight to the cluster for assertions, and the captured logs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwarden::auth::ScramVerifier;
use pgwarden::auth::verifier::{GENERATED_PASSWORD_LEN, generate_password};
use pgwarden::dev::{ADMIN_ROLE, CLIENT_USER, DATABASE, OWNER_ROLE};
use pgwarden::embedded::cluster::{Cluster, ClusterOptions};
use pgwarden::embedded::pki::Pki;
use pgwarden::server::Server;
use pgwarden::tls::pg_connector::{RustlsConnect, RustlsStream, verify_full_client_config};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::config::{ChannelBinding, SslMode};
use tokio_postgres::{Client, Connection, Socket};

use super::logs::{self, Logs};
use super::openbao_setup::{OpenBaoOptions, OpenBaoSetup};
use super::vault_double::VaultDouble;
#[allow(unused_imports)]
pub use super::vault_setup::{VaultAuth, VaultOptions, VaultSetup};

/// Deadline for anything that should happen "soon" on a loaded two-core machine.
pub const GENEROUS: Duration = Duration::from_secs(60);

/// How the listener treats TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenTls {
    /// No certificate: SSLRequest is answered `N`.
    Off,
    /// TLS offered, plaintext allowed.
    Optional,
    /// TLS offered and required (the default, as in production).
    Required,
}

/// Which CA the route trusts for the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamCa {
    /// The CA that signed the cluster's certificate.
    Right,
    /// A CA that has nothing to do with the cluster.
    Unrelated,
}

/// An extra `[[users]]` entry.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub auth: UserAuth,
}

#[derive(Debug, Clone)]
pub enum UserAuth {
    /// SCRAM with a verifier made from this password.
    Password(String),
    /// `auth = "trust"` from these CIDRs.
    Trust(Vec<String>),
    /// `auth = "cert"` with these `cert_names` (empty: left out, the user's own name).
    Cert(Vec<String>),
    /// `auth = "cert+scram"` with a verifier made from this password.
    CertAndPassword(String),
}

/// A route besides the `keycloak` one, to the same cluster database and credential source.
#[derive(Debug, Clone)]
pub struct Route {
    /// The database name clients ask for.
    pub database: String,
    pub users: Vec<String>,
    pub upstream_ca: UpstreamCa,
    /// The database asked for upstream; `None`: `keycloak`.
    pub upstream_database: Option<String>,
    /// `allowed_parameters`; `None`: pgwarden's default list.
    pub allowed_parameters: Option<Vec<String>>,
}

/// What to configure; `Default` is the `pgwarden dev` configuration on a random port.
#[derive(Debug, Clone)]
pub struct Options {
    pub tls: ListenTls,
    pub allow: Vec<String>,
    pub max_connections: usize,
    pub handshake_timeout: String,
    /// `[listen] idle_timeout`; `None`: not set.
    pub idle_timeout: Option<String>,
    /// Users besides `keycloak`; every user may use the route.
    pub users: Vec<User>,
    pub upstream_ca: UpstreamCa,
    pub extra_routes: Vec<Route>,
    pub ttl: String,
    pub max_ttl: Option<String>,
    pub on_lease_end: Option<String>,
    /// `None`: the default prefix.
    pub role_prefix: Option<String>,
    /// The built-in source's `prefetch` and `prefetch_max_age`; `None`: not set.
    pub prefetch: Option<(usize, String)>,
    /// The built-in source's `scram_iterations`; `None`: not set.
    pub scram_iterations: Option<u32>,
    /// Credentials from a Vault double instead of the built-in source.
    pub vault: Option<VaultOptions>,
    /// Credentials from a real OpenBao set up by `config/vault/setup.sh` (on a cluster
    /// `bootstrap.sql` prepared) instead of the built-in source.
    pub openbao: Option<OpenBaoOptions>,
    /// Run the admin listener (metrics, health) on a random port.
    pub admin: bool,
    /// Extra `postgresql.conf` settings for the cluster (they win over its own).
    pub cluster_settings: Vec<(String, String)>,
    /// The cluster's `pg_hba.conf` lines; `None`: its default.
    pub cluster_hba: Option<Vec<String>>,
    /// SQL run as the superuser once the cluster is prepared, before pgwarden (or the
    /// Vault double) opens any connection to it.
    pub cluster_sql: Vec<String>,
    /// A route for this database name to a local port where nothing listens.
    pub unreachable_route: Option<String>,
    /// The main route's upstream `host` (default `127.0.0.1`) and
    /// `server_name` (default none); a server name is also put in the
    /// cluster's certificate.
    pub upstream_host: Option<String>,
    pub upstream_server_name: Option<String>,
    /// `allow_insecure_auth` on every route's upstream.
    pub allow_insecure_auth: bool,
    /// `[audit] interval = "1h"`: the background audit (and its metrics).
    pub audit: bool,
    /// The format the logs are captured in (`h.logs`): JSON unless a test reads the text.
    pub log_format: pgwarden::config::LogFormat,
    /// `[listen] proxy_protocol`: the trusted networks and `required`.
    pub proxy_protocol: Option<(Vec<String>, bool)>,
    /// `[listen] max_handshakes_per_address`; `None`: the default.
    pub max_handshakes_per_address: Option<usize>,
    /// `[listen] client_ca_file`: this CA's certificate.
    pub client_ca: Option<Arc<Pki>>,
    /// `[listen] client_crl_file`: this CRL (PEM).
    pub client_crl: Option<String>,
    /// Appended to the configuration as it is (`[peering]`, `[[peers]]`, …).
    pub extra_config: String,
}

impl Options {
    /// The `pgwarden dev` configuration with a Vault credential source.
    pub fn vault(v: VaultOptions) -> Options {
        Options {
            vault: Some(v),
            ..Options::default()
        }
    }
}

/// The SQLSTATE and message of a server error; fails the test on any other error.
pub fn server_error(err: &tokio_postgres::Error) -> (String, String) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// The server error a spawned connection ended with (waited for generously).
pub async fn ended_with(
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> (String, String) {
    let ended = tokio::time::timeout(GENEROUS, conn)
        .await
        .expect("the session is ended")
        .expect("the connection task");
    server_error(&ended.expect_err("the session ends with an error"))
}

/// `session_user` of a connection: the issued role.
pub async fn session_user(c: &Client) -> String {
    c.query_one("SELECT session_user::text", &[])
        .await
        .expect("session_user")
        .get(0)
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tls: ListenTls::Required,
            allow: vec!["127.0.0.0/8".into(), "::1/128".into()],
            max_connections: 100,
            handshake_timeout: "60s".into(),
            idle_timeout: None,
            users: Vec::new(),
            upstream_ca: UpstreamCa::Right,
            extra_routes: Vec::new(),
            ttl: "1h".into(),
            max_ttl: None,
            on_lease_end: None,
            role_prefix: None,
            prefetch: None,
            scram_iterations: None,
            vault: None,
            openbao: None,
            admin: false,
            cluster_settings: Vec::new(),
            cluster_hba: None,
            cluster_sql: Vec::new(),
            unreachable_route: None,
            upstream_host: None,
            upstream_server_name: None,
            allow_insecure_auth: false,
            audit: false,
            log_format: pgwarden::config::LogFormat::Json,
            proxy_protocol: None,
            max_handshakes_per_address: None,
            client_ca: None,
            client_crl: None,
            extra_config: String::new(),
        }
    }
}

/// A running pgwarden with its cluster.
pub struct Harness {
    pub proxy_addr: SocketAddr,
    /// The CA of both the listener and the cluster.
    pub ca_path: PathBuf,
    pub ca_pem: String,
    pub client_password: SecretString,
    pub admin_password: SecretString,
    pub role_prefix: String,
    pub logs: Logs,
    pub cluster: Cluster,
    /// The CA of the listener's and the cluster's certificates, to issue more.
    pub pki: Arc<Pki>,
    /// The configuration pgwarden started with (paths relative to [`Harness::dir`]).
    pub config_text: String,
    direct: Client,
    server: Option<Server>,
    vault: Option<VaultSetup>,
    openbao: Option<OpenBaoSetup>,
    /// The configuration, without `Options::extra_config`, for replicas.
    base_config: String,
    /// Certificates, secrets, configuration; removed on drop.
    dir: tempfile::TempDir,
}

/// What a `psql` run gave.
#[derive(Debug)]
pub struct Psql {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Harness {
    pub async fn start(opts: Options) -> Harness {
        let logs = logs::capture_as(opts.log_format);
        let pki = Arc::new(Pki::new("pgwarden test CA").expect("CA"));
        let mut server_names = ClusterOptions::default().server_names;
        server_names.extend(opts.upstream_server_name.clone());
        let cluster = Cluster::start(ClusterOptions {
            pki: Some(pki.clone()),
            settings: opts.cluster_settings.clone(),
            hba: opts.cluster_hba.clone(),
            server_names,
            ..ClusterOptions::default()
        })
        .await
        .expect("start the cluster");
        let shipped = opts.vault.as_ref().is_some_and(|v| v.shipped) || opts.openbao.is_some();
        // Shipped Vault wiring: the cluster as config/vault/bootstrap.sql leaves it, and
        // admin_password is vault_admin's.
        let admin_password = if shipped {
            super::shipped::bootstrap(&cluster).await
        } else {
            pgwarden::dev::prepare_cluster(&cluster)
                .await
                .expect("prepare the cluster")
        };
        if !opts.cluster_sql.is_empty() {
            let setup = cluster
                .connect("postgres")
                .await
                .expect("superuser connection");
            for sql in &opts.cluster_sql {
                setup
                    .batch_execute(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
        let direct = cluster
            .connect(DATABASE)
            .await
            .expect("superuser connection");

        let dir = tempfile::Builder::new()
            .prefix("pgwarden-test-")
            .tempdir()
            .expect("temporary directory");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write a test file")
        };
        let listener = pki
            .issue_server(&["localhost", "127.0.0.1", "::1"])
            .expect("listener certificate");
        write("ca.crt", pki.ca_cert_pem());
        write("server.crt", &listener.cert_pem);
        write("server.key", listener.key_pem.expose_secret());
        write("admin_password", admin_password.expose_secret());
        let client_password = generate_password(GENERATED_PASSWORD_LEN);
        write("client.verifier", verifier(&client_password).as_str());
        write(
            "unrelated-ca.crt",
            Pki::new("unrelated CA").unwrap().ca_cert_pem(),
        );

        let vault = match &opts.vault {
            Some(v) => {
                Some(VaultSetup::start(v, &cluster, &admin_password, &pki, dir.path()).await)
            }
            None => None,
        };
        let openbao = match &opts.openbao {
            Some(o) => Some(OpenBaoSetup::start(o, &cluster, &admin_password, dir.path()).await),
            None => None,
        };
        if let Some(ca) = &opts.client_ca {
            write("client-ca.crt", ca.ca_cert_pem());
        }
        if let Some(crl) = &opts.client_crl {
            write("client-ca.crl", crl);
        }
        let mut base_config = config_text(&opts, cluster.port());
        if let (Some(setup), Some(v)) = (&vault, &opts.vault) {
            base_config += &setup.config(v);
        }
        if let Some(setup) = &openbao {
            base_config += &setup.config(cluster.port());
        }
        let config_text = format!("{base_config}\n{}", opts.extra_config);
        let server = start_server(&config_text, dir.path()).await;
        Harness {
            proxy_addr: server.addr,
            ca_path: dir.path().join("ca.crt"),
            ca_pem: pki.ca_cert_pem().to_owned(),
            client_password,
            admin_password,
            role_prefix: if opts.vault.is_some() || opts.openbao.is_some() {
                // Vault's username template: v-<display name>-<role>-…
                "v-".into()
            } else {
                opts.role_prefix.clone().unwrap_or("pgwarden_".into())
            },
            logs,
            cluster,
            pki,
            config_text,
            direct,
            server: Some(server),
            vault,
            openbao,
            base_config,
            dir,
        }
    }

    /// The directory of the configuration, its certificates and secrets.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Another pgwarden on a random port, with this harness's configuration
    /// plus `extra` (in place of `Options::extra_config`): a replica.
    pub async fn start_replica(&self, extra: &str) -> Server {
        start_server(&format!("{}\n{extra}", self.base_config), self.dir.path()).await
    }

    pub fn port(&self) -> u16 {
        self.proxy_addr.port()
    }

    /// Writes `text` as the configuration file and reloads pgwarden from it,
    /// as SIGHUP does.
    pub async fn reload(
        &self,
        text: &str,
    ) -> Result<pgwarden::reload::Reloaded, pgwarden::reload::ReloadError> {
        let path = self.dir().join("pgwarden.toml");
        std::fs::write(&path, text).expect("write the configuration");
        self.server().reload(&path, std::iter::empty()).await
    }

    /// tokio-postgres settings for `keycloak` through pgwarden: verify-full with the test CA
    /// (the connector checks the certificate names 127.0.0.1), SCRAM, channel binding if offered.
    pub fn pg_config(&self) -> tokio_postgres::Config {
        self.pg_config_as(CLIENT_USER, self.client_password.expose_secret(), DATABASE)
    }

    pub fn pg_config_as(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port())
            .user(user)
            .password(password)
            .dbname(db)
            .application_name("pgwarden-tests")
            .ssl_mode(SslMode::Require)
            .channel_binding(ChannelBinding::Prefer)
            .connect_timeout(GENEROUS);
        c
    }

    /// The TLS connector for tokio-postgres, trusting only the test CA.
    pub fn tls(&self) -> RustlsConnect {
        RustlsConnect::new(verify_full_client_config(self.ca_pem.as_bytes()).unwrap())
    }

    /// A tokio-postgres client through pgwarden; its connection runs in a spawned task.
    pub async fn connect(&self) -> Client {
        self.try_connect(&self.pg_config())
            .await
            .expect("connect through pgwarden")
    }

    pub async fn try_connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.connect_parts(config).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Client and connection, for tests that drive (or kill) the connection themselves.
    pub async fn connect_parts(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<(Client, Connection<Socket, RustlsStream<Socket>>), tokio_postgres::Error> {
        config.connect(self.tls()).await
    }

    /// The conninfo psql uses to reach pgwarden as `keycloak`, plus `extra`.
    pub fn conninfo(&self, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={CLIENT_USER} dbname={DATABASE} sslmode=verify-full \
             sslrootcert={} connect_timeout=60 application_name=pgwarden-tests {extra}",
            self.port(),
            self.ca_path.display()
        )
    }

    /// Runs the system psql with `conninfo` (see [`Harness::conninfo`]) and PGPASSWORD set in
    /// the child's environment only.
    pub async fn psql(&self, conninfo: &str, password: &str, sql: &str) -> Psql {
        let mut cmd = tokio::process::Command::new("psql");
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(conninfo)
            .env("PGPASSWORD", password)
            .kill_on_drop(true);
        for var in [
            "PGSERVICE",
            "PGSSLMODE",
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
        ] {
            cmd.env_remove(var);
        }
        let out = tokio::time::timeout(GENEROUS, cmd.output())
            .await
            .expect("psql finishes")
            .expect("psql runs (postgresql-client installed?)");
        Psql {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// A superuser connection straight to the cluster's `keycloak` database.
    pub fn direct(&self) -> &Client {
        &self.direct
    }

    /// `VALID UNTIL` of `role`, as text; `None` when the role has none or is gone.
    pub async fn valid_until(&self, role: &str) -> Option<String> {
        self.direct
            .query_opt(
                "SELECT rolvaliduntil::text FROM pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await
            .expect("reading a role's VALID UNTIL")
            .and_then(|r| r.get(0))
    }

    /// Roles under the credential source's prefix, sorted. The admin role is left out: the
    /// dev names put it under the default prefix (`pgwarden_admin`).
    pub async fn dynamic_roles(&self) -> Vec<String> {
        self.direct
            .query(
                "SELECT rolname::text FROM pg_roles \
                 WHERE starts_with(rolname, $1) AND rolname <> $2 ORDER BY 1",
                &[&self.role_prefix, &ADMIN_ROLE],
            )
            .await
            .expect("list dynamic roles")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Waits until no role under the prefix is left.
    pub async fn wait_for_no_dynamic_roles(&self) {
        wait_until(GENEROUS, "every dynamic role is dropped", async || {
            self.dynamic_roles().await.is_empty()
        })
        .await;
    }

    /// The Vault double (tests started with `Options::vault`).
    pub fn vault(&self) -> &VaultDouble {
        &self
            .vault
            .as_ref()
            .expect("this harness runs with a Vault double")
            .double
    }

    /// The Vault double's wiring: issued passwords, statements run (Vault tests only).
    pub fn vault_setup(&self) -> &VaultSetup {
        self.vault
            .as_ref()
            .expect("this harness runs with a Vault double")
    }

    /// The OpenBao server and its setup (tests started with `Options::openbao`).
    pub fn openbao(&self) -> &OpenBaoSetup {
        self.openbao
            .as_ref()
            .expect("this harness runs with OpenBao")
    }

    /// Leases handed to the revoker and not yet revoked.
    pub fn pending_revocations(&self) -> usize {
        self.server
            .as_ref()
            .expect("pgwarden is running")
            .pending_revocations()
    }

    /// GET on the admin listener: status and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let addr = self
            .server()
            .admin_addr
            .expect("the harness was started with admin = true");
        let response = reqwest::Client::new()
            .get(format!("http://{addr}{path}"))
            .timeout(GENEROUS)
            .send()
            .await
            .expect("the admin listener answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("a body"))
    }

    /// The current value of one series in /metrics (`name{labels}` exactly as
    /// rendered, or a bare name), or 0 when it is absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").await;
        parse_metric(&body, series).unwrap_or(0.0)
    }

    /// The running server (for its state and admin address).
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("pgwarden is running")
    }

    /// No password, verifier, secret id, JWT or token of this test in any captured line.
    pub fn assert_no_secrets_logged(&self) {
        self.logs
            .assert_absent("the client password", self.client_password.expose_secret());
        self.logs
            .assert_absent("the admin password", self.admin_password.expose_secret());
        self.logs.assert_absent(
            "the superuser password",
            self.cluster.superuser_password().expose_secret(),
        );
        if let Some(v) = &self.vault {
            for (i, s) in v.secrets().iter().enumerate() {
                self.logs.assert_absent(
                    &format!("Vault secret #{i} (secret id, JWT, token or issued password)"),
                    s,
                );
            }
        }
        if let Some(b) = &self.openbao {
            for (i, s) in b.secrets().iter().enumerate() {
                self.logs
                    .assert_absent(&format!("OpenBao secret #{i} (root token, secret id)"), s);
            }
        }
    }

    /// Shuts pgwarden down as SIGTERM would; returns how many leases were left unrevoked.
    pub async fn shutdown(&mut self) -> usize {
        let server = self.server.take().expect("pgwarden is running");
        tokio::time::timeout(GENEROUS, server.shutdown())
            .await
            .expect("shutdown finishes")
    }
}

/// Every test that starts a harness also checks, when it ends, that no secret of its run
/// reached a log line (unless the test has already failed).
impl Drop for Harness {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.assert_no_secrets_logged();
        }
    }
}

/// Polls `check` every 100 ms until it is true; fails the test with `what` after `deadline`.
pub async fn wait_until(deadline: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_server(config_text: &str, dir: &std::path::Path) -> Server {
    let config = pgwarden::config::from_str(config_text, dir, std::iter::empty())
        .unwrap_or_else(|e| panic!("test configuration is invalid:\n{e}\n---\n{config_text}"));
    Server::start(config).await.expect("start pgwarden")
}

fn verifier(password: &SecretString) -> String {
    ScramVerifier::from_password(password)
        .to_text()
        .expose_secret()
        .to_owned()
}

fn config_text(opts: &Options, pg_port: u16) -> String {
    let q = |s: &str| format!("{s:?}");
    let list = |v: &[String]| v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ");
    let mut t = String::from("[listen]\naddress = \"127.0.0.1:0\"\n");
    if opts.tls != ListenTls::Off {
        t.push_str("tls_cert_file = \"server.crt\"\ntls_key_file = \"server.key\"\n");
    }
    t += &format!(
        "require_tls = {}\nallow = [{}]\nmax_connections = {}\nhandshake_timeout = {}\n",
        opts.tls == ListenTls::Required,
        list(&opts.allow),
        opts.max_connections,
        q(&opts.handshake_timeout),
    );
    if let Some(idle) = &opts.idle_timeout {
        t += &format!("idle_timeout = {}\n", q(idle));
    }
    if let Some(n) = opts.max_handshakes_per_address {
        t += &format!("max_handshakes_per_address = {n}\n");
    }
    if opts.client_ca.is_some() {
        t += "client_ca_file = \"client-ca.crt\"\n";
    }
    if opts.client_crl.is_some() {
        t += "client_crl_file = \"client-ca.crl\"\n";
    }
    if let Some((trusted, required)) = &opts.proxy_protocol {
        t += &format!(
            "proxy_protocol = {{ trusted = [{}], required = {required} }}\n",
            list(trusted)
        );
    }
    t += "\n";
    t += "[shutdown]\ngrace = \"2s\"\nrevoke_timeout = \"30s\"\n\n";
    t += &format!(
        "[[users]]\nname = {}\nscram_verifier_file = \"client.verifier\"\n\n",
        q(CLIENT_USER)
    );
    for u in &opts.users {
        t += &format!("[[users]]\nname = {}\n", q(&u.name));
        match &u.auth {
            UserAuth::Password(p) => {
                let v = verifier(&SecretString::from(p.clone()));
                t += &format!("scram_verifier = {}\n\n", q(&v));
            }
            UserAuth::Trust(from) => {
                t += &format!("auth = \"trust\"\ntrust_from = [{}]\n\n", list(from));
            }
            UserAuth::Cert(names) if names.is_empty() => t += "auth = \"cert\"\n\n",
            UserAuth::Cert(names) => {
                t += &format!("auth = \"cert\"\ncert_names = [{}]\n\n", list(names));
            }
            UserAuth::CertAndPassword(p) => {
                let v = verifier(&SecretString::from(p.clone()));
                t += &format!("auth = \"cert+scram\"\nscram_verifier = {}\n\n", q(&v));
            }
        }
    }
    let main = Route {
        database: DATABASE.into(),
        users: vec!["*".into()],
        upstream_ca: opts.upstream_ca,
        upstream_database: None,
        allowed_parameters: None,
    };
    // The shipped Vault roles set their session role themselves (ALTER ROLE … SET role).
    let shipped = opts.vault.as_ref().is_some_and(|v| v.shipped) || opts.openbao.is_some();
    for r in std::iter::once(&main).chain(&opts.extra_routes) {
        let ca = match r.upstream_ca {
            UpstreamCa::Right => "ca.crt",
            UpstreamCa::Unrelated => "unrelated-ca.crt",
        };
        let mut extra = String::new();
        if opts.allow_insecure_auth {
            extra += ", allow_insecure_auth = true";
        }
        let mut host = "127.0.0.1".to_owned();
        if std::ptr::eq(r, &main) {
            if let Some(h) = &opts.upstream_host {
                host.clone_from(h);
            }
            if let Some(name) = &opts.upstream_server_name {
                extra += &format!(", server_name = {}", q(name));
            }
        }
        t += &format!(
            "[[routes]]\ndatabase = {}\nusers = [{}]\n\
             upstream = {{ host = {}, port = {pg_port}, database = {}, tls = \"verify-full\", ca_file = {}{extra} }}\n\
             credentials = \"test\"\n",
            q(&r.database),
            list(&r.users),
            q(&host),
            q(r.upstream_database.as_deref().unwrap_or(DATABASE)),
            q(ca),
        );
        if !shipped {
            t += &format!("session_role = {}\n", q(OWNER_ROLE));
        }
        if let Some(allowed) = &r.allowed_parameters {
            t += &format!("allowed_parameters = [{}]\n", list(allowed));
        }
        t += "\n";
    }
    if let Some(database) = &opts.unreachable_route {
        let port = refusing_port();
        t += &format!(
            "[[routes]]\ndatabase = {}\nusers = [\"*\"]\n\
             upstream = {{ host = \"127.0.0.1\", port = {port}, database = {}, tls = \"verify-full\", ca_file = \"ca.crt\", connect_timeout = \"5s\" }}\n\
             credentials = \"test\"\n",
            q(database),
            q(DATABASE),
        );
        if !shipped {
            t += &format!("session_role = {}\n", q(OWNER_ROLE));
        }
        t += "\n";
    }
    if opts.admin {
        t += "[admin]\naddress = \"127.0.0.1:0\"\n\n";
    }
    if opts.audit {
        t += "[audit]\ninterval = \"1h\"\n\n";
    }
    if opts.vault.is_some() || opts.openbao.is_some() {
        return t;
    }
    t += &format!(
        "[credentials.test]\nsource = \"postgres\"\nadmin_user = {}\nadmin_password_file = \"admin_password\"\n\
         member_of = [{}]\nttl = {}\n",
        q(ADMIN_ROLE),
        q(OWNER_ROLE),
        q(&opts.ttl),
    );
    if let Some(m) = &opts.max_ttl {
        t += &format!("max_ttl = {}\n", q(m));
    }
    if let Some(o) = &opts.on_lease_end {
        t += &format!("on_lease_end = {}\n", q(o));
    }
    if let Some(p) = &opts.role_prefix {
        t += &format!("role_prefix = {}\n", q(p));
    }
    if let Some((n, max_age)) = &opts.prefetch {
        t += &format!("prefetch = {n}\nprefetch_max_age = {}\n", q(max_age));
    }
    if let Some(i) = opts.scram_iterations {
        t += &format!("scram_iterations = {i}\n");
    }
    t
}

/// The value of `series` in a Prometheus text exposition, if present. Labels
/// may come in any order: `series` matches when the name is equal and every
/// `label="value"` it gives appears.
/// A port on 127.0.0.1 where a connection is refused, for as long as the
/// tests run: bound by a socket that never listens and is never closed. A
/// port that was merely free a moment ago can be taken by another test's
/// cluster or listener in between (it happened: a route meant to be
/// unreachable reached another test's server and failed on auth).
pub fn refusing_port() -> u16 {
    static HELD: std::sync::OnceLock<(socket2::Socket, u16)> = std::sync::OnceLock::new();
    HELD.get_or_init(|| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        socket.bind(&any.into()).expect("binding a port");
        let port = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("the bound address")
            .port();
        (socket, port)
    })
    .1
}

pub fn parse_metric(body: &str, series: &str) -> Option<f64> {
    let (name, labels) = match series.split_once('{') {
        Some((n, l)) => (
            n,
            l.trim_end_matches('}')
                .split(',')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>(),
        ),
        None => (series, Vec::new()),
    };
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let (n, l) = match key.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (key, ""),
            };
            let have: Vec<&str> = l.split(',').collect();
            (n == name && labels.iter().all(|want| have.contains(want)))
                .then(|| value.parse().ok())?
        })
}
