//! Who gets in: SCRAM-SHA-256 and -PLUS, trust from its networks only, the allowlist, the
//! connection limit, routing after authentication, and what the client is told when the
//! database cannot be reached (nothing internal).

use crate::support::harness::{
    GENEROUS, Harness, Options, Route, UpstreamCa, User, UserAuth, wait_until,
};
use crate::support::wire::{self, Message};
use secrecy::ExposeSecret;
use tokio_postgres::tls::MakeTlsConnect;

const WRONG: &str = "not-the-password-at-all";

/// A raw login attempt over TLS with channel binding; the SASL request, the server-first
/// message and the ErrorResponse that ended it.
async fn failed_login(h: &Harness, user: &str, password: &str) -> (Message, String, Message) {
    let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    let binding = wire::channel_binding(&tls);
    wire::send(
        &mut tls,
        &wire::startup(0, &[("user", user), ("database", "keycloak")]),
    )
    .await;
    let sasl = wire::read_message(&mut tls).await.unwrap();
    // Drive the rest by hand to keep the server-first-message.
    use postgres_protocol::authentication::sasl::{
        ChannelBinding, SCRAM_SHA_256_PLUS, ScramSha256,
    };
    let mut scram = ScramSha256::new(
        password.as_bytes(),
        ChannelBinding::tls_server_end_point(binding),
    );
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::sasl_initial_response(
        SCRAM_SHA_256_PLUS,
        scram.message(),
        &mut out,
    )
    .unwrap();
    wire::send(&mut tls, &out).await;
    let first = wire::read_message(&mut tls).await.unwrap();
    assert_eq!(first.auth_code(), Some(11), "{first:?}");
    let server_first = String::from_utf8(first.body[4..].to_vec()).unwrap();
    scram.update(&first.body[4..]).unwrap();
    out.clear();
    postgres_protocol::message::frontend::sasl_response(scram.message(), &mut out).unwrap();
    wire::send(&mut tls, &out).await;
    let all = wire::read_until_closed(&mut tls).await;
    assert_eq!(all.len(), 1, "{all:?}");
    (sasl, server_first, all.into_iter().next().unwrap())
}

