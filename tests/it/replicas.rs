//! Three pgwarden replicas behind one round-robin address (a forwarder standing for a
//! Kubernetes Service): a cancel request lands on another replica than the session's and
//! is forwarded, over mutual TLS, to the replica whose id its key carries. `pg_sleep` is
//! cancelled through every replica, with protocol 3.0 and 3.2 keys, in plaintext and
//! inside TLS. The peer link takes no one without a peer certificate.

use std::net::SocketAddr;
use std::path::Path;

use crate::support::forwarder::{Forwarder, Forwarding};
use crate::support::harness::{GENEROUS, Harness, Options, wait_until};
use crate::support::wire;
use pgwarden::embedded::pki::Pki;
use secrecy::ExposeSecret;
use tokio::io::AsyncWriteExt;

/// A port that was free a moment ago (the replicas must know each other's before they start).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// `[peering]` for replica `id` of `ports.len()`, and a `[[peers]]` for each other one.
fn peering(id: usize, ports: &[u16], dir: &Path) -> String {
    let file = |name: &str| format!("{:?}", dir.join(name).display().to_string());
    let mut t = format!(
        "[peering]\nid = {id}\naddress = \"127.0.0.1:{}\"\ncert_file = {}\nkey_file = {}\nca_file = {}\n\n",
        ports[id],
        file("peer.crt"),
        file("peer.key"),
        file("peer-ca.crt"),
    );
    for (other, port) in ports.iter().enumerate().filter(|(o, _)| *o != id) {
        t += &format!("[[peers]]\nid = {other}\naddress = \"127.0.0.1:{port}\"\n\n");
    }
    t
}

/// A session through the forwarder on protocol 3.`minor`: the TLS stream, pid and key.
async fn session(h: &Harness, addr: SocketAddr, minor: u16) -> (wire::Tls, i32, Vec<u8>) {
    let mut tls = wire::ssl(addr, &h.ca_pem).await;
    let binding = wire::channel_binding(&tls);
    let params = [("user", "keycloak"), ("database", "keycloak")];
    wire::send(&mut tls, &wire::startup(minor, &params)).await;
    let welcome = wire::login(&mut tls, h.client_password.expose_secret(), Some(binding))
        .await
        .expect("logged in");
    (tls, welcome.pid, welcome.key)
}

async fn wait_for_sleep(h: &Harness, pid: i32) {
    wait_until(GENEROUS, "pg_sleep runs upstream", async || {
        let n: i64 = h
            .direct()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        n == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_replica_that_holds_the_session() {
    let peer_dir = tempfile::tempdir().unwrap();
    let peer_ca = Pki::new("pgwarden peer CA").unwrap();
    let peer = peer_ca.issue_peer(&["127.0.0.1"]).unwrap();
    std::fs::write(peer_dir.path().join("peer-ca.crt"), peer_ca.ca_cert_pem()).unwrap();
    std::fs::write(peer_dir.path().join("peer.crt"), &peer.cert_pem).unwrap();
    std::fs::write(
        peer_dir.path().join("peer.key"),
        peer.key_pem.expose_secret(),
    )
    .unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let h = Harness::start(Options {
        extra_config: peering(0, &ports, peer_dir.path()),
        ..Options::default()
    })
    .await;
    let r1 = h.start_replica(&peering(1, &ports, peer_dir.path())).await;
    let r2 = h.start_replica(&peering(2, &ports, peer_dir.path())).await;
    let service =
        Forwarder::start(vec![h.proxy_addr, r1.addr, r2.addr], Forwarding::default()).await;

    // Connections alternate 0, 1, 2, 0, …: each cancel lands on the replica after its
    // session's, so every replica forwards and every replica receives.
    let cases = [(0, false), (2, true), (2, false), (0, true)];
    for (i, (minor, cancel_in_tls)) in cases.into_iter().enumerate() {
        let (mut tls, pid, key) = session(&h, service.addr, minor).await;
        assert_eq!(key.len(), if minor == 0 { 4 } else { 32 });
        wire::send_query(&mut tls, "SELECT pg_sleep(60)").await;
        wait_for_sleep(&h, pid).await;
        let cancel = wire::encode_cancel(pid, &key);
        if cancel_in_tls {
            let mut c = wire::ssl(service.addr, &h.ca_pem).await;
            wire::send(&mut c, &cancel).await;
            let _ = wire::closed_without_a_byte(&mut c).await;
        } else {
            let mut c = wire::connect(service.addr).await;
            wire::send(&mut c, &cancel).await;
            assert_eq!(wire::closed_without_a_byte(&mut c).await, Ok(()));
        }
        let err = wire::read_result(&mut tls)
            .await
            .expect_err("the query is cancelled");
        assert_eq!(err.field(b'C').as_deref(), Some("57014"), "case {i}");
        wire::terminate(&mut tls).await;
    }
    let cancels = h.logs.wait_for("cancel_request", 2 * cases.len()).await;
    let first_hops = cancels
        .iter()
        .filter(|c| c["outcome"] == "forwarded_to_peer")
        .count();
    let owners = cancels
        .iter()
        .filter(|c| c["via"] == "peer" && c["outcome"] == "forwarded")
        .count();
    assert_eq!(
        (first_hops, owners),
        (cases.len(), cases.len()),
        "{cancels:?}"
    );

    // An unknown key naming replica 1 is forwarded there, which knows nothing of it.
    let mut forged = vec![0x10, 1, 2, 3];
    forged[0] |= 0x0F;
    let mut c = wire::connect(h.proxy_addr).await;
    wire::send(&mut c, &wire::encode_cancel(4242, &forged)).await;
    assert_eq!(wire::closed_without_a_byte(&mut c).await, Ok(()));
    let cancels = h.logs.wait_for("cancel_request", 2 * cases.len() + 2).await;
    let last_two: Vec<_> = cancels[cancels.len() - 2..]
        .iter()
        .map(|c| c["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        last_two.contains(&"forwarded_to_peer".to_owned()),
        "{last_two:?}"
    );
    assert!(last_two.contains(&"unknown_key".to_owned()), "{last_two:?}");

    // The peer link: no certificate, or one from another CA, and nothing is read.
    let peer_addr = r1.peer_addr.unwrap();
    let stranger = Pki::new("not the peer CA").unwrap();
    let outsider = stranger.issue_peer(&["127.0.0.1"]).unwrap();
    for client_cert in [None, Some(&outsider)] {
        let refused = peer_link(&peer_ca, client_cert, peer_addr, 4242, &forged).await;
        assert!(
            refused,
            "the peer link took a cancel without a peer certificate"
        );
    }
    let refusals = h.logs.wait_for("peer_connection_refused", 2).await;
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    drop(service);
    r1.shutdown().await;
    r2.shutdown().await;
}

/// Tries the peer link as a replica would, presenting `cert` (if any, signed by whoever);
/// whether the peer refused it (no answer byte came).
async fn peer_link(
    ca: &Pki,
    cert: Option<&pgwarden::embedded::pki::IssuedCert>,
    addr: SocketAddr,
    pid: i32,
    key: &[u8],
) -> bool {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.ca_cert_pem().as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(pgwarden::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(c.key_pem.expose_secret().as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"pgwarden-peer".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let Ok(mut tls) = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
    else {
        return true;
    };
    // TLS 1.3: the server judges the client's certificate after the client finished.
    let _ = tls.write_all(&wire::encode_cancel(pid, key)).await;
    let _ = tls.flush().await;
    let mut answer = [0u8; 1];
    let read = tokio::time::timeout(GENEROUS, tls.read(&mut answer)).await;
    !matches!(read, Ok(Ok(1)))
}
