//! Checklist item 5, second half: the hosts' nftables rules. Each file passes `nft -c`
//! (nft's own parser and checker), and is loaded into a network namespace made for the
//! test (`unshare --net`, as root), whose rules are read back: the input policy drops,
//! and every port opened is opened only to the addresses its file defines for it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::deploy_files::files::*;

fn nft_check(path: &std::path::Path) -> std::process::Output {
    Command::new("nft")
        .args(["-c", "-f"])
        .arg(path)
        .output()
        .expect("nft (Debian package nftables; scripts/deps installs it)")
}

/// The file's `define NAME = { … }` sets.
fn defines(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("define "))
        .map(|d| {
            let (name, value) = d.split_once('=').unwrap();
            let items = value
                .trim()
                .trim_matches(|c| c == '{' || c == '}')
                .split(',')
                .map(|s| s.trim().to_owned())
                .collect();
            (name.trim().to_owned(), items)
        })
        .collect()
}

/// The input chain as nft lists it after loading `rel` into a fresh network namespace.
fn loaded_input_chain(path: &Path) -> String {
    let out = Command::new("unshare")
        .args([
            "--net",
            "sh",
            "-c",
            "nft -f \"$1\" && nft list chain inet filter input",
            "sh",
        ])
        .arg(path)
        .output()
        .expect("unshare (util-linux)");
    assert!(
        out.status.success(),
        "loading {} into a network namespace of its own:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks that every rule opening one of `ports` names a source address, and that
/// together they admit exactly the `allowed` defines' addresses.
fn assert_only(path: &Path, ports: &[&str], allowed: &[&str]) {
    let rel = path.display();
    assert!(nft_check(path).status.success(), "nft -c {rel}");
    let text = std::fs::read_to_string(path).unwrap();
    let sets = defines(&text);
    let chain = loaded_input_chain(path);
    assert!(
        chain.contains("policy drop;"),
        "{rel}: input does not drop by default:\n{chain}"
    );
    let mut admitted = Vec::new();
    for line in chain.lines().map(str::trim) {
        let opens = ports.iter().any(|p| {
            line.contains(&format!("dport {p} ")) || (line.contains("dport {") && line.contains(p))
        });
        if !opens {
            continue;
        }
        assert!(line.ends_with("accept"), "{rel}: {line}");
        let source = line
            .split(" saddr ")
            .nth(1)
            .unwrap_or_else(|| panic!("{rel}: a rule opens a port to everyone: {line}"))
            .trim_end_matches(" accept")
            .trim_matches(|c| c == '{' || c == '}' || c == ' ');
        admitted.extend(source.split(',').map(|s| s.trim().to_owned()));
    }
    let mut want: Vec<String> = allowed.iter().flat_map(|d| sets[*d].clone()).collect();
    want.sort();
    admitted.sort();
    assert_eq!(admitted, want, "{rel}: who may reach {ports:?}");
}

#[test]
fn the_database_host_accepts_postgresql_from_pgwarden_vault_and_backups_only() {
    assert_only(
        &repo().join("deploy/hosts/nftables-db.conf"),
        &["5432"],
        &[
            "PGWARDEN",
            "PGWARDEN6",
            "VAULT",
            "VAULT6",
            "BACKUP",
            "BACKUP6",
        ],
    );
    assert_only(
        &repo().join("deploy/hosts/nftables-db.conf"),
        &["22"],
        &["ADMINS", "ADMINS6"],
    );
}

#[test]
fn pgwardens_host_accepts_the_proxy_from_keycloak_and_metrics_from_monitoring_only() {
    assert_only(
        &repo().join("deploy/hosts/nftables-pgwarden.conf"),
        &["6432"],
        &["KEYCLOAK", "KEYCLOAK6"],
    );
    assert_only(
        &repo().join("deploy/hosts/nftables-pgwarden.conf"),
        &["9187"],
        &["MONITORING", "MONITORING6"],
    );
}

#[test]
fn the_firewall_checks_fail_on_a_bad_rule() {
    let dir = tempfile::tempdir().unwrap();
    // nft refuses a misspelt rule...
    let typo = dir.path().join("typo.conf");
    std::fs::write(
        &typo,
        read("deploy/hosts/nftables-db.conf").replace(
            "tcp dport 5432 ip saddr $VAULT accept",
            "tcp dprot 5432 ip saddr $VAULT accept",
        ),
    )
    .unwrap();
    assert!(!nft_check(&typo).status.success());
    // ...and a rule that opens 5432 to everyone is caught when the rules are read back.
    let open = read("deploy/hosts/nftables-db.conf").replace(
        "tcp dport 5432 ip saddr $VAULT accept",
        "tcp dport 5432 accept",
    );
    let path = dir.path().join("open.conf");
    std::fs::write(&path, open).unwrap();
    let caught = std::panic::catch_unwind(|| {
        assert_only(
            &path,
            &["5432"],
            &[
                "PGWARDEN",
                "PGWARDEN6",
                "VAULT",
                "VAULT6",
                "BACKUP",
                "BACKUP6",
            ],
        )
    });
    assert!(caught.is_err(), "a rule open to everyone passed");
}
