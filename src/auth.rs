//! Client authentication: who may log in to pgwarden itself.
//!
//! SCRAM-SHA-256 (and -PLUS with `tls-server-end-point` channel binding on TLS)
//! against verifiers from the configuration, `trust` from explicit CIDRs only,
//! or a client certificate that TLS verified and that names the user (`cert`,
//! or `cert+scram` for both). An unknown user walks the very same SCRAM path
//! against a mock verifier and fails with the very same error as a wrong
//! password, so the answer never tells which user names exist. (A certificate
//! user without a matching certificate is told 28000, as PostgreSQL's
//! `clientcert=verify-full` tells it: that reveals the method, no secret.)
//! Nothing here ever logs a proof, nonce or verifier.

pub mod scram;
pub mod verifier;

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::protocol::frame::FramedStream;
pub use scram::ScramServer;
pub use verifier::ScramVerifier;

/// How one configured user proves who they are.
#[derive(Debug, Clone, PartialEq)]
pub enum UserAuth {
    Scram(ScramVerifier),
    /// No password, but only from these networks (a loopback sidecar, say).
    Trust {
        from: Vec<IpNet>,
    },
    /// A verified client certificate one of whose names is in `names`.
    Cert {
        names: Vec<String>,
    },
    /// Both: such a certificate, then SCRAM.
    CertAndScram {
        names: Vec<String>,
        verifier: ScramVerifier,
    },
}

/// How a client was authenticated, for the session record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Trust,
    ScramSha256,
    ScramSha256Plus,
    Cert,
    CertScramSha256,
    CertScramSha256Plus,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Trust => "trust",
            AuthMethod::ScramSha256 => "SCRAM-SHA-256",
            AuthMethod::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            AuthMethod::Cert => "cert",
            AuthMethod::CertScramSha256 => "cert+SCRAM-SHA-256",
            AuthMethod::CertScramSha256Plus => "cert+SCRAM-SHA-256-PLUS",
        }
    }

    /// This SCRAM method after a certificate.
    fn after_cert(self) -> AuthMethod {
        match self {
            AuthMethod::ScramSha256Plus => AuthMethod::CertScramSha256Plus,
            _ => AuthMethod::CertScramSha256,
        }
    }
}

/// Why authentication did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong password, unknown user, or trust from the wrong network: one
    /// answer for all (the client is told only `user`; `reason` is for the log).
    #[error("{reason}")]
    Failed { user: String, reason: &'static str },
    /// The client broke the SASL exchange.
    #[error("malformed SASL exchange: {0}")]
    Protocol(&'static str),
    /// A certificate user came without a verified client certificate.
    #[error("no verified client certificate")]
    CertificateRequired,
    /// The verified certificate names someone else.
    #[error("the client certificate does not name this user")]
    CertificateMismatch { user: String },
    #[error("client went away during authentication")]
    Closed,
}

/// Whether the verified certificate's names (`cert`) include one of `allowed`.
fn certificate_names(
    user: &str,
    allowed: &[String],
    cert: Option<&[String]>,
) -> Result<(), AuthError> {
    let cert = cert.ok_or(AuthError::CertificateRequired)?;
    if cert.iter().any(|name| allowed.contains(name)) {
        Ok(())
    } else {
        Err(AuthError::CertificateMismatch {
            user: user.to_owned(),
        })
    }
}

/// The users pgwarden knows and the SCRAM machinery to check them.
pub struct Authenticator {
    /// Configured users by name.
    users: HashMap<String, UserAuth>,
    /// SCRAM server state shared by all sessions.
    scram: ScramServer,
}

impl Authenticator {
    pub fn new(users: HashMap<String, UserAuth>, mut scram: ScramServer) -> Self {
        // An unknown user's mock verifier uses the iteration count real ones
        // use most, so the server-first-message does not give it away.
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for auth in users.values() {
            if let UserAuth::Scram(v) | UserAuth::CertAndScram { verifier: v, .. } = auth {
                *counts.entry(v.iterations).or_default() += 1;
            }
        }
        if let Some((&iterations, _)) = counts.iter().max_by_key(|(i, n)| (**n, **i)) {
            scram.set_mock_iterations(iterations);
        }
        Self { users, scram }
    }

    /// Runs the authentication exchange for `user` on `stream`. `cert` is
    /// the names of the client certificate TLS verified, if there was one. On
    /// success the caller still owes the client AuthenticationOk.
    pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut FramedStream<S>,
        user: &str,
        peer: IpAddr,
        tls: bool,
        cert: Option<&[String]>,
    ) -> Result<AuthMethod, AuthError> {
        match self.users.get(user) {
            Some(UserAuth::Cert { names }) => {
                certificate_names(user, names, cert)?;
                Ok(AuthMethod::Cert)
            }
            Some(UserAuth::CertAndScram { names, verifier }) => {
                certificate_names(user, names, cert)?;
                let method = self
                    .scram
                    .exchange(stream, user, Some(verifier), tls)
                    .await?;
                Ok(method.after_cert())
            }
            Some(UserAuth::Trust { from }) if from.iter().any(|net| net.contains(&peer)) => {
                Ok(AuthMethod::Trust)
            }
            Some(UserAuth::Trust { .. }) => {
                // Same exchange and answer as a wrong password.
                self.scram.exchange(stream, user, None, tls).await?;
                Err(AuthError::Failed {
                    user: user.to_owned(),
                    reason: "trust user connecting from outside trust_from",
                })
            }
            Some(UserAuth::Scram(verifier)) => {
                self.scram.exchange(stream, user, Some(verifier), tls).await
            }
            None => {
                self.scram.exchange(stream, user, None, tls).await?;
                Err(AuthError::Failed {
                    user: user.to_owned(),
                    reason: "unknown user",
                })
            }
        }
    }
}
