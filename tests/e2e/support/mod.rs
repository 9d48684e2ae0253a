//! What the end-to-end tests are written with: builders that start the real `graygate` binary,
//! real backends (the demo's [`Backend`]), real `redis-server` and `memcached`, and clients, all
//! on 127.0.0.1 port 0, each stopped by a guard's `Drop`.
//!
//! - [`gateway`]: `gateway().upstream(..).service(..).route(..).store(..).start().await`, over the
//!   crate's own config and policy types, written with the TOML serializer;
//! - [`policy`]: `service("web").rule("beta", "canary", header("X-Env").equals("beta"))`;
//! - [`eventually`]: the one way to wait, with a patience multiplier from the environment;
//! - [`servers`]: Redis, memcached, nginx as a backend that can be killed and restarted, and a
//!   server that never answers;
//! - [`client`] and [`ctl`]: HTTP to the data plane and the admin API, and `graygate ctl`;
//! - [`raw`]: HTTP/1.1 as bytes: a client and upstreams that write exactly what a test gives.
//! - [`mutate`]: generated bad input (valid input taken apart), shared with the library's
//!   property tests;
//! - [`tls`]: a CA of the test's own, leaf certificates, a TLS client that trusts them;
//! - [`h2raw`]: HTTP/2 frames written by hand, for the flood limits;
//! - [`backends`]: TLS, h2 and h2c backends and the test PKI they use;
//! - [`grpc`]: a tonic gRPC echo service and its client;
//! - [`browser`]: headless Chromium over WebDriver, for the dashboard.

pub mod backends;
pub mod browser;
pub mod client;
pub mod ctl;
pub mod eventually;
pub mod gateway;
pub mod grpc;
pub mod h2raw;
// The library's generators of bad input (`src/mutate.rs`, test-only there, so not reachable as
// `graygate::mutate`): the same edits for request heads as for configs and bodies. Only the byte
// edits are used here.
#[allow(dead_code)]
#[path = "../../../src/mutate.rs"]
pub mod mutate;
pub mod policy;
pub mod raw;
pub mod servers;
pub mod tls;

/// The admin token the tests that need authentication configure (and `ctl` sends).
pub const TOKEN: &str = "alice-token-0123456789";

pub use backends::{h2c_backend, h2c_client, tls_backend, Pki, TlsBackend};
pub use browser::Browser;
pub use client::{Client, Reply};
pub use ctl::{Admin, Ctl};
pub use eventually::{equals, eventually, patient};
pub use gateway::{
    binary, check, dead_addr, gateway, import, run_until_exit, stable_gateway, web_gateway, Exited,
    Gateway, GatewayBuilder, Imported,
};
pub use graygate::config::file::UpstreamFile;
pub use graygate::demo::Backend;
pub use grpc::{EchoClient, GrpcEcho};
pub use policy::*;
pub use servers::{
    memcached_store, redis_store, sockets_toward, HangingServer, Kind, MemcachedServer,
    NginxBackend, RedisServer, Server,
};
pub use servers::{RedisCluster, SentinelSet};

/// Starts a backend answering as `name`.
pub async fn backend(name: &str) -> Backend {
    Backend::start(name).await.expect("start a backend")
}

/// Writes `text` to the file `name` in `dir`; its path.
pub fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// The value of one series in Prometheus text, e.g.
/// `metric(&text, r#"graygate_requests_total{route="web",status_class="2xx",version="stable"}"#)`.
/// Labels are written in the order the exporter sorts them (by name). `None`: no such series.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().expect("a number"))
}

/// Runs a client tool of the tests (`curl`, `openssl`, `h2load`) to its end with `stdin` closed;
/// a tool that is not installed fails the test, naming the Debian package (`.ci/run` installs
/// them).
pub async fn run_tool(program: &str, args: &[&str]) -> std::process::Output {
    let package = match program {
        "h2load" => "nghttp2-client",
        other => other,
    };
    let run = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(patient(std::time::Duration::from_secs(60)), run).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("cannot run {program} (apt-get install {package}): {e}"),
        Err(_) => panic!("{program} {args:?} did not finish in time"),
    }
}
