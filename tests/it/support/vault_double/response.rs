//! Vault's response shapes: the envelope every answer wraps its payload in, and error bodies.

use http_body_util::Full;
use hyper::Response;
use hyper::body::Bytes;
use serde_json::{Value, json};

use super::rules::uuid;
use super::text::multierror1;

/// A response as hyper sends it.
pub(super) type Resp = Response<Full<Bytes>>;

/// Vault's response envelope; everything not set is empty/null as in Vault.
pub(super) struct Envelope {
    pub(super) lease_id: String,
    pub(super) renewable: bool,
    pub(super) lease_duration: u64,
    pub(super) data: Value,
    pub(super) warnings: Vec<String>,
    pub(super) auth: Value,
    /// Vault 1.x sends it; OpenBao 2.7 does not. pgwarden reads neither.
    pub(super) mount_type: &'static str,
}

impl Default for Envelope {
    fn default() -> Self {
        Envelope {
            lease_id: String::new(),
            renewable: false,
            lease_duration: 0,
            data: Value::Null,
            warnings: Vec::new(),
            auth: Value::Null,
            mount_type: "",
        }
    }
}

/// The envelope as JSON, with a fresh request id; empty `warnings` are `null` as in Vault.
pub(super) fn envelope_response(status: u16, e: Envelope) -> Resp {
    let warnings = if e.warnings.is_empty() {
        Value::Null
    } else {
        json!(e.warnings)
    };
    json_response(
        status,
        &json!({
            "request_id": uuid(),
            "lease_id": e.lease_id,
            "renewable": e.renewable,
            "lease_duration": e.lease_duration,
            "data": e.data,
            "wrap_info": null,
            "warnings": warnings,
            "auth": e.auth,
            "mount_type": e.mount_type,
        }),
    )
}

/// Vault's error body: `{"errors":[...]}`.
pub(super) fn errors(status: u16, messages: &[&str]) -> Resp {
    json_response(status, &json!({ "errors": messages }))
}

/// Vault's answer to a method the path does not support.
pub(super) fn unsupported() -> Resp {
    errors(405, &[&multierror1("unsupported operation")])
}

/// A JSON body as Vault writes it.
pub(super) fn json_response(status: u16, body: &Value) -> Resp {
    // Go's json.Encoder ends every body with a newline; so does Vault.
    respond(status, format!("{body}\n"))
}

/// A response with Vault's headers; an empty body carries no content type.
pub(super) fn respond(status: u16, body: String) -> Resp {
    let mut builder = Response::builder()
        .status(status)
        .header("cache-control", "no-store");
    if !body.is_empty() {
        builder = builder.header("content-type", "application/json");
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}
