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
//! Layout: [`destination`] (where backups go), `dump` (pg_dump's command
//! line and process), [`pipeline`] (encrypt and count), `archive` (the dump's
//! header), [`manifest`], `inventory`, `retention`, `source` (the run's
//! credential source), [`run`], [`report`], `restore` (decrypt, verify,
//! restore), [`command`] (the commands' output and exit codes), `error` (why a
//! run failed, and its metric label), `hardening` (no core dumps).
//!
//! Nothing here logs, prints or stores a password, an identity or a byte of a
//! dump's plaintext.

mod archive;
pub mod command;
pub mod destination;
mod dump;
mod error;
mod hardening;
mod inventory;
pub mod manifest;
pub mod pipeline;
pub mod report;
mod restore;
mod retention;
pub mod run;
mod source;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use error::{Failure, Reason};
use manifest::Manifest;
use report::Pushgateway;

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
    pub(crate) inventory: Option<inventory::Inventory>,
    /// Where the backups are, and where the metrics go.
    pub(crate) destination: PathBuf,
    pub(crate) metrics_file: Option<PathBuf>,
    pub(crate) pushgateway: Option<Pushgateway>,
}
