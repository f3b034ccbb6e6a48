//! The Vault side of the harness: a Vault double whose database role creates
//! real roles in the test cluster, the pgwarden configuration that uses it,
//! and the secrets (secret id, JWT, token, issued passwords) a test must never
//! find in a log.
//!
//! With [`VaultOptions::shipped`] the double is wired the way `config/vault/`
//! tells users to wire Vault: the cluster is prepared by `bootstrap.sql`, both
//! roles' statements are the shipped files verbatim, run as `vault_admin` on
//! connections of their own; passwords follow `password-policy.hcl` and reach
//! PostgreSQL only as SCRAM verifiers (`password_authentication`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden::auth::verifier::generate_password;
use pgwarden::dev::{DATABASE, OWNER_ROLE};
use pgwarden::embedded::cluster::Cluster;
use pgwarden::tls::pg_connector::{RustlsConnect, verify_full_client_config};
use secrecy::{ExposeSecret, SecretString};

use super::shipped::{self, APP_ROLE, BACKUP_ROLE, MIGRATE_ROLE, PasswordPolicy, VAULT_ADMIN};
use super::vault_double::{DoubleConfig, PasswordGenerator, RoleDef, SqlRunner, VaultDouble};

/// How pgwarden logs in to Vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultAuth {
    Approle,
    Kubernetes,
    Token,
}

/// The Vault source's settings for one test.
#[derive(Debug, Clone)]
pub struct VaultOptions {
    pub auth: VaultAuth,
    /// The database role's lease TTLs.
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    /// pgwarden's own token's TTLs.
    pub token_ttl: Duration,
    pub token_max_ttl: Duration,
    /// `[vault] timeout`.
    pub timeout: String,
    pub prefetch: usize,
    pub prefetch_max_age: String,
    pub on_lease_end: Option<String>,
    /// `[credentials.test] renew_increment`; `None`: not set (the lease's own duration).
    pub renew_increment: Option<String>,
    /// Serve the double over TLS (with the test CA) rather than plain HTTP.
    pub tls: bool,
    /// Revocation also ends the role's backends (as the deployment's
    /// statements do); false: Vault's default, which only drops the role.
    pub terminate_on_revoke: bool,
    /// The Vault role pgwarden asks for (`[credentials.test] role`).
    pub role: String,
    /// Wire everything from `config/vault/` (see the module documentation).
    pub shipped: bool,
}

impl Default for VaultOptions {
    fn default() -> Self {
        VaultOptions {
            auth: VaultAuth::Approle,
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(24 * 3600),
            token_ttl: Duration::from_secs(3600),
            token_max_ttl: Duration::from_secs(24 * 3600),
            timeout: "3s".into(),
            prefetch: 0,
            prefetch_max_age: "5m".into(),
            on_lease_end: None,
            renew_increment: None,
            tls: true,
            terminate_on_revoke: true,
            role: APP_ROLE.into(),
            shipped: false,
        }
    }
}

/// The running double and everything secret it handed out.
pub struct VaultSetup {
    pub double: VaultDouble,
    /// Secret id, JWT, root token, and every password the double issued.
    secrets: Arc<Mutex<Vec<String>>>,
    /// The issued passwords alone, in order.
    issued: Arc<Mutex<Vec<String>>>,
    /// Every statement the double ran (shipped mode only).
    statements: Arc<Mutex<Vec<String>>>,
}

/// The role the tests use, in the Keycloak pattern: logins are members of the
/// NOLOGIN owner role; revocation ends the role's backends and drops it.
fn keycloak_role(opts: &VaultOptions) -> RoleDef {
    RoleDef {
        creation_statements: format!(
            "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}' IN ROLE \"{OWNER_ROLE}\";"
        ),
        renew_statements: "ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}';".into(),
        revocation_statements: if opts.terminate_on_revoke {
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}'; DROP ROLE IF EXISTS \"{{name}}\";".into()
        } else {
            "DROP ROLE IF EXISTS \"{{name}}\";".into()
        },
        default_ttl: opts.default_ttl,
        max_ttl: opts.max_ttl,
    }
}

