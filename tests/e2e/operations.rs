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
