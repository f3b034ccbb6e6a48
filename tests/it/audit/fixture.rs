//! Clusters for the audit tests: one prepared the way `config/postgres/` and
//! `config/vault/` say (Vault double in shipped mode), one deliberately wrong
//! in each way the audit checks, both with a Keycloak-shaped schema whose
//! secrets and personal data the test plants (and then looks for in the
//! audit's output).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pgwarden::auth::ScramVerifier;
use pgwarden::auth::verifier::{GENERATED_PASSWORD_LEN, generate_password};
use pgwarden::embedded::cluster::{Cluster, ClusterOptions};
use pgwarden::embedded::pki::Pki;
use secrecy::ExposeSecret;

use crate::support::harness::VaultOptions;
use crate::support::shipped::{self, APP_ROLE};
use crate::support::vault_setup::VaultSetup;

/// A cluster, the files of a pgwarden configuration for it, and what was planted.
pub struct Fixture {
    pub cluster: Cluster,
    pub vault: Option<VaultSetup>,
    pub config_path: PathBuf,
    /// Secret values and personal data written into Keycloak's tables, and
    /// every password of the set-up: none may appear in a report.
    pub planted: Vec<String>,
    pub dir: tempfile::TempDir,
}

/// Where Keycloak's credentials are: in clear, or as vault references.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Storage {
    Vault,
    Clear,
}

fn unique(what: &str) -> String {
    format!("PLANTED-{what}-{}", generate_password(16).expose_secret())
}

