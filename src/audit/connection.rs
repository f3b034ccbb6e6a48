//! The audit's database connection: logged in exactly as a pgwarden session
//! logs in (the route's [`UpstreamTarget`]: TLS as the route configures it,
//! SCRAM, no cleartext or MD5 unless the route allows it), then driven with
//! the simple query protocol, read-only.
//!
//! The session is read-only (`default_transaction_read_only`) and bounded
//! (`statement_timeout`, and a deadline on every query). Its string literals
//! mean the same whatever the server's `standard_conforming_strings`, rows
//! hidden by row-level security raise an error (so a count is never quietly
//! short), and once it knows who it is it searches `pg_catalog` alone, so a
//! function or operator someone planted in a schema on the search path
//! never answers (or runs inside) the audit's queries. Server error text is
//! passed on only for SQLSTATE class 42 (names of missing objects and denied
//! privileges), never for others, which may quote a value from a table.

use std::time::Duration;

use crate::credentials::Credential;
use crate::net::{MaybeTls, UpstreamStream};
use crate::protocol::backend::parse_error_fields;
use crate::protocol::frame::{FrameError, FramedStream};
use crate::upstream::{UpstreamError, UpstreamSession, UpstreamTarget};

/// One query may take this long before the connection is given up.
const QUERY_DEADLINE: Duration = Duration::from_secs(60);
/// The server-side bound, shorter, so the server gives up first.
const STATEMENT_TIMEOUT: &str = "30s";
/// Largest message the audit accepts (its rows are counts and names).
const MAX_MESSAGE: usize = 1 << 22;
/// `application_name` of audit sessions, so they are told apart in pg_stat_activity.
pub(crate) const APPLICATION_NAME: &str = "pgwarden-audit";

/// One result row: text values, `None` for NULL.
pub(crate) type Row = Vec<Option<String>>;

/// Why a query gave no rows.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueryError {
    /// SQLSTATE 42501: the auditing role lacks a privilege.
    #[error("permission denied ({0})")]
    Denied(String),
    /// Another server error: its SQLSTATE, and its message for class 42 only.
    #[error("server error {code}{}", detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Server {
        code: String,
        detail: Option<String>,
    },
    /// The query could not be sent.
    #[error("{0}")]
    Write(#[source] std::io::Error),
    /// The answer could not be read.
    #[error("{0}")]
    Read(#[source] FrameError),
    #[error("malformed DataRow")]
    MalformedRow,
    #[error("unexpected message {0:?} in a simple query")]
    Unexpected(char),
    #[error("no answer within {0:?}")]
    Deadline(Duration),
    /// An earlier query broke the connection.
    #[error("the connection failed earlier")]
    BrokenEarlier,
    /// A statement meant to return one row returned another number.
    #[error("expected one row, got {0}")]
    RowCount(usize),
}

impl QueryError {
    /// Whether the connection is out of step after this error, so no further
    /// query may use it.
    fn breaks_connection(&self) -> bool {
        matches!(
            self,
            QueryError::Write(_)
                | QueryError::Read(_)
                | QueryError::MalformedRow
                | QueryError::Unexpected(_)
                | QueryError::Deadline(_)
                | QueryError::BrokenEarlier
        )
    }
}

/// Why an audit session could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// TCP, TLS or the login with the credential failed.
    #[error("{endpoint}: {source}")]
    Login {
        endpoint: String,
        source: UpstreamError,
    },
    /// Logged in, but the first query (who the session is) failed.
    #[error("{endpoint}: {source}")]
    Identify {
        endpoint: String,
        source: QueryError,
    },
}

/// What the server's certificate and the TLS session were, as seen on connect.
#[derive(Debug, Clone)]
pub(crate) struct TlsFacts {
    pub(crate) version: String,
    /// notAfter of the leaf certificate, Unix seconds.
    pub(crate) not_after: Option<i64>,
}

/// A logged-in, read-only audit session.
pub(crate) struct Session {
    framed: FramedStream<UpstreamStream>,
    /// `None` when the route runs without TLS.
    pub(crate) tls: Option<TlsFacts>,
    /// `session_user`: the role logged in as.
    pub(crate) login: String,
    /// `current_user`: the role the session acts as.
    pub(crate) acting: String,
    /// `server_version_num`, e.g. 150018.
    pub(crate) version: i32,
    /// The schemas the session would have searched (`current_schemas(false)`)
    /// before the audit set its search path to `pg_catalog`: Keycloak's,
    /// when the session is the route's own.
    pub(crate) schemas: Vec<String>,
    broken: bool,
}

