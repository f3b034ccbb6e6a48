//! The edge's configuration: PROXY protocol, client certificates and certificate users,
//! handshake budgets, `[peering]` and `[[peers]]`. A valid file loads (with the replica id
//! from the environment, as a StatefulSet gives it); a bad one reports every problem at
//! once, naming keys and positions, never the values written.

use std::path::Path;

use pgwarden::auth::ScramVerifier;
use pgwarden::config;
use pgwarden::embedded::pki::Pki;
use secrecy::{ExposeSecret, SecretString};

/// A directory with a server certificate, a client CA and its CRL, a peer CA and a peer
/// certificate.
fn files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    let server_ca = Pki::new("server CA").unwrap();
    let server = server_ca.issue_server(&["localhost"]).unwrap();
    write("server.crt", &server.cert_pem);
    write("server.key", server.key_pem.expose_secret());
    let clients = Pki::new("client CA").unwrap();
    write("client-ca.crt", clients.ca_cert_pem());
    write("client-ca.crl", &clients.crl(&[]).unwrap());
    let peers = Pki::new("peer CA").unwrap();
    let peer = peers.issue_peer(&["pgwarden-0.peers"]).unwrap();
    write("peer-ca.crt", peers.ca_cert_pem());
    write("peer.crt", &peer.cert_pem);
    write("peer.key", peer.key_pem.expose_secret());
    dir
}

/// Users (certificate users, or one SCRAM user) and a route.
fn users_and_routes(cert_users: bool) -> String {
    let verifier = ScramVerifier::from_password(&SecretString::from("a password".to_owned()));
    let verifier = verifier.to_text();
    let users = if cert_users {
        format!(
            r#"
[[users]]
name = "keycloak"
auth = "cert"
cert_names = ["keycloak.prod.example", "spiffe://cluster.local/ns/iam/sa/keycloak"]

[[users]]
name = "both"
auth = "cert+scram"
scram_verifier = "{}"
"#,
            verifier.expose_secret()
        )
    } else {
        format!(
            "\n[[users]]\nname = \"keycloak\"\nscram_verifier = \"{}\"\n",
            verifier.expose_secret()
        )
    };
    users
        + r#"
[[routes]]
database = "keycloak"
users = ["*"]
credentials = "kc"
upstream = { host = "db.internal", tls = "disable", allow_insecure_auth = true }

[credentials.kc]
source = "postgres"
admin_user = "pgwarden_admin"
admin_password = "not-a-real-password"
"#
}

fn load(text: &str, dir: &Path, env: &[(&str, &str)]) -> Result<config::Config, Vec<String>> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    config::from_str(text, dir, env).map_err(|e| e.0)
}

#[test]
fn a_replica_behind_a_balancer_with_client_certificates_loads() {
    let dir = files();
    let text = format!(
        r#"[listen]
address = "0.0.0.0:6432"
tls_cert_file = "server.crt"
tls_key_file = "server.key"
allow = ["10.0.0.0/8"]
max_handshakes = 512
max_handshakes_per_address = 16
client_ca_file = "client-ca.crt"
client_crl_file = "client-ca.crl"
proxy_protocol = {{ trusted = ["10.0.0.0/24"], required = true }}

[peering]
id = 0
address = "0.0.0.0:6433"
cert_file = "peer.crt"
key_file = "peer.key"
ca_file = "peer-ca.crt"

[[peers]]
id = 1
address = "pgwarden-1.peers:6433"

[[peers]]
id = 2
address = "[fd00::2]:6433"
server_name = "pgwarden-2.peers"
{}"#,
        users_and_routes(true)
    );
    let c = load(&text, dir.path(), &[("PGWARDEN_PEERING_ID", "3")]).unwrap();
    let listen = &c.listen;
    assert_eq!(
        (listen.max_handshakes, listen.max_handshakes_per_address),
        (512, 16)
    );
    let pp = listen.proxy_protocol.as_ref().unwrap();
    assert!(pp.required && pp.trusted.len() == 1);
    assert!(listen.client_certs.as_ref().unwrap().crl_file.is_some());
    let peering = c.peering.as_ref().unwrap();
    assert_eq!(peering.id, 3, "the environment sets this replica's id");
    assert_eq!(peering.allow, listen.allow, "default: [listen] allow");
    let hosts: Vec<_> = peering
        .peers
        .iter()
        .map(|p| (p.id, p.host.as_str(), p.port, p.server_name.as_str()))
        .collect();
    assert_eq!(
        hosts,
        [
            (1, "pgwarden-1.peers", 6433, "pgwarden-1.peers"),
            (2, "fd00::2", 6433, "pgwarden-2.peers")
        ]
    );
}

#[test]
fn every_edge_problem_is_reported_at_once_without_its_value() {
    let dir = files();
    let secret = "Secret-Value-7731";
    let text = format!(
        r#"[listen]
tls_cert_file = "server.crt"
tls_key_file = "server.key"
allow = ["10.0.0.0/8"]
max_handshakes = 4
max_handshakes_per_address = 8
client_crl_file = "client-ca.crl"
proxy_protocol = {{ trusted = ["10.0.0.0/24", "{secret}"] }}

[peering]
id = 16
address = "{secret}"
allow = ["{secret}"]
cert_file = "peer.crt"
key_file = "peer.key"
ca_file = "client-ca.crt"

[[peers]]
id = 16
address = "{secret}"

[[peers]]
id = 3
address = "a:1"

[[peers]]
id = 3
address = "b:1"

[[users]]
name = "cert-user"
auth = "cert"
scram_verifier = "{secret}"

[[users]]
name = "other"
auth = "trust"
trust_from = ["127.0.0.1"]
cert_names = ["x"]
{}"#,
        users_and_routes(false)
    );
    let errs = load(&text, dir.path(), &[]).unwrap_err();
    let has = |needle: &str| errs.iter().any(|e| e.contains(needle));
    for needle in [
        "max_handshakes_per_address may not be more than max_handshakes",
        "client_crl_file needs client_ca_file",
        "proxy_protocol.trusted #2: not a CIDR",
        "[peering] id must be below 16",
        "[peering] address: not an address:port",
        "[peering] allow #1: not a CIDR",
        "[[peers]] #1: id must be below 16",
        "[[peers]] #1: address must be host:port",
        "[[peers]] #3: id 3 is given twice",
        "a cert user has no verifier",
        "cert_names is only for",
        "a certificate login needs [listen] client_ca_file",
    ] {
        assert!(has(needle), "no `{needle}` in {errs:#?}");
    }
    for e in &errs {
        assert!(!e.contains(secret), "a value was echoed: {e}");
    }

    // [[peers]] without [peering].
    let errs = load(
        &format!(
            "[listen]\nallow = [\"10.0.0.0/8\"]\nrequire_tls = false\n[[peers]]\nid = 1\naddress = \"a:1\"\n{}",
            users_and_routes(false)
        ),
        dir.path(),
        &[],
    )
    .unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.contains("[[peers]] needs a [peering] section")),
        "{errs:#?}"
    );
}

#[test]
fn the_peer_ca_may_not_be_the_client_ca() {
    let dir = files();
    let text = format!(
        r#"[listen]
tls_cert_file = "server.crt"
tls_key_file = "server.key"
allow = ["10.0.0.0/8"]
client_ca_file = "peer-ca.crt"

[peering]
id = 0
address = "0.0.0.0:6433"
cert_file = "peer.crt"
key_file = "peer.key"
ca_file = "peer-ca.crt"
{}"#,
        users_and_routes(false)
    );
    let errs = load(&text, dir.path(), &[]).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("a CA of its own"), "{errs:#?}");
}
