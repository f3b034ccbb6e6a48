//! Every metric pgwarden exports: names, descriptions and bounded label values.
//!
//! Names live here and nowhere else. Label values come from fixed enums or from
//! the configuration (credential source kinds), never from client input, so the
//! number of series is bounded whatever clients send.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const CONNECTIONS_ACCEPTED: &str = "pgwarden_connections_accepted_total";
pub const CONNECTIONS_REJECTED: &str = "pgwarden_connections_rejected_total";
pub const SESSIONS_ACTIVE: &str = "pgwarden_sessions_active";
pub const SESSIONS: &str = "pgwarden_sessions_total";
pub const SESSION_DURATION: &str = "pgwarden_session_duration_seconds";
pub const HANDSHAKE_DURATION: &str = "pgwarden_handshake_duration_seconds";
pub const CREDENTIAL_REQUESTS: &str = "pgwarden_credential_requests_total";
pub const CREDENTIAL_REQUEST_DURATION: &str = "pgwarden_credential_request_duration_seconds";
pub const LEASES_ACTIVE: &str = "pgwarden_leases_active";
pub const LEASE_RENEWALS: &str = "pgwarden_lease_renewals_total";
pub const LEASE_REVOCATIONS: &str = "pgwarden_lease_revocations_total";
pub const LEASE_REVOCATIONS_PENDING: &str = "pgwarden_lease_revocations_pending";
pub const UPSTREAM_CONNECT_DURATION: &str = "pgwarden_upstream_connect_duration_seconds";
pub const UPSTREAM_CONNECT_FAILURES: &str = "pgwarden_upstream_connect_failures_total";
pub const RELAY_BYTES: &str = "pgwarden_relay_bytes_total";
pub const CANCEL_REQUESTS: &str = "pgwarden_cancel_requests_total";
pub const VAULT_TOKEN_RENEWALS: &str = "pgwarden_vault_token_renewals_total";
pub const TLS_CERTIFICATE_EXPIRY: &str = "pgwarden_tls_certificate_expiry_timestamp_seconds";
pub const BUILD_INFO: &str = "pgwarden_build_info";
pub const CREDENTIAL_SOURCE_UP: &str = "pgwarden_credential_source_up";
pub const AUDIT_CHECK: &str = "pgwarden_audit_check";
pub const AUDIT_LAST_RUN: &str = "pgwarden_audit_last_run_timestamp_seconds";
pub const AUDIT_INTERVAL: &str = "pgwarden_audit_interval_seconds";

/// Why a connection was refused before its session began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    IpNotAllowed,
    TooManyConnections,
    TlsRequired,
    TlsHandshake,
    Protocol,
    HandshakeTimeout,
    AuthFailed,
    UnknownDatabase,
}

impl RejectReason {
    pub const ALL: [RejectReason; 8] = [
        RejectReason::IpNotAllowed,
        RejectReason::TooManyConnections,
        RejectReason::TlsRequired,
        RejectReason::TlsHandshake,
        RejectReason::Protocol,
        RejectReason::HandshakeTimeout,
        RejectReason::AuthFailed,
        RejectReason::UnknownDatabase,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::IpNotAllowed => "ip_not_allowed",
            RejectReason::TooManyConnections => "too_many_connections",
            RejectReason::TlsRequired => "tls_required",
            RejectReason::TlsHandshake => "tls_handshake",
            RejectReason::Protocol => "protocol",
            RejectReason::HandshakeTimeout => "handshake_timeout",
            RejectReason::AuthFailed => "auth_failed",
            RejectReason::UnknownDatabase => "unknown_database",
        }
    }
}

