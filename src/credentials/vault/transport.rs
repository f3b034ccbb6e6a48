//! The Vault client's transport helpers: the HTTP client that trusts
//! `[vault] ca_file` alone, the TLS client identity, secret files, and error
//! text that carries neither a URL's secrets nor a response's.

use secrecy::SecretString;
use serde::Deserialize;

use crate::config::VaultConfig;
use crate::credentials::{CredentialError, ErrorKind};

/// Why pgwarden's Vault client could not be built. Never quotes a key.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("[vault] ca_file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("[vault] ca_file {path}: {detail}")]
    CaPem { path: String, detail: String },
    #[error("[vault] ca_file {path}: no certificate in it")]
    NoCertificate { path: String },
    #[error("[vault] client_cert_file: {0}")]
    ClientCert(std::io::Error),
    #[error("[vault] client_key_file: {0}")]
    ClientKey(std::io::Error),
    #[error("[vault] client certificate or key is not valid PEM")]
    ClientIdentity,
    #[error("[vault]: {0}")]
    Client(String),
}

/// The HTTP client for a Vault whose server certificate must chain to `ca`
/// and nothing else: a certificate any public or system CA would sign for the
/// name is refused. Otherwise built as vaultrs builds its own.
pub(super) fn http_trusting_only(
    config: &VaultConfig,
    ca: &std::path::Path,
) -> Result<reqwest::Client, SetupError> {
    let path = || ca.display().to_string();
    let pem = std::fs::read(ca).map_err(|source| SetupError::CaFile {
        path: path(),
        source,
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SetupError::CaPem {
        path: path(),
        detail: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(SetupError::NoCertificate { path: path() });
    }
    let mut builder = reqwest::ClientBuilder::new()
        .tls_backend_rustls()
        .timeout(config.timeout)
        .tls_certs_only(certs);
    if let Some(id) = identity(config)? {
        builder = builder.identity(id);
    }
    builder
        .build()
        .map_err(|e| SetupError::Client(e.to_string()))
}

pub(super) fn identity(config: &VaultConfig) -> Result<Option<reqwest::Identity>, SetupError> {
    match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert), Some(key)) => {
            let mut pem = std::fs::read(cert).map_err(SetupError::ClientCert)?;
            pem.extend(std::fs::read(key).map_err(SetupError::ClientKey)?);
            // The key's bytes must not leak through the error: report only the kind.
            reqwest::Identity::from_pem(&pem)
                .map(Some)
                .map_err(|_| SetupError::ClientIdentity)
        }
        _ => Ok(None),
    }
}

pub(super) fn read_secret(path: &std::path::Path) -> Result<SecretString, CredentialError> {
    std::fs::read_to_string(path)
        .map(|s| SecretString::from(s.trim_end_matches(['\n', '\r']).to_owned()))
        .map_err(|e| {
            CredentialError::new(
                ErrorKind::Refused,
                format!("cannot read {}: {e}", path.display()),
            )
        })
}

/// `errors` of a Vault error body, joined; or the (truncated) body.
pub(super) fn error_text(body: &str) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<String>,
    }
    match serde_json::from_str::<Errors>(body) {
        Ok(e) => e.errors.join("; ").replace('\n', " ").trim().to_owned(),
        Err(_) => body.chars().take(200).collect(),
    }
}

/// A reqwest error without the URL (it carries no secret, but keep lines short).
pub(super) fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match std::error::Error::source(e) {
        Some(s) => format!("{kind}: {s}"),
        None => kind.to_owned(),
    }
}

pub(super) fn classify_client_error(
    what: &str,
    e: &vaultrs::error::ClientError,
) -> CredentialError {
    use vaultrs::error::ClientError as E;
    match e {
        E::APIError { code, errors } => {
            let kind = if *code == 429 || *code >= 500 {
                ErrorKind::Unavailable
            } else {
                ErrorKind::Refused
            };
            CredentialError::new(
                kind,
                format!("{what}: {code} {}", errors.join("; ").replace('\n', " ")),
            )
        }
        other => {
            // A transport failure says what failed (refused, timed out, TLS);
            // nothing else in the chain is shown, as it may quote a response.
            let mut next = std::error::Error::source(other);
            while let Some(e) = next {
                if let Some(r) = e.downcast_ref::<reqwest::Error>() {
                    return CredentialError::new(
                        ErrorKind::Unavailable,
                        format!("{what}: {}", without_url(r)),
                    );
                }
                next = e.source();
            }
            CredentialError::new(ErrorKind::Unavailable, format!("{what}: {other}"))
        }
    }
}

#[cfg(test)]
mod tests {
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
                "credentials::vault::transport::tests::trust_checks_with_the_given_system_roots",
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
                reqwest::Certificate::from_pem_bundle(&std::fs::read(&configured).unwrap())
                    .unwrap(),
            )
            .build()
            .unwrap();
        merged
            .get(&impostor)
            .send()
            .await
            .expect("control: the system's roots trust the impostor");

        let ours = http_trusting_only(&config(&configured), &configured).unwrap();
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
}
