//! The embedded cluster against a real PostgreSQL: TLS verify-full, SCRAM-SHA-256-PLUS with
//! channel binding (from tokio-postgres through our connector, and from libpq's psql), and
//! complete cleanup after `stop()` and after drop.

use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use pgwarden::embedded::cluster::{Cluster, ClusterOptions};
use pgwarden::embedded::pki::Pki;
use pgwarden::tls::pg_connector::{RustlsConnect, verify_full_client_config};
use secrecy::ExposeSecret;
use tokio::process::Command;

/// Run the system psql against `cluster` as `user`; returns (success, stdout, stderr).
async fn psql(
    cluster: &Cluster,
    user: &str,
    password: &str,
    root_cert: &Path,
    sql: &str,
) -> (bool, String, String) {
    let conninfo = format!(
        "host={} port={} user={user} dbname=postgres sslmode=verify-full sslrootcert={} \
         channel_binding=require connect_timeout=60",
        cluster.host(),
        cluster.port(),
        root_cert.display()
    );
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .arg(conninfo)
        .env("PGPASSWORD", password)
        .env_remove("PGSERVICE")
        .env_remove("PGSSLMODE")
        .output()
        .await
        .expect("psql runs (postgresql-client installed?)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn port_is_closed(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_in_parallel_serve_tls_with_scram_plus() {
    let (a, b) = tokio::join!(
        Cluster::start(ClusterOptions::default()),
        Cluster::start(ClusterOptions::default())
    );
    let (a, b) = (a.expect("cluster a"), b.expect("cluster b"));
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    assert_ne!(a.ca_cert_pem(), b.ca_cert_pem());
    assert_ne!(
        a.superuser_password().expose_secret(),
        b.superuser_password().expose_secret()
    );
    assert!(a.superuser_password().expose_secret().len() >= 32);

    for cluster in [&a, &b] {
        // Cluster::connect requires channel binding, so this is SCRAM-SHA-256-PLUS.
        let client = cluster.connect("postgres").await.expect("connect");
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        assert_eq!(ssl, "on");
        let row = client
            .query_one(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0));
        let version: String = row.get(1);
        assert!(version.starts_with("TLSv1."), "{version}");
        let encryption: String = client
            .query_one("SHOW password_encryption", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(encryption, "scram-sha-256");
    }

    // The password never reaches the server log, nor does the template's.
    let log = a.server_log();
    assert!(log.contains("connection authorized"), "{log}");
    assert!(!log.contains(a.superuser_password().expose_secret()));

    let (a_dir, b_dir) = (a.data_dir().to_owned(), b.data_dir().to_owned());
    let (stop_a, stop_b) = tokio::join!(a.stop(), b.stop());
    stop_a.expect("stop a");
    stop_b.expect("stop b");
    assert!(!a_dir.exists() && !b_dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_connects_with_channel_binding_required_and_checks_the_ca() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let client = cluster.connect("postgres").await.unwrap();
    let password = "binder-test-password";
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    client
        .batch_execute(&format!("CREATE ROLE binder LOGIN PASSWORD '{verifier}'"))
        .await
        .unwrap();

    let (ok, out, err) = psql(
        &cluster,
        "binder",
        password,
        cluster.ca_cert_path(),
        "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await;
    assert!(ok, "psql failed: {err}\n{}", cluster.server_log());
    assert_eq!(out, "binder|t");

    let (ok, _, err) = psql(
        &cluster,
        "binder",
        "wrong",
        cluster.ca_cert_path(),
        "SELECT 1",
    )
    .await;
    assert!(!ok);
    assert!(err.contains("password authentication failed"), "{err}");

    // A CA that did not sign the server certificate is refused by libpq...
    let other = tempfile::NamedTempFile::new().unwrap();
    let other_ca = Pki::new("some other CA").unwrap();
    std::fs::write(other.path(), other_ca.ca_cert_pem()).unwrap();
    let (ok, _, err) = psql(&cluster, "binder", password, other.path(), "SELECT 1").await;
    assert!(!ok);
    assert!(err.contains("certificate verify failed"), "{err}");

    // ...and by our connector.
    let mut config = tokio_postgres::Config::new();
    config
        .host(cluster.host())
        .port(cluster.port())
        .user("binder")
        .password(password)
        .dbname("postgres")
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let tls = verify_full_client_config(other_ca.ca_cert_pem().as_bytes()).unwrap();
    let err = config.connect(RustlsConnect::new(tls)).await.err().unwrap();
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");

    // Without TLS, pg_hba.conf has no entry for us at all.
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let err = config.connect(tokio_postgres::NoTls).await.err().unwrap();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("no encryption"), "{db:?}");

    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_give_the_ca_names_and_settings() {
    let pki = Arc::new(Pki::new("shared test CA").unwrap());
    let opts = ClusterOptions {
        superuser: "boss".to_owned(),
        settings: vec![("work_mem".to_owned(), "8MB".to_owned())],
        pki: Some(Arc::clone(&pki)),
        server_names: vec!["127.0.0.1".to_owned()],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(opts).await.unwrap();
    assert_eq!(cluster.ca_cert_pem(), pki.ca_cert_pem());
    assert_eq!(
        std::fs::read_to_string(cluster.ca_cert_path()).unwrap(),
        pki.ca_cert_pem()
    );
    let client = cluster.connect("postgres").await.unwrap();
    let row = client
        .query_one(
            "SELECT current_user::text, current_setting('work_mem')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "boss");
    assert_eq!(row.get::<_, String>(1), "8MB");
    drop(client);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_drop_remove_everything_and_close_the_port() {
    let (stopped, dropped) = tokio::join!(
        Cluster::start(ClusterOptions::default()),
        Cluster::start(ClusterOptions::default())
    );
    let (stopped, dropped) = (stopped.unwrap(), dropped.unwrap());
    // An open session must not keep either from going away.
    let _client = dropped.connect("postgres").await.unwrap();

    let (dir, port) = (
        stopped.data_dir().parent().unwrap().to_owned(),
        stopped.port(),
    );
    assert!(dir.exists() && !port_is_closed(port));
    stopped.stop().await.unwrap();
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(port_is_closed(port));

    let (dir, port) = (
        dropped.data_dir().parent().unwrap().to_owned(),
        dropped.port(),
    );
    assert!(dir.exists() && !port_is_closed(port));
    drop(dropped);
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(port_is_closed(port));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_start_reports_its_log() {
    let opts = ClusterOptions {
        settings: vec![("shared_buffers".to_owned(), "lots".to_owned())],
        ..ClusterOptions::default()
    };
    let err = Cluster::start(opts).await.unwrap_err().to_string();
    assert!(err.contains("PostgreSQL did not start"), "{err}");
    assert!(err.contains("shared_buffers"), "{err}");
}
