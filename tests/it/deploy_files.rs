//! The deployment files hold together: docker-compose.yml, the Dockerfile, the
//! systemd unit and the scripts and configurations they name.
//!
//! No Docker engine, Vault or systemd runs here, so each file is checked the way
//! its tool would read it, against the other files and against pgwarden itself:
//! pgwarden's own configuration loader validates the configurations against a
//! copy of the file system the container or service will see (certificates from
//! the real generator script); its command line parser checks every command
//! line; `systemd-analyze` checks the unit; a real PostgreSQL runs the init
//! script.

pub(crate) mod files;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use files::*;
use ipnet::IpNet;
use pgwarden::auth::{ScramVerifier, UserAuth};
use pgwarden::config::{Config, CredentialsConfig, VaultAuthConfig};
use yaml_rust2::Yaml;

const CONDITIONS: &[&str] = &[
    "service_started",
    "service_healthy",
    "service_completed_successfully",
];

/// The uid the postgres image runs the server as (its Dockerfile: useradd --uid=999).
const POSTGRES_IMAGE_UID: u32 = 999;

/// After `[shutdown] grace`, sessions get up to 5 s to end at a boundary and
/// 2 s for their goodbye (src/session.rs) before leases are revoked.
pub(crate) const SESSION_WIND_DOWN: Duration = Duration::from_secs(7);

/// Runs check-jsonschema with a schema it carries (no network) on `files`; its output on failure.
fn check_jsonschema(schema: &str, files: &[&Path]) -> Result<(), String> {
    let out = Command::new(crate::support::venv::bin("check-jsonschema"))
        .arg("--builtin-schema")
        .arg(schema)
        .args(files)
        .output()
        .expect("run check-jsonschema");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn compose_file_validates_against_the_compose_specification() {
    let compose = files::repo().join("docker-compose.yml");
    if let Err(e) = check_jsonschema("vendor.compose-spec", &[&compose]) {
        panic!("docker-compose.yml does not follow the Compose specification:\n{e}");
    }
    // The check can fail: a service with a key the specification does not know.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("docker-compose.yml");
    let text = files::read("docker-compose.yml").replacen(
        "services:\n",
        "services:\n  broken:\n    imagee: nothing\n",
        1,
    );
    std::fs::write(&bad, text).unwrap();
    assert!(check_jsonschema("vendor.compose-spec", &[&bad]).is_err());
}

#[test]
fn compose_dependencies_name_services_with_conditions_their_targets_can_meet() {
    let compose = Compose::load();
    let dockerfile_health = dockerfile().iter().any(|(i, _)| i == "HEALTHCHECK");
    let mut graph: HashMap<String, Vec<String>> = HashMap::new();
    for (name, service) in compose.services() {
        for (dep, condition) in depends_on(service) {
            assert!(
                compose.has_service(&dep),
                "{name} depends on unknown service `{dep}`"
            );
            assert!(
                CONDITIONS.contains(&condition.as_str()),
                "{name} → {dep}: unknown condition `{condition}`"
            );
            let target = compose.service(&dep);
            if condition == "service_healthy" {
                let own = !command(&target["healthcheck"]["test"]).is_empty();
                let from_image = target["build"].as_hash().is_some() && dockerfile_health;
                assert!(
                    own || from_image,
                    "{name} waits for {dep} to be healthy, but {dep} has no health check"
                );
            }
            if condition == "service_completed_successfully" {
                let restart = target["restart"].as_str().unwrap_or("no");
                assert_eq!(
                    restart, "no",
                    "{name} waits for {dep} to complete, but {dep} restarts ({restart})"
                );
            }
            graph.entry(name.clone()).or_default().push(dep);
        }
    }
    // No cycles: compose would refuse to start.
    fn visit(
        n: &str,
        g: &HashMap<String, Vec<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(n) {
            return;
        }
        assert!(
            !path.iter().any(|p| p == n),
            "dependency cycle: {} → {n}",
            path.join(" → ")
        );
        path.push(n.to_owned());
        for d in g.get(n).into_iter().flatten() {
            visit(d, g, path, done);
        }
        path.pop();
        done.insert(n.to_owned());
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        visit(n, &graph, &mut Vec::new(), &mut done);
    }
    // The order the demo depends on.
    let dep = |a: &str, b: &str, c: &str| {
        assert!(
            depends_on(compose.service(a)).contains(&(b.to_owned(), c.to_owned())),
            "{a} should wait for {b} ({c})"
        )
    };
    dep("postgres", "certs", "service_completed_successfully");
    dep("vault", "certs", "service_completed_successfully");
    dep("vault-init", "postgres", "service_healthy");
    dep("pgwarden", "vault-init", "service_completed_successfully");
    dep("keycloak", "pgwarden", "service_healthy");
}

#[test]
fn compose_mounts_and_secrets_exist_in_the_repository() {
    let compose = Compose::load();
    let volumes = compose.declared("volumes");
    let secrets = compose.declared("secrets");
    let mut missing = Vec::new();
    for (name, service) in compose.services() {
        for m in mounts(service) {
            match m {
                Mount::Bind {
                    source,
                    target,
                    read_only,
                } => {
                    // Configuration and scripts: the containers read them only.
                    assert!(read_only, "{name}: bind mount {target} should be :ro");
                    if !source.exists() {
                        missing.push(format!("{name}: {} (mounted at {target})", rel(&source)));
                    }
                }
                Mount::Volume {
                    name: v,
                    target,
                    read_only,
                } => {
                    assert!(
                        volumes.contains(&v),
                        "{name} mounts undeclared volume `{v}`"
                    );
                    // Only the services that fill a volume may write to it.
                    let writers: &[&str] = match v.as_str() {
                        "certs" => &["certs"],
                        "approle" | "vault-keys" => &["vault-init"],
                        _ => &[],
                    };
                    if writers.contains(&name.as_str()) {
                        assert!(!read_only, "{name} fills {v} but mounts it :ro");
                    } else if !writers.is_empty() {
                        assert!(read_only, "{name}: {v} at {target} should be :ro");
                    }
                }
            }
        }
        for s in list(&service["secrets"]) {
            let s = s
                .as_str()
                .or(s["source"].as_str())
                .expect("secret name")
                .to_owned();
            assert!(secrets.contains(&s), "{name} uses undeclared secret `{s}`");
        }
        if let Some(ctx) = service["build"]["context"].as_str() {
            let df = service["build"]["dockerfile"]
                .as_str()
                .unwrap_or("Dockerfile");
            assert!(repo().join(ctx).join(df).is_file(), "{name}: no {ctx}/{df}");
        }
    }
    for s in &secrets {
        let f = compose.secret_file(s);
        if !f.is_file() {
            missing.push(format!("secret {s}: {}", rel(&f)));
        }
    }
    assert!(
        missing.is_empty(),
        "docker-compose.yml names files the repository lacks:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn compose_images_are_pinned_and_ports_published_on_loopback_only() {
    let compose = Compose::load();
    for (name, service) in compose.services() {
        let image = service["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} names no image (a built one needs a local tag too)"));
        assert_pinned(image, &name);
        for (ip, host, container) in ports(service) {
            assert_eq!(
                ip.as_deref(),
                Some("127.0.0.1"),
                "{name} publishes {container} on {host} beyond loopback"
            );
            assert!(
                !host.is_empty(),
                "{name} publishes {container} on a random host port"
            );
        }
    }
    for service in ["postgres", "vault"] {
        assert!(
            ports(compose.service(service)).is_empty(),
            "{service} must not be published"
        );
    }
}

fn assert_pinned(image: &str, origin: &str) {
    let (_, last) = image.rsplit_once('/').unwrap_or(("", image));
    let pinned_by_digest = image.contains("@sha256:");
    let tag = last
        .split_once(':')
        .map(|(_, t)| t.split('@').next().unwrap_or(t));
    assert!(
        pinned_by_digest || tag.is_some(),
        "{origin}: image `{image}` has no tag"
    );
    assert_ne!(tag, Some("latest"), "{origin}: image `{image}` uses latest");
}

/// The container file system pgwarden sees in the compose demo, laid out in a
/// directory: bind mounts copied from the repository, the `certs` volume filled
/// by the real gen-certs.sh, the `approle` volume with stand-ins for what
/// Vault generates, compose secrets under their targets.
fn pgwarden_container(compose: &Compose) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let service = compose.service("pgwarden");
    for m in mounts(service) {
        let dest = in_root(root.path(), m.target());
        match &m {
            Mount::Bind { source, .. } => copy_tree(source, &dest),
            Mount::Volume { name, .. } if name == "certs" => generate_certs(&dest),
            Mount::Volume { name, .. } if name == "approle" => {
                // vault-init writes these (config/vault/setup.sh asks Vault for them).
                std::fs::create_dir_all(&dest).unwrap();
                std::fs::write(dest.join("role_id"), "00000000-0000-4000-8000-000000000001")
                    .unwrap();
                std::fs::write(
                    dest.join("secret_id"),
                    "00000000-0000-4000-8000-000000000002",
                )
                .unwrap();
            }
            Mount::Volume { name, .. } => {
                panic!("pgwarden mounts volume `{name}`, which this test cannot fill")
            }
        }
    }
    for (_, file, target) in compose.secrets_of(service) {
        copy_tree(&file, &in_root(root.path(), &target));
    }
    root
}

