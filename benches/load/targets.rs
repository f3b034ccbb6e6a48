//! The three targets of a run: PostgreSQL itself, PgBouncer and pgwarden, all over TLS, all in
//! front of one throwaway cluster prepared the way `pgwarden dev` prepares it.

use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgwarden::dev::{CLIENT_USER, DATABASE, DevEnvironment, OWNER_ROLE};
use secrecy::ExposeSecret;

/// How long a server may take to accept connections on a loaded machine (under valgrind,
/// too).
const READY_DEADLINE: Duration = Duration::from_secs(180);
/// The database role PgBouncer logs in as.
const BOUNCER_ROLE: &str = "bench_pgbouncer";
/// Callgrind's output files, in pgwarden's and PgBouncer's directories.
const PGWARDEN_CALLGRIND: &str = "pgwarden.callgrind";
const BOUNCER_CALLGRIND: &str = "pgbouncer.callgrind";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Direct,
    PgBouncer,
    Pgwarden,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Direct, Target::PgBouncer, Target::Pgwarden];

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::PgBouncer => "pgbouncer",
            Target::Pgwarden => "pgwarden",
        }
    }

    /// The targets in an order that rotates with the round, so that no target always runs
    /// first (on a cold cache) or last (on a warm one).
    pub fn rotated(round: usize) -> [Target; 3] {
        let mut t = Target::ALL;
        t.rotate_left(round % 3);
        t
    }
}

/// The cluster, pgwarden and PgBouncer of one run.
pub struct Bench {
    pub env: DevEnvironment,
    pub pgwarden_port: u16,
    pub pgbouncer_port: u16,
    pub pgwarden: Child,
    pub pgbouncer: Child,
    /// PgBouncer's files; it runs as the unprivileged user that runs PostgreSQL.
    pub bouncer_dir: tempfile::TempDir,
    /// Whether both proxies run under `valgrind --tool=callgrind`.
    pub callgrind: bool,
}

/// `program`, or `program` run by callgrind writing to `out` (counting from the start; the
/// counting mode zeroes and dumps the counters around each run with `callgrind_control`).
fn command(program: &str, callgrind: bool, out: &Path) -> Command {
    if !callgrind {
        return Command::new(program);
    }
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=callgrind", "--quiet", "--vgdb=yes"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(program);
    cmd
}

impl Bench {
    /// Starts everything; `max_sessions` sizes pgwarden's and PgBouncer's limits;
    /// `prefetch` credentials are issued ahead (`[credentials.dev] prefetch`); with
    /// `callgrind`, both proxies run under callgrind.
    pub async fn start(max_sessions: usize, prefetch: usize, callgrind: bool) -> Bench {
        let pgwarden_port = free_port();
        let env = DevEnvironment::create(pgwarden_port)
            .await
            .unwrap_or_else(|e| panic!("the dev environment: {e}"));
        // The dev configuration allows 100 sessions; the idle-memory scenario needs more.
        let config = std::fs::read_to_string(&env.config_path).expect("the dev configuration");
        let config = config.replace(
            "max_connections = 100",
            &format!("max_connections = {max_sessions}"),
        );
        assert!(config.contains(&format!("max_connections = {max_sessions}")));
        let config = config.replace(
            "ttl = \"1h\"\n",
            &format!("ttl = \"1h\"\nprefetch = {prefetch}\n"),
        );
        assert!(config.contains(&format!("prefetch = {prefetch}")));
        std::fs::write(&env.config_path, config).expect("rewriting the dev configuration");

        let log_path = env.dir.path().join("pgwarden.log");
        let log = std::fs::File::create(&log_path).expect("a log file");
        let mut pgwarden = command(
            env!("CARGO_BIN_EXE_pgwarden"),
            callgrind,
            &env.dir.path().join(PGWARDEN_CALLGRIND),
        );
        // pgwarden refuses PGWARDEN_* variables it does not know; pass only the one we mean.
        for (k, _) in std::env::vars() {
            if k.starts_with("PGWARDEN_") {
                pgwarden.env_remove(k);
            }
        }
        let mut pgwarden = pgwarden
            .args(["run", "--config"])
            .arg(&env.config_path)
            .env("PGWARDEN_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting pgwarden");
        wait_for_port(&mut pgwarden, pgwarden_port, "pgwarden", &log_path);

        let bouncer_password = bouncer_role(&env).await;
        let (pgbouncer, pgbouncer_port, bouncer_dir) =
            start_pgbouncer(&env, &bouncer_password, max_sessions, callgrind);
        Bench {
            env,
            pgwarden_port,
            pgbouncer_port,
            pgwarden,
            pgbouncer,
            bouncer_dir,
            callgrind,
        }
    }

