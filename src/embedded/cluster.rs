//! A throwaway PostgreSQL cluster in a temporary directory, for `pgwarden dev` and the tests.
//!
//! [`Cluster::start`] copies a cached initdb template (see `template`), gives the server a
//! certificate from a [`Pki`], listens only on 127.0.0.1 with TLS and SCRAM-SHA-256 required by
//! `pg_hba.conf`, waits for readiness through `pg_ctl -w`, and replaces the template's superuser
//! password with a fresh random one. [`Cluster::stop`] (or dropping the cluster) shuts the server
//! down and deletes everything.
//!
//! Everything lives under `$TMPDIR` (default `/tmp`). A data directory is about a thousand files,
//! so on disks where creating a file is slow, a `TMPDIR` on tmpfs makes start-up several times
//! faster.
//!
//! This module must never run PostgreSQL as root, never listen beyond loopback, never accept a
//! connection without TLS, and never put a password into a file that outlives the cluster (the
//! template's own password is replaced before [`Cluster::start`] returns), a log or an error.

mod conf;
mod error;
mod system;
mod template;

pub use self::error::ClusterError;

/// Our effective uid.
pub(crate) fn effective_uid() -> Result<u32, ClusterError> {
    system::effective_ids().map(|(uid, _)| uid)
}

/// The directory of the PostgreSQL server programs a cluster would use:
/// `explicit` if given (and complete), else the ones found on this machine.
pub(crate) fn server_bindir(explicit: Option<&Path>) -> Result<PathBuf, ClusterError> {
    Binaries::discover(explicit).map(|b| b.bindir)
}

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use rand::TryRngCore;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};
use tempfile::TempDir;

use self::conf::{hba_conf, quote_ident, settings_conf, validate};
use self::system::{
    Binaries, DbUser, free_port, output_tail, run_async, set_mode, tail, write_new,
};
use super::pki::Pki;
use crate::tls::pg_connector::{RustlsConnect, verify_full_client_config};

/// The only address the cluster listens on.
const HOST: &str = "127.0.0.1";
/// How long `pg_ctl` may wait for the server to start or stop (seconds, as pg_ctl takes it).
const PG_CTL_WAIT_SECS: &str = "120";
/// How many fresh ports to try when the one we picked was taken before the server bound it.
const PORT_ATTEMPTS: usize = 5;
/// Random bytes in a generated password (base64: 4 characters per 3 bytes, so 40 characters).
const PASSWORD_BYTES: usize = 30;
/// Deadline for connecting to the cluster, generous for loaded CI machines.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// What to start; `Default` gives a TLS + SCRAM cluster for loopback clients.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Directory with initdb, pg_ctl and postgres; default: discovered.
    pub bindir: Option<PathBuf>,
    /// Name of the bootstrap superuser.
    pub superuser: String,
    /// `pg_hba.conf` lines; default: `hostssl all all` from 127.0.0.1/32 and ::1/128 with
    /// scram-sha-256. A `hostssl all <superuser> 127.0.0.1/32 scram-sha-256` line always comes
    /// first so that [`Cluster::connect`] works whatever the lines say.
    pub hba: Option<Vec<String>>,
    /// Extra `postgresql.conf` settings, written as `name = 'value'` (the value is quoted for
    /// you); they override the cluster's own.
    pub settings: Vec<(String, String)>,
    /// CA that signs the server certificate; default: a fresh one.
    pub pki: Option<Arc<Pki>>,
    /// Names (DNS or IP) in the server certificate.
    pub server_names: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            bindir: None,
            superuser: "postgres".to_owned(),
            hba: None,
            settings: Vec::new(),
            pki: None,
            server_names: ["localhost", "127.0.0.1", "::1"]
                .map(str::to_owned)
                .to_vec(),
        }
    }
}

