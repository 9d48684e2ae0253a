//! The dashboard's live figures: once a second, a [`LiveSample`] of every version (requests per
//! second, error rate, p50 and p99 of that second, its share of the split and of the last minute's
//! requests, its servers' health, the requests stable answered for it), kept for
//! [`KEEP`] samples and sent to every open `GET /v1/live` (server-sent events).
//!
//! The figures are this instance's counters (the ones the rollout analysis reads, counted on the
//! request path with a few atomic adds), differenced here from the second before: the sampler
//! costs the request path nothing. A sample is made once and shared (`Arc`) by every stream, so
//! ten open dashboards cost what one does.
//!
//! A stream ends when the admin listener stops or this process hands over to a new one (an
//! upgrade): the browser's `EventSource` reconnects by itself, to the new process.

use super::error::ApiError;
use super::{AdminState, Shared};
use crate::api::{paths, LiveHistory, LiveRollout, LiveSample, LiveService, LiveVersion};
use crate::gateway::FiguresTable;
use crate::policy::PolicyDoc;
use crate::proxy::{ServerState, Upstreams};
use crate::rollout::Figures;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::{Json, Router};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// How often a sample is made.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept: five minutes.
pub const KEEP: usize = 300;
/// The actual share of each version is over this many samples (a minute).
const SHARE_WINDOW: usize = 60;
/// How long the sampler waits for the store when it reads a rollout's verdict count; past it,
/// the count from before is shown.
const RECORD_WAIT: Duration = Duration::from_millis(250);

/// Cumulative counters at one sample.
#[derive(Default, Clone)]
struct Counters {
    figures: FiguresTable,
    fallbacks: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The sampler's memory.
pub struct Live {
    /// The counters of the last [`SHARE_WINDOW`] + 1 samples, oldest first.
    counters: Mutex<VecDeque<Counters>>,
    /// The samples kept, oldest first.
    samples: Mutex<VecDeque<Arc<LiveSample>>>,
    /// Verdicts recorded per service, as last read from the store.
    verdicts: Mutex<HashMap<String, usize>>,
    /// Every open stream listens here.
    sent: broadcast::Sender<Arc<LiveSample>>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            counters: Mutex::new(VecDeque::new()),
            samples: Mutex::new(VecDeque::new()),
            verdicts: Mutex::new(HashMap::new()),
            sent: broadcast::channel(16).0,
        }
    }
}

impl Live {
    /// The samples kept, oldest first.
    pub fn history(&self) -> Vec<LiveSample> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.iter().map(|s| (**s).clone()).collect()
    }
}

/// Rounds to two decimals: what a person reads.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn ms(d: Duration) -> f64 {
    round2(d.as_secs_f64() * 1000.0)
}

/// Makes one sample from the gateway now, keeps it and sends it to every stream.
pub(super) async fn sample(state: &AdminState) {
    let gateway = &state.gateway;
    let now = Counters {
        figures: gateway.figures(),
        fallbacks: gateway.fallbacks(),
    };
    let (second, minute) = {
        let mut kept = state
            .live
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let second = kept.back().cloned().unwrap_or_default();
        let minute = kept.front().cloned().unwrap_or_default();
        kept.push_back(now.clone());
        while kept.len() > SHARE_WINDOW + 1 {
            kept.pop_front();
        }
        (second, minute)
    };
    let policy = gateway.policy();
    let doc = policy.doc();
    let verdicts = verdict_counts(state, doc).await;
    let table = state.upstreams.get().map(|u| u.current());
    let at = SystemTime::now();
    let sample = Arc::new(LiveSample {
        time: humantime::format_rfc3339_millis(at).to_string(),
        unix_ms: at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        revision: gateway.revision(),
        store: super::status::store_status(gateway),
        services: services(doc, &now, &second, &minute, table.as_deref(), &verdicts),
    });
    {
        let mut samples = state.live.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back(sample.clone());
        while samples.len() > KEEP {
            samples.pop_front();
        }
    }
    // No stream open: nobody to send it to.
    let _ = state.live.sent.send(sample);
}

