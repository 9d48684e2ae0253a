//! The rollout driver: the task that carries every rollout of the policy, on one instance at a
//! time.
//!
//! Every second, each instance publishes its counters of the services with a rollout (the store
//! record `counters/<instance>`). The instance that holds the store lease `rollout-driver` then
//! sums every instance's counters into each rollout's current window, judges the canary against
//! stable ([`crate::rollout::judge`]), and moves the rollout through
//! [`crate::rollout::machine`] with [`Gateway::change`]: a step, waiting for data, a pause, the
//! promote, an abort. Its working memory (the window, the failures in a row, the verdicts) is
//! the store record `rollout/<service>`, so that another instance goes on where it was when the
//! driver dies (the lease expires) and any instance can show it.
//!
//! A change is made only if the rollout is still where the driver saw it: an operator's pause or
//! abort in between wins.

use super::Gateway;
use crate::policy::model::ServiceDoc;
use crate::rollout::machine;
use crate::rollout::record::{
    rollout_key, InstanceCounters, VerdictRecord, VersionFigures, Window, WindowKey, WorkingRecord,
    COUNTERS_PREFIX, DRIVER_LEASE,
};
use crate::rollout::{judge, Figures, Outcome, RolloutDoc, RolloutState, RolloutStatus};
use crate::store::ErrorChain;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How the driver runs.
#[derive(Debug, Clone, Copy)]
pub struct DriverConfig {
    /// How often counters are published and rollouts looked at.
    pub tick: Duration,
    /// How long the driver's lease lasts without renewal: after the driver dies, another
    /// instance takes over within this time.
    pub lease: Duration,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            tick: Duration::from_secs(1),
            lease: Duration::from_secs(10),
        }
    }
}

/// The actor rollout changes are recorded under in the history.
pub const ACTOR: &str = "rollout";

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A random instance id (16 hex digits), new for every process.
fn instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// What the driver decided for one rollout at one tick.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    Begin,
    State(RolloutState, String),
    Pause(String),
    Advance(String),
    Abort(String),
    GuardPassed(String),
}

/// The driver of one instance.
struct Driver {
    gateway: Arc<Gateway>,
    id: String,
    config: DriverConfig,
    /// Whether this instance held the lease at the last tick.
    holding: bool,
    /// The working records of the rollouts this instance drives.
    records: HashMap<String, WorkingRecord>,
    /// The last store error logged, so that a store that stays down is logged once.
    last_error: Option<String>,
}

impl Gateway {
    /// Starts the rollout driver of this instance; it runs until the task is dropped. The id
    /// names this instance in the store's counters and lease.
    pub fn spawn_rollouts(self: &Arc<Self>, config: DriverConfig) -> RolloutsHandle {
        let id = instance_id();
        let driver = Driver {
            gateway: Arc::clone(self),
            id: id.clone(),
            config,
            holding: false,
            records: HashMap::new(),
            last_error: None,
        };
        let task = tokio::spawn(driver.run());
        RolloutsHandle {
            task,
            id,
            gateway: Arc::clone(self),
        }
    }
}

/// The running driver: stopped (and its lease given up) by [`RolloutsHandle::stop`].
pub struct RolloutsHandle {
    task: tokio::task::JoinHandle<()>,
    id: String,
    gateway: Arc<Gateway>,
}

impl RolloutsHandle {
    /// This instance's id in the store's counters and lease.
    pub fn instance(&self) -> &str {
        &self.id
    }

    /// Stops the driver and gives its lease up, so that another instance takes over at once.
    pub async fn stop(self) {
        self.task.abort();
        let store = self.gateway.store();
        let _ = store.release_lease(DRIVER_LEASE, &self.id).await;
        let _ = store
            .delete_record(&format!("{COUNTERS_PREFIX}{}", self.id))
            .await;
    }
}

