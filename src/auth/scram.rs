//! The server side of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS.
//!
//! The message exchange and proof checking are pgwire's `ScramServerAuth`, driven
//! here message by message on frames this module reads itself (pgwire's own
//! decoders panic on bad lengths). Channel binding uses the listener certificate.

use pgwire::api::auth::sasl::scram::{ScramSecret, ScramServerAuth};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{AuthError, AuthMethod, ScramVerifier};
use crate::protocol::MAX_AUTH_MESSAGE_LEN;
use crate::protocol::backend;
use crate::protocol::frame::{FrameError, FramedStream};

const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// SCRAM server configuration shared by every session.
pub struct ScramServer {
    /// For TLS sessions: knows the listener certificate, so offers -PLUS.
    with_binding: Option<ScramServerAuth>,
    /// For plaintext sessions (and TLS ones whose certificate has no usable hash).
    without_binding: ScramServerAuth,
    /// Process-wide secret from which mock salts for unknown users are derived,
    /// so a user name always gets the same salt, as a real one would.
    mock_key: [u8; 32],
}

impl ScramServer {
    /// `listener_cert_pem`: the listener's certificate chain, leaf first, when TLS is on.
    pub fn new(listener_cert_pem: Option<&[u8]>) -> Self {
        let with_binding = listener_cert_pem.and_then(|pem| {
            let mut auth = ScramServerAuth::new();
            auth.configure_certificate(pem).ok().map(|_| auth)
        });
        Self {
            with_binding,
            without_binding: ScramServerAuth::new(),
            mock_key: super::verifier::random_bytes(),
        }
    }

    /// Whether TLS sessions are offered SCRAM-SHA-256-PLUS.
    pub fn offers_channel_binding(&self) -> bool {
        self.with_binding.is_some()
    }

    /// One SASL exchange. With `verifier == None` it runs against a mock
    /// verifier and always ends in `AuthError::Failed`.
    pub(super) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut FramedStream<S>,
        user: &str,
        verifier: Option<&ScramVerifier>,
        tls: bool,
    ) -> Result<AuthMethod, AuthError> {
        let plus = if tls {
            self.with_binding.as_ref()
        } else {
            None
        };
        let mechanisms: &[&str] = if plus.is_some() {
            &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        } else {
            &[SCRAM_SHA_256]
        };
        write(stream, &backend::auth_sasl(mechanisms)).await?;

        let first = read_password_message(stream).await?;
        let initial = backend::parse_sasl_initial(first.body())
            .ok_or(AuthError::Protocol("malformed SASLInitialResponse"))?;
        let (server, method) = match initial.mechanism {
            SCRAM_SHA_256_PLUS if plus.is_some() => (plus, AuthMethod::ScramSha256Plus),
            SCRAM_SHA_256 => (Some(&self.without_binding), AuthMethod::ScramSha256),
            _ => return Err(AuthError::Protocol("unsupported SASL mechanism")),
        };
        let server = server.unwrap_or(&self.without_binding);
        // The gs2 header must agree with the mechanism: "p=" only with -PLUS.
        let wants_binding = initial.data.starts_with(b"p=");
        if wants_binding != (method == AuthMethod::ScramSha256Plus) {
            return Err(AuthError::Protocol(
                "channel binding flag does not match mechanism",
            ));
        }
        if method == AuthMethod::ScramSha256
            && tls
            && initial.data.starts_with(b"y,")
            && plus.is_some()
        {
            // The client could bind but believes we cannot: a downgrade.
            return Err(AuthError::Protocol("channel binding downgrade"));
        }

        let secret = match verifier {
            Some(v) => secret_of(v),
            None => self.mock_secret(user),
        };
        let (server_first, waiting) = server
            .on_client_first_message_with_secret(initial.data, secret)
            .map_err(|_| AuthError::Protocol("malformed SCRAM client-first-message"))?;
        write(
            stream,
            &backend::auth_sasl_continue(server_first.as_bytes()),
        )
        .await?;

        let last = read_password_message(stream).await?;
        match waiting.on_client_final_message(last.body()) {
            Ok(server_final) if verifier.is_some() => {
                write(stream, &backend::auth_sasl_final(server_final.as_bytes())).await?;
                Ok(method)
            }
            // A mock verifier cannot succeed; should a proof ever match by chance,
            // it still fails.
            Ok(_) | Err(pgwire::error::PgWireError::InvalidPassword(_)) => Err(AuthError::Failed {
                reason: "wrong password",
            }),
            Err(_) => Err(AuthError::Protocol("malformed SCRAM client-final-message")),
        }
    }

    /// A stable fake verifier for a user that does not exist.
    fn mock_secret(&self, user: &str) -> ScramSecret {
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.mock_key),
            user.as_bytes(),
        );
        ScramSecret::Verifier {
            salt: tag.as_ref()[..16].to_vec(),
            iterations: 4096,
            stored_key: super::verifier::random_bytes::<32>().to_vec(),
            server_key: super::verifier::random_bytes::<32>().to_vec(),
        }
    }
}

fn secret_of(v: &ScramVerifier) -> ScramSecret {
    ScramSecret::Verifier {
        salt: v.salt.clone(),
        iterations: v.iterations as usize,
        stored_key: v.stored_key.clone(),
        server_key: v.server_key.clone(),
    }
}

async fn write<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut FramedStream<S>,
    bytes: &[u8],
) -> Result<(), AuthError> {
    stream.write_all(bytes).await.map_err(|_| AuthError::Closed)
}

async fn read_password_message<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut FramedStream<S>,
) -> Result<crate::protocol::frame::Frame, AuthError> {
    match stream.read_frame(MAX_AUTH_MESSAGE_LEN).await {
        Ok(f) if f.tag == b'p' => Ok(f),
        Ok(_) => Err(AuthError::Protocol("expected a SASL response")),
        Err(FrameError::InvalidLength { .. }) => Err(AuthError::Protocol("invalid message length")),
        Err(_) => Err(AuthError::Closed),
    }
}
