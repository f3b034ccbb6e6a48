//! The manifest written beside every backup, and the names of both files.
//!
//! A backup is the encrypted dump `<target>-<UTC time>.dump.age` and its
//! manifest `<target>-<UTC time>.manifest.json`. The manifest is written only
//! after the dump file is durable under its final name, so a manifest means a
//! complete backup; retention counts only backups with a manifest. The
//! manifest holds metadata only — sizes, a hash of the *encrypted* file, times,
//! versions — never a credential or a byte of the dump.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The file name suffix of an encrypted dump.
pub const DUMP_SUFFIX: &str = ".dump.age";
/// The file name suffix of a manifest.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Version of the manifest's layout.
pub(crate) const MANIFEST_FORMAT: u32 = 1;

/// The age crate pgwarden encrypts with (kept true by a test against Cargo.lock).
pub const AGE_CRATE: &str = "age 0.12 (Rust crate)";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    pub target: String,
    /// The encrypted dump's file name, in the same directory.
    pub file: String,
    /// RFC 3339, UTC, milliseconds.
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    pub database: String,
    /// `host:port` of the server dumped.
    pub server: String,
    /// The server's version, from the archive header (absent if unreadable).
    pub server_version: Option<String>,
    /// pg_dump archive format (custom) version.
    pub archive_format: Option<String>,
    /// Bytes pg_dump wrote (the plaintext, which never touched disk).
    pub dump_bytes: u64,
    /// Bytes of the encrypted file.
    pub encrypted_bytes: u64,
    /// SHA-256 of the encrypted file, lowercase hex.
    pub sha256: String,
    /// Who can decrypt it: the age recipients (public keys).
    pub recipients: Vec<String>,
    /// Which `[credentials.*]` issued the dump's login.
    pub credential_source: String,
    pub tools: Tools,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tools {
    pub pgwarden: String,
    /// `pg_dump --version`.
    pub pg_dump: String,
    pub age: String,
}

impl Manifest {
    /// When the backup started, from `started_at`.
    pub(crate) fn started(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.started_at).ok()
    }
}

/// RFC 3339 in UTC with milliseconds, as manifests hold times.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The name both files of a backup share: `<target>-20260512T215318.123Z`.
pub(crate) fn stem(target: &str, started: SystemTime) -> String {
    let compact: String = rfc3339(started)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    format!("{target}-{compact}")
}

/// The stem of a dump or manifest file name of `target`, if it is one.
pub(crate) fn stem_of<'a>(target: &str, file: &'a str) -> Option<&'a str> {
    let stem = file
        .strip_suffix(DUMP_SUFFIX)
        .or_else(|| file.strip_suffix(MANIFEST_SUFFIX))?;
    let time = stem.strip_prefix(target)?.strip_prefix('-')?;
    // 20260512T215318.123Z
    let ok = time.len() == 20
        && time.ends_with('Z')
        && time.as_bytes()[8] == b'T'
        && time.as_bytes()[15] == b'.';
    ok.then_some(stem)
}

/// The time a stem names (to order backups whose manifest is missing).
pub(crate) fn stem_time(stem: &str) -> Option<SystemTime> {
    let time = stem.rsplit('-').next()?;
    if time.len() != 20 {
        return None;
    }
    let t = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &time[0..4],
        &time[4..6],
        &time[6..8],
        &time[9..11],
        &time[11..13],
        &time[13..19]
    );
    humantime::parse_rfc3339(&t).ok()
}

/// Milliseconds, for durations in manifests and log records.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_name_the_target_and_the_time_and_read_back() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_778_622_798_123);
        let s = stem("keycloak", t);
        assert_eq!(s, "keycloak-20260512T215318.123Z");
        assert_eq!(stem_time(&s), Some(t));
        let dump = format!("{s}{DUMP_SUFFIX}");
        assert_eq!(stem_of("keycloak", &dump), Some(s.as_str()));
        assert_eq!(
            stem_of("keycloak", &format!("{s}{MANIFEST_SUFFIX}")),
            Some(s.as_str())
        );
        // Another target's files, temporary files and strangers are not ours.
        assert_eq!(stem_of("key", &dump), None);
        assert_eq!(stem_of("keycloak", &format!(".{dump}.tmp-ab12")), None);
        assert_eq!(stem_of("keycloak", "keycloak-latest.dump.age"), None);
    }

    #[test]
    fn a_manifest_reads_back_what_was_written() {
        let m = Manifest {
            format: MANIFEST_FORMAT,
            target: "t".into(),
            file: "t-x.dump.age".into(),
            started_at: rfc3339(SystemTime::UNIX_EPOCH),
            finished_at: rfc3339(SystemTime::UNIX_EPOCH),
            duration_ms: 5,
            database: "keycloak".into(),
            server: "db:5432".into(),
            server_version: Some("15.14".into()),
            archive_format: Some("1.14.0".into()),
            dump_bytes: 10,
            encrypted_bytes: 20,
            sha256: "00".into(),
            recipients: vec!["age1…".into()],
            credential_source: "backup".into(),
            tools: Tools {
                pgwarden: "0.1.0".into(),
                pg_dump: "pg_dump (PostgreSQL) 15.14".into(),
                age: AGE_CRATE.into(),
            },
        };
        let text = serde_json::to_string_pretty(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), m);
        assert_eq!(m.started(), Some(SystemTime::UNIX_EPOCH));
    }
}
