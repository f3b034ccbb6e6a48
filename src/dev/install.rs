//! What `pgwarden dev` does when no PostgreSQL server is installed: say so in
//! one paragraph, and install the distribution's server package when it can
//! (Debian or Ubuntu, as root or with passwordless sudo), saying exactly what
//! it runs — or print the one command that does.
//!
//! The distribution's own cluster is never created, so never started: as the
//! official postgres container image does, `create_main_cluster = false` is
//! set in postgresql-common's configuration before the server package goes
//! in. This module never runs anything but the commands of its [`Plan`], and
//! never without saying so first.

use std::process::Stdio;

use super::DevError;

/// What decides how the server can be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// `/etc/os-release` names Debian or Ubuntu (or a derivative of them).
    pub debian_like: bool,
    pub root: bool,
    /// `sudo -n true` succeeds.
    pub passwordless_sudo: bool,
}

/// Where postgresql-common keeps what `pg_createcluster` does by default.
const CREATECLUSTER_CONF: &str = "/etc/postgresql-common/createcluster.conf";

/// How to get PostgreSQL's server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Run these commands, in order (each a program and its arguments).
    Install(Vec<Vec<String>>),
    /// pgwarden cannot install it here: the person must run this.
    Tell(String),
}

impl Host {
    /// Looks at this machine.
    pub fn detect() -> Host {
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let root = crate::embedded::cluster::effective_uid().is_ok_and(|uid| uid == 0);
        let passwordless_sudo = !root
            && std::process::Command::new("sudo")
                .args(["-n", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        Host {
            debian_like: debian_like(&os_release),
            root,
            passwordless_sudo,
        }
    }
}

/// Whether an `/etc/os-release` text is Debian's, Ubuntu's or a derivative's.
pub fn debian_like(os_release: &str) -> bool {
    os_release.lines().any(|line| {
        let Some((key, value)) = line.split_once('=') else {
            return false;
        };
        matches!(key.trim(), "ID" | "ID_LIKE")
            && value
                .trim_matches('"')
                .split_whitespace()
                .any(|id| id == "debian" || id == "ubuntu")
    })
}

/// The plan for `host`.
pub fn plan(host: &Host) -> Plan {
    let steps = install_steps();
    if !host.debian_like {
        return Plan::Tell(
            "install PostgreSQL's server (version 15 or later) with your package manager, \
             then run `pgwarden dev` again (or give its bin directory with --postgres-bin DIR)"
                .into(),
        );
    }
    let sudo = |step: Vec<String>| {
        let mut with = vec!["sudo".to_owned(), "-n".to_owned()];
        with.extend(step);
        with
    };
    match (host.root, host.passwordless_sudo) {
        (true, _) => Plan::Install(steps),
        (false, true) => Plan::Install(steps.into_iter().map(sudo).collect()),
        (false, false) => Plan::Tell(format!(
            "sudo sh -c '{}'",
            steps
                .iter()
                .map(|s| shell_words(s))
                .collect::<Vec<_>>()
                .join(" && ")
        )),
    }
}

/// The commands that install the server without creating its main cluster.
fn install_steps() -> Vec<Vec<String>> {
    let step = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
    vec![
        step(&["apt-get", "update", "-q"]),
        step(&[
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "postgresql-common",
        ]),
        step(&[
            "sed",
            "-ri",
            r"s/^#?\s*create_main_cluster\s*=.*$/create_main_cluster = false/",
            CREATECLUSTER_CONF,
        ]),
        step(&[
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "postgresql",
        ]),
    ]
}

/// `words` as one shell command line (single-quoting what needs it).
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The paragraph `pgwarden dev` prints when it finds no server.
pub fn explain(plan: &Plan) -> String {
    let first = "pgwarden dev runs a throwaway PostgreSQL cluster of its own, and found no \
                 PostgreSQL server programs (initdb, pg_ctl, postgres) on this machine: \
                 none through pg_config, in /usr/lib/postgresql/*/bin, or on PATH.";
    match plan {
        Plan::Install(steps) => format!(
            "{first} It will now install the distribution's server package, without \
             creating or starting the distribution's own cluster, by running:\n{}",
            steps
                .iter()
                .map(|s| format!("  {}", shell_words(s)))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        Plan::Tell(command) => format!(
            "{first} It cannot install it here by itself. Run:\n  {command}\n\
             then run pgwarden dev again; or, if PostgreSQL is installed elsewhere (a PGDG \
             install, Homebrew, Nix), give its bin directory: pgwarden dev --postgres-bin DIR"
        ),
    }
}

/// Runs the plan's commands in order, their output going to ours; stops at
/// the first that fails and says which.
pub async fn run(steps: &[Vec<String>]) -> Result<(), DevError> {
    for step in steps {
        let (program, args) = step
            .split_first()
            .ok_or_else(|| DevError("an empty install step".into()))?;
        let status = tokio::process::Command::new(program)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .await
            .map_err(|e| DevError(format!("running {}: {e}", shell_words(step))))?;
        if !status.success() {
            return Err(DevError(format!(
                "{} failed ({status}); PostgreSQL was not installed",
                shell_words(step)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
    const UBUNTU: &str = "NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\n";
    const MINT: &str = "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n";
    const FEDORA: &str = "ID=fedora\nID_LIKE=\"rhel centos\"\n";

    #[test]
    fn debian_ubuntu_and_their_derivatives_are_recognised() {
        assert!(debian_like(DEBIAN));
        assert!(debian_like(UBUNTU));
        assert!(debian_like(MINT));
        assert!(!debian_like(FEDORA));
        assert!(!debian_like(""));
        assert!(!debian_like("VERSION_CODENAME=debian\n"));
    }

    fn host(debian_like: bool, root: bool, passwordless_sudo: bool) -> Host {
        Host {
            debian_like,
            root,
            passwordless_sudo,
        }
    }

    #[test]
    fn root_installs_never_creating_the_distributions_cluster_first() {
        let Plan::Install(steps) = plan(&host(true, true, false)) else {
            panic!("root on Debian installs");
        };
        let lines: Vec<String> = steps.iter().map(|s| shell_words(s)).collect();
        let common = lines.iter().position(|l| l.ends_with("postgresql-common"));
        let no_cluster = lines
            .iter()
            .position(|l| l.contains("create_main_cluster = false"));
        let server = lines.iter().position(|l| l.ends_with(" postgresql"));
        assert!(common < no_cluster && no_cluster < server, "{lines:?}");
        assert!(no_cluster.is_some() && server.is_some());
    }

    #[test]
    fn sudo_prefixes_every_step_and_without_it_the_command_is_printed() {
        let Plan::Install(steps) = plan(&host(true, false, true)) else {
            panic!("passwordless sudo installs");
        };
        assert!(steps.iter().all(|s| s[..2] == ["sudo", "-n"]));
        let Plan::Tell(command) = plan(&host(true, false, false)) else {
            panic!("no privilege: tell");
        };
        assert!(command.starts_with("sudo sh -c '"), "{command}");
        assert!(command.contains("create_main_cluster = false"), "{command}");
        assert!(command.contains("postgresql"), "{command}");
        let Plan::Tell(other) = plan(&host(false, true, false)) else {
            panic!("not Debian: tell");
        };
        assert!(other.contains("package manager"), "{other}");
        // The paragraph says what it runs, or what to run, and offers --postgres-bin.
        assert!(explain(&plan(&host(true, true, false))).contains("apt-get install"));
        assert!(explain(&Plan::Tell(command.clone())).contains(&command));
        assert!(explain(&Plan::Tell(command)).contains("--postgres-bin"));
    }

    #[tokio::test]
    async fn a_failing_step_stops_the_install_and_is_named() {
        let steps = vec![
            vec!["true".to_owned()],
            vec!["false".to_owned()],
            vec!["this-program-does-not-exist".to_owned()],
        ];
        let err = run(&steps).await.unwrap_err();
        assert!(err.0.starts_with("false failed"), "{}", err.0);
        assert!(run(&steps[..1]).await.is_ok());
    }
}
