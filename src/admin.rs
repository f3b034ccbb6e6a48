//! The admin listener: `/metrics`, `/healthz`, `/readyz`, on its own port.
//!
//! Loopback by default and separate from the proxy port, so metrics and probes
//! never share a listener with clients. `/healthz` says the process is alive;
//! `/readyz` says 200 only when the proxy listener is accepting and every
//! credential source can issue credentials (for Vault: pgwarden holds a live
//! token and Vault answers), else 503 with a JSON body naming what is not
//! ready. Nothing served here contains a secret.

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
use tokio::net::TcpListener;

use crate::metrics;
use crate::state::State;

/// Binds the admin listener and serves it until shutdown.
pub async fn start(
    addr: SocketAddr,
    state: Arc<State>,
    handle: PrometheusHandle,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let upkeep_handle = handle.clone();
        let upkeep = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                upkeep_handle.run_upkeep();
            }
        });
        loop {
            let (tcp, _) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = state.shutdown.end_sessions.cancelled() => break,
            };
            let state = state.clone();
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    let handle = handle.clone();
                    async move { Ok::<_, Infallible>(route(req, &state, &handle)) }
                });
                let _ = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
        upkeep.abort();
    });
    Ok((bound, task))
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
    let mut names: Vec<_> = state.sources.keys().collect();
    names.sort();
    for name in names {
        let source = &state.sources[name];
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
