//! The health state machines, without I/O: check results and answers are handed in, time is a
//! number of milliseconds.

use super::*;

const SECOND: u64 = 1000;

fn passive() -> PassiveHealth {
    PassiveHealth::default()
}

/// An upstream of `n` servers of weight 1 (`h:1`, `h:2`, ...), with or without active checks.
fn upstream(n: usize, check: Option<HealthCheck>, passive: PassiveHealth) -> UpstreamHealth {
    let servers: Vec<(Arc<str>, u32)> = (1..=n)
        .map(|i| (Arc::from(format!("h:{i}").as_str()), 1))
        .collect();
    UpstreamHealth::new(&Arc::from("web"), &servers, check, passive, None)
}

/// Fails server `i` `times` times at `now`.
fn fail(u: &UpstreamHealth, i: usize, times: u32, now: u64) {
    for _ in 0..times {
        u.failed_at(u.server(i), &"answered 502", now);
    }
}

/// The servers in service at `now`, by index.
fn in_service(u: &UpstreamHealth, now: u64) -> Vec<usize> {
    (0..u.servers.len())
        .filter(|&i| u.server(i).in_service(now))
        .collect()
}

#[test]
fn the_first_check_decides_at_once_then_thresholds_do() {
    let (healthy, unhealthy) = (2, 3);
    let mut down_at_start = ActiveState::default();
    assert_eq!(down_at_start.record(false, healthy, unhealthy), Some(false));
    let mut up_at_start = ActiveState::default();
    assert_eq!(up_at_start.record(true, healthy, unhealthy), Some(true));

    // Up: three failures in a row take it down; a pass in between starts the count again.
    let mut s = up_at_start;
    let results = [false, false, true, false, false, false];
    let changes: Vec<Option<bool>> = results
        .iter()
        .map(|&passed| s.record(passed, healthy, unhealthy))
        .collect();
    assert_eq!(changes, [None, None, None, None, None, Some(false)]);
    // Down: two passes in a row bring it back; a failure in between starts the count again.
    let results = [true, false, true, true];
    let changes: Vec<Option<bool>> = results
        .iter()
        .map(|&passed| s.record(passed, healthy, unhealthy))
        .collect();
    assert_eq!(changes, [None, None, None, Some(true)]);
    // Results that agree with the state change nothing.
    assert_eq!(s.record(true, healthy, unhealthy), None);
}

#[test]
fn ejections_double_while_they_follow_each_other_up_to_the_longest() {
    let cfg = PassiveHealth {
        failures: 5,
        ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(60),
    };
    let mut e = Ejections::default();
    let mut now = 1000;
    let mut lengths = Vec::new();
    for _ in 0..5 {
        let until = e.eject(now, &cfg);
        lengths.push((until - now) / SECOND);
        // Ejected again as soon as it is back.
        now = until;
    }
    assert_eq!(lengths, [10, 20, 40, 60, 60]);
    // In service for longer than the longest ejection: the next one starts over.
    now += 60 * SECOND;
    assert_eq!((e.eject(now, &cfg) - now) / SECOND, 10);
    // Within it: doubles again.
    now += 10 * SECOND + 59 * SECOND;
    assert_eq!((e.eject(now, &cfg) - now) / SECOND, 20);
}

#[test]
fn failures_in_a_row_eject_a_server_and_a_success_resets_the_count() {
    let u = upstream(2, None, passive());
    let now = now_ms();
    fail(&u, 0, 4, now);
    u.succeeded_with(u.server(0), Duration::ZERO, || now);
    fail(&u, 0, 4, now);
    assert_eq!(in_service(&u, now), [0, 1], "4 failures in a row are not 5");
    fail(&u, 0, 1, now);
    assert_eq!(in_service(&u, now), [1], "5 in a row eject");
    assert_eq!(in_service(&u, now + 10 * SECOND - 1), [1]);
    assert_eq!(
        in_service(&u, now + 10 * SECOND),
        [0, 1],
        "back after the ejection"
    );
    let statuses = u.statuses(now);
    assert_eq!(statuses[0].state, ServerState::Ejected);
    assert_eq!(
        statuses[0].reason.as_deref(),
        Some("ejected for 10s: 5 failures in a row, the last: answered 502")
    );
    assert!(statuses[0].until.is_some() && statuses[0].since.is_some());
    assert_eq!(statuses[0].ejections, 1);
    assert_eq!(statuses[1].state, ServerState::Up);
    assert_eq!(statuses[1].reason, None);
}

