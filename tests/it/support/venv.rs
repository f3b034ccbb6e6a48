//! The Python test environment `scripts/deps` makes: psycopg 3 (libpq 18), OpenBao's `bao`,
//! check-jsonschema and kubernetes-validate.
//!
//! It lives in `.venv/` at the project root, or where `PGW_TEST_VENV` points (not a
//! `PGWARDEN_*` name: pgwarden refuses unknown ones in its own environment). A test that needs
//! it and finds it missing fails and says how to make it: these tools are part of the suite, not
//! optional extras.

use std::path::{Path, PathBuf};

/// The virtual environment's directory.
pub fn dir() -> PathBuf {
    match std::env::var_os("PGW_TEST_VENV") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"),
    }
}

/// A program installed in the environment (`python`, `bao`, `check-jsonschema`, …).
pub fn bin(name: &str) -> PathBuf {
    let path = dir().join("bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/deps (it makes the Python test environment)",
        path.display()
    );
    path
}
