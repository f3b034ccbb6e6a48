//! The lease's timed logic under paused time: renewal at 2/3, retries, the
//! expiry margin and the escalation from idle to cut, second by second,
//! without waiting for any of it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::credentials::LeaseId;

/// A source whose renewals answer from a script, and that notes when asked.
struct Scripted {
    answers: Mutex<Vec<Answer>>,
    increment: Duration,
    policy: OnLeaseEnd,
    asked_at: Mutex<Vec<Instant>>,
}

#[derive(Clone)]
enum Answer {
    Renewed(Duration),
    Fails(ErrorKind),
    /// Never answers.
    Hangs,
}

impl Scripted {
    fn new(answers: Vec<Answer>, increment: Duration, policy: OnLeaseEnd) -> Scripted {
        Scripted {
            answers: Mutex::new(answers),
            increment,
            policy,
            asked_at: Mutex::new(Vec::new()),
        }
    }

    /// When each renewal was asked for, in seconds after `t0`.
    fn asked(&self, t0: Instant) -> Vec<f64> {
        let times = self.asked_at.lock().unwrap();
        times.iter().map(|t| (*t - t0).as_secs_f64()).collect()
    }
}

impl Renew for Scripted {
    async fn renew(&self, _: &Lease, _: Duration) -> Result<Renewal, CredentialError> {
        self.asked_at.lock().unwrap().push(Instant::now());
        let answer = {
            let mut answers = self.answers.lock().unwrap();
            // The last answer repeats.
            if answers.len() > 1 {
                answers.remove(0)
            } else {
                answers[0].clone()
            }
        };
        match answer {
            Answer::Renewed(duration) => Ok(Renewal { duration }),
            Answer::Fails(kind) => Err(CredentialError::new(kind, "scripted")),
            Answer::Hangs => std::future::pending().await,
        }
    }

    fn renew_increment(&self, _: &Lease) -> Duration {
        self.increment
    }

    fn on_lease_end(&self) -> OnLeaseEnd {
        self.policy
    }
}

/// Notes every end-of-life request and when it came.
#[derive(Default)]
struct Recorded(Mutex<Vec<(Instant, EndOfLife)>>);

impl SessionEnd for Recorded {
    fn end(&self, how: EndOfLife) {
        self.0.lock().unwrap().push((Instant::now(), how));
    }
}

impl Recorded {
    fn seen(&self, t0: Instant) -> Vec<(f64, EndOfLife)> {
        let seen = self.0.lock().unwrap();
        seen.iter()
            .map(|(t, how)| ((*t - t0).as_secs_f64(), *how))
            .collect()
    }
}

