//! One function per Vault endpoint the double serves, each answering as Vault does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hyper::Method;
use hyper::body::Bytes;
use serde_json::{Map, Value, json};

use super::Mode;
use super::response::{
    Envelope, Resp, envelope_response, errors, json_response, respond, unsupported,
};
use super::rules::{
    base62, calculate_ttl, expiry, parse_go_duration, secs, statements, unix, username, uuid,
};
use super::server::Req;
use super::state::{
    APPROLE_ROLE_NAME, DEFAULT_RENEW, LeaseData, LeaseSlot, State, Token, TokenKind, VAULT_VERSION,
    lock,
};
use super::text::{
    INVALID_ROLE_OR_SECRET_ID, INVALID_TOKEN, LEASE_EXPIRED, LEASE_ID_REQUIRED, LEASE_NOT_FOUND,
    LEASE_NOT_RENEWABLE, RENEW_FAILED_PREFIX, REVOKE_FAILED_PREFIX, go_expiration, go_quote,
    multierror1, unknown_role_text,
};

/// `GET|HEAD sys/health`; honours `activecode` and `sealedcode`.
pub(super) fn health(state: &State, req: &Req, mode: Mode) -> Resp {
    if req.method != Method::GET && req.method != Method::HEAD {
        return unsupported();
    }
    let sealed = mode == Mode::Sealed;
    let code = |name: &str, default: u16| {
        req.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(default)
    };
    let status = if sealed {
        code("sealedcode", 503)
    } else {
        code("activecode", 200)
    };
    let replication = if sealed { "unknown" } else { "disabled" };
    let mut body = json!({
        "initialized": true,
        "sealed": sealed,
        "standby": sealed,
        "performance_standby": false,
        "replication_performance_mode": replication,
        "replication_dr_mode": replication,
        "server_time_utc": unix(SystemTime::now()),
        "version": VAULT_VERSION,
        "enterprise": false,
        "echo_duration_ms": 0,
        "clock_skew_ms": 0,
        "replication_primary_canary_age_ms": 0,
        "removed_from_cluster": false,
    });
    if !sealed {
        body["cluster_name"] = json!(state.cluster_name);
        body["cluster_id"] = json!(state.cluster_id);
        body["ha_connection_healthy"] = json!(true);
        body["last_request_forwarding_heartbeat_ms"] = json!(0);
    }
    if req.method == Method::HEAD {
        return respond(status, String::new());
    }
    json_response(status, &body)
}

/// `auth/approle/login` (builtin/credential/approle/path_login.go).
pub(super) fn approle_login(state: &State, req: &Req) -> Resp {
    let body = match parse_body(&req.body) {
        Ok(body) => body,
        Err(text) => return errors(400, &[&text]),
    };
    let (role_id, secret_id) = state.approle.as_ref().expect("AppRole mounted");
    let given_role = string_field(&body, "role_id");
    if given_role.is_empty() {
        return errors(500, &["missing role_id"]);
    }
    if given_role != *role_id {
        return errors(400, &[INVALID_ROLE_OR_SECRET_ID]);
    }
    let given_secret = string_field(&body, "secret_id");
    if given_secret.is_empty() {
        return errors(400, &["missing secret_id"]);
    }
    if given_secret != *secret_id {
        return errors(400, &[INVALID_ROLE_OR_SECRET_ID]);
    }
    let meta = BTreeMap::from([("role_name".to_owned(), APPROLE_ROLE_NAME.to_owned())]);
    login(
        state,
        TokenKind::AppRole,
        "approle",
        "auth/approle/login",
        meta,
        state.approle_entity.clone(),
        "approle",
    )
}

