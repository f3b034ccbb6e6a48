//! Readers for the deployment files, as the tools that run them read them:
//! docker-compose.yml (YAML 1.2), the Dockerfile and .dockerignore, the systemd
//! unit, and the command lines inside them. Only what `tests/deploy_files.rs`
//! checks is modelled; anything it does not understand makes it panic rather
//! than pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

/// The repository's root directory.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// docker-compose.yml, parsed.
pub struct Compose {
    pub doc: Yaml,
}

impl Compose {
    pub fn load() -> Compose {
        let mut docs = YamlLoader::load_from_str(&read("docker-compose.yml"))
            .expect("docker-compose.yml is YAML");
        assert_eq!(docs.len(), 1, "docker-compose.yml holds one document");
        Compose {
            doc: docs.remove(0),
        }
    }

    pub fn services(&self) -> Vec<(String, &Yaml)> {
        self.doc["services"]
            .as_hash()
            .expect("docker-compose.yml has services")
            .iter()
            .map(|(k, v)| (k.as_str().expect("service names are strings").to_owned(), v))
            .collect()
    }

    pub fn service(&self, name: &str) -> &Yaml {
        let s = &self.doc["services"][name];
        assert!(
            s.as_hash().is_some(),
            "docker-compose.yml has no service `{name}`"
        );
        s
    }

    pub fn has_service(&self, name: &str) -> bool {
        self.doc["services"][name].as_hash().is_some()
    }

    /// Names declared under a top-level section (`volumes`, `secrets`, `networks`).
    pub fn declared(&self, section: &str) -> Vec<String> {
        self.doc[section]
            .as_hash()
            .map(|h| {
                h.keys()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The host file of a top-level secret.
    pub fn secret_file(&self, name: &str) -> PathBuf {
        let file = self.doc["secrets"][name]["file"]
            .as_str()
            .unwrap_or_else(|| panic!("secret `{name}` is not declared with a file"));
        repo().join(file)
    }

    /// The secrets a service gets: (host file, path in the container).
    pub fn secrets_of(&self, service: &Yaml) -> Vec<(String, PathBuf, String)> {
        list(&service["secrets"])
            .iter()
            .map(|s| {
                let (name, target) = match s {
                    Yaml::String(n) => (n.clone(), format!("/run/secrets/{n}")),
                    Yaml::Hash(_) => {
                        let n = s["source"].as_str().expect("secret source").to_owned();
                        let t = match s["target"].as_str() {
                            Some(t) if t.starts_with('/') => t.to_owned(),
                            Some(t) => format!("/run/secrets/{t}"),
                            None => format!("/run/secrets/{n}"),
                        };
                        (n, t)
                    }
                    other => panic!("unexpected secret entry {other:?}"),
                };
                let file = self.secret_file(&name);
                (name, file, target)
            })
            .collect()
    }
}

/// A sequence, or nothing.
pub fn list(y: &Yaml) -> Vec<Yaml> {
    match y {
        Yaml::Array(a) => a.clone(),
        Yaml::BadValue | Yaml::Null => Vec::new(),
        other => panic!("expected a list, found {other:?}"),
    }
}

/// A scalar as compose reads it (numbers and booleans as their text).
pub fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A service's environment, from either the map or the `KEY=VALUE` list form,
/// with compose's `$$` unescaped.
pub fn environment(service: &Yaml) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    match &service["environment"] {
        Yaml::Hash(h) => {
            for (k, v) in h {
                let k = k.as_str().expect("variable name").to_owned();
                env.insert(k, scalar(v).unwrap_or_default().replace("$$", "$"));
            }
        }
        Yaml::Array(a) => {
            for item in a {
                let s = item.as_str().expect("KEY=VALUE");
                let (k, v) = s.split_once('=').unwrap_or((s, ""));
                env.insert(k.to_owned(), v.replace("$$", "$"));
            }
        }
        Yaml::BadValue | Yaml::Null => {}
        other => panic!("unexpected environment {other:?}"),
    }
    env
}

/// A command in list form, or a string split on whitespace, `$$` unescaped.
pub fn command(y: &Yaml) -> Vec<String> {
    match y {
        Yaml::Array(a) => a
            .iter()
            .map(|v| {
                scalar(v)
                    .expect("command words are scalars")
                    .replace("$$", "$")
            })
            .collect(),
        Yaml::String(s) => s.split_whitespace().map(|w| w.replace("$$", "$")).collect(),
        Yaml::BadValue | Yaml::Null => Vec::new(),
        other => panic!("unexpected command {other:?}"),
    }
}

/// `depends_on` as (service, condition); the list form means `service_started`.
pub fn depends_on(service: &Yaml) -> Vec<(String, String)> {
    match &service["depends_on"] {
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| {
                let cond = v["condition"].as_str().unwrap_or("service_started");
                (
                    k.as_str().expect("service name").to_owned(),
                    cond.to_owned(),
                )
            })
            .collect(),
        Yaml::Array(a) => a
            .iter()
            .map(|v| {
                (
                    v.as_str().expect("service name").to_owned(),
                    "service_started".to_owned(),
                )
            })
            .collect(),
        Yaml::BadValue | Yaml::Null => Vec::new(),
        other => panic!("unexpected depends_on {other:?}"),
    }
}

/// One entry of a service's `volumes`.
#[derive(Debug, Clone)]
pub enum Mount {
    /// A host path (absolute, resolved against the repository).
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
    /// A named volume.
    Volume {
        name: String,
        target: String,
        read_only: bool,
    },
}

impl Mount {
    pub fn target(&self) -> &str {
        match self {
            Mount::Bind { target, .. } | Mount::Volume { target, .. } => target,
        }
    }
}

pub fn mounts(service: &Yaml) -> Vec<Mount> {
    list(&service["volumes"])
        .iter()
        .map(|v| match v {
            Yaml::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let (source, target, opts) = match parts.as_slice() {
                    [s, t] => (*s, *t, ""),
                    [s, t, o] => (*s, *t, *o),
                    _ => panic!("volume entry `{s}` is not source:target[:options]"),
                };
                let read_only = opts.split(',').any(|o| o == "ro");
                mount(source, target, read_only)
            }
            Yaml::Hash(_) => {
                let source = v["source"].as_str().expect("volume source");
                let target = v["target"].as_str().expect("volume target");
                let read_only = v["read_only"].as_bool().unwrap_or(false);
                match v["type"].as_str() {
                    Some("bind") => mount_bind(source, target, read_only),
                    Some("volume") => Mount::Volume {
                        name: source.into(),
                        target: target.into(),
                        read_only,
                    },
                    other => panic!("volume type {other:?} is not modelled"),
                }
            }
            other => panic!("unexpected volume entry {other:?}"),
        })
        .collect()
}

