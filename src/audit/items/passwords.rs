//! Checklist item 3, strong passwords: the server stores SCRAM-SHA-256
//! verifiers, no role is left with an MD5 hash, and the credential source
//! issues long passwords (judged from the probe's password: its length and
//! character classes, never the password).

use super::super::check::{
    Finding, PASSWORDS_ENCRYPTION, PASSWORDS_ISSUED_STRENGTH, PASSWORDS_NO_MD5, names,
};
use super::super::connection::text;
use super::super::context::Ctx;

/// An issued password this long, from this many character classes, passes…
pub(crate) const STRONG_LENGTH: usize = 20;
pub(crate) const STRONG_CLASSES: usize = 3;
/// …one at least this long only warns.
pub(crate) const WEAK_LENGTH: usize = 16;

pub(in crate::audit) async fn run(ctx: &mut Ctx<'_>, out: &mut Vec<Finding>) {
    out.push(
        match ctx
            .setting(&PASSWORDS_ENCRYPTION, "password_encryption")
            .await
        {
            Ok(v) if v == "scram-sha-256" => {
                Finding::pass(&PASSWORDS_ENCRYPTION, "password_encryption = scram-sha-256")
            }
            Ok(v) => Finding::fail(&PASSWORDS_ENCRYPTION, format!("password_encryption = {v}")),
            Err(f) => f,
        },
    );
    out.push(no_md5(ctx).await);
    out.push(match ctx.probe(&PASSWORDS_ISSUED_STRENGTH) {
        Ok(p) => strength(p.password_len, p.password_classes),
        Err(f) => f,
    });
}

async fn no_md5(ctx: &mut Ctx<'_>) -> Finding {
    let check = &PASSWORDS_NO_MD5;
    let rows = match ctx
        .query(
            check,
            "superuser (pg_authid, which holds password hashes, is readable by superusers only)",
            "SELECT rolname::text FROM pg_authid WHERE rolpassword LIKE 'md5%' ORDER BY 1",
        )
        .await
    {
        Ok(r) => r,
        Err(f) => return f,
    };
    let found: Vec<String> = rows.iter().map(|r| text(r, 0)).collect();
    if found.is_empty() {
        Finding::pass(check, "no role has an MD5 password hash")
    } else {
        Finding::fail(
            check,
            format!(
                "{} roles have an MD5 password hash: {}",
                found.len(),
                names(&found, 8)
            ),
        )
    }
}

/// Lower case, upper case, digits, anything else: how many occur in `password`.
pub(crate) fn classes(password: &str) -> usize {
    let has = |f: fn(&char) -> bool| password.chars().any(|c| f(&c));
    [
        has(char::is_ascii_lowercase),
        has(char::is_ascii_uppercase),
        has(char::is_ascii_digit),
        has(|c| !c.is_ascii_alphanumeric()),
    ]
    .iter()
    .filter(|b| **b)
    .count()
}

pub(in crate::audit) fn strength(len: usize, classes: usize) -> Finding {
    let check = &PASSWORDS_ISSUED_STRENGTH;
    let evidence = format!("the issued password has {len} characters from {classes} classes");
    if len >= STRONG_LENGTH && classes >= STRONG_CLASSES {
        Finding::pass(check, evidence)
    } else if len >= WEAK_LENGTH {
        Finding::warn(check, evidence)
    } else {
        Finding::fail(check, evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::check::Status;
    use super::*;

    #[test]
    fn short_or_plain_passwords_do_not_pass() {
        assert_eq!(classes("abcDEF123-"), 4);
        assert_eq!(classes("aaaa"), 1);
        assert_eq!(strength(48, 4).status, Status::Pass);
        assert_eq!(strength(20, 3).status, Status::Pass);
        assert_eq!(strength(24, 1).status, Status::Warn);
        assert_eq!(strength(8, 4).status, Status::Fail);
    }
}
