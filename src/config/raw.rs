//! The configuration file as written: serde shapes, every one `deny_unknown_fields`.
//!
//! Nothing here touches the file system or checks meaning; `validate` does that.
//! Defaults are named constants so the example file and the code cannot drift.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

pub const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:6432";
pub const DEFAULT_MAX_CONNECTIONS: usize = 500;
/// Handshakes (accept → authenticated) in progress at once, from all addresses.
pub const DEFAULT_MAX_HANDSHAKES: usize = 256;
/// Handshakes in progress at once from one client address (an IPv6 /64).
pub const DEFAULT_MAX_HANDSHAKES_PER_ADDRESS: usize = 32;
/// Most replicas that can forward cancel requests to one another: the
/// replica id takes 4 bits of every cancel key.
pub const MAX_REPLICAS: u8 = 16;
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(60);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_REVOKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_UPSTREAM_PORT: u16 = 5432;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(3600);
pub const DEFAULT_ROLE_PREFIX: &str = "pgwarden_";
pub const DEFAULT_ADMIN_DATABASE: &str = "postgres";
pub const DEFAULT_VAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_VAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_VAULT_MOUNT: &str = "database";
pub const DEFAULT_PREFETCH_MAX_AGE: Duration = Duration::from_secs(300);
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9187";
/// `[log] level` when not given.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Who may ask the admin listener when `[admin] allow` is not given: this host.
pub const DEFAULT_ADMIN_ALLOW: &[&str] = &["127.0.0.0/8", "::1/128"];
/// Admin connections served at once; more are closed unanswered.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 16;
/// How long an admin client has to send its request's headers.
pub const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one admin connection (one request) may take in all.
pub const DEFAULT_ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How often `pgwarden run` audits the database side of the checklist.
pub const DEFAULT_AUDIT_INTERVAL: Duration = Duration::from_secs(3600);
/// The shortest `[audit] interval`: each run issues a credential and reads the catalog.
pub const MIN_AUDIT_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_BACKUP_KEEP_LAST: usize = 7;
pub const DEFAULT_BACKUP_KEEP_DAILY: usize = 14;
pub const DEFAULT_BACKUP_KEEP_WEEKLY: usize = 8;
pub const DEFAULT_BACKUP_KEEP_MONTHLY: usize = 0;
pub const DEFAULT_PG_DUMP: &str = "pg_dump";
pub const DEFAULT_BACKUP_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The client settings a route forwards when it does not list its own
/// (`[[routes]] allowed_parameters`): what PostgreSQL clients send at startup
/// (pgjdbc: `client_encoding`, `DateStyle`, `TimeZone`, `extra_float_digits`,
/// `application_name`; libpq and psql: `application_name`, `client_encoding`,
/// `options`), and user-settable session settings worth giving in `options`.
/// Written as PostgreSQL spells them; compared without regard to case.
pub const DEFAULT_ALLOWED_PARAMETERS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
    "search_path",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "bytea_output",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
];

/// What a bad duration is told (the value itself is never echoed: it may be
/// a secret typed under the wrong key, or set through the environment).
pub const DURATION_HINT: &str = "not a duration: write e.g. \"15s\" or \"1h 30m\"";

/// Parses `"15s"`, `"1h 30m"`, … (humantime).
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    // toml adds the key to the error; humantime's own text quotes the value.
    humantime::parse_duration(&s).map_err(|_| serde::de::Error::custom(DURATION_HINT))
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    #[serde(default = "default_listen_address")]
    pub address: String,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    #[serde(default = "yes")]
    pub require_tls: bool,
    pub allow: Option<Vec<String>>,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(
        default = "default_handshake_timeout",
        deserialize_with = "de_duration"
    )]
    pub handshake_timeout: Duration,
    #[serde(default = "default_keepalive", deserialize_with = "de_duration")]
    pub tcp_keepalive: Duration,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub idle_timeout: Option<Duration>,
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    #[serde(default = "default_max_handshakes_per_address")]
    pub max_handshakes_per_address: usize,
    /// CA certificates that sign client certificates (mTLS; users with
    /// `auth = "cert"` or `"cert+scram"`).
    pub client_ca_file: Option<PathBuf>,
    /// Certificate revocation lists (PEM) for client certificates.
    pub client_crl_file: Option<PathBuf>,
    /// PROXY protocol from load balancers.
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// `[listen] proxy_protocol = { trusted = [...], required = ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocol {
    /// Peers (CIDRs or addresses) whose PROXY header is read and believed.
    pub trusted: Vec<String>,
    /// A trusted peer must send a header.
    #[serde(default)]
    pub required: bool,
}