/// Why a session that reached the relay ended: the `close_reason` of the
/// session record and of `pgwarden_sessions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent Terminate: an orderly logout.
    ClientTerminated,
    /// The client closed its connection without Terminate.
    ClientClosed,
    /// The client connection failed.
    ClientError,
    /// The backend closed its connection (exit, `pg_terminate_backend`).
    UpstreamClosed,
    /// The upstream connection failed.
    UpstreamError,
    /// The upstream sent a message header no PostgreSQL server sends.
    UpstreamProtocol,
    /// Nothing moved for `[listen] idle_timeout`.
    IdleTimeout,
    /// pgwarden ended it at the end of its credential's lease.
    LeaseEnded,
    /// pgwarden ended it while shutting down.
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 9] = [
        CloseReason::ClientTerminated,
        CloseReason::ClientClosed,
        CloseReason::ClientError,
        CloseReason::UpstreamClosed,
        CloseReason::UpstreamError,
        CloseReason::UpstreamProtocol,
        CloseReason::IdleTimeout,
        CloseReason::LeaseEnded,
        CloseReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientTerminated => "client_terminated",
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ClientError => "client_error",
            CloseReason::UpstreamClosed => "upstream_closed",
            CloseReason::UpstreamError => "upstream_error",
            CloseReason::UpstreamProtocol => "upstream_protocol",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::LeaseEnded => "lease_ended",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Which step of reaching the database failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    Tls,
    Auth,
    Startup,
    Credentials,
}

impl UpstreamFailure {
    pub const ALL: [UpstreamFailure; 5] = [
        UpstreamFailure::Connect,
        UpstreamFailure::Tls,
        UpstreamFailure::Auth,
        UpstreamFailure::Startup,
        UpstreamFailure::Credentials,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Tls => "tls",
            UpstreamFailure::Auth => "auth",
            UpstreamFailure::Startup => "startup",
            UpstreamFailure::Credentials => "credentials",
        }
    }
}

/// Every `outcome` of a lease renewal: success, or the failure's kind.
pub const RENEWAL_OUTCOMES: [&str; 5] = [
    "success",
    "unavailable",
    "refused",
    "lease_gone",
    "not_renewable",
];

/// Every `outcome` of a revocation attempt.
pub const REVOCATION_OUTCOMES: [&str; 3] = ["success", "failure", "lease_gone"];

/// Every `outcome` of a credential request to a source.
pub const CREDENTIAL_OUTCOMES: [&str; 3] = ["success", "unavailable", "refused"];

/// Every `outcome` of pgwarden's own Vault token upkeep.
pub const TOKEN_OUTCOMES: [&str; 4] = ["renewed", "renewal_failure", "login", "login_failure"];

pub fn rejected(reason: RejectReason) {
    metrics::counter!(CONNECTIONS_REJECTED, "reason" => reason.as_str()).increment(1);
}

pub fn upstream_failure(failure: UpstreamFailure) {
    metrics::counter!(UPSTREAM_CONNECT_FAILURES, "reason" => failure.as_str()).increment(1);
}

/// One request to a credential source (`source` is its kind): how long it
/// took and how it ended (one of [`CREDENTIAL_OUTCOMES`]).
pub fn credential_request(source: &'static str, took: std::time::Duration, outcome: &'static str) {
    metrics::histogram!(CREDENTIAL_REQUEST_DURATION, "source" => source).record(took.as_secs_f64());
    metrics::counter!(CREDENTIAL_REQUESTS, "source" => source, "outcome" => outcome).increment(1);
}

/// Zeroes the credential request counters of a source kind, when a source
/// of that kind is configured.
pub fn zero_credential_requests(source: &'static str) {
    for o in CREDENTIAL_OUTCOMES {
        metrics::counter!(CREDENTIAL_REQUESTS, "source" => source, "outcome" => o).absolute(0);
    }
}

/// Zeroes the Vault token counters, when `[vault]` is configured.
pub fn zero_token_renewals() {
    for o in TOKEN_OUTCOMES {
        metrics::counter!(VAULT_TOKEN_RENEWALS, "outcome" => o).absolute(0);
    }
}

/// A gauge raised for as long as the guard lives.
pub struct GaugeGuard(metrics::Gauge);

