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
    /// The iteration count of mock verifiers: that of the configured ones.
    mock_iterations: u32,
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
            mock_iterations: 4096,
        }
    }

    /// Mock verifiers for unknown users use `iterations`, as real ones do.
    pub fn set_mock_iterations(&mut self, iterations: u32) {
        self.mock_iterations = iterations;
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
                user: user.to_owned(),
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
            iterations: self.mock_iterations as usize,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::verifier::{GENERATED_PASSWORD_LEN, generate_password};
    use crate::auth::{Authenticator, UserAuth};
    use crate::protocol::backend::parse_sasl_initial;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use postgres_protocol::message::frontend;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;
    use std::net::IpAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Reads one backend message: (tag, body).
    async fn read_msg(s: &mut DuplexStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.unwrap();
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.unwrap();
        (head[0], body)
    }

    /// A client side driven by postgres-protocol's SCRAM, an independent
    /// implementation. Returns whether the server sent SASLFinal.
    async fn client(mut s: DuplexStream, password: &str) -> bool {
        let (tag, body) = read_msg(&mut s).await;
        assert_eq!((tag, &body[..4]), (b'R', &10i32.to_be_bytes()[..]));
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let mut out = bytes::BytesMut::new();
        frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out).unwrap();
        s.write_all(&out).await.unwrap();
        let (_, body) = read_msg(&mut s).await;
        assert_eq!(&body[..4], &11i32.to_be_bytes());
        scram.update(&body[4..]).unwrap();
        out.clear();
        frontend::sasl_response(scram.message(), &mut out).unwrap();
        s.write_all(&out).await.unwrap();
        let mut head = [0u8; 1];
        match s.read_exact(&mut head).await {
            Ok(_) => {
                let mut rest = [0u8; 8];
                s.read_exact(&mut rest).await.unwrap();
                let code = i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
                head[0] == b'R' && code == 12
            }
            Err(_) => false,
        }
    }

    fn authenticator(password: &str) -> Authenticator {
        let verifier = ScramVerifier::from_password(&password.to_owned().into());
        let mut users = HashMap::new();
        users.insert("alice".to_owned(), UserAuth::Scram(verifier));
        users.insert(
            "sidecar".to_owned(),
            UserAuth::Trust {
                from: vec!["127.0.0.1/32".parse().unwrap()],
            },
        );
        Authenticator::new(users, ScramServer::new(None))
    }

    async fn run(
        auth: &Authenticator,
        user: &str,
        password: &str,
        peer: &str,
    ) -> (Result<AuthMethod, AuthError>, bool) {
        let (server_end, client_end) = tokio::io::duplex(4096);
        let mut framed = FramedStream::new(server_end);
        let client_task = tokio::spawn({
            let password = password.to_owned();
            async move { client(client_end, &password).await }
        });
        let result = auth
            .authenticate(&mut framed, user, peer.parse().unwrap(), false, None)
            .await;
        drop(framed);
        (result, client_task.await.unwrap())
    }

    #[tokio::test]
    async fn right_password_passes_and_server_proves_itself() {
        let pw = generate_password(GENERATED_PASSWORD_LEN);
        let auth = authenticator(pw.expose_secret());
        let (result, got_final) = run(&auth, "alice", pw.expose_secret(), "10.0.0.1").await;
        assert_eq!(result.unwrap(), AuthMethod::ScramSha256);
        // postgres-protocol checked the server signature in SASLFinal.
        assert!(got_final);
    }

    #[tokio::test]
    async fn wrong_password_and_unknown_user_fail_the_same_way() {
        let auth = authenticator("right password");
        let (wrong, final1) = run(&auth, "alice", "wrong password", "10.0.0.1").await;
        let (unknown, final2) = run(&auth, "mallory", "anything", "10.0.0.1").await;
        assert!(matches!(wrong, Err(AuthError::Failed { .. })));
        assert!(matches!(unknown, Err(AuthError::Failed { .. })));
        assert!(!final1 && !final2);
    }

    #[tokio::test]
    async fn trust_only_from_its_networks() {
        let auth = authenticator("x");
        let (server_end, _client_end) = tokio::io::duplex(64);
        let mut framed = FramedStream::new(server_end);
        let ok = auth
            .authenticate(
                &mut framed,
                "sidecar",
                "127.0.0.1".parse().unwrap(),
                false,
                None,
            )
            .await;
        assert_eq!(ok.unwrap(), AuthMethod::Trust);
        // From elsewhere: a full SCRAM exchange that cannot succeed.
        let (result, got_final) = run(&auth, "sidecar", "", "10.9.9.9").await;
        assert!(matches!(result, Err(AuthError::Failed { .. })));
        assert!(!got_final);
    }

    /// A cert user: the verified certificate must name it; nothing is read
    /// from the client. A cert+scram user needs the certificate and then SCRAM.
    #[tokio::test]
    async fn cert_users_need_a_certificate_that_names_them() {
        let pw = generate_password(GENERATED_PASSWORD_LEN);
        let verifier = ScramVerifier::from_password(&pw);
        let mut users = HashMap::new();
        let names = vec!["kc".to_owned(), "spiffe://cluster/ns/kc".to_owned()];
        users.insert(
            "kc".to_owned(),
            UserAuth::Cert {
                names: names.clone(),
            },
        );
        users.insert(
            "both".to_owned(),
            UserAuth::CertAndScram { names, verifier },
        );
        let auth = Authenticator::new(users, ScramServer::new(None));
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        async fn cert(
            auth: &Authenticator,
            user: &str,
            names: Option<&[&str]>,
        ) -> Result<AuthMethod, AuthError> {
            let (server_end, _client_end) = tokio::io::duplex(64);
            let mut framed = FramedStream::new(server_end);
            let names: Option<Vec<String>> =
                names.map(|n| n.iter().map(|s| s.to_string()).collect());
            let peer = "10.0.0.1".parse().unwrap();
            auth.authenticate(&mut framed, user, peer, true, names.as_deref())
                .await
        }
        assert_eq!(
            cert(&auth, "kc", Some(&["kc"])).await.unwrap(),
            AuthMethod::Cert
        );
        // A SAN named in cert_names will do as well.
        assert_eq!(
            cert(&auth, "kc", Some(&["other", "spiffe://cluster/ns/kc"]))
                .await
                .unwrap(),
            AuthMethod::Cert
        );
        assert!(matches!(
            cert(&auth, "kc", None).await,
            Err(AuthError::CertificateRequired)
        ));
        assert!(matches!(
            cert(&auth, "kc", Some(&["KC", "kc2"])).await,
            Err(AuthError::CertificateMismatch { .. })
        ));
        // cert+scram: no SCRAM without the certificate (the client's end is
        // never read from: the refusal comes first).
        assert!(matches!(
            cert(&auth, "both", Some(&["mallory"])).await,
            Err(AuthError::CertificateMismatch { .. })
        ));
        assert!(matches!(
            cert(&auth, "both", None).await,
            Err(AuthError::CertificateRequired)
        ));

        // With the certificate, SCRAM decides.
        let (server_end, client_end) = tokio::io::duplex(4096);
        let mut framed = FramedStream::new(server_end);
        let client_task = tokio::spawn({
            let password = pw.expose_secret().to_owned();
            async move { client(client_end, &password).await }
        });
        let names = vec!["kc".to_owned()];
        let result = auth
            .authenticate(&mut framed, "both", peer, false, Some(&names))
            .await;
        drop(framed);
        assert_eq!(result.unwrap(), AuthMethod::CertScramSha256);
        assert!(client_task.await.unwrap());
    }

    #[tokio::test]
    async fn unknown_user_gets_a_stable_salt() {
        let server = ScramServer::new(None);
        let salt = |s: ScramSecret| match s {
            ScramSecret::Verifier { salt, .. } => salt,
            _ => unreachable!(),
        };
        assert_eq!(
            salt(server.mock_secret("ghost")),
            salt(server.mock_secret("ghost"))
        );
        assert_ne!(
            salt(server.mock_secret("ghost")),
            salt(server.mock_secret("other"))
        );
    }

    #[test]
    fn an_unknown_users_mock_verifier_uses_the_configured_iteration_count() {
        let iterations = |s: ScramSecret| match s {
            ScramSecret::Verifier { iterations, .. } => iterations,
            _ => unreachable!(),
        };
        let mut users = HashMap::new();
        for (name, count) in [("a", 10_000), ("b", 10_000), ("c", 4096)] {
            let mut v = ScramVerifier::from_password(&"pw".to_owned().into());
            v.iterations = count;
            users.insert(name.to_owned(), UserAuth::Scram(v));
        }
        let auth = Authenticator::new(users, ScramServer::new(None));
        assert_eq!(iterations(auth.scram.mock_secret("ghost")), 10_000);
        // With no SCRAM user at all, PostgreSQL's default.
        let auth = Authenticator::new(HashMap::new(), ScramServer::new(None));
        assert_eq!(iterations(auth.scram.mock_secret("ghost")), 4096);
    }

    #[test]
    fn sasl_initial_is_parsed_strictly() {
        assert!(parse_sasl_initial(b"SCRAM-SHA-256\0\xff\xff\xff\xff").is_none());
    }
}
