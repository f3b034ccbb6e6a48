//! Operating-system plumbing for the embedded cluster: which PostgreSQL binaries to run, as which
//! user, and how to run them and copy their files.
//!
//! PostgreSQL refuses to run as root, so when we are root every PostgreSQL program runs as an
//! unprivileged user and every file it needs is chowned to that user. This module must never use
//! `unsafe` or libc, never run a PostgreSQL program as root, and never pass our environment
//! through wholesale (PG* variables would change what the programs do).

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{ClusterError, HOST};

/// Where Debian and Ubuntu install each PostgreSQL major version.
const DEBIAN_LIB: &str = "/usr/lib/postgresql";
/// Users that may run PostgreSQL when we are root, in order of preference.
const UNPRIVILEGED_USERS: [&str; 2] = ["postgres", "nobody"];
/// How much of a program's output an error message carries.
const TAIL_LINES: usize = 40;
const TAIL_BYTES: usize = 8 * 1024;
/// Threads copying a template's files; the work is waiting on the file system, not the CPU.
const COPY_THREADS: usize = 8;

/// The PostgreSQL programs a cluster needs, all from one installation.
#[derive(Debug, Clone)]
pub(super) struct Binaries {
    pub bindir: PathBuf,
    pub initdb: PathBuf,
    pub pg_ctl: PathBuf,
    pub postgres: PathBuf,
}

impl Binaries {
    /// `explicit` if given, else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`,
    /// else the first directory on `PATH` that has all three programs.
    pub fn discover(explicit: Option<&Path>) -> Result<Binaries, ClusterError> {
        if let Some(dir) = explicit {
            return Binaries::in_dir(dir).ok_or_else(|| {
                ClusterError::Binaries(format!(
                    "{} lacks initdb, pg_ctl or postgres",
                    dir.display()
                ))
            });
        }
        pg_config_bindir()
            .and_then(|dir| Binaries::in_dir(&dir))
            .or_else(newest_debian_bindir)
            .or_else(|| {
                let path = std::env::var_os("PATH")?;
                std::env::split_paths(&path).find_map(|dir| Binaries::in_dir(&dir))
            })
            .ok_or_else(|| {
                ClusterError::Binaries(format!(
                    "none via pg_config, in {DEBIAN_LIB}/*/bin or on PATH"
                ))
            })
    }

    fn in_dir(dir: &Path) -> Option<Binaries> {
        let found = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        Some(Binaries {
            bindir: dir.to_path_buf(),
            initdb: found("initdb")?,
            pg_ctl: found("pg_ctl")?,
            postgres: found("postgres")?,
        })
    }
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(dir.trim()))
}

fn newest_debian_bindir() -> Option<Binaries> {
    let mut candidates: Vec<(Vec<u32>, Binaries)> = fs::read_dir(DEBIAN_LIB)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.to_owned();
            let key = version
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            Some((key, Binaries::in_dir(&entry.path().join("bin"))?))
        })
        .collect();
    candidates.sort_by(|a, b| a.0.cmp(&b.0));
    candidates.pop().map(|(_, bins)| bins)
}

/// The user PostgreSQL programs run as.
#[derive(Debug, Clone, Copy)]
pub(super) struct DbUser {
    pub uid: u32,
    pub gid: u32,
    /// True when we are root and must drop to `uid`/`gid` for every PostgreSQL program and
    /// hand it its files; false when the programs simply run as us.
    pub switch: bool,
}

impl DbUser {
    /// Ourselves, or `postgres` (else `nobody`) from /etc/passwd when we are root.
    pub fn detect() -> Result<DbUser, ClusterError> {
        let (euid, egid) = effective_ids()?;
        if euid != 0 {
            return Ok(DbUser {
                uid: euid,
                gid: egid,
                switch: false,
            });
        }
        let passwd =
            fs::read_to_string("/etc/passwd").map_err(ClusterError::io("read /etc/passwd"))?;
        UNPRIVILEGED_USERS
            .iter()
            .find_map(|name| passwd_entry(&passwd, name))
            .filter(|&(uid, _)| uid != 0)
            .map(|(uid, gid)| DbUser {
                uid,
                gid,
                switch: true,
            })
            .ok_or_else(|| {
                ClusterError::NoDbUser(format!(
                    "running as root, and /etc/passwd has none of {UNPRIVILEGED_USERS:?}"
                ))
            })
    }

