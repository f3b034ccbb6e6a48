//! `pgwarden dev`: the whole product on one machine, with nothing to set up.
//!
//! Starts a throwaway PostgreSQL cluster (TLS, SCRAM, its own CA), prepares it
//! the way a Keycloak deployment would be (a NOLOGIN owner role, a database it
//! owns, an admin role that may only create roles; the owner role may signal
//! other backends, as sessions of one shared user could), writes a
//! configuration that uses the built-in `postgres` credential source, and runs pgwarden on
//! 127.0.0.1 with TLS required. It prints a libpq URI and a JDBC URL that work
//! as printed, reloads its configuration file on SIGHUP like `pgwarden run`,
//! and removes everything on Ctrl-C or SIGTERM.
//!
//! The dev client password is printed on purpose (it is the point of the
//! output); it belongs to a cluster that disappears when `dev` ends.

pub mod install;

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use crate::auth::ScramVerifier;
use crate::auth::verifier::{GENERATED_PASSWORD_LEN, generate_password};
use crate::credentials::postgres::{quote_ident, quote_literal};
use crate::embedded::cluster::{Cluster, ClusterOptions};
use crate::embedded::pki::Pki;

/// Names used by the dev environment (and by tests that mirror it).
pub const CLIENT_USER: &str = "keycloak";
pub const DATABASE: &str = "keycloak";
pub const OWNER_ROLE: &str = "keycloak_owner";
pub const ADMIN_ROLE: &str = "pgwarden_admin";

/// A prepared cluster plus the files a pgwarden configuration points at.
pub struct DevEnvironment {
    pub cluster: Cluster,
    pub pki: std::sync::Arc<Pki>,
    /// Holds certificates, secrets and the configuration; removed on drop.
    pub dir: tempfile::TempDir,
    pub ca_path: PathBuf,
    pub config_path: PathBuf,
    /// The password clients use to log in to pgwarden.
    pub client_password: SecretString,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DevError(pub String);

impl DevEnvironment {
    /// Starts and prepares a cluster, and writes a configuration for pgwarden
    /// listening on `127.0.0.1:port`.
    pub async fn create(port: u16) -> Result<DevEnvironment, DevError> {
        Self::create_with(port, None).await
    }

    /// [`DevEnvironment::create`] with the PostgreSQL programs in `bindir`
    /// (default: found on this machine).
    pub async fn create_with(
        port: u16,
        bindir: Option<PathBuf>,
    ) -> Result<DevEnvironment, DevError> {
        let pki = std::sync::Arc::new(
            Pki::new("pgwarden dev CA")
                .map_err(|e| DevError(format!("creating the dev CA: {e}")))?,
        );
        let cluster = Cluster::start(ClusterOptions {
            pki: Some(pki.clone()),
            bindir,
            ..ClusterOptions::default()
        })
        .await
        .map_err(|e| DevError(format!("starting PostgreSQL: {e}")))?;
        let admin_password = prepare_cluster(&cluster).await?;

        let dir = tempfile::Builder::new()
            .prefix("pgwarden-dev-")
            .tempdir()
            .map_err(|e| DevError(format!("creating a directory for the dev files: {e}")))?;
        let path = |name: &str| dir.path().join(name);
        let listener = pki
            .issue_server(&["localhost", "127.0.0.1", "::1"])
            .map_err(|e| DevError(format!("issuing the listener certificate: {e}")))?;
        write(&path("ca.crt"), pki.ca_cert_pem())?;
        write(&path("server.crt"), &listener.cert_pem)?;
        write_secret(&path("server.key"), listener.key_pem.expose_secret())?;
        write_secret(&path("admin_password"), admin_password.expose_secret())?;
        let client_password = generate_password(GENERATED_PASSWORD_LEN);
        let verifier = ScramVerifier::from_password(&client_password).to_text();
        write_secret(&path("client.verifier"), verifier.expose_secret())?;
        let config = format!(
            r#"# Written by `pgwarden dev`: a throwaway cluster and the built-in credential source.
[listen]
address = "127.0.0.1:{port}"
tls_cert_file = "server.crt"
tls_key_file = "server.key"
require_tls = true
allow = ["127.0.0.0/8", "::1/128"]
max_connections = 100

[admin]
address = "127.0.0.1:0"

[[users]]
name = "{CLIENT_USER}"
scram_verifier_file = "client.verifier"

[[routes]]
database = "{DATABASE}"
users = ["{CLIENT_USER}"]
upstream = {{ host = "127.0.0.1", port = {pg_port}, database = "{DATABASE}", tls = "verify-full", ca_file = "ca.crt" }}
credentials = "dev"
session_role = "{OWNER_ROLE}"

[credentials.dev]
source = "postgres"
admin_user = "{ADMIN_ROLE}"
admin_password_file = "admin_password"
member_of = ["{OWNER_ROLE}"]
ttl = "1h"
"#,
            pg_port = cluster.port(),
        );
        write(&path("pgwarden.toml"), &config)?;
        Ok(DevEnvironment {
            ca_path: path("ca.crt"),
            config_path: path("pgwarden.toml"),
            cluster,
            pki,
            dir,
            client_password,
        })
    }

