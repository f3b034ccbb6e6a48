//! Every metric pgwarden exports: its name, its description, and a typed
//! handle to record it through.
//!
//! This module is a leaf: it knows nothing of pgwarden's other modules. A
//! label's values are an enum owned by the module it describes (a session's
//! close reason by `session`, a cancel's outcome by `cancel`), implementing
//! [`Label`]; that module declares the labelled family as a static
//! ([`Counter`], [`Counter2`]) and records through it, so a value that is not
//! one of the enum's cannot be recorded. A label set drawn from a fixed
//! catalogue (a static table) implements [`Entry`] instead, for a
//! [`StateSet`]. Families whose labels are fixed are
//! exported at zero from start-up by [`install`], from the same enums. The
//! number of series is bounded whatever clients send: label values come from
//! enums, compiled-in catalogues or the configuration, never from client input.

use std::marker::PhantomData;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Every metric's name, in one place.
pub mod name {
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
    // Written by the one-shot `pgwarden backup` to its textfile and its
    // Pushgateway, never served at /metrics.
    pub const BACKUP_LAST_SUCCESS_TIMESTAMP: &str =
        "pgwarden_backup_last_success_timestamp_seconds";
    pub const BACKUP_LAST_SUCCESS_SIZE: &str = "pgwarden_backup_last_success_size_bytes";
    pub const BACKUP_LAST_SUCCESS_DURATION: &str = "pgwarden_backup_last_success_duration_seconds";
    pub const BACKUP_LAST_RUN_TIMESTAMP: &str = "pgwarden_backup_last_run_timestamp_seconds";
    pub const BACKUP_LAST_RUN_SUCCESS: &str = "pgwarden_backup_last_run_success";
    pub const BACKUP_FAILURES: &str = "pgwarden_backup_failures_total";
    pub const BACKUPS_STORED: &str = "pgwarden_backups_stored";
    pub const CONFIG_RELOADS: &str = "pgwarden_config_reloads_total";
    pub const CONFIG_LAST_RELOAD_SUCCESS: &str =
        "pgwarden_config_last_reload_success_timestamp_seconds";
    pub const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "pgwarden_config_last_reload_successful";
}

/// The values a label can take: a fixed set, each with its text.
pub trait Label: Copy + Send + Sync + 'static {
    /// Every value, in the order they are exported.
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
}

/// A counter family with one label whose values are `L`'s.
pub struct Counter<L> {
    name: &'static str,
    key: &'static str,
    values: PhantomData<fn(L)>,
}

impl<L: Label> Counter<L> {
    pub const fn new(name: &'static str, key: &'static str) -> Self {
        Counter {
            name,
            key,
            values: PhantomData,
        }
    }

    pub fn increment(&self, value: L) {
        self.handle(value).increment(1);
    }

    /// The series for `value`, to keep where one is incremented often.
    pub fn handle(&self, value: L) -> metrics::Counter {
        metrics::counter!(self.name, self.key => value.as_str())
    }
}

/// A counter family with two labels: the first says which configured thing
/// (a credential source's kind), the second what happened (`B`'s values).
pub struct Counter2<A, B> {
    name: &'static str,
    keys: (&'static str, &'static str),
    values: PhantomData<fn(A, B)>,
}

impl<A: Label, B: Label> Counter2<A, B> {
    pub const fn new(name: &'static str, keys: (&'static str, &'static str)) -> Self {
        Counter2 {
            name,
            keys,
            values: PhantomData,
        }
    }

    pub fn increment(&self, a: A, b: B) {
        metrics::counter!(self.name, self.keys.0 => a.as_str(), self.keys.1 => b.as_str())
            .increment(1);
    }

    /// Exports every `B` for `a` at zero: called when the configuration
    /// brings `a` into being.
    pub fn zero(&self, a: A) {
        for b in B::ALL {
            metrics::counter!(self.name, self.keys.0 => a.as_str(), self.keys.1 => b.as_str())
                .absolute(0);
        }
    }
}

/// A histogram family with one label.
pub struct Histogram1<L> {
    name: &'static str,
    key: &'static str,
    values: PhantomData<fn(L)>,
}

impl<L: Label> Histogram1<L> {
    pub const fn new(name: &'static str, key: &'static str) -> Self {
        Histogram1 {
            name,
            key,
            values: PhantomData,
        }
    }

    pub fn record(&self, value: L, took: Duration) {
        metrics::histogram!(self.name, self.key => value.as_str()).record(took.as_secs_f64());
    }
}

/// A histogram without labels, of durations in seconds.
pub struct Histogram(&'static str);

impl Histogram {
    pub fn record(&self, took: Duration) {
        metrics::histogram!(self.0).record(took.as_secs_f64());
    }
}

/// A gauge without labels.
pub struct Gauge(&'static str);

impl Gauge {
    pub const fn new(name: &'static str) -> Self {
        Gauge(name)
    }

    pub fn handle(&self) -> metrics::Gauge {
        metrics::gauge!(self.0)
    }

    pub fn set(&self, value: f64) {
        self.handle().set(value);
    }
}

/// A gauge family whose label values come from the configuration (a
/// credential source's name, a certificate's role), bounded by it.
pub struct ConfiguredGauge {
    name: &'static str,
    key: &'static str,
}

impl ConfiguredGauge {
    pub fn set(&self, value: &str, to: f64) {
        metrics::gauge!(self.name, self.key => value.to_owned()).set(to);
    }
}

/// An entry of a fixed catalogue (a `static` table compiled in), named by
/// labels: bounded like a [`Label`], but its values are the table's rows
/// rather than an enum's variants.
pub trait Entry: Sync + 'static {
    /// The label pairs that name this entry, e.g. its id and its group.
    fn labels(&self) -> Vec<(&'static str, &'static str)>;
}

/// A state set: for each entry of a catalogue `E`, one gauge per state `S`,
/// 1 for the state the entry is in and 0 for the others.
pub struct StateSet<E: 'static, S> {
    name: &'static str,
    /// The label that names the state.
    key: &'static str,
    entries: &'static [&'static E],
    states: PhantomData<fn(S)>,
}

