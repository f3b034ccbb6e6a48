//! Log output: text for people, JSON for collectors, both from `tracing`.
//!
//! The level is a reloadable filter ([`set_level`], used by a configuration
//! reload); the format is fixed for the life of the process.
//!
//! Session fields live on the session span and are printed with every record
//! of the session. Nothing that reaches a log line here may be a secret: the
//! types that hold secrets do not print them, and no code logs message bodies.
//!
//! One record is one line, whatever its fields hold. Clients choose user
//! names and parameters, and servers' error texts quote them back, so a field
//! may hold a newline, a carriage return or a terminal escape. JSON escapes
//! them itself. The text format goes through [`Escaping`], which escapes every
//! control character of a record but the newline that ends it (the fmt layer
//! writes each record whole, in one `write_all` of one buffer: see
//! `tracing_subscriber::fmt::Layer::on_event`); so the text format has no
//! colours, since they are escapes too.

use std::sync::OnceLock;

use tracing::{Level, Metadata};
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::Registry;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Libraries that log the text of SQL statements at debug level. The built-in
/// credential source sends `CREATE ROLE … PASSWORD '<verifier>'` through
/// tokio-postgres, so these never get past info, whatever level is asked for.
const SQL_TEXT_TARGETS: &[&str] = &["tokio_postgres"];

/// Whether a record may be logged at all (independently of the level filter).
fn not_sql_text(meta: &Metadata<'_>) -> bool {
    *meta.level() <= Level::INFO
        || !SQL_TEXT_TARGETS
            .iter()
            .any(|t| meta.target().starts_with(t))
}

/// Installs the global subscriber, writing to stderr. `level` is a level or an
/// EnvFilter directive.
pub fn init(format: LogFormat, level: &str) {
    // Already installed (tests, or `dev` after `run` set-up): keep the first.
    let _ = init_with_writer(format, level, std::io::stderr);
}

/// The level filter of the installed subscriber, which a reload can change.
/// The subscriber is the process's global one, so its handle is too.
static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Why the log level could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    #[error("`{0}` is not a level or filter")]
    Invalid(String),
    #[error("the log filter cannot be changed: {0}")]
    Reload(#[from] reload::Error),
}

/// Changes the level (or EnvFilter directive) of the subscriber [`init`]
/// installed; without one (an embedding program's own), does nothing.
pub fn set_level(level: &str) -> Result<(), LevelError> {
    let filter = EnvFilter::try_new(level).map_err(|_| LevelError::Invalid(level.to_owned()))?;
    match LEVEL.get() {
        Some(handle) => Ok(handle.reload(filter)?),
        None => Ok(()),
    }
}

/// Installs the global subscriber with the same format and filtering as
/// [`init`], writing to `writer` (the tests capture what pgwarden logs this
/// way). Returns false if a global subscriber was already installed.
pub fn init_with_writer<W>(format: LogFormat, level: &str, writer: W) -> bool
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let no_sql = filter_fn(not_sql_text);
    let base = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => base
            .with(
                tracing_subscriber::fmt::layer()
                    .with_span_events(FmtSpan::NONE)
                    .with_target(false)
                    .with_ansi(false)
                    .with_writer(writer)
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .with(no_sql)
            .try_init(),
        LogFormat::Text => base
            .with(
                tracing_subscriber::fmt::layer()
                    .with_span_events(FmtSpan::NONE)
                    .with_target(false)
                    .with_ansi(false)
                    .with_writer(Escaping(writer)),
            )
            .with(no_sql)
            .try_init(),
    };
    if result.is_ok() {
        let _ = LEVEL.set(handle);
    }
    result.is_ok()
}

/// A [`MakeWriter`] whose writers escape every control character of a
/// record except its final newline, so that no field can start a line.
struct Escaping<M>(M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Escaping<M> {
    type Writer = EscapingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter(self.0.make_writer())
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        EscapingWriter(self.0.make_writer_for(meta))
    }
}

/// Writes one record escaped (see [`Escaping`]).
struct EscapingWriter<W>(W);

impl<W: std::io::Write> std::io::Write for EscapingWriter<W> {
    /// Takes the whole buffer: the fmt layer hands over one record per call.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(escape_record(buf).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `record` with every control character (C0, DEL, C1) and Unicode line or
/// paragraph separator written as an escape (`\n`, `\r`, `\t`, `\u{1b}`),
/// except one newline at its very end.
fn escape_record(record: &[u8]) -> String {
    let text = String::from_utf8_lossy(record);
    let (body, end) = match text.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (&*text, ""),
    };
    let mut out = String::with_capacity(text.len() + 8);
    for c in body.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push_str(end);
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_record_stays_one_line_whatever_it_holds() {
        let record =
            "2026-01-01T00:00:00Z  WARN detail=user \"a\nFORGED\rx\x1b[31m\u{85}\u{2028}\" end\n";
        let escaped = escape_record(record.as_bytes());
        assert_eq!(
            escaped,
            "2026-01-01T00:00:00Z  WARN detail=user \"a\\nFORGED\\rx\\u{1b}[31m\\u{85}\\u{2028}\" end\n"
        );
        assert_eq!(escaped.lines().count(), 1);
        // Without a final newline nothing is added.
        assert_eq!(escape_record(b"a\nb"), "a\\nb");
    }

    #[test]
    fn the_writer_passes_a_record_on_escaped_in_one_piece() {
        let mut out = Vec::new();
        let mut w = EscapingWriter(&mut out);
        w.write_all(b"x=\"1\n2\"\n").unwrap();
        assert_eq!(out, b"x=\"1\\n2\"\n");
    }
}

#[cfg(test)]
mod init_tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[test]
    fn the_text_format_writes_and_its_level_can_change() {
        let buf = Buf::default();
        assert!(init_with_writer(LogFormat::Text, "info", buf.clone()));
        tracing::info!(event = "one");
        tracing::debug!(event = "hidden");
        set_level("debug").unwrap();
        tracing::debug!(event = "two");
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("event=\"one\""), "{text}");
        assert!(!text.contains("hidden"), "{text}");
        assert!(text.contains("event=\"two\""), "{text}");
        assert!(set_level("no such=level=x").is_err());
    }
}
