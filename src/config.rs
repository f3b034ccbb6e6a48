//! Configuration: one TOML file, `PGWARDEN_*` overrides, validated all at once.
//!
//! [`load`] turns the file into a [`Config`] whose every value has been checked:
//! addresses parse, CIDRs parse, files exist and hold what they should, routes
//! name known users and credential sources. It reports *every* problem it finds,
//! not just the first. Secrets (verifiers, passwords) are `SecretString`s from
//! here on and never appear in an error message; nor does any text of the file
//! or of an override as TOML or serde would quote it (`report` says where and
//! what instead).

mod env;
pub mod raw;
mod report;
mod same;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use secrecy::SecretString;

use crate::auth::UserAuth;
pub use raw::{LogFormat, OnLeaseEnd, UpstreamTls};

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    pub listen: ListenConfig,
    /// The admin listener (metrics, health), if any.
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
    pub users: Vec<UserConfig>,
    pub routes: Vec<RouteConfig>,
    pub credentials: BTreeMap<String, CredentialsConfig>,
    pub vault: Option<VaultConfig>,
    /// The background audit, when `[audit]` is configured.
    pub audit: Option<AuditConfig>,
    /// `[backup.<target>]`, for `pgwarden backup` (the proxy does not use them).
    pub backup: BTreeMap<String, BackupConfig>,
    /// `[peering]` and `[[peers]]`: cancel requests across replicas.
    pub peering: Option<PeeringConfig>,
}

/// `[peering]` with its `[[peers]]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PeeringConfig {
    /// This replica's id, below [`raw::MAX_REPLICAS`]; it is in every cancel key issued.
    pub id: u8,
    /// Where other replicas forward cancel requests.
    pub address: SocketAddr,
    /// Who may connect there (before a byte is read).
    pub allow: Vec<IpNet>,
    /// This replica's peer certificate and key (server and client).
    pub tls: TlsFiles,
    /// The CA every replica's peer certificate chains to.
    pub ca_file: PathBuf,
    /// The other replicas.
    pub peers: Vec<PeerConfig>,
}

/// One `[[peers]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    pub id: u8,
    /// `host:port`, resolved at each forward (a DNS name may move).
    pub host: String,
    pub port: u16,
    /// The name its certificate must carry.
    pub server_name: String,
}

/// `[audit]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    /// Time between two runs (the first runs at start-up).
    pub interval: Duration,
    /// The credential source the audit connects with; `None`: each route's own.
    pub credentials: Option<String>,
}

/// What `pgwarden backup` reads from a configuration file: [`load_backup`]
/// checks only these sections, so a backup host needs neither the proxy's
/// listener certificate nor its users' verifiers.
#[derive(Debug)]
pub struct BackupFile {
    pub log: LogConfig,
    pub credentials: BTreeMap<String, CredentialsConfig>,
    pub vault: Option<VaultConfig>,
    pub backup: BTreeMap<String, BackupConfig>,
}

/// One `[backup.<target>]`, validated.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// The server and TLS settings (from the named route, or given inline);
    /// `database` is the database dumped.
    pub upstream: UpstreamConfig,
    /// The `[credentials.<name>]` that issues the dump's login.
    pub credentials: String,
    pub directory: PathBuf,
    /// age X25519 recipients, each checked to parse (public keys, no secret).
    pub recipients: Vec<String>,
    pub retention: Retention,
    pub pg_dump: PathBuf,
    pub compression_level: Option<u8>,
    pub timeout: Duration,
    pub metrics_file: Option<PathBuf>,
    pub pushgateway: Option<String>,
}

/// Grandfather-father-son retention: the newest `keep_last`, and the newest
/// backup of each of the last `keep_daily` days, `keep_weekly` ISO weeks and
/// `keep_monthly` months that have one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub keep_last: usize,
    pub keep_daily: usize,
    pub keep_weekly: usize,
    pub keep_monthly: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenConfig {
    pub address: SocketAddr,
    /// Certificate chain and key files; required when `require_tls`.
    pub tls: Option<TlsFiles>,
    pub require_tls: bool,
    /// Peers outside every network here are closed before a byte is read.
    pub allow: Vec<IpNet>,
    pub max_connections: usize,
    /// One deadline for accept → relay.
    pub handshake_timeout: Duration,
    pub tcp_keepalive: Duration,
    pub idle_timeout: Option<Duration>,
    /// Handshakes (accept → authenticated) in progress at once, all addresses.
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one client address.
    pub max_handshakes_per_address: usize,
    /// Client certificates: the CA that signs them and optional CRLs.
    pub client_certs: Option<ClientCertFiles>,
    /// PROXY protocol from trusted load balancers.
    pub proxy_protocol: Option<ProxyProtocolConfig>,
}

