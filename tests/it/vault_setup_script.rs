//! `config/vault/setup.sh` run against a fake `vault` CLI, under the POSIX shells it must
//! run in: dash (Debian's `sh`) and busybox `sh` (the shell of the hashicorp/vault image
//! that docker-compose.yml's vault-init runs it in), the latter with nothing but busybox's
//! applets and the fake `vault` on PATH. The script parses in both, makes the calls a real
//! Vault needs (engine, TLS connection, password policy, both roles from the shipped
//! statement files, pgwarden's policy, the AppRole), writes role_id and secret_id with mode
//! 0600, prints no secret, puts the admin password on no command line, runs twice without
//! failing, and stops before any change when a read or a `vault` listing fails.
//! (`shellcheck --shell=sh` on it is in `tests/deploy_files.rs`.)

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::hcl;
use crate::support::shipped;

/// Records every call in `$FAKE_VAULT_STATE/calls/N/` (`argv`, NUL-separated, and `stdin`
/// when a value or the policy is read from stdin); keeps mounts in `secrets`/`auth`; answers
/// like the real CLI: `list -format=table` tables, "path is already in use" for a second
/// enable, `-field` values without a newline, an error for an `@file` that does not exist.
/// `FAKE_VAULT_FAIL="<arg1> <arg2>"` makes that call fail as a refused request does.
/// It is bash, by absolute path: under busybox, PATH holds only busybox's applets.
const FAKE_VAULT: &str = r#"#!/bin/bash
set -euo pipefail
state=${FAKE_VAULT_STATE:?}
[[ -n ${VAULT_ADDR:-} && -n ${VAULT_TOKEN:-} ]] || { echo "fake vault: no VAULT_ADDR/VAULT_TOKEN" >&2; exit 2; }
n=$(( $(cat "$state/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$state/count"
call="$state/calls/$(printf '%03d' "$n")"
mkdir -p "$call"
printf '%s\0' "$@" > "$call/argv"
if [[ "$1 ${2:-}" == "${FAKE_VAULT_FAIL:-}" ]]; then
  printf 'Error listing: Error making API request.\n\nCode: 403. Errors:\n\n* permission denied\n' >&2
  exit 2
fi
for a in "$@"; do
  if [[ $a == *=- || $a == - ]]; then cat > "$call/stdin"; fi
  if [[ $a =~ ^[a-z_]+=@ ]]; then
    f=${a#*=@}
    [[ -r $f ]] || { echo "Error: error reading file: open $f: no such file or directory" >&2; exit 1; }
  fi
done
touch "$state/secrets" "$state/auth"
table() { # file, default rows
  printf 'Path          Type         Accessor              Description\n'
  printf -- '----          ----         --------              -----------\n'
  printf '%s\n' "$2"
  while read -r path type; do printf '%-13s %-12s %s_1a2b3c4d    n/a\n' "$path" "$type" "$type"; done < "$1"
}
enable() { # file, path, type
  if grep -q "^$2 " "$1"; then
    printf 'Error enabling: Error making API request.\n\nCode: 400. Errors:\n\n* path is already in use at %s\n' "$2" >&2
    exit 2
  fi
  echo "$2 $3" >> "$1"
  echo "Success! Enabled $3 at: $2"
}
case "$1 $2" in
  "secrets list") table "$state/secrets" "cubbyhole/    cubbyhole    cubbyhole_5e6f7a8b    per-token private secret storage" ;;
  "auth list") table "$state/auth" "token/        token        auth_token_9c0d1e2f   token based credentials" ;;
  "secrets enable")
    [[ $3 == -path=* && $4 == database ]] || { echo "fake vault: unexpected $*" >&2; exit 2; }
    enable "$state/secrets" "${3#-path=}/" database ;;
  "auth enable") enable "$state/auth" "$3/" "$3" ;;
  "policy write") echo "Success! Uploaded policy: $3" ;;
  "read -field=role_id") printf '%s' "$FAKE_ROLE_ID" ;;
  "write -f")
    [[ $3 == -field=secret_id ]] || { echo "fake vault: unexpected $*" >&2; exit 2; }
    printf '%s-%s' "$FAKE_SECRET_ID" "$n" ;;
  "write "*) echo "Success! Data written to: $2" ;;
  *) echo "fake vault: unexpected $*" >&2; exit 2 ;;
