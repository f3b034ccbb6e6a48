//! `config/vault/` as users get it: its files read verbatim, `bootstrap.sql`
//! run by psql the way a DBA runs it, and its password policy understood well
//! enough to make (and check) passwords the way Vault would.

use std::path::{Path, PathBuf};

use pgwarden::auth::ScramVerifier;
use pgwarden::auth::verifier::{GENERATED_PASSWORD_LEN, generate_password};
use pgwarden::embedded::cluster::Cluster;
use rand::Rng;
use rand::seq::SliceRandom;
use secrecy::{ExposeSecret, SecretString};

use super::harness::GENEROUS;
use super::hcl::{self, Node, Value};

/// The Vault database roles of `config/vault/`.
pub const MIGRATE_ROLE: &str = "keycloak-migrate";
pub const APP_ROLE: &str = "keycloak";
/// The read-only role `pgwarden backup` dumps with.
pub const BACKUP_ROLE: &str = "keycloak-backup";
/// The login role `bootstrap.sql` creates for Vault.
pub const VAULT_ADMIN: &str = "vault_admin";
/// The NOLOGIN role with read/update/write only.
pub const APP_GROUP: &str = "keycloak_app";

/// `config/vault/` in this source tree.
pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vault")
}

/// A file of `config/vault/`, verbatim.
pub fn file(name: &str) -> String {
    let path = config_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What one run of `bootstrap.sql` gave.
#[derive(Debug)]
pub struct BootstrapRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `bootstrap.sql` with the system psql as the cluster's superuser over TLS
/// verify-full. `verifier`: the `VAULT_ADMIN_VERIFIER` to pass, if any.
pub async fn run_bootstrap(cluster: &Cluster, verifier: Option<&SecretString>) -> BootstrapRun {
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} dbname=postgres sslmode=verify-full sslrootcert={} connect_timeout=60",
        cluster.port(),
        cluster.superuser(),
        cluster.ca_cert_path().display()
    );
    let mut cmd = tokio::process::Command::new("psql");
    cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(config_dir().join("bootstrap.sql"))
        .arg(conninfo)
        .env("PGPASSWORD", cluster.superuser_password().expose_secret())
        .kill_on_drop(true);
    for var in [
        "PGSERVICE",
        "PGSSLMODE",
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "VAULT_ADMIN_VERIFIER",
    ] {
        cmd.env_remove(var);
    }
    if let Some(v) = verifier {
        cmd.env("VAULT_ADMIN_VERIFIER", v.expose_secret());
    }
    let out = tokio::time::timeout(GENEROUS, cmd.output())
        .await
        .expect("psql finishes")
        .expect("psql runs (postgresql-client installed?)");
    BootstrapRun {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Prepares `cluster` with `bootstrap.sql` and a fresh `vault_admin` password, passed as a
/// SCRAM verifier; returns the password.
pub async fn bootstrap(cluster: &Cluster) -> SecretString {
    let password = generate_password(GENERATED_PASSWORD_LEN);
    let verifier = ScramVerifier::from_password(&password).to_text();
    let run = run_bootstrap(cluster, Some(&verifier)).await;
    assert!(run.success, "bootstrap.sql failed:\n{}", run.stderr);
    password
}

/// A Vault password policy: a length and charset rules, each with a minimum.
#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    pub length: usize,
    /// (charset, min-chars)
    pub rules: Vec<(Vec<char>, usize)>,
}

impl PasswordPolicy {
    /// Reads `length` and `rule "charset"` blocks; anything else is an error.
    pub fn parse(text: &str) -> Result<PasswordPolicy, String> {
        let mut length = None;
        let mut rules = Vec::new();
        for node in hcl::parse(text)? {
            match node {
                Node::Attr(key, Value::Int(n)) if key == "length" => length = Some(n as usize),
                Node::Block { kind, labels, body } if kind == "rule" && labels == ["charset"] => {
                    let (mut charset, mut min) = (None, 0);
                    for item in body {
                        match item {
                            Node::Attr(k, Value::Str(s)) if k == "charset" => {
                                charset = Some(s.chars().collect())
                            }
                            Node::Attr(k, Value::Int(n)) if k == "min-chars" => min = n as usize,
                            other => {
                                return Err(format!("unexpected in a charset rule: {other:?}"));
                            }
                        }
                    }
                    rules.push((charset.ok_or("a charset rule without charset")?, min));
                }
                other => return Err(format!("unexpected: {other:?}")),
            }
        }
        Ok(PasswordPolicy {
            length: length.ok_or("no length")?,
            rules,
        })
    }

    /// `config/vault/password-policy.hcl`.
    pub fn shipped() -> PasswordPolicy {
        Self::parse(&file("password-policy.hcl"))
            .unwrap_or_else(|e| panic!("password-policy.hcl: {e}"))
    }

    /// Every character a password may hold: the union of the charsets.
    pub fn alphabet(&self) -> Vec<char> {
        let mut all: Vec<char> = self.rules.iter().flat_map(|(c, _)| c.clone()).collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// A password as Vault's generator makes one: `length` characters of the alphabet with
    /// each rule's minimum met.
    pub fn generate(&self) -> String {
        let mut rng = rand::rng();
        let alphabet = self.alphabet();
        let mut chars: Vec<char> = self
            .rules
            .iter()
            .flat_map(|(set, min)| {
                (0..*min)
                    .map(|_| set[rng.random_range(0..set.len())])
                    .collect::<Vec<_>>()
            })
            .collect();
        while chars.len() < self.length {
            chars.push(alphabet[rng.random_range(0..alphabet.len())]);
        }
        chars.shuffle(&mut rng);
        chars.into_iter().collect()
    }

    /// Whether `password` satisfies the policy.
    pub fn accepts(&self, password: &str) -> bool {
        let alphabet = self.alphabet();
        password.chars().count() == self.length
            && password.chars().all(|c| alphabet.contains(&c))
            && self
                .rules
                .iter()
                .all(|(set, min)| password.chars().filter(|c| set.contains(c)).count() >= *min)
    }
}
