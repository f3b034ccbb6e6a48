//! The harness's OpenBao wiring: a real server (`openbao.rs`) configured by the shipped
//! `config/vault/setup.sh`, run unchanged with `vault` resolving to `bao`, against a cluster
//! `bootstrap.sql` prepared; then pgwarden configured with the AppRole files `setup.sh`
//! wrote, one credential source per shipped role.
//!
//! It must never print a secret: the root token, `vault_admin`'s password and the secret id
//! are only handed to the processes that need them (the password through the file
//! `setup.sh` reads), and [`OpenBaoSetup::secrets`] lists them for the log checks.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pgwarden::embedded::cluster::Cluster;
use secrecy::{ExposeSecret, SecretString};

use super::harness::GENEROUS;
use super::openbao::OpenBao;
use super::shipped::{self, APP_ROLE, MIGRATE_ROLE};

/// The database name that routes to the `keycloak-migrate` credential source (the `keycloak`
/// database, upstream); `keycloak` itself routes to the steady role.
pub const MIGRATE_DATABASE: &str = "keycloak_migrate";

/// What to change after `setup.sh`, through `vault write` as an operator would; the
/// lifetimes are constants in the script.
#[derive(Debug, Clone, Default)]
pub struct OpenBaoOptions {
    /// Both roles' `default_ttl` and `max_ttl`; `None`: setup.sh's (1 h, 24 h).
    pub lease_ttl: Option<(Duration, Duration)>,
    /// Also set up Kubernetes auth for this `namespace/name` service account (and the
    /// backup's `namespace/pgwarden-backup`), as `PGWARDEN_K8S_SERVICE_ACCOUNT` asks.
    pub kubernetes_account: Option<String>,
}

/// A server set up by `setup.sh`.
pub struct OpenBaoSetup {
    pub bao: OpenBao,
    /// Where `setup.sh` wrote `role_id` and `secret_id`.
    approle_dir: PathBuf,
    /// What `setup.sh` printed (stdout and stderr), for the tests' checks.
    pub setup_output: String,
}

impl OpenBaoSetup {
    /// Starts OpenBao and runs `setup.sh` against it and `cluster` (already bootstrapped;
    /// `admin_password` is `vault_admin`'s); writes its files under `dir`.
    pub async fn start(
        opts: &OpenBaoOptions,
        cluster: &Cluster,
        admin_password: &SecretString,
        dir: &Path,
    ) -> OpenBaoSetup {
        let bao = OpenBao::start().await;
        let password_file = dir.join("vault_admin_password");
        write_private(&password_file, admin_password.expose_secret());
        let approle_dir = dir.join("approle");
        let setup_output = run_setup(
            &bao,
            cluster,
            &password_file,
            &approle_dir,
            opts.kubernetes_account.as_deref(),
        )
        .await;
        if let Some((ttl, max)) = opts.lease_ttl {
            for role in [MIGRATE_ROLE, APP_ROLE] {
                let (ttl, max) = (
                    format!("default_ttl={}s", ttl.as_secs()),
                    format!("max_ttl={}s", max.as_secs()),
                );
                bao.cli(&["write", &format!("database/roles/{role}"), &ttl, &max])
                    .await;
            }
        }
        OpenBaoSetup {
            bao,
            approle_dir,
            setup_output,
        }
    }

    /// The `[vault]` section and the two credential sources, `test` (the steady role, for
    /// the harness's routes) and `migrate` (with its route for [`MIGRATE_DATABASE`]).
    pub fn config(&self, pg_port: u16) -> String {
        let mut t = format!(
            "[vault]\naddress = {:?}\nca_file = {:?}\ntimeout = \"5s\"\nhealth_check_interval = \"500ms\"\n\
             auth = {{ method = \"approle\", role_id_file = {:?}, secret_id_file = {:?} }}\n\n",
            self.bao.url(),
            self.bao.ca_path().display().to_string(),
            self.approle_dir.join("role_id").display().to_string(),
            self.approle_dir.join("secret_id").display().to_string(),
        );
        for (name, role) in [("test", APP_ROLE), ("migrate", MIGRATE_ROLE)] {
            t += &format!(
                "[credentials.{name}]\nsource = \"vault\"\nmount = \"database\"\nrole = {role:?}\n\n"
            );
        }
        t += &format!(
            "[[routes]]\ndatabase = {MIGRATE_DATABASE:?}\nusers = [\"*\"]\n\
             upstream = {{ host = \"127.0.0.1\", port = {pg_port}, database = \"keycloak\", tls = \"verify-full\", ca_file = \"ca.crt\" }}\n\
             credentials = \"migrate\"\n\n"
        );
        t
    }

    /// The AppRole's role id and secret id as `setup.sh` wrote them.
    pub fn approle(&self) -> (String, SecretString) {
        let read = |name: &str| {
            std::fs::read_to_string(self.approle_dir.join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        (read("role_id"), SecretString::from(read("secret_id")))
    }

    /// Secrets of this setup no log line may hold: the root token and the secret id.
    pub fn secrets(&self) -> Vec<String> {
        vec![
            self.bao.root_token().expose_secret().to_owned(),
            self.approle().1.expose_secret().to_owned(),
        ]
    }
}

/// Runs `sh config/vault/setup.sh` with the interface's variables, `vault` first on PATH
/// being bao; panics unless it succeeds. Returns what it printed.
async fn run_setup(
    bao: &OpenBao,
    cluster: &Cluster,
    password_file: &Path,
    out: &Path,
    kubernetes_account: Option<&str>,
) -> String {
    let path = format!(
        "{}:{}",
        bao.cli_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg(shipped::config_dir().join("setup.sh"))
        .env_clear()
        .env("PATH", path)
        .envs(bao.cli_env())
        .env("PGWARDEN_DB_HOST", cluster.host())
        .env("PGWARDEN_DB_PORT", cluster.port().to_string())
        .env("PGWARDEN_DB_ADMIN_PASSWORD_FILE", password_file)
        .env("PGWARDEN_DB_CA_FILE", cluster.ca_cert_path())
        .env("PGWARDEN_APPROLE_OUT_DIR", out)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(account) = kubernetes_account {
        let namespace = account.split('/').next().unwrap();
        cmd.env("PGWARDEN_K8S_SERVICE_ACCOUNT", account)
            .env(
                "PGWARDEN_K8S_BACKUP_SERVICE_ACCOUNT",
                format!("{namespace}/pgwarden-backup"),
            )
            .env("PGWARDEN_K8S_HOST", "https://kubernetes.default.svc")
            // Outside a cluster the server has no CA of its own for the API (it says
            // so: 400, no such file): any certificate stands in for it.
            .env("PGWARDEN_K8S_CA_FILE", bao.ca_path());
    }
    let run = tokio::time::timeout(GENEROUS, cmd.output())
        .await
        .expect("setup.sh finishes")
        .expect("setup.sh runs");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "setup.sh failed:\n{output}");
    output
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(text.as_bytes()).unwrap();
}
