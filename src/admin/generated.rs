//! The admin API on generated bad JSON bodies: the valid body of every endpoint that takes one,
//! taken apart by [`crate::mutate`] (a node of the wrong kind or size, bytes flipped, cut or
//! repeated), sent through the router as the listener would hand it over, with or without an
//! `If-Match`.
//!
//! What must hold for any body: an answer, never a 5xx; a refusal is an [`ErrorBody`] whose
//! message starts with the field it names; a refused change leaves the stored revision and
//! document as they were; an accepted one moves the revision by one, or not at all when it
//! changed nothing.

use super::{router, AdminState, Auth};
use crate::api::ErrorBody;
use crate::gateway::Gateway;
use crate::mutate::{assert_reaches, bounded, json_body, sample};
use crate::policy::PolicyDoc;
use crate::proxy::ClientIpConfig;
use crate::store::{EmbeddedStore, Store};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use http::{Method, Request, StatusCode};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// The policy every case starts from: service `web`, stable `v1`, canary `v2`, a rule, a split.
fn seed() -> Value {
    json!({
        "routes": [{"service": "web"}],
        "services": [{
            "name": "web",
            "stable": "v1",
            "versions": {"v1": "stable", "v2": "canary"},
            "rules": [{"name": "beta", "version": "v2", "when": {"header": "X-Env", "equals": "beta"}}],
            "split": {"weights": {"v2": 5}, "by": {"header": "X-User-Id"}}
        }]
    })
}

/// Each endpoint that takes a JSON body, with a body it accepts.
fn endpoints() -> Vec<(Method, &'static str, Value)> {
    let service = seed()["services"][0].clone();
    vec![
        (Method::PUT, "/v1/policy", seed()),
        (
            Method::POST,
            "/v1/routes",
            json!({"name": "api", "service": "web", "path_prefix": "/api", "hosts": ["shop.example.com"]}),
        ),
        (
            Method::PUT,
            "/v1/routes/web",
            json!({"service": "web", "hosts": ["*.example.com"]}),
        ),
        (
            Method::POST,
            "/v1/services",
            json!({"name": "shop", "stable": "v1", "versions": {"v1": "stable"}}),
        ),
        (Method::PUT, "/v1/services/web", service),
        (
            Method::POST,
            "/v1/services/web/versions",
            json!({"name": "v3", "upstream": "canary"}),
        ),
        (
            Method::PUT,
            "/v1/services/web/versions/v2",
            json!({"upstream": "stable"}),
        ),
        (
            Method::POST,
            "/v1/services/web/rules?position=0",
            json!({"name": "office", "version": "v2", "when": {"cidr": ["10.1.0.0/16"]}}),
        ),
        (
            Method::PUT,
            "/v1/services/web/rules/beta",
            json!({"name": "beta", "version": "v2", "when": {"any": [{"cookie": "uid", "ids": [1, 2]}, {"query": "uid", "range": {"start": 1, "end": 100}}]}}),
        ),
        (
            Method::PUT,
            "/v1/services/web/weights",
            json!({"weights": {"v2": 10}, "by": {"header": "X-User-Id"}, "salt": "web-2"}),
        ),
        (
            Method::POST,
            "/v1/services/web/promote",
            json!({"version": "v2"}),
        ),
        (
            Method::POST,
            "/v1/services/web/rollback",
            json!({"clear_rules": true}),
        ),
        (
            Method::POST,
            "/v1/services/web/rollout",
            json!({"version": "v2", "steps": [{"weight": 1, "hold": "1m"}, {"weight": 50}], "cohort": ["beta"], "failure_limit": 2}),
        ),
        (Method::POST, "/v1/undo", json!({"revision": 1})),
        (
            Method::POST,
            "/v1/explain",
            json!({"method": "GET", "host": "shop.example.com", "path": "/cart?x=1", "headers": {"X-User-Id": "42"}, "cookies": {"uid": "7"}, "client_ip": "10.0.0.7"}),
        ),
        (
            Method::POST,
            "/v1/lists/gray/entries",
            json!({"entries": [{"key": "10.0.0.7", "value": "1", "ttl": "1h"}]}),
        ),
        (
            Method::DELETE,
            "/v1/lists/gray/entries",
            json!({"keys": ["10.0.0.7"]}),
        ),
    ]
}

/// The router over a gateway on its own embedded store, and what must outlive them.
struct Admin {
    app: Router,
    gateway: Arc<Gateway>,
    runtime: tokio::runtime::Runtime,
    /// Removed on drop: the store's directory.
    _dir: tempfile::TempDir,
}