fn lease(duration: Duration, renewable: bool) -> Lease {
    Lease {
        id: LeaseId::new("database/creds/keycloak/test"),
        username: "v-test".into(),
        endpoint: "db:5432".into(),
        issuer: String::new(),
        duration,
        renewable,
        issued_at: Instant::now(),
    }
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn renewals_come_at_two_thirds_of_each_new_duration() {
    let t0 = Instant::now();
    let source = Scripted::new(
        vec![
            Answer::Renewed(MINUTE),
            Answer::Renewed(MINUTE * 3),
            Answer::Fails(ErrorKind::NotRenewable),
        ],
        MINUTE,
        OnLeaseEnd::RecycleWhenIdle,
    );
    let (why, expires) = renew_while_alive(&lease(MINUTE, true), &source).await;
    // At 40 s (2/3 of 60), then 40 s after that, then 2/3 of the 3 minutes granted.
    assert_eq!(source.asked(t0), vec![40.0, 80.0, 200.0]);
    assert_eq!(why, "lease reached its maximum TTL");
    // The last grant (3 minutes at 80 s) still stands.
    assert_eq!((expires - t0).as_secs(), 80 + 180);
}

#[tokio::test(start_paused = true)]
async fn a_capped_renewal_starts_the_end_at_once() {
    let t0 = Instant::now();
    let source = Scripted::new(
        vec![Answer::Renewed(Duration::from_secs(20))],
        MINUTE,
        OnLeaseEnd::RecycleWhenIdle,
    );
    let (why, expires) = renew_while_alive(&lease(MINUTE, true), &source).await;
    assert_eq!(source.asked(t0), vec![40.0]);
    assert_eq!(why, "lease reached its maximum TTL");
    assert_eq!((expires - t0).as_secs(), 60);
}

#[tokio::test(start_paused = true)]
async fn a_lease_that_cannot_be_renewed_ends_at_two_thirds_without_asking() {
    let t0 = Instant::now();
    let source = Scripted::new(
        vec![Answer::Renewed(MINUTE)],
        MINUTE,
        OnLeaseEnd::RecycleWhenIdle,
    );
    let (why, expires) = renew_while_alive(&lease(MINUTE, false), &source).await;
    assert!(source.asked(t0).is_empty());
    assert_eq!(why, "lease is not renewable");
    assert_eq!(expires - t0, MINUTE);
    assert_eq!((Instant::now() - t0).as_secs(), 40);
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_source_is_retried_ever_sooner_and_given_up_before_expiry() {
    let t0 = Instant::now();
    let source = Scripted::new(
        vec![Answer::Fails(ErrorKind::Unavailable)],
        MINUTE,
        OnLeaseEnd::RecycleWhenIdle,
    );
    let (why, expires) = renew_while_alive(&lease(MINUTE, true), &source).await;
    let asked = source.asked(t0);
    assert_eq!(asked[0], 40.0);
    assert!(asked.len() >= 4, "retried: {asked:?}");
    for pair in asked.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap > 0.0 && gap <= RENEW_RETRY.as_secs_f64(), "{asked:?}");
        // Each wait is a quarter of what is left, at most RENEW_RETRY (timers
        // keep whole milliseconds).
        let left = 60.0 - pair[0];
        assert!((gap - (left / 4.0).min(5.0)).abs() < 0.002, "{asked:?}");
    }
    // It stops once another retry could not be in time.
    let last = *asked.last().unwrap();
    assert!(last + RENEW_RETRY.as_secs_f64() >= 60.0, "{asked:?}");
    assert!(last < 60.0);
    assert_eq!(why, "lease could not be renewed before it expired");
    assert_eq!(expires - t0, MINUTE);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_hangs_gives_up_at_the_expiry_margin() {
    let t0 = Instant::now();
    let source = Scripted::new(vec![Answer::Hangs], MINUTE, OnLeaseEnd::RecycleWhenIdle);
    let (why, _) = renew_while_alive(&lease(MINUTE, true), &source).await;
    assert_eq!(source.asked(t0), vec![40.0]);
    assert_eq!(why, "lease could not be renewed before it expired");
    // 60 s minus a margin of a tenth of the lease.
    assert_eq!((Instant::now() - t0).as_secs(), 54);
}

#[tokio::test(start_paused = true)]
async fn a_refused_or_gone_lease_ends_at_once() {
    for kind in [ErrorKind::Refused, ErrorKind::LeaseGone] {
        let t0 = Instant::now();
        let source = Scripted::new(vec![Answer::Fails(kind)], MINUTE, OnLeaseEnd::Keep);
        let (why, _) = renew_while_alive(&lease(MINUTE, true), &source).await;
        assert_eq!(source.asked(t0), vec![40.0], "{kind:?}");
        assert_eq!(why, "lease renewal was refused");
    }
}

/// Runs the end of a lease of `duration` that expires `duration` from now
/// under `policy`, with a `grace` of 5 s, and returns what the session was told.
async fn end_with(policy: OnLeaseEnd, duration: Duration) -> Vec<(f64, EndOfLife)> {
    let t0 = Instant::now();
    let source = Scripted::new(vec![Answer::Renewed(duration)], duration, policy);
    let session = Recorded::default();
    end_of_life(
        &source,
        &lease(duration, true),
        &session,
        "test",
        t0 + duration,
        Duration::from_secs(5),
    )
    .await;
    session.seen(t0)
}

#[tokio::test(start_paused = true)]
async fn recycling_asks_for_idle_then_a_boundary_at_the_margin_then_cuts_after_the_grace() {
    // A one-hour lease: the margin is 30 s at most.
    assert_eq!(
        end_with(OnLeaseEnd::RecycleWhenIdle, Duration::from_secs(3600)).await,
        vec![
            (0.0, EndOfLife::WhenIdle),
            (3570.0, EndOfLife::AtBoundary),
            (3575.0, EndOfLife::Now),
        ]
    );
    // A 20 s lease: a margin of 2 s, and the grace shrinks to fit it.
    assert_eq!(
        end_with(OnLeaseEnd::RecycleWhenIdle, Duration::from_secs(20)).await,
        vec![
            (0.0, EndOfLife::WhenIdle),
            (18.0, EndOfLife::AtBoundary),
            (20.0, EndOfLife::Now),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn terminate_stops_at_the_next_boundary_at_once_and_keep_never_ends_the_session() {
    assert_eq!(
        end_with(OnLeaseEnd::Terminate, MINUTE).await,
        vec![
            (0.0, EndOfLife::AtBoundary),
            (54.0, EndOfLife::AtBoundary),
            (59.0, EndOfLife::Now),
        ]
    );
    assert_eq!(end_with(OnLeaseEnd::Keep, MINUTE).await, vec![]);
}
