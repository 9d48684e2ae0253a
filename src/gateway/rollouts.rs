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
//!
//! The verdicts this instance records are also counted per service and outcome
//! ([`VerdictTally`]) for the metrics, which read the count at scrape time.

use super::Gateway;
use crate::policy::edit::EditError;
use crate::policy::model::ServiceDoc;
use crate::policy::PolicyDoc;
use crate::rollout::machine;
use crate::rollout::record::{
    rollout_key, InstanceCounters, VerdictRecord, VersionFigures, Window, WindowKey, WorkingRecord,
    COUNTERS_PREFIX, DRIVER_LEASE,
};
use crate::rollout::{
    judge, judge_against_earlier, Figures, Outcome, RolloutDoc, RolloutState, RolloutStatus,
};
use crate::store::ErrorChain;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
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

/// A random instance id (16 hex digits), new for every process: the gateway makes one at start
/// ([`Gateway::instance_id`]), and the driver, the counters and the heartbeat all use it.
pub(super) fn instance_id() -> String {
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
    /// The verdicts recorded here, counted for the metrics.
    tally: Arc<VerdictTally>,
}

/// The outcomes of a verdict, in the order [`VerdictTally`] keeps their counts.
const OUTCOMES: [Outcome; 4] = [
    Outcome::Pass,
    Outcome::Fail,
    Outcome::Abort,
    Outcome::NotEnoughData,
];

/// How many verdicts this instance's driver recorded since the process started, per service
/// and outcome: what `graygate_rollout_verdicts_total` exports. Only the driving instance
/// records verdicts, so the counts of every instance add up to the rollouts' verdicts.
///
/// The driver counts at most one verdict per rollout and tick, and the metrics read at scrape
/// time: a lock costs nothing here, and nothing on the request path ever takes it.
#[derive(Debug, Default)]
pub struct VerdictTally {
    /// service -> counts in the order of [`OUTCOMES`].
    counts: Mutex<BTreeMap<String, [u64; 4]>>,
}

impl VerdictTally {
    /// Counts one recorded verdict of `service`.
    fn count(&self, service: &str, outcome: Outcome) {
        let index = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(service) = counts.get_mut(service) {
            service[index] += 1;
        } else {
            let mut new = [0; 4];
            new[index] = 1;
            counts.insert(service.to_string(), new);
        }
    }

    /// The verdicts of `service` counted so far, for every outcome (zeros included).
    pub fn of(&self, service: &str) -> [(Outcome, u64); 4] {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let of = counts.get(service).copied().unwrap_or_default();
        [0, 1, 2, 3].map(|i| (OUTCOMES[i], of[i]))
    }
}

/// The verdict [`decide`] recorded, if it recorded one: `before` is the length and the newest
/// verdict of the record before it ran. It records at most one, at the end; when the record was
/// full, the oldest went out and the length stayed, so the newest tells.
fn recorded<'a>(
    before: &(usize, Option<VerdictRecord>),
    after: &'a [VerdictRecord],
) -> Option<&'a VerdictRecord> {
    let newest = after.last()?;
    let fresh = after.len() > before.0 || before.1.as_ref() != Some(newest);
    fresh.then_some(newest)
}

impl Gateway {
    /// Starts the rollout driver of this instance; it runs until the task is dropped. The id
    /// names this instance in the store's counters and lease.
    pub fn spawn_rollouts(self: &Arc<Self>, config: DriverConfig) -> RolloutsHandle {
        self.spawn_rollouts_counting(config, Arc::new(VerdictTally::default()))
    }

    /// [`Gateway::spawn_rollouts`] counting its verdicts in `tally`: a driver started again (an
    /// upgrade that failed) goes on with the counts the metrics already read.
    pub fn spawn_rollouts_counting(
        self: &Arc<Self>,
        config: DriverConfig,
        tally: Arc<VerdictTally>,
    ) -> RolloutsHandle {
        let id = self.instance_id().to_string();
        let driver = Driver {
            gateway: Arc::clone(self),
            id: id.clone(),
            config,
            holding: false,
            records: HashMap::new(),
            last_error: None,
            tally: Arc::clone(&tally),
        };
        let task = tokio::spawn(driver.run());
        RolloutsHandle {
            task,
            id,
            gateway: Arc::clone(self),
            tally,
        }
    }
}