    /// A libpq URI for `psql`, verify-full against the dev CA.
    pub fn libpq_uri(&self, port: u16) -> String {
        format!(
            "postgresql://{CLIENT_USER}:{}@127.0.0.1:{port}/{DATABASE}?sslmode=verify-full&sslrootcert={}",
            self.client_password.expose_secret(),
            self.ca_path.display()
        )
    }

    /// A JDBC URL for pgjdbc (and so Keycloak's `KC_DB_URL`).
    pub fn jdbc_url(&self, port: u16) -> String {
        format!(
            "jdbc:postgresql://127.0.0.1:{port}/{DATABASE}?user={CLIENT_USER}&password={}&sslmode=verify-full&sslrootcert={}",
            self.client_password.expose_secret(),
            self.ca_path.display()
        )
    }
}

/// Creates the Keycloak-shaped roles and database; returns the admin password.
pub async fn prepare_cluster(cluster: &Cluster) -> Result<SecretString, DevError> {
    let admin_password = generate_password(GENERATED_PASSWORD_LEN);
    let verifier = ScramVerifier::from_password(&admin_password).to_text();
    let client = cluster
        .connect("postgres")
        .await
        .map_err(|e| DevError(format!("connecting to the dev cluster: {e}")))?;
    let statements = [
        format!("CREATE ROLE {} NOLOGIN", quote_ident(OWNER_ROLE)),
        format!(
            "CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}",
            quote_ident(ADMIN_ROLE),
            quote_literal(verifier.expose_secret())
        ),
        format!(
            "GRANT {} TO {} WITH ADMIN OPTION",
            quote_ident(OWNER_ROLE),
            quote_ident(ADMIN_ROLE)
        ),
        // Its CREATE ROLE statements carry SCRAM verifiers: never in the server log,
        // whatever log_statement the cluster runs with.
        format!(
            "ALTER ROLE {} SET log_statement = 'none'",
            quote_ident(ADMIN_ROLE)
        ),
        format!(
            "ALTER ROLE {} SET log_min_error_statement = 'panic'",
            quote_ident(ADMIN_ROLE)
        ),
        // Each session logs in as a role of its own acting as the owner role, so
        // signalling a sibling session (pg_cancel_backend, pg_terminate_backend)
        // needs pg_signal_backend: with one shared login role it would not.
        // It lets members signal any backend but a superuser's.
        format!("GRANT pg_signal_backend TO {}", quote_ident(OWNER_ROLE)),
        // CREATE DATABASE cannot share a transaction with anything else.
        format!(
            "CREATE DATABASE {} OWNER {}",
            quote_ident(DATABASE),
            quote_ident(OWNER_ROLE)
        ),
    ];
    for sql in &statements {
        client.batch_execute(sql).await.map_err(|e| {
            DevError(format!(
                "preparing the dev cluster: {}",
                e.as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| e.to_string())
            ))
        })?;
    }
    Ok(admin_password)
}

