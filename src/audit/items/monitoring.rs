//! Checklist item 10, monitoring: pgwarden serves its metrics and health, and
//! checks this checklist continuously. On demand the audit asks the admin
//! listener the configuration names; inside `pgwarden run` it is that process.

use std::time::Duration;

use super::super::Mode;
use super::super::check::{
    Finding, MONITORING_ADMIN_LISTENER, MONITORING_CONTINUOUS, MONITORING_METRICS,
};
use crate::config::Config;

/// How long the on-demand audit waits for `/metrics`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub(in crate::audit) async fn run(config: &Config, mode: Mode, out: &mut Vec<Finding>) {
    out.push(admin_listener(config));
    out.push(match (config.admin.as_ref().map(|a| a.address), mode) {
        (None, _) => Finding::fail(&MONITORING_METRICS, "no admin listener, so no metrics"),
        (Some(_), Mode::Running) => {
            Finding::pass(&MONITORING_METRICS, "served by this pgwarden process")
        }
        (Some(admin), Mode::OnDemand) => probe(admin).await,
    });
    out.push(continuous(config));
}

pub(in crate::audit) fn admin_listener(config: &Config) -> Finding {
    match config.admin.as_ref().map(|a| a.address) {
        Some(admin) => Finding::pass(
            &MONITORING_ADMIN_LISTENER,
            format!("[admin] address = {admin}: /metrics, /healthz, /readyz"),
        ),
        None => Finding::fail(
            &MONITORING_ADMIN_LISTENER,
            "no [admin] section: no /metrics, /healthz or /readyz",
        ),
    }
}

pub(in crate::audit) fn continuous(config: &Config) -> Finding {
    match &config.audit {
        Some(a) => Finding::pass(
            &MONITORING_CONTINUOUS,
            format!(
                "[audit] interval = {}",
                humantime::format_duration(a.interval)
            ),
        ),
        None => Finding::warn(
            &MONITORING_CONTINUOUS,
            "no [audit] section: the checklist is checked only when someone runs pgwarden audit",
        ),
    }
}

/// GET /metrics on the admin listener (a wildcard address asked on loopback).
async fn probe(admin: std::net::SocketAddr) -> Finding {
    let check = &MONITORING_METRICS;
    if admin.port() == 0 {
        return Finding::warn(
            check,
            format!("[admin] address = {admin}: port 0 is chosen at start and cannot be asked"),
        );
    }
    let mut target = admin;
    if target.ip().is_unspecified() {
        target.set_ip(if admin.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let url = format!("http://{target}/metrics");
    let answer = async {
        let client = reqwest::Client::builder()
            .timeout(PROBE_TIMEOUT)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .ok()?;
        let response = client.get(&url).send().await.ok()?;
        let ok = response.status().is_success();
        let body = response.text().await.ok()?;
        Some(ok && body.contains(crate::metrics::name::BUILD_INFO))
    };
    match answer.await {
        Some(true) => Finding::pass(check, format!("{url} answers with pgwarden's metrics")),
        Some(false) => Finding::warn(
            check,
            format!("{url} answers, but not with pgwarden's metrics"),
        ),
        None => Finding::warn(
            check,
            format!("no answer from {url}: pgwarden is not running here (check from its host)"),
        ),
    }
}
