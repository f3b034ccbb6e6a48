//! Which backups to keep: grandfather-father-son over the backups of one
//! target, by their start time in UTC.
//!
//! Kept: the newest `keep_last`; the newest backup of each of the last
//! `keep_daily` days that have one, of the last `keep_weekly` ISO weeks
//! (Monday to Sunday) and of the last `keep_monthly` months. A backup without
//! a manifest (or without its dump) is incomplete: it is removed once a
//! complete one exists, never counted as one. Whatever the policy says, the
//! newest complete backup and the backup the run just wrote are never
//! removed, so the only good backup always stays, even when clocks disagree;
//! nor is a backup whose manifest exists but cannot be read (a newer
//! pgwarden's, a damaged one): what pgwarden cannot understand, it does not
//! delete. Pure: it decides, the caller deletes.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Retention;

/// What state a backup found in the destination is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Its dump and a readable manifest exist: complete and durable.
    Complete,
    /// One of its files is missing: a run died halfway, or a deletion did.
    Incomplete,
    /// Its manifest exists but cannot be read or parsed.
    Unreadable,
}

/// One backup found in the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// The name both its files share.
    pub(crate) stem: String,
    pub(crate) started: SystemTime,
    pub(crate) state: State,
}

/// The decision: stems to keep and to delete, newest first.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) keep: Vec<String>,
    pub(crate) delete: Vec<String>,
}

/// Applies `policy` to `found`; `written` (the backup just made) is kept.
pub(crate) fn plan(found: &[Found], policy: &Retention, written: &str) -> Plan {
    let mut complete: Vec<&Found> = found
        .iter()
        .filter(|f| f.state == State::Complete)
        .collect();
    complete.sort_by(|a, b| b.started.cmp(&a.started).then(b.stem.cmp(&a.stem)));
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    for f in complete.iter().take(policy.keep_last) {
        keep.insert(&f.stem);
    }
    keep_newest_per(&complete, policy.keep_daily, day, &mut keep);
    keep_newest_per(&complete, policy.keep_weekly, week, &mut keep);
    keep_newest_per(&complete, policy.keep_monthly, month, &mut keep);
    if let Some(newest) = complete.first() {
        keep.insert(&newest.stem);
    }
    let mut all: Vec<&Found> = found.iter().collect();
    all.sort_by(|a, b| b.started.cmp(&a.started).then(b.stem.cmp(&a.stem)));
    let mut out = Plan::default();
    for f in all {
        // An incomplete backup stays only while nothing complete exists.
        let stays = keep.contains(f.stem.as_str())
            || f.stem == written
            || f.state == State::Unreadable
            || (f.state == State::Incomplete && complete.is_empty());
        if stays {
            out.keep.push(f.stem.clone());
        } else {
            out.delete.push(f.stem.clone());
        }
    }
    out
}

/// Keeps the newest backup of each of the `n` most recent periods that have
/// one. `sorted` is newest first.
fn keep_newest_per<'a>(
    sorted: &[&'a Found],
    n: usize,
    period: fn(SystemTime) -> i64,
    keep: &mut BTreeSet<&'a str>,
) {
    let mut seen = BTreeSet::new();
    for f in sorted {
        if seen.len() == n {
            break;
        }
        if seen.insert(period(f.started)) {
            keep.insert(&f.stem);
        }
    }
}

fn unix_days(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() / 86_400) as i64,
        Err(e) => -(e.duration().as_secs().div_ceil(86_400) as i64),
    }
}

fn day(t: SystemTime) -> i64 {
    unix_days(t)
}

/// Weeks from Monday to Sunday (1970-01-01 was a Thursday).
fn week(t: SystemTime) -> i64 {
    (unix_days(t) + 3).div_euclid(7)
}

/// Months since year 0, in the proleptic Gregorian calendar (UTC).
fn month(t: SystemTime) -> i64 {
    let (y, m, _) = civil(unix_days(t));
    y * 12 + (m as i64 - 1)
}