impl Fixture {
    /// `config/postgres/` settings and pg_hba.conf (on loopback), `config/vault/bootstrap.sql`,
    /// the shipped Vault roles through the double, the steady-state `keycloak` role.
    pub async fn shipped() -> Fixture {
        let mut settings = crate::postgres_logging::settings("config/postgres/logging.conf");
        settings.extend(
            crate::postgres_logging::settings("config/postgres/ssl.conf")
                .into_iter()
                .filter(|(n, _)| !n.ends_with("_file")),
        );
        let hba = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/postgres/pg_hba.conf"),
        )
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.replace("172.30.89.0/24", "127.0.0.1/32"))
        .collect();
        let pki = Arc::new(Pki::new("audit test CA").unwrap());
        let cluster = start(&pki, settings, hba).await;
        let admin_password = shipped::bootstrap(&cluster).await;
        let mut planted = vec![admin_password.expose_secret().to_owned()];
        planted.extend(keycloak_schema(&cluster, Storage::Vault).await);
        let dir = files(&pki);
        let opts = VaultOptions {
            shipped: true,
            role: APP_ROLE.into(),
            ..VaultOptions::default()
        };
        let vault = VaultSetup::start(&opts, &cluster, &admin_password, &pki, dir.path()).await;
        let config = format!(
            "[listen]\naddress = \"127.0.0.1:0\"\ntls_cert_file = \"server.crt\"\ntls_key_file = \"server.key\"\n\
             allow = [\"127.0.0.1/32\"]\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n[audit]\ninterval = \"1h\"\n\n\
             [[users]]\nname = \"keycloak\"\nscram_verifier_file = \"client.verifier\"\n\n\
             [[routes]]\ndatabase = \"keycloak\"\nusers = [\"keycloak\"]\n\
             upstream = {{ host = \"127.0.0.1\", port = {}, database = \"keycloak\", tls = \"verify-full\", ca_file = \"ca.crt\" }}\n\
             credentials = \"test\"\n\n{}",
            cluster.port(),
            vault.config(&opts)
        );
        finish(cluster, Some(vault), dir, config, planted)
    }

    /// Wrong in every way the audit checks that one cluster can be, and
    /// hostile to it: backslashes in string literals are escapes, a function
    /// planted in `public` would answer the audit's `pg_has_role` calls if it
    /// searched there, row-level security hides `client`'s rows from roles it
    /// applies to, and the superuser's own sessions hash passwords with SCRAM
    /// while the server's default is MD5.
    pub async fn misconfigured() -> Fixture {
        let settings = [
            ("standard_conforming_strings", "off"),
            ("ssl_min_protocol_version", "TLSv1"),
            ("password_encryption", "md5"),
            ("log_connections", "off"),
            ("log_disconnections", "off"),
            ("log_line_prefix", "%m "),
            ("log_statement", "none"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .to_vec();
        let hba = [
            "hostssl all all 127.0.0.1/32 scram-sha-256",
            "host all all 127.0.0.1/32 scram-sha-256",
            "host keycloak all 10.0.0.0/8 trust",
            "hostssl keycloak all 0.0.0.0/0 md5",
        ]
        .map(str::to_owned)
        .to_vec();
        let pki = Arc::new(Pki::new("audit test CA").unwrap());
        let cluster = start(&pki, settings, hba).await;
        let admin_password = pgwarden::dev::prepare_cluster(&cluster).await.unwrap();
        let static_password = unique("static");
        let setup = cluster.connect("postgres").await.unwrap();
        setup
            .batch_execute(&format!(
                "CREATE ROLE keycloak_app NOLOGIN CREATEDB BYPASSRLS;
                 GRANT keycloak_app TO pgwarden_admin WITH ADMIN OPTION;
                 ALTER ROLE pgwarden_admin SET log_statement = 'ddl';
                 SET password_encryption = 'md5';
                 CREATE ROLE keycloak_static LOGIN PASSWORD '{static_password}' IN ROLE keycloak_app;
                 CREATE ROLE pgwarden_leftover LOGIN VALID UNTIL '2000-01-01' IN ROLE keycloak_app;
                 ALTER ROLE {} SET password_encryption = 'scram-sha-256';",
                cluster.superuser()
            ))
            .await
            .unwrap();
        let mut planted = vec![admin_password.expose_secret().to_owned(), static_password];
        planted.extend(keycloak_schema(&cluster, Storage::Clear).await);
        let db = cluster.connect("keycloak").await.unwrap();
        db.batch_execute(
            "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO keycloak_app;
             CREATE TABLE public.stray (id int); ALTER TABLE public.stray OWNER TO keycloak_app;
             GRANT CREATE ON SCHEMA public TO keycloak_app;
             GRANT CREATE ON SCHEMA public TO PUBLIC;
             SET ROLE keycloak_static;
             CREATE FUNCTION public.pg_has_role(text, oid, text) RETURNS boolean
                 LANGUAGE sql AS 'SELECT true';
             RESET ROLE;
             ALTER TABLE public.client ENABLE ROW LEVEL SECURITY;
             INSERT INTO realm VALUES ('r2', 'second', true);
             INSERT INTO realm_smtp_config VALUES ('r2', '${vault.smtp_password}', 'password');",
        )
        .await
        .unwrap();
        let dir = files(&pki);
        std::fs::write(
            dir.path().join("admin_password"),
            admin_password.expose_secret(),
        )
        .unwrap();
        let config = format!(
            "[listen]\naddress = \"127.0.0.1:0\"\ntls_cert_file = \"server.crt\"\ntls_key_file = \"server.key\"\n\
             allow = [\"0.0.0.0/0\"]\n\n\
             [[users]]\nname = \"keycloak\"\nscram_verifier_file = \"client.verifier\"\n\n\
             [[routes]]\ndatabase = \"keycloak\"\nusers = [\"keycloak\"]\n\
             upstream = {{ host = \"127.0.0.1\", port = {}, database = \"keycloak\", tls = \"disable\", allow_insecure_auth = true }}\n\
             credentials = \"test\"\nsession_role = \"keycloak_app\"\n\n\
             [credentials.test]\nsource = \"postgres\"\nadmin_user = \"pgwarden_admin\"\n\
             admin_password_file = \"admin_password\"\nmember_of = [\"keycloak_app\"]\nttl = \"30d\"\n\
             on_lease_end = \"keep\"\n",
            cluster.port()
        );
        finish(cluster, None, dir, config, planted)
    }

    /// A `--as` DSN for the cluster's superuser, verify-full against the test CA.
    pub fn superuser_dsn(&self) -> String {
        format!(
            "postgresql://{}@127.0.0.1:{}/keycloak?sslmode=verify-full&sslrootcert={}",
            self.cluster.superuser(),
            self.cluster.port(),
            self.dir.path().join("ca.crt").display()
        )
    }

    /// The environment the audit gets: the superuser's password in PGPASSWORD.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "PGPASSWORD".into(),
            self.cluster.superuser_password().expose_secret().to_owned(),
        )]
    }

    /// Every secret of the set-up, the issued ones included so far.
    pub fn secrets(&self) -> Vec<String> {
        let mut all = self.planted.clone();
        all.push(self.cluster.superuser_password().expose_secret().to_owned());
        if let Some(v) = &self.vault {
            all.extend(v.secrets());
        }
        all
    }

    /// Fails the test if any secret appears in `output`.
    pub fn assert_no_secret_in(&self, what: &str, output: &str) {
        for (i, s) in self.secrets().iter().enumerate() {
            assert!(!output.contains(s.as_str()), "{what} holds secret #{i}");
        }
        for piece in ["PLANTED", "203.0.113.77", "example.test"] {
            assert!(
                !output.contains(piece),
                "{what} holds planted data ({piece})"
            );
        }
    }
}

