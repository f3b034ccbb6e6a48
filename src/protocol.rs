//! The PostgreSQL wire protocol, as far as pgwarden needs to speak it itself.
//!
//! pgwarden decodes only what happens *before* the relay: the pre-startup packets
//! (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage), the client's SASL
//! messages, and the upstream's answers during login. After the welcome it copies
//! bytes and at most reads message headers ([`frame::FrameTracker`]).
//!
//! Everything here frames a message (type byte + length) and checks the length
//! against a limit *before* reading a body, so no input can make it allocate
//! without bound or panic. It never logs message bodies: they carry passwords
//! and SCRAM proofs.

pub mod backend;
pub mod frame;
pub mod options;
pub mod startup;

/// Pre-startup request codes (the `code` field after the length).
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// Protocol versions pgwarden speaks to clients: 3.0 and 3.2.
pub const PROTOCOL_3_0: u32 = 3 << 16;
pub const PROTOCOL_3_2: u32 = (3 << 16) | 2;

/// PostgreSQL's own limit on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;
/// The shortest pre-startup packet: length and code.
pub const MIN_STARTUP_PACKET_LEN: usize = 8;
/// PostgreSQL's limit on a SASL or password message (`PG_MAX_AUTH_TOKEN_LENGTH`).
pub const MAX_AUTH_MESSAGE_LEN: usize = 65_535;
/// The first byte of a TLS handshake record: a direct-TLS client starts with it.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The protocol minor version a client and pgwarden agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolMinor {
    /// 3.0: 4-byte cancel keys.
    V0,
    /// 3.2 (PostgreSQL 18): variable-length cancel keys.
    V2,
}

impl ProtocolMinor {
    /// Length of the cancel key pgwarden hands out on this version.
    pub fn cancel_key_len(self) -> usize {
        match self {
            ProtocolMinor::V0 => 4,
            ProtocolMinor::V2 => 32,
        }
    }
}

/// On the SSLRequest path, a client may offer no ALPN or `postgresql`; rustls
/// already refuses any other offer because the server lists only `postgresql`.
pub fn tls_alpn_ok(negotiated: Option<&[u8]>) -> bool {
    matches!(negotiated, None | Some(b"postgresql"))
}