fn generate_certs(dir: &Path) {
    run_ok(
        Command::new("sh")
            .arg(repo().join("deploy/compose/gen-certs.sh"))
            .arg(dir),
        "deploy/compose/gen-certs.sh",
    );
}

/// pgwarden's command in compose: the service's `command`, else the Dockerfile's CMD.
fn pgwarden_args(compose: &Compose) -> Vec<String> {
    let own = command(&compose.service("pgwarden")["command"]);
    if !own.is_empty() {
        return own;
    }
    let (_, cmd) = dockerfile()
        .into_iter()
        .rfind(|(i, _)| i == "CMD")
        .expect("CMD");
    exec_form(&cmd)
}

fn config_flag(args: &[String]) -> String {
    let i = args
        .iter()
        .position(|a| a == "--config")
        .expect("--config in the command");
    args[i + 1].clone()
}

fn pgwarden_env(service: &Yaml) -> Vec<(String, String)> {
    environment(service)
        .into_iter()
        .filter(|(k, _)| k.starts_with("PGWARDEN_") || k == "VAULT_TOKEN")
        .collect()
}

fn load_compose_config(compose: &Compose) -> (Config, tempfile::TempDir) {
    let root = pgwarden_container(compose);
    let path = config_flag(&pgwarden_args(compose));
    let env = pgwarden_env(compose.service("pgwarden"));
    match pgwarden::config::load_in_root(root.path(), Path::new(&path), env) {
        Ok(c) => (c, root),
        Err(e) => panic!("{path} in the pgwarden container is invalid:\n{e}"),
    }
}

