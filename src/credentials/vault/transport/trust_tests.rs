//! `[vault] ca_file` is trusted alone, checked in a child process with system
//! roots of the test's own.

use std::path::Path;

use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::config::VaultAuthConfig;
use crate::embedded::pki::Pki;

/// Where the parent test leaves the child its files.
const DIR_VAR: &str = "PGWARDEN_TRUST_TEST_DIR";
const PASSED: &str = "trust checks passed";

/// Writes `name.crt` (leaf and CA) and `name.key` for a 127.0.0.1 server of `pki`'s.
fn server_files(pki: &Pki, dir: &Path, name: &str) {
    let cert = pki.issue_server(&["127.0.0.1"]).unwrap();
    std::fs::write(
        dir.join(format!("{name}.crt")),
        format!("{}{}", cert.cert_pem, pki.ca_cert_pem()),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{name}.key")),
        cert.key_pem.expose_secret(),
    )
    .unwrap();
}

/// An HTTPS server on 127.0.0.1 with `name`'s certificate, answering 200 to anything.
async fn https_server(dir: &Path, name: &str) -> std::net::SocketAddr {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    // pgwarden's listener config, less its ALPN `postgresql`: this is HTTP.
    let mut tls = (*crate::tls::server_config(&crt, &key).unwrap()).clone();
    tls.alpn_protocols.clear();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

fn config(ca_file: &Path) -> VaultConfig {
    VaultConfig {
        address: "https://127.0.0.1".into(),
        ca_file: Some(ca_file.to_owned()),
        client_cert_file: None,
        client_key_file: None,
        namespace: None,
        timeout: std::time::Duration::from_secs(30),
        health_check_interval: std::time::Duration::from_secs(10),
        auth: VaultAuthConfig::Token {
            token: SecretString::from("unused".to_owned()),
        },
    }
}

/// With `ca_file` set, a Vault whose certificate the system's roots trust
/// but `ca_file` does not is refused; vaultrs, which adds `ca_file` to the
/// system's roots, would accept it. The checks run in a child process whose
/// system roots (`SSL_CERT_FILE`, read by rustls-native-certs) are a CA of
/// the test's own, since a test may not change its own environment.
#[test]
fn a_configured_ca_file_is_trusted_alone() {
    let dir = tempfile::tempdir().unwrap();
    let system_ca = Pki::new("a CA the system trusts").unwrap();
    let configured_ca = Pki::new("the CA of [vault] ca_file").unwrap();
    std::fs::write(dir.path().join("system-roots.pem"), system_ca.ca_cert_pem()).unwrap();
    std::fs::write(dir.path().join("vault-ca.crt"), configured_ca.ca_cert_pem()).unwrap();
    server_files(&system_ca, dir.path(), "impostor");
    server_files(&configured_ca, dir.path(), "genuine");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "credentials::vault::transport::trust_tests::trust_checks_with_the_given_system_roots",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(DIR_VAR, dir.path())
        .env("SSL_CERT_FILE", dir.path().join("system-roots.pem"))
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains(PASSED), "the checks did not run: {text}");
}

/// The child of [`a_configured_ca_file_is_trusted_alone`].
#[tokio::test]
#[ignore = "run by a_configured_ca_file_is_trusted_alone with its own system roots"]
async fn trust_checks_with_the_given_system_roots() {
    let dir = std::path::PathBuf::from(std::env::var(DIR_VAR).expect("run by its parent"));
    let configured = dir.join("vault-ca.crt");
    let impostor = format!(
        "https://{}/v1/sys/health",
        https_server(&dir, "impostor").await
    );
    let genuine = format!(
        "https://{}/v1/sys/health",
        https_server(&dir, "genuine").await
    );

    // Control: with the system's roots merged in, as vaultrs does, the
    // impostor is trusted.
    let merged = reqwest::ClientBuilder::new()
        .tls_backend_rustls()
        .tls_certs_merge(
            reqwest::Certificate::from_pem_bundle(&std::fs::read(&configured).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    merged
        .get(&impostor)
        .send()
        .await
        .expect("control: the system's roots trust the impostor");

    let ours = http_client(&config(&configured)).unwrap();
    assert!(
        ours.get(&impostor).send().await.is_err(),
        "a certificate outside ca_file was accepted"
    );
    ours.get(&genuine)
        .send()
        .await
        .expect("the server ca_file vouches for is reached");
    println!("{PASSED}");
}