/// `[peering]`: this replica's id, and the listener other replicas forward
/// cancel requests to (mutual TLS).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peering {
    /// 0 to [`MAX_REPLICAS`] - 1, unique among the replicas.
    pub id: u8,
    /// Where forwarded cancel requests arrive.
    pub address: String,
    /// Who may connect to it; default: `[listen] allow`.
    pub allow: Option<Vec<String>>,
    /// This replica's peer certificate (chain) and key: presented as a server
    /// to replicas that forward, and as a client when forwarding. It needs
    /// both the serverAuth and clientAuth extended key usages.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CA that signs every replica's peer certificate, and nothing else.
    pub ca_file: PathBuf,
}

/// `[[peers]]`: another replica.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub id: u8,
    /// `host:port` of its `[peering] address`.
    pub address: String,
    /// The name its certificate must carry; default: the host of `address`.
    pub server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// CIDRs or addresses; `None`: [`DEFAULT_ADMIN_ALLOW`].
    pub allow: Option<Vec<String>>,
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
    #[serde(
        default = "default_admin_header_timeout",
        deserialize_with = "de_duration"
    )]
    pub header_timeout: Duration,
    #[serde(
        default = "default_admin_request_timeout",
        deserialize_with = "de_duration"
    )]
    pub request_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    #[serde(default)]
    pub format: LogFormat,
    #[serde(default = "default_log_level")]
    pub level: String,
}

/// No `[log]` section: the defaults its keys have (a derived `Default` would
/// give an empty level, which logs nothing but errors).
impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    #[serde(default = "default_grace", deserialize_with = "de_duration")]
    pub grace: Duration,
    #[serde(default = "default_revoke_timeout", deserialize_with = "de_duration")]
    pub revoke_timeout: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            grace: DEFAULT_SHUTDOWN_GRACE,
            revoke_timeout: DEFAULT_REVOKE_TIMEOUT,
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UserAuthMethod {
    #[default]
    Scram,
    Trust,
    /// A verified client certificate that names the user.
    Cert,
    /// Both a client certificate and SCRAM.
    #[serde(rename = "cert+scram")]
    CertScram,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    #[serde(default)]
    pub auth: UserAuthMethod,
    pub scram_verifier: Option<SecretString>,
    pub scram_verifier_file: Option<PathBuf>,
    pub trust_from: Option<Vec<String>>,
    /// Certificate names (subject CN, DNS, email or URI SAN) that stand for
    /// this user; default: the user's name.
    pub cert_names: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    /// Verify the chain and that the certificate names the host.
    #[default]
    VerifyFull,
    /// Verify the chain only.
    VerifyCa,
    /// No TLS at all: only for a database on the same host or pod.
    Disable,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub host: String,
    #[serde(default = "default_upstream_port")]
    pub port: u16,
    pub database: Option<String>,
    #[serde(default)]
    pub tls: UpstreamTls,
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    #[serde(default = "default_connect_timeout", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Accept cleartext or MD5 password requests, or no authentication, from upstream.
    #[serde(default)]
    pub allow_insecure_auth: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub database: String,
    pub users: Vec<String>,
    pub upstream: Upstream,
    pub credentials: String,
    pub session_role: Option<String>,
    /// Settings clients may give; `None`: [`DEFAULT_ALLOWED_PARAMETERS`].
    pub allowed_parameters: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnLeaseEnd {
    #[default]
    RecycleWhenIdle,
    Terminate,
    Keep,
}

/// `[audit]`: the security checklist checked in the background of `pgwarden run`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    #[serde(default = "default_audit_interval", deserialize_with = "de_duration")]
    pub interval: Duration,
    /// A `[credentials.<name>]` source to connect with (an auditor role with
    /// more privilege); default: each route's own source.
    pub credentials: Option<String>,
}

