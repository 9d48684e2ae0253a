//! The data plane's question, answered: which version serves this request, and why.
//!
//! [`Gateway::decide`] evaluates on one policy snapshot and drives the pure core's lookup loop:
//! when the policy needs a store value it does not know ([`Evaluation::NeedLookup`]), the value
//! is fetched (each at most once per request, each bounded by the lookup timeout) and the policy
//! is evaluated again. A lookup that fails or times out is answered
//! [`LookupAnswer::Unavailable`]: the condition is false and the request fails safe to stable,
//! never to an error.
//!
//! The typed [`Decision`] (with its [`crate::policy::Reason`]) goes to the data plane as it is:
//! nothing is formatted on the request path; metrics and the access log read the reason from it.

use super::Gateway;
use crate::policy::{Decision, Evaluation, LookupAnswer, Lookups, Policy, RequestFacts};
use crate::proxy::{Answer, MirrorTarget, Router};
use crate::store::Store;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Evaluation rounds of one request before whatever is still unknown counts as unavailable. Each
/// round fetches one new key and a policy has few lookups per request, so this bound is only a
/// guard against a loop.
const MAX_LOOKUP_ROUNDS: usize = 16;

impl Gateway {
    /// Decides for a request: evaluates on one snapshot, fetching store values the rules need
    /// (each at most once, each bounded by the lookup timeout). `None`: no route.
    pub async fn decide(&self, policy: &Policy, facts: &RequestFacts<'_>) -> Option<Decision> {
        let mut known = RequestLookups {
            store: &*self.store,
            fetched: Vec::new(),
            give_up: false,
        };
        for _ in 0..MAX_LOOKUP_ROUNDS {
            match policy.evaluate(facts, &known) {
                Evaluation::Decided(d) => return Some(d),
                Evaluation::NoRoute => return None,
                Evaluation::NeedLookup { list, key } => {
                    let answer = match tokio::time::timeout(
                        self.lookup_timeout,
                        self.store.lookup(&list, &key),
                    )
                    .await
                    {
                        Ok(Ok(Some(v))) => LookupAnswer::Value(v),
                        Ok(Ok(None)) => LookupAnswer::Absent,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e.chain(), %list, "lookup failed; deciding as if the store were down");
                            LookupAnswer::Unavailable
                        }
                        Err(_) => LookupAnswer::Unavailable,
                    };
                    known.fetched.push((list, key, answer));
                }
            }
        }
        known.give_up = true;
        match policy.evaluate(facts, &known) {
            Evaluation::Decided(d) => Some(d),
            _ => None,
        }
    }
}

impl Gateway {
    /// The running policy's mirror of `service`, if it has one.
    pub fn mirror_of(&self, service: &str) -> Option<Arc<MirrorTarget>> {
        self.mirrors.load().get(service).cloned()
    }
}

/// Store values for one request: what was fetched for it, else what the store knows in memory.
struct RequestLookups<'a> {
    store: &'a dyn Store,
    /// (list, key, answer) fetched for this request; empty (and unallocated) for most requests.
    fetched: Vec<(Arc<str>, String, LookupAnswer)>,
    /// Set after too many rounds: whatever is still unknown counts as unavailable.
    give_up: bool,
}

impl Lookups for RequestLookups<'_> {
    fn get(&self, list: &str, key: &str) -> LookupAnswer {
        if let Some((_, _, answer)) = self
            .fetched
            .iter()
            .find(|(l, k, _)| &**l == list && k == key)
        {
            return answer.clone();
        }
        match self.store.lookup_local(list, key) {
            Some(Some(v)) => LookupAnswer::Value(v),
            Some(None) => LookupAnswer::Absent,
            None if self.give_up => LookupAnswer::Unavailable,
            None => LookupAnswer::Unknown,
        }
    }
}

