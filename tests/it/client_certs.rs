//! Client certificates through pgwarden, with the clients Keycloak and operators use:
//! psql (`sslcert`/`sslkey`) and pgjdbc (`sslcert` with a PKCS#8 DER `sslkey`, as Keycloak
//! presents one). A `cert` user logs in with a certificate that names it (CN, or a name
//! listed in `cert_names`); without one, or with one naming someone else, it gets 28000 as
//! from PostgreSQL's `clientcert=verify-full`; a certificate from another CA or one the CRL
//! revokes ends the TLS handshake; `cert+scram` needs both; SCRAM users need none.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::support::harness::{Harness, Options, User, UserAuth};
use crate::support::java;
use pgwarden::embedded::pki::{IssuedCert, Pki};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use secrecy::ExposeSecret;

const BOTH_PASSWORD: &str = "cert-and-scram-password-1234";

struct Setup {
    h: Harness,
    ca: Arc<Pki>,
    revoked: IssuedCert,
}

async fn setup() -> Setup {
    let ca = Arc::new(Pki::new("pgwarden client CA").unwrap());
    let revoked = ca.issue_client("kc-cert").unwrap();
    let crl = ca.crl(&[&revoked.cert_pem]).unwrap();
    let h = Harness::start(Options {
        client_ca: Some(ca.clone()),
        client_crl: Some(crl),
        users: vec![
            User {
                name: "kc-cert".into(),
                auth: UserAuth::Cert(Vec::new()),
            },
            User {
                name: "kc-mapped".into(),
                auth: UserAuth::Cert(vec!["keycloak.prod.example".into()]),
            },
            User {
                name: "kc-both".into(),
                auth: UserAuth::CertAndPassword(BOTH_PASSWORD.into()),
            },
        ],
        ..Options::default()
    })
    .await;
    Setup { h, ca, revoked }
}