fn write(path: &Path, text: &str) -> Result<(), DevError> {
    std::fs::write(path, text).map_err(|e| DevError(format!("writing {}: {e}", path.display())))
}

fn write_secret(path: &Path, text: &str) -> Result<(), DevError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| DevError(format!("writing {}: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(|e| DevError(format!("writing {}: {e}", path.display())))
}

/// Makes sure PostgreSQL's server programs are there (see [`install`]);
/// `Err` with the exit code when they are not and cannot be had.
async fn server_programs(postgres_bin: Option<&Path>) -> Result<(), i32> {
    use crate::embedded::cluster::server_bindir;
    match (server_bindir(postgres_bin), postgres_bin) {
        (Ok(_), _) => return Ok(()),
        (Err(e), Some(dir)) => {
            eprintln!(
                "pgwarden dev: --postgres-bin {}: {e}: it must hold initdb, pg_ctl and postgres",
                dir.display()
            );
            return Err(crate::cli::exit::USAGE);
        }
        (Err(_), None) => {}
    }
    let plan = install::plan(&install::Host::detect());
    eprintln!("pgwarden dev: {}", install::explain(&plan));
    let install::Plan::Install(steps) = plan else {
        return Err(crate::cli::exit::UNAVAILABLE);
    };
    if let Err(e) = install::run(&steps).await {
        eprintln!("pgwarden dev: {e}");
        return Err(crate::cli::exit::UNAVAILABLE);
    }
    if let Err(e) = server_bindir(None) {
        eprintln!("pgwarden dev: installed, but still no server programs: {e}");
        return Err(crate::cli::exit::UNAVAILABLE);
    }
    Ok(())
}

/// `pgwarden dev`: on `port`, with PostgreSQL's programs from `postgres_bin`
/// (default: found on this machine, installed if need be and possible).
pub async fn run(port: u16, postgres_bin: Option<PathBuf>) -> i32 {
    crate::logging::init(crate::config::LogFormat::Text, "info");
    if let Err(code) = server_programs(postgres_bin.as_deref()).await {
        return code;
    }
    eprintln!("pgwarden dev: starting a throwaway PostgreSQL cluster …");
    let env = match DevEnvironment::create_with(port, postgres_bin).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("pgwarden dev: {e}");
            return 1;
        }
    };
    let config = match crate::config::load(&env.config_path, std::iter::empty()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgwarden dev: the generated configuration is invalid:\n{e}");
            return 1;
        }
    };
    let signals = match crate::daemon::Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pgwarden dev: cannot listen for signals: {e}");
            return 1;
        }
    };
    let server = match crate::server::Server::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pgwarden dev: {e}");
            return 1;
        }
    };
    let port = server.addr.port();
    println!(
        "pgwarden is listening on 127.0.0.1:{port}; a throwaway PostgreSQL runs on 127.0.0.1:{}.",
        env.cluster.port()
    );
    println!("Each connection logs in to PostgreSQL as a role created for it alone.");
    println!();
    println!("  psql \"{}\"", env.libpq_uri(port));
    println!();
    println!("{}", env.libpq_uri(port));
    println!("{}", env.jdbc_url(port));
    println!();
    if let Some(admin) = server.admin_addr {
        println!("Metrics: http://{admin}/metrics   Readiness: http://{admin}/readyz");
    }
    println!(
        "Configuration: {}   (Ctrl-C to stop and remove everything)",
        env.config_path.display()
    );
    println!(
        "Edit it and send SIGHUP (kill -HUP {}) to reload it live.",
        std::process::id()
    );
    let source = crate::daemon::ConfigSource {
        path: env.config_path.clone(),
    };
    let unrevoked = crate::daemon::supervise(server, source, signals).await;
    let DevEnvironment { cluster, dir, .. } = env;
    if let Err(e) = cluster.stop().await {
        eprintln!("pgwarden dev: stopping PostgreSQL: {e}");
    }
    drop(dir);
    eprintln!(
        "pgwarden dev: stopped and cleaned up{}.",
        if unrevoked > 0 {
            " (some roles were not dropped; the cluster is gone anyway)"
        } else {
            ""
        }
    );
    0
}
