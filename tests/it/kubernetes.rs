//! deploy/kubernetes/ holds together, checked offline: every manifest against the
//! Kubernetes schemas (`kubernetes-validate --strict`, for the oldest version the native
//! sidecar needs and the newest); each shape's pgwarden configuration with pgwarden's own
//! loader against the file system its mounts make; its ports, probes, grace period and
//! Vault login against pgwarden's defaults and config/vault/setup.sh; its command line
//! with pgwarden's parser; and the NetworkPolicy, Service and PodDisruptionBudget against
//! the Deployment they serve.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgwarden::config::raw::{
    DEFAULT_ADMIN_ADDRESS, DEFAULT_LISTEN_ADDRESS, DEFAULT_REVOKE_TIMEOUT, DEFAULT_SHUTDOWN_GRACE,
};
use pgwarden::config::{Config, VaultAuthConfig};
use secrecy::ExposeSecret;
use yaml_rust2::{Yaml, YamlLoader};

use crate::deploy_files::SESSION_WIND_DOWN;
use crate::deploy_files::files::{assert_cli_accepts, in_root, read, repo};

fn yaml(rel: &str) -> Yaml {
    YamlLoader::load_from_str(&read(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .remove(0)
}

fn manifests(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(manifests(&p));
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn kubernetes_validate(version: &str, files: &[PathBuf]) -> Result<(), String> {
    let out = Command::new(crate::support::venv::bin("kubernetes-validate"))
        .args(["--strict", "-k", version])
        .args(files)
        .output()
        .expect("kubernetes-validate (scripts/requirements-test.txt)");
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
fn every_manifest_validates_against_the_kubernetes_schemas() {
    let files = manifests(&repo().join("deploy/kubernetes"));
    assert!(files.len() >= 13, "{files:?}");
    // Native sidecars need 1.29; the newest schema the tool carries as well.
    for version in ["1.29.0", "1.37.0"] {
        if let Err(e) = kubernetes_validate(version, &files) {
            panic!("kubernetes-validate --strict -k {version}:\n{e}");
        }
    }
    // The check fails on a field the API does not have.
    let bad = tempfile::tempdir().unwrap();
    let text = read("deploy/kubernetes/standalone/deployment.yaml")
        .replace("  replicas: 2\n", "  replicas: 2\n  replica: 2\n");
    std::fs::write(bad.path().join("deployment.yaml"), text).unwrap();
    assert!(kubernetes_validate("1.37.0", &[bad.path().join("deployment.yaml")]).is_err());
}

/// One shape: its Deployment, ConfigMap and which container is pgwarden.
struct Shape {
    deployment: Yaml,
    configmap: Yaml,
    sidecar: bool,
}

impl Shape {
    fn load(dir: &str) -> Shape {
        Shape {
            deployment: yaml(&format!("deploy/kubernetes/{dir}/deployment.yaml")),
            configmap: yaml(&format!("deploy/kubernetes/{dir}/configmap.yaml")),
            sidecar: dir == "sidecar",
        }
    }

    fn pod(&self) -> &Yaml {
        &self.deployment["spec"]["template"]["spec"]
    }

    fn pgwarden(&self) -> &Yaml {
        let list = if self.sidecar {
            &self.pod()["initContainers"]
        } else {
            &self.pod()["containers"]
        };
        list.as_vec()
            .unwrap()
            .iter()
            .find(|c| c["name"].as_str() == Some("pgwarden"))
            .expect("a pgwarden container")
    }

    fn volume(&self, name: &str) -> &Yaml {
        self.pod()["volumes"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    fn container_port(&self, name: &str) -> u16 {
        self.pgwarden()["ports"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
            .as_i64()
            .unwrap() as u16
    }

    /// The pod's file system as pgwarden sees it, from its mounts: the ConfigMap's
    /// files, a certificate and key for `names` from a test CA, a verifier, the CAs and
    /// the projected token. Returns the root and the configuration's path in it.
    fn file_system(&self, names: &[&str]) -> (tempfile::TempDir, String) {
        let root = tempfile::tempdir().unwrap();
        let pki = pgwarden::embedded::pki::Pki::new("test CA").unwrap();
        let cert = pki.issue_server(names).unwrap();
        let put = |path: String, text: &str| {
            let p = in_root(root.path(), &path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        let mut config = None;
        for m in self.pgwarden()["volumeMounts"].as_vec().unwrap() {
            let at = m["mountPath"].as_str().unwrap();
            assert!(
                m["subPath"].is_badvalue(),
                "{at}: a subPath mount never sees an update"
            );
            assert_eq!(m["readOnly"].as_bool(), Some(true), "{at} is read-only");
            let volume = self.volume(m["name"].as_str().unwrap());
            if let Some(cm) = volume["configMap"]["name"].as_str() {
                if cm == self.configmap["metadata"]["name"].as_str().unwrap() {
                    for (key, value) in self.configmap["data"].as_hash().unwrap() {
                        let key = key.as_str().unwrap();
                        put(format!("{at}/{key}"), value.as_str().unwrap());
                        if key.ends_with(".toml") {
                            config = Some(format!("{at}/{key}"));
                        }
                    }
                } else {
                    for item in volume["configMap"]["items"].as_vec().unwrap() {
                        let path = item["path"].as_str().unwrap();
                        put(format!("{at}/{path}"), pki.ca_cert_pem());
                    }
                }
            } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
                for item in volume["secret"]["items"].as_vec().unwrap() {
                    let (key, path) = (
                        item["key"].as_str().unwrap(),
                        item["path"].as_str().unwrap(),
                    );
                    let text = match (secret, key) {
                        ("pgwarden-tls", "tls.crt") => cert.cert_pem.clone(),
                        ("pgwarden-tls", "tls.key") => cert.key_pem.expose_secret().to_owned(),
                        ("pgwarden-users", _) => {
                            let pw = pgwarden::auth::verifier::generate_password(40);
                            pgwarden::auth::ScramVerifier::from_password(&pw)
                                .to_text()
                                .expose_secret()
                                .to_owned()
                        }
                        other => panic!("a secret this test does not model: {other:?}"),
                    };
                    put(format!("{at}/{path}"), &text);
                }
            } else if let Some(sources) = volume["projected"]["sources"].as_vec() {
                for s in sources {
                    let token = &s["serviceAccountToken"];
                    put(
                        format!("{at}/{}", token["path"].as_str().unwrap()),
                        "eyJ.test.jwt",
                    );
                }
            } else {
                panic!("a volume this test does not model: {volume:?}");
            }
        }
        (root, config.expect("the configuration is mounted"))
    }

    fn load_config(&self, names: &[&str]) -> (Config, tempfile::TempDir) {
        let (root, path) = self.file_system(names);
        let args: Vec<String> = self.pgwarden()["args"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        assert_cli_accepts(&args, "the pgwarden container's args");
        let flag = args.iter().position(|a| a == "--config").unwrap();
        assert_eq!(args[flag + 1], path, "--config names the mounted file");
        let config =
            pgwarden::config::load_in_root(root.path(), Path::new(&path), std::iter::empty())
                .unwrap_or_else(|e| panic!("{path} in the pod is invalid:\n{e}"));
        (config, root)
    }
}

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// What both shapes must do the same way.
fn check_common(shape: &Shape, config: &Config) {
    let c = shape.pgwarden();
    let pod = shape.pod();
    // Ports: pgwarden's defaults, and the container declares the admin one.
    assert_eq!(
        config.listen.address.port(),
        port_of(DEFAULT_LISTEN_ADDRESS)
    );
    let admin = config.admin.as_ref().expect("[admin]");
    assert_eq!(admin.address.port(), port_of(DEFAULT_ADMIN_ADDRESS));
    assert_eq!(shape.container_port("admin"), admin.address.port());
    assert!(
        admin.address.ip().is_unspecified(),
        "the kubelet reaches the admin port"
    );

    // Probes: /readyz to start and serve, /healthz to live, on the admin port.
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), Some("admin"), "{probe}");
        let timeout = c[probe]["timeoutSeconds"].as_i64().unwrap_or(1) as u64;
        assert!(
            Duration::from_secs(timeout) < admin.request_timeout,
            "{probe}: pgwarden would still be answering"
        );
    }
    // The start-up probe waits at least as long as systemd would for READY.
    let start = &c["startupProbe"];
    let patience =
        start["periodSeconds"].as_i64().unwrap() * start["failureThreshold"].as_i64().unwrap();
    assert!(Duration::from_secs(patience as u64) > pgwarden::daemon::READY_WAIT);
    // The probes come from the node: [admin] allow must not refuse a node address
    // (this test takes 10.0.0.0/8 for the nodes; the file says to narrow it).
    let allowed = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        admin.allow.iter().any(|n| n.contains(&ip))
    };
    assert!(
        allowed("10.1.2.3"),
        "[admin] allow {:?} refuses the kubelet",
        admin.allow
    );
    assert!(
        !allowed("192.0.2.1"),
        "[admin] allow {:?} is open to all",
        admin.allow
    );

    // The grace period covers the drain and the revocations, at the file's values
    // and at pgwarden's defaults.
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_i64().unwrap() as u64);
    let needed = (config.shutdown.grace + config.shutdown.revoke_timeout)
        .max(DEFAULT_SHUTDOWN_GRACE + DEFAULT_REVOKE_TIMEOUT)
        + SESSION_WIND_DOWN;
    assert!(
        grace > needed,
        "terminationGracePeriodSeconds {grace:?} ≤ {needed:?}"
    );

    // Hardened: non-root, read-only root, no capabilities, no escalation, seccomp.
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
    let non_root = sc["runAsNonRoot"]
        .as_bool()
        .or(pod["securityContext"]["runAsNonRoot"].as_bool());
    assert_eq!(non_root, Some(true));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    let uid = sc["runAsUser"]
        .as_i64()
        .or(pod["securityContext"]["runAsUser"].as_i64());
    let image_user = crate::deploy_files::files::dockerfile()
        .into_iter()
        .rfind(|(i, _)| i == "USER")
        .map(|(_, u)| u.split(':').next().unwrap().parse::<i64>().unwrap());
    assert_eq!(uid, image_user, "the image's user");
    for what in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                !c["resources"][what][res].is_badvalue(),
                "resources.{what}.{res}"
            );
        }
    }

    // Vault: Kubernetes auth with the projected token (audience set), the role
    // config/vault/setup.sh binds.
    let vault = config.vault.as_ref().expect("[vault]");
    let VaultAuthConfig::Kubernetes { role, jwt_file, .. } = &vault.auth else {
        panic!("Kubernetes auth, not {:?}", vault.auth)
    };
    let setup = read("config/vault/setup.sh");
    assert!(
        setup.contains(&format!("readonly APPROLE={role}\n")),
        "setup.sh's role is {role}"
    );
    let token = shape.volume("vault-token");
    let sat = &token["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(sat["audience"].as_str(), Some("vault"));
    assert!(setup.contains("k8s_audience=${PGWARDEN_K8S_AUDIENCE:-vault}"));
    let mount = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some("vault-token"))
        .unwrap()["mountPath"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        jwt_file.ends_with(format!(
            "{}/{}",
            mount.trim_start_matches('/'),
            sat["path"].as_str().unwrap()
        )),
        "{jwt_file:?}"
    );
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));

    // The listener's certificate and key come from a Secret mounted whole, so a
    // rotation reaches the files pgwarden watches.
    let tls = config.listen.tls.as_ref().expect("TLS");
    assert!(config.listen.require_tls);
    assert!(tls.cert_file.ends_with("tls.crt") && tls.key_file.ends_with("tls.key"));
}

