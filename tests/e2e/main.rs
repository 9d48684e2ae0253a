//! graygate end to end: the real binary between real clients and real backends, with real
//! `redis-server` and `memcached`, everything on 127.0.0.1 port 0.
//!
//! One test binary, one module per area:
//! - [`routing`]: every matcher, sticky splits across a restart, client IPs, policy swaps under
//!   load, dead upstreams, large bodies, WebSocket;
//! - [`edge`]: the strict edge as raw bytes: refused requests, canonical paths and hosts, the
//!   closed h2c tunnel, body framing and body timeouts in both directions;
//! - [`health`]: health checks, passive ejection and retries: backends killed and restarted
//!   under load with no failed request;
//! - [`observe`]: metrics and the access log account for every request;
//! - [`logs`]: what graygate writes to stderr when it cannot start;
//! - [`admin`]: the admin API refuses bad input naming the field, revisions, tokens, explain, ctl;
//! - [`ctl_honest`]: `graygate ctl` refuses what is not a graygate admin API, closed pipes, bad
//!   weights, and names the line of a TOML document's errors;
//! - [`rollout`]: a whole rollout by hand through `graygate ctl`, on each store, and hand-made
//!   steps during an automatic rollout;
//! - [`live`]: the live-change model: no empty revisions, promote and rollback keep the original
//!   designs' routing, SIGHUP and `ctl reload` never undo runtime changes;
//! - [`original_layouts`]: the nginx + memcached and OpenResty + Redis designs' data, outages
//!   under load, two instances on one Redis;
//! - [`stores`]: the store contract every store runs, and what only one store does;
//! - [`check`]: `graygate check` names the file, line and field of every bad config;
//! - [`tls`]: TLS termination with real clients (curl, openssl, a rustls client): SNI, ALPN,
//!   certificate rotation under load, the redirect to HTTPS, `graygate check` of certificates;
//! - [`http2`]: HTTP/2 to clients: curl, h2load, the policy per stream, the flood limits;
//! - [`demo`]: `graygate demo` does what it prints;
//! - [`docs`]: the documented `graygate ctl` sequences print what the documents show;
//! - [`doc_figures`]: the figures and defaults `docs/rollouts.md` and `docs/config.md` state are
//!   what the code computes;
//! - [`upstream_tls`]: `https://` upstreams: CA, system roots, SNI, client certificates, a
//!   certificate that fails verification;
//! - [`upstream_h2`]: `h2` and `h2c` upstreams: the request's shape on the way, bodies and
//!   trailers on the way back;
//! - [`grpc`]: a tonic client and tonic servers through graygate, unary and streaming, the version
//!   chosen by metadata.
//!
//! [`support`] holds the builders. Waits are bounded; a slow machine stretches every bound with
//! `GRAYGATE_TEST_PATIENCE=<factor>` (default 1).

mod admin;
mod check;
mod ctl_honest;
mod demo;
mod doc_figures;
mod docs;
mod edge;
mod grpc;
mod health;
mod history;
mod http2;
mod import;
mod lifecycle;
mod live;
mod logs;
mod observe;
mod original_layouts;
mod rollout;
mod rollouts;
mod routing;
mod stores;
mod support;
mod tls;
mod upstream_h2;
mod upstream_tls;