    /// A command for a PostgreSQL program: as the db user, in `/`, with a minimal environment.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear().env("LC_ALL", "C").current_dir("/");
        for keep in ["PATH", "TZ"] {
            if let Some(value) = std::env::var_os(keep) {
                cmd.env(keep, value);
            }
        }
        if self.switch {
            // std drops supplementary groups when root sets a uid without explicit groups.
            cmd.uid(self.uid).gid(self.gid);
        }
        cmd
    }

    /// Give `path` to the db user (a no-op when the programs run as us).
    pub fn own(&self, path: &Path) -> Result<(), ClusterError> {
        if self.switch {
            chown(path, Some(self.uid), Some(self.gid))
                .map_err(ClusterError::io(format!("chown {}", path.display())))?;
        }
        Ok(())
    }

    /// Create directory `path` with `mode`, owned by the db user.
    pub fn create_dir(&self, path: &Path, mode: u32) -> Result<(), ClusterError> {
        fs::DirBuilder::new()
            .mode(mode)
            .create(path)
            .map_err(ClusterError::io(format!("create {}", path.display())))?;
        // The umask may have narrowed the mode; set it exactly.
        set_mode(path, mode)?;
        self.own(path)
    }

    /// Copy the directory tree `from` to `to` (which must not exist), keeping permission bits and
    /// giving every copy to the db user.
    ///
    /// Directories are made first, then the files are copied by several threads: creating a file
    /// is the slow part on some disks (about 0.5 ms each on the VMs we test on, and a data
    /// directory has about a thousand files), and those waits overlap well.
    pub fn copy_tree(&self, from: &Path, to: &Path) -> Result<(), ClusterError> {
        let mut files = Vec::new();
        self.copy_dirs(from, to, &mut files)?;
        let workers = COPY_THREADS.min(files.len().max(1));
        let chunk = files.len().div_ceil(workers).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = files
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || part.iter().try_for_each(|(s, d)| self.copy_file(s, d)))
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ClusterError::io("copy the data directory")(
                        io::Error::other("a copying thread panicked"),
                    ))
                })
            })
        })
    }

    /// Recreate the directories of `from` under `to`, collecting the files to copy.
    fn copy_dirs(
        &self,
        from: &Path,
        to: &Path,
        files: &mut Vec<(PathBuf, PathBuf)>,
    ) -> Result<(), ClusterError> {
        let meta = fs::symlink_metadata(from)
            .map_err(ClusterError::io(format!("stat {}", from.display())))?;
        self.create_dir(to, meta.mode() & 0o7777)?;
        let entries =
            fs::read_dir(from).map_err(ClusterError::io(format!("list {}", from.display())))?;
        for entry in entries {
            let entry = entry.map_err(ClusterError::io(format!("list {}", from.display())))?;
            let (src, dst) = (entry.path(), to.join(entry.file_name()));
            let kind = entry
                .file_type()
                .map_err(ClusterError::io(format!("stat {}", src.display())))?;
            if kind.is_dir() {
                self.copy_dirs(&src, &dst, files)?;
            } else if kind.is_file() {
                files.push((src, dst));
            } else {
                let unexpected = io::Error::other("not a regular file or directory");
                return Err(ClusterError::io(format!("copy {}", src.display()))(
                    unexpected,
                ));
            }
        }
        Ok(())
    }

    fn copy_file(&self, from: &Path, to: &Path) -> Result<(), ClusterError> {
        // fs::copy keeps the permission bits.
        fs::copy(from, to).map_err(ClusterError::io(format!("copy {}", from.display())))?;
        self.own(to)
    }
}

/// Our effective uid and gid, read from the owner of /proc/self (no libc needed).
pub(super) fn effective_ids() -> Result<(u32, u32), ClusterError> {
    let meta = fs::metadata("/proc/self").map_err(ClusterError::io("stat /proc/self"))?;
    Ok((meta.uid(), meta.gid()))
}

/// uid and gid of `name` in the text of /etc/passwd.
fn passwd_entry(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

pub(super) fn set_mode(path: &Path, mode: u32) -> Result<(), ClusterError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(ClusterError::io(format!("chmod {}", path.display())))
}

/// Write `contents` to a new file `path` with `mode`.
pub(super) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), ClusterError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(ClusterError::io(format!("create {}", path.display())))?;
    file.write_all(contents)
        .map_err(ClusterError::io(format!("write {}", path.display())))?;
    set_mode(path, mode)
}

/// Run `cmd` to completion; a failure carries the tail of its output.
pub(super) fn run(mut cmd: Command) -> Result<Output, ClusterError> {
    let program = program_name(cmd.get_program());
    let out = cmd
        .output()
        .map_err(ClusterError::io(format!("run {program}")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(ClusterError::Command {
            program,
            status: out.status,
            output: output_tail(&out),
        })
    }
}

pub(super) fn program_name(program: &OsStr) -> String {
    Path::new(program)
        .file_name()
        .unwrap_or(program)
        .to_string_lossy()
        .into_owned()
}

/// The last lines of a program's stdout and stderr, for error messages.
pub(super) fn output_tail(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    tail(&text)
}

/// The last lines of `text`, bounded in lines and bytes.
pub(super) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let kept = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    if kept.len() <= TAIL_BYTES {
        return kept;
    }
    let mut start = kept.len() - TAIL_BYTES;
    while !kept.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &kept[start..])
}

/// Run a command on tokio's process driver.
pub(super) async fn run_async(cmd: std::process::Command) -> Result<Output, ClusterError> {
    let program = program_name(cmd.get_program());
    tokio::process::Command::from(cmd)
        .output()
        .await
        .map_err(ClusterError::io(format!("run {program}")))
}

/// A port that was free a moment ago.
pub(super) fn free_port() -> Result<u16, ClusterError> {
    let listener =
        std::net::TcpListener::bind((HOST, 0)).map_err(ClusterError::io("pick a free port"))?;
    let port = listener
        .local_addr()
        .map_err(ClusterError::io("pick a free port"))?
        .port();
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgresql:x:7:7::/:/bin/false\n\
                      postgres:x:101:104:PostgreSQL administrator:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(passwd_entry(passwd, "postgres"), Some((101, 104)));
        assert_eq!(passwd_entry(passwd, "root"), Some((0, 0)));
        assert_eq!(passwd_entry(passwd, "nobody"), None);
        assert_eq!(passwd_entry("broken:x:abc:1\n", "broken"), None);
    }

    #[test]
    fn tail_keeps_the_end() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(&text);
        assert!(t.ends_with("line 99"));
        assert!(!t.contains("line 59\n"));
        assert!(t.starts_with("line 60"));
        let long = "é".repeat(10_000);
        assert!(tail(&long).len() <= TAIL_BYTES + 3);
    }
}