/// The running driver: stopped (and its lease given up) by [`RolloutsHandle::stop`].
pub struct RolloutsHandle {
    task: tokio::task::JoinHandle<()>,
    id: String,
    gateway: Arc<Gateway>,
    tally: Arc<VerdictTally>,
}

impl RolloutsHandle {
    /// This instance's id in the store's counters and lease.
    pub fn instance(&self) -> &str {
        &self.id
    }

    /// The verdicts this instance's driver recorded, for the metrics.
    pub fn verdicts(&self) -> Arc<VerdictTally> {
        Arc::clone(&self.tally)
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

        let before = (record.verdicts.len(), record.verdicts.last().cloned());
        let action = decide(rollout, status, &s.stable, record, now);
        if let Some(verdict) = recorded(&before, &record.verdicts) {
            self.tally.count(&s.name, verdict.outcome);
        }
        record.updated_ms = now;
        let json = serde_json::to_string(&*record).expect("a working record always serializes");
        store.put_record(&rollout_key(&s.name), &json, None).await?;
        if let Some(action) = action {
            self.act(s, Some(status), action, now).await;
        }
        Ok(())
    }

    /// Makes the change an action needs, if the rollout is still where the driver saw it. The
    /// history record's summary is the transition's own words (`step 2/4 (25%) (held 5m, 2
    /// passing windows)`), worked out first on a copy of the running policy.
    async fn act(&self, s: &ServiceDoc, seen: Option<&RolloutStatus>, action: Action, now: u64) {
        let service = s.name.clone();
        let seen = seen.cloned();
        let mut preview = self.gateway.policy().doc().clone();
        let summary = match transition(&mut preview, &service, seen.as_ref(), &action, now) {
            Ok(Some(words)) => summary(&service, &action, &words),
            // Moved meanwhile (the running policy is newer than what the driver saw): the next
            // tick looks again.
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(service = %s.name, error = %e, "rollout: the change was not made; retrying at the next tick");
                return;
            }
        };
        let result = self
            .gateway
            .change(None, ACTOR, &summary, |doc| {
                transition(doc, &service, seen.as_ref(), &action, now)?;
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

/// Makes `action` on `service`'s rollout in `doc`, if its status is still `seen`: the words of the
/// transition. `None`: an operator (or another driver) moved it meanwhile, and theirs stands.
fn transition(
    doc: &mut PolicyDoc,
    service: &str,
    seen: Option<&RolloutStatus>,
    action: &Action,
    now: u64,
) -> Result<Option<String>, EditError> {
    let Some(current) = doc.services.iter_mut().find(|x| x.name == service) else {
        return Ok(None);
    };
    if current.rollout.as_ref().map(|r| r.status.as_ref()) != Some(seen) {
        return Ok(None);
    }
    let words = match action {
        Action::Begin => machine::begin(current, now),
        Action::State(state, why) => machine::set_state(doc, service, *state, why.clone(), now)?,
        Action::Pause(why) => machine::pause(doc, service, why.clone(), now)?,
        Action::Advance(why) => machine::advance(doc, service, why.clone(), now)?,
        Action::Abort(why) => machine::abort(doc, service, why.clone(), now)?,
        Action::GuardPassed(why) => machine::guard_passed(doc, service, why.clone(), now)?,
    };
    Ok(Some(words))
}

/// The history summary of a driver's transition: `rollout of web: ` and the transition's words
/// (the start's words name the rollout already).
fn summary(service: &str, action: &Action, words: &str) -> String {
    match action {
        Action::Begin => words.to_string(),
        _ => format!("rollout of {service}: {words}"),
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
    let verdict = if everyone {
        judge_against_earlier(&rollout.analysis, &canary, &baseline)
    } else {
        judge(&rollout.analysis, &canary, &baseline)
    };
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
                // During the guard the promote is done: there is no step to pause.
                if waiting_for && state != RolloutState::Paused && !guarding {
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
        // At its end the guard passes unless failures reached the limit (then it has aborted):
        // a window that failed once, followed by silence, must not keep it open forever.
        if now >= until {
            let mut why = windows(record.passes, "passing");
            if record.failures > 0 {
                why.push_str(&format!(
                    ", the last {} below the failure limit",
                    windows(record.failures, "failing")
                ));
            }
            return Some(Action::GuardPassed(why));
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
                    "held {}, {}",
                    machine::words(held),
                    windows(record.passes, "passing")
                )));
            }
        }
    }
    None
}