fn mount(source: &str, target: &str, read_only: bool) -> Mount {
    if source.starts_with('.') || source.starts_with('/') || source.starts_with('~') {
        mount_bind(source, target, read_only)
    } else {
        Mount::Volume {
            name: source.into(),
            target: target.into(),
            read_only,
        }
    }
}

fn mount_bind(source: &str, target: &str, read_only: bool) -> Mount {
    assert!(
        source.starts_with("./"),
        "bind mount `{source}` must be a path inside the repository (./…)"
    );
    Mount::Bind {
        source: repo().join(source.trim_start_matches("./")),
        target: target.into(),
        read_only,
    }
}

/// A published port: (host address, host port, container port).
pub fn ports(service: &Yaml) -> Vec<(Option<String>, String, String)> {
    list(&service["ports"])
        .iter()
        .map(|p| match p {
            Yaml::String(s) => {
                let parts: Vec<&str> = s.rsplitn(3, ':').collect();
                match parts.as_slice() {
                    [c, h, ip] => (Some(ip.to_string()), h.to_string(), c.to_string()),
                    [c, h] => (None, h.to_string(), c.to_string()),
                    [c] => (None, String::new(), c.to_string()),
                    _ => unreachable!(),
                }
            }
            Yaml::Hash(_) => (
                p["host_ip"].as_str().map(str::to_owned),
                scalar(&p["published"]).unwrap_or_default(),
                scalar(&p["target"]).unwrap_or_default(),
            ),
            Yaml::Integer(i) => (None, String::new(), i.to_string()),
            other => panic!("unexpected port entry {other:?}"),
        })
        .collect()
}

/// Compose durations (`60s`, `1m30s`).
pub fn duration(y: &Yaml) -> Option<std::time::Duration> {
    y.as_str()
        .map(|s| humantime::parse_duration(s).expect("a compose duration"))
}

/// Copies a file or a directory tree.
pub fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    }
}

/// `path` inside a root directory standing for another file system.
pub fn in_root(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped:
/// (instruction in upper case, its arguments).
pub fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instr, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((instr.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// An exec-form (`["a", "b"]`) argument list.
pub fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("`{args}` is not exec form: {e}"))
}

/// The systemd unit's `[Service]` (and other) settings, in order: (key, value).
pub fn unit(rel: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in read(rel).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{rel}: `{line}` is not Key=Value"));
        out.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
    }
    out
}

/// The built `pgwarden` binary.
pub fn pgwarden_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgwarden")
}

/// Asserts that pgwarden's command line parser accepts `args` (everything after
/// the program name) and that every flag the subcommand requires is in them:
/// `args --help` exits 0 only when every subcommand and flag before `--help`
/// exists and takes the values given; the usage line names the required flags.
pub fn assert_cli_accepts(args: &[String], origin: &str) {
    let out = Command::new(pgwarden_bin())
        .args(args)
        .arg("--help")
        .output()
        .expect("run pgwarden");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{origin}: pgwarden does not accept `{}`:\n{}{}",
        args.join(" "),
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let usage = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Usage: "))
        .unwrap_or_else(|| panic!("{origin}: no usage line in\n{stdout}"));
    let mut depth = 0i32;
    for word in usage.split_whitespace() {
        let opens = word.matches(['[', '<']).count() as i32;
        if depth == 0 && opens == 0 && word.starts_with("--") {
            assert!(
                args.iter()
                    .any(|a| a == word || a.starts_with(&format!("{word}="))),
                "{origin}: `{}` lacks {word}, which `{usage}` requires",
                args.join(" ")
            );
        }
        depth += opens - word.matches([']', '>']).count() as i32;
    }
}

/// Runs a program, panicking with its output unless it succeeds; returns stdout.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
