//! Checklist item 5, allowed addresses: pg_hba.conf admits the Keycloak
//! database only over hostssl with SCRAM from named networks, the server
//! listens where it should, and pgwarden's own allowlist is not open to the
//! world. `pg_hba_file_rules` is readable by superusers only: without that
//! privilege the three pg_hba checks say `unknown`. The view shows the file
//! as it is now; while it has lines PostgreSQL cannot read, the server keeps
//! the rules it loaded before, which no view shows, so a check that would
//! pass says `unknown` instead.

use super::super::check::{
    ACCESS_ALLOWLIST, ACCESS_HBA_HOSTSSL, ACCESS_HBA_METHODS, ACCESS_HBA_OPEN,
    ACCESS_LISTEN_ADDRESSES, Finding,
};
use super::super::connection::{flag, literal, number, text};
use super::super::context::Ctx;
use crate::config::Config;

/// One line of `pg_hba_file_rules`.
#[derive(Debug, Clone)]
pub(crate) struct HbaLine {
    pub(crate) line: i64,
    pub(crate) kind: String,
    pub(crate) databases: Vec<String>,
    /// One of `databases` is a regular expression (`/…`, PostgreSQL 16)
    /// matching the route's database, as the server itself evaluated it.
    pub(crate) regex_match: bool,
    pub(crate) address: String,
    pub(crate) netmask: String,
    pub(crate) method: String,
    pub(crate) error: bool,
}

pub(in crate::audit) async fn run(ctx: &mut Ctx<'_>, out: &mut Vec<Finding>) {
    let database = ctx.route.upstream.database.clone();
    let sql = format!(
        "SELECT line_number, coalesce(type, ''), coalesce(array_to_json(database)::text, '[]'), \
                coalesce(address, ''), coalesce(netmask, ''), coalesce(auth_method, ''), \
                error IS NOT NULL, \
                coalesce((SELECT bool_or({db} ~ substr(d, 2)) FROM unnest(database) d \
                          WHERE error IS NULL AND starts_with(d, '/')), false) \
         FROM pg_hba_file_rules ORDER BY line_number",
        db = literal(&database)
    );
    let privilege = "superuser (pg_hba_file_rules is readable by superusers only)";
    match ctx.query(&ACCESS_HBA_METHODS, privilege, &sql).await {
        Ok(rows) => {
            let lines: Vec<HbaLine> = rows
                .iter()
                .map(|r| HbaLine {
                    line: number(r, 0),
                    kind: text(r, 1),
                    databases: serde_json::from_str(&text(r, 2)).unwrap_or_default(),
                    regex_match: flag(r, 7),
                    address: text(r, 3),
                    netmask: text(r, 4),
                    method: text(r, 5),
                    error: flag(r, 6),
                })
                .collect();
            out.extend(hba(&lines, &database));
        }
        Err(f) => {
            for check in [&ACCESS_HBA_METHODS, &ACCESS_HBA_HOSTSSL, &ACCESS_HBA_OPEN] {
                out.push(Finding { check, ..f.clone() });
            }
        }
    }
    out.push(
        match ctx
            .setting(&ACCESS_LISTEN_ADDRESSES, "listen_addresses")
            .await
        {
            Ok(v) => listen_addresses(&v),
            Err(f) => f,
        },
    );
}

/// The three pg_hba findings for `database`.
pub(in crate::audit) fn hba(lines: &[HbaLine], database: &str) -> [Finding; 3] {
    let applies = |l: &&HbaLine| {
        l.method != "reject"
            && !l.error
            && (l.regex_match
                || l.databases.iter().any(|d| {
                    matches!(d.as_str(), "all" | "sameuser" | "samerole" | "samegroup")
                        || d == database
                }))
    };
    let relevant: Vec<&HbaLine> = lines.iter().filter(applies).collect();
    let describe = |l: &HbaLine| {
        format!(
            "line {} ({} {} {})",
            l.line,
            l.kind,
            l.address_text(),
            l.method
        )
    };
    let unreadable: Vec<String> = lines
        .iter()
        .filter(|l| l.error)
        .map(|l| l.line.to_string())
        .collect();
    let judge = |check, bad: Vec<String>, what: &str| {
        let evidence = format!(
            "{} lines admit database {database}, none {what}",
            relevant.len()
        );
        if !bad.is_empty() {
            Finding::fail(check, format!("{what}: {}", bad.join(", ")))
        } else if unreadable.is_empty() {
            Finding::pass(check, evidence)
        } else {
            Finding::unknown(
                check,
                "the rules in force (PostgreSQL keeps the ones it loaded before while pg_hba.conf has errors)",
                format!(
                    "not checked: pg_hba.conf has lines PostgreSQL cannot read (line {}); \
                     in the file, {evidence}",
                    unreadable.join(", ")
                ),
            )
        }
    };
    let methods = relevant
        .iter()
        .filter(|l| matches!(l.method.as_str(), "trust" | "password" | "md5"))
        .map(|l| describe(l))
        .collect();
    let plain = relevant
        .iter()
        .filter(|l| matches!(l.kind.as_str(), "host" | "hostnossl" | "hostgssenc"))
        .map(|l| describe(l))
        .collect();
    let open = relevant
        .iter()
        .filter(|l| l.kind != "local" && l.is_world())
        .map(|l| describe(l))
        .collect();
    [
        judge(&ACCESS_HBA_METHODS, methods, "with trust, password or md5"),
        judge(&ACCESS_HBA_HOSTSSL, plain, "without hostssl"),
        judge(&ACCESS_HBA_OPEN, open, "open to every address"),
    ]
}

