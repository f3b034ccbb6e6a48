//! What the built `pgwarden backup`, `backup verify` and `restore` do to keep plaintext and
//! credentials in: no core dump of pgwarden, pg_dump or pg_restore (their core size limit is
//! 0, hard); files 0600 and the directory 0700 under a umask that takes nothing away.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::backup::{BackupEnv, BackupOptions, seed};

/// A pg_dump that records the core limits it and its parent (pgwarden) run with.
const RECORDING_LIMITS: &str = r#"#!/bin/bash
[ "$1" = --version ] && exec "{real}" "$@"
here=$(dirname "$0")
{ ulimit -S -c; ulimit -H -c; grep "Max core file size" /proc/$PPID/limits; } > "$here/pg_dump-limits"
exec "{real}" "$@"
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
