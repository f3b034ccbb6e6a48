//! systemd's service notification protocol (`sd_notify`), for `Type=notify`
//! units: `READY=1`, `RELOADING=1` with `MONOTONIC_USEC=`, `STOPPING=1`,
//! `STATUS=` and `WATCHDOG=1`, each a datagram to `$NOTIFY_SOCKET`.
//!
//! A small module over std's `UnixDatagram` rather than a crate: the protocol
//! is one datagram of `KEY=value` lines, and std reaches both kinds of
//! address systemd hands out (a path, or `@name` in the abstract namespace);
//! the clock comes from rustix, already a dependency, so no `unsafe`. Without
//! `$NOTIFY_SOCKET` (not under systemd) nothing is sent. A lost datagram is
//! not an error pgwarden can act on: sending never blocks and never fails
//! the caller. Nothing sent here carries a secret.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where and how to tell systemd about pgwarden's state.
pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
}

/// Why `$NOTIFY_SOCKET` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET is neither a path nor an @abstract name")]
    Address,
    #[error("NOTIFY_SOCKET: {0}")]
    Socket(#[from] std::io::Error),
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` names, read through `var`; `Ok(None)`
    /// when it is not set (pgwarden does not run under systemd's notify).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Notifier>, NotifyError> {
        let Some(name) = var("NOTIFY_SOCKET").filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        let to = if let Some(abstract_name) = name.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())?
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(&name)?
        } else {
            return Err(NotifyError::Address);
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Some(Notifier { socket, to }))
    }

    /// Sends one notification of `fields` (`KEY=value` each).
    pub fn send(&self, fields: &[String]) {
        let mut message = fields.join("\n");
        message.push('\n');
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.to) {
            tracing::debug!(event = "sd_notify_failed", error = %e);
        }
    }

    /// Start-up is done: listener and admin endpoint up, sources usable (or
    /// waited for long enough), `status` saying which.
    pub fn ready(&self, status: &str) {
        self.send(&["READY=1".into(), status_field(status)]);
    }

    /// A reload begins (systemd 253+ waits for the `READY=1` that ends it).
    pub fn reloading(&self) {
        self.send(&[
            "RELOADING=1".into(),
            format!("MONOTONIC_USEC={}", monotonic_usec()),
            status_field("reloading the configuration"),
        ]);
    }

    /// Shutdown begins: draining sessions, then revoking leases.
    pub fn stopping(&self, status: &str) {
        self.send(&["STOPPING=1".into(), status_field(status)]);
    }

    /// A line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&[status_field(status)]);
    }

    /// The watchdog's keep-alive.
    pub fn watchdog(&self) {
        self.send(&["WATCHDOG=1".into()]);
    }
}

/// `STATUS=` with `status` on one line (a newline would start another field).
fn status_field(status: &str) -> String {
    let one_line: String = status
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("STATUS={one_line}")
}

/// `CLOCK_MONOTONIC` in microseconds, as systemd reads `MONOTONIC_USEC=`.
pub fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000 + (t.tv_nsec as u64) / 1_000
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when it is set
/// for this process (`$WATCHDOG_PID`, if set, is pgwarden's pid).
pub fn watchdog_interval(var: impl Fn(&str) -> Option<String>) -> Option<Duration> {
    let usec: u64 = var("WATCHDOG_USEC")?.parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn notifications_reach_the_socket_as_newline_separated_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_env(env(&[("NOTIFY_SOCKET", path.to_str().unwrap())]))
            .unwrap()
            .expect("a notifier");
        n.ready("serving\nSTOPPING=1");
        let mut buf = [0u8; 512];
        let len = systemd.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..len]).unwrap();
        // A status line cannot smuggle in a field of its own.
        assert_eq!(got, "READY=1\nSTATUS=serving STOPPING=1\n");
        n.reloading();
        let len = systemd.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..len]).unwrap();
        let usec: u64 = got
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .expect("MONOTONIC_USEC")
            .parse()
            .unwrap();
        assert!(got.starts_with("RELOADING=1\n"), "{got}");
        assert!(usec > 0 && usec <= monotonic_usec());
    }

    #[test]
    fn an_abstract_socket_is_reached_too() {
        let name = format!("pgwarden-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::from_env(env(&[("NOTIFY_SOCKET", &format!("@{name}"))]))
            .unwrap()
            .unwrap();
        n.watchdog();
        let mut buf = [0u8; 64];
        let len = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1\n");
    }

    #[test]
    fn without_a_socket_nothing_is_set_up_and_a_bad_one_is_an_error() {
        assert!(Notifier::from_env(env(&[])).unwrap().is_none());
        assert!(Notifier::from_env(env(&[("NOTIFY_SOCKET", "relative")])).is_err());
    }

    #[test]
    fn the_watchdog_runs_at_half_its_interval_for_this_process_only() {
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_interval(env(&[("WATCHDOG_USEC", "10000000")])),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            watchdog_interval(env(&[("WATCHDOG_USEC", "4000000"), ("WATCHDOG_PID", &me)])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            watchdog_interval(env(&[("WATCHDOG_USEC", "4000000"), ("WATCHDOG_PID", "1")])),
            None
        );
        assert_eq!(watchdog_interval(env(&[("WATCHDOG_USEC", "0")])), None);
        assert_eq!(watchdog_interval(env(&[])), None);
    }
}
