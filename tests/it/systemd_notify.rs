//! The real `pgwarden run` under a stand-in for systemd: the test owns the
//! notification socket (`NOTIFY_SOCKET`), reads what pgwarden sends, and
//! signals it as `systemctl reload` and `systemctl stop` would.
//!
//! READY=1 comes once pgwarden serves; SIGHUP gives RELOADING=1 (with
//! MONOTONIC_USEC=) then READY=1, and the reload really applies (the
//! listener refuses an address it allowed); a broken configuration still
//! ends in READY=1, with a STATUS= saying the reload failed; WATCHDOG=1 comes
//! at half of WATCHDOG_USEC; SIGTERM gives STOPPING=1 and a clean exit.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgwarden::dev::DevEnvironment;
use rustix::process::{Pid, Signal, kill_process};

use crate::support::harness::GENEROUS;
use crate::support::wire;

/// What the stand-in for systemd received, in order.
struct Systemd {
    socket: UnixDatagram,
    seen: Vec<Vec<String>>,
}

impl Systemd {
    fn bind(path: &std::path::Path) -> Systemd {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Systemd {
            socket,
            seen: Vec::new(),
        }
    }

    /// Reads datagrams until one has `field` (e.g. `READY=1`); returns it.
    fn until(&mut self, field: &str) -> Vec<String> {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            assert!(
                start.elapsed() < GENEROUS,
                "no {field} within {GENEROUS:?}; got {:?}",
                self.seen
            );
            let Ok(len) = self.socket.recv(&mut buf) else {
                continue;
            };
            let text = std::str::from_utf8(&buf[..len]).expect("UTF-8");
            assert!(text.ends_with('\n'), "{text:?}");
            let fields: Vec<String> = text.lines().map(str::to_owned).collect();
            self.seen.push(fields.clone());
            if fields.iter().any(|f| f == field) {
                return fields;
            }
        }
    }

    /// The state-changing notifications seen so far (READY, RELOADING,
    /// STOPPING), in order, leaving out STATUS= and WATCHDOG= alone.
    fn states(&self) -> Vec<&str> {
        self.seen
            .iter()
            .flatten()
            .map(String::as_str)
            .filter(|f| matches!(*f, "READY=1" | "RELOADING=1" | "STOPPING=1"))
            .collect()
    }
}

fn status_of(fields: &[String]) -> &str {
    fields
        .iter()
        .find_map(|f| f.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= in {fields:?}"))
}

fn signal(child: &Child, signal: Signal) {
    kill_process(Pid::from_child(child), signal).expect("signal pgwarden");
}

/// The port pgwarden listens on, from its `listening` record on stderr.
fn listening_port(log: &std::path::Path) -> u16 {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("event=\"listening\"")) {
            let address = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("address="))
                .expect("address=");
            return address.rsplit(':').next().unwrap().parse().unwrap();
        }
        assert!(
            start.elapsed() < GENEROUS,
            "pgwarden never listened:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgwarden_run_speaks_the_notify_protocol_through_a_reload_and_a_stop() {
    let env = DevEnvironment::create(0).await.expect("a dev environment");
    let dir = tempfile::tempdir().unwrap();
    let mut systemd = Systemd::bind(&dir.path().join("notify"));
    let log = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["run", "--config"])
        .arg(&env.config_path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NOTIFY_SOCKET", dir.path().join("notify"))
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start pgwarden");

    let ready = systemd.until("READY=1");
    assert!(status_of(&ready).contains("session(s)"), "{ready:?}");
    systemd.until("WATCHDOG=1");
    let port = listening_port(&log);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admitted = async |local: &str| {
        let mut tcp = wire::connect_from(local, addr).await;
        wire::send(&mut tcp, &pgwarden::protocol::startup::encode_ssl_request()).await;
        wire::closed_without_a_byte(&mut tcp).await.is_err()
    };
    assert!(admitted("127.0.0.2").await);

    // systemctl reload: 127.0.0.2 leaves the allowlist.
    let text = std::fs::read_to_string(&env.config_path).unwrap();
    let narrowed = text.replace(
        "allow = [\"127.0.0.0/8\", \"::1/128\"]",
        "allow = [\"127.0.0.1/32\"]",
    );
    assert_ne!(narrowed, text);
    std::fs::write(&env.config_path, narrowed).unwrap();
    let before = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let before = before.tv_sec as u64 * 1_000_000 + before.tv_nsec as u64 / 1_000;
    signal(&child, Signal::HUP);
    let reloading = systemd.until("RELOADING=1");
    let usec: u64 = reloading
        .iter()
        .find_map(|f| f.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC= in {reloading:?}"))
        .parse()
        .expect("a number of microseconds");
    assert!(
        usec >= before,
        "MONOTONIC_USEC={usec} is before the signal ({before})"
    );
    let ready = systemd.until("READY=1");
    assert!(status_of(&ready).contains("last reload"), "{ready:?}");
    assert!(!status_of(&ready).contains("FAILED"), "{ready:?}");
    assert!(!admitted("127.0.0.2").await, "the reload did not apply");
    assert!(admitted("127.0.0.1").await);

    // A broken configuration: reloading, then ready again on the old one.
    // This time through `pgwarden reload`, as in a container without `kill`.
    std::fs::write(&env.config_path, "[listen]\nallow = 7\n").unwrap();
    let asked = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["reload", "--pid", &child.id().to_string()])
        .output()
        .unwrap();
    assert!(
        asked.status.success(),
        "{}",
        String::from_utf8_lossy(&asked.stderr)
    );
    systemd.until("RELOADING=1");
    let ready = systemd.until("READY=1");
    assert!(status_of(&ready).contains("FAILED"), "{ready:?}");
    assert!(admitted("127.0.0.1").await);

    // systemctl stop.
    signal(&child, Signal::TERM);
    systemd.until("STOPPING=1");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        systemd.states(),
        [
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "STOPPING=1"
        ]
    );
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("event=\"config_reloaded\""), "{stderr}");
    assert!(
        stderr.contains("event=\"config_reload_failed\""),
        "{stderr}"
    );
    let DevEnvironment { cluster, .. } = env;
    let _ = cluster.stop().await;
}