#[test]
fn after_an_ejection_one_failure_ejects_again_for_longer_and_one_success_ends_it() {
    let u = upstream(2, None, passive());
    let start = now_ms();
    fail(&u, 0, 5, start);
    // Back on probation: its first failure ejects it again, for twice as long.
    let back = start + 10 * SECOND;
    fail(&u, 0, 1, back);
    assert_eq!(in_service(&u, back), [1]);
    assert_eq!(in_service(&u, back + 20 * SECOND - 1), [1]);
    assert_eq!(
        u.statuses(back)[0].reason.as_deref(),
        Some("ejected again for 20s: it failed after its last ejection: answered 502")
    );
    // Back again; a success ends the probation: one failure is one failure again.
    let again = back + 20 * SECOND;
    u.succeeded_with(u.server(0), Duration::ZERO, || again);
    fail(&u, 0, 4, again);
    assert_eq!(in_service(&u, again), [0, 1]);
    assert_eq!(u.statuses(again)[0].state, ServerState::Up);
}

#[test]
fn at_most_half_of_the_servers_are_ejected_and_never_the_last_one_in_service() {
    let now = now_ms();
    // One server: never ejected, however it fails.
    let one = upstream(1, None, passive());
    fail(&one, 0, 50, now);
    assert_eq!(in_service(&one, now), [0]);
    assert_eq!(one.statuses(now)[0].ejections, 0);

    // Two that both fail: one is ejected, the other keeps its requests.
    let two = upstream(2, None, passive());
    fail(&two, 0, 5, now);
    fail(&two, 1, 50, now);
    assert_eq!(in_service(&two, now), [1]);

    // Five: two at most.
    let five = upstream(5, None, passive());
    for i in 0..5 {
        fail(&five, i, 5, now);
    }
    assert_eq!(in_service(&five, now), [2, 3, 4]);

    // Two, one of them down by its checks: the other is the last in service, never ejected.
    let checked = upstream(2, Some(HealthCheck::default()), passive());
    checked.checked(checked.server(0), Err(ProbeError::Status(503)), now);
    assert_eq!(in_service(&checked, now), [1]);
    fail(&checked, 1, 50, now);
    assert_eq!(in_service(&checked, now), [1]);
}

#[test]
fn passive_ejection_can_be_off() {
    let off = PassiveHealth {
        failures: 0,
        ..passive()
    };
    let u = upstream(2, None, off);
    let now = now_ms();
    fail(&u, 0, 100, now);
    assert_eq!(in_service(&u, now), [0, 1]);
}

#[test]
fn drained_servers_never_count() {
    let servers: Vec<(Arc<str>, u32)> = vec![(Arc::from("h:1"), 0), (Arc::from("h:2"), 1)];
    let u = UpstreamHealth::new(&Arc::from("web"), &servers, None, passive(), None);
    let now = now_ms();
    // h:2 is the only one used: it is never ejected.
    fail(&u, 1, 50, now);
    assert!(u.any_in_service(now));
    let states: Vec<ServerState> = u.statuses(now).iter().map(|s| s.state).collect();
    assert_eq!(states, [ServerState::Drained, ServerState::Up]);
}

#[test]
fn active_checks_take_a_server_out_and_bring_it_back() {
    let check = HealthCheck {
        healthy: 2,
        unhealthy: 3,
        ..HealthCheck::default()
    };
    let u = upstream(2, Some(check), passive());
    let now = now_ms();
    let pass = |u: &UpstreamHealth, i: usize| u.checked(u.server(i), Ok(()), now);
    let fail_check =
        |u: &UpstreamHealth, i: usize| u.checked(u.server(i), Err(ProbeError::Status(503)), now);

    // First results: h:1 passes, h:2 fails and is out at once.
    pass(&u, 0);
    fail_check(&u, 1);
    assert_eq!(in_service(&u, now), [0]);
    assert_eq!(
        u.statuses(now)[1].reason.as_deref(),
        Some("its first health check failed: GET /healthz: answered 503")
    );
    assert!(u.any_in_service(now));

    // h:1 fails three times in a row: the upstream has no server in service.
    fail_check(&u, 0);
    fail_check(&u, 0);
    assert_eq!(in_service(&u, now), [0]);
    fail_check(&u, 0);
    assert!(!u.any_in_service(now));
    assert!(u.none_in_service.load(Ordering::Relaxed));
    assert_eq!(
        u.statuses(now)[0].reason.as_deref(),
        Some("3 health checks failed in a row: GET /healthz: answered 503")
    );

    // h:2 passes twice: back, and the upstream with it.
    pass(&u, 1);
    assert!(!u.any_in_service(now));
    pass(&u, 1);
    assert_eq!(in_service(&u, now), [1]);
    assert!(!u.none_in_service.load(Ordering::Relaxed));
    assert_eq!(u.statuses(now)[1].state, ServerState::Up);
    assert_eq!(u.statuses(now)[1].reason, None);
}

