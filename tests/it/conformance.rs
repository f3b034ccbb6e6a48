//! Through pgwarden, a session behaves as a direct connection to the same cluster does: bulk
//! COPY both ways (over 100 MiB, byte for byte), the extended protocol with named statements,
//! binary values and portals suspended by row limits (byte for byte at the wire), LISTEN/NOTIFY
//! with the real sender pid, the same ParameterStatus set, and the same FATAL for an unknown
//! database. Every comparison runs the same thing on both paths in the same test.

use crate::support::harness::{GENEROUS, Harness, Options};
use crate::support::wire::{self, Message};
use aws_lc_rs::digest;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use postgres_protocol::IsNull;
use postgres_protocol::message::frontend;
use secrecy::ExposeSecret;
use tokio_postgres::{AsyncMessage, Client};

/// The least a bulk COPY must carry.
const BULK_BYTES: u64 = 100 * 1024 * 1024;
/// Rows of the bulk COPYs: about 105 bytes each, so about 115 MB.
const BULK_ROWS: u64 = 1_100_000;

/// Byte count and SHA-256 of everything a `COPY … TO STDOUT` sends.
async fn copy_out_digest(client: &Client, sql: &str) -> (u64, Vec<u8>) {
    let stream = client.copy_out(sql).await.expect("COPY OUT starts");
    futures_util::pin_mut!(stream);
    let mut sha = digest::Context::new(&digest::SHA256);
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("COPY OUT data");
        n += chunk.len() as u64;
        sha.update(&chunk);
    }
    (n, sha.finish().as_ref().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_out_of_over_100_mib_is_byte_identical_to_direct() {
    let h = Harness::start(Options::default()).await;
    let sql = format!(
        "COPY (SELECT g, m, repeat(m, 2) FROM generate_series(1, {BULK_ROWS}) g, \
         LATERAL md5(g::text) m) TO STDOUT"
    );
    let (direct_len, direct_sha) = copy_out_digest(h.direct(), &sql).await;
    assert!(
        direct_len >= BULK_BYTES,
        "the COPY must carry at least 100 MiB, not {direct_len} bytes"
    );
    let proxy = h.connect().await;
    let (proxy_len, proxy_sha) = copy_out_digest(&proxy, &sql).await;
    assert_eq!(proxy_len, direct_len, "bytes through pgwarden vs direct");
    assert_eq!(proxy_sha, direct_sha, "SHA-256 through pgwarden vs direct");
    // The session still works, and its record counted what it carried.
    let one: i32 = proxy.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(proxy);
    let end = &h.logs.wait_for("session_end", 1).await[0];
    assert!(
        end["bytes_upstream_to_client"].as_u64().unwrap() > direct_len,
        "{end}"
    );
}

/// Deterministic COPY text of `rows` rows `id, hex, text`, in chunks of about 64 KiB, made as
/// they are sent. Non-ASCII letters check that client_encoding UTF8 passes untouched.
struct CopyData {
    next: u64,
    rows: u64,
    state: u64,
}

impl CopyData {
    fn new(rows: u64) -> Self {
        CopyData {
            next: 1,
            rows,
            state: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64: fast, deterministic, and good enough to avoid repetitive rows.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }
}

impl Iterator for CopyData {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        use std::fmt::Write;
        if self.next > self.rows {
            return None;
        }
        let mut chunk = String::with_capacity(70 * 1024);
        while chunk.len() < 64 * 1024 && self.next <= self.rows {
            let (a, b) = (self.random(), self.random());
            let word = ["été", "Grüße", "naïve café", "ascii only"][(a % 4) as usize];
            writeln!(
                chunk,
                "{}\t{a:016x}{b:016x}\t{word} {b:020} {a:020} {}",
                self.next,
                "-".repeat((b % 16) as usize)
            )
            .unwrap();
            self.next += 1;
        }
        Some(Bytes::from(chunk))
    }
}

/// Streams [`CopyData`] into `table` with `COPY … FROM STDIN`; returns what was sent (bytes,
/// SHA-256) and the row count the server reported.
async fn copy_in(client: &Client, table: &str) -> (u64, Vec<u8>, u64) {
    let sink = client
        .copy_in(&format!("COPY {table} FROM STDIN"))
        .await
        .expect("COPY IN starts");
    futures_util::pin_mut!(sink);
    let mut sha = digest::Context::new(&digest::SHA256);
    let mut n = 0u64;
    for chunk in CopyData::new(BULK_ROWS) {
        n += chunk.len() as u64;
        sha.update(&chunk);
        sink.send(chunk).await.expect("COPY data accepted");
    }
    let rows = sink.finish().await.expect("COPY IN completes");
    (n, sha.finish().as_ref().to_vec(), rows)
}

/// Row count, and the SHA-256 of the table's contents in id order, read directly.
async fn table_digest(h: &Harness, table: &str) -> (i64, Vec<u8>) {
    let count: i64 = h
        .direct()
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    let (_, sha) = copy_out_digest(
        h.direct(),
        &format!("COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT"),
    )
    .await;
    (count, sha)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_of_over_100_mib_stores_what_a_direct_copy_stores() {
    let h = Harness::start(Options::default()).await;
    let proxy = h.connect().await;
    let create = |t: &str| format!("CREATE UNLOGGED TABLE {t} (id int8, hex text, words text)");
    h.direct()
        .batch_execute(&create("copied_direct"))
        .await
        .unwrap();
    proxy.batch_execute(&create("copied_proxy")).await.unwrap();

    let (direct_len, direct_sha, direct_rows) = copy_in(h.direct(), "copied_direct").await;
    assert!(
        direct_len >= BULK_BYTES,
        "the COPY must carry at least 100 MiB, not {direct_len} bytes"
    );
    let (proxy_len, proxy_sha, proxy_rows) = copy_in(&proxy, "copied_proxy").await;
    assert_eq!(
        (proxy_len, &proxy_sha),
        (direct_len, &direct_sha),
        "same input"
    );
    assert_eq!(proxy_rows, BULK_ROWS, "rows reported through pgwarden");
    assert_eq!(direct_rows, BULK_ROWS, "rows reported directly");

    // Both tables hold exactly what was sent: the text COPY of a table of int8 and text
    // columns gives back its input byte for byte.
    let direct_table = table_digest(&h, "copied_direct").await;
    let proxy_table = table_digest(&h, "copied_proxy").await;
    assert_eq!(direct_table, (BULK_ROWS as i64, direct_sha.clone()));
    assert_eq!(
        proxy_table, direct_table,
        "table through pgwarden vs direct"
    );
    drop(proxy);
    let end = &h.logs.wait_for("session_end", 1).await[0];
    assert!(
        end["bytes_client_to_upstream"].as_u64().unwrap() > proxy_len,
        "{end}"
    );
}

/// The statement both paths prepare: binary parameters of several types, binary results.
const TYPED_SQL: &str = "SELECT $1::int8 * 2, $2::text || '!', $3::bytea || '\\xff'::bytea, \
                         $4::float8 / 4, NOT $5::bool, array_append($6::int4[], 7), $7::timestamptz";

type TypedRow = (
    i64,
    String,
    Vec<u8>,
    f64,
    bool,
    Vec<i32>,
    std::time::SystemTime,
);

async fn run_typed(client: &Client, stmt: &tokio_postgres::Statement, i: i64) -> TypedRow {
    let text = format!("row {i} é");
    let bytes = vec![i as u8, 0, (i >> 8) as u8];
    let float = i as f64 + 0.5;
    let array = vec![i as i32, -1];
    let time =
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_000_000 + i as u64);
    let row = client
        .query_one(
            stmt,
            &[&i, &text, &bytes, &float, &(i % 2 == 0), &array, &time],
        )
        .await
        .expect("the prepared statement runs");
    (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
        row.get(6),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statements_with_binary_values_and_row_limited_portals_match_direct() {
    let h = Harness::start(Options::default()).await;
    let proxy = h.connect().await;
    let direct = h.direct();

    // tokio-postgres prepares named statements and sends and receives every value in binary.
    let on_proxy = proxy.prepare(TYPED_SQL).await.unwrap();
    let on_direct = direct.prepare(TYPED_SQL).await.unwrap();
    assert_eq!(on_proxy.params(), on_direct.params());
    for i in 0..500 {
        let through = run_typed(&proxy, &on_proxy, i).await;
        assert_eq!(
            through,
            run_typed(direct, &on_direct, i).await,
            "execution {i}"
        );
        assert_eq!((through.0, through.4), (i * 2, i % 2 != 0), "execution {i}");
    }
    // The server holds it as a named protocol-level statement (unnamed ones are not listed).
    let named: Vec<String> = proxy
        .query(
            "SELECT name FROM pg_prepared_statements WHERE NOT from_sql AND statement = $1",
            &[&TYPED_SQL],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(named.len(), 1, "{named:?}");
    assert!(!named[0].is_empty());

    // A portal read 100 rows at a time (Execute with a row limit, PortalSuspended between).
    let series = "SELECT g, repeat('x', g % 50) FROM generate_series(1, $1::int4) g";
    let mut results = Vec::new();
    let own_direct = h.cluster.connect("keycloak").await.unwrap();
    for mut client in [proxy, own_direct] {
        let tx = client.transaction().await.unwrap();
        let stmt = tx.prepare(series).await.unwrap();
        let portal = tx.bind(&stmt, &[&1234i32]).await.unwrap();
        let mut rows: Vec<(i32, String)> = Vec::new();
        let mut batches = 0;
        loop {
            let batch = tx.query_portal(&portal, 100).await.unwrap();
            if batch.is_empty() {
                break;
            }
            batches += 1;
            assert!(batch.len() <= 100);
            rows.extend(batch.iter().map(|r| (r.get(0), r.get(1))));
        }
        tx.commit().await.unwrap();
        assert_eq!(batches, 13);
        results.push(rows);
    }
    assert_eq!(results[0].len(), 1234);
    assert_eq!(results[0], results[1]);
}

/// Appends a Bind of `portal` to `stmt` with int4 parameters in binary and binary results.
fn bind_ints(portal: &str, stmt: &str, values: &[i32], buf: &mut BytesMut) {
    frontend::bind(
        portal,
        stmt,
        [1i16],
        values.iter(),
        |v, out: &mut BytesMut| {
            out.extend_from_slice(&v.to_be_bytes());
            Ok::<_, Box<dyn std::error::Error + Sync + Send>>(IsNull::No)
        },
        [1i16],
        buf,
    )
    .map_err(|_| "bind")
    .unwrap();
}

/// One batch of extended-protocol messages: named statement, two portals executed in
/// slices of 7 rows, Describe, Close, and a failing Execute whose error skips to Sync.
fn extended_batches() -> Vec<BytesMut> {
    let mut first = BytesMut::new();
    let sql =
        "SELECT g, g::text, decode(md5(g::text), 'hex') FROM generate_series($1::int4, $2::int4) g";
    frontend::parse("conformance_stmt", sql, [23, 23], &mut first).unwrap();
    frontend::describe(b'S', "conformance_stmt", &mut first).unwrap();
    bind_ints("p1", "conformance_stmt", &[1, 20], &mut first);
    frontend::describe(b'P', "p1", &mut first).unwrap();
    for _ in 0..4 {
        frontend::execute("p1", 7, &mut first).unwrap();
    }
    bind_ints("p2", "conformance_stmt", &[-5, 5], &mut first);
    frontend::execute("p2", 0, &mut first).unwrap();
    frontend::close(b'P', "p1", &mut first).unwrap();
    frontend::sync(&mut first);

    // The statement outlives the transaction; a division by zero fails the second Bind,
    // and what follows it is skipped until Sync.
    let mut second = BytesMut::new();
    bind_ints("", "conformance_stmt", &[3, 4], &mut second);
    frontend::execute("", 0, &mut second).unwrap();
    frontend::parse("", "SELECT 1 / $1::int4", [23], &mut second).unwrap();
    bind_ints("", "", &[0], &mut second);
    frontend::execute("", 0, &mut second).unwrap();
    bind_ints("", "conformance_stmt", &[1, 1], &mut second);
    frontend::execute("", 0, &mut second).unwrap();
    frontend::sync(&mut second);
    let mut third = BytesMut::new();
    frontend::close(b'S', "conformance_stmt", &mut third).unwrap();
    frontend::sync(&mut third);
    vec![first, second, third]
}

/// Sends each batch and collects the responses up to each ReadyForQuery.
async fn run_batches(s: &mut wire::Tls, batches: &[BytesMut]) -> Vec<Message> {
    let mut out = Vec::new();
    for b in batches {
        wire::send(s, b).await;
        out.extend(wire::read_until_ready(s).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_responses_are_byte_identical_to_direct() {
    let h = Harness::start(Options::default()).await;
    let params = [("user", "keycloak"), ("database", "keycloak")];
    let (mut proxy, welcome) = wire::open(
        h.proxy_addr,
        &h.ca_pem,
        &params,
        h.client_password.expose_secret(),
    )
    .await;
    welcome.expect("login through pgwarden");
    let superuser = h.cluster.superuser().to_owned();
    let direct_params = [("user", superuser.as_str()), ("database", "keycloak")];
    let cluster = ([127, 0, 0, 1], h.cluster.port()).into();
    let (mut direct, welcome) = wire::open(
        cluster,
        &h.ca_pem,
        &direct_params,
        h.cluster.superuser_password().expose_secret(),
    )
    .await;
    welcome.expect("direct login");

    let batches = extended_batches();
    let through = run_batches(&mut proxy, &batches).await;
    let straight = run_batches(&mut direct, &batches).await;
    let tags = |ms: &[Message]| ms.iter().map(|m| m.tag as char).collect::<String>();
    // What the batches must produce: ParseComplete, the statement's and the portal's
    // descriptions, four Executes of p1 (7 and 7 rows suspended, 6 rows completed, then
    // completed again), p2's 11 rows, CloseComplete; then two rows, a ParseComplete and the
    // division by zero, raised by the Bind that plans it with the constant 0 (the messages
    // after it are skipped until Sync); then CloseComplete.
    let expected = format!(
        "1tT2T{}s{}s{}CC2{}C3Z2DDC1EZ3Z",
        "D".repeat(7),
        "D".repeat(7),
        "D".repeat(6),
        "D".repeat(11)
    );
    assert_eq!(tags(&straight), expected, "the direct responses");
    assert_eq!(tags(&through), tags(&straight));
    assert_eq!(through, straight, "every message byte for byte");
    let error = straight.iter().find(|m| m.tag == b'E').unwrap();
    assert_eq!(error.field(b'C').as_deref(), Some("22012"));
    wire::terminate(&mut proxy).await;
    wire::terminate(&mut direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_carry_the_senders_real_pid() {
    let h = Harness::start(Options::default()).await;
    // The listener: tokio-postgres, its connection polled here for notifications.
    let (listener, mut connection) = h.connect_parts(&h.pg_config()).await.unwrap();
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            if let Ok(AsyncMessage::Notification(n)) = m {
                let _ = tx.send(n);
            }
        }
    });
    listener
        .batch_execute("LISTEN conformance_channel")
        .await
        .unwrap();
    let listener_pid: i32 = listener
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    // The sender: a raw session through pgwarden, to see the pid its BackendKeyData gave.
    let params = [("user", "keycloak"), ("database", "keycloak")];
    let (mut sender, welcome) = wire::open(
        h.proxy_addr,
        &h.ca_pem,
        &params,
        h.client_password.expose_secret(),
    )
    .await;
    let welcome = welcome.expect("sender login");
    let rows = wire::query(&mut sender, "SELECT pg_backend_pid()")
        .await
        .unwrap();
    let sender_pid: i32 = rows[0][0].as_deref().unwrap().parse().unwrap();
    assert_eq!(
        welcome.pid, sender_pid,
        "BackendKeyData pid vs pg_backend_pid()"
    );
    assert_ne!(sender_pid, listener_pid);
    wire::query(
        &mut sender,
        "NOTIFY conformance_channel, 'through pgwarden'",
    )
    .await
    .unwrap();
    let n = tokio::time::timeout(GENEROUS, notifications.recv())
        .await
        .expect("the notification arrives")
        .unwrap();
    assert_eq!(
        (n.process_id(), n.channel(), n.payload()),
        (sender_pid, "conformance_channel", "through pgwarden")
    );

    // A sender on a direct connection is named by its own pid, as without pgwarden.
    let direct_pid: i32 = h
        .direct()
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    h.direct()
        .batch_execute("NOTIFY conformance_channel, 'direct'")
        .await
        .unwrap();
    let n = tokio::time::timeout(GENEROUS, notifications.recv())
        .await
        .expect("the second notification arrives")
        .unwrap();
    assert_eq!((n.process_id(), n.payload()), (direct_pid, "direct"));
    wire::terminate(&mut sender).await;
}

fn with_user<'a>(user: &'a str, common: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut p = vec![("user", user)];
    p.extend_from_slice(common);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_status_is_what_postgresql_sends_a_direct_login() {
    let h = Harness::start(Options::default()).await;
    // What pgjdbc sends, plus options a client may set.
    let common = [
        ("database", "keycloak"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "Europe/Paris"),
        ("extra_float_digits", "2"),
        ("application_name", "conformance"),
        ("options", "-c search_path=public -c IntervalStyle=iso_8601"),
    ];
    let (mut proxy, through) = wire::open(
        h.proxy_addr,
        &h.ca_pem,
        &with_user("keycloak", &common),
        h.client_password.expose_secret(),
    )
    .await;
    let through = through.expect("login through pgwarden");
    let superuser = h.cluster.superuser();
    let cluster = ([127, 0, 0, 1], h.cluster.port()).into();
    let (mut direct, straight) = wire::open(
        cluster,
        &h.ca_pem,
        &with_user(superuser, &common),
        h.cluster.superuser_password().expose_secret(),
    )
    .await;
    let straight = straight.expect("direct login");

    // session_authorization and is_superuser describe the role the backend logged in as:
    // through pgwarden that is the role issued for this session, directly it is the
    // superuser. pgwarden forwards them verbatim, since rewriting them would tell the client
    // something other than what `SELECT session_user` and `pg_stat_activity` say.
    let identity = ["session_authorization", "is_superuser"];
    let rest = |w: &wire::Welcome| {
        w.params
            .iter()
            .filter(|(n, _)| !identity.contains(&n.as_str()))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        rest(&through),
        rest(&straight),
        "same parameters, values, order"
    );
    let names = |w: &wire::Welcome| w.params.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&through), names(&straight));
    assert_eq!(through.param("IntervalStyle"), Some("iso_8601"));
    assert_eq!(through.param("TimeZone"), Some("Europe/Paris"));
    assert_eq!(through.param("application_name"), Some("conformance"));

    let rows = wire::query(
        &mut proxy,
        "SELECT session_user, rolsuper FROM pg_roles WHERE rolname = session_user",
    )
    .await
    .unwrap();
    let issued = rows[0][0].clone().unwrap();
    assert!(issued.starts_with("pgwarden_"), "{issued}");
    assert_eq!(
        through.param("session_authorization"),
        Some(issued.as_str())
    );
    assert_eq!(rows[0][1].as_deref(), Some("f"));
    assert_eq!(through.param("is_superuser"), Some("off"));
    assert_eq!(straight.param("session_authorization"), Some(superuser));
    assert_eq!(straight.param("is_superuser"), Some("on"));
    wire::terminate(&mut proxy).await;
    wire::terminate(&mut direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_database_gets_the_fatal_postgresql_sends() {
    let h = Harness::start(Options::default()).await;
    let (mut proxy, through) = wire::open(
        h.proxy_addr,
        &h.ca_pem,
        &[("user", "keycloak"), ("database", "no_such_db")],
        h.client_password.expose_secret(),
    )
    .await;
    let through = through.expect_err("refused through pgwarden");
    let superuser = h.cluster.superuser().to_owned();
    let cluster = ([127, 0, 0, 1], h.cluster.port()).into();
    let (mut direct, straight) = wire::open(
        cluster,
        &h.ca_pem,
        &[("user", superuser.as_str()), ("database", "no_such_db")],
        h.cluster.superuser_password().expose_secret(),
    )
    .await;
    let straight = straight.expect_err("refused directly");
    // PostgreSQL adds where in its source the error arose (F, L, R); pgwarden does not.
    let client_facing = |m: &Message| {
        [b'S', b'V', b'C', b'M', b'D', b'H']
            .map(|code| m.field(code))
            .to_vec()
    };
    assert_eq!(client_facing(&through), client_facing(&straight));
    through.assert_fatal("3D000", "database \"no_such_db\" does not exist");
    // And both end the connection.
    assert_eq!(wire::read_until_closed(&mut proxy).await, vec![]);
    assert_eq!(wire::read_until_closed(&mut direct).await, vec![]);
    assert!(
        h.dynamic_roles().await.is_empty(),
        "no credential for an unroutable login"
    );
}
