//! graygate as a service: log rotation with SIGUSR1 (logrotate's `create` mode) accounts for every
//! request in exactly one of the two files, and a path that cannot be reopened keeps the old file.

use crate::support::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The `path` of every JSON line of an access log file, in order.
fn logged_paths(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            v["path"].as_str().expect("a path").to_string()
        })
        .collect()
}

/// `count` requests to `/r/<tag>-<n>` on one keep-alive connection, each answered 200; bounded
/// in count and, through the caller's timeout, in time.
async fn requests(addr: std::net::SocketAddr, tag: &str, count: usize, done: Arc<AtomicUsize>) {
    let mut c = Client::new(addr);
    for n in 0..count {
        let path = format!("/r/{tag}-{n}");
        let reply = c.get_path(&path, &[]).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// `mv access.log access.log.1; kill -USR1` while two clients send requests: every request is
/// logged exactly once across the two files, and the requests sent once the reopen is done are
/// all in the new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_after_a_rename_logs_every_request_in_exactly_one_file() {
    const PER_CLIENT: usize = 400;
    const AFTER: usize = 50;
    let stable = backend("stable").await;
    let mut gg = stable_gateway(&stable)
        .access_log("json", Some("access.log"))
        .start()
        .await;
    let log = gg.dir().join("access.log");
    let rotated = gg.dir().join("access.log.1");

    let done = Arc::new(AtomicUsize::new(0));
    let traffic: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|tag| {
            let (addr, done) = (gg.addr, done.clone());
            tokio::spawn(tokio::time::timeout(
                patient(Duration::from_secs(60)),
                requests(addr, tag, PER_CLIENT, done),
            ))
        })
        .collect();
    // Rotated in the middle of the traffic.
    eventually("a quarter of the requests are answered", async || {
        let n = done.load(Ordering::Relaxed);
        if n >= PER_CLIENT / 2 {
            Ok(n)
        } else {
            Err(n)
        }
    })
    .await;
    std::fs::rename(&log, &rotated).unwrap();
    let line = gg.usr1_and_wait().await;
    assert!(line.contains("SIGUSR1: access log reopened"), "{line}");
    assert!(line.contains(&log.display().to_string()), "{line}");
    for t in traffic {
        t.await
            .expect("the traffic task")
            .expect("the traffic ends in time");
    }
    // After the reopen: all of these go to the new file.
    requests(gg.addr, "after", AFTER, done.clone()).await;
    // Stopping flushes what the writer holds.
    gg.terminate().await;

    let old = logged_paths(&rotated);
    let new = logged_paths(&log);
    assert!(
        !old.is_empty(),
        "the requests before the rename are in the old file"
    );
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for p in old.iter().chain(&new) {
        *seen.entry(p.as_str()).or_default() += 1;
    }
    let mut sent: Vec<String> = Vec::new();
    for tag in ["a", "b"] {
        sent.extend((0..PER_CLIENT).map(|n| format!("/r/{tag}-{n}")));
    }
    let after: Vec<String> = (0..AFTER).map(|n| format!("/r/after-{n}")).collect();
    sent.extend(after.iter().cloned());
    assert_eq!(
        old.len() + new.len(),
        sent.len(),
        "old {} new {}",
        old.len(),
        new.len()
    );
    for p in &sent {
        assert_eq!(seen.get(p.as_str()), Some(&1), "{p} logged once");
    }
    for p in &after {
        assert!(new.contains(p), "{p} is in the new file");
    }
}

/// A path that cannot be opened again (a directory took its place): SIGUSR1 logs one error that
/// names it, graygate keeps serving, and the lines go on to the file it had open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_be_reopened_is_reported_and_the_old_file_kept() {
    let stable = backend("stable").await;
    let mut gg = stable_gateway(&stable)
        .access_log("json", Some("access.log"))
        .start()
        .await;
    let log = gg.dir().join("access.log");
    let rotated = gg.dir().join("access.log.1");
    let done = Arc::new(AtomicUsize::new(0));
    requests(gg.addr, "before", 3, done.clone()).await;
    std::fs::rename(&log, &rotated).unwrap();
    std::fs::create_dir(&log).unwrap();
    let line = gg.usr1_and_wait().await;
    assert!(line.contains("SIGUSR1: access log not reopened"), "{line}");
    assert!(
        line.contains(&format!(
            "cannot reopen the access log {}: Is a directory (os error 21); lines still go to \
             the file it had open",
            log.display()
        )),
        "{line}"
    );
    assert!(line.contains("ERROR"), "{line}");
    requests(gg.addr, "after", 3, done.clone()).await;
    gg.terminate().await;
    let old = logged_paths(&rotated);
    assert_eq!(
        old,
        [
            "/r/before-0",
            "/r/before-1",
            "/r/before-2",
            "/r/after-0",
            "/r/after-1",
            "/r/after-2"
        ]
    );
}

