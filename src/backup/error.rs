//! Why a backup run failed, as types: [`RunError`], one variant per step that
//! can fail, each with its typed cause; [`Failure`], the opaque form the
//! report, the log and the command show; and [`Reason`], the `reason` label
//! of `pgwarden_backup_failures_total` that every failure maps to.
//!
//! Their text never holds a password, an identity, a DSN with a password or a
//! byte of a dump: credential errors carry no secret (their module's rule),
//! pg_dump's connection string has no password, and pg_dump's own messages
//! name servers, users and objects, never rows.

use std::io;
use std::time::Duration;

use super::dump::DumpError;
use super::pipeline::PipelineError;
use super::source::SourceError;
use crate::credentials::CredentialError;
use crate::metrics::Label;

/// Why a run failed: the `reason` label of `pgwarden_backup_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Another run holds the destination.
    Busy,
    /// The destination could not be written (or locked, or listed).
    Destination,
    /// No credential: the source refused or was unreachable.
    Credentials,
    /// pg_dump could not run, or failed.
    Dump,
    /// Encryption could not start.
    Encryption,
    /// The dump ran past the target's `timeout`.
    Timeout,
    /// The credential reached the end of its life during the dump.
    LeaseEnded,
    /// SIGTERM or SIGINT.
    Interrupted,
}

impl Label for Reason {
    const ALL: &'static [Self] = &[
        Reason::Busy,
        Reason::Destination,
        Reason::Credentials,
        Reason::Dump,
        Reason::Encryption,
        Reason::Timeout,
        Reason::LeaseEnded,
        Reason::Interrupted,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Reason::Busy => "busy",
            Reason::Destination => "destination",
            Reason::Credentials => "credentials",
            Reason::Dump => "dump",
            Reason::Encryption => "encryption",
            Reason::Timeout => "timeout",
            Reason::LeaseEnded => "lease_ended",
            Reason::Interrupted => "interrupted",
        }
    }
}

impl Reason {
    /// The reason whose label is `text`, if any.
    pub(crate) fn from_label(text: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == text)
    }
}

/// Why a running dump was stopped before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Stop {
    #[error("the dump ran past the target's timeout ({}) and was stopped", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("interrupted (SIGTERM or SIGINT): the dump was stopped")]
    Interrupted,
    #[error("the credential reached the end of its life: the dump was stopped")]
    LeaseEnded,
}

/// Every way a run can fail, by step.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("another backup is writing to this destination")]
    Busy,
    #[error("cannot lock the destination: {0}")]
    Lock(#[source] io::Error),
    #[error("cannot remove what an interrupted run left in the destination: {0}")]
    Leftovers(#[source] io::Error),
    /// Recipients are checked when the configuration loads; this is a
    /// recipient that passed that check and still does not parse.
    #[error("recipient #{0} is not an age X25519 recipient")]
    Recipient(usize),
    #[error(transparent)]
    PgDump(#[from] DumpError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("no credential was issued: {0}")]
    Issue(#[source] CredentialError),
    #[error("{name}: {source}")]
    Create {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Stopped(Stop),
    #[error("the dump's task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("{file}: {source}")]
    Commit {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("{file}: cannot encode the manifest: {source}")]
    ManifestEncode {
        file: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{file}: {source}")]
    ManifestWrite {
        file: String,
        #[source]
        source: io::Error,
    },
}

impl RunError {
    fn reason(&self) -> Reason {
        match self {
            RunError::Busy => Reason::Busy,
            RunError::Lock(_)
            | RunError::Leftovers(_)
            | RunError::Create { .. }
            | RunError::Commit { .. }
            | RunError::ManifestEncode { .. }
            | RunError::ManifestWrite { .. } => Reason::Destination,
            RunError::Recipient(_) => Reason::Encryption,
            RunError::PgDump(_) | RunError::Task(_) => Reason::Dump,
            RunError::Source(_) | RunError::Issue(_) => Reason::Credentials,
            RunError::Stopped(Stop::Timeout(_)) => Reason::Timeout,
            RunError::Stopped(Stop::Interrupted) => Reason::Interrupted,
            RunError::Stopped(Stop::LeaseEnded) => Reason::LeaseEnded,
            RunError::Pipeline(PipelineError::Source(_)) => Reason::Dump,
            RunError::Pipeline(PipelineError::Encrypt(_)) => Reason::Encryption,
            RunError::Pipeline(PipelineError::Sink(_)) => Reason::Destination,
        }
    }
}

/// A failed run: its text says what happened, [`Failure::reason`] how it is
/// counted.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Failure(#[from] RunError);

impl Failure {
    pub fn reason(&self) -> Reason {
        self.0.reason()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_from_its_label() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_label(r.as_str()), Some(*r));
        }
        assert_eq!(Reason::from_label("disk_full"), None);
    }

    #[test]
    fn a_stopped_dump_says_why_and_is_counted_by_it() {
        let f = Failure::from(RunError::Stopped(Stop::Timeout(Duration::from_secs(5400))));
        assert_eq!(f.reason(), Reason::Timeout);
        assert_eq!(
            f.to_string(),
            "the dump ran past the target's timeout (1h 30m) and was stopped"
        );
        let f = Failure::from(RunError::Stopped(Stop::Interrupted));
        assert_eq!(f.reason(), Reason::Interrupted);
    }
}