impl GaugeGuard {
    pub fn new(gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Buckets of the `_seconds` histograms: 1 ms to 5 min.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Session durations run longer: 1 s to 1 day.
const SESSION_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and describes every
/// metric; returns the handle `/metrics` renders from.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(SESSION_DURATION.to_owned()), SESSION_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_seconds".to_owned()),
                        SECONDS_BUCKETS,
                    )
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (an embedding
            // program's); then pgwarden's metrics go there and /metrics is empty.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            zero_counters();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// Counters with fixed label sets start at zero, so `rate()` and alerts see
/// them before the first event. Those whose labels depend on the
/// configuration are zeroed where it is read ([`zero_credential_requests`],
/// [`zero_token_renewals`]).
fn zero_counters() {
    metrics::counter!(CONNECTIONS_ACCEPTED).absolute(0);
    for r in RejectReason::ALL {
        metrics::counter!(CONNECTIONS_REJECTED, "reason" => r.as_str()).absolute(0);
    }
    for c in CloseReason::ALL {
        metrics::counter!(SESSIONS, "close_reason" => c.as_str()).absolute(0);
    }
    for f in UpstreamFailure::ALL {
        metrics::counter!(UPSTREAM_CONNECT_FAILURES, "reason" => f.as_str()).absolute(0);
    }
    for d in ["client_to_upstream", "upstream_to_client"] {
        metrics::counter!(RELAY_BYTES, "direction" => d).absolute(0);
    }
    for o in REVOCATION_OUTCOMES {
        metrics::counter!(LEASE_REVOCATIONS, "outcome" => o).absolute(0);
    }
    for o in RENEWAL_OUTCOMES {
        metrics::counter!(LEASE_RENEWALS, "outcome" => o).absolute(0);
    }
    for o in crate::cancel::CancelOutcome::ALL {
        metrics::counter!(CANCEL_REQUESTS, "outcome" => o.as_str()).absolute(0);
    }
    metrics::gauge!(SESSIONS_ACTIVE).set(0.0);
    metrics::gauge!(LEASES_ACTIVE).set(0.0);
    metrics::gauge!(LEASE_REVOCATIONS_PENDING).set(0.0);
}

/// Describes every metric; called once at start-up, before the first is touched.
pub fn describe() {
    describe_counter!(
        CONNECTIONS_ACCEPTED,
        "TCP connections accepted from allowed addresses"
    );
    describe_counter!(
        CONNECTIONS_REJECTED,
        "Connections refused before a session began, by reason"
    );
    describe_gauge!(SESSIONS_ACTIVE, "Sessions currently relaying");
    describe_counter!(
        SESSIONS,
        "Sessions that reached the relay and ended, by close reason"
    );
    describe_histogram!(
        SESSION_DURATION,
        Unit::Seconds,
        "Session duration, welcome to close"
    );
    describe_histogram!(
        HANDSHAKE_DURATION,
        Unit::Seconds,
        "Accept to relay: TLS, auth, credential, upstream login"
    );
    describe_counter!(
        CREDENTIAL_REQUESTS,
        "Credential requests to credential sources, by source and outcome"
    );
    describe_histogram!(
        CREDENTIAL_REQUEST_DURATION,
        Unit::Seconds,
        "Time to obtain one credential, by source"
    );
    describe_gauge!(
        LEASES_ACTIVE,
        "Credential leases held by live sessions or waiting in the prefetch pool"
    );
    describe_counter!(LEASE_RENEWALS, "Lease renewals, by outcome");
    describe_counter!(LEASE_REVOCATIONS, "Lease revocation attempts, by outcome");
    describe_gauge!(
        LEASE_REVOCATIONS_PENDING,
        "Leases whose revocation has not yet succeeded"
    );
    describe_histogram!(
        UPSTREAM_CONNECT_DURATION,
        Unit::Seconds,
        "TCP connect to upstream ready-for-query"
    );
    describe_counter!(
        UPSTREAM_CONNECT_FAILURES,
        "Failed upstream connections, by failing step"
    );
    describe_counter!(RELAY_BYTES, Unit::Bytes, "Bytes relayed, by direction");
    describe_counter!(CANCEL_REQUESTS, "Cancel requests received, by outcome");
    describe_counter!(
        VAULT_TOKEN_RENEWALS,
        "Renewals and re-logins of pgwarden's own Vault token, by outcome"
    );
    describe_gauge!(
        TLS_CERTIFICATE_EXPIRY,
        Unit::Seconds,
        "notAfter of each certificate pgwarden serves or trusts, Unix time"
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs"
    );
    describe_gauge!(
        CREDENTIAL_SOURCE_UP,
        "1 when a credential source can issue credentials, else 0"
    );
    describe_gauge!(
        AUDIT_CHECK,
        "1 for the status each audit check had in the last run (see src/audit), else 0"
    );
    describe_gauge!(
        AUDIT_LAST_RUN,
        Unit::Seconds,
        "When the last audit run that reached the database ended, Unix time"
    );
    describe_gauge!(
        AUDIT_INTERVAL,
        Unit::Seconds,
        "[audit] interval: the time between two audit runs"
    );
}