/// The repository's root, where `deploy/` is.
fn repo_file(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The settings of a systemd unit file: `(key, value)` in order, comments and sections left out
/// (a key may come several times, like `ExecReload`).
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
        .map(|l| {
            let (key, value) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not a `key=value` line: {l:?}"));
            (key.trim().to_string(), value.trim().to_string())
        })
        .collect()
}

/// Every value of `key`.
fn values<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The one value of `key`.
fn value<'a>(settings: &'a [(String, String)], key: &str) -> &'a str {
    match values(settings, key).as_slice() {
        [v] => v,
        other => panic!("{key}: want one value, found {other:?}"),
    }
}

/// The shipped unit runs `graygate run --config <file>`, and that file is the shipped example
/// (`deploy/graygate.toml`, installed there): its store and access log are in the unit's
/// StateDirectory and LogsDirectory, `graygate check` accepts it once those exist (systemd makes
/// them), and the unit waits longer for a stop than the config's shutdown deadline.
#[test]
fn the_unit_runs_the_shipped_config_in_its_own_directories() {
    let unit = std::fs::read_to_string(repo_file("deploy/graygate.service")).unwrap();
    let unit = unit_settings(&unit);
    let exec_start: Vec<&str> = value(&unit, "ExecStart").split_whitespace().collect();
    let ["/usr/local/bin/graygate", "run", "--config", config] = exec_start.as_slice() else {
        panic!("ExecStart is not `graygate run --config FILE`: {exec_start:?}");
    };
    assert_eq!(*config, "/etc/graygate/graygate.toml");
    // A reload checks the same file with the same binary before it upgrades.
    assert!(
        values(&unit, "ExecReload")
            .contains(&format!("/usr/local/bin/graygate check --config {config}").as_str()),
        "{unit:?}"
    );
    assert_eq!(value(&unit, "Type"), "notify");
    assert_eq!(value(&unit, "NotifyAccess"), "all");
    assert_eq!(value(&unit, "DynamicUser"), "yes");

    let text = std::fs::read_to_string(repo_file("deploy/graygate.toml")).unwrap();
    let file: graygate::config::file::ConfigFile = toml::from_str(&text).unwrap();
    let state = format!("/var/lib/{}", value(&unit, "StateDirectory"));
    let logs = format!("/var/log/{}", value(&unit, "LogsDirectory"));
    assert_eq!(file.store.kind.as_deref(), Some("embedded"));
    assert_eq!(file.store.path.as_deref(), Some(state.as_str()));
    let access_log = file.access_log.path.as_deref().expect("an access log file");
    assert_eq!(
        Path::new(access_log).parent(),
        Some(Path::new(&logs)),
        "the access log is in LogsDirectory"
    );

    // The directories systemd makes, here in a temporary directory: then `check` accepts it.
    let dir = tempfile::tempdir().unwrap();
    let (lib, log) = (dir.path().join("lib"), dir.path().join("log"));
    std::fs::create_dir(&lib).unwrap();
    std::fs::create_dir(&log).unwrap();
    let moved = text
        .replace(
            &format!("\"{state}\""),
            &format!("{:?}", lib.display().to_string()),
        )
        .replace(&format!("\"{logs}/"), &format!("\"{}/", log.display()));
    assert_ne!(moved, text);
    let path = write_file(&dir, "graygate.toml", &moved);
    let checked = check(&path);
    assert_eq!(checked.code, 0, "{}", checked.stderr);
    assert!(checked.stdout.contains("is valid"), "{}", checked.stdout);

    let stop = value(&unit, "TimeoutStopSec");
    let stop = humantime::parse_duration(stop).unwrap_or_else(|e| panic!("{stop}: {e}"));
    let shutdown = match &file.timeouts.shutdown {
        Some(d) => humantime::parse_duration(d).unwrap(),
        None => graygate::proxy::Timeouts::default().shutdown,
    };
    assert!(
        stop > shutdown,
        "TimeoutStopSec {stop:?} must leave the shutdown deadline {shutdown:?} room"
    );
}

/// The signals the unit, the container and the logrotate snippet send: `KillSignal=`,
/// `kill -SIG` in an `Exec*=` line, `STOPSIGNAL`, `--signal=` in `postrotate`.
fn signals_sent() -> Vec<String> {
    let unit = std::fs::read_to_string(repo_file("deploy/graygate.service")).unwrap();
    let unit = unit_settings(&unit);
    let mut signals = vec![value(&unit, "KillSignal")
        .trim_start_matches("SIG")
        .to_string()];
    for (key, line) in &unit {
        if key.starts_with("Exec") {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let [kill, sig, ..] = words.as_slice() {
                if kill.ends_with("/kill") {
                    signals.push(sig.trim_start_matches('-').to_string());
                }
            }
        }
    }
    let container = std::fs::read_to_string(repo_file("Containerfile")).unwrap();
    let stop = container_instructions(&container, "STOPSIGNAL");
    signals.extend(stop.iter().map(|s| s.trim_start_matches("SIG").to_string()));
    let logrotate = std::fs::read_to_string(repo_file("deploy/logrotate")).unwrap();
    for word in logrotate.split_whitespace() {
        if let Some(sig) = word.strip_prefix("--signal=") {
            signals.push(sig.trim_start_matches("SIG").to_string());
        }
    }
    signals
}

