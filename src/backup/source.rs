//! The credential source of one backup run: the same `CredentialSource` the
//! proxy uses (built-in or Vault), with a revoker of its own that the run
//! drains before it exits, so the dump's login is revoked whatever happens.
//!
//! Never logs a password, token or secret id (the sources do not).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::{BackupFile, CredentialsConfig, UpstreamConfig};
use crate::credentials::revoker::Revoker;
use crate::credentials::vault::{SetupError, Vault};
use crate::credentials::{CredentialError, CredentialSource};

/// Why the run has no credential source. No variant holds a secret: Vault's
/// setup errors never quote a key, credential errors never a password.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    #[error("no [credentials.{0}]")]
    Unknown(String),
    #[error(transparent)]
    VaultSetup(#[from] SetupError),
    #[error("Vault login: {0}")]
    VaultLogin(#[source] CredentialError),
    #[error("[credentials.{name}]: {source}")]
    Build {
        name: String,
        #[source]
        source: CredentialError,
    },
}

/// A source ready to issue, and what keeps it working.
pub(crate) struct RunSource {
    pub(crate) source: Arc<CredentialSource>,
    revoker: Revoker,
    /// Vault token upkeep, for dumps that outlive the token's TTL.
    background: Vec<JoinHandle<()>>,
}

/// Builds `[credentials.<name>]` (logging in to Vault first when it is a
/// Vault source). A built-in source first drops the expired roles under its
/// prefix on `upstream`: those of runs that were killed before they could
/// revoke.
pub(crate) async fn build(
    file: &BackupFile,
    name: &str,
    upstream: &UpstreamConfig,
) -> Result<RunSource, SourceError> {
    let config = file
        .credentials
        .get(name)
        .ok_or_else(|| SourceError::Unknown(name.to_owned()))?;
    let revoker = Revoker::new();
    let mut background = Vec::new();
    let vault = match (config, &file.vault) {
        (CredentialsConfig::Vault(_), Some(v)) => {
            let vault = Arc::new(Vault::new(v)?);
            vault.login().await.map_err(SourceError::VaultLogin)?;
            let upkeep = vault.clone();
            background.push(tokio::spawn(async move { upkeep.maintain_token().await }));
            Some(vault)
        }
        _ => None,
    };
    let built = CredentialSource::new(name, config, vault.as_ref(), revoker.clone());
    let source = match built {
        Ok(source) => source,
        Err(source) => {
            background.iter().for_each(JoinHandle::abort);
            return Err(SourceError::Build {
                name: name.to_owned(),
                source,
            });
        }
    };
    // Leftovers only: a run takes one credential, so nothing is issued ahead.
    source.clean_up(&[upstream]).await;
    Ok(RunSource {
        source,
        revoker,
        background,
    })
}

impl RunSource {
    /// Waits until every lease handed out is revoked, at most `within`.
    /// Returns whether none is left.
    pub(crate) async fn finish(self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        self.revoker.hurry();
        self.source.stop(deadline).await;
        let left = self
            .revoker
            .drain(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await;
        for task in &self.background {
            task.abort();
        }
        left == 0
    }
}
