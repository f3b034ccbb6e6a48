//! pgwarden: a TLS-terminating PostgreSQL proxy that gives every session a fresh credential.
#![forbid(unsafe_code)]

pub(crate) mod admin;
pub mod audit;
pub mod auth;
pub mod backup;
pub(crate) mod cancel;
pub mod cli;
pub mod config;
pub(crate) mod credentials;
pub mod daemon;
pub mod dev;
pub mod embedded;
pub(crate) mod error_text;
pub(crate) mod handshake;
pub(crate) mod listener;
pub mod logging;
pub mod metrics;
pub(crate) mod net;
pub mod protocol;
pub mod relay;
pub mod reload;
pub(crate) mod route;
pub mod server;
pub mod session;
pub(crate) mod state;
pub mod systemd;
pub mod tls;
pub(crate) mod upstream;

/// What the fuzz targets in `fuzz/` call that is not otherwise public. Not an
/// API: it exists so that the crate's modules can stay `pub(crate)`.
#[doc(hidden)]
pub mod fuzzing {
    use crate::protocol::startup::StartupMessage;
    use crate::session::ParameterRefusal;

    /// `session::parameters::forwarded`: the startup parameters a route lets
    /// through to the database, with `options` rewritten.
    pub fn forwarded(
        startup: &StartupMessage,
        allowed: &[String],
    ) -> Result<Vec<(String, String)>, ParameterRefusal> {
        crate::session::forwarded(startup, allowed)
    }

    /// What `listener::proxy::read_trusted` made of a trusted peer's first bytes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ProxyStart {
        Client(std::net::SocketAddr),
        Balancer,
        /// No header: the first byte of the PostgreSQL stream.
        Stream(u8),
    }

    /// Why `listener::proxy::read_trusted` refused, without the message.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ProxyRefusal {
        Timeout,
        Closed,
        Io,
        Missing,
        TooLong,
        Oversized(usize),
        Malformed,
        Datagram,
    }

    /// `listener::proxy::read_trusted` with a deadline an hour away (needs a
    /// runtime with time enabled).
    pub async fn read_proxy_header<S: tokio::io::AsyncRead + Unpin>(
        io: &mut S,
        required: bool,
    ) -> Result<ProxyStart, ProxyRefusal> {
        use crate::listener::proxy::{Proxied, ProxyError as E, Start, read_trusted};
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
        match read_trusted(io, required, deadline).await {
            Ok(Start::Header(Proxied::Client(a))) => Ok(ProxyStart::Client(a)),
            Ok(Start::Header(Proxied::Balancer)) => Ok(ProxyStart::Balancer),
            Ok(Start::Stream(b)) => Ok(ProxyStart::Stream(b)),
            Err(e) => Err(match e {
                E::Timeout => ProxyRefusal::Timeout,
                E::Closed => ProxyRefusal::Closed,
                E::Io(_) => ProxyRefusal::Io,
                E::Missing => ProxyRefusal::Missing,
                E::TooLong => ProxyRefusal::TooLong,
                E::Oversized(n) => ProxyRefusal::Oversized(n),
                E::Malformed(_) => ProxyRefusal::Malformed,
                E::Datagram => ProxyRefusal::Datagram,
            }),
        }
    }

    /// What pgwarden's upstream SCRAM client made of a server's messages.
    #[derive(Debug)]
    pub struct ScramRun {
        /// The server-first was taken: its salt and iteration count.
        pub first: Option<(Vec<u8>, u32)>,
        /// The same server-first sent again was refused as out of order.
        pub second_refused: bool,
        /// The client-final, when the count was at most `max_iterations`.
        pub client_final: Option<Vec<u8>>,
        /// Whether the server-final was accepted, when a client-final was made.
        pub accepted: Option<bool>,
    }

    /// `upstream::scram::ScramClient` with client nonce `nonce`, channel binding
    /// `n` (0), `y` (1) or `p` with a 32-byte hash of `binding` (2 and up).
    pub fn scram_client(
        binding: u8,
        nonce: &str,
        password: &[u8],
        server_first: &[u8],
        server_final: &[u8],
        max_iterations: u32,
    ) -> ScramRun {
        use crate::upstream::scram::{Binding, fuzz_run};
        let binding = match binding {
            0 => Binding::Unsupported,
            1 => Binding::Unrequested,
            b => Binding::TlsServerEndPoint(vec![b; 32]),
        };
        fuzz_run(
            binding,
            nonce,
            password,
            server_first,
            server_final,
            max_iterations,
        )
    }
}
