//! Client authentication: who may log in to pgwarden itself.
//!
//! SCRAM-SHA-256 (and -PLUS with `tls-server-end-point` channel binding on TLS)
//! against verifiers from the configuration, or `trust` from explicit CIDRs only.
//! An unknown user walks the very same SCRAM path against a mock verifier and
//! fails with the very same error as a wrong password, so the answer never tells
//! which user names exist. Nothing here ever logs a proof, nonce or verifier.

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
}

/// How a client was authenticated, for the session record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Trust,
    ScramSha256,
    ScramSha256Plus,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Trust => "trust",
            AuthMethod::ScramSha256 => "SCRAM-SHA-256",
            AuthMethod::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
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
    #[error("client went away during authentication")]
    Closed,
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
            if let UserAuth::Scram(v) = auth {
                *counts.entry(v.iterations).or_default() += 1;
            }
        }
        if let Some((&iterations, _)) = counts.iter().max_by_key(|(i, n)| (**n, **i)) {
            scram.set_mock_iterations(iterations);
        }
        Self { users, scram }
    }

    /// Runs the authentication exchange for `user` on `stream`. On success the
    /// caller still owes the client AuthenticationOk.
    pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut FramedStream<S>,
        user: &str,
        peer: IpAddr,
        tls: bool,
    ) -> Result<AuthMethod, AuthError> {
        match self.users.get(user) {
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