esac
"#;

const ROLE_ID: &str = "3f5c0a9e-7d21-4b8e-role-id-for-the-test";
const SECRET_ID: &str = "a81c44d0-secret-id-for-the-test";
const TOKEN: &str = "hvs.admin-token-for-the-setup-test";
const DB_PASSWORD: &str = "db-admin-password-Zq7xT2mK9vR4wL8nB3cJ";
const CA: &str = "/vault/tls/postgres-ca.crt";

/// A shell that setup.sh must run in.
#[derive(Clone, Copy, Debug)]
enum Shell {
    /// Debian's `/bin/sh`, with the system's tools on PATH.
    Dash,
    /// busybox `sh`, with only busybox's applets (and the fake `vault`) on PATH, as in the
    /// Alpine-based hashicorp/vault image.
    Busybox,
}

/// The `busybox` binary (Debian package busybox; .ci/run installs it).
fn busybox() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("busybox"))
        .find(|p| p.is_file())
        .expect("busybox on PATH (Debian package busybox; .ci/run installs it)")
}

/// A directory of symbolic links to busybox, one per applet it has, as Alpine installs it.
fn busybox_applets(dir: &Path) {
    let busybox = busybox();
    let list = Command::new(&busybox).arg("--list").output().unwrap();
    assert!(list.status.success(), "busybox --list");
    std::fs::create_dir(dir).unwrap();
    let mut n = 0;
    for applet in String::from_utf8(list.stdout).unwrap().split_whitespace() {
        std::os::unix::fs::symlink(&busybox, dir.join(applet)).unwrap();
        n += 1;
    }
    // What setup.sh runs besides vault and the shell's builtins.
    for tool in ["awk", "cat", "chmod", "mkdir", "mktemp", "mv", "rm", "sed"] {
        assert!(
            dir.join(tool).exists(),
            "busybox has no {tool} ({n} applets)"
        );
    }
}

struct Fake {
    dir: tempfile::TempDir,
}

/// One recorded call.
#[derive(Debug)]
struct Call {
    argv: Vec<String>,
    stdin: Option<String>,
}

