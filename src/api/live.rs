//! The dashboard's wire types: who is signed in (`/v1/session`), and the live figures of every
//! version (`/v1/live`, a server-sent event each second, and `/v1/live/history`, the last
//! minutes of them).
//!
//! A [`LiveSample`] is what one second looked like: per service, per version, the share of
//! requests the split gives it and the share it got, requests per second, the error rate, p50
//! and p99, its servers' health and the requests stable answered for it. The figures of one
//! second come from this instance's counters (the ones the rollout analysis reads), differenced
//! from the second before.

use super::status::StoreStatus;
use crate::rollout::RolloutState;
use serde::{Deserialize, Serialize};

/// Body of `POST /v1/session`: sign in with a bearer token. With no tokens configured (loopback
/// only), `{}` signs in as `local`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `GET` and `POST /v1/session`: who the request is from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The token's name: what changes are recorded under.
    pub name: String,
    /// When the session cookie stops working, RFC 3339 UTC; `null` for a bearer token or with no
    /// tokens configured.
    pub expires_at: Option<String>,
    /// True when no tokens are configured: every client on this machine is `local`.
    pub open: bool,
}

/// `GET /v1/live/history`: the samples kept, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveHistory {
    /// Milliseconds between two samples.
    pub interval_ms: u64,
    pub samples: Vec<LiveSample>,
}

/// One second of the gateway, as the dashboard draws it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSample {
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The same, in milliseconds since the Unix epoch (for charts).
    pub unix_ms: u64,
    /// The running policy's revision.
    pub revision: u64,
    pub store: StoreStatus,
    pub services: Vec<LiveService>,
}

/// One service in a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveService {
    pub name: String,
    pub stable: String,
    /// The stable version first, then the others by name.
    pub versions: Vec<LiveVersion>,
    /// The service's rollout, if it has one.
    pub rollout: Option<LiveRollout>,
}

/// One version of a service in a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveVersion {
    pub name: String,
    /// The upstream that serves it.
    pub upstream: String,
    /// Its share of the weighted split now, in percent (stable has what the others leave).
    /// Rules and the tester override send requests besides.
    pub configured_percent: f64,
    /// Its share of the service's requests over the last minute, in percent; `null` without
    /// requests.
    pub actual_percent: Option<f64>,
    /// Requests per second over the last second.
    pub rps: f64,
    /// Errors in percent of the last second's requests (5xx, or the rollout's error statuses,
    /// or graygate failing the version); `null` without requests.
    pub error_percent: Option<f64>,
    /// Latency quantiles of the last second's requests, in milliseconds; `null` without
    /// requests.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests since this instance started.
    pub requests: u64,
    /// Its upstream's servers in and out of service; `null` when the health is not known.
    pub servers_up: Option<usize>,
    pub servers_down: Option<usize>,
    /// Requests meant for this version that stable answered (it could not be reached, or had no
    /// server in service), per second over the last second.
    pub fallbacks_per_second: f64,
}

/// Where a service's rollout is; `GET /v1/services/{s}/rollout` has the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveRollout {
    pub version: String,
    /// Absent for a plan written but not started.
    pub state: Option<RolloutState>,
    /// The current step, counted from 1, and how many the plan has.
    pub step: usize,
    pub steps: usize,
    /// The canary's weight now, in percent.
    pub weight: f64,
    pub reason: String,
    /// How many verdicts are recorded: a change tells the dashboard to fetch them.
    pub verdicts: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_sample_keeps_its_json() {
        let sample = json!({
            "time": "2026-12-01T12:00:01.000Z", "unix_ms": 1796126401000u64, "revision": 7,
            "store": {"kind": "embedded", "degraded": false, "since": null, "last_error": null},
            "services": [{"name": "web", "stable": "stable", "versions": [{
                "name": "canary", "upstream": "canary", "configured_percent": 10.0,
                "actual_percent": null, "rps": 0.0, "error_percent": null, "p50_ms": null,
                "p99_ms": null, "requests": 0, "servers_up": 1, "servers_down": 0,
                "fallbacks_per_second": 0.0}],
                "rollout": {"version": "canary", "state": "waiting", "step": 1, "steps": 4,
                    "weight": 5.0, "reason": "not enough data", "verdicts": 0}}]
        });
        let typed: LiveSample = serde_json::from_value(sample.clone()).unwrap();
        assert_eq!(
            typed.services[0].rollout.as_ref().unwrap().state,
            Some(RolloutState::Waiting)
        );
        assert_eq!(serde_json::to_value(&typed).unwrap(), sample);
        let e = serde_json::from_value::<SignIn>(json!({"tokn": "x"})).unwrap_err();
        assert!(e.to_string().starts_with("unknown field `tokn`"), "{e}");
    }
}
