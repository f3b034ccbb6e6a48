//! What a destination holds for one target: its backups (complete or not) and
//! the newest complete one's manifest, for retention and for the metrics.
//!
//! Reads manifests only, never a dump.

use std::collections::BTreeMap;
use std::io;

use super::destination::Destination;
use super::manifest::{self, DUMP_SUFFIX, MANIFEST_SUFFIX, Manifest};
use super::retention::{Found, State};

#[derive(Debug, Default)]
pub(crate) struct Inventory {
    pub(crate) found: Vec<Found>,
    /// The manifest of the newest complete backup.
    pub(crate) newest: Option<Manifest>,
}

impl Inventory {
    /// How many complete backups there are.
    pub(crate) fn complete(&self) -> usize {
        self.found
            .iter()
            .filter(|f| f.state == State::Complete)
            .count()
    }
}

/// A stem's files, as listed.
#[derive(Default)]
struct Files {
    dump: bool,
    /// `Some(None)`: a manifest that cannot be read or parsed.
    manifest: Option<Option<Manifest>>,
}

pub(crate) fn take(dest: &dyn Destination, target: &str) -> io::Result<Inventory> {
    let mut stems: BTreeMap<String, Files> = BTreeMap::new();
    for name in dest.list()? {
        let Some(stem) = manifest::stem_of(target, &name) else {
            continue;
        };
        let entry = stems.entry(stem.to_owned()).or_default();
        if name.ends_with(DUMP_SUFFIX) {
            entry.dump = true;
        } else if name.ends_with(MANIFEST_SUFFIX) {
            entry.manifest = Some(read_manifest(dest, &name));
        }
    }
    let mut inventory = Inventory::default();
    for (stem, files) in stems {
        let manifest = files.manifest.clone().flatten();
        let started = manifest
            .as_ref()
            .and_then(Manifest::started)
            .or_else(|| manifest::stem_time(&stem));
        let Some(started) = started else { continue };
        let state = match files.manifest {
            Some(None) => State::Unreadable,
            Some(Some(_)) if files.dump => State::Complete,
            _ => State::Incomplete,
        };
        if state == State::Complete {
            let newer = inventory
                .newest
                .as_ref()
                .and_then(Manifest::started)
                .is_none_or(|t| t <= started);
            if newer {
                inventory.newest = manifest;
            }
        }
        inventory.found.push(Found {
            stem,
            started,
            state,
        });
    }
    Ok(inventory)
}

/// The manifest `name`, or `None` (logged) when it cannot be read or parsed.
fn read_manifest(dest: &dyn Destination, name: &str) -> Option<Manifest> {
    let parsed = dest
        .read(name)
        .map(|b| serde_json::from_slice::<Manifest>(&b));
    match parsed {
        Ok(Ok(m)) => Some(m),
        Ok(Err(e)) => {
            tracing::warn!(event = "backup_manifest_unreadable", file = %name, error = %e);
            None
        }
        Err(e) => {
            tracing::warn!(event = "backup_manifest_unreadable", file = %name, error = %e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::destination::LocalDir;

    #[test]
    fn a_manifest_that_cannot_be_read_marks_its_backup_unreadable_not_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let d = LocalDir::new(dir.path());
        let put = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
        // A newer pgwarden's manifest (or a damaged one), beside its dump.
        put("t-20260101T000000.000Z.dump.age", b"ciphertext");
        put("t-20260101T000000.000Z.manifest.json", b"{\"format\": 2}");
        // A run that died before its manifest.
        put("t-20260102T000000.000Z.dump.age", b"ciphertext");
        let states: Vec<State> = take(&d, "t")
            .unwrap()
            .found
            .iter()
            .map(|f| f.state)
            .collect();
        assert_eq!(states, [State::Unreadable, State::Incomplete]);
    }
}
