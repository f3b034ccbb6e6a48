//! What a new configuration changes, and what it may not change live.
//!
//! Only names of settings, users, routes, sources and files appear in what
//! this module says: never a value that could be a secret (a verifier, a
//! password, a token), so its lines can go to the log as they are.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::state::Snapshot;

/// The settings `new` changes that cannot change in a running process, each
/// with why; empty when the reload may go ahead.
pub(crate) fn refusals(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.listen.address != new.listen.address {
        out.push(format!(
            "[listen] address: {} → {} needs a restart (the socket is bound once)",
            old.listen.address, new.listen.address
        ));
    }
    match (&old.admin, &new.admin) {
        (Some(a), Some(b)) => {
            if a.address != b.address {
                out.push(format!(
                    "[admin] address: {} → {} needs a restart (the socket is bound once)",
                    a.address, b.address
                ));
            } else if a != b {
                out.push(
                    "[admin]: its settings are read when its listener starts; change them with a restart"
                        .to_owned(),
                );
            }
        }
        (None, Some(_)) => out.push("[admin]: adding the admin listener needs a restart".into()),
        (Some(_), None) => out.push("[admin]: removing the admin listener needs a restart".into()),
        (None, None) => {}
    }
    if old.listen.max_handshakes != new.listen.max_handshakes {
        out.push(
            "[listen] max_handshakes: the handshake budget is sized at start; change it with a restart"
                .into(),
        );
    }
    match (&old.peering, &new.peering) {
        (Some(a), Some(b)) if a.id != b.id || a.address != b.address => out.push(
            "[peering] id and address: cancel keys already issued name this replica's id, and the peer listener is bound once; change them with a restart"
                .into(),
        ),
        (None, Some(_)) | (Some(_), None) => out.push(
            "[peering]: adding or removing the peer listener needs a restart".into(),
        ),
        _ => {}
    }
    if old.log.format != new.log.format {
        out.push("[log] format needs a restart (the level can change live)".into());
    }
    if old.vault != new.vault {
        out.push(
            "[vault]: pgwarden's Vault connection and token outlive a reload (live sessions renew and revoke through it); change it with a restart"
                .into(),
        );
    }
    if old.audit != new.audit {
        out.push(
            "[audit]: the background audit is set up at start; change it with a restart".into(),
        );
    }
    out
}

/// What `next` changes from `old`, one short line each, names only.
pub(crate) fn changes(old: &Snapshot, next: &Snapshot) -> Vec<String> {
    let (a, b) = (&*old.config, &*next.config);
    let mut out = Vec::new();
    let l = (&a.listen, &b.listen);
    let settings = [
        ("[listen] tls_cert_file/tls_key_file", l.0.tls != l.1.tls),
        ("[listen] require_tls", l.0.require_tls != l.1.require_tls),
        ("[listen] allow", l.0.allow != l.1.allow),
        (
            "[listen] max_connections",
            l.0.max_connections != l.1.max_connections,
        ),
        (
            "[listen] handshake_timeout",
            l.0.handshake_timeout != l.1.handshake_timeout,
        ),
        (
            "[listen] tcp_keepalive",
            l.0.tcp_keepalive != l.1.tcp_keepalive,
        ),
        (
            "[listen] idle_timeout",
            l.0.idle_timeout != l.1.idle_timeout,
        ),
        (
            "[listen] max_handshakes_per_address",
            l.0.max_handshakes_per_address != l.1.max_handshakes_per_address,
        ),
        (
            "[listen] client_ca_file/client_crl_file",
            l.0.client_certs != l.1.client_certs,
        ),
        (
            "[listen] proxy_protocol",
            l.0.proxy_protocol != l.1.proxy_protocol,
        ),
        ("[peering]", a.peering != b.peering),
        ("[log] level", a.log.level != b.log.level),
        ("[shutdown]", a.shutdown != b.shutdown),
        ("[backup.*]", a.backup.keys().ne(b.backup.keys())),
    ];
    out.extend(
        settings
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(name, _)| (*name).to_owned()),
    );
    let users = |c: &Config| -> BTreeMap<String, _> {
        c.users
            .iter()
            .map(|u| (u.name.clone(), u.auth.clone()))
            .collect()
    };
    named("users", &users(a), &users(b), &mut out);
    let routes = |c: &Config| -> BTreeMap<String, _> {
        c.routes
            .iter()
            .map(|r| (r.database.clone(), r.clone()))
            .collect()
    };
    named("routes", &routes(a), &routes(b), &mut out);
    named("credentials", &a.credentials, &b.credentials, &mut out);
    for f in &next.files {
        let before = old.files.iter().find(|o| o.path == f.path);
        if before.is_none_or(|o| o.digest != f.digest) {
            out.push(format!("{} ({})", f.what, f.path.display()));
        }
    }
    out
}

/// `<what> added: …`, `removed: …`, `changed: …` for two maps by name.
fn named<T: PartialEq>(
    what: &str,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    out: &mut Vec<String>,
) {
    let list = |names: Vec<&String>| {
        names
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let added: Vec<_> = new.keys().filter(|k| !old.contains_key(*k)).collect();
    let removed: Vec<_> = old.keys().filter(|k| !new.contains_key(*k)).collect();
    let changed: Vec<_> = new
        .iter()
        .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k)
        .collect();
    for (how, names) in [("added", added), ("removed", removed), ("changed", changed)] {
        if !names.is_empty() {
            out.push(format!("{what} {how}: {}", list(names)));
        }
    }
}
