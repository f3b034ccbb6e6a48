//! The network edge: `[listen]`'s PROXY protocol, client certificates and
//! handshake budgets, users that log in with a certificate, and
//! `[peering]`/`[[peers]]` (cancel requests across replicas). Like every
//! validator, it names keys and files, never a value that could be a secret.

use std::collections::HashSet;
use std::path::Path;

use super::super::raw::{self, MAX_REPLICAS};
use super::super::{
    ClientCertFiles, ListenConfig, PeerConfig, PeeringConfig, ProxyProtocolConfig, TlsFiles,
    UserConfig,
};
use super::Validator;
use crate::auth::UserAuth;
use crate::tls::mtls::{self, ClientCerts};

impl Validator<'_> {
    pub(super) fn handshake_budget(&mut self, total: usize, per_address: usize) {
        if total == 0 || per_address == 0 {
            self.err(
                "[listen] max_handshakes and max_handshakes_per_address must be at least 1".into(),
            );
        } else if per_address > total {
            self.err(
                "[listen] max_handshakes_per_address may not be more than max_handshakes".into(),
            );
        }
    }

    /// `client_ca_file` (with `client_crl_file`): readable, and a verifier
    /// rustls accepts can be built from them.
    pub(super) fn client_certs(
        &mut self,
        ca: Option<&Path>,
        crl: Option<&Path>,
        have_tls: bool,
    ) -> Option<ClientCertFiles> {
        let Some(ca) = ca else {
            if crl.is_some() {
                self.err("[listen] client_crl_file needs client_ca_file".into());
            }
            return None;
        };
        if !have_tls {
            self.err("[listen] client_ca_file needs tls_cert_file and tls_key_file".into());
        }
        let ca_file = self.readable("[listen] client_ca_file", ca)?;
        let crl_file = match crl {
            Some(c) => Some(self.readable("[listen] client_crl_file", c)?),
            None => None,
        };
        if let Err(e) = mtls::client_verifier(&ca_file, crl_file.as_deref(), ClientCerts::Optional)
        {
            self.err(format!("[listen] client certificates: {e}"));
        }
        Some(ClientCertFiles { ca_file, crl_file })
    }

    pub(super) fn proxy_protocol(&mut self, p: raw::ProxyProtocol) -> ProxyProtocolConfig {
        if p.trusted.is_empty() {
            self.err("[listen] proxy_protocol.trusted: name the load balancers' addresses (CIDRs); nothing is trusted by default".into());
        }
        ProxyProtocolConfig {
            trusted: self.quiet_cidrs("[listen] proxy_protocol.trusted", &p.trusted),
            required: p.required,
        }
    }

    /// The names a user's certificate may carry: `cert_names`, or the user's
    /// own name. Only certificate users have them.
    pub(super) fn cert_names(
        &mut self,
        what: &str,
        user: &str,
        method: raw::UserAuthMethod,
        names: Option<&[String]>,
    ) -> Vec<String> {
        let cert = matches!(
            method,
            raw::UserAuthMethod::Cert | raw::UserAuthMethod::CertScram
        );
        match names {
            Some(_) if !cert => {
                self.err(format!(
                    "{what}: cert_names is only for auth = \"cert\" or \"cert+scram\""
                ));
                Vec::new()
            }
            Some([]) => {
                self.err(format!("{what}: cert_names must name at least one name (leave it out for the user's own name)"));
                Vec::new()
            }
            Some(list) => {
                if list.iter().any(|n| n.is_empty()) {
                    self.err(format!("{what}: cert_names may not hold an empty name"));
                }
                list.to_vec()
            }
            None => vec![user.to_owned()],
        }
    }

    /// Users that log in with a certificate need the listener to ask for one.
    pub(super) fn cert_users(&mut self, listen: &ListenConfig, users: &[UserConfig]) {
        if listen.client_certs.is_some() {
            return;
        }
        for u in users {
            if matches!(
                u.auth,
                UserAuth::Cert { .. } | UserAuth::CertAndScram { .. }
            ) {
                self.err(format!(
                    "[[users]] {}: a certificate login needs [listen] client_ca_file",
                    u.name
                ));
            }
        }
    }

    /// `[peering]` and `[[peers]]`.
    pub(super) fn peering(
        &mut self,
        peering: Option<Option<raw::Peering>>,
        peers: Vec<(usize, raw::Peer)>,
        listen: Option<&ListenConfig>,
    ) -> Option<PeeringConfig> {
        let Some(Some(p)) = peering else {
            if peering.is_some_and(|p| p.is_none()) && !peers.is_empty() {
                self.err(
                    "[[peers]] needs a [peering] section (this replica's id and peer listener)"
                        .into(),
                );
            }
            return None;
        };
        if p.id >= MAX_REPLICAS {
            self.err(format!(
                "[peering] id must be below {MAX_REPLICAS} (it takes 4 bits of every cancel key)"
            ));
        }
        let address = p.address.parse::<std::net::SocketAddr>().ok();
        if address.is_none() {
            self.err("[peering] address: not an address:port (e.g. 0.0.0.0:6433)".into());
        }
        let allow = match &p.allow {
            Some(list) if list.is_empty() => {
                self.err(
                    "[peering] allow: must not be empty (leave it out for [listen] allow)".into(),
                );
                Vec::new()
            }
            Some(list) => self.quiet_cidrs("[peering] allow", list),
            None => listen.map(|l| l.allow.clone()).unwrap_or_default(),
        };
        let tls = self.peer_tls(&p, listen);
        let peers = self.peers(p.id, peers);
        let (tls, ca_file) = tls?;
        Some(PeeringConfig {
            id: p.id,
            address: address?,
            allow,
            tls,
            ca_file,
            peers,
        })
    }

    fn peer_tls(
        &mut self,
        p: &raw::Peering,
        listen: Option<&ListenConfig>,
    ) -> Option<(TlsFiles, std::path::PathBuf)> {
        let cert_file = self.readable("[peering] cert_file", &p.cert_file);
        let key_file = self.readable("[peering] key_file", &p.key_file);
        let ca_file = self.readable("[peering] ca_file", &p.ca_file);
        let (cert_file, key_file, ca_file) = (cert_file?, key_file?, ca_file?);
        if let Err(e) = mtls::peer_server_config(&cert_file, &key_file, &ca_file)
            .and_then(|_| mtls::peer_client_config(&cert_file, &key_file, &ca_file))
        {
            self.err(format!("[peering] certificate/key/CA: {e}"));
        }
        let client_ca = listen.and_then(|l| l.client_certs.as_ref());
        if client_ca.is_some_and(|c| same_file(&c.ca_file, &ca_file)) {
            self.err("[peering] ca_file: give the peer link a CA of its own; with [listen] client_ca_file's, any user's certificate could forward cancel requests".into());
        }
        Some((
            TlsFiles {
                cert_file,
                key_file,
            },
            ca_file,
        ))
    }

    fn peers(&mut self, own: u8, peers: Vec<(usize, raw::Peer)>) -> Vec<PeerConfig> {
        let mut ids = HashSet::from([own]);
        let mut out = Vec::new();
        for (i, peer) in peers {
            let what = format!("[[peers]] #{}", i + 1);
            if peer.id >= MAX_REPLICAS {
                self.err(format!("{what}: id must be below {MAX_REPLICAS}"));
            } else if peer.id == own {
                self.err(format!("{what}: id {} is this replica's own", peer.id));
            } else if !ids.insert(peer.id) {
                self.err(format!("{what}: id {} is given twice", peer.id));
            }
            let Some((host, port)) = host_port(&peer.address) else {
                self.err(format!(
                    "{what}: address must be host:port (e.g. pgwarden-1.pgwarden-peers:6433)"
                ));
                continue;
            };
            let server_name = peer.server_name.unwrap_or_else(|| host.clone());
            if rustls_pki_types::ServerName::try_from(server_name.clone()).is_err() {
                self.err(format!(
                    "{what}: server_name (or the address's host) is not a valid server name for TLS"
                ));
            }
            out.push(PeerConfig {
                id: peer.id,
                host,
                port,
                server_name,
            });
        }
        out
    }
}

impl Validator<'_> {
    /// CIDRs, each error naming the entry's position, never its text.
    fn quiet_cidrs(&mut self, what: &str, list: &[String]) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match super::parse_cidr(s) {
                Some(n) => out.push(n),
                None => self.err(format!(
                    "{what} #{}: not a CIDR (e.g. 10.0.5.0/24, ::1/128) or IP address",
                    i + 1
                )),
            }
        }
        out
    }
}

/// `host:port`, `[v6]:port` or `v4:port`.
fn host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']')?.to_owned(),
        None if host.contains(':') => return None,
        None => host.to_owned(),
    };
    (!host.is_empty()).then_some((host, port))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn peer_addresses_are_host_and_port() {
        assert_eq!(host_port("a.b:6433"), Some(("a.b".into(), 6433)));
        assert_eq!(host_port("10.0.0.1:1"), Some(("10.0.0.1".into(), 1)));
        assert_eq!(host_port("[::1]:6433"), Some(("::1".into(), 6433)));
        for bad in [
            "a.b",
            "a.b:",
            "a.b:0",
            "a.b:70000",
            "::1:6433",
            ":6433",
            "[::1:6433",
        ] {
            assert_eq!(host_port(bad), None, "{bad}");
        }
    }
}
