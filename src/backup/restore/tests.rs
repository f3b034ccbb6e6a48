//! Reading a backup back, in memory and in a temporary directory: the bytes
//! checked against the manifest are the bytes decrypted.

use std::io::Write as _;
use std::time::SystemTime;

use secrecy::ExposeSecret;

use super::*;
use crate::backup::manifest::{self, Tools};
use crate::backup::pipeline;

fn encrypted(plain: &[u8], to: &age::x25519::Identity) -> (Vec<u8>, String) {
    let mut cipher = Vec::new();
    let w = pipeline::encrypt(&mut &plain[..], &[to.to_public()], &mut cipher).unwrap();
    (cipher, w.sha256)
}

fn manifest_for(file: &str, sha256: String) -> Manifest {
    let now = manifest::rfc3339(SystemTime::now());
    Manifest {
        format: manifest::MANIFEST_FORMAT,
        target: "t".into(),
        file: file.into(),
        started_at: now.clone(),
        finished_at: now,
        duration_ms: 1,
        database: "k".into(),
        server: "db:5432".into(),
        server_version: None,
        archive_format: None,
        dump_bytes: 0,
        encrypted_bytes: 0,
        sha256,
        recipients: Vec::new(),
        credential_source: "b".into(),
        tools: Tools {
            pgwarden: "0".into(),
            pg_dump: "pg_dump".into(),
            age: manifest::AGE_CRATE.into(),
        },
    }
}

/// Whether this process has `path` open.
fn open_here(path: &Path) -> bool {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == path))
}

#[test]
fn the_bytes_checked_against_the_manifest_are_the_bytes_decrypted() {
    let dir = tempfile::tempdir().unwrap();
    let identity = age::x25519::Identity::generate();
    let identity_path = dir.path().join("identity.txt");
    std::fs::write(&identity_path, identity.to_string().expose_secret()).unwrap();
    let (genuine, sha) = encrypted(b"the genuine dump", &identity);
    let (forged, _) = encrypted(b"a forged dump", &identity);
    let stem = "t-20260512T215318.123Z";
    let name = format!("{stem}{DUMP_SUFFIX}");
    let manifest = manifest_for(&name, sha);
    std::fs::write(
        dir.path().join(format!("{stem}{MANIFEST_SUFFIX}")),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    // A backup "file" that gives the genuine bytes to the first reader that
    // opens it and forged ones to the next: a FIFO.
    let fifo = dir.path().join(&name);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let writer_path = fifo.clone();
    // Not joined: with the check in place, its second open waits for a reader
    // that never comes, until the test process exits.
    std::thread::spawn(move || {
        for bytes in [genuine, forged] {
            // The next open is another reader's only once the last one closed
            // (a reader blocked in open() holds no descriptor yet).
            while open_here(&writer_path) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&writer_path) {
                let _ = f.write_all(&bytes);
            }
        }
    });
    let mut out = Vec::new();
    let result = to_writer(&fifo, &identity_path, &mut out);
    assert!(
        !out.windows(6).any(|w| w == b"forged"),
        "decrypted other bytes than those checked: {:?}",
        String::from_utf8_lossy(&out)
    );
    let e = result.expect_err("a backup that is not a regular file is refused");
    assert!(matches!(e, RestoreError::NotAFile { .. }), "{e}");
}

#[test]
fn a_regular_file_is_checked_then_decrypted_from_the_same_open_file() {
    let dir = tempfile::tempdir().unwrap();
    let identity = age::x25519::Identity::generate();
    let identity_path = dir.path().join("identity.txt");
    std::fs::write(&identity_path, identity.to_string().expose_secret()).unwrap();
    let (cipher, sha) = encrypted(b"the genuine dump", &identity);
    let stem = "t-20260512T215318.123Z";
    let name = format!("{stem}{DUMP_SUFFIX}");
    std::fs::write(dir.path().join(&name), &cipher).unwrap();
    let manifest_path = dir.path().join(format!("{stem}{MANIFEST_SUFFIX}"));
    let mut manifest = manifest_for(&name, sha);
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let mut out = Vec::new();
    to_writer(&dir.path().join(&name), &identity_path, &mut out).unwrap();
    assert_eq!(out, b"the genuine dump");
    manifest.sha256 = "00".repeat(32);
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let e = to_writer(&dir.path().join(&name), &identity_path, &mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("differs from its manifest's"), "{e}");
}

#[test]
fn a_password_in_pg_restores_own_arguments_is_refused_before_anything_is_read() {
    let missing = Path::new("/nonexistent/pgwarden-test");
    let extra = [
        "--no-owner".to_owned(),
        "--dbname=postgresql://u:secret@db/k".to_owned(),
    ];
    let e = to_database(missing, missing, missing, "host=db dbname=k", &extra).unwrap_err();
    assert!(matches!(e, RestoreError::PasswordInArgument(2)), "{e}");
    assert!(!e.to_string().contains("secret"), "{e}");
    let e = to_database(
        missing,
        missing,
        missing,
        "postgresql://db/k?pass%77ord=secret",
        &[],
    )
    .unwrap_err();
    assert!(matches!(e, RestoreError::PasswordInDbname), "{e}");
}

#[test]
fn what_pg_restore_says_while_restoring_stays_out_of_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let identity = age::x25519::Identity::generate();
    let identity_path = dir.path().join("identity.txt");
    std::fs::write(&identity_path, identity.to_string().expose_secret()).unwrap();
    let (cipher, _) = encrypted(b"a dump", &identity);
    let backup = dir.path().join("t.dump.age");
    std::fs::write(&backup, &cipher).unwrap();
    // pg_restore quotes the row a COPY failed on in its CONTEXT line.
    let fake = dir.path().join("pg_restore");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncat >/dev/null\necho 'CONTEXT:  COPY realm_secret, line 1: \"row-plaintext\"' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let e = to_database(&backup, &identity_path, &fake, "host=db dbname=k", &[]).unwrap_err();
    assert!(matches!(e, RestoreError::PgRestoreFailed { .. }), "{e}");
    assert!(!e.to_string().contains("row-plaintext"), "{e}");
    assert!(e.to_string().contains("its messages are above"), "{e}");
}