/// `[listen] client_ca_file` and `client_crl_file`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCertFiles {
    pub ca_file: PathBuf,
    pub crl_file: Option<PathBuf>,
}

/// `[listen] proxy_protocol`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyProtocolConfig {
    /// Peers whose PROXY header is read and believed.
    pub trusted: Vec<IpNet>,
    /// A trusted peer without a header is refused.
    pub required: bool,
}

/// `[admin]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// Peers outside every network here are closed without an answer.
    pub allow: Vec<IpNet>,
    /// Connections served at once; more are closed unanswered.
    pub max_connections: usize,
    /// How long a client has to send its request's headers.
    pub header_timeout: Duration,
    /// How long a connection (one request: no keep-alive) may take in all.
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShutdownConfig {
    /// How long live sessions may go on after SIGTERM before they are ended.
    pub grace: Duration,
    /// How long outstanding leases get to be revoked at exit.
    pub revoke_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserConfig {
    pub name: String,
    pub auth: UserAuth,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// The database name clients ask for.
    pub database: String,
    /// Users allowed on this route; `*` means every configured user.
    pub users: Vec<String>,
    pub upstream: UpstreamConfig,
    /// Name of the credential source in `[credentials.*]`.
    pub credentials: String,
    /// The role the upstream session runs as, so what it creates is owned by it.
    pub session_role: Option<String>,
    /// Settings a client may give as startup parameters or in `options`,
    /// lowercase (PostgreSQL's setting names are case-insensitive).
    pub allowed_parameters: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub tls: UpstreamTls,
    pub ca_file: Option<PathBuf>,
    /// Name to verify the certificate against; defaults to `host`.
    pub server_name: Option<String>,
    pub connect_timeout: Duration,
    pub allow_insecure_auth: bool,
}

impl UpstreamConfig {
    /// `host:port`, for logs and maps (never a credential).
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CredentialsConfig {
    Postgres(PostgresSourceConfig),
    Vault(VaultSourceConfig),
}

impl CredentialsConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialsConfig::Postgres(_) => "postgres",
            CredentialsConfig::Vault(_) => "vault",
        }
    }

    /// How many credentials are issued ahead (per upstream for the built-in
    /// source), and how long one may wait to be handed out.
    pub fn prefetch(&self) -> (usize, Duration) {
        match self {
            CredentialsConfig::Postgres(p) => (p.prefetch, p.prefetch_max_age),
            CredentialsConfig::Vault(v) => (v.prefetch, v.prefetch_max_age),
        }
    }

    pub fn on_lease_end(&self) -> OnLeaseEnd {
        match self {
            CredentialsConfig::Postgres(p) => p.on_lease_end,
            CredentialsConfig::Vault(v) => v.on_lease_end,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PostgresSourceConfig {
    pub admin_user: String,
    pub admin_password: SecretString,
    pub admin_database: String,
    pub member_of: Vec<String>,
    pub ttl: Duration,
    pub max_ttl: Option<Duration>,
    pub role_prefix: String,
    /// Credentials issued ahead, per upstream (0: none).
    pub prefetch: usize,
    pub prefetch_max_age: Duration,
    pub on_lease_end: OnLeaseEnd,
    /// The SCRAM iteration count of the issued roles' verifiers.
    pub scram_iterations: std::num::NonZeroU32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VaultSourceConfig {
    pub mount: String,
    pub role: String,
    pub prefetch: usize,
    pub prefetch_max_age: Duration,
    pub renew_increment: Option<Duration>,
    pub on_lease_end: OnLeaseEnd,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VaultConfig {
    pub address: String,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub namespace: Option<String>,
    pub timeout: Duration,
    /// How often `sys/health` is probed to keep readiness current.
    pub health_check_interval: Duration,
    pub auth: VaultAuthConfig,
}

#[derive(Debug, Clone)]
pub enum VaultAuthConfig {
    /// The secret id is read from its file at every login (it may be rotated).
    Approle {
        mount: String,
        role_id: SecretString,
        secret_id_file: PathBuf,
    },
    /// The service-account token is read from its file at every login.
    Kubernetes {
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
    Token {
        token: SecretString,
    },
}

/// Every problem found in a configuration, each one line.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads, overrides and validates the configuration at `path`.
///
/// `env` is the process environment (passed in, so tests never mutate it); only
/// `PGWARDEN_*` variables and `VAULT_TOKEN` are looked at.
pub fn load(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![format!(
            "cannot read configuration file {}: {e}",
            path.display()
        )])
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    from_str(&text, base, env)
}

/// Reads the sections `pgwarden backup` needs from the configuration at
/// `path` (`[log]`, `[credentials.*]`, `[vault]`, `[[routes]]`, `[backup.*]`)
/// and validates them as [`load`] would; the proxy's own sections are not
/// checked (unknown sections still are errors).
pub fn load_backup(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BackupFile, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![format!(
            "cannot read configuration file {}: {e}",
            path.display()
        )])
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    backup_from_str(&text, base, None, env)
}

/// Like [`load_backup`], from text (relative paths against `base`, looked up
/// under `root` when given, as [`load_in_root`] does).
pub fn backup_from_str(
    text: &str,
    base: &Path,
    root: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BackupFile, ConfigErrors> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigErrors(vec![report::syntax(text, &e)]))?;
    let env: Vec<(String, String)> = env.into_iter().collect();
    let mut errors = Vec::new();
    let overrides = env::apply_overrides(&mut table, &env, &mut errors);
    let vault_token_env = env
        .iter()
        .find(|(k, _)| k == "VAULT_TOKEN")
        .map(|(_, v)| SecretString::from(v.clone()));
    let file =
        validate::validate_backup(table, base, root, vault_token_env, &overrides, &mut errors);
    match file {
        Some(f) if errors.is_empty() => Ok(f),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Like [`load`], for a configuration as another file system will show it — a
/// container image, a host where systemd lays out credentials — so deployment
/// files can be checked where they are written.
///
/// `path` and every path in the file are first resolved as pgwarden would
/// resolve them there (relative ones against the file's directory), then looked
/// up under `root`: `/etc/pgwarden/tls/server.crt` is read from
/// `<root>/etc/pgwarden/tls/server.crt`. Every check [`load`] makes is made, on
/// those files. The paths in the result are the looked-up ones, so it is for
/// inspection, not for running. `root` is a lookup prefix, not a security
/// boundary (`..` is not confined).
pub fn load_in_root(
    root: &Path,
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    let real = under_root(root, path);
    let text = std::fs::read_to_string(&real).map_err(|e| {
        ConfigErrors(vec![format!(
            "cannot read configuration file {} (as {}): {e}",
            path.display(),
            real.display()
        )])
    })?;
    let base = path.parent().unwrap_or(Path::new("/"));
    parse(&text, base, Some(root), env)
}

/// `path` looked up under `root` (absolute paths lose their leading `/`).
fn under_root(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Like [`load`], from text; relative paths in it are resolved against `base`.
pub fn from_str(
    text: &str,
    base: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    parse(text, base, None, env)
}

fn parse(
    text: &str,
    base: &Path,
    root: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigErrors(vec![report::syntax(text, &e)]))?;
    let env: Vec<(String, String)> = env.into_iter().collect();
    let mut errors = Vec::new();
    let overrides = env::apply_overrides(&mut table, &env, &mut errors);
    let vault_token_env = env
        .iter()
        .find(|(k, _)| k == "VAULT_TOKEN")
        .map(|(_, v)| SecretString::from(v.clone()));
    let config = validate::validate(table, base, root, vault_token_env, &overrides, &mut errors);
    match config {
        Some(c) if errors.is_empty() => Ok(c),
        _ => Err(ConfigErrors(errors)),
    }
}