#[test]
fn the_sidecar_shape_starts_pgwarden_first_and_keycloak_reaches_it_on_loopback() {
    let shape = Shape::load("sidecar");
    let (config, _root) = shape.load_config(&["localhost"]);
    check_common(&shape, &config);
    let c = shape.pgwarden();
    assert_eq!(
        c["restartPolicy"].as_str(),
        Some("Always"),
        "a native sidecar"
    );
    assert!(config.listen.address.ip().is_loopback());
    for n in &config.listen.allow {
        assert!(
            n.addr().is_loopback(),
            "[listen] allow {n}: only the pod itself"
        );
    }

    // Keycloak: verify-full to localhost on pgwarden's port, for a route pgwarden has,
    // as a user pgwarden knows, trusting the CA from pgwarden's TLS Secret.
    let keycloak = shape.pod()["containers"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some("keycloak"))
        .expect("keycloak");
    let env = |name: &str| {
        keycloak["env"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    let url = env("KC_DB_URL")["value"].as_str().unwrap().to_owned();
    let rest = url
        .strip_prefix("jdbc:postgresql://")
        .expect("a pgjdbc URL");
    let (authority, rest) = rest.split_once('/').unwrap();
    let (db, query) = rest.split_once('?').unwrap();
    assert_eq!(
        authority,
        format!("localhost:{}", config.listen.address.port())
    );
    assert!(
        config.routes.iter().any(|r| r.database == db),
        "no route for {db}"
    );
    assert!(
        query.split('&').any(|p| p == "sslmode=verify-full"),
        "{url}"
    );
    let root_cert = query
        .split('&')
        .find_map(|p| p.strip_prefix("sslrootcert="))
        .unwrap();
    let trust = keycloak["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| root_cert.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .expect("sslrootcert is mounted in keycloak");
    let volume = shape.volume(trust["name"].as_str().unwrap());
    assert_eq!(
        volume["secret"]["secretName"].as_str(),
        Some("pgwarden-tls")
    );
    let items: Vec<&str> = volume["secret"]["items"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(items, ["ca.crt"], "keycloak must not get pgwarden's key");
    let user = env("KC_DB_USERNAME")["value"].as_str().unwrap().to_owned();
    assert!(config.users.iter().any(|u| u.name == user));
    assert_eq!(
        env("KC_DB_PASSWORD")["valueFrom"]["secretKeyRef"]["name"].as_str(),
        Some("keycloak-db")
    );
    // The Vault role is bound to the account this pod runs as.
    let sa = yaml("deploy/kubernetes/sidecar/serviceaccount.yaml");
    assert_eq!(
        shape.pod()["serviceAccountName"].as_str(),
        sa["metadata"]["name"].as_str()
    );
}

#[test]
fn the_standalone_shape_is_redundant_reachable_only_by_keycloak_and_scraped() {
    let shape = Shape::load("standalone");
    let (config, _root) = shape.load_config(&["pgwarden.keycloak.svc"]);
    check_common(&shape, &config);
    let deployment = &shape.deployment;
    assert!(deployment["spec"]["replicas"].as_i64().unwrap() >= 2);
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Yaml| {
        selector["matchLabels"]
            .as_hash()
            .unwrap()
            .iter()
            .all(|(k, v)| labels[k.as_str().unwrap()] == *v)
    };
    assert!(selects(&deployment["spec"]["selector"]));

    // Service: pgwarden's port, by the container's port name.
    let service = yaml("deploy/kubernetes/standalone/service.yaml");
    assert!(
        service["spec"]["selector"]
            .as_hash()
            .unwrap()
            .iter()
            .all(|(k, v)| labels[k.as_str().unwrap()] == *v)
    );
    let port = &service["spec"]["ports"][0];
    assert_eq!(
        port["port"].as_i64(),
        Some(config.listen.address.port() as i64)
    );
    assert_eq!(
        shape.container_port(port["targetPort"].as_str().unwrap()),
        config.listen.address.port()
    );

    // One replica at a time may go.
    let pdb = yaml("deploy/kubernetes/standalone/poddisruptionbudget.yaml");
    assert!(selects(&pdb["spec"]["selector"]));
    assert_eq!(pdb["spec"]["minAvailable"].as_i64(), Some(1));

    // Scraped: annotations on the admin port.
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"]
            .as_str()
            .unwrap()
            .parse::<u16>()
            .unwrap(),
        config.admin.as_ref().unwrap().address.port()
    );

    // NetworkPolicy: in, Keycloak's pods to the proxy port and the monitoring
    // namespace to the admin port; out, PostgreSQL, Vault and DNS only.
    let np = yaml("deploy/kubernetes/standalone/networkpolicy.yaml");
    assert!(selects(&np["spec"]["podSelector"]));
    let types: Vec<&str> = np["spec"]["policyTypes"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(types, ["Ingress", "Egress"]);
    let rules = |kind: &str, peers: &str| -> Vec<(String, BTreeSet<(i64, String)>)> {
        np["spec"][kind]
            .as_vec()
            .unwrap()
            .iter()
            .map(|r| {
                let peer = &r[peers][0];
                let who = format!(
                    "{}/{}",
                    peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                        .as_str()
                        .unwrap_or("*"),
                    peer["podSelector"]["matchLabels"]
                        .as_hash()
                        .and_then(|h| h.values().next())
                        .and_then(|v| v.as_str())
                        .unwrap_or("*")
                );
                let ports = r["ports"]
                    .as_vec()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        (
                            p["port"].as_i64().unwrap(),
                            p["protocol"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect();
                (who, ports)
            })
            .collect()
    };
    let tcp = |p: u16| BTreeSet::from([(p as i64, "TCP".to_owned())]);
    let admin_port = config.admin.as_ref().unwrap().address.port();
    assert_eq!(
        rules("ingress", "from"),
        [
            (
                "keycloak/keycloak".to_owned(),
                tcp(config.listen.address.port())
            ),
            ("monitoring/*".to_owned(), tcp(admin_port)),
        ]
    );
    let vault_port = port_of(config.vault.as_ref().unwrap().address.trim_end_matches('/'));
    let db_port = config.routes[0].upstream.port;
    let egress = rules("egress", "to");
    let mut ports: Vec<BTreeSet<(i64, String)>> = egress.iter().map(|(_, p)| p.clone()).collect();
    ports.sort();
    let mut want = vec![
        tcp(db_port),
        tcp(vault_port),
        BTreeSet::from([(53, "UDP".to_owned()), (53, "TCP".to_owned())]),
    ];
    want.sort();
    assert_eq!(ports, want, "{egress:?}");
    // Every route's upstream port is one the policy lets out.
    for r in &config.routes {
        assert!(
            ports
                .iter()
                .any(|p| p.contains(&(r.upstream.port as i64, "TCP".into())))
        );
    }
}

#[test]
fn the_backup_cronjob_logs_in_with_the_role_setup_sh_binds_for_it() {
    let setup = read("config/vault/setup.sh");
    let text = yaml("deploy/kubernetes/backup/configmap.yaml")["data"]["backup.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains("method = \"kubernetes\", role = \"pgwarden-backup\""));
    assert!(setup.contains("readonly BACKUP_APPROLE=pgwarden-backup\n"));
    assert!(setup.contains("write_k8s_role \"$BACKUP_APPROLE\""));
}