/// `auth/kubernetes/login` (vault-plugin-auth-kubernetes, path_login.go).
pub(super) fn kubernetes_login(state: &State, req: &Req) -> Resp {
    let body = match parse_body(&req.body) {
        Ok(body) => body,
        Err(text) => return errors(400, &[&text]),
    };
    let (role, jwt) = state.kubernetes.as_ref().expect("Kubernetes auth mounted");
    let given_role = string_field(&body, "role");
    if given_role.is_empty() {
        return errors(400, &["missing role"]);
    }
    let given_jwt = string_field(&body, "jwt");
    if given_jwt.is_empty() {
        return errors(400, &["missing jwt"]);
    }
    if given_role != *role {
        return errors(
            400,
            &[&format!("invalid role name {}", go_quote(&given_role))],
        );
    }
    if given_jwt != *jwt {
        return errors(403, &["permission denied"]);
    }
    // The JWT is opaque here: the service account is taken to be `default/<role>`.
    let meta = BTreeMap::from([
        ("role".to_owned(), role.clone()),
        ("service_account_name".to_owned(), role.clone()),
        ("service_account_namespace".to_owned(), "default".to_owned()),
        ("service_account_secret_name".to_owned(), String::new()),
        ("service_account_uid".to_owned(), uuid()),
    ]);
    // Vault prefixes the plugin's display name (`<namespace>-<service account>`) with the mount.
    let display = format!("kubernetes-default-{role}");
    login(
        state,
        TokenKind::Kubernetes,
        &display,
        "auth/kubernetes/login",
        meta,
        state.kubernetes_entity.clone(),
        "kubernetes",
    )
}

/// Issues a login token with the current token TTLs (capped at the max, with the warning).
fn login(
    state: &State,
    kind: TokenKind,
    display_name: &str,
    path: &str,
    meta: BTreeMap<String, String>,
    entity_id: String,
    mount_type: &'static str,
) -> Resp {
    let (ttl, max) = *lock(&state.token_ttls);
    let now = unix(SystemTime::now());
    let (ttl, warnings) = match calculate_ttl(0, secs(ttl), secs(max), now, now) {
        Ok(result) => result,
        Err(e) => return errors(500, &[&multierror1(e)]),
    };
    let token = Token::service(kind, display_name, path, Some(meta), entity_id, true, ttl);
    let auth = token.auth_block(ttl);
    lock(&state.tokens).insert(token.id.clone(), token);
    envelope_response(
        200,
        Envelope {
            warnings,
            auth,
            mount_type,
            ..Envelope::default()
        },
    )
}

/// `GET auth/token/lookup-self`.
pub(super) fn lookup_self(token: &Token) -> Resp {
    envelope_response(
        200,
        Envelope {
            data: token.lookup_data(),
            mount_type: "token",
            ..Envelope::default()
        },
    )
}

/// `auth/token/renew-self`. Login tokens renew with their role's current TTLs, as the auth
/// plugins' renew callbacks do; the root token is not renewable.
pub(super) fn renew_self(state: &State, token: &Token, req: &Req) -> Resp {
    let body = match parse_body(&req.body) {
        Ok(body) => body,
        Err(text) => return errors(400, &[&text]),
    };
    let increment = match duration_field(&body, "increment") {
        Ok(increment) => increment,
        Err(e) => return errors(400, &[&e]),
    };
    let (ttl, max) = match token.kind {
        TokenKind::Root => return errors(400, &[LEASE_NOT_RENEWABLE]),
        TokenKind::AppRole | TokenKind::Kubernetes => {
            let (ttl, max) = *lock(&state.token_ttls);
            (secs(ttl), secs(max))
        }
        TokenKind::Created { ttl, max_ttl } => (ttl, max_ttl),
    };
    let now = SystemTime::now();
    let (ttl, warnings) = match calculate_ttl(increment, ttl, max, unix(token.issued), unix(now)) {
        Ok(result) => result,
        Err(e) => return errors(500, &[&multierror1(e)]),
    };
    let renewed = {
        let mut tokens = lock(&state.tokens);
        let Some(stored) = tokens.get_mut(&token.id) else {
            return errors(403, &[INVALID_TOKEN]);
        };
        stored.expires = Some(expiry(ttl));
        stored.last_renewal = Some(now);
        stored.clone()
    };
    envelope_response(
        200,
        Envelope {
            warnings,
            auth: renewed.auth_block(ttl),
            mount_type: "token",
            ..Envelope::default()
        },
    )
}

