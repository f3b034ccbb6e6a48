//! `pgwarden backup` against a real cluster, for one test.
//!
//! [`BackupEnv::start`] starts a TLS + SCRAM cluster prepared like `pgwarden dev` (or, with
//! `vault`, like `config/vault/bootstrap.sql` with the Vault double serving the shipped
//! `keycloak-backup` role), makes an age identity, and writes a configuration whose only
//! target, `keycloak`, dumps the `keycloak` database with a fresh credential into
//! `backups/` and its metrics into `metrics/`. Tests run the backup in-process
//! ([`BackupEnv::run`]) or through the built binary ([`BackupEnv::pgwarden`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use pgwarden::backup::Report;
use pgwarden::dev::{ADMIN_ROLE, DATABASE};
use pgwarden::embedded::cluster::{Cluster, ClusterOptions};
use pgwarden::embedded::pki::Pki;
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::logs::{self, Logs};
use super::shipped::{self, BACKUP_ROLE};
use super::vault_setup::{VaultOptions, VaultSetup};

/// The built-in source's prefix for backup logins.
pub const BACKUP_PREFIX: &str = "pgwarden_backup_";

#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// A bash script run as pg_dump; `{real}` stands for the real pg_dump.
    pub pg_dump_wrapper: Option<String>,
    /// `compression_level` (pg_dump's own default when absent).
    pub compression_level: Option<u8>,
    /// Credentials from the Vault double's shipped `keycloak-backup` role.
    pub vault: bool,
    /// The built-in source's `ttl` (default 10m).
    pub ttl: Option<String>,
    /// The target's `timeout` (pgwarden's default when absent).
    pub timeout: Option<String>,
}

pub struct BackupEnv {
    pub cluster: Cluster,
    pub logs: Logs,
    /// The identity of the backups' recipient (the test plays the operator).
    pub identity: age::x25519::Identity,
    pub identity_path: PathBuf,
    /// Where the cluster's programs (pg_dump, pg_restore) are.
    pub bindir: PathBuf,
    pub vault: Option<VaultSetup>,
    /// The source's admin password (postgres) or vault_admin's (vault).
    admin_password: SecretString,
    direct: Client,
    dir: tempfile::TempDir,
}