/// How many verdicts each service's rollout has recorded, from the driver's record in the store
/// (bounded by [`RECORD_WAIT`]; the count from before when the store does not answer in time).
async fn verdict_counts(state: &AdminState, doc: &PolicyDoc) -> HashMap<String, usize> {
    let mut counts = state
        .live
        .verdicts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    counts.retain(|name, _| {
        doc.services
            .iter()
            .any(|s| &s.name == name && s.rollout.is_some())
    });
    for svc in doc.services.iter() {
        let Some(plan) = &svc.rollout else { continue };
        let read = super::rollouts::working_record(state, &svc.name, plan);
        if let Ok(Ok(record)) = tokio::time::timeout(RECORD_WAIT, read).await {
            counts.insert(svc.name.clone(), record.map_or(0, |r| r.verdicts.len()));
        }
    }
    *state
        .live
        .verdicts
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = counts.clone();
    counts
}

/// Every service of `doc` in a sample: its versions' figures between `second` (a sample ago)
/// and `now`, their shares since `minute`.
fn services(
    doc: &PolicyDoc,
    now: &Counters,
    second: &Counters,
    minute: &Counters,
    table: Option<&Upstreams>,
    verdicts: &HashMap<String, usize>,
) -> Vec<LiveService> {
    doc.services
        .iter()
        .map(|svc| {
            let figures = |c: &Counters, v: &str| -> Figures {
                c.figures
                    .get(&svc.name)
                    .and_then(|f| f.get(v))
                    .cloned()
                    .unwrap_or_default()
            };
            let fallbacks = |c: &Counters, v: &str| -> u64 {
                c.fallbacks
                    .get(&svc.name)
                    .and_then(|f| f.get(v))
                    .copied()
                    .unwrap_or(0)
            };
            let weights = svc.split.as_ref().map(|s| &s.weights);
            let others: f64 = weights.map_or(0.0, |w| {
                w.iter()
                    .filter(|(v, _)| **v != svc.stable)
                    .map(|(_, p)| *p)
                    .sum()
            });
            let mut names: Vec<&String> = svc.versions.keys().collect();
            names.sort_by_key(|v| (**v != svc.stable, (*v).clone()));
            let in_minute: BTreeMap<&str, u64> = names
                .iter()
                .map(|v| {
                    let n = figures(now, v)
                        .requests
                        .saturating_sub(figures(minute, v).requests);
                    (v.as_str(), n)
                })
                .collect();
            let minute_total: u64 = in_minute.values().sum();
            let versions = names
                .iter()
                .map(|v| {
                    let cumulative = figures(now, v);
                    let last = cumulative.saturating_sub(&figures(second, v));
                    let configured = if **v == svc.stable {
                        (100.0 - others).max(0.0)
                    } else {
                        weights.and_then(|w| w.get(*v)).copied().unwrap_or(0.0)
                    };
                    let (up, down) = table
                        .and_then(|t| {
                            let upstream = svc.versions.get(*v)?;
                            let servers = t.health(t.index_of(upstream)?);
                            let up = servers
                                .iter()
                                .filter(|s| s.state == ServerState::Up)
                                .count();
                            Some((up, servers.len() - up))
                        })
                        .unzip();
                    let any = last.requests > 0;
                    LiveVersion {
                        name: (*v).clone(),
                        upstream: svc.versions.get(*v).cloned().unwrap_or_default(),
                        configured_percent: round2(configured),
                        actual_percent: (minute_total > 0).then(|| {
                            round2(in_minute[v.as_str()] as f64 * 100.0 / minute_total as f64)
                        }),
                        rps: last.requests as f64 / INTERVAL.as_secs_f64(),
                        error_percent: any
                            .then(|| round2(last.errors as f64 * 100.0 / last.requests as f64)),
                        p50_ms: last.quantile(0.5).map(ms),
                        p99_ms: last.quantile(0.99).map(ms),
                        requests: cumulative.requests,
                        servers_up: up,
                        servers_down: down,
                        fallbacks_per_second: fallbacks(now, v).saturating_sub(fallbacks(second, v))
                            as f64
                            / INTERVAL.as_secs_f64(),
                    }
                })
                .collect();
            let rollout = svc.rollout.as_ref().map(|plan| LiveRollout {
                version: plan.version.clone(),
                state: plan.status.as_ref().map(|st| st.state),
                step: plan.status.as_ref().map_or(0, |st| st.step + 1),
                steps: plan.steps.len(),
                weight: super::rollouts::canary_weight(svc, plan),
                reason: plan
                    .status
                    .as_ref()
                    .map(|st| st.reason.clone())
                    .unwrap_or_default(),
                verdicts: verdicts.get(&svc.name).copied().unwrap_or(0),
            });
            LiveService {
                name: svc.name.clone(),
                stable: svc.stable.clone(),
                versions,
                rollout,
            }
        })
        .collect()
}

