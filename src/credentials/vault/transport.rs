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

/// pgwarden's one HTTP client for Vault, used for vaultrs' requests and the
/// raw ones alike (vaultrs' own client is replaced, whatever the settings).
///
/// - **No redirects.** reqwest follows up to 10 by default, to other hosts and
///   from https to http, re-sending `X-Vault-Token` (it strips only
///   `Authorization` and `Cookie`) and, on 307/308, the body (a secret id, a
///   JWT, a lease id). A redirect is an error here instead ([`REDIRECT_HINT`]):
///   point `[vault] address` at the active node or a load balancer.
/// - **No proxy.** `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` are ignored,
///   even for a loopback Vault Agent: the token goes to `[vault] address` and
///   nowhere else.
/// - **Trust.** With `ca_file`, its certificates alone: a certificate any
///   public or system CA would sign for the name is refused. Without it, the
///   system's roots (as vaultrs would). `https://` addresses may not be left
///   for `http://`.
pub(super) fn http_client(config: &VaultConfig) -> Result<reqwest::Client, SetupError> {
    let https = config.address.starts_with("https://");
    let mut builder = reqwest::ClientBuilder::new()
        .tls_backend_rustls()
        .timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .https_only(https);
    if let Some(ca) = &config.ca_file {
        builder = builder.tls_certs_only(ca_certificates(ca)?);
    } else if !https {
        // No TLS to verify; and the platform verifier, which an empty root
        // list would select, cannot always be built (reqwest issue 2988).
        builder = builder.tls_certs_only(Vec::new());
    }
    if let Some(id) = identity(config)? {
        builder = builder.identity(id);
    }
    builder
        .build()
        .map_err(|e| SetupError::Client(e.to_string()))
}

/// What an operator is told when Vault answers with a redirect.
pub(super) const REDIRECT_HINT: &str = "Vault answered with a redirect, which pgwarden does not follow \
     (a standby that does not forward requests?): set [vault] address to the active node or a load balancer";

fn ca_certificates(ca: &std::path::Path) -> Result<Vec<reqwest::Certificate>, SetupError> {
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
    Ok(certs)
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
        E::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code, .. },
        } if (300..400).contains(code) => CredentialError::new(
            ErrorKind::Unavailable,
            format!("{what}: {code}: {REDIRECT_HINT}"),
        ),
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
mod egress_tests;
#[cfg(test)]
mod trust_tests;