impl Driver {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.tick().await {
                let text = ErrorChain(&e).to_string();
                if self.last_error.as_ref() != Some(&text) {
                    tracing::warn!(error = %text, "rollout driver: store unavailable; retrying every tick");
                    self.last_error = Some(text);
                }
            } else {
                self.last_error = None;
            }
        }
    }

    /// One look at every rollout.
    async fn tick(&mut self) -> Result<(), crate::store::StoreError> {
        let policy = self.gateway.policy();
        let services: Vec<&ServiceDoc> = policy
            .doc()
            .services
            .iter()
            .filter(|s| s.rollout.as_ref().is_some_and(RolloutDoc::is_active))
            .collect();
        let store = self.gateway.store().clone();
        if services.is_empty() {
            if self.holding {
                self.holding = false;
                store.release_lease(DRIVER_LEASE, &self.id).await?;
            }
            self.records.clear();
            return Ok(());
        }
        // Publish this instance's counters of the services with a rollout.
        let mut all = self.gateway.traffic.figures();
        all.retain(|service, _| services.iter().any(|s| &s.name == service));
        let mine = InstanceCounters {
            at_ms: now_ms(),
            services: all,
        };
        let json = serde_json::to_string(&mine).expect("counters always serialize");
        store
            .put_record(
                &format!("{COUNTERS_PREFIX}{}", self.id),
                &json,
                Some(self.config.lease),
            )
            .await?;

        let holding = store
            .acquire_lease(DRIVER_LEASE, &self.id, self.config.lease)
            .await?;
        if holding != self.holding {
            if holding {
                tracing::info!(instance = %self.id, "rollout driver: this instance drives the rollouts");
            }
            self.holding = holding;
            self.records.clear();
        }
        if !holding {
            return Ok(());
        }
        let mut counters: Vec<(String, InstanceCounters)> = Vec::new();
        for (key, value) in store.records(COUNTERS_PREFIX).await? {
            match serde_json::from_str::<InstanceCounters>(&value) {
                Ok(c) => counters.push((key[COUNTERS_PREFIX.len()..].to_string(), c)),
                Err(e) => tracing::debug!(%key, error = %e, "skipping counters that do not parse"),
            }
        }
        for s in services {
            let of_service: Vec<(String, VersionFigures)> = counters
                .iter()
                .map(|(id, c)| {
                    (
                        id.clone(),
                        c.services.get(&s.name).cloned().unwrap_or_default(),
                    )
                })
                .collect();
            self.drive(s, &of_service).await?;
        }
        Ok(())
    }

    /// One look at one rollout: update its window, judge it, act, write the working record.
    async fn drive(
        &mut self,
        s: &ServiceDoc,
        instances: &[(String, VersionFigures)],
    ) -> Result<(), crate::store::StoreError> {
        let Some(rollout) = &s.rollout else {
            return Ok(());
        };
        let now = now_ms();
        let Some(status) = &rollout.status else {
            self.act(s, None, Action::Begin, now).await;
            return Ok(());
        };
        let key = WindowKey {
            step: status.step,
            step_started_ms: status.step_started_ms,
            promoted: status.state == RolloutState::Promoted,
        };
        let store = self.gateway.store().clone();
        if !self.records.contains_key(&s.name) {
            // Taking over: go on from the record another driver left, if it is still current.
            let stored = store
                .get_record(&rollout_key(&s.name))
                .await?
                .and_then(|json| serde_json::from_str::<WorkingRecord>(&json).ok())
                .unwrap_or_default();
            self.records.insert(s.name.clone(), stored);
        }
        let record = self.records.entry(s.name.clone()).or_default();
        if record.started_ms != status.started_ms {
            // A new run (a start, a retry): nothing of the last one carries over.
            *record = WorkingRecord {
                started_ms: status.started_ms,
                ..WorkingRecord::default()
            };
        }
        record.driver = self.id.clone();
        if record.window.key != key || record.window.started_ms == 0 {
            if record.window.key.step != key.step || key.promoted != record.window.key.promoted {
                record.passes = 0;
                record.failures = 0;
            }
            record.window = Window::start(key, now, instances);
        }
        record.window.update(instances);

        let action = decide(rollout, status, &s.stable, record, now);
        record.updated_ms = now;
        let json = serde_json::to_string(&*record).expect("a working record always serializes");
        store.put_record(&rollout_key(&s.name), &json, None).await?;
        if let Some(action) = action {
            self.act(s, Some(status), action, now).await;
        }
        Ok(())
    }

    /// Makes the change an action needs, if the rollout is still where the driver saw it.
    async fn act(&self, s: &ServiceDoc, seen: Option<&RolloutStatus>, action: Action, now: u64) {
        let service = s.name.clone();
        let seen = seen.cloned();
        let summary = match &action {
            Action::Begin => format!("rollout of {service}: started"),
            Action::State(_, why)
            | Action::Pause(why)
            | Action::Advance(why)
            | Action::Abort(why)
            | Action::GuardPassed(why) => format!("rollout of {service}: {why}"),
        };
        let result = self
            .gateway
            .change(None, ACTOR, &summary, |doc| {
                let Some(current) = doc.services.iter_mut().find(|x| x.name == service) else {
                    return Ok(());
                };
                let still = current.rollout.as_ref().map(|r| r.status.clone());
                if still != Some(seen.clone()) {
                    // An operator (or another driver) moved it meanwhile: theirs stands.
                    return Ok(());
                }
                match &action {
                    Action::Begin => {
                        machine::begin(current, now);
                    }
                    Action::State(state, why) => {
                        machine::set_state(doc, &service, *state, why.clone(), now)?;
                    }
                    Action::Pause(why) => {
                        machine::pause(doc, &service, why.clone(), now)?;
                    }
                    Action::Advance(why) => {
                        machine::advance(doc, &service, why.clone(), now)?;
                    }
                    Action::Abort(why) => {
                        machine::abort(doc, &service, why.clone(), now)?;
                    }
                    Action::GuardPassed(why) => {
                        machine::guard_passed(doc, &service, why.clone(), now)?;
                    }
                }
                Ok(())
            })
            .await;
        match result {
            Ok(_) => tracing::info!(service = %s.name, "{summary}"),
            Err(e) => {
                tracing::warn!(service = %s.name, error = %e, "rollout: the change was not made; retrying at the next tick")
            }
        }
    }
}

