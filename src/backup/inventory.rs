//! What a destination holds for one target: its backups (complete or not) and
//! the newest complete one's manifest, for retention and for the metrics.
//!
//! Reads manifests only, never a dump.

use std::collections::BTreeMap;
use std::io;

use super::destination::Destination;
use super::manifest::{self, DUMP_SUFFIX, MANIFEST_SUFFIX, Manifest};
use super::retention::Found;

#[derive(Debug, Default)]
pub(crate) struct Inventory {
    pub(crate) found: Vec<Found>,
    /// The manifest of the newest complete backup.
    pub(crate) newest: Option<Manifest>,
}

impl Inventory {
    /// How many complete backups there are.
    pub(crate) fn complete(&self) -> usize {
        self.found.iter().filter(|f| f.complete).count()
    }
}

pub(crate) fn take(dest: &dyn Destination, target: &str) -> io::Result<Inventory> {
    // stem → (has dump, manifest if readable)
    let mut stems: BTreeMap<String, (bool, Option<Manifest>)> = BTreeMap::new();
    for name in dest.list()? {
        let Some(stem) = manifest::stem_of(target, &name) else {
            continue;
        };
        let entry = stems.entry(stem.to_owned()).or_default();
        if name.ends_with(DUMP_SUFFIX) {
            entry.0 = true;
        } else if name.ends_with(MANIFEST_SUFFIX) {
            match dest
                .read(&name)
                .map(|b| serde_json::from_slice::<Manifest>(&b))
            {
                Ok(Ok(m)) => entry.1 = Some(m),
                Ok(Err(e)) => {
                    tracing::warn!(event = "backup_manifest_unreadable", file = %name, error = %e)
                }
                Err(e) => {
                    tracing::warn!(event = "backup_manifest_unreadable", file = %name, error = %e)
                }
            }
        }
    }
    let mut inventory = Inventory::default();
    for (stem, (has_dump, manifest)) in stems {
        let started = manifest
            .as_ref()
            .and_then(Manifest::started)
            .or_else(|| manifest::stem_time(&stem));
        let Some(started) = started else { continue };
        let complete = has_dump && manifest.is_some();
        if complete {
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
            complete,
        });
    }
    Ok(inventory)
}