impl VaultSetup {
    /// Starts the double on `cluster` and writes role_id/secret_id/jwt/token files into
    /// `dir`. Its statements run as the superuser, or in shipped mode as `vault_admin`
    /// with `admin_password`.
    pub async fn start(
        opts: &VaultOptions,
        cluster: &Cluster,
        admin_password: &SecretString,
        pki: &pgwarden::embedded::pki::Pki,
        dir: &Path,
    ) -> VaultSetup {
        let secrets = Arc::new(Mutex::new(Vec::new()));
        let issued = Arc::new(Mutex::new(Vec::new()));
        let statements = Arc::new(Mutex::new(Vec::new()));
        let runner = if opts.shipped {
            vault_admin_runner(cluster, admin_password, statements.clone())
        } else {
            superuser_runner(cluster).await
        };
        let secret = |prefix: &str| format!("{prefix}{}", generate_password(32).expose_secret());
        let role_id = secret("role-");
        let secret_id = secret("sid-");
        let jwt = secret("jwt.");
        let root = secret("hvs.root");
        secrets
            .lock()
            .unwrap()
            .extend([secret_id.clone(), jwt.clone(), root.clone()]);
        let mut config = DoubleConfig::new(runner);
        config.roles = if opts.shipped {
            HashMap::from([
                (MIGRATE_ROLE.to_owned(), shipped_role(MIGRATE_ROLE, opts)),
                (APP_ROLE.to_owned(), shipped_role(APP_ROLE, opts)),
                (BACKUP_ROLE.to_owned(), shipped_role(BACKUP_ROLE, opts)),
            ])
        } else {
            HashMap::from([("keycloak".to_owned(), keycloak_role(opts))])
        };
        config.scram_passwords = opts.shipped;
        config.approle = Some((role_id.clone(), secret_id.clone()));
        config.kubernetes = Some(("pgwarden".to_owned(), jwt.clone()));
        config.root_token = Some(root.clone());
        config.token_ttl = opts.token_ttl;
        config.token_max_ttl = opts.token_max_ttl;
        if opts.tls {
            let cert = pki
                .issue_server(&["127.0.0.1", "localhost"])
                .expect("Vault double certificate");
            config.tls = Some((cert.cert_pem, cert.key_pem.expose_secret().to_owned()));
        }
        let make: PasswordGenerator = if opts.shipped {
            let policy = PasswordPolicy::shipped();
            Arc::new(move || policy.generate())
        } else {
            Arc::new(|| generate_password(36).expose_secret().to_owned())
        };
        let (all, only_issued) = (secrets.clone(), issued.clone());
        config.password_generator = Some(Arc::new(move || {
            let p = make();
            all.lock().unwrap().push(p.clone());
            only_issued.lock().unwrap().push(p.clone());
            p
        }));
        let double = VaultDouble::start(config).await;
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).expect("write a Vault test file")
        };
        write("vault_role_id", &role_id);
        write("vault_secret_id", &secret_id);
        write("vault_jwt", &jwt);
        write("vault_token", &root);
        VaultSetup {
            double,
            secrets,
            issued,
            statements,
        }
    }

    /// The `[vault]` and `[credentials.test]` sections.
    pub fn config(&self, opts: &VaultOptions) -> String {
        let auth = match opts.auth {
            VaultAuth::Approle => {
                r#"{ method = "approle", role_id_file = "vault_role_id", secret_id_file = "vault_secret_id" }"#
            }
            VaultAuth::Kubernetes => {
                r#"{ method = "kubernetes", role = "pgwarden", jwt_file = "vault_jwt" }"#
            }
            VaultAuth::Token => r#"{ method = "token", token_file = "vault_token" }"#,
        };
        let mut t = format!(
            "[vault]\naddress = {:?}\ntimeout = {:?}\nhealth_check_interval = \"500ms\"\nauth = {auth}\n",
            self.double.url(),
            opts.timeout
        );
        if opts.tls {
            t += "ca_file = \"ca.crt\"\n";
        }
        t += &format!(
            "\n[credentials.test]\nsource = \"vault\"\nmount = \"database\"\nrole = {:?}\nprefetch = {}\nprefetch_max_age = {:?}\n",
            opts.role, opts.prefetch, opts.prefetch_max_age
        );
        if let Some(o) = &opts.on_lease_end {
            t += &format!("on_lease_end = {o:?}\n");
        }
        if let Some(i) = &opts.renew_increment {
            t += &format!("renew_increment = {i:?}\n");
        }
        t
    }

    /// Every secret handed out so far (tokens pgwarden was given at login are
    /// the double's to know; these are the ones the test can see).
    pub fn secrets(&self) -> Vec<String> {
        self.secrets.lock().unwrap().clone()
    }

    /// The passwords the double issued, in order.
    pub fn issued_passwords(&self) -> Vec<String> {
        self.issued.lock().unwrap().clone()
    }

    /// Every statement the double ran on PostgreSQL, in order (shipped mode only).
    pub fn statements(&self) -> Vec<String> {
        self.statements.lock().unwrap().clone()
    }
}

/// A Vault role as `config/vault/setup.sh` writes it: the statement files as they are.
fn shipped_role(role: &str, opts: &VaultOptions) -> RoleDef {
    RoleDef {
        creation_statements: shipped::file(&format!("creation-{role}.sql")),
        renew_statements: shipped::file("renewal.sql"),
        revocation_statements: shipped::file("revocation.sql"),
        default_ttl: opts.default_ttl,
        max_ttl: opts.max_ttl,
    }
}

/// Statements run as the superuser on one shared connection to `postgres`.
async fn superuser_runner(cluster: &Cluster) -> SqlRunner {
    let sql = Arc::new(
        cluster
            .connect("postgres")
            .await
            .expect("superuser connection for the Vault double"),
    );
    Arc::new(move |statement: String| {
        let sql = sql.clone();
        Box::pin(async move {
            sql.batch_execute(&statement)
                .await
                .map_err(|e| format!("{e:?}"))
        })
    })
}

/// Each statement run as `vault_admin` on a connection of its own to the Keycloak
/// database, over TLS verify-full with SCRAM, as the shipped `connection_url` says (Vault
/// keeps a pool; a revocation waiting for a backend to end must not hold up the others).
/// Every statement is recorded.
fn vault_admin_runner(
    cluster: &Cluster,
    password: &SecretString,
    log: Arc<Mutex<Vec<String>>>,
) -> SqlRunner {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(cluster.port())
        .user(VAULT_ADMIN)
        .password(password.expose_secret())
        .dbname(DATABASE)
        .application_name("vault-double")
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(super::harness::GENEROUS);
    let tls = RustlsConnect::new(
        verify_full_client_config(cluster.ca_cert_pem().as_bytes()).expect("the cluster's CA"),
    );
    Arc::new(move |statement: String| {
        log.lock().unwrap().push(statement.clone());
        let (config, tls) = (config.clone(), tls.clone());
        Box::pin(async move {
            let (client, connection) = config
                .connect(tls)
                .await
                .map_err(|e| format!("connecting as {VAULT_ADMIN}: {e}"))?;
            let connection = tokio::spawn(connection);
            let result =
                client
                    .batch_execute(&statement)
                    .await
                    .map_err(|e| match e.as_db_error() {
                        Some(db) => format!("{}: {}", db.code().code(), db.message()),
                        None => e.to_string(),
                    });
            drop(client);
            let _ = connection.await;
            result
        })
    })
}
