//! Checklist item 1, TLS: the server has it on with a modern minimum, its
//! certificate (as pgwarden sees it on connect) is not about to expire, and
//! pgwarden's own legs verify the server they talk to.

use std::time::{SystemTime, UNIX_EPOCH};

use super::super::check::{
    Finding, TLS_MIN_PROTOCOL, TLS_SERVER_CERTIFICATE, TLS_SSL_ON, TLS_UPSTREAM_VERIFY,
};
use super::super::context::Ctx;
use crate::config::{Config, RouteConfig, UpstreamTls};

/// A certificate expiring within this many days is a warning…
pub(crate) const CERTIFICATE_WARN_DAYS: i64 = 30;
/// …and within this many (the alert's threshold) a failure.
pub(crate) const CERTIFICATE_FAIL_DAYS: i64 = 14;

pub(in crate::audit) async fn run(ctx: &mut Ctx<'_>, out: &mut Vec<Finding>) {
    out.push(match ctx.setting(&TLS_SSL_ON, "ssl").await {
        Ok(v) => ssl_on(&v),
        Err(f) => f,
    });
    out.push(
        match ctx
            .setting(&TLS_MIN_PROTOCOL, "ssl_min_protocol_version")
            .await
        {
            Ok(v) => min_protocol(&v),
            Err(f) => f,
        },
    );
    out.push(server_certificate(ctx, now()));
    out.push(upstream_verify(ctx.route, ctx.config));
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(in crate::audit) fn ssl_on(value: &str) -> Finding {
    if value == "on" {
        Finding::pass(&TLS_SSL_ON, "ssl = on")
    } else {
        Finding::fail(&TLS_SSL_ON, format!("ssl = {value}"))
    }
}

pub(in crate::audit) fn min_protocol(value: &str) -> Finding {
    let evidence = format!("ssl_min_protocol_version = '{value}'");
    match value {
        "TLSv1.2" | "TLSv1.3" => Finding::pass(&TLS_MIN_PROTOCOL, evidence),
        _ => Finding::fail(&TLS_MIN_PROTOCOL, evidence),
    }
}

/// The server certificate of the connection the audit made (the probe's,
/// which is a pgwarden session's, else the auditor's).
fn server_certificate(ctx: &Ctx<'_>, now: i64) -> Finding {
    let tls = match (&ctx.probe, &ctx.db) {
        (Ok(p), _) => p.tls.clone(),
        (Err(_), Ok(db)) => db.tls.clone(),
        (Err(why), Err(_)) => {
            return Finding::unknown(
                &TLS_SERVER_CERTIFICATE,
                "a connection to the database",
                format!("not checked: {why}"),
            );
        }
    };
    certificate(tls.as_ref().map(|t| (t.version.as_str(), t.not_after)), now)
}

/// `tls`: the negotiated version and the leaf's notAfter, or `None` without TLS.
pub(in crate::audit) fn certificate(tls: Option<(&str, Option<i64>)>, now: i64) -> Finding {
    let Some((version, not_after)) = tls else {
        return Finding::fail(
            &TLS_SERVER_CERTIFICATE,
            "the connection to the database is not encrypted (upstream.tls = \"disable\")",
        );
    };
    let Some(not_after) = not_after else {
        return Finding::warn(
            &TLS_SERVER_CERTIFICATE,
            format!("{version}; the server's certificate could not be read"),
        );
    };
    let days = (not_after - now).div_euclid(86_400);
    let when = humantime::format_rfc3339_seconds(
        UNIX_EPOCH + std::time::Duration::from_secs(not_after.max(0) as u64),
    );
    let evidence = format!("{version}; the server's certificate expires {when} ({days} days)");
    if days < CERTIFICATE_FAIL_DAYS {
        Finding::fail(&TLS_SERVER_CERTIFICATE, evidence)
    } else if days < CERTIFICATE_WARN_DAYS {
        Finding::warn(&TLS_SERVER_CERTIFICATE, evidence)
    } else {
        Finding::pass(&TLS_SERVER_CERTIFICATE, evidence)
    }
}

pub(in crate::audit) fn upstream_verify(route: &RouteConfig, config: &Config) -> Finding {
    let vault = config
        .vault
        .as_ref()
        .map(|v| v.address.starts_with("https://"));
    let leg = match route.upstream.tls {
        UpstreamTls::VerifyFull => "verify-full",
        UpstreamTls::VerifyCa => "verify-ca",
        UpstreamTls::Disable => "disable",
    };
    let mut evidence = format!("upstream {} tls = {leg}", route.upstream.endpoint());
    if let Some(https) = vault {
        evidence += if https {
            "; Vault over https"
        } else {
            "; Vault over plain http"
        };
    }
    match (route.upstream.tls, vault) {
        (UpstreamTls::Disable, _) => Finding::fail(&TLS_UPSTREAM_VERIFY, evidence),
        (UpstreamTls::VerifyCa, _) | (_, Some(false)) => {
            Finding::warn(&TLS_UPSTREAM_VERIFY, evidence)
        }
        _ => Finding::pass(&TLS_UPSTREAM_VERIFY, evidence),
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::check::Status;
    use super::*;

    #[test]
    fn settings_fail_when_off_or_old() {
        assert_eq!(ssl_on("on").status, Status::Pass);
        assert_eq!(ssl_on("off").status, Status::Fail);
        assert_eq!(min_protocol("TLSv1.2").status, Status::Pass);
        assert_eq!(min_protocol("TLSv1.3").status, Status::Pass);
        assert_eq!(min_protocol("TLSv1").status, Status::Fail);
        assert_eq!(min_protocol("").status, Status::Fail);
    }

    #[test]
    fn a_certificate_close_to_expiry_warns_then_fails() {
        let now = 1_700_000_000;
        let at = |days: i64| certificate(Some(("TLSv1.3", Some(now + days * 86_400 + 60))), now);
        assert_eq!(at(90).status, Status::Pass);
        assert_eq!(at(20).status, Status::Warn);
        assert_eq!(at(3).status, Status::Fail);
        assert_eq!(at(-1).status, Status::Fail);
        assert!(at(90).evidence.contains("(90 days)"), "{}", at(90).evidence);
        assert_eq!(certificate(None, now).status, Status::Fail);
    }
}
