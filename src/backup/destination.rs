//! Where backups are stored: the [`Destination`] interface and the local
//! directory that implements it (object storage can come later behind the
//! same interface).
//!
//! An object is written under a temporary name and becomes visible under its
//! final name only when [`PendingObject::commit`] has made it durable (data
//! fsynced, then renamed, then the directory fsynced). A pending object that
//! is dropped uncommitted is removed, so a failed backup leaves nothing under
//! a final name; one whose process was killed leaves a temporary file that
//! the next run removes under the destination's lock. Only encrypted bytes
//! and manifests are ever given to a destination.
//!
//! Whoever else can write to the directory cannot redirect a write or a read
//! with a symbolic link: new files are created exclusively (`O_EXCL`, which
//! follows no link), committed with `link()` (which replaces nothing), and
//! the lock, state and manifest files are opened with `O_NOFOLLOW`. Files are
//! created 0600 whatever the umask (a umask only takes permissions away).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;

/// The marker in temporary names: `.<final name>.tmp-<random>`.
const TMP_MARKER: &str = ".tmp-";
/// The lock file that keeps two runs from writing one destination at once.
const LOCK_FILE: &str = ".pgwarden-backup.lock";

/// A store of backup files.
pub trait Destination: Send + Sync {
    /// Where it is, for logs (no credentials).
    fn describe(&self) -> String;
    /// Takes the destination for this run; `Ok(None)` when another run holds it.
    fn lock(&self) -> io::Result<Option<Box<dyn Send>>>;
    /// Removes what runs that died left behind (uncommitted objects); call
    /// only while holding the lock. Returns how many were removed.
    fn remove_leftovers(&self) -> io::Result<usize>;
    /// A new object, visible as `name` once committed. Fails if `name` exists.
    fn create(&self, name: &str) -> io::Result<Box<dyn PendingObject>>;
    /// The names of committed objects.
    fn list(&self) -> io::Result<Vec<String>>;
    /// An object's whole content (small ones: manifests).
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// A small state object of pgwarden's own (`name`), if it exists.
    fn state(&self, name: &str) -> io::Result<Option<Vec<u8>>>;
    /// Replaces the state object `name` whole (atomically).
    fn set_state(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
}

/// An object being written.
pub trait PendingObject: Write + Send {
    /// Makes the object durable under its final name.
    fn commit(self: Box<Self>) -> io::Result<()>;
}

/// A local directory (created 0700 if missing); files are 0600.
pub struct LocalDir {
    dir: PathBuf,
}

/// `open()` flags that refuse a symbolic link as the last component.
fn no_follow() -> i32 {
    OFlags::NOFOLLOW.bits() as i32
}

/// The whole content of `path`, which may not be a symbolic link.
fn read_no_follow(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    OpenOptions::new()
        .read(true)
        .custom_flags(no_follow())
        .open(path)?
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

impl LocalDir {
    pub fn new(dir: &Path) -> LocalDir {
        LocalDir {
            dir: dir.to_owned(),
        }
    }

    fn ensure(&self) -> io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
    }
}

/// Fails unless `name` is a plain file name (no separator, no `..`).
fn plain(name: &str) -> io::Result<&str> {
    let ok = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
    if ok {
        Ok(name)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a plain file name",
        ))
    }
}