impl Call {
    /// `key=value` arguments.
    fn kv(&self) -> BTreeMap<&str, &str> {
        self.argv.iter().filter_map(|a| a.split_once('=')).collect()
    }
}

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
    calls: Vec<Call>,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-setup-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let vault = dir.path().join("bin/vault");
        std::fs::write(&vault, FAKE_VAULT).unwrap();
        std::fs::set_permissions(&vault, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("db_password"), format!("{DB_PASSWORD}\n")).unwrap();
        Fake { dir }
    }

    fn out_dir(&self) -> PathBuf {
        self.dir.path().join("approle")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs setup.sh in `shell` with the interface's variables, `vault` being the fake;
    /// `env` adds or (with an empty value) removes variables. Returns the calls this run
    /// made.
    fn run(&self, shell: Shell, env: &[(&str, &str)]) -> Run {
        let mut cmd = match shell {
            Shell::Dash => Command::new("dash"),
            Shell::Busybox => {
                let mut c = Command::new(busybox());
                c.arg("sh");
                c
            }
        };
        cmd.arg(shipped::config_dir().join("setup.sh"));
        self.run_command(shell, cmd, env)
    }

    fn run_command(&self, shell: Shell, mut cmd: Command, env: &[(&str, &str)]) -> Run {
        let before = self.calls().len();
        let tools = match shell {
            Shell::Dash => std::env::var("PATH").unwrap_or_default(),
            Shell::Busybox => {
                let applets = self.dir.path().join("busybox");
                if !applets.exists() {
                    busybox_applets(&applets);
                }
                applets.display().to_string()
            }
        };
        let path = format!("{}:{tools}", self.dir.path().join("bin").display());
        cmd.env_clear()
            .env("PATH", path)
            .env("HOME", self.dir.path())
            .env("FAKE_VAULT_STATE", self.state())
            .env("FAKE_ROLE_ID", ROLE_ID)
            .env("FAKE_SECRET_ID", SECRET_ID)
            .env("VAULT_ADDR", "https://vault.internal:8200")
            .env("VAULT_TOKEN", TOKEN)
            .env("PGWARDEN_DB_HOST", "postgres.internal")
            .env(
                "PGWARDEN_DB_ADMIN_PASSWORD_FILE",
                self.dir.path().join("db_password"),
            )
            .env("PGWARDEN_DB_CA_FILE", CA)
            .env("PGWARDEN_APPROLE_OUT_DIR", self.out_dir());
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("{shell:?}: {e}"));
        Run {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            calls: self.calls().into_iter().skip(before).collect(),
        }
    }

    fn calls(&self) -> Vec<Call> {
        let Ok(entries) = std::fs::read_dir(self.state().join("calls")) else {
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        dirs.sort();
        dirs.iter()
            .map(|d| Call {
                argv: std::fs::read_to_string(d.join("argv"))
                    .unwrap()
                    .split_terminator('\0')
                    .map(str::to_owned)
                    .collect(),
                stdin: std::fs::read_to_string(d.join("stdin")).ok(),
            })
            .collect()
    }
}

fn find<'a>(calls: &'a [Call], prefix: &[&str]) -> Vec<&'a Call> {
    calls
        .iter()
        .filter(|c| c.argv.len() >= prefix.len() && c.argv.iter().zip(prefix).all(|(a, b)| a == b))
        .collect()
}

fn one<'a>(calls: &'a [Call], prefix: &[&str]) -> &'a Call {
    let found = find(calls, prefix);
    assert_eq!(
        found.len(),
        1,
        "exactly one `vault {}`: {calls:#?}",
        prefix.join(" ")
    );
    found[0]
}

/// An `@file` argument: the file exists and is the shipped one, verbatim.
fn shipped_file_arg(value: &str, name: &str) {
    let path = value
        .strip_prefix('@')
        .unwrap_or_else(|| panic!("{value}: read from a file"));
    let path = Path::new(path).canonicalize().expect("the @file exists");
    assert_eq!(
        path,
        shipped::config_dir().join(name).canonicalize().unwrap(),
        "the shipped {name}"
    );
}

fn assert_no_secret(run: &Run, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !run.stdout.contains(s) && !run.stderr.contains(s),
            "a secret was printed:\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
}