impl HbaLine {
    fn is_world(&self) -> bool {
        self.address == "all"
            || (matches!(self.address.as_str(), "0.0.0.0" | "::")
                && matches!(self.netmask.as_str(), "0.0.0.0" | "::"))
    }

    fn address_text(&self) -> String {
        match (self.address.as_str(), self.netmask.as_str()) {
            ("", _) => String::new(),
            (a, "") => a.to_owned(),
            (a, m) => format!("{a}/{m}"),
        }
    }
}

pub(in crate::audit) fn listen_addresses(value: &str) -> Finding {
    let check = &ACCESS_LISTEN_ADDRESSES;
    let evidence = format!("listen_addresses = '{value}'");
    let wildcard = value
        .split(',')
        .map(str::trim)
        .any(|a| matches!(a, "*" | "0.0.0.0" | "::"));
    if wildcard {
        Finding::warn(
            check,
            format!("{evidence}: every interface; pg_hba.conf and a firewall must narrow it"),
        )
    } else {
        Finding::pass(check, evidence)
    }
}

/// pgwarden's own `[listen] allow`.
pub(in crate::audit) fn allowlist(config: &Config) -> Finding {
    let check = &ACCESS_ALLOWLIST;
    let all: Vec<String> = config.listen.allow.iter().map(|n| n.to_string()).collect();
    let world: Vec<&String> = config
        .listen
        .allow
        .iter()
        .zip(&all)
        .filter(|(n, _)| n.prefix_len() == 0)
        .map(|(_, s)| s)
        .collect();
    if world.is_empty() {
        Finding::pass(check, format!("[listen] allow = {}", all.join(", ")))
    } else {
        Finding::fail(
            check,
            format!(
                "[listen] allow includes {}: every address may reach pgwarden",
                world
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::check::Status;
    use super::*;

    fn line(n: i64, kind: &str, db: &str, address: &str, netmask: &str, method: &str) -> HbaLine {
        HbaLine {
            line: n,
            kind: kind.into(),
            databases: vec![db.into()],
            regex_match: false,
            address: address.into(),
            netmask: netmask.into(),
            method: method.into(),
            error: false,
        }
    }

    #[test]
    fn each_bad_line_fails_its_own_check() {
        let good = [
            line(
                1,
                "hostssl",
                "keycloak",
                "10.0.0.5",
                "255.255.255.255",
                "scram-sha-256",
            ),
            line(2, "local", "all", "", "", "peer"),
            line(3, "host", "all", "0.0.0.0", "0.0.0.0", "reject"),
            line(4, "host", "other", "0.0.0.0", "0.0.0.0", "trust"),
        ];
        let statuses = |lines: &[HbaLine]| hba(lines, "keycloak").map(|f| f.status);
        assert_eq!(statuses(&good), [Status::Pass; 3]);
        let with = |bad: HbaLine| {
            let mut v = good.to_vec();
            v.push(bad);
            statuses(&v)
        };
        use Status::{Fail, Pass};
        assert_eq!(
            with(line(
                9,
                "hostssl",
                "keycloak",
                "10.0.0.0",
                "255.0.0.0",
                "md5"
            )),
            [Fail, Pass, Pass]
        );
        assert_eq!(
            with(line(
                9,
                "host",
                "all",
                "10.0.0.0",
                "255.0.0.0",
                "scram-sha-256"
            )),
            [Pass, Fail, Pass]
        );
        assert_eq!(
            with(line(9, "hostssl", "keycloak", "::", "::", "scram-sha-256")),
            [Pass, Pass, Fail]
        );
        assert_eq!(
            with(line(9, "local", "all", "", "", "trust")),
            [Fail, Pass, Pass]
        );
    }

    #[test]
    fn a_line_whose_regular_expression_names_the_database_counts() {
        let mut regex = line(9, "hostssl", "/^key", "10.0.0.0", "255.0.0.0", "trust");
        regex.regex_match = true;
        let statuses = hba(&[regex.clone()], "keycloak").map(|f| f.status);
        assert_eq!(statuses, [Status::Fail, Status::Pass, Status::Pass]);
        // One that does not match (the server said so) is another database's.
        regex.regex_match = false;
        let statuses = hba(&[regex], "keycloak").map(|f| f.status);
        assert_eq!(statuses, [Status::Pass; 3]);
    }

    #[test]
    fn a_file_with_unreadable_lines_passes_nothing() {
        let good = line(
            1,
            "hostssl",
            "keycloak",
            "10.0.0.5",
            "255.255.255.255",
            "scram-sha-256",
        );
        let mut broken = line(7, "hostssl", "keycloak", "", "", "");
        broken.error = true;
        let found = hba(&[good.clone(), broken], "keycloak");
        for f in &found {
            assert_eq!(f.status, Status::Unknown, "{}", f.evidence);
            assert!(f.evidence.contains("line 7"), "{}", f.evidence);
        }
        // A bad line still fails: it is in force now or at the next reload.
        let mut broken = line(8, "hostssl", "keycloak", "", "", "");
        broken.error = true;
        let trust = line(
            2,
            "hostssl",
            "keycloak",
            "10.0.0.5",
            "255.255.255.255",
            "trust",
        );
        assert_eq!(
            hba(&[good, trust, broken], "keycloak")[0].status,
            Status::Fail
        );
    }

    #[test]
    fn wildcard_listen_addresses_warn() {
        assert_eq!(listen_addresses("127.0.0.1").status, Status::Pass);
        assert_eq!(listen_addresses("localhost, 10.0.0.5").status, Status::Pass);
        assert_eq!(listen_addresses("*").status, Status::Warn);
        assert_eq!(listen_addresses("127.0.0.1, 0.0.0.0").status, Status::Warn);
    }
}
