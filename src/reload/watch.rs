//! The certificate watcher: notices when the TLS files a snapshot was built
//! from change on disk, and has them reloaded without a signal.
//!
//! It polls: every [`POLL`] it hashes the contents of each file (following
//! symlinks, so Kubernetes' swap of a mounted Secret's `..data` link is seen
//! like any rewrite; inotify would miss it unless the directory were
//! watched). A change is acted on once the files have stayed the same for
//! one more poll, so a certificate and its key written one after the other
//! are reloaded as a pair; a set of files that was refused (a key that does
//! not match, an expired certificate) is not tried again until it changes.
//!
//! It never logs or keeps a file's contents: only SHA-256 digests, and the
//! buffer a key was read into is wiped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::zeroize::Zeroize;
use tokio_util::sync::CancellationToken;

use super::{Reloader, Trigger};
use crate::config::Config;

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_secs(2);

/// A file a snapshot was built from, and a digest of what it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WatchedFile {
    /// What it is, for the logs (`listener certificate`, `route keycloak upstream CA`).
    pub(crate) what: String,
    pub(crate) path: PathBuf,
    /// `None`: it could not be read.
    pub(crate) digest: Option<[u8; 32]>,
}

/// The TLS files `config` names: the listener's certificate and key, and each
/// route's upstream CA. (Per-snapshot TLS files added later — a client CA —
/// belong here too, so that they are watched.)
fn tls_files(config: &Config) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    if let Some(tls) = &config.listen.tls {
        files.push(("listener certificate".to_owned(), tls.cert_file.clone()));
        files.push(("listener key".to_owned(), tls.key_file.clone()));
    }
    if let Some(client) = &config.listen.client_certs {
        files.push(("client CA".to_owned(), client.ca_file.clone()));
        if let Some(crl) = &client.crl_file {
            files.push(("client CRL".to_owned(), crl.clone()));
        }
    }
    for r in &config.routes {
        if let Some(ca) = &r.upstream.ca_file {
            files.push((format!("route {} upstream CA", r.database), ca.clone()));
        }
    }
    if let Some(peering) = &config.peering {
        files.push(("peer certificate".to_owned(), peering.tls.cert_file.clone()));
        files.push(("peer key".to_owned(), peering.tls.key_file.clone()));
        files.push(("peer CA".to_owned(), peering.ca_file.clone()));
    }
    files
}

/// Every TLS file of `config` with the digest of what it holds now.
pub(crate) fn digests(config: &Config) -> Vec<WatchedFile> {
    tls_files(config)
        .into_iter()
        .map(|(what, path)| WatchedFile {
            digest: digest(&path),
            what,
            path,
        })
        .collect()
}

/// SHA-256 of the file's contents (through symlinks); the buffer is wiped.
fn digest(path: &Path) -> Option<[u8; 32]> {
    let mut bytes = std::fs::read(path).ok()?;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    bytes.zeroize();
    d.as_ref().try_into().ok()
}

/// SHA-256 of the first certificate of a PEM chain, in hex.
pub(crate) fn certificate_fingerprint(pem: &[u8]) -> Option<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let cert = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
    Some(d.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// `Err` (saying when) if the first certificate in `path` has expired.
pub(crate) fn not_expired(path: &Path) -> Result<(), String> {
    let not_after = crate::tls::certificate_not_after(path).map_err(|e| e.to_string())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if not_after <= now {
        return Err(format!(
            "{} expired {} s ago (notAfter {not_after})",
            path.display(),
            now - not_after
        ));
    }
    Ok(())
}

type Digests = Vec<Option<[u8; 32]>>;

/// What the watcher has seen between two polls.
#[derive(Default)]
struct Seen {
    /// Contents seen changed at the last poll, not yet acted on.
    settling: Option<Digests>,
    /// Contents a reload was refused for; not tried again.
    refused: Option<Digests>,
}

impl Seen {
    /// Whether to reload, given the digests the snapshot was built from and
    /// those of the files now: only once a change has stayed for one more
    /// look, and never again for contents already refused.
    fn reload_now(&mut self, built: &Digests, now: &Digests) -> bool {
        if now == built {
            *self = Seen::default();
            return false;
        }
        if self.refused.as_ref() == Some(now) {
            return false;
        }
        if self.settling.as_ref() != Some(now) {
            self.settling = Some(now.clone());
            return false;
        }
        self.settling = None;
        true
    }

    /// The outcome of the reload [`Seen::reload_now`] asked for.
    fn reloaded(&mut self, now: Digests, applied: bool) {
        self.refused = if applied { None } else { Some(now) };
    }
}

/// Looks at the current snapshot's TLS files every [`POLL`] until `stop`,
/// and reloads them when they changed and settled.
pub(crate) async fn run(reloader: Arc<Reloader>, stop: CancellationToken) {
    let mut seen = Seen::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.cancelled() => return,
        }
        let files = reloader.state.snapshot().files.clone();
        let now: Digests = files.iter().map(|f| digest(&f.path)).collect();
        let built: Digests = files.iter().map(|f| f.digest).collect();
        if seen.reload_now(&built, &now) {
            let applied = reloader.refresh(Trigger::Files).await.is_ok();
            seen.reloaded(now, applied);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digests {
        vec![Some([n; 32]), Some([0; 32])]
    }

    #[test]
    fn a_change_is_reloaded_once_it_settles_and_a_refused_one_is_not_retried() {
        let mut seen = Seen::default();
        let built = d(1);
        assert!(!seen.reload_now(&built, &d(1)), "nothing changed");
        // The certificate is written, then the key: two different looks.
        assert!(!seen.reload_now(&built, &d(2)), "just changed");
        assert!(!seen.reload_now(&built, &d(3)), "changed again");
        assert!(seen.reload_now(&built, &d(3)), "settled");
        seen.reloaded(d(3), false);
        for _ in 0..3 {
            assert!(!seen.reload_now(&built, &d(3)), "refused: not retried");
        }
        // Fixed files are taken, after they settle.
        assert!(!seen.reload_now(&built, &d(4)));
        assert!(seen.reload_now(&built, &d(4)));
        seen.reloaded(d(4), true);
        // A file that cannot be read is a change too (and is refused by the build).
        let unreadable = vec![None, Some([0; 32])];
        assert!(!seen.reload_now(&d(4), &unreadable));
        assert!(seen.reload_now(&d(4), &unreadable));
        // Back to what the snapshot was built from: nothing to do, nothing remembered.
        seen.reloaded(unreadable.clone(), false);
        assert!(!seen.reload_now(&d(4), &d(4)));
        assert!(seen.refused.is_none() && seen.settling.is_none());
    }

    #[test]
    fn digests_follow_symlinks_and_see_a_rewrite_of_the_same_size() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("a/tls.crt"), "one").unwrap();
        std::fs::write(dir.path().join("b/tls.crt"), "two").unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/tls.crt", dir.path().join("tls.crt")).unwrap();
        let path = dir.path().join("tls.crt");
        let first = digest(&path);
        assert!(first.is_some());
        // The kubelet's swap: a new link renamed over ..data.
        std::os::unix::fs::symlink("b", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        let second = digest(&path);
        assert_ne!(first, second);
        std::fs::write(dir.path().join("b/tls.crt"), "owt").unwrap();
        assert_ne!(digest(&path), second, "same size, same second, other bytes");
        std::fs::remove_file(dir.path().join("b/tls.crt")).unwrap();
        assert_eq!(digest(&path), None);
    }
}