    /// Where callgrind writes a proxy's counts (its dumps add `.1`, `.2`, …).
    pub fn callgrind_out(&self, target: Target) -> Option<PathBuf> {
        match target {
            _ if !self.callgrind => None,
            Target::Direct => None,
            Target::PgBouncer => Some(self.bouncer_dir.path().join(BOUNCER_CALLGRIND)),
            Target::Pgwarden => Some(self.env.dir.path().join(PGWARDEN_CALLGRIND)),
        }
    }

    /// Waits until no role pgwarden issued is left (its admin role, `pgwarden_admin`, is not
    /// one): every session's credential revoked, and
    /// none waiting in the prefetch pool counted (`keep` of them may wait there).
    pub async fn wait_for_issued_roles_at_most(&self, keep: i64) {
        let admin = self
            .env
            .cluster
            .connect("postgres")
            .await
            .expect("a superuser connection");
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let count: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_roles \
                     WHERE rolname LIKE 'pgwarden\\_%' AND rolname <> $1",
                    &[&pgwarden::dev::ADMIN_ROLE],
                )
                .await
                .expect("counting issued roles")
                .get(0);
            if count <= keep {
                return;
            }
            assert!(Instant::now() < deadline, "{count} issued roles remain");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// libpq environment for a client of `target`: host, port, user, password, database and
    /// `sslmode=verify-full` against the run's CA.
    pub fn client_env(&self, target: Target) -> Vec<(&'static str, String)> {
        let (port, user, password) = match target {
            Target::Direct => (
                self.env.cluster.port(),
                self.env.cluster.superuser().to_owned(),
                self.env
                    .cluster
                    .superuser_password()
                    .expose_secret()
                    .to_owned(),
            ),
            Target::PgBouncer => (
                self.pgbouncer_port,
                CLIENT_USER.to_owned(),
                self.env.client_password.expose_secret().to_owned(),
            ),
            Target::Pgwarden => (
                self.pgwarden_port,
                CLIENT_USER.to_owned(),
                self.env.client_password.expose_secret().to_owned(),
            ),
        };
        vec![
            ("PGHOST", "127.0.0.1".to_owned()),
            ("PGPORT", port.to_string()),
            ("PGUSER", user),
            ("PGPASSWORD", password),
            ("PGDATABASE", DATABASE.to_owned()),
            ("PGSSLMODE", "verify-full".to_owned()),
            ("PGSSLROOTCERT", self.env.ca_path.display().to_string()),
            // No GSSAPI probe: none of the targets offers it.
            ("PGGSSENCMODE", "disable".to_owned()),
        ]
    }

    /// A command for a PostgreSQL client program talking to `target`, with nothing of our
    /// own environment's PG* variables.
    pub fn client(&self, program: &str, target: Target) -> Command {
        let mut cmd = Command::new(program);
        for (k, _) in std::env::vars() {
            if k.starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.client_env(target));
        cmd
    }