#[test]
fn compose_pgwarden_configuration_passes_pgwarden_validation() {
    let compose = Compose::load();
    let (config, _root) = load_compose_config(&compose);
    let service = compose.service("pgwarden");

    // Vault with AppRole, as the demo sets it up; the keycloak route on the
    // migration role (Keycloak migrates its schema at start).
    let vault = config.vault.as_ref().expect("[vault]");
    assert!(
        matches!(vault.auth, VaultAuthConfig::Approle { .. }),
        "AppRole login"
    );
    let vault_host = host_of(&vault.address);
    assert!(
        compose.has_service(&vault_host),
        "[vault] address names `{vault_host}`, not a compose service"
    );
    let route = config
        .routes
        .iter()
        .find(|r| r.database == "keycloak")
        .expect("a keycloak route");
    match config.credentials.get(&route.credentials) {
        Some(CredentialsConfig::Vault(v)) => assert_eq!(v.role, "keycloak-migrate"),
        other => panic!("the keycloak route should use a Vault source, has {other:?}"),
    }
    assert!(
        compose.has_service(&route.upstream.host),
        "upstream `{}` is not a compose service",
        route.upstream.host
    );
    assert_eq!(
        route.upstream.tls,
        pgwarden::config::UpstreamTls::VerifyFull
    );

    // The allowlist covers the compose network, and no more than private space.
    let subnet: IpNet = compose.doc["networks"]["default"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .expect("a fixed subnet for the default network")
        .parse()
        .unwrap();
    assert!(
        config.listen.allow.iter().any(|n| n.contains(&subnet)),
        "[listen] allow {:?} does not cover the compose network {subnet}",
        config.listen.allow
    );
    for n in &config.listen.allow {
        assert!(
            n.prefix_len() >= 8,
            "[listen] allow {n} is too wide for the demo"
        );
    }

    // The admin listener answers the health check and Prometheus.
    let admin = config.admin.expect("[admin]");
    let address = admin.address;
    assert!(
        address.ip().is_unspecified(),
        "admin {address} must be reachable in the network"
    );
    let health = command(&service["healthcheck"]["test"]);
    let url = health
        .iter()
        .find(|w| w.starts_with("http://"))
        .expect("the health check names its URL");
    assert!(
        url.ends_with(&format!(":{}/readyz", address.port())),
        "the health check {health:?} does not ask /readyz on {}",
        address.port()
    );
    // …and no one else: its allowlist is the compose network (Prometheus) and
    // the container's own loopback (the health check), not "unreachable anyway".
    let allowed = |ip: std::net::IpAddr| admin.allow.iter().any(|n| n.contains(&ip));
    let probe: std::net::IpAddr = url["http://".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("the health check asks an IP address");
    assert!(
        allowed(probe),
        "[admin] allow {:?} refuses the health check",
        admin.allow
    );
    assert!(
        admin.allow.iter().any(|n| n.contains(&subnet)),
        "[admin] allow {:?} does not cover the compose network {subnet} (Prometheus)",
        admin.allow
    );
    for n in &admin.allow {
        assert!(
            subnet.contains(n) || n.addr().is_loopback(),
            "[admin] allow {n} reaches past the compose network and loopback"
        );
    }
    for outside in ["10.0.0.1", "192.168.1.1", "172.30.90.1", "8.8.8.8"] {
        assert!(
            !allowed(outside.parse().unwrap()),
            "[admin] allows {outside}"
        );
    }

    // Docker waits long enough for the drain before SIGKILL.
    let stop = duration(&service["stop_grace_period"]).unwrap_or(Duration::from_secs(10));
    let needed = config.shutdown.grace + config.shutdown.revoke_timeout + SESSION_WIND_DOWN;
    assert!(
        stop > needed,
        "stop_grace_period {stop:?} ≤ the drain's {needed:?}"
    );
}

/// `pgwarden audit` reads the compose configuration with the loader it uses
/// (under the container's file system), and what it concludes from the
/// configuration alone holds: verified legs, a narrow allowlist, an admin
/// listener, a background audit, sessions that end with their credential.
#[test]
fn compose_configuration_is_understood_by_pgwarden_audit() {
    let compose = Compose::load();
    let (config, _root) = load_compose_config(&compose);
    let audit = config
        .audit
        .as_ref()
        .expect("[audit] in the compose configuration");
    assert_eq!(audit.interval, Duration::from_secs(3600));
    let findings = pgwarden::audit::configuration_findings(&config);
    let status = |id: &str| {
        findings
            .iter()
            .filter(|f| f.check.id == id)
            .map(|f| (f.status, f.evidence.clone()))
            .collect::<Vec<_>>()
    };
    use pgwarden::audit::Status;
    for id in [
        "tls.upstream_verify",
        "rotation.on_lease_end",
        "access.allowlist",
        "monitoring.admin_listener",
        "monitoring.continuous_audit",
    ] {
        let found = status(id);
        assert!(!found.is_empty(), "no {id}");
        assert!(
            found.iter().all(|(s, _)| *s == Status::Pass),
            "{id}: {found:?}"
        );
    }
    // Vault's max_ttl is not visible to pgwarden: unknown, with what it lacks.
    let max = findings
        .iter()
        .find(|f| f.check.id == "rotation.max_ttl")
        .unwrap();
    assert_eq!(max.status, Status::Unknown);
    assert!(
        max.lacks
            .as_deref()
            .unwrap()
            .contains("database/roles/keycloak-migrate")
    );
    // The command line the README gives for the compose deployment parses.
    let args = [
        "pgwarden",
        "audit",
        "--config",
        "/etc/pgwarden/pgwarden.toml",
        "--format",
        "json",
    ];
    let parsed = std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(&args[1..])
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
}

#[test]
fn compose_keycloak_reaches_pgwarden_with_verify_full_and_the_password_of_its_verifier() {
    let compose = Compose::load();
    let (config, _root) = load_compose_config(&compose);
    let kc = compose.service("keycloak");
    let env = environment(kc);
    let url = env.get("KC_DB_URL").expect("KC_DB_URL");
    let rest = url
        .strip_prefix("jdbc:postgresql://")
        .expect("a pgjdbc URL");
    let (authority, rest) = rest.split_once('/').expect("host/database");
    let (db, query) = rest.split_once('?').expect("parameters");
    let params: BTreeMap<&str, &str> = query.split('&').filter_map(|p| p.split_once('=')).collect();
    assert_eq!(params.get("sslmode"), Some(&"verify-full"), "{url}");
    let (host, port) = authority.split_once(':').expect("host:port");
    assert_eq!(host, "pgwarden", "{url} must point at pgwarden");
    assert_eq!(
        port.parse::<u16>().unwrap(),
        config.listen.address.port(),
        "{url}: pgwarden's port"
    );
    assert!(
        config.routes.iter().any(|r| r.database == db),
        "no pgwarden route for database `{db}`"
    );

    // sslrootcert is the demo CA, mounted in Keycloak's container.
    let root_cert = params.get("sslrootcert").expect("sslrootcert");
    let certs_mount = mounts(kc)
        .into_iter()
        .find(|m| matches!(m, Mount::Volume { name, .. } if name == "certs"))
        .expect("keycloak mounts the certs volume");
    assert_eq!(
        *root_cert,
        format!("{}/ca.crt", certs_mount.target()),
        "{url}"
    );

    // KC_DB_USERNAME is a pgwarden user, and the password Keycloak reads is the
    // one the user's verifier was made from.
    let user = env.get("KC_DB_USERNAME").expect("KC_DB_USERNAME");
    let verifier = match config
        .users
        .iter()
        .find(|u| &u.name == user)
        .map(|u| &u.auth)
    {
        Some(UserAuth::Scram(v)) => v,
        other => panic!("pgwarden has no SCRAM user `{user}`: {other:?}"),
    };
    let entry = command(&kc["entrypoint"]).join(" ");
    let (secret, file, target) = compose
        .secrets_of(kc)
        .into_iter()
        .find(|(_, _, t)| entry.contains(&format!("KC_DB_PASSWORD=\"$(< {t})\"")))
        .expect("keycloak's entrypoint reads KC_DB_PASSWORD from one of its secrets");
    let password = std::fs::read_to_string(&file).unwrap();
    assert!(
        verifier_matches(verifier, password.trim_end_matches('\n')),
        "secret {secret} ({target}) is not the password of pgwarden's verifier for `{user}`"
    );
    assert!(
        !verifier_matches(verifier, "not the password"),
        "the comparison can fail"
    );
}

/// Recomputes a SCRAM-SHA-256 verifier (RFC 5802/7677) from a password: PBKDF2,
/// then StoredKey = H(HMAC(salted, "Client Key")), ServerKey = HMAC(salted, "Server Key").
fn verifier_matches(v: &ScramVerifier, password: &str) -> bool {
    use aws_lc_rs::{digest, hmac, pbkdf2};
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(v.iterations).unwrap(),
        &v.salt,
        password.as_bytes(),
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored = digest::digest(&digest::SHA256, client_key.as_ref());
    let server = hmac::sign(&key, b"Server Key");
    stored.as_ref() == v.stored_key.as_slice() && server.as_ref() == v.server_key.as_slice()
}

fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap();
    authority
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(authority)
        .to_owned()
}

#[tokio::test]
async fn demo_certificates_verify_for_their_service_names_and_keys_belong_to_their_servers() {
    let dir = tempfile::tempdir().unwrap();
    generate_certs(dir.path());
    let compose = Compose::load();
    let vault_uid: u32 = compose.service("vault")["user"]
        .as_str()
        .and_then(|u| u.split(':').next())
        .and_then(|u| u.parse().ok())
        .expect("vault runs as a numeric user");
    let pgwarden_uid = dockerfile_user().0;
    let ca = dir.path().join("ca.crt");
    for (name, uid) in [
        ("postgres", POSTGRES_IMAGE_UID),
        ("vault", vault_uid),
        ("pgwarden", pgwarden_uid),
    ] {
        let crt = dir.path().join(name).join("server.crt");
        let key = dir.path().join(name).join("server.key");
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!(
            meta.uid(),
            uid,
            "{name}'s key must belong to the uid it runs as"
        );
        assert_eq!(
            meta.permissions().mode() & 0o077,
            0,
            "{name}'s key is readable by others"
        );
        handshake(&crt, &key, &ca, name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        handshake(&crt, &key, &ca, "127.0.0.1")
            .await
            .unwrap_or_else(|e| panic!("{name} on 127.0.0.1: {e}"));
        assert!(
            handshake(&crt, &key, &ca, "keycloak").await.is_err(),
            "{name}'s certificate must not fit other names"
        );
    }
    let ca_dir = std::fs::metadata(dir.path().join("ca-private")).unwrap();
    assert_eq!(
        ca_dir.permissions().mode() & 0o077,
        0,
        "the CA key directory is private"
    );

    // A second run (every `docker compose up`) keeps what clients already trust.
    let before = snapshot(dir.path());
    generate_certs(dir.path());
    assert_eq!(
        before,
        snapshot(dir.path()),
        "gen-certs.sh changed valid certificates"
    );
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in [
        "ca.crt",
        "postgres/server.crt",
        "vault/server.crt",
        "pgwarden/server.crt",
        "pgwarden/server.key",
    ] {
        out.insert(PathBuf::from(sub), std::fs::read(dir.join(sub)).unwrap());
    }
    out
}

/// A TLS handshake in memory: a server with `crt`/`key` (loaded the way pgwarden
/// loads its listener's), a verify-full client trusting only `ca`.
async fn handshake(crt: &Path, key: &Path, ca: &Path, name: &str) -> Result<(), String> {
    let server = pgwarden::tls::server_config(crt, key).map_err(|e| e.to_string())?;
    let roots = Arc::new(pgwarden::tls::load_roots(ca).map_err(|e| e.to_string())?);
    let client = pgwarden::tls::client_config(roots, pgwarden::tls::Verification::Full)
        .map_err(|e| e.to_string())?;
    let server_name =
        rustls_pki_types::ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let connector = tokio_rustls::TlsConnector::from(client);
    let (s, c) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(acceptor.accept(a), connector.connect(server_name, b))
    })
    .await
    .map_err(|_| "handshake timed out".to_string())?;
    c.map_err(|e| format!("client: {e}"))?;
    s.map_err(|e| format!("server: {e}"))?;
    Ok(())
}

