//! pgwarden's own Vault login under contention: connections that find the
//! token revoked at the same moment share one new login.

use std::time::Duration;

use crate::support::harness::{GENEROUS, Harness, Options, VaultOptions, wait_until};
use crate::support::vault_double::Mode;

const LOGIN: &str = "/v1/auth/approle/login";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_refused_together_log_in_once() {
    let mut h = Harness::start(Options {
        vault: Some(VaultOptions {
            token_ttl: Duration::from_secs(3600),
            token_max_ttl: Duration::from_secs(7200),
            timeout: "20s".into(),
            ..VaultOptions::default()
        }),
        ..Options::default()
    })
    .await;
    drop(h.connect().await);
    h.wait_for_no_dynamic_roles().await;
    let before = h.vault().count(LOGIN);
    // Revoked behind pgwarden's back (leases kept, so only the token is new).
    h.vault().set_revoke_leases_with_token(false);
    h.vault().revoke_all_tokens();
    // Every request takes a while, so the six creds requests are refused
    // while the first new login is still under way.
    h.vault().set_mode(Mode::Slow(Duration::from_millis(700)));
    let config = h.pg_config();
    let clients: Vec<_> = futures_util::future::join_all((0..6).map(|_| h.try_connect(&config)))
        .await
        .into_iter()
        .map(|c| c.expect("connects after one new login"))
        .collect();
    h.vault().set_mode(Mode::Up);
    let logins = h.vault().count(LOGIN) - before;
    assert!(logins >= 1, "the revoked token was replaced");
    assert!(
        logins < 6,
        "{logins} logins for 6 connections refused together"
    );
    drop(clients);
    h.wait_for_no_dynamic_roles().await;
    wait_until(GENEROUS, "every lease is revoked", async || {
        h.vault().leases().is_empty()
    })
    .await;
    assert_eq!(h.shutdown().await, 0);
    h.assert_no_secrets_logged();
}
