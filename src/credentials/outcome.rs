//! What the credential layer counts: the kinds of source and how requests,
//! renewals and revocations end, as metric label values.

use crate::metrics::{self, Counter, Counter2, Histogram1, Label};

use super::{CredentialError, ErrorKind};

/// A credential source's kind: the `source` label and log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceType {
    Postgres,
    Vault,
}

impl Label for SourceType {
    const ALL: &'static [Self] = &[SourceType::Postgres, SourceType::Vault];

    fn as_str(self) -> &'static str {
        match self {
            SourceType::Postgres => "postgres",
            SourceType::Vault => "vault",
        }
    }
}

/// How a request for a credential ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    Success,
    /// Worth retrying: the source was down, slow, sealed or rate-limiting.
    Unavailable,
    Refused,
}

impl Label for RequestOutcome {
    const ALL: &'static [Self] = &[
        RequestOutcome::Success,
        RequestOutcome::Unavailable,
        RequestOutcome::Refused,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Success => "success",
            RequestOutcome::Unavailable => "unavailable",
            RequestOutcome::Refused => "refused",
        }
    }
}

/// How a lease renewal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalOutcome {
    Success,
    Unavailable,
    Refused,
    LeaseGone,
    NotRenewable,
}

impl Label for RenewalOutcome {
    const ALL: &'static [Self] = &[
        RenewalOutcome::Success,
        RenewalOutcome::Unavailable,
        RenewalOutcome::Refused,
        RenewalOutcome::LeaseGone,
        RenewalOutcome::NotRenewable,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RenewalOutcome::Success => "success",
            RenewalOutcome::Unavailable => "unavailable",
            RenewalOutcome::Refused => "refused",
            RenewalOutcome::LeaseGone => "lease_gone",
            RenewalOutcome::NotRenewable => "not_renewable",
        }
    }
}

/// How a revocation attempt ended (failures are retried).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationOutcome {
    Success,
    Failure,
    LeaseGone,
}

impl Label for RevocationOutcome {
    const ALL: &'static [Self] = &[
        RevocationOutcome::Success,
        RevocationOutcome::Failure,
        RevocationOutcome::LeaseGone,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RevocationOutcome::Success => "success",
            RevocationOutcome::Failure => "failure",
            RevocationOutcome::LeaseGone => "lease_gone",
        }
    }
}

impl CredentialError {
    /// How a failed request counts: worth retrying, or refused.
    pub fn request_outcome(&self) -> RequestOutcome {
        match self.kind {
            ErrorKind::Unavailable => RequestOutcome::Unavailable,
            _ => RequestOutcome::Refused,
        }
    }

    /// How a failed renewal counts.
    pub fn renewal_outcome(&self) -> RenewalOutcome {
        match self.kind {
            ErrorKind::Unavailable => RenewalOutcome::Unavailable,
            ErrorKind::Refused => RenewalOutcome::Refused,
            ErrorKind::LeaseGone => RenewalOutcome::LeaseGone,
            ErrorKind::NotRenewable => RenewalOutcome::NotRenewable,
        }
    }
}

/// `pgwarden_credential_requests_total`, by source kind and outcome.
pub(crate) static REQUESTS: Counter2<SourceType, RequestOutcome> =
    Counter2::new(metrics::name::CREDENTIAL_REQUESTS, ("source", "outcome"));
pub(crate) static REQUEST_DURATION: Histogram1<SourceType> =
    Histogram1::new(metrics::name::CREDENTIAL_REQUEST_DURATION, "source");
pub(crate) static RENEWALS: Counter<RenewalOutcome> =
    Counter::new(metrics::name::LEASE_RENEWALS, "outcome");
pub(crate) static REVOCATIONS: Counter<RevocationOutcome> =
    Counter::new(metrics::name::LEASE_REVOCATIONS, "outcome");