impl<E: Entry, S: Label + PartialEq> StateSet<E, S> {
    pub const fn new(
        name: &'static str,
        key: &'static str,
        entries: &'static [&'static E],
    ) -> Self {
        StateSet {
            name,
            key,
            entries,
            states: PhantomData,
        }
    }

    /// Puts `entry` in `state`; with `None`, in no state (every gauge 0).
    pub fn set(&self, entry: &E, state: Option<S>) {
        let base = entry.labels();
        for s in S::ALL {
            let mut labels: Vec<metrics::Label> = base
                .iter()
                .map(|(k, v)| metrics::Label::new(*k, *v))
                .collect();
            labels.push(metrics::Label::new(self.key, s.as_str()));
            let on = Some(*s) == state;
            metrics::gauge!(self.name, labels).set(if on { 1.0 } else { 0.0 });
        }
    }
}

impl<E: Entry, S: Label + PartialEq> Zeroed for StateSet<E, S> {
    /// Every entry in no state.
    fn zero(&self) {
        for entry in self.entries {
            self.set(entry, None);
        }
    }
}

/// A counter without labels.
pub struct Total(&'static str);

impl Total {
    pub fn increment(&self) {
        metrics::counter!(self.0).increment(1);
    }
}

pub static CONNECTIONS_ACCEPTED: Total = Total(name::CONNECTIONS_ACCEPTED);
pub static SESSIONS_ACTIVE: Count = Count::new(name::SESSIONS_ACTIVE);
pub static LEASES_ACTIVE: Count = Count::new(name::LEASES_ACTIVE);
pub static LEASE_REVOCATIONS_PENDING: Gauge = Gauge(name::LEASE_REVOCATIONS_PENDING);
pub static SESSION_DURATION: Histogram = Histogram(name::SESSION_DURATION);
pub static HANDSHAKE_DURATION: Histogram = Histogram(name::HANDSHAKE_DURATION);
pub static UPSTREAM_CONNECT_DURATION: Histogram = Histogram(name::UPSTREAM_CONNECT_DURATION);
pub static AUDIT_LAST_RUN: Gauge = Gauge(name::AUDIT_LAST_RUN);
pub static AUDIT_INTERVAL: Gauge = Gauge(name::AUDIT_INTERVAL);
pub static TLS_CERTIFICATE_EXPIRY: ConfiguredGauge = ConfiguredGauge {
    name: name::TLS_CERTIFICATE_EXPIRY,
    key: "certificate",
};
pub static CREDENTIAL_SOURCE_UP: ConfiguredGauge = ConfiguredGauge {
    name: name::CREDENTIAL_SOURCE_UP,
    key: "name",
};

/// A family exported at zero for each of its label values from start-up, so
/// `rate()` and alerts see it before its first event.
pub trait Zeroed: Sync {
    fn zero(&self);
}

impl<L: Label> Zeroed for Counter<L> {
    fn zero(&self) {
        for v in L::ALL {
            self.handle(*v).absolute(0);
        }
    }
}

/// A gauge counting things that exist now (sessions, leases), moved only by
/// [`GaugeGuard`]s, whose value pgwarden can also read back (for systemd's
/// `STATUS=` line).
pub struct Count {
    name: &'static str,
    now: AtomicI64,
}

impl Count {
    pub const fn new(name: &'static str) -> Self {
        Count {
            name,
            now: AtomicI64::new(0),
        }
    }

    /// How many there are now.
    pub fn get(&self) -> i64 {
        self.now.load(Ordering::Relaxed)
    }

    fn export(&self) {
        metrics::gauge!(self.name).set(self.get() as f64);
    }
}

/// A [`Count`] that moves up for as long as the guard lives.
pub struct GaugeGuard {
    count: &'static Count,
    handle: metrics::Gauge,
}

impl GaugeGuard {
    pub fn new(count: &'static Count) -> Self {
        let handle = metrics::gauge!(count.name);
        count.now.fetch_add(1, Ordering::Relaxed);
        handle.increment(1.0);
        GaugeGuard { count, handle }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.count.now.fetch_sub(1, Ordering::Relaxed);
        self.handle.decrement(1.0);
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

/// Installs the Prometheus recorder once per process, describes every metric,
/// and exports `zeroed` (the families with fixed labels) and the unlabelled
/// metrics at zero; returns the handle `/metrics` renders from.
pub fn install(zeroed: &[&dyn Zeroed]) -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(name::SESSION_DURATION.to_owned()),
                    SESSION_BUCKETS,
                )
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
            for family in zeroed {
                family.zero();
            }
            metrics::counter!(name::CONNECTIONS_ACCEPTED).absolute(0);
            SESSIONS_ACTIVE.export();
            LEASES_ACTIVE.export();
            LEASE_REVOCATIONS_PENDING.set(0.0);
            metrics::gauge!(name::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// Describes every metric; called once at start-up, before the first is touched.
fn describe() {
    use name::*;
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
    describe_counter!(
        CONFIG_RELOADS,
        "Configuration reloads (SIGHUP, or certificate files changed on disk), by outcome"
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS,
        Unit::Seconds,
        "When the configuration was last applied (start-up or a successful reload), Unix time"
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESSFUL,
        "1 when the last reload was applied, 0 when it was refused (the old configuration serves)"
    );
    describe_gauge!(
        AUDIT_INTERVAL,
        Unit::Seconds,
        "[audit] interval: the time between two audit runs"
    );
}