/// Writes a certificate and its key (PEM, and PKCS#8 DER for pgjdbc) with the key
/// readable by its owner only, as libpq insists; returns (cert, PEM key, DER key).
fn files(h: &Harness, name: &str, cert: &IssuedCert) -> (PathBuf, PathBuf, PathBuf) {
    let dir = h.dir();
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let der = dir.join(format!("{name}.pk8"));
    std::fs::write(&crt, &cert.cert_pem).unwrap();
    let pem = cert.key_pem.expose_secret().as_bytes();
    std::fs::write(&key, pem).unwrap();
    let PrivateKeyDer::Pkcs8(pkcs8) = PrivateKeyDer::from_pem_slice(pem).unwrap() else {
        panic!("rcgen writes PKCS#8 keys");
    };
    std::fs::write(&der, pkcs8.secret_pkcs8_der()).unwrap();
    for k in [&key, &der] {
        std::fs::set_permissions(k, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    (crt, key, der)
}

/// psql as `user`, with the certificate `cert` when given.
async fn psql(
    s: &Setup,
    user: &str,
    cert: Option<&str>,
    password: &str,
) -> crate::support::harness::Psql {
    let mut extra = format!("user={user}");
    if let Some(name) = cert {
        let dir = s.h.dir();
        extra += &format!(
            " sslcert={} sslkey={}",
            dir.join(format!("{name}.crt")).display(),
            dir.join(format!("{name}.key")).display()
        );
    } else {
        // No certificate, even one from ~/.postgresql.
        extra += " sslcert=/nonexistent/postgresql.crt sslkey=/nonexistent/postgresql.key";
    }
    let conninfo = format!("{} {extra}", s.h.conninfo("").replace("user=keycloak ", ""));
    s.h.psql(&conninfo, password, "SELECT session_user LIKE 'pgwarden_%'")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_logs_in_with_a_certificate_that_names_the_user() {
    let s = setup().await;
    files(&s.h, "kc-cert", &s.ca.issue_client("kc-cert").unwrap());
    files(
        &s.h,
        "mapped",
        &s.ca.issue_client("keycloak.prod.example").unwrap(),
    );
    files(&s.h, "other", &s.ca.issue_client("someone-else").unwrap());
    files(&s.h, "revoked", &s.revoked);
    let stranger = Pki::new("another CA").unwrap();
    files(&s.h, "stranger", &stranger.issue_client("kc-cert").unwrap());

    let ok = psql(&s, "kc-cert", Some("kc-cert"), "").await;
    assert!(ok.success && ok.stdout == "t", "{ok:?}");
    let mapped = psql(&s, "kc-mapped", Some("mapped"), "").await;
    assert!(mapped.success, "{mapped:?}");
    let both = psql(&s, "kc-both", Some("kc-cert"), BOTH_PASSWORD).await;
    assert!(
        !both.success,
        "the certificate names kc-cert, not kc-both: {both:?}"
    );

    // 28000 as PostgreSQL words it, without a certificate or with someone else's.
    let none = psql(&s, "kc-cert", None, "").await;
    assert!(!none.success);
    assert!(
        none.stderr
            .contains("connection requires a valid client certificate"),
        "{none:?}"
    );
    let other = psql(&s, "kc-cert", Some("other"), "").await;
    assert!(
        other
            .stderr
            .contains("certificate authentication failed for user \"kc-cert\""),
        "{other:?}"
    );
    // A certificate the CA's CRL revokes, or from another CA: no TLS at all.
    let revoked = psql(&s, "kc-cert", Some("revoked"), "").await;
    assert!(revoked.stderr.contains("revoked"), "{revoked:?}");
    let stranger = psql(&s, "kc-cert", Some("stranger"), "").await;
    assert!(stranger.stderr.contains("unknown ca"), "{stranger:?}");

    // SCRAM users are untouched, with or without a certificate.
    let scram = psql(&s, "keycloak", None, s.h.client_password.expose_secret()).await;
    assert!(scram.success, "{scram:?}");

    let methods: Vec<String> =
        s.h.logs
            .wait_for("session_start", 3)
            .await
            .iter()
            .map(|e| e["span"]["auth_method"].as_str().unwrap().to_owned())
            .collect();
    assert_eq!(methods[..2], ["cert", "cert"]);
    let rejected = s.h.logs.events("connection_rejected");
    let auth_failed = rejected
        .iter()
        .filter(|r| r["reason"] == "auth_failed")
        .count();
    assert_eq!(auth_failed, 3, "{rejected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_and_scram_needs_both() {
    let s = setup().await;
    files(&s.h, "both", &s.ca.issue_client("kc-both").unwrap());
    let ok = psql(&s, "kc-both", Some("both"), BOTH_PASSWORD).await;
    assert!(ok.success, "{ok:?}");
    let wrong = psql(&s, "kc-both", Some("both"), "not the password").await;
    assert!(
        wrong.stderr.contains("password authentication failed"),
        "{wrong:?}"
    );
    let no_cert = psql(&s, "kc-both", None, BOTH_PASSWORD).await;
    assert!(
        no_cert
            .stderr
            .contains("connection requires a valid client certificate"),
        "{no_cert:?}"
    );
    let start = &s.h.logs.wait_for("session_start", 1).await[0];
    assert_eq!(
        start["span"]["auth_method"], "cert+SCRAM-SHA-256-PLUS",
        "{start}"
    );
}

/// pgjdbc presents its certificate the way Keycloak would: `sslcert` and a PKCS#8 DER
/// `sslkey` in the JDBC URL, no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_logs_in_with_a_certificate() {
    let s = setup().await;
    let (crt, _, der) = files(&s.h, "kc-cert", &s.ca.issue_client("kc-cert").unwrap());
    let url = |user: &str| {
        format!(
            "jdbc:postgresql://127.0.0.1:{}/keycloak?user={user}&sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            s.h.port(),
            s.h.ca_path.display(),
            crt.display(),
            der.display()
        )
    };
    let who = java::run("WhoAmI", &[&url("kc-cert")], None).await;
    who.assert_success();
    assert!(who.get("session_user").starts_with("pgwarden_"), "{who}");
    // The same certificate for another cert user: 28000.
    let refused = java::run("WhoAmI", &[&url("kc-mapped")], None).await;
    assert!(!refused.success, "{refused}");
    assert_eq!(refused.get("error_sqlstate"), "28000", "{refused}");
    let start = &s.h.logs.wait_for("session_start", 1).await[0];
    assert_eq!(start["span"]["auth_method"], "cert", "{start}");
}