fn dockerfile_user() -> (u32, u32) {
    let (_, user) = dockerfile()
        .into_iter()
        .rfind(|(i, _)| i == "USER")
        .expect("USER");
    let (u, g) = user.split_once(':').unwrap_or((&user, &user));
    let u: u32 = u
        .parse()
        .unwrap_or_else(|_| panic!("USER {user} is not numeric"));
    (
        u,
        g.parse()
            .unwrap_or_else(|_| panic!("USER {user} is not numeric")),
    )
}

#[test]
fn dockerfile_builds_what_cargo_declares_with_a_new_enough_toolchain() {
    let instrs = dockerfile();
    let froms: Vec<&String> = instrs
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| a)
        .collect();
    assert!(froms.len() >= 2, "a multi-stage build");
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let rust_version = manifest["package"]["rust-version"]
        .as_str()
        .expect("rust-version");
    let builder = froms[0].split_whitespace().next().unwrap();
    let tag = builder
        .strip_prefix("rust:")
        .unwrap_or_else(|| panic!("the build stage uses {builder}, not rust:"));
    assert!(
        version(tag) >= version(rust_version),
        "{builder} is older than rust-version {rust_version}"
    );
    for f in &froms {
        assert_pinned(f.split_whitespace().next().unwrap(), "Dockerfile FROM");
    }
    assert!(
        instrs
            .iter()
            .any(|(i, a)| i == "RUN" && a.contains("cargo build --release --locked")),
        "the build runs cargo build --release --locked"
    );

    // COPY sources exist, get past .dockerignore, and hold every target Cargo declares.
    let ignore = read(".dockerignore");
    let mut copied = Vec::new();
    for (_, args) in instrs.iter().filter(|(i, _)| i == "COPY") {
        let words: Vec<&str> = args.split_whitespace().collect();
        if words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        let sources: Vec<&str> = words
            .iter()
            .filter(|w| !w.starts_with("--"))
            .copied()
            .collect();
        for s in &sources[..sources.len() - 1] {
            assert!(repo().join(s).exists(), "COPY {s}: not in the repository");
            assert!(
                !dockerignored(&ignore, s),
                "COPY {s}: excluded by .dockerignore"
            );
            copied.push(s.trim_end_matches('/').to_owned());
        }
    }
    for target in cargo_target_paths(&manifest) {
        assert!(
            copied
                .iter()
                .any(|c| target == *c || target.starts_with(&format!("{c}/"))),
            "Cargo.toml declares {target}, which the Dockerfile does not copy"
        );
    }

    let (uid, _) = dockerfile_user();
    assert_ne!(uid, 0, "the image runs as root");
    let exposed: BTreeSet<&str> = instrs
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace())
        .collect();
    assert_eq!(exposed, BTreeSet::from(["6432", "9187"]));
    let entry = instrs
        .iter()
        .find(|(i, _)| i == "ENTRYPOINT")
        .map(|(_, a)| exec_form(a));
    assert_eq!(entry, Some(vec!["pgwarden".to_owned()]));
}