/// The number of a signal, as `kill -l` says.
fn signal_number(name: &str) -> u32 {
    let out = std::process::Command::new("kill")
        .args(["-l", name])
        .output()
        .expect("run kill -l");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("kill -l {name}: {text:?}: {e}"))
}

/// Whether the process `pid` catches the signal `name`: its bit in `SigCgt` of
/// /proc/PID/status (a handler is installed). One it does not catch ends it instead: that is the
/// default action of HUP, INT, TERM, USR1 and USR2 alike.
fn catches(pid: u32, name: &str) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let caught = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .map(|mask| u64::from_str_radix(mask.trim(), 16).unwrap())
        .expect("a SigCgt line");
    caught & (1u64 << (signal_number(name) - 1)) != 0
}

/// As soon as graygate prints its listening lines, every signal it handles has its handler: a
/// script, a test or systemd (right after READY) may send one at once.
#[tokio::test]
async fn the_signals_graygate_handles_are_caught_once_it_says_it_listens() {
    let stable = backend("stable").await;
    let gg = stable_gateway(&stable).start().await;
    for signal in ["HUP", "INT", "TERM", "USR1"] {
        assert!(
            catches(gg.pid(), signal),
            "graygate does not catch SIG{signal}"
        );
    }
}

/// Every signal the unit and logrotate send is one a running graygate catches, as soon as it
/// says it listens.
#[tokio::test]
async fn the_signals_the_unit_and_logrotate_send_are_ones_graygate_catches() {
    let signals = signals_sent();
    assert_eq!(signals, ["TERM", "USR2", "TERM", "USR1"]);
    let stable = backend("stable").await;
    let gg = stable_gateway(&stable).start().await;
    for signal in &signals {
        assert!(
            catches(gg.pid(), signal),
            "graygate does not catch SIG{signal}, which the unit or logrotate sends"
        );
    }
}

/// The arguments of every `instruction` line of a Containerfile (continuation lines joined).
fn container_instructions(text: &str, instruction: &str) -> Vec<String> {
    text.replace("\\\n", " ")
        .lines()
        .filter_map(|l| l.trim().strip_prefix(instruction))
        .filter(|rest| rest.starts_with(' '))
        .map(|rest| rest.trim().to_string())
        .collect()
}

/// The container image runs `graygate run` with the config the Containerfile copies in
/// (`deploy/container.toml`), which `graygate check` accepts; it publishes that config's traffic
/// and metrics ports, keeps its embedded store on a volume, and runs as a non-root user.
#[test]
fn the_container_runs_the_shipped_config_with_its_ports_and_volume() {
    let text = std::fs::read_to_string(repo_file("Containerfile")).unwrap();
    let one = |instruction: &str| match container_instructions(&text, instruction).as_slice() {
        [v] => v.clone(),
        other => panic!("{instruction}: want one, found {other:?}"),
    };
    let json = |instruction: &str| -> Vec<String> {
        serde_json::from_str(&one(instruction))
            .unwrap_or_else(|e| panic!("{instruction} is not a JSON array: {e}"))
    };
    assert_eq!(json("ENTRYPOINT"), ["/usr/local/bin/graygate"]);
    let cmd = json("CMD");
    let [run, flag, config] = cmd.as_slice() else {
        panic!("CMD is not `run --config FILE`: {cmd:?}");
    };
    assert_eq!((run.as_str(), flag.as_str()), ("run", "--config"));
    let copies = container_instructions(&text, "COPY");
    assert!(
        copies.contains(&format!("deploy/container.toml {config}")),
        "the Containerfile copies deploy/container.toml to {config}: {copies:?}"
    );

    let path = repo_file("deploy/container.toml");
    let checked = check(&path);
    assert_eq!(checked.code, 0, "{}", checked.stderr);
    let file: graygate::config::file::ConfigFile =
        toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let port = |addr: &str| addr.parse::<std::net::SocketAddr>().unwrap().port();
    let mut ports: Vec<u16> = file.listen.iter().map(|a| port(a)).collect();
    ports.push(port(
        file.metrics.listen.as_deref().expect("[metrics] listen"),
    ));
    let exposed: Vec<u16> = one("EXPOSE")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(exposed, ports);
    let store = file.store.path.expect("[store] path");
    assert_eq!(json("VOLUME"), [store]);
    assert_eq!(
        file.access_log.path.as_deref(),
        Some("-"),
        "a container logs to stdout"
    );
    let user = one("USER");
    assert!(
        !user.starts_with("0") && !user.starts_with("root"),
        "USER {user}"
    );
}
