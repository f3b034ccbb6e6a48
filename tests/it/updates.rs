//! Checklist item 8, security updates applied automatically: `renovate.json` against
//! Renovate's schema and against the files it must cover (Cargo, the Dockerfile's base
//! images, every image of docker-compose.yml and deploy/kubernetes/); the hosts'
//! unattended-upgrades configuration read back by apt itself (`apt-config dump -c`), its
//! needrestart rules by perl, and its maintenance window.

use std::path::Path;
use std::process::Command;

use crate::deploy_files::files::*;

fn renovate() -> serde_json::Value {
    serde_json::from_str(&read("renovate.json")).expect("renovate.json is JSON")
}

fn check_renovate(path: &Path) -> std::process::Output {
    Command::new(crate::support::venv::bin("check-jsonschema"))
        .args(["--builtin-schema", "vendor.renovate"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn renovate_config_validates_against_renovates_schema() {
    let out = check_renovate(&repo().join("renovate.json"));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The check fails on a value of the wrong type.
    let mut bad = renovate();
    bad["packageRules"][0]["pinDigests"] = "yes".into();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("renovate.json"), bad.to_string()).unwrap();
    assert!(
        !check_renovate(&dir.path().join("renovate.json"))
            .status
            .success()
    );
}

/// Whether the Python regular expression `pattern` matches `path` (Renovate's patterns
/// are JavaScript's; these are plain enough to read the same).
fn matches(pattern: &str, path: &str) -> bool {
    let out = Command::new(crate::support::venv::bin("python"))
        .args([
            "-c",
            "import re,sys; sys.exit(0 if re.search(sys.argv[1], sys.argv[2]) else 1)",
        ])
        .args([pattern, path])
        .output()
        .unwrap();
    out.status.success()
}

#[test]
fn renovate_covers_every_dependency_file_and_pins_images_and_fast_tracks_security() {
    let r = renovate();
    let managers: Vec<&str> = r["enabledManagers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in ["cargo", "dockerfile", "docker-compose", "kubernetes"] {
        assert!(managers.contains(&m), "{m} is not enabled");
    }
    // Renovate's own defaults find Cargo.toml, Dockerfile and docker-compose.yml at the
    // root; the Kubernetes manager has no default: every manifest must match its pattern.
    for f in [
        "Cargo.toml",
        "Cargo.lock",
        "Dockerfile",
        "docker-compose.yml",
    ] {
        assert!(repo().join(f).is_file(), "{f}");
    }
    let patterns: Vec<String> = r["kubernetes"]["managerFilePatterns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().trim_matches('/').to_owned())
        .collect();
    let mut manifests = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p.strip_prefix(repo()).unwrap().display().to_string());
            }
        }
    }
    walk(&repo().join("deploy/kubernetes"), &mut manifests);
    assert!(!manifests.is_empty());
    for m in &manifests {
        assert!(patterns.iter().any(|p| matches(p, m)), "{m} is not covered");
    }
    assert!(!patterns.iter().any(|p| matches(p, "docker-compose.yml")));
    // Every image in those files has a tag Renovate can follow.
    for m in &manifests {
        for line in read(m)
            .lines()
            .filter(|l| l.trim_start().starts_with("image:"))
        {
            let image = line.trim().trim_start_matches("image:").trim();
            assert!(image.contains(':'), "{m}: {image} has no tag");
        }
    }
    // Images by digest, for the docker datasource.
    let rules = r["packageRules"].as_array().unwrap();
    assert!(
        rules.iter().any(|p| p["pinDigests"] == true
            && p["matchDatasources"]
                .as_array()
                .is_some_and(|d| d.contains(&"docker".into()))),
        "images are not pinned by digest"
    );
    // Security updates: alerts on, grouped, at any time, first.
    let v = &r["vulnerabilityAlerts"];
    assert_eq!(v["enabled"], true);
    assert_eq!(v["groupName"], "security updates");
    assert_eq!(v["schedule"][0], "at any time");
    assert!(v["prPriority"].as_i64().unwrap() > 0);
    assert_eq!(r["osvVulnerabilityAlerts"], true);
}

/// `apt-config dump` with `file` added: apt's own reading of it.
fn apt_dump(file: &Path) -> std::process::Output {
    Command::new("apt-config")
        .args(["dump", "-c"])
        .arg(file)
        .output()
        .expect("apt-config (Debian's apt)")
}

#[test]
fn unattended_upgrades_take_security_origins_only_and_never_reboot() {
    let file = repo().join("deploy/hosts/52pgwarden-unattended-upgrades");
    let out = apt_dump(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout);
    let origins: Vec<&str> = dump
        .lines()
        .filter_map(|l| l.strip_prefix("Unattended-Upgrade::Origins-Pattern:: "))
        .map(|v| v.trim_end_matches(';').trim_matches('"'))
        .collect();
    assert_eq!(origins.len(), 3, "{dump}");
    for o in &origins {
        let security = o.contains("-security");
        let pgdg = o.starts_with("origin=apt.postgresql.org,") && o.contains("-pgdg");
        assert!(security || pgdg, "not a security origin: {o}");
    }
    assert!(
        !dump
            .lines()
            .any(|l| l.starts_with("Unattended-Upgrade::Allowed-Origins:: ")),
        "{dump}"
    );
    for (key, value) in [
        ("Unattended-Upgrade::Automatic-Reboot", "false"),
        ("APT::Periodic::Unattended-Upgrade", "1"),
        ("APT::Periodic::Update-Package-Lists", "1"),
    ] {
        assert!(
            dump.contains(&format!("{key} \"{value}\";")),
            "{key} is not {value}:\n{dump}"
        );
    }
    // apt refuses a broken file, so the check can fail.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken");
    std::fs::write(
        &broken,
        read("deploy/hosts/52pgwarden-unattended-upgrades").replace(
            "Unattended-Upgrade::Automatic-Reboot \"false\";",
            "Unattended-Upgrade::Automatic-Reboot \"false\"",
        ),
    )
    .unwrap();
    assert!(!apt_dump(&broken).status.success());
}

#[test]
fn services_restart_after_library_updates_and_postgresql_waits_for_its_window() {
    let conf = repo().join("deploy/hosts/needrestart-pgwarden.conf");
    let out = Command::new("perl")
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("perl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = read("deploy/hosts/needrestart-pgwarden.conf");
    assert!(text.contains("$nrconf{restart} = 'a';"));
    assert!(text.contains("$nrconf{override_rc}{qr(^pgwarden\\.service$)} = 1;"));
    assert!(text.contains("$nrconf{override_rc}{qr(^postgresql)} = 0;"));
    // pgwarden's unit drains on SIGTERM, which is what makes its restart safe.
    assert_eq!(
        unit("deploy/systemd/pgwarden.service")
            .into_iter()
            .find(|(_, k, _)| k == "KillSignal")
            .map(|(_, _, v)| v)
            .as_deref(),
        Some("SIGTERM")
    );
    let window = unit("deploy/hosts/apt-daily-upgrade.timer.d/maintenance-window.conf");
    let calendar: Vec<&str> = window
        .iter()
        .filter(|(s, k, _)| s == "Timer" && k == "OnCalendar")
        .map(|(_, _, v)| v.as_str())
        .collect();
    assert_eq!(
        calendar.first(),
        Some(&""),
        "the default schedule is reset first"
    );
    assert_eq!(calendar.len(), 2);
    let out = Command::new("systemd-analyze")
        .args(["calendar", calendar[1]])
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