/// `r=<nonce>,s=<salt>,i=<iterations>` → (salt, iterations).
fn salt_and_iterations(server_first: &str) -> (String, String) {
    let mut parts = server_first.split(',').skip(1);
    let s = parts.next().unwrap().strip_prefix("s=").unwrap().to_owned();
    let i = parts.next().unwrap().strip_prefix("i=").unwrap().to_owned();
    (s, i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_unknown_user_and_untrusted_network_fail_identically() {
    let h = Harness::start(Options {
        // A trust user outside its network is refused the same way.
        users: vec![User {
            name: "sidecar1".into(),
            auth: UserAuth::Trust(vec!["127.0.0.2/32".into()]),
        }],
        ..Options::default()
    })
    .await;
    // Three names of the same length, so the answers can be compared byte for byte.
    let (sasl_a, first_a, err_a) = failed_login(&h, "keycloak", WRONG).await;
    let (sasl_b, first_b, err_b) = failed_login(&h, "kcunknwn", WRONG).await;
    let (sasl_c, _, err_c) = failed_login(&h, "sidecar1", WRONG).await;
    err_a.assert_fatal(
        "28P01",
        "password authentication failed for user \"keycloak\"",
    );
    assert_eq!(sasl_a, sasl_b);
    assert_eq!(sasl_a, sasl_c);
    let as_keycloak = |m: &Message, name: &str| {
        String::from_utf8(m.raw())
            .unwrap()
            .replace(name, "keycloak")
    };
    assert_eq!(
        as_keycloak(&err_b, "kcunknwn"),
        as_keycloak(&err_a, "keycloak")
    );
    assert_eq!(
        as_keycloak(&err_c, "sidecar1"),
        as_keycloak(&err_a, "keycloak")
    );
    // The unknown user's salt looks like a real one and is stable, as a real user's is.
    let (salt_a, iter_a) = salt_and_iterations(&first_a);
    let (salt_b, iter_b) = salt_and_iterations(&first_b);
    assert_eq!(iter_a, iter_b);
    assert_eq!(salt_a.len(), salt_b.len());
    let (_, first_b_again, _) = failed_login(&h, "kcunknwn", WRONG).await;
    assert_eq!(salt_and_iterations(&first_b_again).0, salt_b);

    // libpq's users see the same line too.
    let psql_error = async |user: &str| {
        let conninfo = h
            .conninfo("")
            .replace("user=keycloak", &format!("user={user}"));
        let out = h.psql(&conninfo, WRONG, "SELECT 1").await;
        assert!(!out.success);
        out.stderr.replace(user, "keycloak")
    };
    let a = psql_error("keycloak").await;
    assert!(
        a.contains("FATAL:  password authentication failed for user \"keycloak\""),
        "{a}"
    );
    assert_eq!(psql_error("kcunknwn").await, a);
    assert_eq!(
        h.dynamic_roles().await,
        Vec::<String>::new(),
        "no credential for a failed login"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_plus_is_offered_on_tls_and_used_by_libpq_and_tokio_postgres() {
    let h = Harness::start(Options::default()).await;
    let password = h.client_password.expose_secret();
    let out = h
        .psql(
            &h.conninfo("channel_binding=require"),
            password,
            "SELECT current_user",
        )
        .await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout, "keycloak_owner");
    let mut config = h.pg_config();
    config.channel_binding(tokio_postgres::config::ChannelBinding::Require);
    let client = h
        .try_connect(&config)
        .await
        .expect("channel binding required");
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    // Without channel binding, plain SCRAM-SHA-256 still works.
    let out = h
        .psql(&h.conninfo("channel_binding=disable"), password, "SELECT 1")
        .await;
    assert!(out.success, "{}", out.stderr);
    let mut methods: Vec<String> = h
        .logs
        .wait_for("session_end", 3)
        .await
        .iter()
        .map(|e| e["span"]["auth_method"].as_str().unwrap().to_owned())
        .collect();
    methods.sort();
    assert_eq!(
        methods,
        ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256-PLUS"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_to_another_certificate_is_refused() {
    let h = Harness::start(Options::default()).await;
    let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    let mut binding = wire::channel_binding(&tls);
    binding[0] ^= 0xff;
    wire::send(
        &mut tls,
        &wire::startup(0, &[("user", "keycloak"), ("database", "keycloak")]),
    )
    .await;
    let err = wire::login(&mut tls, h.client_password.expose_secret(), Some(binding))
        .await
        .expect_err("a mismatched binding must not log in");
    assert_eq!(err.field(b'S').as_deref(), Some("FATAL"));
    let code = err.field(b'C').unwrap();
    assert!(code == "28P01" || code == "08P01", "{:?}", err.fields());
    assert_eq!(h.dynamic_roles().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_users_need_no_password_from_their_networks_only() {
    let h = Harness::start(Options {
        users: vec![
            User {
                name: "sidecar".into(),
                auth: UserAuth::Trust(vec!["127.0.0.1/32".into()]),
            },
            User {
                name: "elsewhere".into(),
                auth: UserAuth::Trust(vec!["127.0.0.2/32".into()]),
            },
        ],
        ..Options::default()
    })
    .await;
    let sidecar = h.conninfo("").replace("user=keycloak", "user=sidecar");
    let out = h.psql(&sidecar, "", "SELECT current_user").await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout, "keycloak_owner");

    // From 127.0.0.2 the same user is refused, as a wrong password would be...
    let tls = || {
        MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(&mut h.tls(), "127.0.0.1")
            .unwrap()
    };
    let config = h.pg_config_as("sidecar", "", "keycloak");
    let tcp = wire::connect_from("127.0.0.2", h.proxy_addr).await;
    let err = config.connect_raw(tcp, tls()).await.err().expect("refused");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28P01");
    assert_eq!(
        db.message(),
        "password authentication failed for user \"sidecar\""
    );
    // ...and a user trusted from 127.0.0.2 gets in from there.
    let config = h.pg_config_as("elsewhere", "", "keycloak");
    let tcp = wire::connect_from("127.0.0.2", h.proxy_addr).await;
    let (client, connection) = config.connect_raw(tcp, tls()).await.expect("trusted");
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allowlist_closes_other_addresses_before_a_byte() {
    let h = Harness::start(Options {
        allow: vec!["127.0.0.1/32".into()],
        ..Options::default()
    })
    .await;
    for request in [
        wire::encode_ssl_request().to_vec(),
        wire::startup(0, &[("user", "keycloak")]),
    ] {
        let mut tcp = wire::connect_from("127.0.0.2", h.proxy_addr).await;
        // The server may already have closed: a failed write is fine, an answer is not.
        let _ = tokio::io::AsyncWriteExt::write_all(&mut tcp, &request).await;
        assert_eq!(wire::closed_without_a_byte(&mut tcp).await, Ok(()));
    }
    let rejected = h.logs.wait_for("connection_rejected", 2).await;
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    for e in &rejected {
        assert_eq!(e["reason"], "ip_not_allowed");
        assert!(
            e["client_addr"].as_str().unwrap().starts_with("127.0.0.2:"),
            "{e}"
        );
    }
    // 127.0.0.1 is served.
    let client = h.connect().await;
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_clients_are_told_53300() {
    let h = Harness::start(Options {
        max_connections: 2,
        ..Options::default()
    })
    .await;
    let first = h.connect().await;
    let second = h.connect().await;
    // Told once authenticated: handshakes in progress do not hold session
    // slots, and an unauthenticated client learns nothing of how full it is.
    let startup = wire::startup(0, &[("user", "keycloak"), ("database", "keycloak")]);
    let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    let binding = wire::channel_binding(&tls);
    wire::send(&mut tls, &startup).await;
    let refused = wire::login(&mut tls, h.client_password.expose_secret(), Some(binding))
        .await
        .expect_err("no slot");
    refused.assert_fatal("53300", "sorry, too many clients already");
    let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    let binding = wire::channel_binding(&tls);
    wire::send(&mut tls, &startup).await;
    let wrong = wire::login(&mut tls, "not the password", Some(binding))
        .await
        .expect_err("wrong password");
    wrong.assert_fatal(
        "28P01",
        "password authentication failed for user \"keycloak\"",
    );
    let err = h.try_connect(&h.pg_config()).await.expect_err("refused");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(
        (db.code().code(), db.message()),
        ("53300", "sorry, too many clients already")
    );
    assert_eq!(h.dynamic_roles().await.len(), 2);
    // A slot frees when a session ends.
    drop(first);
    wait_until(GENEROUS, "a third client gets in", async || {
        h.try_connect(&h.pg_config()).await.is_ok()
    })
    .await;
    second.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_are_routed_only_after_authentication() {
    let h = Harness::start(Options {
        users: vec![User {
            name: "alice".into(),
            auth: UserAuth::Password("alice-password-123".into()),
        }],
        extra_routes: vec![Route {
            database: "alices".into(),
            users: vec!["alice".into()],
            upstream_ca: UpstreamCa::Right,
            upstream_database: None,
            allowed_parameters: None,
        }],
        ..Options::default()
    })
    .await;
    let password = h.client_password.expose_secret();
    let code_and_message = async |user: &str, password: &str, db: &str| {
        let err = h
            .try_connect(&h.pg_config_as(user, password, db))
            .await
            .err()
            .unwrap();
        let db = err.as_db_error().expect("an ErrorResponse").clone();
        (db.code().code().to_owned(), db.message().to_owned())
    };
    assert_eq!(
        code_and_message("keycloak", password, "nosuchdb").await,
        (
            "3D000".into(),
            "database \"nosuchdb\" does not exist".into()
        )
    );
    // A wrong password learns nothing about which databases exist.
    assert_eq!(
        code_and_message("keycloak", WRONG, "nosuchdb").await,
        (
            "28P01".into(),
            "password authentication failed for user \"keycloak\"".into()
        )
    );
    assert_eq!(
        code_and_message("keycloak", password, "alices").await,
        (
            "28000".into(),
            "user \"keycloak\" is not allowed to connect to database \"alices\"".into()
        )
    );
    let alice = h.pg_config_as("alice", "alice-password-123", "alices");
    let _alice = h.try_connect(&alice).await.expect("alice on her route");
    assert_eq!(
        h.dynamic_roles().await.len(),
        1,
        "credentials only for routed sessions"
    );
}

/// The message and whether any internal detail went along with it.
fn assert_generic(err: &tokio_postgres::Error, message: &str) {
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.severity(), "FATAL");
    assert_eq!(db.code().code(), "08006");
    assert_eq!(db.message(), message);
    assert_eq!((db.detail(), db.hint()), (None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_whose_ca_does_not_match_the_server_gives_a_generic_08006() {
    let h = Harness::start(Options {
        upstream_ca: UpstreamCa::Unrelated,
        ..Options::default()
    })
    .await;
    // The built-in source reaches the server with the route's CA too, so it is the first to
    // fail: no credential can be issued.
    let err = h.try_connect(&h.pg_config()).await.expect_err("refused");
    assert_generic(&err, "could not obtain database credentials");
    assert_eq!(h.dynamic_roles().await, Vec::<String>::new());
    // The reason is in the log, not in the client's message.
    let failed = h.logs.wait_for("session_failed", 1).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    let detail = failed[0]["detail"].as_str().unwrap().to_lowercase();
    assert!(detail.contains("certificate"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_a_wrong_ca_does_not_spoil_another_route_to_the_same_server() {
    let h = Harness::start(Options {
        extra_routes: vec![Route {
            database: "wrongca".into(),
            users: vec!["*".into()],
            upstream_ca: UpstreamCa::Unrelated,
            upstream_database: None,
            allowed_parameters: None,
        }],
        ..Options::default()
    })
    .await;
    // The misconfigured route is used first; the built-in source's admin connection for it
    // cannot verify the server.
    let wrong = h.pg_config_as("keycloak", h.client_password.expose_secret(), "wrongca");
    let err = h.try_connect(&wrong).await.expect_err("refused");
    assert_generic(&err, "could not obtain database credentials");
    // The well-configured route to the same server gets its own admin connection, with
    // its own CA: credentials are issued, and the role is dropped after the session.
    let client = h.connect().await;
    let role: String = client
        .query_one("SELECT session_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert!(h.dynamic_roles().await.contains(&role));
    drop(client);
    h.wait_for_no_dynamic_roles().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_login_failure_gives_a_generic_08006_and_revokes_the_credential() {
    let h = Harness::start(Options {
        extra_routes: vec![Route {
            database: "broken".into(),
            users: vec!["*".into()],
            upstream_ca: UpstreamCa::Right,
            upstream_database: Some("no_such_upstream_db".into()),
            allowed_parameters: None,
        }],
        ..Options::default()
    })
    .await;
    let config = h.pg_config_as("keycloak", h.client_password.expose_secret(), "broken");
    let err = h.try_connect(&config).await.expect_err("refused");
    assert_generic(&err, "could not connect to the database server");
    // The credential issued for the attempt is revoked; the upstream's answer is logged.
    h.wait_for_no_dynamic_roles().await;
    let failed = h.logs.wait_for("session_failed", 1).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    let detail = failed[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("no_such_upstream_db") && detail.contains("3D000"),
        "{detail}"
    );
    let revoked = h.logs.wait_for("lease_revoked", 1).await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
}
