//! graygate end to end: the real binary between real clients and real backends, with real
//! `redis-server` and `memcached`, everything on 127.0.0.1 port 0.
//!
//! One test binary, one module per area:
//! - [`upgrade`]: SIGUSR2 under load: the new process takes the sockets and the embedded store
//!   with no refused or failed request and no acknowledged change lost; a failed upgrade leaves
//!   the old process serving and writable;
//! - [`routing`]: every matcher, sticky splits across a restart, client IPs, policy swaps under
//!   load, dead upstreams, large bodies, WebSocket;
//! - [`edge`]: the strict edge as raw bytes: refused requests, canonical paths and hosts, the
//!   closed h2c tunnel, body framing and body timeouts in both directions;
//! - [`health`]: health checks, passive ejection and retries: backends killed and restarted
//!   under load with no failed request;
//! - [`observe`]: metrics and the access log account for every request;
//! - [`mirror`]: traffic mirroring: copies marked and fire and forget, a hanging mirror under
//!   load adds no latency and holds at most its cap, the comparison of the two answers;
//! - [`connections`]: connection limits on every listener, the admin port flooded with slow
//!   requests, running out of file descriptors;
//! - [`logs`]: what graygate writes to stderr when it cannot start;
//! - [`operations`]: graygate as a service: log rotation with SIGUSR1, the shipped systemd unit,
//!   its example config and the signals it sends;
//! - [`admin`]: the admin API refuses bad input naming the field, revisions, tokens, explain, ctl;
//! - [`ctl_honest`]: `graygate ctl` refuses what is not a graygate admin API, closed pipes, bad
//!   weights, and names the line of a TOML document's errors;
//! - [`rollout`]: a whole rollout by hand through `graygate ctl`, on each store, and hand-made
//!   steps during an automatic rollout;
//! - [`live`]: the live-change model: no empty revisions, promote and rollback keep the original
//!   designs' routing, SIGHUP and `ctl reload` never undo runtime changes;
//! - [`original_layouts`]: the nginx + memcached and OpenResty + Redis designs' data, outages
//!   under load, two instances on one Redis;
//! - [`key_escape`]: memcached keys escaped as the original's client escapes them (IPv6
//!   clients, a multi-hop `X-Forwarded-For`), read and written byte for byte;
//! - [`stores`]: the store contract every store runs, and what only one store does;
//! - [`sentinel`]: Redis Sentinel: the primary killed under load with three instances, no
//!   failed request, writes back on the new primary, changes and lookups everywhere;
//! - [`cluster`]: a Redis Cluster of three primaries: both original layouts across slots and
//!   nodes, graygate's keys under one hash tag, changes everywhere;
//! - [`store_limits`]: a Redis or memcached paused under load is reported degraded within a
//!   second, holds few sockets and recovers by itself; 16 KB identities and the cache's byte bound;
//! - [`check`]: `graygate check` names the file, line and field of every bad config;
//! - [`tls`]: TLS termination with real clients (curl, openssl, a rustls client): SNI, ALPN,
//!   certificate rotation under load, the redirect to HTTPS, `graygate check` of certificates;
//! - [`http2`]: HTTP/2 to clients: curl, h2load, the policy per stream, the flood limits;
//! - [`dashboard_api`]: what the dashboard stands on over HTTP: the page, sessions, live figures;
//! - [`dashboard`]: the dashboard in headless Chromium: sign-in, live figures under traffic, a
//!   rollout aborted on screen, gray lists, undo, a cross-origin form refused;
//! - [`demo`]: `graygate demo` does what it prints;
//! - [`docs`]: the documented `graygate ctl` sequences print what the documents show;
//! - [`doc_figures`]: the figures and defaults `docs/rollouts.md` and `docs/config.md` state are
//!   what the code computes;
//! - [`upstream_tls`]: `https://` upstreams: CA, system roots, SNI, client certificates, a
//!   certificate that fails verification;
//! - [`upstream_h2`]: `h2` and `h2c` upstreams: the request's shape on the way, bodies and
//!   trailers on the way back;
//! - [`grpc`]: a tonic client and tonic servers through graygate, unary and streaming, the version
//!   chosen by metadata;
//! - [`shared_upstreams`]: upstreams in the shared policy: two instances on one Redis follow a
//!   server added, drained or weighted through either; a revision one cannot build leaves it on
//!   its old policy;
//! - [`workers`]: `workers = 2`: both workers serve (plain and TLS), a policy change and a new
//!   certificate reach both, an upgrade hands every worker's socket over, a second graygate on
//!   the same port is refused;
//! - [`generated`]: generated request heads (valid ones taken apart, random bytes) against a
//!   running graygate: each is answered with a status line or closed within the timeouts.
//!
//! [`support`] holds the builders. Waits are bounded; a slow machine stretches every bound with
//! `GRAYGATE_TEST_PATIENCE=<factor>` (default 1).

mod admin;
mod anonymous;
mod check;
mod cluster;
mod connections;
mod ctl_honest;
mod dashboard;
mod dashboard_api;
mod demo;
mod deploy_fleet;
mod doc_figures;
mod docs;
mod edge;
mod fleet;
mod generated;
mod grpc;
mod health;
mod history;
mod http2;
mod import;
mod key_escape;
mod lifecycle;
mod live;
mod logs;
mod mirror;
mod observe;
mod operations;
mod original_layouts;
mod rollout;
mod rollouts;
mod routing;
mod sentinel;
mod shared_upstreams;
mod store_limits;
mod stores;
mod support;
mod testers;
mod tls;
mod upgrade;
mod upstream_h2;
mod upstream_tls;
mod workers;
