//! The text a run publishes: every reason from the enum, labels escaped, and
//! no Pushgateway password anywhere.

use super::*;
use crate::backup::Failure;
use crate::backup::error::RunError;

fn report(pushgateway: Option<&str>) -> Report {
    Report {
        target: "key\"cloak".into(),
        started: UNIX_EPOCH + Duration::from_secs(1000),
        duration: Duration::from_secs(3),
        outcome: Err(Failure::from(RunError::Busy)),
        lease_revoked: Some(true),
        removed: Vec::new(),
        inventory: None,
        destination: "/nonexistent".into(),
        metrics_file: None,
        pushgateway: pushgateway.map(Pushgateway::new),
    }
}

#[test]
fn every_reason_is_exported_and_labels_are_escaped() {
    let stats = Stats {
        failures: BTreeMap::from([(Reason::Dump, 2)]),
    };
    let text = render(&report(None), &stats);
    assert!(
        text.contains(r#"pgwarden_backup_failures_total{target="key\"cloak",reason="dump"} 2"#),
        "{text}"
    );
    for r in Reason::ALL {
        assert!(
            text.contains(&format!("reason=\"{}\"", r.as_str())),
            "{r:?}"
        );
    }
    assert!(text.contains(r#"pgwarden_backup_last_run_success{target="key\"cloak"} 0"#));
    assert!(
        text.contains(r#"pgwarden_backup_last_success_timestamp_seconds{target="key\"cloak"} 0"#)
    );
    assert!(
        text.contains(r#"pgwarden_backup_last_run_timestamp_seconds{target="key\"cloak"} 1000"#)
    );
}

#[test]
fn counts_under_labels_no_reason_has_are_not_exported() {
    let dir = tempfile::tempdir().unwrap();
    let dest = LocalDir::new(dir.path());
    dest.set_state(
        &Stats::state_name("t"),
        br#"{"failures":{"dump":3,"disk_on_fire":7,"x\"} 1\nevil{a=\"b":1}}"#,
    )
    .unwrap();
    let stats = Stats::read(&dest, "t");
    assert_eq!(stats.count(Reason::Dump), 3);
    let text = render(&report(None), &stats);
    assert!(!text.contains("disk_on_fire"), "{text}");
    assert!(!text.contains("evil"), "{text}");
    stats.save(&dest, "t").unwrap();
    let saved = String::from_utf8(dest.state(&Stats::state_name("t")).unwrap().unwrap()).unwrap();
    assert_eq!(saved, r#"{"failures":{"dump":3}}"#);
}

#[test]
fn a_pushgateway_password_is_never_shown() {
    let r = report(Some(
        "https://metrics:push-secret@pushgateway.internal:9091/base",
    ));
    let debug = format!("{r:?}");
    assert!(!debug.contains("push-secret"), "{debug}");
    assert!(
        debug.contains("https://pushgateway.internal:9091/base"),
        "{debug}"
    );
}