#[test]
fn a_server_is_reported_down_once_and_back_up_once() {
    let u = upstream(2, Some(HealthCheck::default()), passive());
    let s = u.server(0);
    let now = now_ms();
    // A connect fails: down (as requests see it), though still in service.
    u.connect_failed(s, &"connection refused");
    assert!(s.reported_down.load(Ordering::Relaxed));
    assert!(s.in_service(now));
    // Its checks fail too: still the same "down".
    u.checked(s, Err(ProbeError::Status(500)), now);
    assert!(s.reported_down.load(Ordering::Relaxed));
    assert!(!s.in_service(now));
    // A request that got through (stable's last resort) does not bring it back while its
    // checks fail.
    u.succeeded_with(s, Duration::ZERO, || now);
    assert!(s.reported_down.load(Ordering::Relaxed));
    // Its checks pass again: back up.
    u.checked(s, Ok(()), now);
    u.checked(s, Ok(()), now);
    assert!(!s.reported_down.load(Ordering::Relaxed));
    assert!(s.in_service(now));

    // Without active checks, a connect that works again brings it back; one that had started
    // before the failure said it is down (in flight as the server died) does not.
    let plain = upstream(1, None, passive());
    let before_failure = now_ms().saturating_sub(1);
    plain.connect_failed(plain.server(0), &"connection refused");
    assert!(plain.server(0).reported_down.load(Ordering::Relaxed));
    plain.connected(plain.server(0), before_failure);
    assert!(plain.server(0).reported_down.load(Ordering::Relaxed));
    let down_at = plain.server(0).down_at_ms.load(Ordering::Relaxed);
    plain.connected(plain.server(0), down_at + 1);
    assert!(!plain.server(0).reported_down.load(Ordering::Relaxed));
}

#[test]
fn a_rebuilt_upstream_keeps_the_state_of_the_servers_it_keeps() {
    let before = upstream(2, Some(HealthCheck::default()), passive());
    let now = now_ms();
    before.checked(before.server(1), Err(ProbeError::Status(503)), now);
    let servers: Vec<(Arc<str>, u32)> = vec![
        (Arc::from("h:2"), 1),
        (Arc::from("h:3"), 1),
        (Arc::from("h:1"), 1),
    ];
    let after = UpstreamHealth::new(
        &Arc::from("web"),
        &servers,
        Some(HealthCheck::default()),
        passive(),
        Some(&before),
    );
    assert_eq!(in_service(&after, now), [1, 2], "h:2 is still down");
    // Without checks any more, nothing holds it down; and the running upstream is untouched.
    let unchecked = UpstreamHealth::new(&Arc::from("web"), &servers, None, passive(), Some(&after));
    assert_eq!(in_service(&unchecked, now), [0, 1, 2]);
    assert_eq!(in_service(&after, now), [1, 2]);
}

#[test]
fn settings_that_cannot_work_are_refused_naming_the_field() {
    let check = |c: HealthCheck| c.check().map_err(|e| (e.field(), e.to_string()));
    assert_eq!(check(HealthCheck::default()), Ok(()));
    assert_eq!(
        check(HealthCheck {
            interval: Duration::from_millis(500),
            ..HealthCheck::default()
        }),
        Err((
            "health.timeout".into(),
            "1s is longer than the interval (500ms): a check must end before the next one starts"
                .into()
        ))
    );
    assert_eq!(
        check(HealthCheck {
            statuses: vec![200, 600],
            ..HealthCheck::default()
        }),
        Err((
            "health.statuses[1]".into(),
            "`600` is not an HTTP status (100 to 599)".into()
        ))
    );
    assert_eq!(
        check(HealthCheck {
            path: "/a b".into(),
            ..HealthCheck::default()
        }),
        Err((
            "health.path".into(),
            "`/a b` is not a path: write it as requested, starting with `/`".into()
        ))
    );
    let passive = |p: PassiveHealth| p.check().map_err(|e| (e.field(), e.to_string()));
    assert_eq!(
        passive(PassiveHealth {
            ejection: Duration::ZERO,
            ..PassiveHealth::default()
        }),
        Err(("passive.ejection".into(), "must be longer than zero".into()))
    );
    assert_eq!(
        passive(PassiveHealth {
            failures: 0,
            ejection: Duration::ZERO,
            ..PassiveHealth::default()
        }),
        Ok(()),
        "off: the durations are not used"
    );
}

#[test]
fn an_answer_to_a_request_sent_before_the_server_went_down_does_not_bring_it_back_up() {
    let u = upstream(2, None, passive());
    let s = u.server(0);
    u.connect_failed(s, &"connection refused");
    let down_at = s.down_at_ms.load(Ordering::Relaxed);
    assert!(s.reported_down.load(Ordering::Relaxed));
    // A request that went out 5 s ago, on a connection opened before the failure, is answered
    // now: the server is not back up on its word.
    u.succeeded_with(s, Duration::from_secs(5), || down_at + 100);
    assert!(s.reported_down.load(Ordering::Relaxed));
    // One sent after the failure is.
    u.succeeded_with(s, Duration::from_millis(50), || down_at + 100);
    assert!(!s.reported_down.load(Ordering::Relaxed));
}
