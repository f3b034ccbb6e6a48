//! The backup's deployment files hold together, checked the way their tools read them:
//! the systemd service and timer with `systemd-analyze verify` and `security`; the
//! Kubernetes CronJob with `kubernetes-validate --strict`; the compose service against the
//! compose file's mounts; every command line with pgwarden's parser; every backup
//! configuration with pgwarden's own loader against the file system its process will see;
//! and the compose loop hands SIGTERM to the running backup.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::deploy_files::files::*;
use pgwarden::config::BackupFile;
use yaml_rust2::{Yaml, YamlLoader};

const SERVICE: &str = "deploy/systemd/pgwarden-backup@.service";
const TIMER: &str = "deploy/systemd/pgwarden-backup@.timer";

fn values(rel: &str, section: &str, key: &str) -> Vec<String> {
    unit(rel)
        .into_iter()
        .filter(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v)
        .collect()
}

fn value(rel: &str, section: &str, key: &str) -> Option<String> {
    values(rel, section, key).pop()
}

/// The two units as instance `keycloak`, ExecStart pointing at the built binary.
fn instance_units(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let service = read(SERVICE);
    assert!(service.contains("/usr/local/bin/pgwarden "));
    let s = dir.join("pgwarden-backup@keycloak.service");
    std::fs::write(
        &s,
        service.replace("/usr/local/bin/pgwarden ", &format!("{} ", pgwarden_bin())),
    )
    .unwrap();
    let t = dir.join("pgwarden-backup@keycloak.timer");
    std::fs::write(&t, read(TIMER)).unwrap();
    (s, t)
}

fn verify(paths: &[&Path]) -> std::process::Output {
    Command::new("timeout")
        .args(["120", "systemd-analyze", "verify", "--man=no"])
        .args(paths)
        .output()
        .expect("systemd-analyze (Debian package systemd)")
}

