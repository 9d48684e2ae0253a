//! What graygate writes to stderr when it cannot start: the OS error said once, the listener
//! that could not bind named, no colour codes in a log that is not a terminal, and JSON lines
//! when `[log] format = "json"`.
//!
//! Each test runs the real binary (`graygate run`) until it exits by itself, with a deadline: a
//! graygate that started after all is killed.

use crate::support::*;
use graygate::config::file::HealthFile;
use std::net::{SocketAddr, TcpListener};

/// A policy and a health-checked upstream that is down, so that starting logs something (the
/// failed first health check) before the listeners bind. The policy is not seeded then: a start
/// that fails writes nothing to the store.
fn seeded() -> GatewayBuilder {
    let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    gateway()
        .upstream("stable", nowhere)
        .health("stable", Some(HealthFile::default()))
        .route(route("web"))
        .service(service("web").stable("v1", "stable"))
}

/// Runs graygate on the config `config(addr)` while `addr` is taken: it must exit with 1. The
/// address and stderr.
async fn run_on_a_taken_port(
    config: impl Fn(SocketAddr) -> GatewayBuilder,
) -> (SocketAddr, String) {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let exited = run_until_exit(&config(addr).write(dir.path())).await;
    assert_eq!(exited.code, 1, "{}", exited.stderr);
    (addr, exited.stderr)
}

/// The last line: the error graygate exits with.
fn error_line(stderr: &str) -> &str {
    stderr.lines().last().unwrap_or_default()
}

#[tokio::test]
async fn an_os_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let Exited { code, stderr } = run_until_exit(&missing).await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        error_line(&stderr),
        format!(
            "graygate: {}: cannot read: No such file or directory (os error 2)",
            missing.display()
        )
    );
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
}

#[tokio::test]
async fn a_bind_error_names_the_data_plane_listener_and_the_log_has_no_colour() {
    let (addr, stderr) = run_on_a_taken_port(|addr| seeded().listen(addr)).await;
    let line = error_line(&stderr);
    assert!(
        line.starts_with(&format!("graygate: data plane listen {addr}: ")),
        "{stderr}"
    );
    assert!(line.ends_with("(os error 98)"), "{stderr}");
    // Once in the line; the failed health check logged before it has its own (refused).
    assert_eq!(stderr.matches("os error 98").count(), 1, "{stderr}");
    // The health check was logged before the bind failed, without escape codes: stderr is a
    // pipe here, not a terminal.
    assert!(stderr.contains("upstream server is down"), "{stderr}");
    assert!(!stderr.contains("policy applied"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes in {stderr:?}");
}

/// The admin and metrics listeners bind besides a data plane on a free port.
#[tokio::test]
async fn a_bind_error_names_the_admin_and_the_metrics_listener() {
    let (addr, stderr) =
        run_on_a_taken_port(|addr| gateway().admin_listen(&addr.to_string())).await;
    assert!(
        error_line(&stderr).starts_with(&format!("graygate: admin listen {addr}: ")),
        "{stderr}"
    );
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");

    let (addr, stderr) = run_on_a_taken_port(|addr| gateway().metrics_listen(addr)).await;
    assert!(
        error_line(&stderr).starts_with(&format!("graygate: metrics listen {addr}: ")),
        "{stderr}"
    );
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_message() {
    let (addr, stderr) = run_on_a_taken_port(|addr| seeded().listen(addr).log_format("json")).await;
    let messages: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.starts_with("graygate: "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let down = messages
        .iter()
        .find(|m| m["fields"]["message"] == "upstream server is down")
        .unwrap_or_else(|| panic!("no `upstream server is down` in {stderr}"));
    assert_eq!(down["level"], "WARN");
    assert_eq!(down["fields"]["upstream"], "stable");
    assert!(!stderr.contains('\u{1b}'), "colour codes in {stderr:?}");
    // The error graygate exits with stays a plain line.
    assert!(
        error_line(&stderr).starts_with(&format!("graygate: data plane listen {addr}: ")),
        "{stderr}"
    );
}

/// A start that cannot bind a listener writes nothing to the store: the next start, with another
/// policy in its config, finds the store empty and seeds its own as revision 1.
#[tokio::test]
async fn a_start_that_cannot_bind_writes_no_policy_to_the_store() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("graygate-e2e")
        .tempdir()
        .unwrap()
        .keep();
    let exited = run_until_exit(&seeded().listen(addr).write(&dir)).await;
    assert_eq!(exited.code, 1, "{}", exited.stderr);
    assert!(
        error_line(&exited.stderr).starts_with(&format!("graygate: data plane listen {addr}: ")),
        "{}",
        exited.stderr
    );
    assert!(
        !exited.stderr.contains("policy applied"),
        "{}",
        exited.stderr
    );

    let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let good = gateway()
        .admin()
        .upstream("stable", nowhere)
        .route(route("api"))
        .service(service("api").stable("v1", "stable"))
        .start_in(dir)
        .await;
    let mut admin = good.admin_api();
    assert_eq!(admin.revision().await, 1);
    let policy = admin.get("/v1/policy").await;
    assert!(policy.to_string().contains("\"api\""), "{policy}");
    assert!(!policy.to_string().contains("\"web\""), "{policy}");
    let history = admin.get("/v1/history").await;
    assert_eq!(history["entries"].as_array().unwrap().len(), 1, "{history}");
}
