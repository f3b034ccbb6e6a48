//! What pgwarden logs, captured in memory.
//!
//! [`capture_as`] installs pgwarden's own subscriber in the format a test asks for (JSON, the
//! one `[log] format = "json"` gives, unless the test reads what people read) as the process's
//! global subscriber, writing into a buffer instead of stderr. nextest runs every test in its own
//! process, so each test sees only its own lines; under plain `cargo test` the first
//! installation wins and the buffer is shared, which only adds lines.

use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use pgwarden::config::LogFormat;
use serde_json::Value;
use tracing_subscriber::fmt::MakeWriter;

/// The level tests capture at: `debug`, so that anything a secret could leak through at a
/// level an operator might well turn on is seen.
pub const CAPTURE_LEVEL: &str = "debug";

/// Everything logged so far in this process.
#[derive(Clone)]
pub struct Logs {
    buf: Arc<Mutex<Vec<u8>>>,
}

/// Installs the capturing subscriber in `format` (once per process: a second format in the
/// same process fails the test) and returns the capture.
pub fn capture_as(format: LogFormat) -> Logs {
    static LOGS: OnceLock<(LogFormat, Logs)> = OnceLock::new();
    let (installed_format, logs) = LOGS.get_or_init(|| {
        let logs = Logs {
            buf: Arc::new(Mutex::new(Vec::new())),
        };
        let installed = pgwarden::logging::init_with_writer(format, CAPTURE_LEVEL, logs.clone());
        assert!(
            installed,
            "another global tracing subscriber was installed first"
        );
        (format, logs)
    });
    assert_eq!(
        *installed_format, format,
        "this process already captures another log format"
    );
    logs.clone()
}

impl Logs {
    /// Every captured line, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }

    /// Every captured line, parsed. A line that is not JSON fails the test: the JSON format
    /// promises one object per line.
    pub fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Lines whose `event` field is `name`.
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["event"] == name)
            .collect()
    }

    /// Waits (up to a minute) until at least `n` lines have `event` = `name`, and returns
    /// them all. Many records are written just after the client was answered, so a test
    /// that has seen the answer must still wait for the record.
    pub async fn wait_for(&self, name: &str, n: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let found = self.events(name);
            if found.len() >= n {
                return found;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} `{name}` records expected, {} logged: {found:?}",
                found.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Fails the test, naming the secret (not showing it), if any line contains `secret`.
    pub fn assert_absent(&self, what: &str, secret: &str) {
        assert!(
            secret.len() >= 8,
            "{what}: too short to search for meaningfully"
        );
        let text = self.text();
        if let Some(n) = text.lines().position(|l| l.contains(secret)) {
            let line = text.lines().nth(n).unwrap().replace(secret, "<REDACTED>");
            panic!("{what} appears in captured log line {}: {line}", n + 1);
        }
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            buf: self.buf.clone(),
            line: Vec::new(),
        }
    }
}

/// Collects one record and appends it whole when dropped, so that records written from
/// several threads never interleave.
pub struct LineWriter {
    buf: Arc<Mutex<Vec<u8>>>,
    line: Vec<u8>,
}

impl io::Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        buf.extend_from_slice(&self.line);
    }
}