#[test]
fn backup_units_pass_systemd_analyze_and_are_hardened() {
    for (key, want) in [
        ("Type", "oneshot"),
        ("User", "pgwarden-backup"),
        ("StateDirectory", "pgwarden-backup"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("MemoryDenyWriteExecute", "yes"),
        ("KillSignal", "SIGTERM"),
        ("UMask", "0077"),
        ("LimitCORE", "0"),
    ] {
        assert_eq!(
            value(SERVICE, "Service", key).as_deref(),
            Some(want),
            "{SERVICE}: {key}"
        );
    }
    assert_eq!(value(TIMER, "Timer", "Persistent").as_deref(), Some("yes"));
    assert!(value(TIMER, "Timer", "OnCalendar").is_some());
    let dir = tempfile::tempdir().unwrap();
    let (s, t) = instance_units(dir.path());
    let out = verify(&[&s, &t]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
    let security = run_ok(
        Command::new("timeout")
            .args([
                "120",
                "systemd-analyze",
                "security",
                "--offline=true",
                "--threshold=20",
                "--no-pager",
            ])
            .arg(&s),
        "systemd-analyze security (exposure 2.0 at most)",
    );
    assert!(security.contains("Overall exposure level"), "{security}");
    // The check fails on a bad timer.
    let bad = dir.path().join("pgwarden-backup@bad.timer");
    std::fs::write(&bad, "[Timer]\nOnCalendar=every day at noon\n").unwrap();
    let out = verify(&[&bad]);
    assert!(
        !out.status.success() || !String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "a bad OnCalendar= passes verify"
    );
}

#[test]
fn every_backup_command_line_in_the_deployment_files_is_accepted() {
    let exec = value(SERVICE, "Service", "ExecStart")
        .unwrap()
        .replace("%i", "keycloak");
    let words: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
    assert_eq!(words[0], "/usr/local/bin/pgwarden");
    assert_cli_accepts(&words[1..], "pgwarden-backup@.service ExecStart");
    let args = cronjob_container()["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert_cli_accepts(&args, "cronjob.yaml args");
    let script = read("deploy/compose/backup-loop.sh");
    assert!(script.contains(r#"pgwarden backup --config "$config" --target "$target""#));
    assert_cli_accepts(
        &[
            "backup",
            "--config",
            "/etc/pgwarden/backup.toml",
            "--target",
            "keycloak",
        ]
        .map(str::to_owned),
        "backup-loop.sh",
    );
}

/// A CA certificate and an age recipient, for configurations that name them.
fn put_public_files(root: &Path, cas: &[&str], recipients: &str) {
    let pki = pgwarden::embedded::pki::Pki::new("test CA").unwrap();
    for ca in cas {
        let p = in_root(root, ca);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, pki.ca_cert_pem()).unwrap();
    }
    let p = in_root(root, recipients);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let r = age::x25519::Identity::generate().to_public();
    std::fs::write(p, format!("# test\n{r}\n")).unwrap();
}

fn load(root: &Path, path: &str, text: &str) -> BackupFile {
    let base = Path::new(path).parent().unwrap();
    pgwarden::config::backup_from_str(text, base, Some(root), std::iter::empty())
        .unwrap_or_else(|e| panic!("{path}:\n{e}"))
}

#[test]
fn the_systemd_backup_configuration_passes_validation_with_the_units_credentials() {
    let root = tempfile::tempdir().unwrap();
    put_public_files(
        root.path(),
        &[
            "/etc/pgwarden/tls/vault-ca.crt",
            "/etc/pgwarden/tls/db-ca.crt",
        ],
        "/etc/pgwarden/backup-recipients.txt",
    );
    for c in values(SERVICE, "Service", "LoadCredential") {
        let (name, source) = c.split_once(':').unwrap();
        std::fs::create_dir_all(in_root(root.path(), source).parent().unwrap()).unwrap();
        std::fs::write(
            in_root(root.path(), source),
            "00000000-0000-4000-8000-00000000000b",
        )
        .unwrap();
        copy_tree(
            &in_root(root.path(), source),
            &in_root(
                root.path(),
                &format!("/run/credentials/pgwarden-backup@keycloak.service/{name}"),
            ),
        );
    }
    let exec = value(SERVICE, "Service", "ExecStart").unwrap();
    let config = exec
        .split_whitespace()
        .skip_while(|w| *w != "--config")
        .nth(1)
        .unwrap();
    let file = load(root.path(), config, &read("deploy/systemd/backup.toml"));
    let b = &file.backup["keycloak"];
    // Backups go into the unit's StateDirectory, metrics where it may write.
    let state = in_root(root.path(), "/var/lib/pgwarden-backup");
    assert!(b.directory.starts_with(&state), "{}", b.directory.display());
    let writable = value(SERVICE, "Service", "ReadWritePaths").unwrap();
    let metrics = b.metrics_file.as_ref().expect("a metrics file");
    assert!(metrics.starts_with(in_root(root.path(), writable.trim_start_matches('-'))));
    let start =
        humantime::parse_duration(&value(SERVICE, "Service", "TimeoutStartSec").unwrap()).unwrap();
    assert!(
        start > b.timeout,
        "TimeoutStartSec {start:?} ≤ timeout {:?}",
        b.timeout
    );
    assert!(file.vault.is_some());
}

fn yaml(rel: &str) -> Yaml {
    YamlLoader::load_from_str(&read(rel)).unwrap().remove(0)
}

fn cronjob_container() -> Yaml {
    yaml("deploy/kubernetes/backup/cronjob.yaml")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        ["containers"][0]
        .clone()
}

#[test]
fn the_kubernetes_cronjob_validates_and_its_configuration_loads_in_the_pod() {
    let dir = repo().join("deploy/kubernetes/backup");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let out = Command::new(crate::support::venv::bin("kubernetes-validate"))
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubernetes-validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The check fails on a field the API does not have.
    let bad = tempfile::tempdir().unwrap();
    let text = read("deploy/kubernetes/backup/cronjob.yaml").replace(
        "  concurrencyPolicy: Forbid",
        "  concurrencyPolicy: Forbid\n  retries: 3",
    );
    std::fs::write(bad.path().join("cronjob.yaml"), text).unwrap();
    let out = Command::new(crate::support::venv::bin("kubernetes-validate"))
        .arg("--strict")
        .arg(bad.path().join("cronjob.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown field passes");

    // The pod's file system, from its mounts.
    let job = yaml("deploy/kubernetes/backup/cronjob.yaml");
    let pod = &job["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let configmap = yaml("deploy/kubernetes/backup/configmap.yaml");
    let root = tempfile::tempdir().unwrap();
    let mut config_path = None;
    for m in cronjob_container()["volumeMounts"].as_vec().unwrap() {
        let path = m["mountPath"].as_str().unwrap();
        match (m["name"].as_str().unwrap(), m["subPath"].as_str()) {
            ("config", Some(key)) => {
                let p = in_root(root.path(), path);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, configmap["data"][key].as_str().unwrap()).unwrap();
                if key == "backup.toml" {
                    config_path = Some(path.to_owned());
                }
            }
            ("tls", None) => put_public_files(
                root.path(),
                &[
                    &format!("{path}/db-ca.crt"),
                    &format!("{path}/vault-ca.crt"),
                ],
                "/unused/recipients.txt",
            ),
            ("vault-token", None) => {
                std::fs::create_dir_all(in_root(root.path(), path)).unwrap();
                std::fs::write(
                    in_root(root.path(), &format!("{path}/token")),
                    "eyJ.test.jwt",
                )
                .unwrap();
            }
            ("backups", None) => std::fs::create_dir_all(in_root(root.path(), path)).unwrap(),
            (other, _) => panic!("a mount this test does not model: {other}"),
        }
    }
    let config_path = config_path.expect("the configuration is mounted");
    let text = configmap["data"]["backup.toml"].as_str().unwrap();
    let file = load(root.path(), &config_path, text);
    let b = &file.backup["keycloak"];
    let backups = cronjob_container()["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some("backups"))
        .map(|m| m["mountPath"].as_str().unwrap().to_owned())
        .unwrap();
    assert!(
        b.directory.starts_with(in_root(root.path(), &backups)),
        "backups on the PVC"
    );
    assert!(
        b.pushgateway.is_some(),
        "a CronJob's metrics must be pushed"
    );
    assert_eq!(b.recipients.len(), 1);
    let deadline = job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
        .as_i64()
        .unwrap();
    assert!(Duration::from_secs(deadline as u64) > b.timeout);
    assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() >= 30);
    assert_eq!(job["spec"]["concurrencyPolicy"].as_str(), Some("Forbid"));
    let sc = &cronjob_container()["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
}

#[test]
fn the_compose_backup_service_loads_its_configuration_from_its_mounts() {
    let compose = Compose::load();
    let service = compose.service("pgwarden-backup");
    assert_eq!(service["build"]["target"].as_str(), Some("backup"));
    let root = tempfile::tempdir().unwrap();
    for m in mounts(service) {
        let dest = in_root(root.path(), m.target());
        match &m {
            Mount::Bind { source, .. } => copy_tree(source, &dest),
            Mount::Volume { name, .. } if name == "certs" => put_public_files(
                root.path(),
                &[&format!("{}/ca.crt", m.target())],
                "/unused/r.txt",
            ),
            Mount::Volume { name, .. } if name == "backup-approle" => {
                std::fs::create_dir_all(&dest).unwrap();
                std::fs::write(dest.join("role_id"), "00000000-0000-4000-8000-00000000000c")
                    .unwrap();
                std::fs::write(
                    dest.join("secret_id"),
                    "00000000-0000-4000-8000-00000000000d",
                )
                .unwrap();
            }
            Mount::Volume { name, .. } if name == "backups" => {
                std::fs::create_dir_all(&dest).unwrap()
            }
            Mount::Volume { name, .. } => panic!("a volume this test cannot fill: {name}"),
        }
    }
    let env = environment(service);
    let config = &env["PGWARDEN_BACKUP_CONFIG"];
    let text = std::fs::read_to_string(in_root(root.path(), config)).unwrap();
    let file = load(root.path(), config, &text);
    let b = &file.backup[env["PGWARDEN_BACKUP_TARGET"].as_str()];
    let backups = mounts(service)
        .into_iter()
        .find(|m| matches!(m, Mount::Volume { name, .. } if name == "backups"))
        .unwrap();
    assert!(
        b.directory
            .starts_with(in_root(root.path(), backups.target()))
    );
    let url = b.pushgateway.as_deref().expect("pushes its metrics");
    let host = url.trim_start_matches("http://").split(':').next().unwrap();
    assert!(compose.has_service(host), "{url} names no compose service");
    // The image's pg_dump is the server's major version.
    let server = compose.service("postgres")["image"]
        .as_str()
        .unwrap()
        .to_owned();
    let major = server
        .split(':')
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        b.pg_dump,
        in_root(
            root.path(),
            &format!("/usr/lib/postgresql/{major}/bin/pg_dump")
        )
    );
    let (_, from) = dockerfile()
        .into_iter()
        .find(|(i, a)| i == "FROM" && a.ends_with(" AS backup"))
        .expect("a backup stage");
    assert!(from.starts_with(&format!("postgres:{major}.")), "{from}");
    // Prometheus scrapes the Pushgateway.
    assert!(read("config/prometheus/prometheus.yml").contains("\"pushgateway:9091\""));
}

#[test]
fn the_compose_backup_loop_hands_sigterm_to_the_running_backup() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    // A stand-in pgwarden: records its arguments, says when it got SIGTERM.
    let stub = format!(
        "#!/bin/sh\necho \"$@\" >> {d}/args\ntrap 'echo term >> {d}/signals; exit 1' TERM\n: > {d}/running\nwhile :; do sleep 0.05; done\n",
        d = dir.path().display()
    );
    let p = bin.join("pgwarden");
    std::fs::write(&p, stub).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut child = Command::new("sh")
        .arg(repo().join("deploy/compose/backup-loop.sh"))
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("PGWARDEN_BACKUP_INTERVAL", "3600")
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !dir.path().join("running").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the loop never started a backup"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the loop did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("signals"))
            .unwrap()
            .trim(),
        "term"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("args"))
            .unwrap()
            .trim(),
        "backup --config /etc/pgwarden/backup.toml --target keycloak"
    );
}
