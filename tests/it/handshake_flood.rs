//! Handshakes in progress have a budget of their own, apart from sessions, with a cap per
//! client address: a flood of silent and slow-TLS connections from one allowed address
//! (127.0.0.2) neither displaces established sessions nor keeps clients from another
//! address (127.0.0.1) from connecting, and what it is refused is counted and logged.
//! Before this budget, 60 silent connections with `max_connections = 50` got every other
//! client 53300 until `handshake_timeout`, renewably.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::harness::{Harness, Options};
use crate::support::wire;
use tokio::io::AsyncWriteExt;

const CAP: usize = 32;
const SLOW_TLS: usize = 16;
const SILENT: usize = 284;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_locks_no_one_else_out() {
    let h = Harness::start(Options {
        max_connections: 50,
        max_handshakes_per_address: Some(CAP),
        admin: true,
        ..Options::default()
    })
    .await;
    let established: Vec<_> = futures_util::future::join_all((0..5).map(|_| h.connect())).await;

    // Slow TLS: SSLRequest, then a TLS record header promising a ClientHello that never comes.
    let mut flood = Vec::new();
    for _ in 0..SLOW_TLS {
        let mut tcp = wire::connect_from("127.0.0.2", h.proxy_addr).await;
        wire::send(&mut tcp, &wire::encode_ssl_request()).await;
        assert_eq!(wire::read_byte(&mut tcp).await, Some(b'S'));
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
            .await
            .unwrap();
        flood.push(tcp);
    }
    // Silent: connected, nothing sent.
    for _ in 0..SILENT {
        flood.push(wire::connect_from("127.0.0.2", h.proxy_addr).await);
    }
    let refused = "pgwarden_connections_rejected_total{reason=\"too_many_handshakes\"}";
    let over_cap = (SLOW_TLS + SILENT - CAP) as f64;
    crate::support::harness::wait_until(
        crate::support::harness::GENEROUS,
        "every connection over the cap is refused",
        async || h.metric(refused).await >= over_cap,
    )
    .await;
    assert_eq!(h.metric(refused).await, over_cap);

    // And the flood goes on while others connect.
    let stop = Arc::new(AtomicBool::new(false));
    let renewing = tokio::spawn({
        let (stop, addr) = (stop.clone(), h.proxy_addr);
        async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let tcp = wire::connect_from("127.0.0.2", addr).await;
                drop(tcp);
                n += 1;
            }
            n
        }
    });
    for i in 0..20 {
        let client = h
            .try_connect(&h.pg_config())
            .await
            .unwrap_or_else(|e| panic!("client {i} from 127.0.0.1 refused during the flood: {e}"));
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
    for c in &established {
        c.simple_query("SELECT 1")
            .await
            .expect("an established session goes on");
    }
    stop.store(true, Ordering::Relaxed);
    let renewed = renewing.await.unwrap();
    assert!(renewed > 0);
    assert!(h.metric(refused).await >= over_cap + 1.0);
    assert_eq!(
        h.metric("pgwarden_connections_rejected_total{reason=\"too_many_connections\"}")
            .await,
        0.0
    );
    // The refusals are logged (at a bounded rate), naming the flooding address; no one
    // from 127.0.0.1 was refused anything.
    let logged = h.logs.events("connection_rejected");
    let over = logged
        .iter()
        .filter(|r| r["reason"] == "too_many_handshakes")
        .collect::<Vec<_>>();
    assert!(!over.is_empty());
    for r in &logged {
        let from = r["client_addr"].as_str().unwrap();
        assert!(from.starts_with("127.0.0.2:"), "{r}");
    }
    // The flood held its slots to the end.
    drop(flood);
}