/// Settings given at login: read-only, bounded, literals read one way only,
/// and rows hidden by row-level security an error rather than a short count.
const SESSION_OPTIONS: &str = "-c default_transaction_read_only=on \
     -c standard_conforming_strings=on -c row_security=off";

/// Who the session is. Runs before the search path is pinned, so every
/// function is qualified and no operator is used.
const IDENTIFY: &str = "SELECT session_user::text, current_user::text, \
     pg_catalog.current_setting('server_version_num'), \
     pg_catalog.array_to_json(pg_catalog.current_schemas(false))::text";

/// From here on, only the system catalog's functions and operators resolve.
const PIN_SEARCH_PATH: &str = "SET search_path = pg_catalog, pg_temp";

impl Session {
    /// Logs in to `target` with `credential`, acting as `session_role` when
    /// given, the way a pgwarden session does.
    pub(crate) async fn open(
        target: &UpstreamTarget,
        credential: &Credential,
        session_role: Option<&str>,
    ) -> Result<Session, OpenError> {
        let params = [
            ("application_name".to_owned(), APPLICATION_NAME.to_owned()),
            (
                "options".to_owned(),
                format!("{SESSION_OPTIONS} -c statement_timeout={STATEMENT_TIMEOUT}"),
            ),
        ];
        let upstream = target
            .connect(credential, &params, session_role)
            .await
            .map_err(|source| OpenError::Login {
                endpoint: target.endpoint(),
                source,
            })?;
        let tls = tls_facts(&upstream);
        let mut session = Session {
            framed: FramedStream::from_parts(upstream.stream, upstream.leftover),
            tls,
            login: String::new(),
            acting: String::new(),
            version: 0,
            schemas: Vec::new(),
            broken: false,
        };
        session
            .identify()
            .await
            .map_err(|source| OpenError::Identify {
                endpoint: target.endpoint(),
                source,
            })?;
        Ok(session)
    }

    /// Learns who the session is and which schemas it would search, then
    /// pins its search path to `pg_catalog`.
    async fn identify(&mut self) -> Result<(), QueryError> {
        let row = self.query_one(IDENTIFY).await?;
        self.login = text(&row, 0);
        self.acting = text(&row, 1);
        self.version = text(&row, 2).parse().unwrap_or(0);
        self.schemas = serde_json::from_str(&text(&row, 3)).unwrap_or_default();
        self.query(PIN_SEARCH_PATH).await?;
        Ok(())
    }

    /// Runs one statement; its rows as text.
    pub(crate) async fn query(&mut self, sql: &str) -> Result<Vec<Row>, QueryError> {
        if self.broken {
            return Err(QueryError::BrokenEarlier);
        }
        let result = tokio::time::timeout(QUERY_DEADLINE, self.exchange(sql))
            .await
            .unwrap_or(Err(QueryError::Deadline(QUERY_DEADLINE)));
        if result.as_ref().is_err_and(QueryError::breaks_connection) {
            self.broken = true;
        }
        result
    }

    /// Runs a statement that returns exactly one row.
    pub(crate) async fn query_one(&mut self, sql: &str) -> Result<Row, QueryError> {
        let mut rows = self.query(sql).await?;
        match rows.len() {
            1 => Ok(rows.remove(0)),
            n => Err(QueryError::RowCount(n)),
        }
    }

    /// Says goodbye (Terminate) and closes.
    pub(crate) async fn close(mut self) {
        if !self.broken {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                self.framed.write_all(&[b'X', 0, 0, 0, 4]),
            )
            .await;
        }
    }

    async fn exchange(&mut self, sql: &str) -> Result<Vec<Row>, QueryError> {
        let mut message = vec![b'Q'];
        message.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        message.extend_from_slice(sql.as_bytes());
        message.push(0);
        self.framed
            .write_all(&message)
            .await
            .map_err(QueryError::Write)?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self
                .framed
                .read_frame(MAX_MESSAGE)
                .await
                .map_err(QueryError::Read)?;
            match frame.tag {
                b'D' => rows.push(data_row(frame.body()).ok_or(QueryError::MalformedRow)?),
                b'E' => error = Some(server_error(frame.body())),
                b'Z' => break,
                // RowDescription, CommandComplete, EmptyQuery, notices,
                // parameter changes and notifications carry nothing we use.
                b'T' | b'C' | b'I' | b'N' | b'S' | b'A' => {}
                other => return Err(QueryError::Unexpected(other as char)),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }
}

