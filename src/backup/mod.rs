//! `pgwarden backup`, `pgwarden backup verify` and `pgwarden restore`:
//! encrypted logical backups taken with a credential that lives minutes.
//!
//! A run ([`run::backup`]) locks the target's destination, asks the target's
//! credential source for a fresh login (revoked when the dump ends, whatever
//! the outcome), runs pg_dump over verified TLS with the password in its
//! environment only, and streams its output through age encryption to the
//! configured X25519 recipients straight into the destination, so the host
//! that takes backups cannot read them and plaintext never touches disk. The
//! backup appears under its final name only once complete and durable; its
//! manifest follows; retention then prunes (grandfather-father-son). Every run
//! ends with a `backup_finished` record and its metrics ([`report`]).
//!
//! Layout: [`destination`] (where backups go), [`dump`] (pg_dump's command
//! line and process), [`pipeline`] (encrypt and count), [`archive`] (the dump's
//! header), [`manifest`], [`inventory`], [`retention`], [`source`] (the run's
//! credential source), [`run`], [`report`], [`restore`] (decrypt, verify,
//! restore), [`command`] (the commands' output and exit codes).
//!
//! Nothing here logs, prints or stores a password, an identity or a byte of a
//! dump's plaintext.

pub mod archive;
pub mod command;
pub mod destination;
pub mod dump;
pub mod inventory;
pub mod manifest;
pub mod pipeline;
pub mod report;
pub mod restore;
pub mod retention;
pub mod run;
pub mod source;

use std::time::{Duration, SystemTime};

use crate::config::BackupConfig;
use manifest::Manifest;

/// Why a run failed: the `reason` label of `pgwarden_backup_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Busy,
        Reason::Destination,
        Reason::Credentials,
        Reason::Dump,
        Reason::Encryption,
        Reason::Timeout,
        Reason::LeaseEnded,
        Reason::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
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

/// A failed run: why, and what happened (for the log; no secret in it).
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: Reason,
    pub detail: String,
}

impl Failure {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Failure {
            reason,
            detail: detail.into(),
        }
    }
}

/// A backup that was written.
#[derive(Debug, Clone)]
pub struct Success {
    pub manifest: Manifest,
}

/// What one run did.
#[derive(Debug)]
pub struct Report {
    pub target: String,
    pub started: SystemTime,
    pub duration: Duration,
    pub outcome: Result<Success, Failure>,
    /// Whether the run's lease was revoked; `None` when none was issued.
    pub lease_revoked: Option<bool>,
    /// Backups removed by retention (their stems).
    pub removed: Vec<String>,
    /// The destination after the run, when it could be read.
    pub inventory: Option<inventory::Inventory>,
    /// Where to publish the metrics.
    pub metrics_file: Option<std::path::PathBuf>,
    pub pushgateway: Option<String>,
    pub destination: std::path::PathBuf,
}

impl Report {
    fn new(target: &str, cfg: &BackupConfig, started: SystemTime) -> Report {
        Report {
            target: target.to_owned(),
            started,
            duration: Duration::ZERO,
            outcome: Err(Failure::new(Reason::Destination, "not run")),
            lease_revoked: None,
            removed: Vec::new(),
            inventory: None,
            metrics_file: cfg.metrics_file.clone(),
            pushgateway: cfg.pushgateway.clone(),
            destination: cfg.directory.clone(),
        }
    }
}