impl BackupEnv {
    pub async fn start(opts: BackupOptions) -> BackupEnv {
        let logs = logs::capture_as(pgwarden::config::LogFormat::Json);
        let pki = Arc::new(Pki::new("pgwarden backup test CA").expect("CA"));
        let cluster = Cluster::start(ClusterOptions {
            pki: Some(pki.clone()),
            ..ClusterOptions::default()
        })
        .await
        .expect("start the cluster");
        let admin_password = if opts.vault {
            shipped::bootstrap(&cluster).await
        } else {
            pgwarden::dev::prepare_cluster(&cluster)
                .await
                .expect("prepare the cluster")
        };
        let direct = cluster.connect(DATABASE).await.expect("superuser");
        let bindir: String = direct
            .query_one("SELECT setting FROM pg_config WHERE name = 'BINDIR'", &[])
            .await
            .expect("the server's BINDIR")
            .get(0);
        let bindir = PathBuf::from(bindir);
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-backup-test-")
            .tempdir()
            .expect("a directory");
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.crt", pki.ca_cert_pem());
        write("admin_password", admin_password.expose_secret());
        let identity = age::x25519::Identity::generate();
        let identity_dir = dir.path().join("operator");
        std::fs::create_dir(&identity_dir).unwrap();
        let identity_path = identity_dir.join("identity.txt");
        std::fs::write(
            &identity_path,
            format!(
                "# the operator's\n{}\n",
                identity.to_string().expose_secret()
            ),
        )
        .unwrap();
        let pg_dump = match &opts.pg_dump_wrapper {
            Some(script) => {
                let path = dir.path().join("pg_dump-wrapper");
                let text = script.replace("{real}", &bindir.join("pg_dump").display().to_string());
                std::fs::write(&path, text).unwrap();
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o755),
                )
                .unwrap();
                path
            }
            None => bindir.join("pg_dump"),
        };
        let vault = if opts.vault {
            let v = vault_options();
            Some(VaultSetup::start(&v, &cluster, &admin_password, &pki, dir.path()).await)
        } else {
            None
        };
        let mut config = format!(
            "[log]\nformat = \"json\"\nlevel = \"debug\"\n\n\
             [backup.keycloak]\n\
             upstream = {{ host = \"127.0.0.1\", port = {port}, database = \"{DATABASE}\", tls = \"verify-full\", ca_file = \"ca.crt\" }}\n\
             credentials = \"test\"\n\
             directory = \"backups\"\n\
             recipients = [\"{recipient}\"]\n\
             pg_dump = {pg_dump:?}\n\
             metrics_file = \"metrics/pgwarden_backup_keycloak.prom\"\n\
             keep_last = 3\n",
            port = cluster.port(),
            recipient = identity.to_public(),
        );
        if let Some(level) = opts.compression_level {
            config += &format!("compression_level = {level}\n");
        }
        if let Some(timeout) = &opts.timeout {
            config += &format!("timeout = {timeout:?}\n");
        }
        config += "\n";
        match &vault {
            Some(v) => config += &v.config(&vault_options()),
            None => {
                config += &format!(
                    "[credentials.test]\nsource = \"postgres\"\nadmin_user = \"{ADMIN_ROLE}\"\n\
                     admin_password_file = \"admin_password\"\nmember_of = [\"pg_read_all_data\"]\n\
                     role_prefix = \"{BACKUP_PREFIX}\"\nttl = {:?}\n",
                    opts.ttl.as_deref().unwrap_or("10m")
                )
            }
        }
        write("pgwarden.toml", &config);
        std::fs::create_dir(dir.path().join("metrics")).unwrap();
        BackupEnv {
            cluster,
            logs,
            identity,
            identity_path,
            bindir,
            vault,
            admin_password,
            direct,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("pgwarden.toml")
    }

    pub fn backups(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    pub fn metrics_file(&self) -> PathBuf {
        self.dir
            .path()
            .join("metrics/pgwarden_backup_keycloak.prom")
    }

    /// The backup of the `keycloak` target, in-process, as `pgwarden backup` runs it
    /// (metrics and the `backup_finished` record included).
    pub async fn run(&self) -> Report {
        self.run_until(CancellationToken::new()).await
    }

    pub async fn run_until(&self, interrupt: CancellationToken) -> Report {
        let file = pgwarden::config::load_backup(&self.config_path(), std::iter::empty())
            .unwrap_or_else(|e| panic!("the test configuration is invalid:\n{e}"));
        let report = pgwarden::backup::run::backup(&file, "keycloak", interrupt)
            .await
            .expect("the target exists");
        pgwarden::backup::report::publish(&report).await;
        report
    }

    /// The built binary, with an environment holding nothing of the caller's PG* variables.
    pub fn pgwarden(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwarden"));
        cmd.args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    pub fn pg_restore(&self) -> PathBuf {
        self.bindir.join("pg_restore")
    }

    /// A superuser libpq connection string for `database`, without the password.
    pub fn superuser_conninfo(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={database} user={} sslmode=verify-full sslrootcert={}",
            self.cluster.port(),
            self.cluster.superuser(),
            self.cluster.ca_cert_path().display()
        )
    }

    pub fn superuser_password(&self) -> &SecretString {
        self.cluster.superuser_password()
    }

    pub fn direct(&self) -> &Client {
        &self.direct
    }

    /// Login roles a backup's credential source made that still exist.
    pub async fn backup_roles(&self) -> Vec<String> {
        let prefix = if self.vault.is_some() {
            "v-"
        } else {
            BACKUP_PREFIX
        };
        self.direct
            .query(
                "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY 1",
                &[&prefix],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Files in the backup directory, dot files included, sorted.
    pub fn backup_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.backups())
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every secret of this test: none may be logged.
    pub fn assert_no_secrets_logged(&self) {
        self.logs
            .assert_absent("the admin password", self.admin_password.expose_secret());
        self.logs.assert_absent(
            "the superuser password",
            self.cluster.superuser_password().expose_secret(),
        );
        self.logs.assert_absent(
            "the age identity",
            self.identity.to_string().expose_secret(),
        );
        if let Some(v) = &self.vault {
            for s in v.secrets() {
                self.logs.assert_absent("a Vault secret", &s);
            }
        }
    }
}

/// The Vault double with the shipped roles; pgwarden asks for `keycloak-backup`.
fn vault_options() -> VaultOptions {
    VaultOptions {
        shipped: true,
        role: BACKUP_ROLE.into(),
        ..VaultOptions::default()
    }
}

/// Fills `keycloak` with a table of `rows` rows, `marker` in every 50th.
pub async fn seed(direct: &Client, rows: i32, marker: &str) {
    direct
        .batch_execute(
            "CREATE TABLE public.realm_secret (id int PRIMARY KEY, secret text NOT NULL);\
             ALTER TABLE public.realm_secret OWNER TO keycloak_owner;",
        )
        .await
        .unwrap();
    direct
        .execute(
            "INSERT INTO public.realm_secret \
             SELECT i, CASE WHEN i % 50 = 0 THEN $1 ELSE md5(i::text) || md5((i * 7)::text) END \
             FROM generate_series(1, $2) AS i",
            &[&marker, &rows],
        )
        .await
        .unwrap();
}

/// A fingerprint of the table's rows: count and an ordered hash.
pub async fn fingerprint(client: &Client) -> (i64, String) {
    let row = client
        .query_one(
            "SELECT count(*), md5(string_agg(id::text || ':' || secret, ',' ORDER BY id)) \
             FROM public.realm_secret",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Regular files under `dir` (recursively) that contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8], skip: &[&Path]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let path = e.path();
        if skip.iter().any(|s| path.starts_with(s)) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            found.extend(files_containing(&path, needle, skip));
        } else if meta.is_file()
            && let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}