fn file_0600(path: &Path) -> String {
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} mode {mode:o}", path.display());
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn setup_script_is_posix_sh() {
    let script = shipped::config_dir().join("setup.sh");
    assert!(
        shipped::file("setup.sh").starts_with("#!/bin/sh\n"),
        "setup.sh names /bin/sh"
    );
    let busybox = busybox();
    let checks: [(&str, Command); 2] = [
        ("dash -n", {
            let mut c = Command::new("dash");
            c.arg("-n").arg(&script);
            c
        }),
        ("busybox sh -n", {
            let mut c = Command::new(&busybox);
            c.arg("sh").arg("-n").arg(&script);
            c
        }),
    ];
    for (what, mut cmd) in checks {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn setup_configures_vault_for_pgwarden_and_can_run_twice_in_dash() {
    configures_vault_for_pgwarden_and_can_run_twice(Shell::Dash);
}

#[test]
fn setup_configures_vault_for_pgwarden_and_can_run_twice_in_busybox_sh() {
    configures_vault_for_pgwarden_and_can_run_twice(Shell::Busybox);
}

fn configures_vault_for_pgwarden_and_can_run_twice(shell: Shell) {
    let fake = Fake::new();
    let run = fake.run(shell, &[]);
    assert!(run.success, "setup.sh failed:\n{}", run.stderr);
    let calls = &run.calls;

    // The database secrets engine at the default mount.
    one(calls, &["secrets", "enable", "-path=database", "database"]);

    // The connection: TLS verify-full against the given CA, Vault's templated credentials,
    // the admin password on stdin only, SCRAM verifiers, the password policy, checked now.
    let config = one(calls, &["write", "database/config/keycloak"]);
    let kv = config.kv();
    assert_eq!(kv["plugin_name"], "postgresql-database-plugin");
    assert_eq!(
        kv["connection_url"],
        format!(
            "postgresql://{{{{username}}}}:{{{{password}}}}@postgres.internal:5432/keycloak\
             ?sslmode=verify-full&sslrootcert={CA}"
        )
    );
    assert_eq!(kv["username"], "vault_admin");
    assert_eq!(kv["password"], "-");
    assert_eq!(
        config.stdin.as_deref(),
        Some(DB_PASSWORD),
        "no trailing newline"
    );
    assert_eq!(kv["password_authentication"], "scram-sha-256");
    assert_eq!(kv["verify_connection"], "true");
    assert_eq!(
        kv["allowed_roles"],
        "keycloak-migrate,keycloak,keycloak-backup"
    );
    let password_policy = kv["password_policy"];

    // The password policy it names, from the shipped file.
    let policy_write = one(
        calls,
        &["write", &format!("sys/policies/password/{password_policy}")],
    );
    shipped_file_arg(policy_write.kv()["policy"], "password-policy.hcl");
    let written = calls.iter().position(|c| std::ptr::eq(c, policy_write));
    let configured = calls.iter().position(|c| std::ptr::eq(c, config));
    assert!(
        written < configured,
        "the policy exists before the connection names it"
    );

    // The three roles, statements read from the shipped files, with TTLs; the backup
    // role's credential lives minutes.
    let mut ttls = BTreeMap::new();
    for role in ["keycloak-migrate", "keycloak", "keycloak-backup"] {
        let call = one(calls, &["write", &format!("database/roles/{role}")]);
        let kv = call.kv();
        assert_eq!(kv["db_name"], "keycloak");
        shipped_file_arg(kv["creation_statements"], &format!("creation-{role}.sql"));
        shipped_file_arg(kv["renew_statements"], "renewal.sql");
        shipped_file_arg(kv["revocation_statements"], "revocation.sql");
        let ttl = humantime::parse_duration(kv["default_ttl"]).unwrap();
        assert!(ttl <= humantime::parse_duration(kv["max_ttl"]).unwrap());
        ttls.insert(role, ttl);
    }
    assert!(ttls["keycloak-backup"] <= std::time::Duration::from_secs(15 * 60));

    // The proxy's and the backups' policies, exactly the shipped files.
    for (name, file) in [
        ("pgwarden", "pgwarden-policy.hcl"),
        ("pgwarden-backup", "pgwarden-backup-policy.hcl"),
    ] {
        let policy = one(calls, &["policy", "write", name, "-"]);
        assert_eq!(
            hcl::acl_policy(policy.stdin.as_deref().unwrap()).unwrap(),
            hcl::acl_policy(&shipped::file(file)).unwrap()
        );
    }

    // The AppRoles: each only its policy, reusable secret ids.
    one(calls, &["auth", "enable", "approle"]);
    for name in ["pgwarden", "pgwarden-backup"] {
        let approle = one(calls, &["write", &format!("auth/approle/role/{name}")]);
        let kv = approle.kv();
        assert_eq!(kv["token_policies"], name);
        assert_eq!(kv["token_no_default_policy"], "true");
        assert_eq!(kv["bind_secret_id"], "true");
        assert_eq!(kv["secret_id_num_uses"], "0");
        assert_eq!(kv["secret_id_ttl"], "0");
        assert_eq!(kv["token_explicit_max_ttl"], "0");
        if name == "pgwarden" {
            // A periodic token with no max TTL, whatever an earlier run set: Vault
            // revokes a token's leases when it expires (tests/it/openbao.rs shows
            // it on a real server).
            assert_eq!(kv["token_period"], "1h");
            for ttl in ["token_ttl", "token_max_ttl"] {
                assert_eq!(kv[ttl], "0", "{ttl}");
            }
        } else {
            // The backup host logs in for each run: an ordinary token.
            assert_eq!(kv["token_period"], "0");
            assert_eq!(kv["token_ttl"], "1h");
            assert_eq!(kv["token_max_ttl"], "24h");
        }
    }
    // No secret id for the backup AppRole unless asked for.
    assert!(
        find(
            calls,
            &[
                "write",
                "-f",
                "-field=secret_id",
                "auth/approle/role/pgwarden-backup/secret-id"
            ]
        )
        .is_empty()
    );

    // role_id and secret_id, private, exactly what Vault returned.
    assert_eq!(file_0600(&fake.out_dir().join("role_id")), ROLE_ID);
    let first_secret = file_0600(&fake.out_dir().join("secret_id"));
    assert!(first_secret.starts_with(SECRET_ID));
    let leftovers: Vec<_> = std::fs::read_dir(fake.out_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "no temporary files left: {leftovers:?}");

    // Nothing secret printed, and the password never on a command line.
    assert_no_secret(&run, &[DB_PASSWORD, TOKEN, ROLE_ID, SECRET_ID]);
    for c in calls {
        assert!(
            c.argv.iter().all(|a| !a.contains(DB_PASSWORD)),
            "{:?}",
            c.argv
        );
    }

    // Again: the mounts exist now (as `secrets list` and `auth list` say), so nothing is
    // enabled twice; everything else is written again and a fresh secret id replaces the old.
    let again = fake.run(shell, &[]);
    assert!(again.success, "second run failed:\n{}", again.stderr);
    assert!(find(&again.calls, &["secrets", "enable"]).is_empty());
    assert!(find(&again.calls, &["auth", "enable"]).is_empty());
    one(&again.calls, &["write", "database/config/keycloak"]);
    let second_secret = file_0600(&fake.out_dir().join("secret_id"));
    assert_ne!(second_secret, first_secret);
    assert_no_secret(&again, &[DB_PASSWORD, TOKEN, ROLE_ID, &second_secret]);
}

#[test]
fn setup_uses_the_configured_mount_and_database_everywhere_in_dash() {
    uses_the_configured_mount_and_database_everywhere(Shell::Dash);
}

#[test]
fn setup_uses_the_configured_mount_and_database_everywhere_in_busybox_sh() {
    uses_the_configured_mount_and_database_everywhere(Shell::Busybox);
}

fn uses_the_configured_mount_and_database_everywhere(shell: Shell) {
    let fake = Fake::new();
    let run = fake.run(
        shell,
        &[
            ("PGWARDEN_VAULT_MOUNT", "kc-db"),
            ("PGWARDEN_DB_NAME", "iam"),
            ("PGWARDEN_DB_PORT", "6543"),
            ("PGWARDEN_DB_ADMIN_USER", "vault_iam"),
            ("PGWARDEN_DB_HOST", "fd00::5"),
        ],
    );
    assert!(run.success, "{}", run.stderr);
    one(
        &run.calls,
        &["secrets", "enable", "-path=kc-db", "database"],
    );
    let kv = one(&run.calls, &["write", "kc-db/config/iam"]).kv();
    assert!(
        kv["connection_url"].contains("@[fd00::5]:6543/iam?sslmode=verify-full&"),
        "{}",
        kv["connection_url"]
    );
    assert_eq!(kv["username"], "vault_iam");
    for role in ["keycloak-migrate", "keycloak", "keycloak-backup"] {
        let kv = one(&run.calls, &["write", &format!("kc-db/roles/{role}")]).kv();
        assert_eq!(kv["db_name"], "iam");
    }
    let backup_policy = one(&run.calls, &["policy", "write", "pgwarden-backup", "-"]);
    let backup_paths: BTreeSet<String> = hcl::acl_policy(backup_policy.stdin.as_deref().unwrap())
        .unwrap()
        .into_keys()
        .collect();
    assert!(
        backup_paths.contains("kc-db/creds/keycloak-backup"),
        "{backup_paths:?}"
    );
    let policy = one(&run.calls, &["policy", "write", "pgwarden", "-"]);
    let paths: BTreeSet<String> = hcl::acl_policy(policy.stdin.as_deref().unwrap())
        .unwrap()
        .into_keys()
        .collect();
    assert!(paths.contains("kc-db/creds/keycloak-migrate"));
    assert!(paths.contains("kc-db/creds/keycloak"));
    assert!(
        paths.iter().all(|p| !p.starts_with("database/")),
        "{paths:?}"
    );
}

#[test]
fn setup_refuses_a_mount_taken_by_another_engine_and_bad_settings_in_dash() {
    refuses_a_mount_taken_by_another_engine_and_bad_settings(Shell::Dash);
}

#[test]
fn setup_refuses_a_mount_taken_by_another_engine_and_bad_settings_in_busybox_sh() {
    refuses_a_mount_taken_by_another_engine_and_bad_settings(Shell::Busybox);
}

fn refuses_a_mount_taken_by_another_engine_and_bad_settings(shell: Shell) {
    let fake = Fake::new();
    std::fs::write(fake.state().join("secrets"), "database/ kv\n").unwrap();
    let run = fake.run(shell, &[]);
    assert!(!run.success);
    assert!(
        run.stderr.contains("not as a database secrets engine"),
        "{}",
        run.stderr
    );
    assert!(
        find(&run.calls, &["write"]).is_empty(),
        "stopped before writing"
    );

    // Each required setting missing: no vault call.
    for var in [
        "VAULT_ADDR",
        "VAULT_TOKEN",
        "PGWARDEN_DB_HOST",
        "PGWARDEN_DB_ADMIN_PASSWORD_FILE",
        "PGWARDEN_DB_CA_FILE",
        "PGWARDEN_APPROLE_OUT_DIR",
    ] {
        let run = Fake::new().run(shell, &[(var, "")]);
        assert!(!run.success, "ran without {var}");
        assert!(
            run.stderr.contains(&format!("set {var} to")),
            "{}",
            run.stderr
        );
        assert!(run.calls.is_empty(), "no vault call without {var}");
    }

    // Each checked setting, with a value its pattern refuses: no vault call.
    for (var, value) in [
        ("PGWARDEN_VAULT_MOUNT", "a//b"),
        ("PGWARDEN_VAULT_MOUNT", "kc db"),
        ("PGWARDEN_DB_PORT", "54x"),
        ("PGWARDEN_DB_NAME", "kc;drop"),
        ("PGWARDEN_DB_ADMIN_USER", "vault admin"),
        ("PGWARDEN_DB_HOST", "db/evil"),
        ("PGWARDEN_DB_CA_FILE", "relative/ca.crt"),
        ("PGWARDEN_DB_CA_FILE", "/etc/ca&x.crt"),
    ] {
        let run = Fake::new().run(shell, &[(var, value)]);
        assert!(!run.success, "{var}={value} accepted");
        assert!(run.stderr.contains(var), "{var}={value}: {}", run.stderr);
        assert!(run.calls.is_empty(), "{var}={value}: {:?}", run.calls);
    }
}

#[test]
fn setup_stops_before_any_change_when_a_read_fails() {
    for shell in [Shell::Dash, Shell::Busybox] {
        // A password file that cannot be read (a directory passes `[ -r ]`): the script
        // stops before Vault is touched rather than sending vault an empty password.
        let fake = Fake::new();
        let dir = fake.dir.path().join("state");
        let run = fake.run(
            shell,
            &[("PGWARDEN_DB_ADMIN_PASSWORD_FILE", dir.to_str().unwrap())],
        );
        assert!(!run.success, "{shell:?}: an unreadable password file");
        assert!(
            run.stderr.contains("PGWARDEN_DB_ADMIN_PASSWORD_FILE"),
            "{shell:?}: {}",
            run.stderr
        );
        assert!(run.calls.is_empty(), "{shell:?}: {:?}", run.calls);

        // `vault secrets list` refused: no pipe swallows that, nothing is enabled.
        let run = Fake::new().run(shell, &[("FAKE_VAULT_FAIL", "secrets list")]);
        assert!(!run.success, "{shell:?}: a refused listing");
        assert!(
            run.stderr.contains("could not list the secrets mounts"),
            "{shell:?}: {}",
            run.stderr
        );
        assert_eq!(run.calls.len(), 1, "{shell:?}: {:?}", run.calls);
    }
}

/// The admin password is handed to vault by printf; where printf is not a builtin it
/// would be on printf's command line, so the script refuses to run.
#[test]
fn setup_refuses_a_shell_without_a_builtin_printf() {
    let fake = Fake::new();
    let mut bash = Command::new("bash");
    bash.arg("-c")
        .arg("enable -n printf; . \"$0\"")
        .arg(shipped::config_dir().join("setup.sh"));
    let run = fake.run_command(Shell::Dash, bash, &[]);
    assert!(!run.success, "ran with an external printf");
    assert!(run.stderr.contains("builtin"), "{}", run.stderr);
    assert!(run.calls.is_empty(), "{:?}", run.calls);

    // The same shell with its builtin printf runs it to the end.
    let mut bash = Command::new("bash");
    bash.arg("-c")
        .arg(". \"$0\"")
        .arg(shipped::config_dir().join("setup.sh"));
    let run = fake.run_command(Shell::Dash, bash, &[]);
    assert!(run.success, "{}", run.stderr);
}

#[test]
fn setup_gives_the_backup_host_an_approle_of_its_own_when_asked() {
    let fake = Fake::new();
    let backup_dir = fake.dir.path().join("backup-approle");
    let run = fake.run(
        Shell::Dash,
        &[(
            "PGWARDEN_BACKUP_APPROLE_OUT_DIR",
            backup_dir.to_str().unwrap(),
        )],
    );
    assert!(run.success, "{}", run.stderr);
    one(
        &run.calls,
        &[
            "read",
            "-field=role_id",
            "auth/approle/role/pgwarden-backup/role-id",
        ],
    );
    one(
        &run.calls,
        &[
            "write",
            "-f",
            "-field=secret_id",
            "auth/approle/role/pgwarden-backup/secret-id",
        ],
    );
    assert_eq!(file_0600(&backup_dir.join("role_id")), ROLE_ID);
    let backup_secret = file_0600(&backup_dir.join("secret_id"));
    assert!(backup_secret.starts_with(SECRET_ID));
    // The proxy's secret id is another one.
    assert_ne!(file_0600(&fake.out_dir().join("secret_id")), backup_secret);
    assert_no_secret(&run, &[DB_PASSWORD, TOKEN, ROLE_ID, SECRET_ID]);
}

#[test]
fn setup_binds_kubernetes_auth_roles_to_one_service_account_each_in_dash() {
    binds_kubernetes_auth_roles(Shell::Dash);
}

#[test]
fn setup_binds_kubernetes_auth_roles_to_one_service_account_each_in_busybox_sh() {
    binds_kubernetes_auth_roles(Shell::Busybox);
}

/// With `PGWARDEN_K8S_SERVICE_ACCOUNT` the Kubernetes auth method is enabled and
/// configured, role `pgwarden` (periodic tokens, pgwarden's policy only, the projected
/// token's audience) is bound to that one account, and the backup's role to its own; no
/// AppRole secret id is needed. Run twice, it enables nothing twice.
fn binds_kubernetes_auth_roles(shell: Shell) {
    let fake = Fake::new();
    let ca = fake.dir.path().join("k8s-ca.crt");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let env = [
        ("PGWARDEN_APPROLE_OUT_DIR", ""),
        ("PGWARDEN_K8S_SERVICE_ACCOUNT", "keycloak/keycloak"),
        (
            "PGWARDEN_K8S_BACKUP_SERVICE_ACCOUNT",
            "keycloak/pgwarden-backup",
        ),
        ("PGWARDEN_K8S_HOST", "https://kubernetes.default.svc"),
        ("PGWARDEN_K8S_CA_FILE", ca.to_str().unwrap()),
    ];
    for run_no in 0..2 {
        let run = fake.run(shell, &env);
        assert!(run.success, "run {run_no}:\n{}", run.stderr);
        let calls = &run.calls;
        let enabled = find(calls, &["auth", "enable", "kubernetes"]).len();
        assert_eq!(enabled, if run_no == 0 { 1 } else { 0 }, "{calls:#?}");
        let config = one(calls, &["write", "auth/kubernetes/config"]);
        assert_eq!(
            config.kv()["kubernetes_host"],
            "https://kubernetes.default.svc"
        );
        assert_eq!(
            config.kv()["kubernetes_ca_cert"],
            format!("@{}", ca.display())
        );
        for (role, namespace, name, policy) in [
            ("pgwarden", "keycloak", "keycloak", "pgwarden"),
            (
                "pgwarden-backup",
                "keycloak",
                "pgwarden-backup",
                "pgwarden-backup",
            ),
        ] {
            let call = one(calls, &["write", &format!("auth/kubernetes/role/{role}")]);
            let kv = call.kv();
            assert_eq!(kv["bound_service_account_names"], name);
            assert_eq!(kv["bound_service_account_namespaces"], namespace);
            assert_eq!(kv["audience"], "vault");
            assert_eq!(kv["token_policies"], policy);
            assert_eq!(kv["token_no_default_policy"], "true");
            assert_eq!(kv["token_explicit_max_ttl"], "0");
        }
        // The proxy's token is periodic with no maximum lifetime, as through the AppRole.
        let proxy = one(calls, &["write", "auth/kubernetes/role/pgwarden"]);
        assert_eq!(proxy.kv()["token_period"], "1h");
        assert_eq!(proxy.kv()["token_max_ttl"], "0");
        // No AppRole secret id was issued: nobody asked for one.
        assert!(find(calls, &["write", "-f", "-field=secret_id"]).is_empty());
        assert_no_secret(&run, &[DB_PASSWORD, TOKEN]);
    }
    assert!(!fake.out_dir().exists());

    // Without the API's address, or with an account that is not namespace/name: nothing runs.
    for (k, v) in [
        ("PGWARDEN_K8S_HOST", ""),
        ("PGWARDEN_K8S_SERVICE_ACCOUNT", "keycloak"),
        ("PGWARDEN_K8S_SERVICE_ACCOUNT", "Keycloak/keycloak"),
        ("PGWARDEN_K8S_SERVICE_ACCOUNT", "keycloak/keycloak/x"),
        ("PGWARDEN_K8S_HOST", "http://kubernetes.default.svc"),
    ] {
        let mut bad: Vec<(&str, &str)> = env.to_vec();
        bad.push((k, v));
        let run = fake.run(shell, &bad);
        assert!(!run.success, "{k}={v} was accepted");
        assert!(run.calls.is_empty(), "{k}={v}: vault was called first");
        assert!(run.stderr.contains(k), "{k}: {}", run.stderr);
    }
}
