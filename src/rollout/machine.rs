//! The transitions of a rollout, as pure edits of the policy document.
//!
//! Each function moves one service's rollout from one state to the next and sets what routing
//! must do in that state (the canary's split weight, the stable version, the cohort rules). The
//! admin API (start, pause, resume, promote, abort, retry) and the driver (step, wait, abort on a
//! verdict, end of the guard) both make their changes through these, inside
//! `Gateway::change`, so that the document is the one truth that routing and the admin API read.
//!
//! Each returns the words of the transition: they become the history record's summary and the
//! status's `reason`.

use super::model::{ParkedRule, RolloutDoc, RolloutState, RolloutStatus};
use crate::policy::edit::{EditError, EditErrorKind};
use crate::policy::model::ServiceDoc;
use crate::policy::model::SplitDoc;
use crate::policy::path::FieldPath;
use crate::policy::PolicyDoc;
use std::collections::BTreeMap;
use std::time::Duration;

fn refused(field: Option<FieldPath>, message: String) -> EditError {
    EditError {
        kind: EditErrorKind::Invalid,
        field,
        message,
    }
}

fn service_mut<'a>(doc: &'a mut PolicyDoc, service: &str) -> Result<&'a mut ServiceDoc, EditError> {
    doc.services
        .iter_mut()
        .find(|s| s.name == service)
        .ok_or_else(|| EditError {
            kind: EditErrorKind::NotFound,
            field: None,
            message: format!("no service `{service}`"),
        })
}

/// The service's started rollout, or the refusal that names what is missing. Its status is
/// `Some` (see [`status`]).
fn started<'a>(s: &'a mut ServiceDoc, verb: &str) -> Result<&'a mut RolloutDoc, EditError> {
    let name = s.name.clone();
    let Some(r) = s.rollout.as_mut() else {
        return Err(EditError {
            kind: EditErrorKind::NotFound,
            field: None,
            message: format!("service `{name}` has no rollout to {verb}; start one first"),
        });
    };
    if r.status.is_none() {
        return Err(refused(
            None,
            format!(
                "the rollout of `{name}` {} has not started yet; it starts within a second",
                r.version
            ),
        ));
    }
    Ok(r)
}

/// The status of a rollout [`started`] returned.
fn status(r: &mut RolloutDoc) -> &mut RolloutStatus {
    r.status.get_or_insert_with(unreachable_status)
}

/// Never used: [`started`] checked that the status is there. A placeholder keeps this free of
/// `unwrap` all the same.
fn unreachable_status() -> RolloutStatus {
    RolloutStatus {
        state: RolloutState::Paused,
        started_ms: 0,
        step: 0,
        step_started_ms: 0,
        since_ms: 0,
        reason: String::new(),
        weight_before: 0.0,
        guard_until_ms: None,
    }
}

/// Percent as people read it: `5%`, `12.5%`.
pub fn percent(weight: f64) -> String {
    format!("{}%", (weight * 100.0).round() / 100.0)
}

/// Sets `version`'s weight in the service's split, creating a split (per request, no identity)
/// when there is none. The split's identity and salt stay.
fn set_weight(s: &mut ServiceDoc, version: &str, weight: f64) {
    let split = s.split.get_or_insert_with(|| SplitDoc {
        weights: BTreeMap::new(),
        by: None,
        salt: None,
        sticky_cookie: None,
    });
    split.weights.insert(version.to_string(), weight);
}

/// The version's weight in the split now (0 without one).
fn weight_of(s: &ServiceDoc, version: &str) -> f64 {
    s.split
        .as_ref()
        .and_then(|sp| sp.weights.get(version))
        .copied()
        .unwrap_or(0.0)
}

/// "step 2/4 (25%)"
fn step_words(r: &RolloutDoc, step: usize) -> String {
    format!(
        "step {}/{} ({})",
        step + 1,
        r.steps.len(),
        percent(r.steps.get(step).map_or(0.0, |s| s.weight))
    )
}

