//! psycopg 3 as a real client: runs a script from `tests/it/python/` with the test venv's
//! python and returns the one JSON object it prints.
//!
//! The connection goes to the script through libpq's own environment variables, set in the
//! child's environment only (the password never appears on a command line), with
//! `sslmode=verify-full` against the CA of the server it reaches. Every other `PG*`
//! variable of the test process is removed. The scripts carry their own watchdogs; this
//! side adds an outer deadline and kills the child when it passes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgwarden::dev::{CLIENT_USER, DATABASE};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::harness::Harness;
use super::venv;

/// Longer than any script's own watchdog (`pgw.WATCHDOG_SECONDS`).
const OUTER_DEADLINE: Duration = Duration::from_secs(240);

/// Where a script connects, and as whom.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    user: String,
    dbname: String,
    password: SecretString,
    ca: PathBuf,
}

impl Target {
    /// `keycloak` through pgwarden.
    pub fn proxy(h: &Harness) -> Target {
        Target {
            addr: h.proxy_addr,
            user: CLIENT_USER.into(),
            dbname: DATABASE.into(),
            password: h.client_password.clone(),
            ca: h.ca_path.clone(),
        }
    }

    /// The superuser straight to the cluster's `keycloak` database: PostgreSQL 15 itself,
    /// to compare with.
    pub fn direct(h: &Harness) -> Target {
        Target {
            addr: SocketAddr::new([127, 0, 0, 1].into(), h.cluster.port()),
            user: h.cluster.superuser().into(),
            dbname: DATABASE.into(),
            password: h.cluster.superuser_password().clone(),
            ca: h.cluster.ca_cert_path().to_owned(),
        }
    }

    /// The same server reached through `addr` (a relay in front of it).
    pub fn via(mut self, addr: SocketAddr) -> Target {
        self.addr = addr;
        self
    }
}

/// Runs `script` against `target` with `conninfo` (extra libpq keywords, may be empty) as
/// its argument and `env` added to its environment; the JSON object it printed. Fails the
/// test, with the script's output, when it exits non-zero or prints no JSON.
pub async fn run(script: &str, target: &Target, conninfo: &str, env: &[(&str, &str)]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/python")
        .join(script);
    let mut cmd = tokio::process::Command::new(venv::bin("python"));
    cmd.arg(&path).arg(conninfo).kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") || name == "PSYCOPG_IMPL" {
            cmd.env_remove(name);
        }
    }
    cmd.env("PGHOST", target.addr.ip().to_string())
        .env("PGPORT", target.addr.port().to_string())
        .env("PGUSER", &target.user)
        .env("PGDATABASE", &target.dbname)
        .env("PGPASSWORD", target.password.expose_secret())
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &target.ca)
        .env("PGGSSENCMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "60")
        .env("PGAPPNAME", "pgwarden-tests-psycopg")
        .env("PYTHONUNBUFFERED", "1")
        // No __pycache__ beside the scripts in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1");
    for (name, value) in env {
        cmd.env(name, value);
    }
    let out = tokio::time::timeout(OUTER_DEADLINE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{script} ran past {OUTER_DEADLINE:?} and was killed"))
        .unwrap_or_else(|e| panic!("{script}: cannot run python: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} {conninfo} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("{script} printed no JSON ({e}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    })
}