/// `1 passing window`, `3 failing windows`.
fn windows(n: u32, kind: &str) -> String {
    if n == 1 {
        format!("1 {kind} window")
    } else {
        format!("{n} {kind} windows")
    }
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
            Some(Action::GuardPassed(why)) => assert_eq!(why, "1 passing window"),
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

    /// After the promote there is nobody to pause for: a guard left without traffic (here after
    /// a failing window, so that it cannot end yet) records its short window once and asks for
    /// nothing, however long it waits. It once asked for a pause (which a promoted rollout
    /// refuses) and recorded a verdict at every tick after `max_wait`.
    #[test]
    fn a_guard_without_traffic_never_pauses_and_records_once() {
        let mut st = status(RolloutState::Promoted);
        st.guard_until_ms = Some(5 * INTERVAL_MS);
        let mut r = record(Figures::default(), Figures::default());
        r.last_stable = Some(fig(2000, 2, 2));
        r.failures = 1;
        // A guard longer than max_wait: silence never asks for a pause.
        st.guard_until_ms = Some(40 * INTERVAL_MS);
        for tick in 1..80 {
            let now = tick * INTERVAL_MS / 2;
            assert_eq!(decide(&plan(), &st, "v2", &mut r, now), None, "at {now} ms");
        }
        assert_eq!(r.verdicts.len(), 1, "{:?}", r.verdicts);
        assert_eq!(r.verdicts[0].outcome, Outcome::NotEnoughData);
        // One failing window then silence does not hold the guard open past its end.
        match decide(&plan(), &st, "v2", &mut r, 40 * INTERVAL_MS) {
            Some(Action::GuardPassed(why)) => assert_eq!(
                why,
                "0 passing windows, the last 1 failing window below the failure limit"
            ),
            other => panic!("{other:?}"),
        }
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
        // Latency against an earlier window is shown, not judged: that window had other load.
        let mut slow = record(fig(2000, 0, 80), Figures::default());
        slow.last_stable = Some(fig(2000, 1, 2));
        decide(&p, &st, "v1", &mut slow, INTERVAL_MS);
        assert_eq!(
            slow.verdicts[0].outcome,
            Outcome::Pass,
            "{}",
            slow.verdicts[0].text
        );
        assert!(
            slow.verdicts[0]
                .text
                .ends_with("not judged (stable's figures are from an earlier window)"),
            "{}",
            slow.verdicts[0].text
        );
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

    /// `web` (stable v1, v2 in the split) with the default plan of v2, started at 0.
    fn started_doc() -> PolicyDoc {
        let mut doc: PolicyDoc = toml::from_str(
            "[[services]]\nname = \"web\"\nstable = \"v1\"\nversions = { v1 = \"a\", v2 = \"b\" }\n",
        )
        .expect("a valid document");
        machine::start(&mut doc, "web", plan(), 0).expect("a rollout starts");
        doc
    }

    fn status_of(doc: &PolicyDoc) -> RolloutStatus {
        doc.services[0]
            .rollout
            .as_ref()
            .and_then(|r| r.status.clone())
            .expect("a started rollout")
    }

    #[test]
    fn a_transitions_history_summary_is_its_own_words() {
        let mut doc = started_doc();
        let moves = [
            (
                Action::Advance("held 5m, 2 passing windows".into()),
                "rollout of web: step 2/4 (25%) (held 5m, 2 passing windows)",
            ),
            (
                Action::State(RolloutState::Waiting, "waiting for data: few".into()),
                "rollout of web: waiting for data: few",
            ),
            (
                Action::Abort("canary 5xx 5%: FAIL".into()),
                "rollout of web: aborted: canary 5xx 5%: FAIL",
            ),
        ];
        for (action, want) in moves {
            let seen = status_of(&doc);
            let words = transition(&mut doc, "web", Some(&seen), &action, 1_000)
                .expect("the transition is made")
                .expect("the rollout was where the driver saw it");
            assert_eq!(summary("web", &action, &words), want);
        }
        // Moved meanwhile: nothing is done, and nothing is said.
        let mut doc = started_doc();
        let stale = status_of(&doc);
        machine::pause(&mut doc, "web", "paused by alice".into(), 5).expect("it pauses");
        let before = doc.clone();
        let action = Action::Advance("held 5m".into());
        assert_eq!(
            transition(&mut doc, "web", Some(&stale), &action, 10),
            Ok(None)
        );
        assert_eq!(doc, before);
        // The last step's advance is the promote, and says so.
        let mut doc = started_doc();
        for _ in 0..3 {
            let seen = status_of(&doc);
            transition(&mut doc, "web", Some(&seen), &action, 10).expect("advances");
        }
        let seen = status_of(&doc);
        let words = transition(&mut doc, "web", Some(&seen), &action, 10)
            .expect("promotes")
            .expect("was there");
        assert_eq!(
            summary("web", &action, &words),
            "rollout of web: promoted v2: end of plan (held 5m); guard for 5m"
        );
    }

    /// What the driver does around [`decide`]: counts the verdict it recorded, if any.
    fn decide_counted(tally: &VerdictTally, st: &RolloutStatus, r: &mut WorkingRecord, now: u64) {
        let before = (r.verdicts.len(), r.verdicts.last().cloned());
        decide(&plan(), st, "v1", r, now);
        if let Some(verdict) = recorded(&before, &r.verdicts) {
            tally.count("web", verdict.outcome);
        }
    }

    #[test]
    fn each_recorded_verdict_is_counted_once_even_with_a_full_record() {
        let tally = VerdictTally::default();
        let st = status(RolloutState::Progressing);
        let mut r = record(fig(1000, 100, 2), fig(4000, 4, 2));
        // A record already holding as many verdicts as it keeps: its length stays.
        for at_ms in 0..crate::rollout::record::VERDICTS_KEPT as u64 {
            r.record(VerdictRecord {
                at_ms,
                step: 0,
                weight: 5.0,
                outcome: Outcome::Pass,
                text: String::new(),
                canary_requests: 0,
                stable_requests: 0,
                action: None,
            });
        }
        decide_counted(&tally, &st, &mut r, INTERVAL_MS);
        // The window just started again: no verdict, nothing counted.
        decide_counted(&tally, &st, &mut r, INTERVAL_MS + 1_000);
        // Too little data, recorded once however often the driver looks.
        decide_counted(&tally, &st, &mut r, 2 * INTERVAL_MS);
        decide_counted(&tally, &st, &mut r, 2 * INTERVAL_MS + 1_000);
        // The hard guard.
        r.window.figures.insert("v2".into(), fig(100, 60, 2));
        decide_counted(&tally, &st, &mut r, 2 * INTERVAL_MS + 2_000);
        assert_eq!(
            tally.of("web"),
            [
                (Outcome::Pass, 0),
                (Outcome::Fail, 1),
                (Outcome::Abort, 1),
                (Outcome::NotEnoughData, 1)
            ]
        );
        assert!(tally.of("api").iter().all(|(_, n)| *n == 0));
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