/// `GET <mount>/creds/<role>` (builtin/logical/database/path_creds_create.go).
pub(super) async fn issue_creds(state: &State, role_name: &str, token: &Token) -> Resp {
    let Some(role) = lock(&state.roles).get(role_name).cloned() else {
        return errors(400, &[&unknown_role_text(role_name)]);
    };
    if role.creation_statements.trim().is_empty() {
        return errors(500, &[&multierror1("empty creation statements")]);
    }
    let now = SystemTime::now();
    let (ttl, _) = match calculate_ttl(
        0,
        secs(role.default_ttl),
        secs(role.max_ttl),
        unix(now),
        unix(now),
    ) {
        Ok(result) => result,
        Err(e) => return errors(500, &[&multierror1(e)]),
    };
    let username = username(&token.display_name, role_name, unix(now));
    let password = (state.password)();
    // With `password_authentication = scram-sha-256` Vault hashes the password once and
    // substitutes the verifier (plugins/database/postgresql, NewUser).
    let in_sql = if state.scram_passwords {
        let secret = secrecy::SecretString::from(password.clone());
        let verifier = pgwarden::auth::ScramVerifier::from_password(&secret).to_text();
        secrecy::ExposeSecret::expose_secret(&verifier).to_owned()
    } else {
        password.clone()
    };
    let expiration = go_expiration(now + Duration::from_secs(ttl + 5));
    let subs = [
        ("name", username.as_str()),
        ("username", username.as_str()),
        ("password", in_sql.as_str()),
        ("expiration", expiration.as_str()),
    ];
    let sql = statements(&role.creation_statements, true, &subs);
    if let Err(e) = state.run_statements(&sql).await {
        // Unlike Vault, which runs them in one transaction and rolls back, statements that
        // already ran stay run.
        return errors(
            500,
            &[&multierror1(&format!("failed to execute query: {e}"))],
        );
    }
    let lease_id = format!("{}/creds/{}/{}", state.mount, role_name, base62(24));
    let (expires_at, _) = expiry(ttl);
    let slot = Arc::new(LeaseSlot {
        op: tokio::sync::Mutex::new(()),
        data: Mutex::new(LeaseData {
            lease_id: lease_id.clone(),
            role: role_name.to_owned(),
            username: username.clone(),
            token: token.id.clone(),
            issued_at: Instant::now(),
            issued_wall: SystemTime::now(),
            expires_at,
            renew_count: 0,
            revoking: false,
            retry_at: None,
        }),
    });
    lock(&state.leases).insert(lease_id.clone(), slot);
    envelope_response(
        200,
        Envelope {
            lease_id,
            renewable: true,
            lease_duration: ttl,
            data: json!({ "username": username, "password": password }),
            mount_type: "database",
            ..Envelope::default()
        },
    )
}

