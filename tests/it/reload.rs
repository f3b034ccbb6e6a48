//! Live reload, in-process: `Server::reload` (what SIGHUP calls) and the
//! certificate watcher, with real clients running queries through it.
//!
//! Sessions keep running on the snapshot they started with while the
//! certificate, the allowlist and a verifier change under them; new
//! connections see the new certificate (by fingerprint) and the new rules; an
//! invalid or refused reload changes nothing; a certificate swapped in through
//! Kubernetes' `..data` symlink is picked up without a signal, and a broken one
//! is refused while the old one serves; the leases of sessions whose source a
//! reload removed are still revoked. The signal path itself is tested once
//! through the real binary (tests/it/systemd_notify.rs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use pgwarden::auth::ScramVerifier;
use pgwarden::dev::{CLIENT_USER, DATABASE};
use pgwarden::reload::ReloadError;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::tls::MakeTlsConnect;

use crate::support::harness::{
    GENEROUS, Harness, Options, User, UserAuth, server_error, session_user, wait_until,
};
use crate::support::wire;

/// A client from `local` (any address of 127.0.0.0/8) through pgwarden.
async fn connect_from(
    h: &Harness,
    local: &str,
    user: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    let tcp = wire::connect_from(local, h.proxy_addr).await;
    let tls = MakeTlsConnect::<TcpStream>::make_tls_connect(&mut h.tls(), "127.0.0.1").unwrap();
    let (client, connection) = h
        .pg_config_as(user, password, DATABASE)
        .connect_raw(tcp, tls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// SHA-256 of a DER certificate, in hex.
fn sha256_hex(der: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint of the first certificate of a PEM chain.
fn fingerprint_of(pem: &str) -> String {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let cert = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    sha256_hex(&cert)
}

/// The fingerprint of the certificate a new connection is shown.
async fn served_fingerprint(h: &Harness) -> String {
    let tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    let cert = &tls.get_ref().1.peer_certificates().expect("a certificate")[0];
    sha256_hex(cert)
}

/// Whether a connection from `local` is let in (answered `S`) or closed
/// before a byte is read.
async fn admitted_from(h: &Harness, local: &str) -> bool {
    let mut tcp = wire::connect_from(local, h.proxy_addr).await;
    wire::send(&mut tcp, &pgwarden::protocol::startup::encode_ssl_request()).await;
    match wire::closed_without_a_byte(&mut tcp).await {
        Ok(()) => false,
        Err(answer) => {
            assert_eq!(answer, b"S", "SSLRequest answer");
            true
        }
    }
}

/// Issues a listener certificate from the test CA and writes it (and its key)
/// into the harness's directory as `<name>.crt` and `<name>.key`.
fn new_listener_cert(h: &Harness, name: &str) -> String {
    let cert = h
        .pki
        .issue_server(&["localhost", "127.0.0.1", "::1"])
        .unwrap();
    std::fs::write(h.dir().join(format!("{name}.crt")), &cert.cert_pem).unwrap();
    std::fs::write(
        h.dir().join(format!("{name}.key")),
        cert.key_pem.expose_secret(),
    )
    .unwrap();
    cert.cert_pem
}

/// A client running one query after another until told to stop; it returns
/// the first error, if any.
struct Busy {
    name: &'static str,
    done: Arc<AtomicUsize>,
    task: JoinHandle<Result<(), String>>,
}

fn keep_busy(name: &'static str, client: Client, stop: Arc<AtomicBool>) -> Busy {
    let done = Arc::new(AtomicUsize::new(0));
    let counter = done.clone();
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let row = client
                .query_one("SELECT count(*) FROM generate_series(1, 1000)", &[])
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            let n: i64 = row.get(0);
            if n != 1000 {
                return Err(format!("{name}: counted {n}"));
            }
            counter.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    });
    Busy { name, done, task }
}

async fn wait_for_progress(sessions: &[Busy], more: usize) {
    let from: Vec<usize> = sessions
        .iter()
        .map(|s| s.done.load(Ordering::SeqCst))
        .collect();
    for (s, from) in sessions.iter().zip(from) {
        wait_until(GENEROUS, &format!("{} runs queries", s.name), async || {
            s.done.load(Ordering::SeqCst) >= from + more
        })
        .await;
    }
}

/// `text` with the (one) inline `scram_verifier = "…"` replaced by one for `password`.
fn with_verifier(text: &str, password: &str) -> String {
    let verifier = ScramVerifier::from_password(&SecretString::from(password.to_owned())).to_text();
    text.lines()
        .map(|l| {
            if l.starts_with("scram_verifier = ") {
                format!("scram_verifier = {:?}", verifier.expose_secret())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn app_user(password: &str) -> User {
    User {
        name: "app".into(),
        auth: UserAuth::Password(password.into()),
    }
}

#[tokio::test]
async fn sessions_run_through_a_reload_that_swaps_certificate_allowlist_and_verifier() {
    let h = Harness::start(Options {
        users: vec![app_user("old-password")],
        admin: true,
        ..Options::default()
    })
    .await;
    let password = h.client_password.expose_secret().to_owned();
    let before = served_fingerprint(&h).await;
    assert!(admitted_from(&h, "127.0.0.2").await, "127.0.0.2 is allowed");

    let stop = Arc::new(AtomicBool::new(false));
    let sessions = vec![
        keep_busy(
            "keycloak from 127.0.0.2",
            connect_from(&h, "127.0.0.2", CLIENT_USER, &password)
                .await
                .expect("connect from 127.0.0.2"),
            stop.clone(),
        ),
        keep_busy(
            "app with its old password",
            connect_from(&h, "127.0.0.1", "app", "old-password")
                .await
                .expect("connect as app"),
            stop.clone(),
        ),
        keep_busy("keycloak", h.connect().await, stop.clone()),
    ];
    wait_for_progress(&sessions, 3).await;

    // New certificate (in new files), 127.0.0.2 no longer allowed, app's new verifier.
    let new_cert = new_listener_cert(&h, "server2");
    let text = with_verifier(&h.config_text, "new-password")
        .replace("\"server.crt\"", "\"server2.crt\"")
        .replace("\"server.key\"", "\"server2.key\"")
        .replace(
            "allow = [\"127.0.0.0/8\", \"::1/128\"]",
            "allow = [\"127.0.0.1/32\", \"::1/128\"]",
        );
    assert_ne!(text, h.config_text);
    let reloaded = h.reload(&text).await.expect("the reload applies");
    let new_fingerprint = fingerprint_of(&new_cert);
    assert_ne!(new_fingerprint, before);
    assert_eq!(
        reloaded.listener_fingerprint.as_deref(),
        Some(new_fingerprint.as_str())
    );
    for change in [
        "[listen] tls_cert_file/tls_key_file",
        "[listen] allow",
        "users changed: app",
    ] {
        assert!(
            reloaded.changes.iter().any(|c| c == change),
            "{change} missing from {:?}",
            reloaded.changes
        );
    }

    // New connections: the new certificate, the new allowlist, the new verifier.
    assert_eq!(served_fingerprint(&h).await, new_fingerprint);
    assert!(
        !admitted_from(&h, "127.0.0.2").await,
        "127.0.0.2 was removed from allow"
    );
    let old = connect_from(&h, "127.0.0.1", "app", "old-password").await;
    let (code, _) = server_error(&old.expect_err("the old password no longer works"));
    assert_eq!(code, "28P01");
    let new = connect_from(&h, "127.0.0.1", "app", "new-password")
        .await
        .expect("the new password works");
    new.simple_query("SELECT 1").await.unwrap();

    // Live sessions, the one from the removed address included, ran on.
    wait_for_progress(&sessions, 3).await;
    stop.store(true, Ordering::SeqCst);
    for s in sessions {
        let name = s.name;
        s.task
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|e| panic!("a live session failed across the reload: {e}"));
    }

    assert_eq!(
        h.metric("pgwarden_config_reloads_total{outcome=\"success\"}")
            .await,
        1.0
    );
    assert_eq!(
        h.metric("pgwarden_config_last_reload_successful").await,
        1.0
    );
    let record = &h.logs.wait_for("config_reloaded", 1).await[0];
    assert_eq!(record["trigger"], "signal");
    assert_eq!(
        record["listener_certificate_sha256"],
        new_fingerprint.as_str()
    );
    assert!(
        record["changes"]
            .as_str()
            .unwrap()
            .contains("users changed: app")
    );
    let verifier_text = text
        .lines()
        .find_map(|l| l.strip_prefix("scram_verifier = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    h.logs.assert_absent("app's new verifier", &verifier_text);
    h.logs.assert_absent("app's new password", "new-password");
    h.assert_no_secrets_logged();
}

#[tokio::test]
async fn an_invalid_or_refused_reload_changes_nothing_and_says_every_problem() {
    let h = Harness::start(Options {
        admin: true,
        ..Options::default()
    })
    .await;
    let before = served_fingerprint(&h).await;

    // Three problems: a bad network, a route for an unknown user, a missing file.
    let broken = h
        .config_text
        .replace("\"127.0.0.0/8\"", "\"127.0.0.0/33\"")
        .replace("users = [\"*\"]", "users = [\"nobody\"]")
        .replace("\"server.key\"", "\"missing.key\"");
    let err = h
        .reload(&broken)
        .await
        .expect_err("an invalid configuration");
    let ReloadError::Invalid(errors) = &err else {
        panic!("not reported as invalid: {err}")
    };
    assert!(errors.0.len() >= 3, "{errors}");
    let record = &h.logs.wait_for("config_reload_failed", 1).await[0];
    assert_eq!(record["outcome"], "invalid");
    assert_eq!(record["problem_count"], errors.0.len());
    assert!(record["problems"].as_str().unwrap().contains("nobody"));

    // What cannot change live, together with what could: nothing is applied.
    let refused = h
        .config_text
        .replace("address = \"127.0.0.1:0\"", "address = \"127.0.0.1:1\"")
        .replace("\"127.0.0.0/8\", ", "");
    let err = h.reload(&refused).await.expect_err("a refused change");
    let ReloadError::Refused(why) = &err else {
        panic!("not refused: {err}")
    };
    assert!(why[0].contains("[listen] address"), "{why:?}");

    // A certificate whose key is another's, and an expired one.
    let other = h.pki.issue_server(&["127.0.0.1"]).unwrap();
    std::fs::write(h.dir().join("other.key"), other.key_pem.expose_secret()).unwrap();
    let mismatched = h.config_text.replace("\"server.key\"", "\"other.key\"");
    assert!(matches!(
        h.reload(&mismatched).await,
        Err(ReloadError::Invalid(_))
    ));
    let now = SystemTime::now();
    let expired = h
        .pki
        .issue_server_valid(
            &["127.0.0.1"],
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    std::fs::write(h.dir().join("expired.crt"), &expired.cert_pem).unwrap();
    std::fs::write(h.dir().join("expired.key"), expired.key_pem.expose_secret()).unwrap();
    let stale = h
        .config_text
        .replace("\"server.crt\"", "\"expired.crt\"")
        .replace("\"server.key\"", "\"expired.key\"");
    let err = h.reload(&stale).await.expect_err("an expired certificate");
    assert!(err.to_string().contains("expired"), "{err}");

    // The old configuration serves on: its certificate, its allowlist, its route.
    assert_eq!(served_fingerprint(&h).await, before);
    assert!(admitted_from(&h, "127.0.0.2").await);
    h.connect().await.simple_query("SELECT 1").await.unwrap();
    assert_eq!(
        h.metric("pgwarden_config_reloads_total{outcome=\"invalid\"}")
            .await,
        3.0
    );
    assert_eq!(
        h.metric("pgwarden_config_reloads_total{outcome=\"refused\"}")
            .await,
        1.0
    );
    assert_eq!(
        h.metric("pgwarden_config_last_reload_successful").await,
        0.0
    );
    // A good reload afterwards clears the failure.
    h.reload(&h.config_text)
        .await
        .expect("the same configuration");
    assert_eq!(
        h.metric("pgwarden_config_last_reload_successful").await,
        1.0
    );
    h.assert_no_secrets_logged();
}

/// A Kubernetes Secret volume: `<name>` → `..data/<name>`, `..data` → a
/// timestamped directory, replaced by renaming a new `..data` link over it.
struct SecretVolume {
    dir: std::path::PathBuf,
    generation: usize,
}

impl SecretVolume {
    fn new(dir: std::path::PathBuf, cert_pem: &str, key_pem: &str) -> SecretVolume {
        std::fs::create_dir_all(&dir).unwrap();
        let mut v = SecretVolume { dir, generation: 0 };
        v.publish(cert_pem, key_pem);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), v.dir.join(name)).unwrap();
        }
        v
    }

    /// What the kubelet does on an update: a new directory, a new link, one rename.
    fn publish(&mut self, cert_pem: &str, key_pem: &str) {
        self.generation += 1;
        let data = format!("..2026_01_01_00_00_0{}", self.generation);
        std::fs::create_dir(self.dir.join(&data)).unwrap();
        std::fs::write(self.dir.join(&data).join("tls.crt"), cert_pem).unwrap();
        std::fs::write(self.dir.join(&data).join("tls.key"), key_pem).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

#[tokio::test]
async fn a_certificate_swapped_in_through_a_secret_symlink_is_picked_up_without_a_signal() {
    let h = Harness::start(Options {
        admin: true,
        ..Options::default()
    })
    .await;
    let issue = || {
        h.pki
            .issue_server(&["localhost", "127.0.0.1", "::1"])
            .unwrap()
    };
    let first = issue();
    let mut volume = SecretVolume::new(
        h.dir().join("secret"),
        &first.cert_pem,
        first.key_pem.expose_secret(),
    );
    let text = h
        .config_text
        .replace("\"server.crt\"", "\"secret/tls.crt\"")
        .replace("\"server.key\"", "\"secret/tls.key\"");
    h.reload(&text).await.expect("the mounted certificate");
    assert_eq!(
        served_fingerprint(&h).await,
        fingerprint_of(&first.cert_pem)
    );

    let second = issue();
    volume.publish(&second.cert_pem, second.key_pem.expose_secret());
    let want = fingerprint_of(&second.cert_pem);
    wait_until(GENEROUS, "the new certificate is served", async || {
        served_fingerprint(&h).await == want
    })
    .await;
    let record = h.logs.wait_for("config_reloaded", 2).await.pop().unwrap();
    assert_eq!(record["trigger"], "certificate_files");
    assert!(
        record["changes"]
            .as_str()
            .unwrap()
            .contains("listener certificate"),
        "{record}"
    );

    // A broken pair (the third certificate with the second's key), then an
    // expired one: refused, logged, and the second keeps serving.
    let third = issue();
    volume.publish(&third.cert_pem, second.key_pem.expose_secret());
    let failed = h.logs.wait_for("config_reload_failed", 1).await;
    assert_eq!(failed[0]["trigger"], "certificate_files");
    let now = SystemTime::now();
    let expired = h
        .pki
        .issue_server_valid(
            &["127.0.0.1"],
            now - Duration::from_secs(7200),
            now - Duration::from_secs(60),
        )
        .unwrap();
    volume.publish(&expired.cert_pem, expired.key_pem.expose_secret());
    let failed = h.logs.wait_for("config_reload_failed", 2).await;
    assert!(
        failed[1]["problems"].as_str().unwrap().contains("expired"),
        "{}",
        failed[1]
    );
    assert_eq!(served_fingerprint(&h).await, want);
    assert_eq!(
        h.metric("pgwarden_config_last_reload_successful").await,
        0.0
    );

    // A good pair again is taken, refusal or not before it.
    let fourth = issue();
    volume.publish(&fourth.cert_pem, fourth.key_pem.expose_secret());
    let want = fingerprint_of(&fourth.cert_pem);
    wait_until(GENEROUS, "the fourth certificate is served", async || {
        served_fingerprint(&h).await == want
    })
    .await;
    h.logs
        .assert_absent("a listener key", second.key_pem.expose_secret());
    h.assert_no_secrets_logged();
}

#[tokio::test]
async fn leases_of_sessions_whose_source_a_reload_removed_are_still_revoked() {
    let h = Harness::start(Options::default()).await;
    let client = h.connect().await;
    let role = session_user(&client).await;
    assert!(role.starts_with("pgwarden_"), "{role}");

    // The route now takes its credentials from a new source with another prefix.
    let text = h
        .config_text
        .replace("[credentials.test]", "[credentials.next]")
        .replace("credentials = \"test\"", "credentials = \"next\"")
        + "role_prefix = \"pgwarden_next_\"\n";
    let reloaded = h.reload(&text).await.expect("reload");
    assert!(
        reloaded
            .changes
            .iter()
            .any(|c| c == "credentials removed: test"),
        "{:?}",
        reloaded.changes
    );
    let fresh = h.connect().await;
    assert!(session_user(&fresh).await.starts_with("pgwarden_next_"));

    // The old session runs on with its role, and its role goes when it ends.
    assert_eq!(session_user(&client).await, role);
    drop(client);
    wait_until(
        GENEROUS,
        "the removed source's role is dropped",
        async || {
            h.direct()
                .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
                .await
                .unwrap()
                .is_none()
        },
    )
    .await;
    drop(fresh);
    h.wait_for_no_dynamic_roles().await;
}

#[tokio::test]
async fn a_vault_source_is_carried_over_unchanged_and_its_pool_revoked_when_replaced() {
    use crate::support::harness::VaultOptions;
    let h = Harness::start(Options::vault(VaultOptions {
        prefetch: 2,
        ..VaultOptions::default()
    }))
    .await;
    wait_until(GENEROUS, "the pool is full", async || {
        h.vault().leases().len() >= 2
    })
    .await;
    let pooled: Vec<String> = h.vault().leases().into_iter().map(|l| l.username).collect();
    let client = h.connect().await;
    let in_session = session_user(&client).await;

    // Settings of the source unchanged: carried over, nothing revoked.
    let narrower = h
        .config_text
        .replace("\"::1/128\"", "\"::1/128\", \"10.9.9.9/32\"");
    let r = h.reload(&narrower).await.expect("reload");
    assert!(
        !r.changes.iter().any(|c| c.starts_with("credentials")),
        "{:?}",
        r.changes
    );
    assert!(h.vault().revoked().is_empty(), "{:?}", h.vault().revoked());

    // Its settings changed: rebuilt; the old pool's credentials are revoked,
    // the live session's lease is not.
    let bigger = narrower.replace("prefetch = 2", "prefetch = 3");
    let r = h.reload(&bigger).await.expect("reload");
    assert!(
        r.changes.iter().any(|c| c == "credentials changed: test"),
        "{:?}",
        r.changes
    );
    wait_until(GENEROUS, "the old pool is revoked", async || {
        let revoked = h.vault().revoked();
        pooled
            .iter()
            .filter(|u| **u != in_session)
            .all(|u| revoked.contains(u))
    })
    .await;
    assert!(!h.vault().revoked().contains(&in_session));
    assert_eq!(session_user(&client).await, in_session);
    drop(client);
    wait_until(GENEROUS, "the session's lease is revoked", async || {
        h.vault().revoked().contains(&in_session)
    })
    .await;
}
