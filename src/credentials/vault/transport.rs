//! The Vault client's transport helpers: the HTTP client that trusts
//! `[vault] ca_file` alone, the TLS client identity, secret files, and error
//! text that carries neither a URL's secrets nor a response's.

use secrecy::SecretString;
use serde::Deserialize;

use crate::config::VaultConfig;
use crate::credentials::{CredentialError, ErrorKind};

/// The HTTP client for a Vault whose server certificate must chain to `ca`
/// and nothing else: a certificate any public or system CA would sign for the
/// name is refused. Otherwise built as vaultrs builds its own.
pub(super) fn http_trusting_only(
    config: &VaultConfig,
    ca: &std::path::Path,
) -> Result<reqwest::Client, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("[vault] ca_file {}: {e}", ca.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("[vault] ca_file {}: {e}", ca.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "[vault] ca_file {}: no certificate in it",
            ca.display()
        ));
    }
    let mut builder = reqwest::ClientBuilder::new()
        .tls_backend_rustls()
        .timeout(config.timeout)
        .tls_certs_only(certs);
    if let Some(id) = identity(config)? {
        builder = builder.identity(id);
    }
    builder.build().map_err(|e| format!("[vault]: {e}"))
}

pub(super) fn identity(config: &VaultConfig) -> Result<Option<reqwest::Identity>, String> {
    match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert), Some(key)) => {
            let mut pem =
                std::fs::read(cert).map_err(|e| format!("[vault] client_cert_file: {e}"))?;
            pem.extend(std::fs::read(key).map_err(|e| format!("[vault] client_key_file: {e}"))?);
            // The key's bytes must not leak through the error: report only the kind.
            reqwest::Identity::from_pem(&pem)
                .map(Some)
                .map_err(|_| "[vault] client certificate or key is not valid PEM".to_owned())
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