/// What a rollout needs now, from its window: the verdict is recorded in `record`, and the
/// action (if any) is returned. Pure, so that the whole decision table is tested without a store.
fn decide(
    rollout: &RolloutDoc,
    status: &RolloutStatus,
    stable: &str,
    record: &mut WorkingRecord,
    now: u64,
) -> Option<Action> {
    let state = status.state;
    let guarding = state == RolloutState::Promoted && status.guard_until_ms.is_some();
    if !matches!(
        state,
        RolloutState::Progressing | RolloutState::Waiting | RolloutState::Paused
    ) && !guarding
    {
        return None;
    }
    let canary = record.window.of(&rollout.version);
    let weight = rollout.steps.get(status.step).map_or(0.0, |s| s.weight);
    // With everyone on the canary (a 100% step, the guard after the promote) stable answers
    // nobody: the canary is compared with stable's figures of the last passing window.
    let everyone = guarding || weight >= 100.0;
    let baseline: Figures = if everyone {
        record.last_stable.clone().unwrap_or_default()
    } else {
        record.window.of(stable)
    };
    // A plan that starts at 100% never saw stable: only the hard guard judges it, and its
    // steps go by their hold.
    let no_baseline = everyone && record.last_stable.is_none();
    let verdict = judge(&rollout.analysis, &canary, &baseline);
    let age = Duration::from_millis(now.saturating_sub(record.window.started_ms));
    let entry = |action: Option<&str>| VerdictRecord {
        at_ms: now,
        step: status.step,
        weight: if guarding { 100.0 } else { weight },
        outcome: verdict.outcome,
        text: verdict.text.clone(),
        canary_requests: canary.requests,
        stable_requests: baseline.requests,
        action: action.map(str::to_string),
    };
    let reset = |record: &mut WorkingRecord| record.window.restart(now);

    if verdict.outcome == Outcome::Abort {
        let action = (!rollout.dry_run).then(|| Action::Abort(verdict.text.clone()));
        record.record(entry(Some(if rollout.dry_run {
            "dry run: would abort"
        } else {
            "aborted"
        })));
        reset(record);
        return action;
    }
    let mut action = None;
    if age >= rollout.interval && no_baseline {
        reset(record);
    } else if age >= rollout.interval {
        match verdict.outcome {
            Outcome::NotEnoughData => {
                let waiting_for = age >= rollout.max_wait;
                if waiting_for && state != RolloutState::Paused {
                    record.record(entry(Some("paused")));
                    action = Some(Action::Pause(format!(
                        "not enough data after {}: {}",
                        machine::words(rollout.max_wait),
                        verdict.text
                    )));
                } else if !record.window.short_recorded {
                    record.window.short_recorded = true;
                    record.record(entry(None));
                    if state == RolloutState::Progressing {
                        action = Some(Action::State(
                            RolloutState::Waiting,
                            format!("waiting for data: {}", verdict.text),
                        ));
                    }
                }
            }
            Outcome::Pass => {
                record.failures = 0;
                record.passes += 1;
                if !everyone {
                    record.last_stable = Some(baseline.clone());
                }
                record.record(entry(None));
                reset(record);
                if state == RolloutState::Waiting {
                    action = Some(Action::State(
                        RolloutState::Progressing,
                        format!("enough data: {}", verdict.text),
                    ));
                }
            }
            Outcome::Fail => {
                record.failures += 1;
                record.passes = 0;
                let limit_reached = record.failures >= rollout.failure_limit;
                let note = match (limit_reached, rollout.dry_run) {
                    (true, true) => Some("dry run: would abort"),
                    (true, false) => Some("aborted"),
                    _ => None,
                };
                record.record(entry(note));
                reset(record);
                if limit_reached && !rollout.dry_run {
                    return Some(Action::Abort(format!(
                        "{} ({} failing windows in a row)",
                        verdict.text, record.failures
                    )));
                }
            }
            Outcome::Abort => {}
        }
    }
    if action.is_some() {
        return action;
    }
    if guarding {
        let until = status.guard_until_ms.unwrap_or(0);
        if now >= until && record.failures == 0 {
            return Some(Action::GuardPassed(format!(
                "{} passing windows",
                record.passes
            )));
        }
        return None;
    }
    if state == RolloutState::Progressing
        && (record.passes > 0 || no_baseline)
        && record.failures == 0
    {
        if let Some(hold) = rollout.hold_of(status.step) {
            let held = Duration::from_millis(now.saturating_sub(status.step_started_ms));
            if held >= hold {
                return Some(Action::Advance(format!(
                    "held {}, {} passing windows",
                    machine::words(held),
                    record.passes
                )));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL_MS: u64 = 60_000;

    fn fig(requests: u64, errors: u64, latency_ms: u64) -> Figures {
        let mut f = Figures::default();
        for i in 0..requests {
            f.record(i < errors, Duration::from_millis(latency_ms));
        }
        f
    }

    fn plan() -> RolloutDoc {
        RolloutDoc::new("v2")
    }

    fn status(state: RolloutState) -> RolloutStatus {
        RolloutStatus {
            state,
            started_ms: 0,
            step: 0,
            step_started_ms: 0,
            since_ms: 0,
            reason: String::new(),
            weight_before: 0.0,
            guard_until_ms: None,
        }
    }

    /// A working record whose window started at 0 and holds these figures.
    fn record(canary: Figures, stable: Figures) -> WorkingRecord {
        let mut r = WorkingRecord::default();
        r.window.figures.insert("v2".into(), canary);
        r.window.figures.insert("v1".into(), stable);
        r
    }

    #[test]
    fn a_healthy_window_passes_and_the_step_advances_once_held() {
        let st = status(RolloutState::Progressing);
        let mut r = record(fig(200, 0, 2), fig(2000, 1, 2));
        // Too early for a verdict.
        assert_eq!(decide(&plan(), &st, "v1", &mut r, INTERVAL_MS - 1), None);
        assert!(r.verdicts.is_empty());
        // A verdict, but the step holds 5 minutes.
        assert_eq!(decide(&plan(), &st, "v1", &mut r, INTERVAL_MS), None);
        assert_eq!((r.passes, r.verdicts.len()), (1, 1));
        assert_eq!(r.verdicts[0].outcome, Outcome::Pass);
        assert_eq!(
            (r.verdicts[0].canary_requests, r.verdicts[0].stable_requests),
            (200, 2000)
        );
        assert_eq!(r.window.started_ms, INTERVAL_MS, "a new window starts");
        assert!(r.last_stable.is_some());
        // Held long enough, with the next window's figures in.
        r.window.figures.insert("v2".into(), fig(200, 0, 2));
        r.window.figures.insert("v1".into(), fig(2000, 1, 2));
        let at = 5 * 60_000;
        match decide(&plan(), &st, "v1", &mut r, at) {
            Some(Action::Advance(why)) => assert_eq!(why, "held 5m, 2 passing windows"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failing_windows_in_a_row_abort_and_dry_run_only_records() {
        for dry_run in [false, true] {
            let mut p = plan();
            p.dry_run = dry_run;
            let st = status(RolloutState::Progressing);
            let mut r = record(fig(1000, 100, 2), fig(4000, 4, 2));
            assert_eq!(decide(&p, &st, "v1", &mut r, INTERVAL_MS), None);
            assert_eq!((r.failures, r.verdicts[0].outcome), (1, Outcome::Fail));
            assert!(
                r.verdicts[0].text.contains("FAIL"),
                "{}",
                r.verdicts[0].text
            );
            r.window.figures.insert("v2".into(), fig(1000, 100, 2));
            r.window.figures.insert("v1".into(), fig(4000, 4, 2));
            let action = decide(&p, &st, "v1", &mut r, 2 * INTERVAL_MS);
            if dry_run {
                assert_eq!(action, None);
                assert_eq!(
                    r.verdicts[1].action.as_deref(),
                    Some("dry run: would abort")
                );
            } else {
                match action {
                    Some(Action::Abort(why)) => {
                        assert!(why.ends_with("(2 failing windows in a row)"), "{why}")
                    }
                    other => panic!("{other:?}"),
                }
                assert_eq!(r.verdicts[1].action.as_deref(), Some("aborted"));
            }
            // Failing, the step never advances, however long it held.
            r.window.figures.insert("v2".into(), fig(1000, 100, 2));
            r.window.figures.insert("v1".into(), fig(4000, 4, 2));
            let later = decide(&p, &st, "v1", &mut r, 60 * INTERVAL_MS);
            assert!(!matches!(later, Some(Action::Advance(_))), "{later:?}");
        }
    }

    #[test]
    fn too_little_data_waits_then_pauses_after_max_wait() {
        let st = status(RolloutState::Progressing);
        let mut r = record(fig(12, 0, 2), fig(300, 0, 2));
        match decide(&plan(), &st, "v1", &mut r, INTERVAL_MS) {
            Some(Action::State(RolloutState::Waiting, why)) => {
                assert!(why.starts_with("waiting for data: "), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.verdicts.len(), 1, "recorded once");
        let waiting = status(RolloutState::Waiting);
        assert_eq!(
            decide(&plan(), &waiting, "v1", &mut r, 2 * INTERVAL_MS),
            None
        );
        assert_eq!(r.verdicts.len(), 1, "the same window is not recorded again");
        assert_eq!(r.window.started_ms, 0, "the window goes on collecting");
        match decide(&plan(), &waiting, "v1", &mut r, 15 * INTERVAL_MS) {
            Some(Action::Pause(why)) => {
                assert!(why.starts_with("not enough data after 15m: "), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // Enough data again, while waiting: progressing.
        let mut r = record(fig(200, 0, 2), fig(300, 0, 2));
        match decide(&plan(), &waiting, "v1", &mut r, INTERVAL_MS) {
            Some(Action::State(RolloutState::Progressing, why)) => {
                assert!(why.starts_with("enough data: "), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_hard_guard_aborts_at_once() {
        let st = status(RolloutState::Progressing);
        let mut r = record(fig(60, 20, 2), fig(0, 0, 2));
        match decide(&plan(), &st, "v1", &mut r, 1_000) {
            Some(Action::Abort(why)) => assert!(why.contains("20/60"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.verdicts[0].outcome, Outcome::Abort);
    }

    #[test]
    fn the_guard_compares_with_the_old_stable_and_ends() {
        let mut st = status(RolloutState::Promoted);
        st.guard_until_ms = Some(5 * INTERVAL_MS);
        // After the promote, v2 is stable; the old stable's last window is the baseline.
        let mut r = record(fig(2000, 0, 2), Figures::default());
        r.last_stable = Some(fig(2000, 2, 2));
        assert_eq!(decide(&plan(), &st, "v2", &mut r, INTERVAL_MS), None);
        assert_eq!((r.passes, r.verdicts[0].outcome), (1, Outcome::Pass));
        assert_eq!(r.verdicts[0].stable_requests, 2000);
        match decide(&plan(), &st, "v2", &mut r, 5 * INTERVAL_MS) {
            Some(Action::GuardPassed(why)) => assert_eq!(why, "1 passing windows"),
            other => panic!("{other:?}"),
        }
        // A failing promoted version is rolled back (here by the hard guard).
        let mut r = record(fig(2000, 500, 2), Figures::default());
        r.last_stable = Some(fig(2000, 2, 2));
        assert!(matches!(
            decide(&plan(), &st, "v2", &mut r, INTERVAL_MS),
            Some(Action::Abort(_))
        ));
    }

    #[test]
    fn at_100_percent_the_canary_is_compared_with_stables_last_window() {
        let mut p = plan();
        p.steps = vec![crate::rollout::Step::weight(100.0)];
        let st = status(RolloutState::Progressing);
        // Stable answers nobody at 100%: its last passing window is the baseline.
        let mut r = record(fig(2000, 0, 2), Figures::default());
        r.last_stable = Some(fig(2000, 1, 2));
        assert_eq!(decide(&p, &st, "v1", &mut r, INTERVAL_MS), None);
        assert_eq!(r.verdicts[0].outcome, Outcome::Pass);
        assert_eq!(r.verdicts[0].stable_requests, 2000);
        assert_eq!(
            r.last_stable.as_ref().map(|f| f.requests),
            Some(2000),
            "kept"
        );
        let mut failing = record(fig(2000, 300, 2), Figures::default());
        failing.last_stable = Some(fig(2000, 1, 2));
        decide(&p, &st, "v1", &mut failing, INTERVAL_MS);
        assert_eq!(failing.verdicts[0].outcome, Outcome::Fail);
        // A plan that starts at 100% has no baseline: it goes by its hold, the hard guard on.
        let mut r = record(fig(2000, 0, 2), Figures::default());
        assert_eq!(decide(&p, &st, "v1", &mut r, INTERVAL_MS), None);
        assert!(r.verdicts.is_empty());
        assert!(matches!(
            decide(&p, &st, "v1", &mut r, 5 * INTERVAL_MS),
            Some(Action::Advance(_))
        ));
        let mut r = record(fig(100, 60, 2), Figures::default());
        assert!(matches!(
            decide(&p, &st, "v1", &mut r, 1_000),
            Some(Action::Abort(_))
        ));
    }

    #[test]
    fn ended_rollouts_are_left_alone() {
        for st in [
            status(RolloutState::Aborted),
            status(RolloutState::Promoted),
        ] {
            let mut r = record(fig(1000, 900, 2), fig(1000, 0, 2));
            assert_eq!(decide(&plan(), &st, "v1", &mut r, INTERVAL_MS), None);
            assert!(r.verdicts.is_empty());
        }
    }
}
