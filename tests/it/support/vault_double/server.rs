//! The network side: a listener that `Down` can shut synchronously, HTTP/1.1 over TCP or TLS,
//! the fault modes, routing, and Vault's response shapes.

use std::convert::Infallible;
use std::net::{Shutdown, SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use socket2::{Domain, SockRef, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::handlers::{
    approle_login, health, issue_creds, kubernetes_login, lookup_self, renew_lease, renew_self,
    revoke_lease,
};
use super::response::{Resp, errors, unsupported};
use super::state::{State, Token, lock};
use super::text::{PERMISSION_DENIED, SEALED, go_quote, rate_limited_text};
use super::{Call, Mode};

impl State {
    /// Shuts the listening socket (connects are refused from now on) and every open connection.
    pub(super) fn close_sockets(&self) {
        self.epoch.send_modify(|e| *e += 1);
        if let Some(listener) = lock(&self.listener).take() {
            let _ = listener.shutdown(Shutdown::Both);
        }
        for (_, conn) in lock(&self.conns).drain() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    pub(super) fn ensure_listening(self: &Arc<Self>) {
        let mut slot = lock(&self.listener);
        if slot.is_some() || self.stopped.load(Ordering::SeqCst) {
            return;
        }
        let (listener, dup) = rebind(self.port);
        *slot = Some(dup);
        drop(slot);
        self.spawn_accept(listener);
    }

    pub(super) fn spawn_accept(self: &Arc<Self>, listener: StdTcpListener) {
        let _enter = self.runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener).expect("register listener");
        let mut epoch = self.epoch.subscribe();
        let mine = *epoch.borrow_and_update();
        let state = self.clone();
        self.runtime.spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => state.serve(stream),
                        Err(_) if *epoch.borrow() != mine => return,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                    changed = epoch.changed() => {
                        if changed.is_err() || *epoch.borrow() != mine {
                            return;
                        }
                    }
                }
            }
        });
    }

    pub(super) fn serve(self: &Arc<Self>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let id = self.next_conn.fetch_add(1, Ordering::SeqCst);
        if let Ok(dup) = SockRef::from(&stream).try_clone() {
            lock(&self.conns).insert(id, dup);
        }
        // A `Down` that raced with the accept must still cut this connection.
        if self.mode() == Mode::Down || self.stopped.load(Ordering::SeqCst) {
            if let Some(dup) = lock(&self.conns).remove(&id) {
                let _ = dup.shutdown(Shutdown::Both);
            }
            return;
        }
        let state = self.clone();
        tokio::spawn(async move {
            match &state.tls {
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        serve_http(state.clone(), tls).await;
                    }
                }
                None => serve_http(state.clone(), stream).await,
            }
            lock(&state.conns).remove(&id);
        });
    }
}
/// A listener on 127.0.0.1 (`SO_REUSEADDR`, so `Up` can take the port back) and a duplicate of
/// its socket for shutting it from synchronous code.
pub(super) fn bind_listener(port: u16) -> std::io::Result<(StdTcpListener, Socket)> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    let dup = socket.try_clone()?;
    Ok((socket.into(), dup))
}

/// Listens on `port` again after `Down`, waiting out a short-lived conflict.
fn rebind(port: u16) -> (StdTcpListener, Socket) {
    let mut last = None;
    for _ in 0..100 {
        match bind_listener(port) {
            Ok(pair) => return pair,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the Vault double could not listen on port {port} again: {last:?}");
}

/// HTTP/1.1 over TLS with aws-lc-rs, whatever the process-wide default provider.
pub(super) fn tls_acceptor(cert_pem: &str, key_pem: &str) -> TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("private key PEM");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

async fn serve_http<I>(state: Arc<State>, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req).await) }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// What a handler needs of a request; secrets in it are never logged.
pub(super) struct Req {
    pub(super) method: Method,
    /// Path after `/v1/`.
    pub(super) path: String,
    pub(super) query: String,
    pub(super) token: Option<String>,
    pub(super) body: Bytes,
}

