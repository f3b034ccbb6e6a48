//! The built-in source's prefetch pool on a real cluster: roles created ahead,
//! each handed to one connection only, dropped when too old to use or at
//! shutdown, and a configuration that cannot work refused.

use std::path::Path;

use crate::support::harness::{GENEROUS, Harness, Options, session_user, wait_until};

fn prefetching(n: usize, max_age: &str) -> Options {
    Options {
        prefetch: Some((n, max_age.to_owned())),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_prefetch_hands_each_role_to_one_connection_and_refills() {
    let mut h = Harness::start(prefetching(2, "5m")).await;
    wait_until(GENEROUS, "the pool is full", async || {
        h.dynamic_roles().await.len() == 2
    })
    .await;
    let pooled = h.dynamic_roles().await;
    let a = h.connect().await;
    let user_a = session_user(&a).await;
    assert!(pooled.contains(&user_a), "{user_a} came from {pooled:?}");
    assert!(
        h.valid_until(&user_a).await.is_some(),
        "a role of its own, with a validity"
    );
    // The pool refills behind the connection: two waiting, one in use.
    wait_until(GENEROUS, "the pool refills", async || {
        h.dynamic_roles().await.len() == 3
    })
    .await;
    let mut users = vec![user_a.clone()];
    let mut clients = vec![a];
    for _ in 0..4 {
        let c = h.connect().await;
        users.push(session_user(&c).await);
        clients.push(c);
    }
    let mut distinct = users.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), users.len(), "never reused: {users:?}");
    // A session's role is dropped when it ends, pooled or not.
    drop(clients.remove(0));
    wait_until(
        GENEROUS,
        "the first session's role is dropped",
        async || !h.dynamic_roles().await.contains(&user_a),
    )
    .await;
    drop(clients);
    // Shutdown drops the roles still waiting in the pool.
    assert_eq!(h.shutdown().await, 0, "every lease revoked at shutdown");
    h.wait_for_no_dynamic_roles().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_prefetch_drops_a_role_too_old_to_hand_out() {
    let mut h = Harness::start(prefetching(1, "2s")).await;
    wait_until(GENEROUS, "the pool is full", async || {
        h.dynamic_roles().await.len() == 1
    })
    .await;
    let first = h.dynamic_roles().await.remove(0);
    wait_until(GENEROUS, "the old role is replaced", async || {
        let roles = h.dynamic_roles().await;
        !roles.contains(&first) && roles.len() == 1
    })
    .await;
    let c = h.connect().await;
    assert_ne!(session_user(&c).await, first);
    drop(c);
    assert_eq!(h.shutdown().await, 0);
    h.wait_for_no_dynamic_roles().await;
}

#[test]
fn postgres_prefetch_settings_are_validated() {
    let config = |extra: &str| {
        format!(
            "[credentials.db]\nsource = \"postgres\"\nadmin_user = \"a\"\n\
             admin_password = \"p\"\nttl = \"10m\"\n{extra}"
        )
    };
    let errors = |text: &str| match pgwarden::config::from_str(
        text,
        Path::new("/nonexistent-base"),
        std::iter::empty(),
    ) {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    };
    let mentions = |text: &str, needle: &str| errors(text).iter().any(|e| e.contains(needle));
    let refused = [
        (
            "prefetch = 2\nprefetch_max_age = \"10m\"",
            "shorter than ttl",
        ),
        ("prefetch = 65", "prefetch must be at most 64"),
        ("prefetch = 1\nprefetch_max_age = \"0s\"", "at least 1s"),
    ];
    for (extra, why) in refused {
        assert!(
            mentions(&config(extra), why),
            "{extra:?}: {:#?}",
            errors(&config(extra))
        );
    }
    let fine = config("prefetch = 2\nprefetch_max_age = \"5m\"");
    for (_, why) in refused {
        assert!(!mentions(&fine, why), "{:#?}", errors(&fine));
    }
}