/// `[credentials.<name>]`, by its `source` (validate dispatches on the tag, so
/// that errors inside a source name their key).
#[derive(Debug)]
pub enum Credentials {
    Postgres(PostgresSource),
    Vault(VaultSource),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSource {
    pub admin_user: String,
    pub admin_password: Option<SecretString>,
    pub admin_password_file: Option<PathBuf>,
    #[serde(default = "default_admin_database")]
    pub admin_database: String,
    #[serde(default)]
    pub member_of: Vec<String>,
    #[serde(default = "default_ttl", deserialize_with = "de_duration")]
    pub ttl: Duration,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_ttl: Option<Duration>,
    #[serde(default = "default_role_prefix")]
    pub role_prefix: String,
    #[serde(default)]
    pub prefetch: usize,
    #[serde(default = "default_prefetch_max_age", deserialize_with = "de_duration")]
    pub prefetch_max_age: Duration,
    #[serde(default)]
    pub on_lease_end: OnLeaseEnd,
    #[serde(default = "default_scram_iterations")]
    pub scram_iterations: u32,
}

fn default_scram_iterations() -> u32 {
    crate::auth::verifier::GENERATED_PASSWORD_SCRAM_ITERATIONS
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSource {
    #[serde(default = "default_vault_mount")]
    pub mount: String,
    pub role: String,
    #[serde(default)]
    pub prefetch: usize,
    #[serde(default = "default_prefetch_max_age", deserialize_with = "de_duration")]
    pub prefetch_max_age: Duration,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub renew_increment: Option<Duration>,
    #[serde(default)]
    pub on_lease_end: OnLeaseEnd,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vault {
    pub address: String,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub namespace: Option<String>,
    #[serde(default = "default_vault_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    #[serde(
        default = "default_health_check_interval",
        deserialize_with = "de_duration"
    )]
    pub health_check_interval: Duration,
    /// Allow `http://` to a Vault that is not on a loopback address.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// A [`VaultAuth`] table, dispatched on `method` by validate.
    pub auth: toml::Value,
}

/// `[vault] auth`, by its `method` (dispatched in validate, like [`Credentials`]).
#[derive(Debug)]
pub enum VaultAuth {
    Approle(VaultApprole),
    Kubernetes(VaultKubernetes),
    Token(VaultToken),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultApprole {
    #[serde(default = "default_approle_mount")]
    pub mount: String,
    pub role_id: Option<SecretString>,
    pub role_id_file: Option<PathBuf>,
    pub secret_id_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultKubernetes {
    #[serde(default = "default_kubernetes_mount")]
    pub mount: String,
    pub role: String,
    #[serde(default = "default_jwt_file")]
    pub jwt_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultToken {
    /// A file holding the token; when absent, the `VAULT_TOKEN` environment variable.
    pub token_file: Option<PathBuf>,
}

/// `[backup.<target>]`: what `pgwarden backup --target <target>` dumps, where
/// it writes, for whom it encrypts and how much it keeps.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// A `[[routes]]` `database`: its upstream (and by default its credentials).
    pub route: Option<String>,
    /// The server, when no route names it (the keys of a route's upstream).
    pub upstream: Option<Upstream>,
    /// The `[credentials.<name>]` that issues the dump's login.
    pub credentials: Option<String>,
    /// The database to dump; default: the upstream's.
    pub database: Option<String>,
    /// Where backups are written (a local directory).
    pub directory: PathBuf,
    /// age X25519 recipients (`age1…`): who can decrypt the backups.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// A file of recipients, one a line (`#` comments), as age-keygen -y prints.
    pub recipients_file: Option<PathBuf>,
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    #[serde(default = "default_keep_daily")]
    pub keep_daily: usize,
    #[serde(default = "default_keep_weekly")]
    pub keep_weekly: usize,
    #[serde(default = "default_keep_monthly")]
    pub keep_monthly: usize,
    /// The pg_dump binary: at least the server's major version.
    #[serde(default = "default_pg_dump")]
    pub pg_dump: PathBuf,
    /// pg_dump's `--compress` level, 0 (none) to 9; default: pg_dump's.
    pub compression_level: Option<u8>,
    /// The whole dump must end within this.
    #[serde(default = "default_backup_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// A Prometheus textfile (node exporter's textfile collector), replaced
    /// atomically after every run.
    pub metrics_file: Option<PathBuf>,
    /// A Pushgateway base URL the same metrics are PUT to after every run.
    pub pushgateway: Option<String>,
}

fn default_keep_last() -> usize {
    DEFAULT_BACKUP_KEEP_LAST
}
fn default_keep_daily() -> usize {
    DEFAULT_BACKUP_KEEP_DAILY
}
fn default_keep_weekly() -> usize {
    DEFAULT_BACKUP_KEEP_WEEKLY
}
fn default_keep_monthly() -> usize {
    DEFAULT_BACKUP_KEEP_MONTHLY
}
fn default_pg_dump() -> PathBuf {
    PathBuf::from(DEFAULT_PG_DUMP)
}
fn default_backup_timeout() -> Duration {
    DEFAULT_BACKUP_TIMEOUT
}

fn yes() -> bool {
    true
}
fn default_listen_address() -> String {
    DEFAULT_LISTEN_ADDRESS.to_owned()
}
fn default_admin_address() -> String {
    DEFAULT_ADMIN_ADDRESS.to_owned()
}
fn default_admin_max_connections() -> usize {
    DEFAULT_ADMIN_MAX_CONNECTIONS
}
fn default_admin_header_timeout() -> Duration {
    DEFAULT_ADMIN_HEADER_TIMEOUT
}
fn default_admin_request_timeout() -> Duration {
    DEFAULT_ADMIN_REQUEST_TIMEOUT
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_max_handshakes() -> usize {
    DEFAULT_MAX_HANDSHAKES
}
fn default_max_handshakes_per_address() -> usize {
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS
}
fn default_handshake_timeout() -> Duration {
    DEFAULT_HANDSHAKE_TIMEOUT
}
fn default_keepalive() -> Duration {
    DEFAULT_TCP_KEEPALIVE
}
fn default_log_level() -> String {
    DEFAULT_LOG_LEVEL.to_owned()
}
fn default_grace() -> Duration {
    DEFAULT_SHUTDOWN_GRACE
}
fn default_revoke_timeout() -> Duration {
    DEFAULT_REVOKE_TIMEOUT
}
fn default_upstream_port() -> u16 {
    DEFAULT_UPSTREAM_PORT
}
fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_admin_database() -> String {
    DEFAULT_ADMIN_DATABASE.to_owned()
}
fn default_ttl() -> Duration {
    DEFAULT_CREDENTIAL_TTL
}
fn default_role_prefix() -> String {
    DEFAULT_ROLE_PREFIX.to_owned()
}
fn default_vault_mount() -> String {
    DEFAULT_VAULT_MOUNT.to_owned()
}
fn default_prefetch_max_age() -> Duration {
    DEFAULT_PREFETCH_MAX_AGE
}
fn default_vault_timeout() -> Duration {
    DEFAULT_VAULT_TIMEOUT
}
fn default_health_check_interval() -> Duration {
    DEFAULT_VAULT_HEALTH_CHECK_INTERVAL
}
fn default_audit_interval() -> Duration {
    DEFAULT_AUDIT_INTERVAL
}
fn default_approle_mount() -> String {
    "approle".to_owned()
}
fn default_kubernetes_mount() -> String {
    "kubernetes".to_owned()
}
fn default_jwt_file() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}