impl Router for Gateway {
    fn route<'a>(
        &'a self,
        facts: RequestFacts<'a>,
    ) -> Pin<Box<dyn Future<Output = Option<Decision>> + Send + 'a>> {
        Box::pin(async move {
            let policy = self.policy.load_full();
            self.decide(&policy, &facts).await
        })
    }

    fn answered(&self, decision: &Decision, answer: Answer) {
        self.traffic
            .count(decision.service(), decision.version(), answer);
    }

    fn mirror(&self, decision: &Decision) -> Option<Arc<MirrorTarget>> {
        self.mirror_of(decision.service())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{doc, gateway, TestStore, WEB};
    use super::*;
    use crate::policy::Reason;
    use crate::store::Entry;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    /// `v2` for every client whose IP is NOT on the gray list: an absent entry matches, a store
    /// that cannot answer does not (a rule never matches on a value nobody could read).
    const NOT_GRAY: &str = "[[services.rules]]\nname = \"not-gray\"\nversion = \"v2\"\n\
        when = { not = { client_ip = true, lookup = { list = \"gray_ips\" }, equals = \"1\" } }\n";

    /// `v2` for clients on the gray list.
    const GRAY: &str = "[[services.rules]]\nname = \"gray\"\nversion = \"v2\"\n\
        when = { client_ip = true, lookup = { list = \"gray_ips\" }, equals = \"1\" }\n";

    async fn route(g: &Gateway, client_ip: &str) -> Option<Decision> {
        let headers = http::HeaderMap::new();
        let facts = RequestFacts {
            host: "app.example",
            path: "/",
            query: None,
            client_ip: client_ip.parse().unwrap(),
            client_key: None,
            headers: &headers,
            random: 7,
            now: 0,
            https: false,
            followed: None,
        };
        let decision = g.route(facts).await;
        // Answered at once, as the data plane reports it: counted.
        if let Some(d) = &decision {
            let answer = Answer {
                status: 200,
                failed: false,
                fell_back: false,
                latency: Duration::from_millis(1),
            };
            g.answered(d, answer);
        }
        decision
    }

    /// `v2 by rule:gray`: the version and the reason of a decision.
    fn decided(d: &Option<Decision>) -> String {
        match d {
            Some(d) => format!("{} by {}", d.version(), d.reason),
            None => "no route".into(),
        }
    }

    #[tokio::test]
    async fn store_values_decide_through_lookups() {
        let store = TestStore::new();
        store
            .put_entries("gray_ips", &[Entry::new("10.0.0.7", "1", None)])
            .await
            .unwrap();
        let g = gateway(
            &store,
            Some(&doc(&format!("{WEB}{GRAY}"))),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(decided(&route(&g, "10.0.0.7").await), "v2 by rule:gray");
        assert_eq!(decided(&route(&g, "10.0.0.8").await), "v1 by default");
    }

    #[tokio::test]
    async fn a_lookup_that_times_out_decides_as_unavailable() {
        let store = TestStore::new();
        let timeout = Duration::from_millis(50);
        let g = gateway(&store, Some(&doc(&format!("{WEB}{NOT_GRAY}"))), timeout).await;

        // Absent from the list: the rule matches.
        let absent = route(&g, "10.0.0.8").await;
        assert_eq!(decided(&absent), "v2 by rule:not-gray");

        // The store hangs: the request waits for the lookup timeout, not longer, and is decided
        // as if the store were down: the rule does not match, stable answers.
        store.hang.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let hung = route(&g, "10.0.0.8").await;
        let waited = started.elapsed();
        assert_eq!(decided(&hung), "v1 by default");
        assert!(matches!(
            hung,
            Some(Decision {
                reason: Reason::Default,
                ..
            })
        ));
        assert!(waited >= timeout, "decided after {waited:?}");
        assert!(waited < Duration::from_secs(5), "decided after {waited:?}");
    }

    #[tokio::test]
    async fn no_policy_is_no_route() {
        let store = TestStore::new();
        let g = gateway(&store, None, Duration::from_secs(1)).await;
        assert_eq!(decided(&route(&g, "10.0.0.8").await), "no route");
        assert!(g.traffic().is_empty());
    }

    #[tokio::test]
    async fn traffic_counters_survive_a_policy_change_for_versions_that_stay() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB)), Duration::from_secs(1)).await;
        for _ in 0..3 {
            route(&g, "10.0.0.8").await;
        }
        let counts = |g: &Gateway| {
            g.traffic()
                .get("web")
                .map(|v| v.iter().map(|(k, n)| (k.clone(), *n)).collect::<Vec<_>>())
        };
        assert_eq!(counts(&g), Some(vec![("v1".into(), 3), ("v2".into(), 0)]));

        // v2 leaves, v3 arrives: v1 keeps its count.
        g.change(None, "alice", "v3 instead of v2", |d| {
            d.services[0].versions.remove("v2");
            d.services[0].versions.insert("v3".into(), "canary".into());
            Ok(())
        })
        .await
        .unwrap();
        route(&g, "10.0.0.8").await;
        assert_eq!(counts(&g), Some(vec![("v1".into(), 4), ("v3".into(), 0)]));
    }
}
