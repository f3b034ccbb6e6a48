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
    for r in &config.routes {
        if let Some(ca) = &r.upstream.ca_file {
            files.push((format!("route {} upstream CA", r.database), ca.clone()));
        }
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

/// What the watcher has seen between two polls.
#[derive(Default)]
struct Seen {
    /// Contents seen changed at the last poll, not yet acted on.
    settling: Option<Vec<Option<[u8; 32]>>>,
    /// Contents a reload was refused for; not tried again.
    refused: Option<Vec<Option<[u8; 32]>>>,
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
        look(&reloader, &mut seen).await;
    }
}

async fn look(reloader: &Reloader, seen: &mut Seen) {
    let files = reloader.state.snapshot().files.clone();
    let now: Vec<_> = files.iter().map(|f| digest(&f.path)).collect();
    let built: Vec<_> = files.iter().map(|f| f.digest).collect();
    if now == built {
        *seen = Seen::default();
        return;
    }
    if seen.refused.as_ref() == Some(&now) {
        return;
    }
    if seen.settling.as_ref() != Some(&now) {
        seen.settling = Some(now);
        return;
    }
    seen.settling = None;
    if reloader.refresh(Trigger::Files).await.is_err() {
        seen.refused = Some(now);
    } else {
        seen.refused = None;
    }
}
