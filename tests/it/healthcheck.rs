//! `pgwarden healthcheck`, the probe the container image runs (it has no HTTP
//! client): exit 0 exactly when the admin listener answers 2xx, against a real
//! pgwarden whose Vault double goes down and comes back.

use std::process::Output;

use crate::support::harness::{GENEROUS, Harness, Options, VaultOptions, wait_until};
use crate::support::vault_double::Mode;

async fn probe(url: &str, timeout: &str) -> Output {
    let url = url.to_owned();
    let timeout = timeout.to_owned();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
            .args(["healthcheck", "--url", &url, "--timeout", &timeout])
            .env("HTTP_PROXY", "http://127.0.0.1:9") // must be ignored
            .env("http_proxy", "http://127.0.0.1:9")
            .output()
            .expect("run pgwarden healthcheck")
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn healthcheck_follows_readiness_as_vault_goes_down_and_returns() {
    let mut h = Harness::start(Options {
        admin: true,
        vault: Some(VaultOptions::default()),
        ..Options::default()
    })
    .await;
    let admin = h.server().admin_addr.expect("admin listener");
    let readyz = format!("http://{admin}/readyz");

    let up = probe(&readyz, "10s").await;
    assert_eq!(up.status.code(), Some(0), "ready: {}", text(&up));
    assert!(text(&up).contains("200"), "{}", text(&up));
    let healthz = probe(&format!("http://{admin}/healthz"), "10s").await;
    assert_eq!(healthz.status.code(), Some(0), "{}", text(&healthz));

    h.vault().set_mode(Mode::Down);
    wait_until(GENEROUS, "/readyz turns 503", async || {
        h.admin_get("/readyz").await.0 == 503
    })
    .await;
    let down = probe(&readyz, "10s").await;
    assert_eq!(down.status.code(), Some(1), "not ready: {}", text(&down));
    assert!(text(&down).contains("503"), "{}", text(&down));

    h.vault().set_mode(Mode::Up);
    wait_until(GENEROUS, "/readyz turns 200 again", async || {
        h.admin_get("/readyz").await.0 == 200
    })
    .await;
    let back = probe(&readyz, "10s").await;
    assert_eq!(back.status.code(), Some(0), "ready again: {}", text(&back));

    let missing = probe(&format!("http://{admin}/nothing-here"), "10s").await;
    assert_eq!(missing.status.code(), Some(1), "404: {}", text(&missing));
    h.shutdown().await;
}

#[tokio::test]
async fn healthcheck_fails_when_nothing_listens_or_nothing_answers() {
    // A port bound by a socket that never listens: connection refused.
    let closed_addr = format!("127.0.0.1:{}", crate::support::harness::refusing_port());
    let refused = probe(&format!("http://{closed_addr}/readyz"), "10s").await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("no answer"), "{}", text(&refused));

    // A listener that accepts and never answers: the timeout ends the probe.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            if let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        }
    });
    let hung = probe(&format!("http://{silent_addr}/readyz"), "1s").await;
    assert_eq!(hung.status.code(), Some(1), "{}", text(&hung));
    assert!(text(&hung).contains("no answer"), "{}", text(&hung));
    holder.abort();
}
