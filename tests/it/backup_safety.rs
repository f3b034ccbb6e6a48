//! What the built `pgwarden backup`, `backup verify` and `restore` do to keep plaintext and
//! credentials in: no core dump of pgwarden, pg_dump or pg_restore (their core size limit is
//! 0, hard); files 0600 and the directory 0700 under a umask that takes nothing away; a dump
//! that hangs with something holding its pipe is stopped at the target's timeout, its
//! credential revoked and the process gone.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use crate::support::backup::{BackupEnv, BackupOptions, seed};
use crate::support::harness::{GENEROUS, wait_until};

/// A pg_dump that records the core limits it and its parent (pgwarden) run with.
const RECORDING_LIMITS: &str = r#"#!/bin/bash
[ "$1" = --version ] && exec "{real}" "$@"
here=$(dirname "$0")
{ ulimit -S -c; ulimit -H -c; grep "Max core file size" /proc/$PPID/limits; } > "$here/pg_dump-limits"
exec "{real}" "$@"
"#;

/// A pg_dump that hangs, having started a process of another session that holds its output
/// open (so killing pg_dump's process group does not end the output).
const HANGING: &str = r#"#!/bin/bash
[ "$1" = --version ] && exec "{real}" "$@"
here=$(dirname "$0")
setsid sleep 600 &
echo $! > "$here/holder"
exec sleep 600
"#;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_core_dumps_and_private_files_whatever_the_umask() {
    let env = BackupEnv::start(BackupOptions {
        pg_dump_wrapper: Some(RECORDING_LIMITS.into()),
        ..BackupOptions::default()
    })
    .await;
    seed(env.direct(), 100, "marker-limits").await;
    let pgwarden = env.pgwarden(&[]).get_program().to_owned();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" backup --config \"$1\" --target keycloak")
        .arg(&pgwarden)
        .arg(env.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let limits = std::fs::read_to_string(env.dir().join("pg_dump-limits")).unwrap();
    let lines: Vec<&str> = limits.lines().collect();
    assert_eq!(
        lines[..2],
        ["0", "0"],
        "pg_dump's soft and hard core limits"
    );
    let pgwarden_limit: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        pgwarden_limit[4..6],
        ["0", "0"],
        "pgwarden's own: {}",
        lines[2]
    );

    // umask 000 took nothing away: the directory it made is 0700, its files 0600.
    assert_eq!(mode(&env.backups()), 0o700);
    let files = env.backup_files();
    assert!(files.iter().any(|f| f.ends_with(".dump.age")), "{files:?}");
    for f in files
        .iter()
        .filter(|f| !f.starts_with(".pgwarden-backup-state-"))
    {
        assert_eq!(mode(&env.backups().join(f)), 0o600, "{f}");
    }

    // pg_restore, run by backup verify, holds the plaintext too.
    let dump = files.iter().find(|f| f.ends_with(".dump.age")).unwrap();
    let wrapper = env.dir().join("pg_restore-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\n{{ ulimit -S -c; ulimit -H -c; }} > \"$(dirname \"$0\")/pg_restore-limits\"\nexec \"{}\" \"$@\"\n",
            env.pg_restore().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, PermissionsExt::from_mode(0o755)).unwrap();
    let out = env
        .pgwarden(&["backup", "verify", "--identity"])
        .arg(&env.identity_path)
        .arg("--pg-restore")
        .arg(&wrapper)
        .arg(env.backups().join(dump))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let limits = std::fs::read_to_string(env.dir().join("pg_restore-limits")).unwrap();
    assert_eq!(limits, "0\n0\n", "pg_restore's soft and hard core limits");
}

/// Kills the process that held the hanging dump's output, however the test ends.
struct Holder<'a>(&'a Path);

impl Drop for Holder<'_> {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid.trim()])
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_that_hangs_holding_its_pipe_is_stopped_and_its_login_revoked() {
    let env = BackupEnv::start(BackupOptions {
        pg_dump_wrapper: Some(HANGING.into()),
        timeout: Some("2s".into()),
        ..BackupOptions::default()
    })
    .await;
    seed(env.direct(), 10, "marker-hanging").await;
    let holder_file = env.dir().join("holder");
    let _holder = Holder(&holder_file);
    let mut child = env
        .pgwarden(&["backup", "--config"])
        .arg(env.config_path())
        .args(["--target", "keycloak"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(GENEROUS, "the dump has started", async || {
        holder_file.exists() && env.backup_roles().await.len() == 1
    })
    .await;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > GENEROUS {
            let _ = child.kill();
            panic!("pgwarden backup is still running {GENEROUS:?} after its dump hung");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("failed (timeout)"), "{stderr}");
    assert!(
        env.backup_roles().await.is_empty(),
        "the login is revoked: {stderr}"
    );
    let finals: Vec<String> = env
        .backup_files()
        .into_iter()
        .filter(|f| !f.starts_with('.'))
        .collect();
    assert!(finals.is_empty(), "{finals:?}");
}
