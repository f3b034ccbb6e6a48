//! Log output: text for people, JSON for collectors, both from `tracing`.
//!
//! Session fields live on the session span and are printed with every record
//! of the session. Nothing that reaches a log line here may be a secret: the
//! types that hold secrets do not print them, and no code logs message bodies.

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
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
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Already installed (tests, or `dev` after `run` set-up): keep the first.
    let _ = init_with_writer(format, level, std::io::stderr, ansi);
}

/// Installs the global subscriber with the same format and filtering as
/// [`init`], writing to `writer` (the tests capture what pgwarden logs this
/// way). Returns false if a global subscriber was already installed.
pub fn init_with_writer<W>(format: LogFormat, level: &str, writer: W, ansi: bool) -> bool
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(writer);
    let no_sql = filter_fn(not_sql_text);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .finish()
            .with(no_sql)
            .try_init(),
        LogFormat::Text => builder.finish().with(no_sql).try_init(),
    };
    result.is_ok()
}