/// A running throwaway cluster; stopped and deleted by [`Cluster::stop`], or on drop by
/// `pg_ctl stop -m immediate` (blocking the dropping thread for a fraction of a second).
pub struct Cluster {
    port: u16,
    superuser: String,
    /// Replaced once, in `start`, when the template's password is rotated.
    password: SecretString,
    ca_pem: String,
    ca_path: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    /// verify-full against our CA, built once for every `connect`.
    tls: Arc<rustls::ClientConfig>,
    /// The server and its directory; dropping it stops the one and deletes the other.
    running: Running,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("port", &self.port)
            .field("superuser", &self.superuser)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Start a fresh cluster; returns once it accepts connections with a fresh password.
    pub async fn start(opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        validate(&opts)?;
        let started = Instant::now();
        let prepared = tokio::task::spawn_blocking(move || prepare(opts)).await??;
        let prepared_at = started.elapsed();
        let port = prepared.launch().await?;
        let Prepared {
            superuser,
            password,
            ca_pem,
            tls,
            running,
        } = prepared;
        let mut cluster = Cluster {
            port,
            superuser,
            password,
            ca_path: running.ca_path.clone(),
            data_dir: running.server.data_dir.clone(),
            log_path: running.log_path.clone(),
            ca_pem,
            tls,
            running,
        };
        // From here on, an error drops `cluster` (and `Running`), which stops the server.
        cluster.rotate_password().await?;
        tracing::debug!(
            port,
            prepare_ms = prepared_at.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "embedded cluster started"
        );
        Ok(cluster)
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    /// Random, 40 characters, from the OS CSPRNG; the server only has its SCRAM verifier.
    pub fn superuser_password(&self) -> &SecretString {
        &self.password
    }

    /// The CA that signed the server certificate, PEM.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A world-readable file holding [`Cluster::ca_cert_pem`], e.g. for libpq's `sslrootcert`.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_path
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log (stderr, written through `pg_ctl -l`).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The server log so far (empty if unreadable).
    pub fn server_log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// A superuser connection to `database` over TLS verify-full with SCRAM-SHA-256-PLUS
    /// (channel binding required). The connection task is spawned on the current runtime.
    pub async fn connect(&self, database: &str) -> Result<tokio_postgres::Client, ClusterError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(HOST)
            .port(self.port)
            .user(&self.superuser)
            .password(self.password.expose_secret())
            .dbname(database)
            .application_name("pgwarden-embedded")
            .ssl_mode(tokio_postgres::config::SslMode::Require)
            .channel_binding(tokio_postgres::config::ChannelBinding::Require)
            .connect_timeout(CONNECT_TIMEOUT);
        let tls = RustlsConnect::new(Arc::clone(&self.tls));
        let (client, connection) =
            config
                .connect(tls)
                .await
                .map_err(|error| ClusterError::Connect {
                    port: self.port,
                    error,
                })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "embedded cluster connection ended");
            }
        });
        Ok(client)
    }

    /// Stop the server (`pg_ctl stop -m fast`) and delete its directory.
    pub async fn stop(self) -> Result<(), ClusterError> {
        let mut running = self.running;
        let stopped = running.server.stop_fast().await;
        if stopped.is_err() {
            running.server.stop_immediate_async().await;
        }
        if let Some(dir) = running.dir.take() {
            tokio::task::spawn_blocking(move || {
                let path = dir.path().to_path_buf();
                dir.close()
                    .map_err(ClusterError::io(format!("remove {}", path.display())))
            })
            .await??;
        }
        stopped
    }

    /// Start with the template's password and replace it: the new one reaches the server only
    /// as a SCRAM verifier, and not even that reaches the server log, whatever
    /// `log_statement` the cluster runs with.
    async fn rotate_password(&mut self) -> Result<(), ClusterError> {
        let fresh = random_password()?;
        let verifier = postgres_protocol::password::scram_sha_256(fresh.expose_secret().as_bytes());
        let client = self.connect("postgres").await?;
        // A query string is logged as it arrives, before any SET in it runs: a batch of its own.
        client
            .batch_execute("SET log_statement = 'none'; SET log_min_error_statement = 'panic'")
            .await
            .map_err(ClusterError::SetPassword)?;
        let sql = format!(
            "ALTER ROLE {} PASSWORD '{verifier}'",
            quote_ident(&self.superuser)
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(ClusterError::SetPassword)?;
        self.password = fresh;
        Ok(())
    }
}

