//! What graygate writes to stderr when it cannot start: the OS error said once, the listener
//! that could not bind named, no colour codes in a log that is not a terminal, and JSON lines
//! when `[log] format = "json"`.
//!
//! Each test runs the real binary (`graygate run`) on a config in a temporary directory and
//! waits for it to exit, with a deadline: a graygate that started after all is killed.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a graygate that should fail at start may take to exit.
const DEADLINE: Duration = Duration::from_secs(30);

/// A policy and an upstream, so that starting logs something (the seeded policy) before the
/// listeners bind.
const SEEDED: &str = "[[upstreams]]\nname = \"stable\"\nservers = [\"127.0.0.1:9\"]\n\
    [policy]\n[[policy.routes]]\nservice = \"web\"\n\
    [[policy.services]]\nname = \"web\"\nstable = \"v1\"\nversions = { v1 = \"stable\" }\n";

/// Kills the child if the test ends before it exited.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `graygate run --config <path>` until it exits: its exit code and stderr.
fn run(config: &Path) -> (i32, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_graygate"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("GRAYGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("graygate starts");
    let mut child = Running(child);
    let deadline = Instant::now() + DEADLINE;
    let code = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "graygate did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.0.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr).expect("stderr");
    }
    (code, stderr)
}

/// Writes `text` as `graygate.toml` in a new temporary directory.
fn config(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("graygate.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Runs graygate on the config `text(addr)` while `addr` is taken: it must exit with 1. The
/// address and stderr.
fn run_on_a_taken_port(text: impl Fn(SocketAddr) -> String) -> (SocketAddr, String) {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (_dir, path) = config(&text(addr));
    let (code, stderr) = run(&path);
    assert_eq!(code, 1, "{stderr}");
    (addr, stderr)
}

/// The last line: the error graygate exits with.
fn error_line(stderr: &str) -> &str {
    stderr.lines().last().unwrap_or_default()
}

#[test]
fn an_os_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let (code, stderr) = run(&missing);
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

#[test]
fn a_bind_error_names_the_data_plane_listener_and_the_log_has_no_colour() {
    let (addr, stderr) = run_on_a_taken_port(|addr| format!("listen = [\"{addr}\"]\n{SEEDED}"));
    let line = error_line(&stderr);
    assert!(
        line.starts_with(&format!("graygate: data plane listen {addr}: ")),
        "{stderr}"
    );
    assert!(line.ends_with("(os error 98)"), "{stderr}");
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
    // The seeded policy was logged before the bind failed, without escape codes: stderr is a
    // pipe here, not a terminal.
    assert!(stderr.contains("policy applied"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes in {stderr:?}");
}

/// The admin and metrics listeners bind besides a data plane on a free port.
#[test]
fn a_bind_error_names_the_admin_and_the_metrics_listener() {
    for (table, listener) in [("admin", "admin"), ("metrics", "metrics")] {
        let (addr, stderr) = run_on_a_taken_port(|addr| {
            format!("listen = [\"127.0.0.1:0\"]\n[{table}]\nlisten = \"{addr}\"\n")
        });
        assert!(
            error_line(&stderr).starts_with(&format!("graygate: {listener} listen {addr}: ")),
            "{stderr}"
        );
        assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
    }
}

#[test]
fn log_format_json_writes_one_object_per_message() {
    let (addr, stderr) = run_on_a_taken_port(|addr| {
        format!("listen = [\"{addr}\"]\n{SEEDED}[log]\nformat = \"json\"\n")
    });
    let messages: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.starts_with("graygate: "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let applied = messages
        .iter()
        .find(|m| m["fields"]["message"] == "policy applied")
        .unwrap_or_else(|| panic!("no `policy applied` in {stderr}"));
    assert_eq!(applied["level"], "INFO");
    assert_eq!(applied["fields"]["revision"], 1);
    assert!(!stderr.contains('\u{1b}'), "colour codes in {stderr:?}");
    // The error graygate exits with stays a plain line.
    assert!(
        error_line(&stderr).starts_with(&format!("graygate: data plane listen {addr}: ")),
        "{stderr}"
    );
}
