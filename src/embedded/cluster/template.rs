//! A cache of freshly initdb'd data directories, so that each test cluster is a copy instead of a
//! new `initdb` (which takes seconds on a loaded machine).
//!
//! There is one template per (bindir, postgres binary, superuser, db user), built once under
//! `$TMPDIR/pgwarden-initdb-<euid>/` while holding an exclusive lock file, and marked complete by a
//! `ready` file written last. Readers that see `ready` copy without locking: a template is never
//! modified after it is marked. Many test processes may start clusters at the same moment.
//!
//! The template's superuser password is stored beside it (mode 0600) because each cluster starts
//! with it and immediately replaces it. This module must never use a cache directory that someone
//! else owns or could write to, and never hand out a template that is not marked complete.

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use tokio::time::Instant;

use aws_lc_rs::digest;
use secrecy::{ExposeSecret, SecretString};

use super::ClusterError;
use super::system::{Binaries, DbUser, effective_ids, run, write_new};

/// Bump when the template's contents or layout change, so stale caches are ignored.
const LAYOUT_VERSION: &str = "1";

/// A complete template data directory and the superuser password it was created with.
pub(super) struct Template {
    pub data_dir: PathBuf,
    pub password: SecretString,
}

/// The template for this installation, user and superuser, built if needed.
///
/// Blocking: call it from a blocking thread.
pub(super) fn ensure(
    bins: &Binaries,
    superuser: &str,
    user: &DbUser,
) -> Result<Template, ClusterError> {
    let root = cache_root()?;
    let key = cache_key(bins, superuser, user)?;
    let dir = root.join(&key);
    if let Some(template) = load(&dir)? {
        return Ok(template);
    }
    let lock_path = root.join(format!("{key}.lock"));
    let lock = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(ClusterError::io(format!("open {}", lock_path.display())))?;
    lock.lock()
        .map_err(ClusterError::io(format!("lock {}", lock_path.display())))?;
    // Someone else may have built it while we waited.
    if let Some(template) = load(&dir)? {
        return Ok(template);
    }
    build(bins, superuser, user, &dir)?;
    load(&dir)?.ok_or_else(|| {
        ClusterError::io(format!("load template {}", dir.display()))(std::io::Error::other(
            "not marked ready after building",
        ))
    })
    // `lock` is released when dropped here.
}

/// `$TMPDIR/pgwarden-initdb-<euid>`, created if missing, refused unless it is a real directory
/// owned by us and writable by nobody else.
fn cache_root() -> Result<PathBuf, ClusterError> {
    let (euid, _) = effective_ids()?;
    let root = std::env::temp_dir().join(format!("pgwarden-initdb-{euid}"));
    match fs::DirBuilder::new().mode(0o711).create(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(ClusterError::io(format!("create {}", root.display()))(e)),
    }
    let meta = fs::symlink_metadata(&root)
        .map_err(ClusterError::io(format!("stat {}", root.display())))?;
    let unsafe_because = if !meta.is_dir() {
        Some("it is not a directory")
    } else if meta.uid() != euid {
        Some("it is owned by another user")
    } else if meta.mode() & 0o022 != 0 {
        Some("others can write to it")
    } else {
        None
    };
    match unsafe_because {
        Some(reason) => Err(ClusterError::UnsafeCache {
            path: root,
            reason: reason.to_owned(),
        }),
        None => Ok(root),
    }
}

/// Identifies the installation (bindir plus the postgres binary's size and mtime, which change on
/// upgrade), the superuser and the db user.
fn cache_key(bins: &Binaries, superuser: &str, user: &DbUser) -> Result<String, ClusterError> {
    let meta = fs::metadata(&bins.postgres).map_err(ClusterError::io(format!(
        "stat {}",
        bins.postgres.display()
    )))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let material = format!(
        "{LAYOUT_VERSION}\0{}\0{}\0{mtime}\0{superuser}\0{}\0{}",
        bins.bindir.display(),
        meta.len(),
        user.uid,
        user.gid
    );
    let hash = digest::digest(&digest::SHA256, material.as_bytes());
    Ok(hash.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The template in `dir`, if it is marked complete.
fn load(dir: &Path) -> Result<Option<Template>, ClusterError> {
    if !dir.join("ready").exists() {
        return Ok(None);
    }
    let path = dir.join("password");
    let password =
        fs::read_to_string(&path).map_err(ClusterError::io(format!("read {}", path.display())))?;
    Ok(Some(Template {
        data_dir: dir.join("data"),
        password: SecretString::from(password.trim_end().to_owned()),
    }))
}

/// Run initdb into `dir/data`; the caller holds the lock.
fn build(bins: &Binaries, superuser: &str, user: &DbUser, dir: &Path) -> Result<(), ClusterError> {
    let started = Instant::now();
    if dir.exists() {
        // Left over from a build that died before marking it ready.
        fs::remove_dir_all(dir).map_err(ClusterError::io(format!("remove {}", dir.display())))?;
    }
    fs::DirBuilder::new()
        .mode(0o711)
        .create(dir)
        .map_err(ClusterError::io(format!("create {}", dir.display())))?;
    let data = dir.join("data");
    user.create_dir(&data, 0o700)?;

    let password = super::random_password()?;
    let pwfile = dir.join("pwfile");
    write_new(
        &pwfile,
        format!("{}\n", password.expose_secret()).as_bytes(),
        0o600,
    )?;
    user.own(&pwfile)?;
    let mut initdb = user.command(&bins.initdb);
    initdb
        .arg("-D")
        .arg(&data)
        .arg("--auth=scram-sha-256")
        .arg("--pwfile")
        .arg(&pwfile)
        .args(["-U", superuser, "--no-sync", "-E", "UTF8", "--locale=C"]);
    let result = run(initdb);
    let removed = fs::remove_file(&pwfile);
    result?;
    removed.map_err(ClusterError::io(format!("remove {}", pwfile.display())))?;

    write_new(
        &dir.join("password"),
        password.expose_secret().as_bytes(),
        0o600,
    )?;
    write_new(&dir.join("ready"), b"", 0o644)?;
    tracing::debug!(
        template = %dir.display(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "built initdb template"
    );
    Ok(())
}