async fn start(pki: &Arc<Pki>, settings: Vec<(String, String)>, hba: Vec<String>) -> Cluster {
    Cluster::start(ClusterOptions {
        pki: Some(pki.clone()),
        settings,
        hba: Some(hba),
        ..ClusterOptions::default()
    })
    .await
    .expect("start the cluster")
}

/// Certificates and the client verifier in a fresh directory.
fn files(pki: &Pki) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pgwarden-audit-")
        .tempdir()
        .unwrap();
    let listener = pki.issue_server(&["127.0.0.1", "localhost"]).unwrap();
    let write = |n: &str, t: &str| std::fs::write(dir.path().join(n), t).unwrap();
    write("ca.crt", pki.ca_cert_pem());
    write("server.crt", &listener.cert_pem);
    write("server.key", listener.key_pem.expose_secret());
    let password = generate_password(GENERATED_PASSWORD_LEN);
    write(
        "client.verifier",
        ScramVerifier::from_password(&password)
            .to_text()
            .expose_secret(),
    );
    dir
}

fn finish(
    cluster: Cluster,
    vault: Option<VaultSetup>,
    dir: tempfile::TempDir,
    config: String,
    planted: Vec<String>,
) -> Fixture {
    let config_path = dir.path().join("pgwarden.toml");
    std::fs::write(&config_path, config).unwrap();
    Fixture {
        cluster,
        vault,
        config_path,
        planted,
        dir,
    }
}

