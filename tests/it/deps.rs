//! The README's test command installs everything the suite runs: every program
//! a test starts is either installed by `scripts/deps` (which `scripts/test`
//! runs first) or part of every Debian system, so the suite passes on a fresh
//! machine with nothing but Rust (issue 16).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Programs every Debian or Ubuntu system has (Essential or required
/// packages), which the tests may run without installing anything.
const BASE_SYSTEM: &[(&str, &str)] = &[
    ("sh", "dash (Essential)"),
    ("dash", "dash (Essential)"),
    ("bash", "bash (Essential)"),
    ("timeout", "coreutils (Essential)"),
    ("getconf", "libc-bin (Essential)"),
    ("perl", "perl-base (Essential)"),
    ("unshare", "util-linux (Essential)"),
    ("apt-config", "apt (required on Debian and Ubuntu)"),
];

/// Every `Command::new("…")` and `venv::bin("…")` program named in `dir`.
fn programs_in(dir: &Path, found: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            programs_in(&path, found);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for needle in ["Command::new(\"", "venv::bin(\""] {
            for piece in text.split(needle).skip(1) {
                let Some(end) = piece.find('"') else { continue };
                let name = &piece[..end];
                // A program's name, not a placeholder in a comment.
                if !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    found.insert(name.to_owned());
                }
            }
        }
    }
}

#[test]
fn every_program_the_tests_run_is_installed_by_scripts_deps() {
    let out = std::process::Command::new(repo().join("scripts/deps"))
        .arg("--list")
        .output()
        .expect("run scripts/deps --list");
    assert!(out.status.success());
    let listed: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split('\t').next())
        .map(str::to_owned)
        .collect();
    assert!(
        listed.contains("psql") && listed.contains("bao"),
        "{listed:?}"
    );
    let mut used = BTreeSet::new();
    programs_in(&repo().join("tests/it"), &mut used);
    assert!(
        used.contains("psql") && used.contains("promtool"),
        "{used:?}"
    );
    let missing: Vec<&String> = used
        .iter()
        .filter(|p| !listed.contains(p.as_str()))
        .filter(|p| !BASE_SYSTEM.iter().any(|(name, _)| name == p))
        .collect();
    assert!(
        missing.is_empty(),
        "tests run {missing:?}, which scripts/deps neither installs nor finds in every Debian system"
    );
}