/// The live routes.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new()
        .route(paths::LIVE, get(stream))
        .route(paths::LIVE_HISTORY, get(history))
}

/// `GET /v1/live/history`.
async fn history(State(s): Shared) -> Json<LiveHistory> {
    Json(LiveHistory {
        interval_ms: INTERVAL.as_millis() as u64,
        samples: s.live.history(),
    })
}

/// `GET /v1/live`: a `sample` event each second until the listener stops or this process hands
/// over; a sample a slow client missed is skipped, never queued.
async fn stream(
    State(s): Shared,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let receiver = s.live.sent.subscribe();
    let stopped = s.stopped.subscribe();
    let state = s.clone();
    let events = futures_util::stream::unfold(
        (receiver, stopped, state),
        |(mut receiver, mut stopped, state)| async move {
            loop {
                if *stopped.borrow() || state.gateway.handing_over() {
                    return None;
                }
                tokio::select! {
                    got = receiver.recv() => match got {
                        Ok(sample) => {
                            let event = Event::default()
                                .event("sample")
                                .json_data(&*sample)
                                .unwrap_or_else(|_| Event::default().comment("unserializable sample"));
                            return Some((Ok(event), (receiver, stopped, state)));
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = stopped.changed() => return None,
                }
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyDoc;

    fn doc() -> PolicyDoc {
        toml::from_str(
            r#"
            [[services]]
            name = "web"
            stable = "stable"
            versions = { stable = "s", canary = "c" }
            split = { weights = { canary = 10 } }
            "#,
        )
        .unwrap()
    }

    /// Counters with `n` requests of each version, every tenth canary one an error, each
    /// taking `ms` milliseconds; and `fallbacks` canary fallbacks.
    fn counters(stable: u64, canary: u64, ms: u64, fallbacks: u64) -> Counters {
        let mut per = BTreeMap::new();
        for (v, n) in [("stable", stable), ("canary", canary)] {
            let mut f = Figures::default();
            for i in 0..n {
                f.record(v == "canary" && i % 10 == 0, Duration::from_millis(ms));
            }
            per.insert(v.to_string(), f);
        }
        let mut fb = BTreeMap::new();
        fb.insert("canary".to_string(), fallbacks);
        Counters {
            figures: BTreeMap::from([("web".to_string(), per)]),
            fallbacks: BTreeMap::from([("web".to_string(), fb)]),
        }
    }

    #[test]
    fn a_second_is_the_difference_of_two_samples() {
        let minute = counters(0, 0, 1, 0);
        let second = counters(500, 100, 1, 2);
        let now = counters(1400, 200, 1, 5);
        let out = services(&doc(), &now, &second, &minute, None, &HashMap::new());
        let web = &out[0];
        let names: Vec<&str> = web.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["stable", "canary"], "stable first");
        let (stable, canary) = (&web.versions[0], &web.versions[1]);
        assert_eq!((stable.rps, canary.rps), (900.0, 100.0));
        assert_eq!(
            (stable.configured_percent, canary.configured_percent),
            (90.0, 10.0)
        );
        assert_eq!(
            (stable.actual_percent, canary.actual_percent),
            (Some(87.5), Some(12.5))
        );
        assert_eq!(canary.error_percent, Some(10.0));
        assert_eq!(stable.error_percent, Some(0.0));
        assert!(canary.p50_ms.unwrap() >= 0.96 && canary.p50_ms.unwrap() <= 1.28);
        assert_eq!(canary.fallbacks_per_second, 3.0);
        assert_eq!(canary.requests, 200);
        assert_eq!(canary.servers_up, None, "no upstream table: health unknown");
        assert!(web.rollout.is_none());
    }

    #[test]
    fn no_requests_is_no_rate_and_no_latency() {
        let c = counters(0, 0, 1, 0);
        let out = services(&doc(), &c, &c, &c, None, &HashMap::new());
        let canary = &out[0].versions[1];
        assert_eq!(canary.rps, 0.0);
        assert_eq!(
            (
                canary.actual_percent,
                canary.error_percent,
                canary.p50_ms,
                canary.p99_ms
            ),
            (None, None, None, None)
        );
    }
}
