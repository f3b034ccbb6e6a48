//! The admin listener: `/metrics`, `/healthz`, `/readyz`, on its own port.
//!
//! Loopback by default and separate from the proxy port, so metrics and probes
//! never share a listener with clients. `/healthz` says the process is alive;
//! `/readyz` says 200 only when the proxy listener is accepting and every
//! credential source can issue credentials (for Vault: pgwarden holds a live
//! token and Vault answers), else 503 with a JSON body naming what is not
//! ready. Nothing served here contains a secret.
//!
//! It is bounded like the proxy listener: a peer outside `[admin] allow` is
//! closed before a byte is read; at most `max_connections` are served at once
//! (more are closed unanswered); a client has `header_timeout` to send its
//! request's headers and the connection — one request, no keep-alive — ends
//! after `request_timeout` whatever it is doing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::AdminConfig;
use crate::metrics;
use crate::state::{RateLimitedLog, State};

/// At most this many `admin_rejected` records a second.
const ADMIN_REFUSALS_LOGGED_PER_SECOND: u32 = 5;

/// Binds the admin listener and serves it until shutdown.
pub async fn start(
    config: AdminConfig,
    state: Arc<State>,
    handle: PrometheusHandle,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(config.address).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let upkeep_handle = handle.clone();
        let upkeep = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                upkeep_handle.run_upkeep();
            }
        });
        let stop = state.shutdown.end_sessions.clone();
        let respond = move |req: Request<Incoming>| route(req, &state, &handle);
        tokio::select! {
            () = serve(listener, config, respond) => {}
            () = stop.cancelled() => {}
        }
        upkeep.abort();
    });
    Ok((bound, task))
}

/// Accepts for ever: closes peers outside `allow` and connections over the
/// cap without reading a byte, and serves each other one with its bounds.
async fn serve<R>(listener: TcpListener, config: AdminConfig, respond: R)
where
    R: Fn(Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let slots = Arc::new(Semaphore::new(config.max_connections));
    // A flood of refused connections must not flood the log.
    let refusals = RateLimitedLog::new(ADMIN_REFUSALS_LOGGED_PER_SECOND);
    let refused = |peer: SocketAddr, reason: &str| {
        if let Some(suppressed) = refusals.admit() {
            tracing::warn!(event = "admin_rejected", client_addr = %peer, reason, suppressed_before = suppressed);
        }
    };
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        if !config.allow.iter().any(|net| net.contains(&ip)) {
            refused(peer, "ip_not_allowed");
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused(peer, "too_many_connections");
            continue;
        };
        let connection = one_request(tcp, &config, respond.clone());
        tokio::spawn(async move {
            connection.await;
            drop(slot);
        });
    }
}

/// Serves one HTTP/1.1 request on `io` (no keep-alive): the headers must
/// arrive within `header_timeout`, and the connection is dropped after
/// `request_timeout` whatever it is doing (a client that does not read its
/// answer included).
fn one_request<S, R>(
    io: S,
    config: &AdminConfig,
    respond: R,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: Fn(Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let (header_timeout, request_timeout) = (config.header_timeout, config.request_timeout);
    async move {
        let service = service_fn(move |req| {
            let respond = respond.clone();
            async move { Ok::<_, Infallible>(respond(req)) }
        });
        let connection = http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(false)
            .serve_connection(TokioIo::new(io), service);
        let _ = tokio::time::timeout(request_timeout, connection).await;
    }
}

fn route(
    req: Request<Incoming>,
    state: &State,
    handle: &PrometheusHandle,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            update_gauges(state);
            let mut r = Response::new(Full::new(Bytes::from(handle.render())));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let (ready, body) = readiness(state);
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
            *r.status_mut() = status;
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}

/// Every check, and whether all passed.
pub fn readiness(state: &State) -> (bool, serde_json::Value) {
    let mut ready = true;
    let mut checks = serde_json::Map::new();
    let listening = !state.shutdown.stop_accepting.is_cancelled();
    ready &= listening;
    checks.insert(
        "listener".into(),
        json!(if listening {
            "ok"
        } else {
            "not accepting (shutting down)"
        }),
    );
    let snapshot = state.snapshot();
    let mut names: Vec<_> = snapshot.sources.keys().collect();
    names.sort();
    for name in names {
        let source = &snapshot.sources[name];
        let result = source.readiness();
        metrics::CREDENTIAL_SOURCE_UP.set(name, if result.is_ok() { 1.0 } else { 0.0 });
        let entry = match result {
            Ok(()) => json!("ok"),
            Err(why) => {
                ready = false;
                json!(why.to_string())
            }
        };
        checks.insert(format!("credentials.{name}"), entry);
    }
    let body = json!({ "status": if ready { "ready" } else { "not_ready" }, "checks": checks });
    (ready, body)
}

/// Gauges read at scrape time.
fn update_gauges(state: &State) {
    let _ = readiness(state);
    metrics::LEASE_REVOCATIONS_PENDING.set(state.revoker.pending() as f64);
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests;