/// Everything `start` needs before the server runs.
struct Prepared {
    superuser: String,
    password: SecretString,
    ca_pem: String,
    tls: Arc<rustls::ClientConfig>,
    running: Running,
}

/// A started (or about to start) server and the directory it lives in.
///
/// Dropping it (with the [`Cluster`], or with a `start` that failed or was cancelled half-way)
/// stops the server if it runs and then deletes the directory.
struct Running {
    server: Server,
    log_path: PathBuf,
    ca_path: PathBuf,
    /// Removes the directory when dropped; `None` once `Cluster::stop` removed it.
    dir: Option<TempDir>,
}

impl Drop for Running {
    /// Blocking (`pg_ctl stop -m immediate`, a fraction of a second); never panics.
    fn drop(&mut self) {
        self.server.stop_immediate();
        // Only now, with the server down, may the directory go.
        drop(self.dir.take());
    }
}

/// What it takes to run `pg_ctl` against the data directory.
#[derive(Clone)]
struct Server {
    pg_ctl: PathBuf,
    user: DbUser,
    data_dir: PathBuf,
}

/// Blocking: find binaries, copy the template, write certificates and configuration.
fn prepare(opts: ClusterOptions) -> Result<Prepared, ClusterError> {
    let bins = Binaries::discover(opts.bindir.as_deref())?;
    let user = DbUser::detect()?;
    let template = template::ensure(&bins, &opts.superuser, &user)?;

    let dir = tempfile::Builder::new()
        .prefix("pgwarden-cluster-")
        .tempdir()
        .map_err(ClusterError::io("create a temporary directory"))?;
    // The db user writes the log here; anyone may read the CA copy.
    set_mode(dir.path(), 0o755)?;
    user.own(dir.path())?;
    let data_dir = dir.path().join("data");
    user.copy_tree(&template.data_dir, &data_dir)?;

    let pki = match opts.pki {
        Some(pki) => pki,
        None => Arc::new(Pki::new("pgwarden embedded cluster CA")?),
    };
    let names: Vec<&str> = opts.server_names.iter().map(String::as_str).collect();
    let server = pki.issue_server(&names)?;
    let ca_pem = pki.ca_cert_pem().to_owned();
    let data_files: [(&str, &[u8], u32); 3] = [
        ("server.crt", server.cert_pem.as_bytes(), 0o644),
        // PostgreSQL refuses a key that others can read.
        (
            "server.key",
            server.key_pem.expose_secret().as_bytes(),
            0o600,
        ),
        ("ca.crt", ca_pem.as_bytes(), 0o644),
    ];
    for (name, contents, mode) in data_files {
        let path = data_dir.join(name);
        write_new(&path, contents, mode)?;
        user.own(&path)?;
    }
    let ca_path = dir.path().join("ca.pem");
    write_new(&ca_path, ca_pem.as_bytes(), 0o644)?;
    let hba_path = data_dir.join("pg_hba.conf");
    fs::write(&hba_path, hba_conf(&opts.superuser, opts.hba.as_deref()))
        .map_err(ClusterError::io(format!("write {}", hba_path.display())))?;
    let conf_path = data_dir.join("postgresql.conf");
    let mut conf = fs::read_to_string(&conf_path)
        .map_err(ClusterError::io(format!("read {}", conf_path.display())))?;
    conf.push_str(&settings_conf(&opts.settings));
    fs::write(&conf_path, conf)
        .map_err(ClusterError::io(format!("write {}", conf_path.display())))?;

    let tls = verify_full_client_config(ca_pem.as_bytes())?;
    Ok(Prepared {
        superuser: opts.superuser,
        password: template.password,
        ca_pem,
        tls,
        running: Running {
            server: Server {
                pg_ctl: bins.pg_ctl,
                user,
                data_dir,
            },
            log_path: dir.path().join("server.log"),
            ca_path,
            dir: Some(dir),
        },
    })
}

