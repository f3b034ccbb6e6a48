//! Messages pgwarden itself sends to clients before the relay, and the client
//! SASL messages it parses.
//!
//! Encoding goes through pgwire's message types; decoding of client messages is
//! done here on an already framed body, with every length checked, because
//! pgwire's decoders panic on malformed lengths.

use bytes::BytesMut;
use pgwire::messages::Message;
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};

/// SQLSTATE codes pgwarden answers with (PostgreSQL's own).
pub mod sqlstate {
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    pub const QUERY_CANCELED: &str = "57014";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// PostgreSQL's code for `permission denied to set parameter`.
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    /// PostgreSQL's code for a malformed `-c` switch in `options`.
    pub const SYNTAX_ERROR: &str = "42601";
}

fn encode<M: Message>(m: &M) -> BytesMut {
    let mut buf = BytesMut::with_capacity(m.message_length() + 1);
    // Only our own, bounded messages are encoded here; the length check cannot trip.
    if m.encode(&mut buf).is_err() {
        buf.clear();
    }
    buf
}

/// A FATAL ErrorResponse with a SQLSTATE and client-safe text.
pub fn fatal(code: &str, message: &str) -> BytesMut {
    encode(&ErrorResponse::new(vec![
        (b'S', "FATAL".to_owned()),
        (b'V', "FATAL".to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ]))
}

pub fn auth_ok() -> BytesMut {
    encode(&Authentication::Ok)
}

pub fn auth_sasl(mechanisms: &[&str]) -> BytesMut {
    encode(&Authentication::SASL(
        mechanisms.iter().map(|m| (*m).to_owned()).collect(),
    ))
}

pub fn auth_sasl_continue(data: &[u8]) -> BytesMut {
    encode(&Authentication::SASLContinue(data.to_vec().into()))
}

pub fn auth_sasl_final(data: &[u8]) -> BytesMut {
    encode(&Authentication::SASLFinal(data.to_vec().into()))
}

pub fn backend_key_data(pid: i32, key: &[u8]) -> BytesMut {
    let secret_key = match <[u8; 4]>::try_from(key) {
        Ok(k) => SecretKey::I32(i32::from_be_bytes(k)),
        Err(_) => SecretKey::Bytes(key.to_vec().into()),
    };
    encode(&BackendKeyData::new(pid, secret_key))
}

/// NegotiateProtocolVersion: the newest minor pgwarden supports and the
/// `_pq_.*` options it does not.
pub fn negotiate_protocol_version(minor: u16, unsupported: &[String]) -> BytesMut {
    encode(&NegotiateProtocolVersion::new(
        i32::from(minor),
        unsupported.to_vec(),
    ))
}

pub fn parameter_status(name: &str, value: &str) -> BytesMut {
    encode(&ParameterStatus::new(name.to_owned(), value.to_owned()))
}

pub fn ready_for_query_idle() -> BytesMut {
    encode(&ReadyForQuery::new(TransactionStatus::Idle))
}

/// The first SASL message: mechanism name and the optional initial response.
#[derive(PartialEq, Eq)]
pub struct SaslInitial<'a> {
    pub mechanism: &'a str,
    pub data: &'a [u8],
}

/// Parses a SASLInitialResponse body: `mechanism\0, len:i32, data`.
pub fn parse_sasl_initial(body: &[u8]) -> Option<SaslInitial<'_>> {
    let nul = body.iter().position(|&b| b == 0)?;
    let mechanism = std::str::from_utf8(&body[..nul]).ok()?;
    let rest = &body[nul + 1..];
    let (len, data) = rest.split_first_chunk::<4>()?;
    let len = i32::from_be_bytes(*len);
    if len < 0 || len as usize != data.len() {
        return None;
    }
    Some(SaslInitial { mechanism, data })
}

/// Parses an ErrorResponse/NoticeResponse body into its (code, value) fields.
pub fn parse_error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut fields = Vec::new();
    let mut rest = body;
    while let Some((&code, after)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let Some(nul) = after.iter().position(|&b| b == 0) else {
            break;
        };
        fields.push((code, String::from_utf8_lossy(&after[..nul]).into_owned()));
        rest = &after[nul + 1..];
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_has_postgres_shape() {
        let m = fatal("28P01", "password authentication failed for user \"x\"");
        assert_eq!(m[0], b'E');
        let len = i32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize;
        assert_eq!(len + 1, m.len());
        let fields = parse_error_fields(&m[5..]);
        assert!(fields.contains(&(b'S', "FATAL".into())));
        assert!(fields.contains(&(b'V', "FATAL".into())));
        assert!(fields.contains(&(b'C', "28P01".into())));
    }

    #[test]
    fn backend_key_data_lengths() {
        assert_eq!(backend_key_data(7, &[1, 2, 3, 4]).len(), 1 + 4 + 4 + 4);
        assert_eq!(backend_key_data(7, &[9; 32]).len(), 1 + 4 + 4 + 32);
    }

    #[test]
    fn sasl_initial_parsing_rejects_bad_lengths() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(b"abc");
        let p = parse_sasl_initial(&body).unwrap();
        assert_eq!((p.mechanism, p.data), ("SCRAM-SHA-256", &b"abc"[..]));
        for bad_len in [-1i32, 2, 4, i32::MAX, i32::MIN] {
            let mut body = b"SCRAM-SHA-256\0".to_vec();
            body.extend_from_slice(&bad_len.to_be_bytes());
            body.extend_from_slice(b"abc");
            assert!(parse_sasl_initial(&body).is_none());
        }
        assert!(parse_sasl_initial(b"no-terminator").is_none());
        assert!(parse_sasl_initial(b"M\0\0\0").is_none());
    }
}
