//! The credential source of one backup run: the same `CredentialSource` the
//! proxy uses (built-in or Vault), with a revoker of its own that the run
//! drains before it exits, so the dump's login is revoked whatever happens.
//!
//! Never logs a password, token or secret id (the sources do not).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::{BackupFile, UpstreamConfig};
use crate::credentials::CredentialSource;
use crate::credentials::revoker::Revoker;
use crate::credentials::vault::Vault;

/// A source ready to issue, and what keeps it working.
pub struct RunSource {
    pub source: Arc<CredentialSource>,
    revoker: Revoker,
    /// Vault token upkeep, for dumps that outlive the token's TTL.
    background: Vec<JoinHandle<()>>,
}

/// Builds `[credentials.<name>]` (logging in to Vault first when it is a
/// Vault source). A built-in source first drops the expired roles under its
/// prefix on `upstream`: those of runs that were killed before they could
/// revoke.
pub async fn build(
    file: &BackupFile,
    name: &str,
    upstream: &UpstreamConfig,
) -> Result<RunSource, String> {
    let config = file
        .credentials
        .get(name)
        .ok_or_else(|| format!("no [credentials.{name}]"))?;
    let revoker = Revoker::new();
    let mut background = Vec::new();
    let vault = match (config, &file.vault) {
        (crate::config::CredentialsConfig::Vault(_), Some(v)) => {
            let vault = Arc::new(Vault::new(v).map_err(|e| e.to_string())?);
            vault
                .login()
                .await
                .map_err(|e| format!("Vault login: {e}"))?;
            let upkeep = vault.clone();
            background.push(tokio::spawn(async move { upkeep.maintain_token().await }));
            Some(vault)
        }
        _ => None,
    };
    let source = CredentialSource::new(name, config, vault.as_ref(), revoker.clone())
        .map_err(|e| format!("[credentials.{name}]: {e}"))?;
    if source.kind() == crate::credentials::outcome::SourceType::Postgres {
        source.start(&[upstream]).await;
    }
    Ok(RunSource {
        source,
        revoker,
        background,
    })
}

impl RunSource {
    /// Waits until every lease handed out is revoked, at most `within`.
    /// Returns whether none is left.
    pub async fn finish(self, within: Duration) -> bool {
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