/// (year, month 1–12, day 1–31) of a day count since 1970-01-01.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// 2026-05-12 (a Tuesday) 00:00 UTC.
    const TUESDAY: u64 = 1_778_544_000;

    fn at(days_ago: u64, hour: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(TUESDAY - days_ago * 86_400 + hour * 3600)
    }

    fn found(days_ago: u64, hour: u64, complete: bool) -> Found {
        let state = if complete {
            State::Complete
        } else {
            State::Incomplete
        };
        Found {
            stem: format!("d{days_ago}h{hour}"),
            started: at(days_ago, hour),
            state,
        }
    }

    fn policy(last: usize, daily: usize, weekly: usize, monthly: usize) -> Retention {
        Retention {
            keep_last: last,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
        }
    }

    #[test]
    fn the_calendar_is_right() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(unix_days(at(0, 0))), (2026, 5, 12));
        assert_eq!(civil(unix_days(at(12, 0))), (2026, 4, 30));
        assert_eq!(civil(-1), (1969, 12, 31));
        assert_eq!(civil(11_016), (2000, 2, 29));
        // Monday 2026-05-11 starts the week of Tuesday the 12th; Sunday the 10th ends the one before.
        assert_eq!(week(at(1, 0)), week(at(0, 0)));
        assert_eq!(week(at(2, 23)) + 1, week(at(0, 0)));
        assert_eq!(month(at(11, 0)), month(at(0, 0)));
        assert_eq!(month(at(12, 0)) + 1, month(at(0, 0)));
    }

    #[test]
    fn keeps_the_last_n_and_one_a_day() {
        // Four backups a day for ten days.
        let all: Vec<Found> = (0..10)
            .flat_map(|d| [0, 6, 12, 18].map(|h| found(d, h, true)))
            .collect();
        let p = plan(&all, &policy(3, 5, 0, 0), "");
        // The three newest (today 18, 12, 6), then the newest of each of the five newest days.
        let want = ["d0h18", "d0h12", "d0h6", "d1h18", "d2h18", "d3h18", "d4h18"];
        assert_eq!(p.keep, want);
        assert_eq!(p.delete.len(), all.len() - want.len());
        assert!(p.delete.contains(&"d0h0".to_string()));
        assert!(p.delete.contains(&"d5h18".to_string()));
    }

    #[test]
    fn days_without_a_backup_do_not_count_against_keep_daily() {
        let all = vec![
            found(0, 1, true),
            found(3, 1, true),
            found(9, 1, true),
            found(20, 1, true),
        ];
        let p = plan(&all, &policy(1, 3, 0, 0), "");
        assert_eq!(p.keep, ["d0h1", "d3h1", "d9h1"]);
        assert_eq!(p.delete, ["d20h1"]);
    }

    #[test]
    fn keeps_one_a_week_and_one_a_month() {
        // One backup a day for 70 days.
        let all: Vec<Found> = (0..70).map(|d| found(d, 2, true)).collect();
        let p = plan(&all, &policy(1, 0, 4, 3), "");
        // Weeks: this one (newest: today), and the Sundays ending the three before.
        // Months: May (today), April (the 30th, 12 days ago), March (the 31st, 42 days ago).
        assert_eq!(p.keep, ["d0h2", "d2h2", "d9h2", "d12h2", "d16h2", "d42h2"]);
        assert_eq!(p.keep.len() + p.delete.len(), 70);
    }

    #[test]
    fn never_deletes_the_only_good_backup() {
        // Old, and the policy keeps nothing by period: the newest complete one stays.
        let all = vec![found(400, 0, true), found(500, 0, true)];
        let p = plan(&all, &policy(0, 0, 0, 0), "");
        assert_eq!(p.keep, ["d400h0"]);
        assert_eq!(p.delete, ["d500h0"]);
    }

    #[test]
    fn incomplete_backups_go_once_a_complete_one_exists() {
        let all = vec![found(0, 5, false), found(0, 3, true), found(1, 3, false)];
        let p = plan(&all, &policy(5, 0, 0, 0), "");
        assert_eq!(p.keep, ["d0h3"]);
        assert_eq!(p.delete, ["d0h5", "d1h3"]);
        // With nothing complete, nothing is deleted.
        let only = vec![found(0, 5, false)];
        assert_eq!(
            plan(&only, &policy(5, 0, 0, 0), "").delete,
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_backup_just_written_stays_even_when_it_looks_oldest() {
        // The clock went back: the run's backup sorts before three others.
        let all = vec![
            found(0, 3, true),
            found(0, 2, true),
            found(0, 1, true),
            found(9, 0, true),
        ];
        let p = plan(&all, &policy(1, 0, 0, 0), "d9h0");
        assert_eq!(p.keep, ["d0h3", "d9h0"]);
        assert_eq!(p.delete, ["d0h2", "d0h1"]);
    }

    #[test]
    fn a_backup_whose_manifest_cannot_be_read_is_never_deleted() {
        let mut unreadable = found(30, 0, false);
        unreadable.state = State::Unreadable;
        let all = vec![found(0, 0, true), unreadable, found(40, 0, false)];
        let p = plan(&all, &policy(1, 0, 0, 0), "d0h0");
        assert_eq!(p.keep, ["d0h0", "d30h0"]);
        assert_eq!(p.delete, ["d40h0"]);
    }
}