/// Starts `plan` on `service`: the first step's weight is set at once. Refused while another
/// rollout of the service is active. A previous ended rollout is replaced.
pub fn start(
    doc: &mut PolicyDoc,
    service: &str,
    mut plan: RolloutDoc,
    now_ms: u64,
) -> Result<String, EditError> {
    let s = service_mut(doc, service)?;
    if let Some(old) = &s.rollout {
        if let (true, Some(status)) = (old.is_active(), &old.status) {
            return Err(refused(
                None,
                format!(
                    "service `{service}` has a rollout of {} that is {} at {}: abort or promote it first",
                    old.version,
                    status.state,
                    step_words(old, status.step)
                ),
            ));
        }
    }
    if !s.versions.contains_key(&plan.version) {
        return Err(refused(
            Some(FieldPath::new("version")),
            format!(
                "service `{service}` has no version `{}` (versions: {})",
                plan.version,
                s.versions.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    if plan.version == s.stable {
        return Err(refused(
            Some(FieldPath::new("version")),
            format!(
                "`{}` is already the stable version of `{service}`",
                plan.version
            ),
        ));
    }
    plan.status = None;
    plan.parked_rules.clear();
    s.rollout = Some(plan);
    Ok(begin(s, now_ms))
}

/// Starts the rollout the service holds without a status (written in the policy TOML, or by
/// [`start`]): status progressing at the first step, whose weight is set. The promote of a
/// previous release is accepted (no rollback target any more).
pub fn begin(s: &mut ServiceDoc, now_ms: u64) -> String {
    let Some(r) = s.rollout.as_ref() else {
        return String::new();
    };
    let version = r.version.clone();
    let weight = r.steps.first().map_or(0.0, |st| st.weight);
    let before = weight_of(s, &version);
    let reason = format!(
        "rollout of {} {version} started: {}",
        s.name,
        step_words(r, 0)
    );
    set_weight(s, &version, weight);
    s.previous_stable = None;
    s.previous_weight = None;
    if let Some(r) = s.rollout.as_mut() {
        r.status = Some(RolloutStatus {
            state: RolloutState::Progressing,
            started_ms: now_ms,
            step: 0,
            step_started_ms: now_ms,
            since_ms: now_ms,
            reason: reason.clone(),
            weight_before: before,
            guard_until_ms: None,
        });
    }
    reason
}

/// Sets the state (progressing or waiting at the same step, paused for a reason) without moving
/// the weight. Returns the reason.
pub fn set_state(
    doc: &mut PolicyDoc,
    service: &str,
    state: RolloutState,
    reason: String,
    now_ms: u64,
) -> Result<String, EditError> {
    let s = service_mut(doc, service)?;
    let st = status(started(s, "change")?);
    if st.state != state {
        st.state = state;
        st.since_ms = now_ms;
        st.reason = reason.clone();
    }
    Ok(reason)
}

/// The version a rollout of `service` is carrying right now (progressing, waiting, paused, or
/// promoted with its guard running), if one is: a hand-made promote, rollback or weight change
/// of that service must go through the rollout, so that the two never disagree.
pub fn in_charge(doc: &PolicyDoc, service: &str) -> Option<String> {
    let s = doc.services.iter().find(|s| s.name == service)?;
    let r = s.rollout.as_ref()?;
    r.status.as_ref()?;
    r.is_active().then(|| r.version.clone())
}

/// Pauses a progressing or waiting rollout: the weight stays, the steps stop.
pub fn pause(
    doc: &mut PolicyDoc,
    service: &str,
    reason: String,
    now_ms: u64,
) -> Result<String, EditError> {
    let s = service_mut(doc, service)?;
    let state = status(started(s, "pause")?).state;
    if !matches!(state, RolloutState::Progressing | RolloutState::Waiting) {
        return Err(refused(
            None,
            format!("the rollout of `{service}` is {state}: only a progressing or waiting rollout pauses"),
        ));
    }
    set_state(doc, service, RolloutState::Paused, reason, now_ms)
}

/// Resumes a paused rollout. At a step that waits for `resume`, the next step begins; otherwise
/// the current step holds again from now, with a fresh window.
pub fn resume(doc: &mut PolicyDoc, service: &str, now_ms: u64) -> Result<String, EditError> {
    let s = service_mut(doc, service)?;
    let r = started(s, "resume")?;
    let (state, step) = {
        let st = status(r);
        (st.state, st.step)
    };
    if state != RolloutState::Paused {
        return Err(refused(
            None,
            format!("the rollout of `{service}` is {state}, not paused"),
        ));
    }
    if r.hold_of(step).is_none() {
        return advance(doc, service, "resumed".into(), now_ms);
    }
    let words = step_words(r, step);
    let st = status(r);
    st.state = RolloutState::Progressing;
    st.since_ms = now_ms;
    st.step_started_ms = now_ms;
    st.reason = format!("resumed at {words}");
    Ok(st.reason.clone())
}

/// Moves to the next step (its weight set now), or promotes after the last one. `why` says what
/// ended the step (`held 5m, 4 passing windows`). A step that waits for `resume` is entered
/// paused.
pub fn advance(
    doc: &mut PolicyDoc,
    service: &str,
    why: String,
    now_ms: u64,
) -> Result<String, EditError> {
    let s = service_mut(doc, service)?;
    let r = started(s, "advance")?;
    let next = status(r).step + 1;
    if next >= r.steps.len() {
        return promote(doc, service, format!("end of plan ({why})"), now_ms);
    }
    let version = r.version.clone();
    let weight = r.steps[next].weight;
    let pause_here = r.hold_of(next).is_none();
    let words = step_words(r, next);
    let st = status(r);
    st.step = next;
    st.step_started_ms = now_ms;
    st.since_ms = now_ms;
    if pause_here {
        st.state = RolloutState::Paused;
        st.reason = format!("{words} ({why}): waiting for resume");
    } else {
        st.state = RolloutState::Progressing;
        st.reason = format!("{words} ({why})");
    }
    let reason = st.reason.clone();
    set_weight(s, &version, weight);
    Ok(reason)
}

/// Promotes the rollout's version: it becomes stable (the old stable is the rollback target),
/// rules and the split's identity and salt stay, and the post-promotion guard starts when the
/// plan has one.
pub fn promote(
    doc: &mut PolicyDoc,
    service: &str,
    why: String,
    now_ms: u64,
) -> Result<String, EditError> {
    let s = service_mut(doc, service)?;
    let r = started(s, "promote")?;
    let version = r.version.clone();
    let guard = r.post_promotion;
    let st = status(r);
    let weight_before = st.weight_before;
    if !matches!(
        st.state,
        RolloutState::Progressing | RolloutState::Waiting | RolloutState::Paused
    ) {
        return Err(refused(
            None,
            format!(
                "the rollout of `{service}` is {}: nothing to promote",
                st.state
            ),
        ));
    }
    st.state = RolloutState::Promoted;
    st.since_ms = now_ms;
    // Saturating: a `post_promotion` of `500000000000y` guards for good rather than overflowing.
    let guard_ms = u64::try_from(guard.as_millis()).unwrap_or(u64::MAX);
    st.guard_until_ms = (!guard.is_zero()).then(|| now_ms.saturating_add(guard_ms));
    st.reason = if guard.is_zero() {
        format!("promoted {version}: {why}")
    } else {
        format!("promoted {version}: {why}; guard for {}", words(guard))
    };
    let reason = st.reason.clone();
    let old = std::mem::replace(&mut s.stable, version.clone());
    s.previous_stable = Some(old);
    if let Some(split) = &mut s.split {
        split.weights.remove(&version);
    }
    // A rollback of this promote gives the version back the weight it had before the rollout,
    // not the 100% of the last step: the split as the operator left it.
    s.previous_weight = Some(weight_before);
    Ok(reason)
}

/// Ends the post-promotion guard: the promote stands.
pub fn guard_passed(
    doc: &mut PolicyDoc,
    service: &str,
    why: String,
    now_ms: u64,
) -> Result<String, EditError> {
    let s = service_mut(doc, service)?;
    let r = started(s, "end the guard of")?;
    let version = r.version.clone();
    let st = status(r);
    if st.state != RolloutState::Promoted || st.guard_until_ms.is_none() {
        return Err(refused(
            None,
            format!("the rollout of `{service}` has no guard running"),
        ));
    }
    st.guard_until_ms = None;
    st.since_ms = now_ms;
    st.reason = format!("promoted {version}: guard passed ({why})");
    Ok(st.reason.clone())
}

/// Sends everyone back to stable: the canary's weight goes to 0 and the rollout's cohort rules are
/// taken out; during the post-promotion guard, the old stable version is stable again.
pub fn abort(
    doc: &mut PolicyDoc,
    service: &str,
    why: String,
    now_ms: u64,
) -> Result<String, EditError> {
    let s = service_mut(doc, service)?;
    let r = started(s, "abort")?;
    let version = r.version.clone();
    let cohort = r.cohort.clone();
    let st = status(r);
    let guarding = st.state == RolloutState::Promoted && st.guard_until_ms.is_some();
    let running = matches!(
        st.state,
        RolloutState::Progressing | RolloutState::Waiting | RolloutState::Paused
    );
    if !running && !guarding {
        return Err(refused(
            None,
            format!(
                "the rollout of `{service}` is {}: nothing to abort",
                st.state
            ),
        ));
    }
    st.state = RolloutState::Aborted;
    st.since_ms = now_ms;
    st.guard_until_ms = None;
    st.reason = if guarding {
        format!("aborted after the promote, rolled back: {why}")
    } else {
        format!("aborted: {why}")
    };
    let reason = st.reason.clone();
    if guarding {
        if let Some(previous) = s.previous_stable.take() {
            s.stable = previous;
        }
        s.previous_weight = None;
    }
    set_weight(s, &version, 0.0);
    let mut parked = Vec::new();
    for (at, rule) in std::mem::take(&mut s.rules).into_iter().enumerate() {
        if cohort.contains(&rule.name) {
            parked.push(ParkedRule { at, rule });
        } else {
            s.rules.push(rule);
        }
    }
    if let Some(r) = s.rollout.as_mut() {
        r.parked_rules.extend(parked);
    }
    Ok(reason)
}

/// Starts an aborted rollout again from its first step, with its cohort rules back at their
/// places among the service's rules.
pub fn retry(doc: &mut PolicyDoc, service: &str, now_ms: u64) -> Result<String, EditError> {
    let s = service_mut(doc, service)?;
    let r = started(s, "retry")?;
    let parked = std::mem::take(&mut r.parked_rules);
    let st = status(r);
    if st.state != RolloutState::Aborted {
        let state = st.state;
        r.parked_rules = parked;
        return Err(refused(
            None,
            format!("the rollout of `{service}` is {state}: only an aborted rollout is retried"),
        ));
    }
    let weight_before = st.weight_before;
    r.status = None;
    // Back at their places, the lowest first, so that each index means what it meant.
    let mut parked = parked;
    parked.sort_by_key(|p| p.at);
    for p in parked {
        let at = p.at.min(s.rules.len());
        s.rules.insert(at, p.rule);
    }
    let reason = begin(s, now_ms);
    if let Some(st) = s.rollout.as_mut().and_then(|r| r.status.as_mut()) {
        st.weight_before = weight_before;
    }
    Ok(format!("retried: {reason}"))
}

/// How long `d` is, as people read it, rounded to the second.
pub fn words(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::Step;

    /// `web`: stable v1, canary v2 with a split by header and a staff rule to v2.
    fn doc() -> PolicyDoc {
        toml::from_str(
            "[[services]]\nname = \"web\"\nstable = \"v1\"\nversions = { v1 = \"a\", v2 = \"b\" }\n\
             [[services.rules]]\nname = \"staff\"\nversion = \"v2\"\nwhen = { header = \"x-staff\", equals = \"1\" }\n\
             [services.split]\nweights = { v2 = 1 }\nby = { header = \"x-user\" }\nsalt = \"s\"\n",
        )
        .expect("a valid document")
    }

    fn web(d: &PolicyDoc) -> &ServiceDoc {
        &d.services[0]
    }

    fn state(d: &PolicyDoc) -> (RolloutState, usize, f64) {
        let s = web(d);
        let st = s.rollout.as_ref().unwrap().status.as_ref().unwrap();
        (st.state, st.step, weight_of(s, "v2"))
    }

    #[test]
    fn a_plan_walks_its_steps_then_promotes_and_a_guard_failure_rolls_back() {
        let mut d = doc();
        let said = start(&mut d, "web", RolloutDoc::new("v2"), 1_000).unwrap();
        assert_eq!(said, "rollout of web v2 started: step 1/4 (5%)");
        assert_eq!(state(&d), (RolloutState::Progressing, 0, 5.0));
        let by = web(&d).split.as_ref().unwrap().by.clone();
        assert!(by.is_some(), "the split keeps its identity");

        for (now, weight) in [(2_000, 25.0), (3_000, 50.0), (4_000, 100.0)] {
            advance(&mut d, "web", "held".into(), now).unwrap();
            let (st, _, w) = state(&d);
            assert_eq!((st, w), (RolloutState::Progressing, weight));
            assert_eq!(
                web(&d)
                    .rollout
                    .as_ref()
                    .unwrap()
                    .status
                    .as_ref()
                    .unwrap()
                    .step_started_ms,
                now
            );
        }
        let said = advance(&mut d, "web", "held 5m".into(), 5_000).unwrap();
        assert_eq!(said, "promoted v2: end of plan (held 5m); guard for 5m");
        let s = web(&d);
        assert_eq!(
            (s.stable.as_str(), s.previous_stable.as_deref()),
            ("v2", Some("v1"))
        );
        assert_eq!(s.rules.len(), 1, "rules stay");
        assert_eq!(
            s.previous_weight,
            Some(1.0),
            "a rollback of the promote gives v2 its weight from before the rollout"
        );
        assert_eq!(
            in_charge(&d, "web").as_deref(),
            Some("v2"),
            "the guard runs"
        );
        assert!(!s.split.as_ref().unwrap().weights.contains_key("v2"));
        assert!(d.active_rollouts() == ["web"], "the guard runs");

        let said = abort(&mut d, "web", "canary 5xx 9%".into(), 6_000).unwrap();
        assert_eq!(
            said,
            "aborted after the promote, rolled back: canary 5xx 9%"
        );
        let s = web(&d);
        assert_eq!(
            (s.stable.as_str(), s.previous_stable.as_deref()),
            ("v1", None)
        );
        assert_eq!(state(&d), (RolloutState::Aborted, 3, 0.0));
        assert!(d.active_rollouts().is_empty());
        assert_eq!(in_charge(&d, "web"), None);
        assert_eq!(web(&d).previous_weight, None);
    }

    /// Once an overflow (a panic in a debug build) when the promote computed the guard's end.
    #[test]
    fn a_guard_past_the_clock_guards_for_good() {
        let mut d = doc();
        let mut plan = RolloutDoc::new("v2");
        plan.post_promotion = humantime::parse_duration("500000000000y").unwrap();
        start(&mut d, "web", plan, 1_000).unwrap();
        promote(&mut d, "web", "by hand".into(), 2_000).unwrap();
        let st = web(&d).rollout.as_ref().unwrap().status.clone().unwrap();
        assert_eq!(st.guard_until_ms, Some(u64::MAX));
    }

    #[test]
    fn the_guard_passes_and_the_promote_stands() {
        let mut d = doc();
        let mut plan = RolloutDoc::new("v2");
        plan.steps = vec![Step::weight(100.0)];
        start(&mut d, "web", plan, 0).unwrap();
        advance(&mut d, "web", "held".into(), 10).unwrap();
        guard_passed(&mut d, "web", "5 passing windows".into(), 20).unwrap();
        assert_eq!(state(&d).0, RolloutState::Promoted);
        assert!(d.active_rollouts().is_empty());
        let e = abort(&mut d, "web", "x".into(), 30).unwrap_err();
        assert_eq!(
            e.message,
            "the rollout of `web` is promoted: nothing to abort"
        );
        // A new rollout replaces the ended one.
        let mut d2 = d.clone();
        d2.services[0].versions.insert("v3".into(), "b".into());
        start(&mut d2, "web", RolloutDoc::new("v3"), 40).unwrap();
        assert_eq!(web(&d2).previous_stable, None, "the promote is accepted");
    }

    #[test]
    fn abort_takes_the_cohort_out_and_retry_puts_it_back() {
        let mut d = doc();
        // An operator's rule before the cohort's, and one after.
        let mut first = d.services[0].rules[0].clone();
        first.name = "first".into();
        let mut last = first.clone();
        last.name = "last".into();
        d.services[0].rules.insert(0, first);
        d.services[0].rules.push(last);
        let names = |d: &PolicyDoc| -> Vec<String> {
            web(d).rules.iter().map(|r| r.name.clone()).collect()
        };
        let mut plan = RolloutDoc::new("v2");
        plan.cohort = vec!["staff".into()];
        start(&mut d, "web", plan, 0).unwrap();
        advance(&mut d, "web", "held".into(), 10).unwrap();
        abort(&mut d, "web", "canary 5xx".into(), 20).unwrap();
        assert_eq!(
            names(&d),
            ["first", "last"],
            "the cohort stops sending to the canary"
        );
        assert_eq!(state(&d), (RolloutState::Aborted, 1, 0.0));
        let e = start(&mut d.clone(), "web", RolloutDoc::new("v1"), 25).unwrap_err();
        assert_eq!(e.message, "`v1` is already the stable version of `web`");

        let said = retry(&mut d, "web", 30).unwrap();
        assert_eq!(said, "retried: rollout of web v2 started: step 1/4 (5%)");
        assert_eq!(state(&d), (RolloutState::Progressing, 0, 5.0));
        assert_eq!(names(&d), ["first", "staff", "last"], "back at its place");
        assert_eq!(
            web(&d)
                .rollout
                .as_ref()
                .unwrap()
                .status
                .as_ref()
                .unwrap()
                .weight_before,
            1.0,
            "the weight before the first start is kept"
        );
        let e = retry(&mut d, "web", 40).unwrap_err();
        assert_eq!(
            e.message,
            "the rollout of `web` is progressing: only an aborted rollout is retried"
        );
        assert_eq!(web(&d).rules.len(), 3, "a refused retry parks nothing");
    }

    #[test]
    fn pause_resume_and_a_step_that_waits_for_resume() {
        let mut d = doc();
        let mut plan = RolloutDoc::new("v2");
        plan.steps = vec![
            Step::weight(5.0),
            Step {
                weight: 50.0,
                hold: None,
                pause: true,
            },
            Step::weight(100.0),
        ];
        start(&mut d, "web", plan, 0).unwrap();
        let e = resume(&mut d, "web", 1).unwrap_err();
        assert_eq!(e.message, "the rollout of `web` is progressing, not paused");
        pause(&mut d, "web", "paused by alice".into(), 2).unwrap();
        assert_eq!(state(&d), (RolloutState::Paused, 0, 5.0));
        let e = pause(&mut d, "web", "again".into(), 3).unwrap_err();
        assert!(
            e.message.contains("is paused: only a progressing"),
            "{}",
            e.message
        );
        assert_eq!(
            resume(&mut d, "web", 4).unwrap(),
            "resumed at step 1/3 (5%)"
        );
        assert_eq!(state(&d), (RolloutState::Progressing, 0, 5.0));

        let said = advance(&mut d, "web", "held".into(), 5).unwrap();
        assert_eq!(said, "step 2/3 (50%) (held): waiting for resume");
        assert_eq!(state(&d), (RolloutState::Paused, 1, 50.0));
        resume(&mut d, "web", 6).unwrap();
        assert_eq!(state(&d), (RolloutState::Progressing, 2, 100.0));
    }

    #[test]
    fn refusals_name_what_is_missing() {
        let mut d = doc();
        let e = pause(&mut d, "web", "x".into(), 0).unwrap_err();
        assert_eq!(e.kind, EditErrorKind::NotFound);
        assert_eq!(
            e.message,
            "service `web` has no rollout to pause; start one first"
        );
        let e = start(&mut d, "api", RolloutDoc::new("v2"), 0).unwrap_err();
        assert_eq!(e.message, "no service `api`");
        let e = start(&mut d, "web", RolloutDoc::new("v9"), 0).unwrap_err();
        assert_eq!(
            e.message,
            "service `web` has no version `v9` (versions: v1, v2)"
        );
        start(&mut d, "web", RolloutDoc::new("v2"), 0).unwrap();
        let e = start(&mut d, "web", RolloutDoc::new("v2"), 0).unwrap_err();
        assert_eq!(
            e.message,
            "service `web` has a rollout of v2 that is progressing at step 1/4 (5%): abort or promote it first"
        );
        // A plan written in TOML, not started yet.
        d.services[0].rollout.as_mut().unwrap().status = None;
        let e = abort(&mut d, "web", "x".into(), 0).unwrap_err();
        assert_eq!(
            e.message,
            "the rollout of `web` v2 has not started yet; it starts within a second"
        );
        assert_eq!(
            begin(&mut d.services[0], 7),
            "rollout of web v2 started: step 1/4 (5%)"
        );
    }
}
