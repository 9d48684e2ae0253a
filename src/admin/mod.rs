//! The control plane: an HTTP API to run a whole rollout live, on its own listener
//! (`[admin] listen`, loopback by default). JSON in and out; `docs/admin-api.md` documents every
//! endpoint and `docs/openapi.yaml` describes them for tools.
//!
//! # Endpoints
//! Unauthenticated (for probes): `GET /healthz` (the process runs), `GET /readyz` (a policy is
//! loaded and the listeners are up). The dashboard's files at `/ui/` (`ui`), which hold no data.
//! `/v1/session` signs in with a token for a session cookie (`session`).
//!
//! With a bearer token (`Authorization: Bearer <token>`) or a session cookie, everything under
//! `/v1`:
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /v1/status` | revision, store health, per service: stable, versions, split, rules, live traffic and server health per version |
//! | `GET, PUT /v1/policy` | the whole policy document |
//! | `GET, POST /v1/routes`, `GET, PUT, DELETE /v1/routes/{name}` | routes |
//! | `GET, POST /v1/services`, `GET, PUT, DELETE /v1/services/{name}` | services |
//! | `GET /v1/services/{name}/mirror` | a service's mirror as it runs: in flight, last mismatches |
//! | `GET, POST /v1/services/{s}/versions`, `GET, PUT, DELETE .../versions/{v}` | versions (name -> upstream) |
//! | `GET, POST /v1/services/{s}/rules`, `GET, PUT, DELETE .../rules/{r}` | rules, in order |
//! | `GET, PUT /v1/services/{s}/weights` | the weighted split |
//! | `GET /v1/upstreams`, `GET, PUT, DELETE /v1/upstreams/{name}`, `POST .../servers`, `PATCH, DELETE .../servers/{server}` | upstreams: the table this instance runs, and the shared ones (servers, weights, drain) |
//! | `POST /v1/services/{s}/promote` | the canary becomes stable, in one step |
//! | `POST /v1/services/{s}/rollback` | everyone back to stable, in one step |
//! | `GET, POST /v1/services/{s}/rollout`, `POST .../rollout/{pause,resume,promote,abort,retry}` | a rollout: start it, see its window and verdicts, drive it |
//! | `GET, POST, DELETE /v1/lists/{list}/entries`, `GET /v1/lists/{list}/count` | gray lists |
//! | `POST /v1/explain` | which version a described request would reach, and why |
//! | `GET /v1/history`, `POST /v1/undo` | every change, and going back to a revision |
//! | `POST /v1/reload[?force=true]` | read the config file again, as SIGHUP does |
//! | `GET /v1/live`, `GET /v1/live/history` | the dashboard's live figures: a server-sent event each second, the last five minutes |
//! | `GET /v1/fleet`, `POST /v1/fleet/restore` | every instance sharing the store; write this instance's policy back into a store that lost it |
//!
//! Every change's answer says in `X-Graygate-Applied` how many live instances applied its
//! revision; `?wait=<duration>` waits for all of them (`fleet`).
//!
//! # Changes
//! Every policy change is a [`Write`] and goes through [`Gateway::change`]: edited on a copy of the stored document,
//! validated as a whole, written as the next revision together with its history record by one
//! conditional store write, then installed. The `ETag` of every policy response is its revision;
//! a change sent with `If-Match: "<revision>"` is refused with 409 if the policy moved on. A
//! change may not add two rules whose ranges overlap ([`crate::policy::edit::overlapping_ranges`]).
//!
//! Every answer carries `X-Graygate-Admin: <version>` ([`crate::api::ADMIN_HEADER`]), so that
//! `graygate ctl` can tell this API from anything else answering on an address (the data plane
//! passes an application's answers through; they do not carry it).
//!
//! # Listener
//! The admin listener has its own connection limit (`[admin] max_connections`, default 64) and
//! header timeout (`[admin] header_timeout`, default 10 s), apart from the data plane's: clients
//! of the admin API, slow or stuck, wait in the listen backlog and are closed when their headers
//! do not arrive, and can never take the file descriptors traffic needs.
//!
//! # Files
//! The wire types (bodies, error codes, the revision rule, the paths) are [`crate::api`]'s. Here:
//! - `auth`: bearer tokens (constant-time comparison), loopback-only without tokens.
//! - `session`: the dashboard's sign-in: a token exchanged for an `HttpOnly`, `SameSite=Strict`
//!   session cookie; who a request is from.
//! - `live`: the live figures of every version, sampled each second, streamed and kept.
//! - `ui`: the dashboard's files, embedded from `ui/` at build time.
//! - `browser`: what a page of another site can make a browser send (forms, `text/plain`, a
//!   foreign `Origin`, a rebound DNS name in `Host`), refused before anything else.
//! - `error`: [`ApiError`], a refusal with its code and field.
//! - `extract`: JSON bodies and queries that name the field they trip on, and [`Write`]: the
//!   caller, `If-Match`, and the one way a handler changes the policy.
//! - `reply`: answers about the policy go out with their revision as the `ETag`.
//! - One module per resource, each with its own router: `policy`, `routes`, `services`,
//!   `versions`, `rules`, `weights`, `release` (promote and rollback: rollout steps that move the
//!   stable version, the rules and the split at once, not a resource of their own), `rollouts`
//!   (start, status, and the actions on a service's rollout), `lists`, `history` (with undo),
//!   `status` (with the probes and explain), `reload` (the config file), `upstreams` (the
//!   table this instance runs and the shared upstreams).

mod auth;
mod browser;
mod error;
mod extract;
mod fleet;
#[cfg(test)]
mod generated;
mod history;
mod lists;
mod live;
mod policy;
mod release;
mod reload;
mod reply;
mod rollouts;
mod routes;
mod rules;
mod services;
mod session;
mod status;
mod ui;
mod upstreams;
mod versions;
mod weights;

pub use auth::{Auth, Caller, LOCAL_CALLER};
pub use error::ApiError;
pub use extract::Write;

use crate::api::{ADMIN_HEADER, ADMIN_VERSION};
use crate::gateway::Gateway;
use crate::policy::PolicyDoc;
use crate::proxy::listen::{self, ConnectionLimit, Slot, DEFAULT_ADMIN_MAX_CONNECTIONS};
use crate::proxy::{ClientIpConfig, LiveUpstreams, HANDOVER_LINGER};
use crate::reload::Reloader;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{HeaderName, HeaderValue};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The state extractor every handler uses.
type Shared = State<Arc<AdminState>>;

/// Per service, per version: requests routed there.
type TrafficCounts = BTreeMap<String, BTreeMap<String, u64>>;

/// How often the traffic counters are sampled, and how many samples are kept: live traffic is the
/// rate over the last [`TRAFFIC_WINDOW`].
const TRAFFIC_SAMPLE: Duration = Duration::from_secs(1);
const TRAFFIC_WINDOW: Duration = Duration::from_secs(10);

/// What every handler shares.
pub struct AdminState {
    pub gateway: Arc<Gateway>,
    pub auth: Auth,
    /// The data plane's trusted proxies, so that `explain` given a `peer` resolves the client IP
    /// as a real request would.
    pub client_ip: ClientIpConfig,
    /// Recent samples of the gateway's traffic counters, oldest first.
    samples: Mutex<VecDeque<(Instant, TrafficCounts)>>,
    /// Reads the config file again for `POST /v1/reload`; unset when graygate was not started
    /// from a config file.
    reloader: OnceLock<Arc<Reloader>>,
    /// The data plane's upstream table, for the health of each version's servers in the status
    /// and explain; unset: no health is shown.
    upstreams: OnceLock<Arc<LiveUpstreams>>,
    /// Dashboard sign-ins.
    sessions: session::Sessions,
    /// The dashboard's live samples.
    live: live::Live,
    /// Set when the listener stops: long answers (the live stream) end.
    stopped: watch::Sender<bool>,
}

impl AdminState {
    pub fn new(gateway: Arc<Gateway>, auth: Auth, client_ip: ClientIpConfig) -> Arc<Self> {
        Self::with_session_ttl(gateway, auth, client_ip, crate::config::DEFAULT_SESSION_TTL)
    }

    /// The state with dashboard sign-ins lasting `session_ttl`.
    pub fn with_session_ttl(
        gateway: Arc<Gateway>,
        auth: Auth,
        client_ip: ClientIpConfig,
        session_ttl: Duration,
    ) -> Arc<Self> {
        Arc::new(AdminState {
            gateway,
            auth,
            client_ip,
            samples: Mutex::new(VecDeque::new()),
            reloader: OnceLock::new(),
            upstreams: OnceLock::new(),
            sessions: session::Sessions::new(session_ttl),
            live: live::Live::default(),
            stopped: watch::channel(false).0,
        })
    }

    /// The state with the health of the data plane's upstreams shown in status and explain.
    pub fn with_upstreams(self: Arc<Self>, upstreams: Arc<LiveUpstreams>) -> Arc<Self> {
        let _ = self.upstreams.set(upstreams);
        self
    }

    /// The state with `POST /v1/reload` answered by `reloader`.
    pub fn with_reloader(self: Arc<Self>, reloader: Arc<Reloader>) -> Arc<Self> {
        let _ = self.reloader.set(reloader);
        self
    }

    /// The stored revision and document: what reads answer from.
    async fn stored(&self) -> Result<(u64, PolicyDoc), ApiError> {
        self.gateway.current_doc().await.map_err(ApiError::from)
    }

    /// Keeps one more sample of the traffic counters, dropping those out of the window.
    fn sample(&self) {
        let now = Instant::now();
        let counts = self.gateway.traffic();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((now, counts));
        while samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > TRAFFIC_WINDOW)
        {
            samples.pop_front();
        }
    }

    /// Requests per second for each version over the sampled window (since start, before the
    /// first sample), with the counters now.
    fn traffic(&self) -> (TrafficCounts, BTreeMap<String, BTreeMap<String, f64>>) {
        let now_counts = self.gateway.traffic();
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut rates = BTreeMap::new();
        if let Some((at, old)) = samples.front() {
            let secs = at.elapsed().as_secs_f64().max(0.001);
            for (service, versions) in &now_counts {
                let per: BTreeMap<String, f64> = versions
                    .iter()
                    .map(|(v, n)| {
                        let before = old
                            .get(service)
                            .and_then(|o| o.get(v))
                            .copied()
                            .unwrap_or(0);
                        let rate = n.saturating_sub(before) as f64 / secs;
                        (v.clone(), (rate * 100.0).round() / 100.0)
                    })
                    .collect();
                rates.insert(service.clone(), per);
            }
        }
        (now_counts, rates)
    }
}

/// The admin API's routes on `state`: each resource brings its own router; everything under
/// `/v1` needs a token, the probes do not; every answer is stamped with [`ADMIN_HEADER`].
pub fn router(state: Arc<AdminState>) -> Router {
    let v1 = Router::new()
        .merge(status::router())
        .merge(policy::router())
        .merge(routes::router())
        .merge(services::router())
        .merge(versions::router())
        .merge(rules::router())
        .merge(weights::router())
        .merge(upstreams::router())
        .merge(release::router())
        .merge(rollouts::router())
        .merge(lists::router())
        .merge(history::router())
        .merge(reload::router())
        .merge(live::router())
        .merge(fleet::router())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            fleet::applied_by,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_changes_while_handing_over,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ));
    Router::new()
        .merge(status::probes())
        .merge(session::router())
        .merge(ui::router())
        .merge(v1)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_what_browsers_are_made_to_send,
        ))
        .layer(axum::middleware::map_response(stamp))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            close_while_handing_over,
        ))
        .with_state(state)
}

/// While this process hands over to a new one, every answer closes its connection: a
/// keep-alive client (a dashboard, a script) sends its next request on a new connection, which
/// the new process may take, instead of on one the old process is about to close.
async fn close_while_handing_over(
    State(state): State<Arc<AdminState>>,
    mut response: Response,
) -> Response {
    if state.gateway.handing_over() {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Marks an answer as the admin API's.
async fn stamp(mut response: Response) -> Response {
    response.headers_mut().insert(
        HeaderName::from_static(ADMIN_HEADER),
        HeaderValue::from_static(ADMIN_VERSION),
    );
    response
}

/// How the admin listener bounds its clients.
#[derive(Debug, Clone)]
pub struct AdminLimits {
    /// Connections open at once (`[admin] max_connections`): more wait in the listen backlog.
    pub connections: ConnectionLimit,
    /// A request's headers must arrive within this (`[admin] header_timeout`), or the
    /// connection is closed; it also bounds how long an idle connection is kept.
    pub header_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            connections: ConnectionLimit::new("admin", DEFAULT_ADMIN_MAX_CONNECTIONS),
            header_timeout: crate::config::DEFAULT_ADMIN_HEADER_TIMEOUT,
        }
    }
}

/// Serves the admin API on `listener`, within `limits`, until `shutdown` completes; then stops
/// accepting and waits for the requests in flight.
pub async fn serve(
    listener: listen::Listener,
    state: Arc<AdminState>,
    limits: AdminLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if state.auth.is_open() {
        tracing::warn!(
            "ADMIN API WITHOUT AUTHENTICATION: no [admin] tokens are configured, so anyone who can connect to {} can change the routing policy; it only answers clients on this machine. Configure `tokens` before exposing it.",
            listener.local_addr().map_or_else(|_| "it".to_string(), |a| a.to_string())
        );
    }
    let sampler = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TRAFFIC_SAMPLE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                state.sample();
                live::sample(&state).await;
            }
        })
    };
    let app = router(state.clone());
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // Reap finished connections so the set does not grow with every request.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            (stream, peer, slot) = listen::accept(&listener, &limits.connections) => {
                connections.spawn(serve_connection(
                    stream,
                    peer,
                    app.clone(),
                    limits.header_timeout,
                    stopped.clone(),
                    {
                        let state = state.clone();
                        move || state.gateway.handing_over()
                    },
                    slot,
                ));
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    state.stopped.send_replace(true);
    while connections.join_next().await.is_some() {}
    sampler.abort();
    Ok(())
}

/// One admin connection: HTTP/1.1 with keep-alive, its headers within `header_timeout`, asked to
/// finish its request in flight at shutdown (after [`HANDOVER_LINGER`] when `handing_over`). Holds its `slot` of the listener's limit.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    mut stopped: watch::Receiver<bool>,
    handing_over: impl Fn() -> bool,
    slot: Slot,
) {
    // The handlers read the peer (loopback check, explain) as `ConnectInfo`, as axum::serve
    // gave it.
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        tower_service::Service::call(&mut app, req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        _ = async { let _ = stopped.wait_for(|stop| *stop).await; } => {
            // Handed over: an idle keep-alive client may still send one more request for a
            // moment (answered with `Connection: close`) instead of having its connection
            // closed under a request it is sending, as the data plane does.
            let lingered = if handing_over() {
                tokio::time::timeout(HANDOVER_LINGER, conn.as_mut()).await.ok()
            } else {
                None
            };
            match lingered {
                Some(served) => served,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(peer = %peer, error = %e, "admin connection ended with an error");
    }
    drop(slot);
}

/// While this process hands over to a new one (an upgrade, see [`crate::upgrade`]), every
/// change is refused with 503 `upgrading` and `Retry-After: 1`: the store is the new process's
/// by then, and a change sent again a moment later reaches it. Reads are answered. Every
/// answer then closes its connection (`Connection: close`).
async fn refuse_changes_while_handing_over(
    State(state): State<Arc<AdminState>>,
    req: Request,
    next: Next,
) -> Response {
    let reads = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
    let mut response = if !reads && state.gateway.handing_over() {
        ApiError::new(
            crate::api::ErrorCode::Upgrading,
            "graygate is handing over to a new process (an upgrade); nothing was changed: send it again in a moment",
        )
        .into_response()
    } else {
        next.run(req).await
    };
    // The client's next request belongs to the new process: it opens a new connection for it
    // instead of racing this one's close.
    if state.gateway.handing_over() {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Refuses, before anything else, what a page of another site can make a browser send: see
/// `browser`.
async fn refuse_what_browsers_are_made_to_send(
    State(state): State<Arc<AdminState>>,
    req: Request,
    next: Next,
) -> Response {
    // The probes say only whether the process runs and serves, to anything that asks (a
    // load balancer sends its own `Host`).
    let probe = [crate::api::paths::HEALTHZ, crate::api::paths::READYZ].contains(&req.uri().path());
    if probe && matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
        return next.run(req).await;
    }
    match browser::check(req.method(), req.headers(), state.auth.is_open()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Lets a request through with its [`Caller`] (bearer token, dashboard session cookie, or open
/// loopback), or answers 401/403.
async fn authenticate(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    match session::identify(&state, peer, req.headers()) {
        Ok((caller, _)) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint {} {} (see docs/admin-api.md)",
        req.method(),
        req.uri().path()
    ))
}