impl Prepared {
    /// Start the server on a free port, retrying with another port if ours was taken meanwhile.
    async fn launch(&self) -> Result<u16, ClusterError> {
        let (server, log_path) = (&self.running.server, &self.running.log_path);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let log_before = fs::metadata(log_path).map_or(0, |m| m.len() as usize);
            let mut cmd = server.user.command(&server.pg_ctl);
            cmd.arg("start")
                .arg("-D")
                .arg(&server.data_dir)
                .arg("-l")
                .arg(log_path)
                .args(["-w", "-t", PG_CTL_WAIT_SECS, "-o", &format!("-p {port}")]);
            let out = run_async(cmd).await?;
            if out.status.success() {
                return Ok(port);
            }
            let log = fs::read(log_path).unwrap_or_default();
            let log = String::from_utf8_lossy(log.get(log_before..).unwrap_or_default());
            // A timed-out start may have left a postmaster behind.
            server.stop_immediate_async().await;
            if log.contains("Address already in use") && attempt < PORT_ATTEMPTS {
                tracing::debug!(
                    port,
                    attempt,
                    "port taken before the server bound it; retrying"
                );
                continue;
            }
            return Err(ClusterError::Start {
                reason: format!("pg_ctl start failed ({}) on port {port}", out.status),
                pg_ctl: output_tail(&out),
                log: tail(&log),
            });
        }
    }
}

impl Server {
    async fn stop_fast(&self) -> Result<(), ClusterError> {
        let mut cmd = self.user.command(&self.pg_ctl);
        cmd.arg("stop").arg("-D").arg(&self.data_dir).args([
            "-m",
            "fast",
            "-w",
            "-t",
            PG_CTL_WAIT_SECS,
        ]);
        let out = run_async(cmd).await?;
        if out.status.success() || !self.data_dir.join("postmaster.pid").exists() {
            return Ok(());
        }
        Err(ClusterError::Command {
            program: "pg_ctl stop".to_owned(),
            status: out.status,
            output: output_tail(&out),
        })
    }

    /// [`Server::stop_immediate`] on a blocking thread.
    async fn stop_immediate_async(&self) {
        let server = self.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || server.stop_immediate()).await {
            tracing::warn!(%error, "stopping the server failed");
        }
    }

    /// Blocking, best effort, never panics: `pg_ctl stop -m immediate`, then SIGKILL to the
    /// postmaster if it is still there.
    fn stop_immediate(&self) {
        let pid_file = self.data_dir.join("postmaster.pid");
        if !pid_file.exists() {
            return;
        }
        let mut cmd = self.user.command(&self.pg_ctl);
        cmd.arg("stop").arg("-D").arg(&self.data_dir).args([
            "-m",
            "immediate",
            "-w",
            "-t",
            PG_CTL_WAIT_SECS,
        ]);
        match cmd.output() {
            Ok(out) if out.status.success() => return,
            Ok(out) => {
                tracing::warn!(output = %output_tail(&out), "pg_ctl stop -m immediate failed")
            }
            Err(error) => tracing::warn!(%error, "could not run pg_ctl stop"),
        }
        let pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok());
        if let Some(pid) = pid {
            let mut kill = self.user.command(&self.pg_ctl);
            kill.args(["kill", "KILL", &pid.to_string()]);
            if let Err(error) = kill.output() {
                tracing::warn!(%error, pid, "could not kill the postmaster");
            }
        }
    }
}

/// A 40-character password from the operating system's CSPRNG.
pub(crate) fn random_password() -> Result<SecretString, ClusterError> {
    use base64::Engine;
    let mut bytes = [0u8; PASSWORD_BYTES];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| ClusterError::Random(e.to_string()))?;
    let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    bytes.fill(0);
    Ok(SecretString::from(password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_and_distinct() {
        let a = random_password().unwrap();
        let b = random_password().unwrap();
        assert_eq!(a.expose_secret().len(), 40);
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