/// Keycloak 26's tables (the columns the audit reads, named as Keycloak names
/// them), created by keycloak_owner, with realm keys, a confidential client,
/// an LDAP provider, an identity provider, SMTP settings, an OTP credential,
/// a user with attributes and events. Returns the planted values.
async fn keycloak_schema(cluster: &Cluster, storage: Storage) -> Vec<String> {
    let p: Vec<String> = [
        "private-key",
        "hmac-secret",
        "aes-secret",
        "client-secret",
        "ldap-bind",
        "idp-secret",
        "smtp-password",
        "otp-seed",
        "first-name",
        "last-name",
        "attribute",
        "representation",
    ]
    .iter()
    .map(|w| unique(w))
    .collect();
    let email = format!(
        "planted.{}@example.test",
        generate_password(8).expose_secret()
    );
    let stored = |i: usize, key: &str| match storage {
        Storage::Clear => p[i].clone(),
        Storage::Vault => format!("${{vault.{key}}}"),
    };
    let sql = format!(
        "BEGIN; SET LOCAL ROLE keycloak_owner;
         CREATE TABLE realm (id varchar(36) PRIMARY KEY, name varchar(255) UNIQUE, enabled boolean NOT NULL DEFAULT true);
         CREATE TABLE component (id varchar(36) PRIMARY KEY, name varchar(255), parent_id varchar(36),
            provider_id varchar(36), provider_type varchar(255), realm_id varchar(36) REFERENCES realm(id), sub_type varchar(255));
         CREATE TABLE component_config (id varchar(36) PRIMARY KEY, component_id varchar(36) NOT NULL REFERENCES component(id),
            name varchar(255) NOT NULL, value text);
         CREATE TABLE client (id varchar(36) PRIMARY KEY, enabled boolean NOT NULL DEFAULT true, client_id varchar(255),
            public_client boolean NOT NULL DEFAULT false, secret varchar(255), realm_id varchar(36), protocol varchar(255),
            bearer_only boolean NOT NULL DEFAULT false, client_authenticator_type varchar(255));
         CREATE TABLE identity_provider (internal_id varchar(36) PRIMARY KEY, enabled boolean NOT NULL DEFAULT false,
            provider_alias varchar(255), provider_id varchar(255), realm_id varchar(36));
         CREATE TABLE identity_provider_config (identity_provider_id varchar(36) NOT NULL REFERENCES identity_provider(internal_id),
            value text, name varchar(255) NOT NULL, PRIMARY KEY (identity_provider_id, name));
         CREATE TABLE user_entity (id varchar(36) PRIMARY KEY, email varchar(255), email_constraint varchar(255),
            email_verified boolean NOT NULL DEFAULT false, enabled boolean NOT NULL DEFAULT false, first_name varchar(255),
            last_name varchar(255), realm_id varchar(255), username varchar(255), created_timestamp bigint);
         CREATE TABLE credential (id varchar(36) PRIMARY KEY, salt bytea, type varchar(255), user_id varchar(36) REFERENCES user_entity(id),
            created_date bigint, user_label varchar(255), secret_data text, credential_data text, priority integer);
         CREATE TABLE user_attribute (name varchar(255) NOT NULL, value varchar(255), user_id varchar(36) NOT NULL REFERENCES user_entity(id),
            id varchar(36) PRIMARY KEY);
         CREATE TABLE event_entity (id varchar(36) PRIMARY KEY, client_id varchar(255), details_json varchar(2550), error varchar(255),
            ip_address varchar(255), realm_id varchar(255), session_id varchar(255), event_time bigint, type varchar(255), user_id varchar(255));
         CREATE TABLE admin_event_entity (id varchar(36) PRIMARY KEY, admin_event_time bigint, realm_id varchar(255), operation_type varchar(255),
            auth_realm_id varchar(255), auth_client_id varchar(255), auth_user_id varchar(255), ip_address varchar(255),
            resource_path varchar(2550), representation text, error varchar(255), resource_type varchar(64));
         CREATE TABLE realm_smtp_config (realm_id varchar(36) NOT NULL REFERENCES realm(id), value varchar(255), name varchar(255) NOT NULL,
            PRIMARY KEY (realm_id, name));
         INSERT INTO realm VALUES ('r1', 'master', true);
         INSERT INTO component VALUES
            ('k1', 'rsa-generated', 'r1', 'rsa-generated', 'org.keycloak.keys.KeyProvider', 'r1', NULL),
            ('k2', 'hmac-generated', 'r1', 'hmac-generated', 'org.keycloak.keys.KeyProvider', 'r1', NULL),
            ('k3', 'aes-generated', 'r1', 'aes-generated', 'org.keycloak.keys.KeyProvider', 'r1', NULL),
            ('l1', 'ldap', 'r1', 'ldap', 'org.keycloak.storage.UserStorageProvider', 'r1', NULL);
         INSERT INTO component_config VALUES
            ('c1', 'k1', 'privateKey', '{pk}'), ('c2', 'k1', 'certificate', 'MIIC-public'), ('c3', 'k1', 'priority', '100'),
            ('c4', 'k2', 'secret', '{hmac}'), ('c5', 'k3', 'secret', '{aes}'),
            ('c6', 'l1', 'bindDn', 'cn=keycloak,dc=example'), ('c7', 'l1', 'bindCredential', '{ldap}');
         INSERT INTO client VALUES
            ('cl1', true, 'backend', false, '{client}', 'r1', 'openid-connect', false, 'client-secret'),
            ('cl2', true, 'account-console', true, NULL, 'r1', 'openid-connect', false, 'client-secret');
         INSERT INTO identity_provider VALUES ('i1', true, 'github', 'github', 'r1');
         INSERT INTO identity_provider_config VALUES ('i1', 'abc', 'clientId'), ('i1', '{idp}', 'clientSecret');
         INSERT INTO realm_smtp_config VALUES ('r1', 'smtp.example', 'host'), ('r1', '{smtp}', 'password');
         INSERT INTO user_entity VALUES ('u1', '{email}', '{email}', true, true, '{first}', '{last}', 'r1', 'planted-user', 0);
         INSERT INTO credential VALUES
            ('cr1', NULL, 'password', 'u1', 0, NULL, '{{\"value\":\"hash\"}}', '{{}}', 10),
            ('cr2', NULL, 'otp', 'u1', 0, NULL, '{{\"value\":\"{otp}\"}}', '{{}}', 20);
         INSERT INTO user_attribute VALUES ('phone', '{attr}', 'u1', 'a1');
         INSERT INTO event_entity VALUES ('e1', 'backend', NULL, NULL, '203.0.113.77', 'r1', 's1', 0, 'LOGIN', 'u1');
         INSERT INTO admin_event_entity VALUES ('ae1', 0, 'r1', 'UPDATE', 'r1', 'c', 'u1', '203.0.113.77', 'users/u1', '{repr}', NULL, 'USER');
         COMMIT;",
        pk = p[0],
        hmac = p[1],
        aes = p[2],
        client = p[3],
        ldap = stored(4, "ldap_bind"),
        idp = stored(5, "github_secret"),
        smtp = stored(6, "smtp_password"),
        otp = p[7],
        first = p[8],
        last = p[9],
        attr = p[10],
        repr = p[11],
    );
    cluster
        .connect("keycloak")
        .await
        .unwrap()
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("the Keycloak fixture: {e}"));
    let mut planted = p;
    planted.push(email);
    planted
}
