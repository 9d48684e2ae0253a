//! graygate: a gray-release (canary) gateway.
//!
//! For every HTTP request graygate decides which version of a service answers it, the stable one
//! or a canary, from rules that operators change at runtime, and proxies the request there.
//!
//! # Layout
//! The data walks one way: request -> facts -> policy decision -> upstream -> response.
//!
//! - [`policy`]: PURE core. The rule model (serde), its compilation into lookup structures, and
//!   evaluation of request facts into a decision with its reason. No I/O, no async.
//! - [`store`]: one trait for the policy document, identity lists and change notifications; the
//!   embedded store (redb) is the default.
//! - [`rollout`]: PURE core of rollouts: the plan and its states, the transitions, the per-version
//!   counters, the statistics and the verdict on a window of canary against stable traffic.
//! - [`proxy`]: the data plane on hyper: its workers (a thread and an event loop each, a
//!   listening socket each), listener, TLS termination (SNI, certificates reloaded
//!   without a restart), HTTP/1.1 and HTTP/2 to clients, client IP, the strict edge, forwarding,
//!   upstream pools, health checks and passive ejection, fallback, retries, traffic mirroring
//!   (copies of a share of a service's requests to another version, fire and forget).
//! - [`observe`]: the end of the line: Prometheus metrics (on their own listener) and the access
//!   log, fed by the data plane once per request without making it wait.
//! - [`config`]: the TOML startup config, validated into the types above; errors name file, line
//!   and field.
//! - [`gateway`]: glue that keeps the live policy snapshot, answers the data plane's routing
//!   question from it, and applies store changes without a restart, with the upstream table
//!   they need (the config file's upstreams overlaid by the policy's shared ones).
//! - [`reload`]: the config file read again while running (SIGHUP, `POST /v1/reload`): upstreams,
//!   timeouts, the log format and the TLS certificates applied; the config's policy seeds the store and is applied
//!   again only when it changed, never over a rollout in progress unless forced.
//! - [`import`]: `graygate import`: bulk-loads a list into a store.
//! - [`api`]: the admin API's wire vocabulary (request and answer bodies, error codes, the
//!   revision rule, the paths), shared by the admin server and `graygate ctl`.
//! - [`admin`]: the control plane: an HTTP API (own listener, bearer tokens) to change the policy
//!   live, run a rollout step by step, explain a decision, and undo.
//! - [`cli`]: `graygate ctl`: one subcommand per admin endpoint, for people and scripts.
//! - [`upgrade`]: the zero-downtime upgrade (SIGUSR2): the listening sockets and the embedded
//!   store handed to a new process, which serves before the old one stops; the systemd notify
//!   protocol.
//! - [`demo`]: `graygate demo`: built-in backends and an example policy on the embedded store;
//!   `graygate demo rollout [--failing]` walks through a whole rollout, promoted or aborted.
//! - `mutate` (tests only): generated bad input for the property tests: valid configs, policies,
//!   JSON bodies and request heads taken apart, and random bytes.

pub mod admin;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod gateway;
pub mod import;
#[cfg(test)]
pub(crate) mod mutate;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod rollout;
pub mod store;
pub mod upgrade;