/// `1.94.1-bookworm` → (1, 94, 1).
fn version(s: &str) -> (u32, u32, u32) {
    let numeric = s.split('-').next().unwrap();
    let mut parts = numeric.split('.').map(|p| {
        p.parse::<u32>()
            .unwrap_or_else(|_| panic!("`{s}` is not a version"))
    });
    (
        parts.next().unwrap(),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Whether .dockerignore keeps `path` out of the build context. Handles the
/// forms the file uses (`*`, names, `!` exceptions) and refuses the rest.
fn dockerignored(ignore: &str, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    let mut ignored = false;
    for line in ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (negate, pattern) = match line.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, line),
        };
        assert!(
            pattern == "*" || !pattern.contains(['*', '?', '[']),
            ".dockerignore pattern `{line}` is beyond what this check understands"
        );
        let pattern = pattern.trim_matches('/');
        if pattern == "*" || path == pattern || path.starts_with(&format!("{pattern}/")) {
            ignored = !negate;
        }
    }
    ignored
}

fn cargo_target_paths(manifest: &toml::Table) -> Vec<String> {
    let mut out = vec![
        manifest
            .get("lib")
            .and_then(|l| l.get("path"))
            .and_then(|p| p.as_str())
            .unwrap_or("src/lib.rs")
            .to_owned(),
    ];
    for kind in ["bin", "bench", "test", "example"] {
        for t in manifest
            .get(kind)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let path = t
                .get("path")
                .and_then(|p| p.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    let name = t["name"].as_str().unwrap();
                    match kind {
                        "bin" => format!("src/bin/{name}.rs"),
                        "bench" => format!("benches/{name}.rs"),
                        k => format!("{k}s/{name}.rs"),
                    }
                });
            // Tests and examples are not built by `cargo build --release`, but
            // cargo still checks that declared ones exist.
            out.push(path);
        }
    }
    out
}

#[test]
fn every_pgwarden_command_line_in_the_deployment_files_is_accepted() {
    let instrs = dockerfile();
    let cmd = exec_form(&instrs.iter().rfind(|(i, _)| i == "CMD").unwrap().1);
    assert_cli_accepts(&cmd, "Dockerfile CMD");
    let health = instrs
        .iter()
        .find(|(i, _)| i == "HEALTHCHECK")
        .expect("HEALTHCHECK")
        .1
        .clone();
    let health = exec_form(
        health
            .split_once("CMD")
            .expect("HEALTHCHECK … CMD [...]")
            .1
            .trim(),
    );
    assert_eq!(health[0], "pgwarden");
    assert_cli_accepts(&health[1..], "Dockerfile HEALTHCHECK");

    let compose = Compose::load();
    let test = command(&compose.service("pgwarden")["healthcheck"]["test"]);
    assert_eq!(
        &test[..2],
        ["CMD", "pgwarden"],
        "compose health check {test:?}"
    );
    assert_cli_accepts(&test[2..], "docker-compose.yml pgwarden healthcheck");
    assert_cli_accepts(
        &pgwarden_args(&compose),
        "docker-compose.yml pgwarden command",
    );

    for (_, key, value) in unit("deploy/systemd/pgwarden.service") {
        if key == "ExecReload" {
            assert_eq!(value, "/bin/kill -HUP $MAINPID", "SIGHUP reloads");
        } else if key.starts_with("Exec") {
            let words: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
            assert_eq!(words[0], "/usr/local/bin/pgwarden", "{key}");
            assert_cli_accepts(&words[1..], &format!("pgwarden.service {key}"));
        }
    }
}

#[test]
#[should_panic(expected = "does not accept")]
fn the_command_line_check_fails_on_an_unknown_flag() {
    assert_cli_accepts(
        &[
            "run".into(),
            "--config".into(),
            "x".into(),
            "--no-such-flag".into(),
        ],
        "control",
    );
}

#[test]
#[should_panic(expected = "requires")]
fn the_command_line_check_fails_on_a_missing_required_flag() {
    assert_cli_accepts(&["run".into()], "control");
}

const UNIT: &str = "deploy/systemd/pgwarden.service";

fn unit_values(key: &str) -> Vec<String> {
    unit(UNIT)
        .into_iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v)
        .collect()
}

fn unit_value(key: &str) -> Option<String> {
    unit_values(key).pop()
}

#[test]
fn systemd_unit_passes_systemd_analyze_and_is_hardened() {
    let expect = [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("SupplementaryGroups", "pgwarden"),
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
        ("Restart", "on-failure"),
    ];
    for (key, value) in expect {
        assert_eq!(unit_value(key).as_deref(), Some(value), "{UNIT}: {key}");
    }
    assert!(
        unit_values("SystemCallFilter")
            .iter()
            .any(|v| v == "@system-service")
    );
    // Type=notify and ExecReload= because pgwarden implements them.
    let src = all_sources();
    assert!(src.contains("\"NOTIFY_SOCKET\"") && src.contains("SignalKind::hangup()"));
    // systemd waits for READY=1 longer than pgwarden waits for its sources.
    let start = humantime::parse_duration(&unit_value("TimeoutStartSec").unwrap()).unwrap();
    assert!(
        start > pgwarden::daemon::READY_WAIT,
        "TimeoutStartSec {start:?}"
    );
    // The watchdog is fed at half its interval, well within it.
    let watchdog = humantime::parse_duration(&unit_value("WatchdogSec").unwrap()).unwrap();
    assert!(
        watchdog >= std::time::Duration::from_secs(10),
        "WatchdogSec {watchdog:?}"
    );
    // The group the unit reads its reloadable secrets with is the one sysusers creates.
    let sysusers = read("deploy/systemd/pgwarden.sysusers.conf");
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["g", "pgwarden", "-"]),
        "{sysusers}"
    );

    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart's program exists: point it at the built
    // binary, and change nothing else.
    let text = read(UNIT);
    assert!(text.contains("/usr/local/bin/pgwarden "));
    let unit_path = dir.path().join("pgwarden.service");
    std::fs::write(
        &unit_path,
        text.replace("/usr/local/bin/pgwarden ", &format!("{} ", pgwarden_bin())),
    )
    .unwrap();
    let out = Command::new("timeout")
        .args(["120", "systemd-analyze", "verify", "--man=no"])
        .arg(&unit_path)
        .output()
        .expect("systemd-analyze (Debian package systemd; .ci/run installs it)");
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
            .arg(&unit_path),
        "systemd-analyze security (exposure 2.0 at most)",
    );
    assert!(security.contains("Overall exposure level"), "{security}");
}