/// Answers one request and records it (without secrets) in the call log.
async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Resp {
    let at = Instant::now();
    let method = req.method().clone();
    let full_path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let namespace = header("x-vault-namespace");
    let token = header("x-vault-token").or_else(|| {
        header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
    });
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let state = state.clone();
    let finish_abandoned = state.finish_abandoned.load(Ordering::SeqCst);
    let answer = async move {
        if let Mode::Slow(delay) = state.mode() {
            tokio::time::sleep(delay).await;
        }
        let resp = match full_path.strip_prefix("/v1/") {
            Some(path) => {
                let req = Req {
                    method: method.clone(),
                    path: path.to_owned(),
                    query,
                    token,
                    body,
                };
                route(&state, &req).await
            }
            None => errors(404, &[]),
        };
        // A request that was in flight when the double went down got no answer.
        if state.mode() != Mode::Down {
            state.record(Call {
                method: method.as_str().to_owned(),
                path: full_path,
                status: resp.status().as_u16(),
                at,
                namespace,
            });
        }
        resp
    };
    if finish_abandoned {
        // A task of its own: hyper dropping this future when the client goes does not stop it.
        tokio::spawn(answer)
            .await
            .unwrap_or_else(|_| errors(500, &["the handler panicked"]))
    } else {
        answer.await
    }
}

fn is_write(method: &Method) -> bool {
    method == Method::PUT || method == Method::POST
}

/// Fault modes first (health is exempt from all of them but `Sealed`), then the unauthenticated
/// logins, then the token.
async fn route(state: &Arc<State>, req: &Req) -> Resp {
    let path = req.path.as_str();
    let mode = state.mode();
    if path == "sys/health" {
        return health(state, req, mode);
    }
    if mode == Mode::Sealed {
        return errors(503, &[SEALED]);
    }
    if mode == Mode::RateLimited {
        return errors(429, &[&rate_limited_text(path)]);
    }
    let login: Option<fn(&State, &Req) -> Resp> = match path {
        "auth/approle/login" if state.approle.is_some() => Some(approle_login),
        "auth/kubernetes/login" if state.kubernetes.is_some() => Some(kubernetes_login),
        _ => None,
    };
    if let Some(login) = login {
        return if is_write(&req.method) {
            login(state, req)
        } else {
            unsupported()
        };
    }
    match state.check_token(req.token.as_deref()) {
        Ok(token) => authenticated(state, req, &token, mode).await,
        Err(text) => errors(403, &[text]),
    }
}

async fn authenticated(state: &State, req: &Req, token: &Token, mode: Mode) -> Resp {
    let path = req.path.as_str();
    // Vault's `default` policy always grants a token its own lookup and renewal.
    let self_service = matches!(path, "auth/token/lookup-self" | "auth/token/renew-self");
    if mode == Mode::Forbidden && !self_service {
        return errors(403, &[PERMISSION_DENIED]);
    }
    let creds_role = path
        .strip_prefix(state.mount.as_str())
        .and_then(|rest| rest.strip_prefix("/creds/"))
        .filter(|role| !role.is_empty() && !role.contains('/'));
    let (read, write) = (req.method == Method::GET, is_write(&req.method));
    match (path, creds_role) {
        ("auth/token/renew-self", _) if write => renew_self(state, token, req),
        ("auth/token/lookup-self", _) if read => lookup_self(token),
        ("sys/leases/renew", _) if write => renew_lease(state, req).await,
        ("sys/leases/revoke", _) if write => revoke_lease(state, req).await,
        (_, Some(role)) if read => issue_creds(state, role, token).await,
        ("auth/token/renew-self" | "auth/token/lookup-self", _)
        | ("sys/leases/renew" | "sys/leases/revoke", _)
        | (_, Some(_)) => unsupported(),
        _ => {
            let text = format!(
                "no handler for route {}. route entry not found.",
                go_quote(path)
            );
            errors(404, &[&text])
        }
    }
}