/// `sys/leases/renew`: the database backend's `secretCredsRenew`, then the expiration
/// manager's `Renew`.
pub(super) async fn renew_lease(state: &State, req: &Req) -> Resp {
    let body = match parse_body(&req.body) {
        Ok(body) => body,
        Err(text) => return errors(400, &[&text]),
    };
    let lease_id = string_field(&body, "lease_id");
    if lease_id.is_empty() {
        return errors(400, &[LEASE_ID_REQUIRED]);
    }
    let increment = match duration_field(&body, "increment") {
        Ok(increment) => increment,
        Err(e) => return errors(400, &[&e]),
    };
    let Some(slot) = state.lease(&lease_id) else {
        return errors(400, &[LEASE_NOT_FOUND]);
    };
    let _op = slot.op.lock().await;
    if !state.still_holds(&lease_id, &slot) {
        return errors(400, &[LEASE_NOT_FOUND]);
    }
    let (role_name, username, issued) = {
        let data = lock(&slot.data);
        if data.expires_at < Instant::now() {
            return errors(400, &[LEASE_EXPIRED]);
        }
        (
            data.role.clone(),
            data.username.clone(),
            unix(data.issued_wall),
        )
    };
    let Some(role) = lock(&state.roles).get(&role_name).cloned() else {
        let e = format!(
            "error during renew: could not find role with name {}",
            go_quote(&role_name)
        );
        return errors(400, &[&format!("{RENEW_FAILED_PREFIX}{e}")]);
    };
    let (default_ttl, max_ttl) = (secs(role.default_ttl), secs(role.max_ttl));
    // The database backend computes the new VALID UNTIL first…
    let now = SystemTime::now();
    let ttl = match calculate_ttl(increment, default_ttl, max_ttl, issued, unix(now)) {
        Ok((ttl, _)) => ttl,
        Err(e) => return errors(400, &[&format!("{RENEW_FAILED_PREFIX}{e}")]),
    };
    if ttl > 0 {
        let template = Some(role.renew_statements.as_str())
            .filter(|s| !s.trim().is_empty())
            .unwrap_or(DEFAULT_RENEW);
        let expiration = go_expiration(now + Duration::from_secs(ttl + 5));
        let subs = [
            ("name", username.as_str()),
            ("username", username.as_str()),
            ("expiration", expiration.as_str()),
        ];
        if let Err(e) = state
            .run_statements(&statements(template, false, &subs))
            .await
        {
            return errors(400, &[&format!("{RENEW_FAILED_PREFIX}{}", multierror1(&e))]);
        }
    }
    // …then the expiration manager computes the lease's TTL again, with warnings.
    let (ttl, warnings) = match calculate_ttl(
        increment,
        default_ttl,
        max_ttl,
        issued,
        unix(SystemTime::now()),
    ) {
        Ok(result) => result,
        Err(e) => return errors(400, &[e]),
    };
    {
        let mut data = lock(&slot.data);
        data.expires_at = expiry(ttl).0;
        data.renew_count += 1;
    }
    envelope_response(
        200,
        Envelope {
            lease_id,
            renewable: true,
            lease_duration: ttl,
            warnings,
            mount_type: "system",
            ..Envelope::default()
        },
    )
}

/// `sys/leases/revoke`: synchronous by default (204, also for a lease Vault does not hold);
/// `sync=false` queues it (202).
pub(super) async fn revoke_lease(state: &State, req: &Req) -> Resp {
    let body = match parse_body(&req.body) {
        Ok(body) => body,
        Err(text) => return errors(400, &[&text]),
    };
    let lease_id = string_field(&body, "lease_id");
    if lease_id.is_empty() {
        return errors(400, &[LEASE_ID_REQUIRED]);
    }
    let sync = body.get("sync").and_then(Value::as_bool).unwrap_or(true);
    if !sync {
        // Queued (Vault answers 202): the sweeper revokes it as if it had expired now.
        if let Some(slot) = state.lease(&lease_id) {
            let mut data = lock(&slot.data);
            data.expires_at = data.expires_at.min(Instant::now());
        }
        return respond(202, String::new());
    }
    match state.revoke(&lease_id, false).await {
        Ok(_) => respond(204, String::new()),
        Err(e) => errors(400, &[&format!("{REVOKE_FAILED_PREFIX}{e}")]),
    }
}

/// A JSON object body; an empty body is an empty object.
fn parse_body(body: &Bytes) -> Result<Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("failed to parse JSON input: not an object".to_owned()),
        Err(e) => Err(format!("failed to parse JSON input: {e}")),
    }
}

/// A `TypeString` field: strings as they are, numbers and booleans in their text form.
fn string_field(body: &Map<String, Value>, name: &str) -> String {
    match body.get(name) {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// A `TypeDurationSecond` field: seconds as a number or string, or a Go duration (`1h30m`).
fn duration_field(body: &Map<String, Value>, name: &str) -> Result<u64, String> {
    let invalid = |raw: &str| {
        format!(
            "error converting input {} for field {}: time: invalid duration {}",
            raw,
            go_quote(name),
            go_quote(raw)
        )
    };
    match body.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or_else(|| invalid(&n.to_string())),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(0),
        Some(Value::String(s)) => parse_go_duration(s.trim()).ok_or_else(|| invalid(s)),
        Some(other) => Err(invalid(&other.to_string())),
    }
}
