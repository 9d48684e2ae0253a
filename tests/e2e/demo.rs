//! `graygate demo`: every curl command it prints reaches the version it says, run with the real
//! `curl`, and Ctrl-C (SIGINT) stops it cleanly.

use crate::support::{binary, eventually};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_printed_curl_reaches_the_version_it_names() {
    let mut child = Command::new(binary())
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut child = Kill(child);

    let mut commands = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("demo output");
        if let Some((cmd, rest)) = line.trim().split_once("    # -> ") {
            let want = rest.split_whitespace().next().unwrap().to_string();
            commands.push((cmd.to_string(), want));
        }
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    assert!(
        commands.len() >= 6,
        "the demo prints its tour: {commands:?}"
    );
    for (cmd, want) in &commands {
        assert!(cmd.starts_with("curl -s "), "{cmd}");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{cmd} -m 5"))
            .output()
            .expect("run curl");
        let got = String::from_utf8_lossy(&out.stdout);
        assert_eq!(got.trim(), want, "`{cmd}`");
    }
    assert!(
        commands.iter().any(|(_, v)| v == "canary") && commands.iter().any(|(_, v)| v == "stable")
    );

    // Ctrl-C: a clean stop.
    let status = Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = eventually("the demo stops on SIGINT", async || {
        match child.0.try_wait() {
            Ok(Some(status)) => Ok(status),
            other => Err(other),
        }
    })
    .await;
    assert!(exit.success(), "demo exit status {exit}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("stopping")), "{rest:?}");
}