#[test]
fn systemd_analyze_verify_catches_a_bad_unit() {
    let dir = tempfile::tempdir().unwrap();
    let unit_path = dir.path().join("bad.service");
    std::fs::write(
        &unit_path,
        format!(
            "[Service]\nExecStart={} run\nNoSuchSetting=1\n",
            pgwarden_bin()
        ),
    )
    .unwrap();
    let out = Command::new("timeout")
        .args(["120", "systemd-analyze", "verify", "--man=no"])
        .arg(&unit_path)
        .output()
        .expect("systemd-analyze");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NoSuchSetting"),
        "an unknown key is reported"
    );
}

fn all_sources() -> String {
    fn walk(dir: &Path, out: &mut String) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let mut s = String::new();
    walk(&repo().join("src"), &mut s);
    s
}

#[test]
fn systemd_example_configuration_passes_validation_with_the_units_credentials() {
    // The install layout of deploy/systemd/README.md.
    let root = tempfile::tempdir().unwrap();
    let pki = pgwarden::embedded::pki::Pki::new("test CA").unwrap();
    let server = pki.issue_server(&["pgwarden.internal"]).unwrap();
    let put = |path: &str, text: &str| {
        let p = in_root(root.path(), path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    use secrecy::ExposeSecret;
    put(
        "/etc/pgwarden/pgwarden.toml",
        &read("deploy/systemd/pgwarden.toml"),
    );
    put("/etc/pgwarden/tls/server.crt", &server.cert_pem);
    put(
        "/etc/pgwarden/secrets/server.key",
        server.key_pem.expose_secret(),
    );
    put("/etc/pgwarden/tls/db-ca.crt", pki.ca_cert_pem());
    put("/etc/pgwarden/tls/vault-ca.crt", pki.ca_cert_pem());
    let password = pgwarden::auth::verifier::generate_password(40);
    put(
        "/etc/pgwarden/secrets/keycloak.verifier",
        ScramVerifier::from_password(&password)
            .to_text()
            .expose_secret(),
    );
    put(
        "/etc/pgwarden/secrets/role_id",
        "00000000-0000-4000-8000-000000000001",
    );
    put(
        "/etc/pgwarden/secrets/secret_id",
        "00000000-0000-4000-8000-000000000002",
    );

    // What systemd does at start: LoadCredential=NAME:SOURCE copies SOURCE to
    // /run/credentials/<unit>/NAME.
    let creds = values_or_panic("LoadCredential");
    for c in &creds {
        let (name, source) = c.split_once(':').expect("LoadCredential=NAME:PATH");
        copy_tree(
            &in_root(root.path(), source),
            &in_root(
                root.path(),
                &format!("/run/credentials/pgwarden.service/{name}"),
            ),
        );
    }
    let exec = unit_value("ExecStart").unwrap();
    let words: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
    let path = config_flag(&words);
    let config = pgwarden::config::load_in_root(root.path(), Path::new(&path), std::iter::empty())
        .unwrap_or_else(|e| {
            panic!("deploy/systemd/pgwarden.toml with the unit's credentials:\n{e}")
        });
    // The AppRole comes from the credentials directory; the secrets a reload
    // re-reads (a rotated key, a new verifier) from /etc/pgwarden/secrets,
    // which the unit's group may read, since the credentials copies are not
    // refreshed by a reload.
    let text = read("deploy/systemd/pgwarden.toml");
    for name in ["role_id", "secret_id"] {
        assert!(
            text.contains(&format!("/run/credentials/pgwarden.service/{name}")),
            "{name}"
        );
    }
    for name in ["server.key", "keycloak.verifier"] {
        assert!(
            text.contains(&format!("\"/etc/pgwarden/secrets/{name}\"")),
            "{name}"
        );
        assert!(
            !creds.iter().any(|c| c.starts_with(&format!("{name}:"))),
            "{name} would be a copy that a reload does not refresh"
        );
    }
    let stop = humantime::parse_duration(&unit_value("TimeoutStopSec").unwrap()).unwrap();
    let needed = config.shutdown.grace + config.shutdown.revoke_timeout + SESSION_WIND_DOWN;
    assert!(
        stop > needed,
        "TimeoutStopSec {stop:?} ≤ the drain's {needed:?}"
    );
}

fn values_or_panic(key: &str) -> Vec<String> {
    let v = unit_values(key);
    assert!(!v.is_empty(), "{UNIT} has no {key}=");
    v
}

#[test]
fn load_in_root_reads_every_file_under_the_root_and_nowhere_else() {
    let root = tempfile::tempdir().unwrap();
    let pki = pgwarden::embedded::pki::Pki::new("test CA").unwrap();
    let server = pki.issue_server(&["localhost"]).unwrap();
    use secrecy::ExposeSecret;
    let etc = in_root(root.path(), "/etc/pgwarden");
    std::fs::create_dir_all(etc.join("tls")).unwrap();
    std::fs::write(etc.join("tls/server.crt"), &server.cert_pem).unwrap();
    std::fs::write(etc.join("tls/server.key"), server.key_pem.expose_secret()).unwrap();
    std::fs::write(etc.join("ca.crt"), pki.ca_cert_pem()).unwrap();
    let verifier = ScramVerifier::from_password(&"pw".to_owned().into()).to_text();
    let config = |ca: &str| {
        format!(
            r#"[listen]
tls_cert_file = "/etc/pgwarden/tls/server.crt"
tls_key_file = "tls/server.key"
allow = ["127.0.0.1"]
[[users]]
name = "u"
scram_verifier = "{}"
[[routes]]
database = "d"
users = ["u"]
upstream = {{ host = "db", ca_file = "{ca}" }}
credentials = "c"
[credentials.c]
source = "postgres"
admin_user = "a"
admin_password = "p"
"#,
            verifier.expose_secret()
        )
    };
    std::fs::write(etc.join("pgwarden.toml"), config("/etc/pgwarden/ca.crt")).unwrap();
    let c = pgwarden::config::load_in_root(
        root.path(),
        Path::new("/etc/pgwarden/pgwarden.toml"),
        std::iter::empty(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.listen.tls.unwrap().key_file,
        etc.join("tls/server.key"),
        "relative to the file, under the root"
    );

    // A file that exists on this machine but not under the root is missing.
    let host_file = "/etc/hostname";
    assert!(Path::new(host_file).exists() || Path::new("/etc/passwd").exists());
    let host_file = if Path::new(host_file).exists() {
        host_file
    } else {
        "/etc/passwd"
    };
    std::fs::write(etc.join("pgwarden.toml"), config(host_file)).unwrap();
    let e = pgwarden::config::load_in_root(
        root.path(),
        Path::new("/etc/pgwarden/pgwarden.toml"),
        std::iter::empty(),
    )
    .expect_err("the CA is not under the root");
    let shown = in_root(root.path(), host_file).display().to_string();
    assert!(e.to_string().contains(&shown), "{e}");
}

#[tokio::test]
async fn postgres_init_script_sets_passwords_without_logging_them() {
    use pgwarden::embedded::cluster::{Cluster, ClusterOptions};
    use secrecy::ExposeSecret;
    let cluster = Cluster::start(ClusterOptions {
        settings: vec![("log_statement".into(), "all".into())],
        ..ClusterOptions::default()
    })
    .await
    .expect("start a cluster");
    let db = cluster.connect("postgres").await.unwrap();

    let secrets = tempfile::tempdir().unwrap();
    let admin_pw = pgwarden::auth::verifier::generate_password(40);
    let exporter_pw = pgwarden::auth::verifier::generate_password(40);
    std::fs::write(
        secrets.path().join("vault_admin_password"),
        admin_pw.expose_secret(),
    )
    .unwrap();
    std::fs::write(
        secrets.path().join("postgres_exporter_password"),
        format!("{}\n", exporter_pw.expose_secret()),
    )
    .unwrap();
    std::fs::write(secrets.path().join("ca.crt"), cluster.ca_cert_pem()).unwrap();
    let script = || {
        let mut c = Command::new("sh");
        c.arg(repo().join("deploy/compose/postgres-init.sh"))
            .env("POSTGRES_USER", cluster.superuser())
            .env("SECRETS_DIR", secrets.path())
            .env("PGHOST", cluster.host())
            .env("PGPORT", cluster.port().to_string())
            .env("PGPASSWORD", cluster.superuser_password().expose_secret())
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", secrets.path().join("ca.crt"));
        c
    };
    // Without the role bootstrap.sql creates, the script fails (and initialisation with it).
    let out = script().output().unwrap();
    assert!(
        !out.status.success(),
        "postgres-init.sh succeeded without vault_admin"
    );
    db.batch_execute("CREATE ROLE vault_admin NOLOGIN CREATEROLE")
        .await
        .unwrap();
    run_ok(&mut script(), "deploy/compose/postgres-init.sh");

    for (user, pw) in [
        ("vault_admin", &admin_pw),
        ("postgres_exporter", &exporter_pw),
    ] {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(cluster.host())
            .port(cluster.port())
            .user(user)
            .password(pw.expose_secret())
            .dbname("postgres")
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let tls = pgwarden::tls::pg_connector::RustlsConnect::new(
            pgwarden::tls::pg_connector::verify_full_client_config(
                cluster.ca_cert_pem().as_bytes(),
            )
            .unwrap(),
        );
        let (client, conn) = cfg
            .connect(tls)
            .await
            .unwrap_or_else(|e| panic!("log in as {user}: {e}"));
        tokio::spawn(conn);
        let member: bool = client
            .query_one(
                "SELECT pg_has_role(current_user, 'pg_monitor', 'member')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(member, user == "postgres_exporter", "{user} in pg_monitor");
    }
    let log = cluster.server_log();
    assert!(
        log.contains("log_statement"),
        "the server logged the script's statements:\n{log}"
    );
    for pw in [&admin_pw, &exporter_pw] {
        assert!(
            !log.contains(pw.expose_secret()),
            "a password reached the server log"
        );
    }
    let _ = cluster.stop().await;
}

#[test]
fn deploy_scripts_pass_shellcheck() {
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/compose"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .collect();
    assert!(scripts.len() >= 3, "{scripts:?}");
    // vault-init.sh runs it with the vault image's busybox sh.
    scripts.push(repo().join("config/vault/setup.sh"));
    run_ok(
        Command::new("shellcheck").arg("--shell=sh").args(&scripts),
        "shellcheck (Debian package shellcheck; .ci/run installs it)",
    );
}

#[test]
fn monitoring_configuration_names_compose_services_and_mount_paths() {
    let compose = Compose::load();
    // Prometheus: every scrape target is a compose service, on the port it serves.
    let prom_mounts = mounts(compose.service("prometheus"));
    let prom: Yaml = yaml_file("config/prometheus/prometheus.yml");
    let expected: BTreeMap<&str, u16> = BTreeMap::from([
        ("pgwarden", 9187),
        ("postgres-exporter", 9187),
        ("keycloak", 9000),
    ]);
    let mut seen = BTreeSet::new();
    for job in list(&prom["scrape_configs"]) {
        for sc in list(&job["static_configs"]) {
            for t in list(&sc["targets"]) {
                let t = t.as_str().expect("target").to_owned();
                let (host, port) = t.rsplit_once(':').expect("host:port");
                if host == "localhost" || host == "127.0.0.1" {
                    continue; // Prometheus itself
                }
                assert!(
                    compose.has_service(host),
                    "prometheus.yml scrapes `{t}`, not a compose service"
                );
                if let Some(p) = expected.get(host) {
                    assert_eq!(port.parse::<u16>().unwrap(), *p, "{t}");
                }
                seen.insert(host.to_owned());
            }
        }
    }
    for host in expected.keys() {
        assert!(
            seen.contains(*host),
            "prometheus.yml does not scrape {host}"
        );
    }
    for rule in list(&prom["rule_files"]) {
        let r = rule.as_str().unwrap();
        let abs = if r.starts_with('/') {
            r.to_owned()
        } else {
            format!("/etc/prometheus/{r}")
        };
        assert!(
            prom_mounts.iter().any(|m| m.target() == abs),
            "rule file {r} is not mounted in the prometheus container"
        );
    }
    // Keycloak serves metrics on its management port.
    assert_eq!(
        environment(compose.service("keycloak"))
            .get("KC_HTTP_MANAGEMENT_PORT")
            .map(String::as_str),
        Some("9000")
    );
    assert_eq!(
        environment(compose.service("keycloak"))
            .get("KC_METRICS_ENABLED")
            .map(String::as_str),
        Some("true")
    );

    // Grafana: dashboards are read where compose mounts them; data sources name services.
    let graf_mounts = mounts(compose.service("grafana"));
    let provisioning = repo().join("config/grafana/provisioning");
    let mut providers = 0;
    for f in yaml_files(&provisioning.join("dashboards")) {
        for p in list(&f["providers"]) {
            let path = p["options"]["path"]
                .as_str()
                .expect("provider options.path");
            assert!(
                graf_mounts
                    .iter()
                    .any(|m| path == m.target() || path.starts_with(&format!("{}/", m.target()))),
                "dashboard provider path {path} is not mounted in the grafana container"
            );
            providers += 1;
        }
    }
    assert!(
        providers > 0,
        "no dashboard provider in config/grafana/provisioning/dashboards"
    );
    for f in yaml_files(&provisioning.join("datasources")) {
        for d in list(&f["datasources"]) {
            if let Some(url) = d["url"].as_str() {
                let host = host_of(url);
                assert!(
                    compose.has_service(&host),
                    "data source url {url} names no compose service"
                );
            }
        }
    }
}

fn yaml_file(rel: &str) -> Yaml {
    yaml_rust2::YamlLoader::load_from_str(&read(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .remove(0)
}

fn yaml_files(dir: &Path) -> Vec<Yaml> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", rel(dir)));
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .map(|p| yaml_file(&rel(&p)))
        .collect()
}

fn rel(p: &Path) -> String {
    p.strip_prefix(repo()).unwrap_or(p).display().to_string()
}

/// A stand-in for the `vault` CLI with the documented exit codes (`status`: 0
/// unsealed, 2 sealed, 1 unreachable; `operator init -status`: 0 initialised,
/// 2 not) and `operator init`'s table output; it keeps its state in $STUB.
const VAULT_STUB: &str = r#"#!/bin/sh
s=$STUB
echo "$*" >> "$s/calls"
case "$*" in
  status)
    n=$(cat "$s/unreachable" 2>/dev/null || echo 0)
    if [ "$n" -gt 0 ]; then echo $((n - 1)) > "$s/unreachable"; exit 1; fi
    [ -f "$s/unsealed" ] && exit 0
    exit 2 ;;
  "operator init -status") [ -f "$s/initialised" ] && exit 0; exit 2 ;;
  "operator init -key-shares=1 -key-threshold=1")
    [ -f "$s/initialised" ] && { echo "already initialised" >&2; exit 2; }
    touch "$s/initialised"
    printf 'Unseal Key 1: stub-unseal-key\n\nInitial Root Token: stub-root-token\n\nVault initialized with 1 key shares and a key threshold of 1.\n' ;;
  "operator unseal stub-unseal-key") touch "$s/unsealed" ;;
  *) echo "unexpected: vault $*" >&2; exit 1 ;;
