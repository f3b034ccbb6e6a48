//! A session end to end: psql and tokio-postgres through pgwarden, each connection on a
//! database role of its own that runs as the route's `session_role` and is dropped when the
//! session ends, however it ends; the client is told the upstream backend's real pid.

use crate::support::harness::{GENEROUS, Harness, Options, wait_until};
use crate::support::wire;
use pgwarden::dev::OWNER_ROLE;
use secrecy::ExposeSecret;

/// `session_user` and `current_user` of a connection.
async fn whoami(client: &tokio_postgres::Client) -> (String, String) {
    let row = client
        .query_one("SELECT session_user::text, current_user::text", &[])
        .await
        .expect("whoami");
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_with_verify_full_runs_as_a_fresh_role_in_the_session_role() {
    let h = Harness::start(Options::default()).await;
    let out = h
        .psql(
            &h.conninfo(""),
            h.client_password.expose_secret(),
            "SELECT session_user, current_user, current_database()",
        )
        .await;
    assert!(out.success, "psql failed: {}", out.stderr);
    let fields: Vec<&str> = out.stdout.split('|').collect();
    assert_eq!(fields.len(), 3, "{}", out.stdout);
    assert!(
        fields[0].starts_with("pgwarden_"),
        "session_user {}",
        fields[0]
    );
    assert_eq!(fields[1], OWNER_ROLE);
    assert_eq!(fields[2], "keycloak");
    h.wait_for_no_dynamic_roles().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_session_uses_an_issued_role_that_objects_do_not_belong_to() {
    let h = Harness::start(Options {
        role_prefix: Some("tst_".into()),
        ..Options::default()
    })
    .await;
    let client = h.connect().await;
    let (session_user, current_user) = whoami(&client).await;
    assert!(session_user.starts_with("tst_"), "{session_user}");
    assert_eq!(current_user, OWNER_ROLE);
    assert_eq!(h.dynamic_roles().await, vec![session_user.clone()]);

    // The issued role: LOGIN, expiring, a member of the owner, and nothing more.
    let row = h
        .direct()
        .query_one(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolvaliduntil IS NOT NULL, \
                    pg_has_role(rolname, $2, 'MEMBER') \
             FROM pg_roles WHERE rolname = $1",
            &[&session_user, &OWNER_ROLE],
        )
        .await
        .unwrap();
    let flags: (bool, bool, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(flags, (true, false, false, true, true));

    // What the session creates belongs to the owner, so dropping the role cannot be blocked.
    client
        .batch_execute("CREATE TABLE made_through_pgwarden (id int)")
        .await
        .unwrap();
    let owner: String = h
        .direct()
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'made_through_pgwarden'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, OWNER_ROLE);

    drop(client);
    h.wait_for_no_dynamic_roles().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_gets_its_own_role_and_loses_it_on_disconnect() {
    let h = Harness::start(Options::default()).await;
    let clients = [h.connect().await, h.connect().await, h.connect().await];
    let mut users = Vec::new();
    for c in &clients {
        let (session_user, current_user) = whoami(c).await;
        assert_eq!(current_user, OWNER_ROLE);
        users.push(session_user);
    }
    users.sort();
    users.dedup();
    assert_eq!(users.len(), 3, "roles are not distinct: {users:?}");
    assert_eq!(h.dynamic_roles().await, users);

    // Closing one connection drops its role and no other.
    let [first, second, third] = clients;
    let (gone, _) = whoami(&first).await;
    drop(first);
    wait_until(
        GENEROUS,
        "the first connection's role is dropped",
        async || !h.dynamic_roles().await.contains(&gone),
    )
    .await;
    assert_eq!(h.dynamic_roles().await.len(), 2);
    let one: i32 = second.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop((second, third));
    h.wait_for_no_dynamic_roles().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_is_dropped_when_the_client_dies_mid_query() {
    let h = Harness::start(Options::default()).await;
    let (client, connection) = h.connect_parts(&h.pg_config()).await.unwrap();
    let connection = tokio::spawn(connection);
    let (session_user, _) = whoami(&client).await;
    let query = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await });
    wait_until(GENEROUS, "pg_sleep runs upstream", async || {
        let n: i64 = h
            .direct()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename = $1 AND state = 'active' AND query LIKE '%pg_sleep%'",
                &[&session_user],
            )
            .await
            .unwrap()
            .get(0);
        n == 1
    })
    .await;

    // The client vanishes: its socket is dropped without a Terminate message.
    connection.abort();
    assert!(connection.await.unwrap_err().is_cancelled());
    assert!(
        query.await.unwrap().is_err(),
        "the query cannot succeed without a connection"
    );
    wait_until(GENEROUS, "the dead client's role is dropped", async || {
        !h.dynamic_roles().await.contains(&session_user)
    })
    .await;
    let ends = h.logs.wait_for("session_end", 1).await;
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["span"]["upstream_user"], session_user.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_key_data_carries_the_upstream_backend_pid() {
    let h = Harness::start(Options::default()).await;
    let mut s = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    let binding = wire::channel_binding(&s);
    let params = [("user", "keycloak"), ("database", "keycloak")];
    wire::send(&mut s, &wire::startup(0, &params)).await;
    let welcome = wire::login(&mut s, h.client_password.expose_secret(), Some(binding))
        .await
        .expect("login");
    assert_eq!(welcome.key.len(), 4, "protocol 3.0 keys are 4 bytes");
    let rows = wire::query(&mut s, "SELECT pg_backend_pid(), session_user")
        .await
        .unwrap();
    let pid: i32 = rows[0][0].as_deref().unwrap().parse().unwrap();
    assert_eq!(welcome.pid, pid);
    // And the cluster agrees that this pid is the session's backend.
    let user: String = h
        .direct()
        .query_one(
            "SELECT usename::text FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(Some(user), rows[0][1]);
    wire::terminate(&mut s).await;
    h.wait_for_no_dynamic_roles().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_live_sessions_and_revokes_every_lease() {
    let mut h = Harness::start(Options::default()).await;
    let client = h.connect().await;
    let idle = h.connect().await;
    let (user, _) = whoami(&client).await;
    assert!(h.dynamic_roles().await.contains(&user));
    let unrevoked = h.shutdown().await;
    assert_eq!(unrevoked, 0);
    assert_eq!(h.dynamic_roles().await, Vec::<String>::new());
    // The live sessions were told why they ended.
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    let closed =
        err.is_closed() || err.code() == Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN);
    assert!(closed, "{err:?}");
    assert!(idle.is_closed());
    // And nobody new gets in.
    assert!(tokio::net::TcpStream::connect(h.proxy_addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_record_tells_a_logout_from_a_vanished_client_and_a_backend_exit() {
    let h = Harness::start(Options {
        admin: true,
        ..Options::default()
    })
    .await;
    let params = [("user", "keycloak"), ("database", "keycloak")];
    let password = h.client_password.expose_secret();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let (mut s, welcome) = wire::open(h.proxy_addr, &h.ca_pem, &params, password).await;
        let pid = welcome.expect("login").pid;
        wire::query(&mut s, "SELECT 1").await.unwrap();
        sessions.push((s, pid));
    }
    let [
        (mut logout, logout_pid),
        (mut vanish, vanish_pid),
        (mut killed, killed_pid),
    ] = <[_; 3]>::try_from(sessions).unwrap_or_else(|_| unreachable!());
    // Terminate, then close: what libpq, pgjdbc and tokio-postgres do.
    wire::terminate(&mut logout).await;
    // Closing without a Terminate, as a client that dies does.
    tokio::io::AsyncWriteExt::shutdown(&mut vanish)
        .await
        .unwrap();
    // The backend ends: the client is told why, then the connection closes.
    h.direct()
        .execute("SELECT pg_terminate_backend($1)", &[&killed_pid])
        .await
        .unwrap();
    let told = wire::read_until_closed(&mut killed).await;
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].field(b'C').as_deref(), Some("57P01"));
    drop((logout, vanish, killed));

    let ends = h.logs.wait_for("session_end", 3).await;
    let reason_of = |pid: i32| {
        let e = ends
            .iter()
            .find(|e| e["span"]["upstream_pid"] == pid)
            .unwrap_or_else(|| panic!("no session_end for pid {pid}: {ends:?}"));
        e["close_reason"].as_str().unwrap().to_owned()
    };
    assert_eq!(reason_of(logout_pid), "client_terminated");
    assert_eq!(reason_of(vanish_pid), "client_closed");
    assert_eq!(reason_of(killed_pid), "upstream_closed");

    // The metric counts each, and only ever carries the documented close reasons: every one
    // is exported from the start, so the series are fixed.
    let (_, body) = h.admin_get("/metrics").await;
    let mut seen: Vec<String> = body
        .lines()
        .filter(|l| l.starts_with("pgwarden_sessions_total{"))
        .map(|l| {
            let label = l
                .split("close_reason=\"")
                .nth(1)
                .expect("a close_reason label");
            label[..label.find('"').unwrap()].to_owned()
        })
        .collect();
    seen.sort();
    use pgwarden::metrics::Label;
    let mut documented: Vec<String> = pgwarden::session::CloseReason::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    documented.sort();
    assert_eq!(seen, documented);
    for (reason, n) in [
        ("client_terminated", 1.0),
        ("client_closed", 1.0),
        ("upstream_closed", 1.0),
        ("client_error", 0.0),
        ("shutdown", 0.0),
    ] {
        let series = format!("pgwarden_sessions_total{{close_reason=\"{reason}\"}}");
        assert_eq!(h.metric(&series).await, n, "{series}");
    }
}