impl Destination for LocalDir {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn lock(&self) -> io::Result<Option<Box<dyn Send>>> {
        self.ensure()?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(no_follow())
            .open(self.dir.join(LOCK_FILE))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(file))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn remove_leftovers(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.contains(TMP_MARKER) {
                std::fs::remove_file(self.dir.join(name.as_ref()))?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn PendingObject>> {
        let name = plain(name)?;
        self.ensure()?;
        let suffix = format!("{:016x}", rand::random::<u64>());
        let temp = self.dir.join(format!(".{name}{TMP_MARKER}{suffix}"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        Ok(Box::new(LocalPending {
            file: Some(file),
            temp,
            dir: self.dir.clone(),
            target: self.dir.join(name),
        }))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && entry.file_type()?.is_file() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        read_no_follow(&self.dir.join(plain(name)?))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(plain(name)?))?;
        sync_dir(&self.dir)
    }

    fn state(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match read_no_follow(&self.dir.join(format!(".{}", plain(name)?))) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn set_state(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.ensure()?;
        let path = self.dir.join(format!(".{}", plain(name)?));
        replace_file(&path, bytes)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory:
/// fsynced, renamed over `path`, the directory fsynced. Readers see the old
/// content or the new, never a part.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let temp = dir.join(format!(
        ".{}{TMP_MARKER}{:016x}",
        name.to_string_lossy(),
        rand::random::<u64>()
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&temp, path)?;
        sync_dir(dir)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

struct LocalPending {
    /// Taken by `commit`.
    file: Option<File>,
    temp: PathBuf,
    dir: PathBuf,
    target: PathBuf,
}

impl Write for LocalPending {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("object already committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl PendingObject for LocalPending {
    fn commit(mut self: Box<Self>) -> io::Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("object already committed"))?;
        file.sync_all()?;
        drop(file);
        // rename() would replace an existing backup: a hard link refuses to.
        std::fs::hard_link(&self.temp, &self.target)?;
        std::fs::remove_file(&self.temp)?;
        sync_dir(&self.dir)
    }
}

impl Drop for LocalPending {
    fn drop(&mut self) {
        // Uncommitted (or the temporary name is left after a commit that
        // failed halfway): the temporary file goes.
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// fsync of a directory, so a rename or removal in it survives a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != LOCK_FILE)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_object_appears_under_its_name_only_when_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let d = LocalDir::new(&tmp.path().join("backups"));
        let mut o = d.create("a.dump.age").unwrap();
        o.write_all(b"ciphertext").unwrap();
        assert!(d.list().unwrap().is_empty(), "not visible before commit");
        o.commit().unwrap();
        assert_eq!(d.list().unwrap(), ["a.dump.age"]);
        assert_eq!(d.read("a.dump.age").unwrap(), b"ciphertext");
        let mode = std::fs::metadata(tmp.path().join("backups/a.dump.age"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        // Never replaces an existing object.
        let o = d.create("a.dump.age").unwrap();
        assert!(o.commit().is_err());
        assert_eq!(d.read("a.dump.age").unwrap(), b"ciphertext");
        assert_eq!(names(&tmp.path().join("backups")), ["a.dump.age"]);
    }

    #[test]
    fn a_dropped_object_leaves_nothing_and_leftovers_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let d = LocalDir::new(tmp.path());
        let mut o = d.create("b.dump.age").unwrap();
        o.write_all(b"half").unwrap();
        drop(o);
        assert!(names(tmp.path()).is_empty());
        // A run that died: its temporary file stays until the next run.
        std::fs::write(tmp.path().join(".c.dump.age.tmp-xyz"), b"half").unwrap();
        let _lock = d.lock().unwrap().expect("free");
        assert!(
            d.list().unwrap().is_empty(),
            "temporary files are not listed"
        );
        assert_eq!(d.remove_leftovers().unwrap(), 1);
        assert!(names(tmp.path()).is_empty());
    }

    #[test]
    fn one_run_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let d = LocalDir::new(tmp.path());
        let held = d.lock().unwrap();
        assert!(held.is_some());
        assert!(d.lock().unwrap().is_none(), "a second run is refused");
        drop(held);
        assert!(d.lock().unwrap().is_some());
    }

    #[test]
    fn a_planted_link_redirects_no_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("backups");
        std::fs::create_dir(&dest).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("secret.json"), b"{}").unwrap();
        let link = |name: &str, to: &str| {
            std::os::unix::fs::symlink(elsewhere.join(to), dest.join(name)).unwrap()
        };
        link(LOCK_FILE, "created-through-the-lock");
        link(".pgwarden-state.json", "secret.json");
        link("t.manifest.json", "secret.json");
        let d = LocalDir::new(&dest);
        assert!(d.lock().is_err(), "a linked lock file is refused");
        assert!(
            !elsewhere.join("created-through-the-lock").exists(),
            "the lock created a file where its link pointed"
        );
        assert!(d.state("pgwarden-state.json").is_err());
        assert!(d.read("t.manifest.json").is_err());
        // Objects are created beside links, never through them.
        let mut o = d.create("t.dump.age").unwrap();
        o.write_all(b"ciphertext").unwrap();
        o.commit().unwrap();
        link("u.dump.age", "u.dump.age");
        let o = d.create("u.dump.age").unwrap();
        assert!(
            o.commit().is_err(),
            "a link under the final name is not replaced"
        );
        assert!(!elsewhere.join("u.dump.age").exists());
    }

    #[test]
    fn names_stay_in_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let d = LocalDir::new(tmp.path());
        for bad in ["../x", "a/b", "..", ""] {
            assert!(d.create(bad).is_err(), "{bad}");
            assert!(d.remove(bad).is_err(), "{bad}");
        }
    }
}