esac
"#;

/// What config/vault/setup.sh must do, as far as vault-init.sh relies on it.
const SETUP_STUB: &str = r#"#!/bin/sh
set -eu
[ "$VAULT_TOKEN" = stub-root-token ] || { echo "wrong token" >&2; exit 1; }
echo run >> "$STUB/setup-runs"
printf 'role-%s' "$(wc -l < "$STUB/setup-runs")" > "$PGWARDEN_APPROLE_OUT_DIR/role_id"
printf 'secret' > "$PGWARDEN_APPROLE_OUT_DIR/secret_id"
mkdir -p "$PGWARDEN_BACKUP_APPROLE_OUT_DIR"
printf 'backup-role' > "$PGWARDEN_BACKUP_APPROLE_OUT_DIR/role_id"
printf 'backup-secret' > "$PGWARDEN_BACKUP_APPROLE_OUT_DIR/secret_id"
"#;

#[test]
fn vault_init_initialises_once_unseals_every_time_and_hands_the_approle_to_pgwarden() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["bin", "stub", "keys", "approle"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let exe = |p: PathBuf, text: &str| {
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    exe(d.join("bin/vault"), VAULT_STUB);
    exe(d.join("setup.sh"), SETUP_STUB);
    std::fs::write(d.join("stub/unreachable"), "3").unwrap(); // Vault still starting
    let run = |setup: &Path| {
        Command::new("sh")
            .arg(repo().join("deploy/compose/vault-init.sh"))
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    d.join("bin").display(),
                    std::env::var("PATH").unwrap()
                ),
            )
            .env("STUB", d.join("stub"))
            .env("VAULT_ADDR", "https://vault:8200")
            .env("VAULT_CACERT", "/certs/ca.crt")
            .env("VAULT_KEYS_DIR", d.join("keys"))
            .env("VAULT_SETUP_SCRIPT", setup)
            .env("PGWARDEN_APPROLE_OUT_DIR", d.join("approle"))
            .env("PGWARDEN_UID", "65532")
            .env("PGWARDEN_BACKUP_APPROLE_OUT_DIR", d.join("backup-approle"))
            .env("PGWARDEN_BACKUP_UID", "999")
            .output()
            .unwrap()
    };
    let check = |out: &std::process::Output, runs: usize| {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "vault-init.sh failed:\n{all}");
        assert!(
            !all.contains("stub-root-token") && !all.contains("stub-unseal-key"),
            "a secret was printed:\n{all}"
        );
        for (dir, uid) in [("approle", 65532), ("backup-approle", 999)] {
            for f in ["role_id", "secret_id"] {
                let meta = std::fs::metadata(d.join(dir).join(f)).unwrap();
                assert_eq!(
                    (meta.uid(), meta.permissions().mode() & 0o777),
                    (uid, 0o400),
                    "{dir}/{f}"
                );
            }
        }
        for f in ["unseal-key", "root-token"] {
            let meta = std::fs::metadata(d.join("keys").join(f)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o077, 0, "{f} is private");
        }
        let setup_runs = std::fs::read_to_string(d.join("stub/setup-runs")).unwrap();
        assert_eq!(setup_runs.lines().count(), runs);
    };
    check(&run(&d.join("setup.sh")), 1);
    // A restart: Vault comes back sealed; vault-init must not initialise again.
    std::fs::remove_file(d.join("stub/unsealed")).unwrap();
    check(&run(&d.join("setup.sh")), 2);
    let calls = std::fs::read_to_string(d.join("stub/calls")).unwrap();
    assert_eq!(
        calls.matches("operator init -key-shares").count(),
        1,
        "{calls}"
    );
    assert_eq!(calls.matches("operator unseal").count(), 2, "{calls}");
    assert!(
        !d.join("keys/init.out").exists(),
        "the raw init output is removed"
    );

    // A setup script that writes no AppRole files is a failure, not a silent success.
    exe(
        d.join("lazy-setup.sh"),
        "#!/bin/sh\nrm -f \"$PGWARDEN_APPROLE_OUT_DIR\"/*\n",
    );
    let out = run(&d.join("lazy-setup.sh"));
    assert!(
        !out.status.success(),
        "vault-init.sh must fail when setup.sh writes no role_id"
    );
}