impl Admin {
    fn start() -> Admin {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(dir.path()).expect("the embedded store opens"));
        let doc: PolicyDoc = serde_json::from_value(seed()).expect("the seed is a policy");
        let upstreams = vec!["stable".to_string(), "canary".to_string()];
        let gateway = runtime
            .block_on(Gateway::start(
                store,
                upstreams,
                Some(&doc),
                Duration::from_millis(100),
                crate::store::HistoryRetention::default(),
            ))
            .expect("the gateway starts");
        let state = AdminState::new(
            gateway.clone(),
            Auth::new(Vec::new()),
            ClientIpConfig::default(),
        );
        Admin {
            app: router(state),
            gateway,
            runtime,
            _dir: dir,
        }
    }

    /// Sends one request as the listener would (from loopback); the status and body.
    fn send(
        &self,
        method: Method,
        uri: &str,
        if_match: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Vec<u8>) {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(tag) = if_match {
            request = request.header(http::header::IF_MATCH, tag);
        }
        let mut request = request.body(Body::from(body)).expect("a request");
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
        request.extensions_mut().insert(ConnectInfo(peer));
        self.runtime.block_on(async {
            let response = self
                .app
                .clone()
                .oneshot(request)
                .await
                .expect("the router answers");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("the body is read");
            (status, body.to_vec())
        })
    }

    /// The stored revision and document.
    fn stored(&self) -> (u64, PolicyDoc) {
        self.runtime
            .block_on(self.gateway.current_doc())
            .expect("the policy is read")
    }
}

/// What an `If-Match` may say: nothing, the revision, another one, or junk.
fn if_match() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some("current".to_string())),
        1 => prop::sample::select(vec!["\"1\"", "\"999999\"", "*", "\"-1\"", "W/\"1\"", "\"18446744073709551616\"", "", "\"\""])
            .prop_map(|s| Some(s.to_string())),
    ]
}

/// One endpoint and a body for it.
fn request() -> impl Strategy<Value = (usize, Vec<u8>)> {
    let all = endpoints();
    (0..all.len()).prop_flat_map(move |i| (Just(i), json_body(all[i].2.clone())))
}

#[test]
fn the_bodies_mutated_are_accepted() {
    let admin = Admin::start();
    for (method, uri, body) in endpoints() {
        let (before, _) = admin.stored();
        admin.send(
            Method::PUT,
            "/v1/policy",
            None,
            seed().to_string().into_bytes(),
        );
        let (status, answer) = admin.send(method.clone(), uri, None, body.to_string().into_bytes());
        assert!(
            status.is_success(),
            "{method} {uri}: {status} {}",
            String::from_utf8_lossy(&answer)
        );
        assert!(admin.stored().0 >= before);
    }
}

#[test]
fn the_bodies_reach_both_answers() {
    let admin = Admin::start();
    let (mut accepted, mut refused) = (0, 0);
    for (endpoint, body) in sample(request(), 300) {
        admin.send(
            Method::PUT,
            "/v1/policy",
            None,
            seed().to_string().into_bytes(),
        );
        let (method, uri, _) = endpoints().swap_remove(endpoint);
        match admin.send(method, uri, None, body).0 {
            s if s.is_success() => accepted += 1,
            _ => refused += 1,
        }
    }
    assert_reaches(300, &[("accepted", accepted), ("refused", refused)]);
}

proptest! {
    #![proptest_config(bounded(256, 10_000))]

    #[test]
    fn a_refused_change_leaves_the_revision_as_it_was(
        (endpoint, body) in request(),
        tag in if_match(),
    ) {
        // One gateway for every case: starting one per case would be most of the time spent.
        thread_local!(static ADMIN: Admin = Admin::start());
        ADMIN.with(|admin| {
            let (status, answer) = admin.send(Method::PUT, "/v1/policy", None, seed().to_string().into_bytes());
            prop_assert!(status.is_success(), "the reset: {} {}", status, String::from_utf8_lossy(&answer));
            let (method, uri, _) = endpoints().swap_remove(endpoint);
            let (revision, doc) = admin.stored();
            let tag = tag.map(|t| if t == "current" { format!("\"{revision}\"") } else { t });
            let (status, answer) = admin.send(method.clone(), uri, tag.as_deref(), body.clone());
            let shown = String::from_utf8_lossy(&answer);
            let sent = String::from_utf8_lossy(&body);
            prop_assert!(!status.is_server_error(), "{} {} {}: {} {}", method, uri, sent, status, shown);
            let (after, after_doc) = admin.stored();
            if status.is_success() {
                prop_assert!(
                    after == revision + 1 || (after == revision && after_doc == doc),
                    "{} {} {}: revision {} -> {}", method, uri, sent, revision, after
                );
            } else {
                prop_assert!(status.is_client_error(), "{}", status);
                prop_assert_eq!(after, revision, "{} {} {}: refused with {} {}", method, uri, sent, status, shown);
                prop_assert!(after_doc == doc, "{} {} {}: refused, but the document changed", method, uri, sent);
                let refusal: ErrorBody = serde_json::from_slice(&answer)
                    .map_err(|e| TestCaseError::fail(format!("{status} {shown}: not an error body: {e}")))?;
                prop_assert_eq!(refusal.error.code.status(), status, "{}", shown);
                prop_assert!(!refusal.error.message.trim().is_empty(), "{}", shown);
                if let Some(field) = &refusal.error.field {
                    prop_assert!(
                        refusal.error.message.starts_with(&format!("{field}: ")),
                        "the message does not start with its field: {}", shown
                    );
                }
            }
            prop_assert_eq!(admin.gateway.revision(), after, "the running revision is the stored one");
            Ok(())
        })?;
    }
}