    /// `pgbench -i` through pgwarden, so the tables belong to the owner role every target's
    /// user may use (the direct superuser may use anything).
    pub fn init_pgbench(&self, scale: u32) {
        eprintln!("pgbench -i -s {scale} …");
        let out = self
            .client("pgbench", Target::Pgwarden)
            .args(["-i", "-q", "-s", &scale.to_string()])
            .output()
            .expect("running pgbench -i");
        assert!(
            out.status.success(),
            "pgbench -i failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = self
            .client("psql", Target::Pgwarden)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg("CREATE TABLE IF NOT EXISTS bench_copy (id bigint, payload text)")
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "creating bench_copy failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until the cluster serves fewer than `n` client backends, so that the next
    /// scenario does not meet the previous one's connections.
    pub async fn wait_for_backends_below(&self, n: i64) {
        let admin = self
            .env
            .cluster
            .connect("postgres")
            .await
            .expect("a superuser connection");
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let count: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
                    &[],
                )
                .await
                .expect("counting backends")
                .get(0);
            if count < n {
                return;
            }
            assert!(Instant::now() < deadline, "{count} backends remain");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// pgwarden's process id, for its memory.
    pub fn pid(&self, target: Target) -> Option<u32> {
        match target {
            Target::Direct => None,
            Target::PgBouncer => Some(self.pgbouncer.id()),
            Target::Pgwarden => Some(self.pgwarden.id()),
        }
    }

    /// Stops PgBouncer, then pgwarden with SIGTERM (it drains and revokes every lease), then
    /// the cluster.
    pub async fn stop(mut self) {
        let _ = self.pgbouncer.kill();
        let _ = self.pgbouncer.wait();
        let _ = Command::new("kill")
            .args(["-TERM", &self.pgwarden.id().to_string()])
            .status();
        match self.pgwarden.wait() {
            Ok(s) if s.success() => {}
            other => eprintln!("pgwarden ended with {other:?}"),
        }
        if let Err(e) = self.env.cluster.stop().await {
            eprintln!("stopping the cluster: {e}");
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits until `child` accepts connections on `port`; if it exits first, panics with `log`.
fn wait_for_port(child: &mut Child, port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + READY_DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} exited with {status} before listening:\n{log}");
        }
        assert!(Instant::now() < deadline, "{what} did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The uid/gid PgBouncer runs as: ours, or PostgreSQL's `postgres` user when we are root
/// (PgBouncer, like PostgreSQL, refuses to run as root).
fn unprivileged_ids(dir: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").ok()?.uid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let ids = ["postgres", "nobody"].iter().find_map(|name| {
        let line = passwd.lines().find(|l| l.split(':').next() == Some(name))?;
        let mut f = line.split(':').skip(2);
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        chown(entry.path(), Some(ids.0), Some(ids.1)).ok()?;
    }
    chown(dir, Some(ids.0), Some(ids.1)).ok()?;
    Some(ids)
}

/// The role PgBouncer logs in as: like pgwarden's issued roles, a member of the owner role
/// whose sessions act as that role, but one long-lived role with one password, as PgBouncer
/// deployments have. Returns its password (letters and digits only).
async fn bouncer_role(env: &DevEnvironment) -> String {
    let password: String = {
        use rand::Rng;
        rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(40)
            .map(char::from)
            .collect()
    };
    let admin = env
        .cluster
        .connect("postgres")
        .await
        .expect("a superuser connection");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {BOUNCER_ROLE} LOGIN PASSWORD '{password}' IN ROLE {OWNER_ROLE};
             ALTER ROLE {BOUNCER_ROLE} SET role = '{OWNER_ROLE}';"
        ))
        .await
        .expect("creating PgBouncer's role");
    password
}

fn start_pgbouncer(
    env: &DevEnvironment,
    password: &str,
    max_sessions: usize,
    callgrind: bool,
) -> (Child, u16, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("pgwarden-bench-pgbouncer-")
        .tempdir()
        .expect("a directory for PgBouncer");
    let path = |name: &str| -> PathBuf { dir.path().join(name) };
    let copy = |from: &Path, to: &str| {
        std::fs::copy(from, path(to)).unwrap_or_else(|e| panic!("copying {to}: {e}"));
    };
    copy(&env.dir.path().join("server.crt"), "server.crt");
    copy(&env.dir.path().join("server.key"), "server.key");
    copy(&env.ca_path, "ca.crt");
    // The client's password in plain text, not its SCRAM verifier: PgBouncer 1.18, given a
    // verifier, tries SCRAM pass-through to the server even with a forced `user=` and fails.
    // Clients still authenticate to PgBouncer with SCRAM-SHA-256.
    std::fs::write(
        path("userlist.txt"),
        format!(
            "\"{CLIENT_USER}\" \"{}\"\n",
            env.client_password.expose_secret()
        ),
    )
    .expect("userlist.txt");
    let port = free_port();
    let ini = format!(
        "[databases]\n\
         {DATABASE} = host=127.0.0.1 port={pg_port} dbname={DATABASE} user={BOUNCER_ROLE} password={password}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = scram-sha-256\n\
         auth_file = {dir}/userlist.txt\n\
         pool_mode = session\n\
         max_client_conn = {max}\n\
         default_pool_size = {max}\n\
         client_tls_sslmode = require\n\
         client_tls_cert_file = {dir}/server.crt\n\
         client_tls_key_file = {dir}/server.key\n\
         server_tls_sslmode = verify-full\n\
         server_tls_ca_file = {dir}/ca.crt\n\
         logfile = {dir}/pgbouncer.log\n\
         log_connections = 0\n\
         log_disconnections = 0\n",
        pg_port = env.cluster.port(),
        dir = dir.path().display(),
        max = max_sessions,
    );
    std::fs::write(path("pgbouncer.ini"), ini).expect("pgbouncer.ini");
    let mut cmd = command("pgbouncer", callgrind, &path(BOUNCER_CALLGRIND));
    cmd.arg(path("pgbouncer.ini"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some((uid, gid)) = unprivileged_ids(dir.path()) {
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd
        .spawn()
        .expect("starting pgbouncer (apt-get install pgbouncer)");
    wait_for_port(&mut child, port, "PgBouncer", &path("pgbouncer.log"));
    eprintln!("PgBouncer's files: {}", dir.path().display());
    (child, port, dir)
}
