//! The dependency policy in `deny.toml` holds: licenses, banned crates (OpenSSL, native-tls,
//! ring but through x509-certificate), sources — checked with cargo-deny offline, as CI can run
//! it (`scripts/deps` installs cargo-deny when it is missing). Advisories need RustSec's
//! database from the network and are not part of this check. The check is also shown to fail
//! when the policy is broken: a configuration that bans a crate pgwarden uses, or that drops a
//! licence exception pgwarden needs.

use std::path::Path;
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `cargo deny --offline check <checks>` with `config`, on pgwarden's manifest.
fn cargo_deny(config: &Path, checks: &[&str]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["deny", "--offline", "--color", "never", "--manifest-path"])
        .arg(Path::new(ROOT).join("Cargo.toml"))
        .arg("--config")
        .arg(config)
        .arg("check")
        .args(checks)
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("no such command"),
        "cargo-deny is not installed: run scripts/deps (cargo install --locked cargo-deny)"
    );
    assert!(
        !stderr.contains("--offline was specified"),
        "a crate of Cargo.lock is not downloaded: run scripts/deps (cargo fetch --locked)\n{stderr}"
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `deny.toml`, changed by `edit`, in a file of its own.
fn edited_policy(edit: impl FnOnce(&mut toml::Table)) -> tempfile::NamedTempFile {
    let mut policy: toml::Table = std::fs::read_to_string(Path::new(ROOT).join("deny.toml"))
        .unwrap()
        .parse()
        .unwrap();
    edit(&mut policy);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), toml::to_string(&policy).unwrap()).unwrap();
    file
}

#[test]
fn the_dependency_policy_holds() {
    let out = cargo_deny(
        &Path::new(ROOT).join("deny.toml"),
        &["bans", "licenses", "sources"],
    );
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("bans ok, licenses ok, sources ok"), "{text}");
}

#[test]
fn the_check_fails_on_a_banned_crate_in_use() {
    let policy = edited_policy(|p| {
        let deny = p["bans"]["deny"].as_array_mut().unwrap();
        let mut ban = toml::Table::new();
        ban.insert("crate".into(), "base64".into());
        ban.insert("reason".into(), "a ban the test adds".into());
        deny.push(ban.into());
    });
    let out = cargo_deny(policy.path(), &["bans"]);
    let text = text(&out);
    assert!(
        !out.status.success(),
        "a crate in use was banned and the check passed:\n{text}"
    );
    assert!(
        text.contains("error[banned]") && text.contains("base64"),
        "{text}"
    );
}

#[test]
fn the_check_fails_on_a_licence_not_allowed() {
    // Without its exception, x509-certificate's MPL-2.0 is not allowed.
    let policy = edited_policy(|p| {
        p["licenses"]
            .as_table_mut()
            .unwrap()
            .insert("exceptions".into(), toml::Value::Array(Vec::new()));
    });
    let out = cargo_deny(policy.path(), &["licenses"]);
    let text = text(&out);
    assert!(
        !out.status.success(),
        "a licence outside the policy passed:\n{text}"
    );
    assert!(text.contains("x509-certificate"), "{text}");
}