/// The text of column `i` of `row` (empty for NULL or a missing column).
pub(crate) fn text(row: &Row, i: usize) -> String {
    row.get(i).cloned().flatten().unwrap_or_default()
}

/// Column `i` as a boolean (`t`).
pub(crate) fn flag(row: &Row, i: usize) -> bool {
    row.get(i).and_then(|v| v.as_deref()) == Some("t")
}

/// Column `i` as an integer (0 for NULL).
pub(crate) fn number(row: &Row, i: usize) -> i64 {
    row.get(i)
        .and_then(|v| v.as_deref())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Parses a DataRow body: a count, then each value's length (-1: NULL) and bytes.
fn data_row(body: &[u8]) -> Option<Row> {
    let (count, mut rest) = body.split_first_chunk::<2>()?;
    let count = i16::from_be_bytes(*count);
    let mut row = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let (len, after) = rest.split_first_chunk::<4>()?;
        let len = i32::from_be_bytes(*len);
        if len < 0 {
            row.push(None);
            rest = after;
            continue;
        }
        let len = len as usize;
        if after.len() < len {
            return None;
        }
        row.push(Some(String::from_utf8_lossy(&after[..len]).into_owned()));
        rest = &after[len..];
    }
    Some(row)
}

fn server_error(body: &[u8]) -> QueryError {
    let fields = parse_error_fields(body);
    let field = |c: u8| {
        fields
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let code = field(b'C');
    if code == "42501" {
        return QueryError::Denied(field(b'M'));
    }
    // Class 42 (syntax error or access rule violation) names objects; other
    // messages may quote a value read from a table.
    let detail = code.starts_with("42").then(|| field(b'M'));
    QueryError::Server { code, detail }
}

/// SQL string literal that reads the same whatever
/// `standard_conforming_strings` says: an escape string, `E'…'`, with
/// backslashes and quotes doubled.
pub(crate) fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// What the server's certificate and the TLS session were on `upstream`.
fn tls_facts(upstream: &UpstreamSession) -> Option<TlsFacts> {
    match &upstream.stream {
        MaybeTls::Tls(t) => Some(TlsFacts {
            version: upstream.tls_version.unwrap_or("TLS").to_owned(),
            not_after: t
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| x509_parser::parse_x509_certificate(leaf).ok())
                .map(|(_, cert)| cert.validity().not_after.timestamp()),
        }),
        MaybeTls::Plain(_) => None,
    }
}

/// SQL identifier.
pub(crate) fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_rows_parse_values_and_nulls_and_refuse_short_bodies() {
        let mut body = 3i16.to_be_bytes().to_vec();
        body.extend(2i32.to_be_bytes());
        body.extend(b"ab");
        body.extend((-1i32).to_be_bytes());
        body.extend(0i32.to_be_bytes());
        assert_eq!(
            data_row(&body),
            Some(vec![Some("ab".into()), None, Some(String::new())])
        );
        assert_eq!(data_row(&body[..body.len() - 1]), None);
        let mut long = 1i16.to_be_bytes().to_vec();
        long.extend(10i32.to_be_bytes());
        long.extend(b"abc");
        assert_eq!(data_row(&long), None);
    }

    #[test]
    fn only_access_errors_keep_their_message() {
        let fields = |code: &str, msg: &str| {
            let mut b = Vec::new();
            for (k, v) in [(b'S', "ERROR"), (b'C', code), (b'M', msg)] {
                b.push(k);
                b.extend(v.as_bytes());
                b.push(0);
            }
            b.push(0);
            b
        };
        assert!(matches!(
            server_error(&fields("42501", "permission denied for view pg_hba_file_rules")),
            QueryError::Denied(m) if m.contains("pg_hba_file_rules")
        ));
        let value = server_error(&fields("22P02", "invalid input syntax: \"s3cret\""));
        assert!(!value.to_string().contains("s3cret"), "{value}");
        let missing = server_error(&fields("42P01", "relation \"realm\" does not exist"));
        assert!(missing.to_string().contains("realm"), "{missing}");
        assert_eq!(literal("it's"), "E'it''s'");
        // A backslash cannot escape the closing quote, whatever
        // standard_conforming_strings says.
        assert_eq!(literal(r"x\'; SELECT 1; --"), r"E'x\\''; SELECT 1; --'");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
