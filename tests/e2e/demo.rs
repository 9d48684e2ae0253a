//! `graygate demo`: every curl command it prints reaches the version it says, run with the real
//! `curl`, and Ctrl-C (SIGINT) stops it cleanly. `graygate demo rollout` promotes a healthy
//! canary step by step, and `--failing` aborts a canary that fails 10% of its requests in under a
//! minute, each saying why and exiting 0.

use crate::support::{binary, eventually, patient};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_printed_curl_reaches_the_version_it_names() {
    let mut child = Command::new(binary())
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let stdout = child.stdout.take().unwrap();
    let mut child = Kill(child);

    let mut commands = Vec::new();
    let mut ctls = Vec::new();
    let mut dashboard = None;
    let mut cookie_cmd = None;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("demo output");
        if let Some((url, token)) = line.trim().split_once("    sign in with the token ") {
            dashboard = Some((url.to_string(), token.to_string()));
        }
        if line.contains("| grep -i set-cookie") {
            cookie_cmd = Some(line.trim().to_string());
        }
        if line.contains(" ctl --addr ") {
            ctls.push(line.trim().to_string());
        }
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
    // An anonymous visitor's first answer sets the bucket cookie.
    let cookie_cmd = cookie_cmd.expect("the demo shows the bucket cookie");
    let out = Command::new("sh")
        .arg("-c")
        .arg(cookie_cmd.replace("curl -s -i", "curl -s -m 5 -i"))
        .output()
        .expect("run curl");
    let set = String::from_utf8_lossy(&out.stdout);
    assert!(
        set.to_ascii_lowercase()
            .starts_with("set-cookie: graygate_bucket=")
            && set.contains("Max-Age=86400; Path=/; HttpOnly; SameSite=Lax"),
        "`{cookie_cmd}`: {set}"
    );

    // The dashboard it prints answers, and the sign-in it prints works.
    let (url, token) = dashboard.expect("the demo prints the dashboard and a sign-in");
    let sh = |cmd: String| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .output()
            .expect("run sh");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, page) = sh(format!("curl -s -m 5 {url}"));
    assert!(ok && page.contains("<html"), "{url}: {page}");
    let api = url.trim_end_matches("/ui/");
    let (ok, signed) = sh(format!(
        "curl -s -m 5 -H 'Content-Type: application/json' -d '{{\"token\":\"{token}\"}}' {api}/v1/session"
    ));
    assert!(ok && signed.contains("\"name\":\"demo\""), "{signed}");
    // The ctl commands it prints run as printed (their token is this run's).
    let status = ctls
        .iter()
        .find(|c| c.ends_with(" status"))
        .unwrap_or_else(|| panic!("a ctl status line: {ctls:?}"));
    let (ok, out) = sh(status.clone());
    assert!(ok && out.contains("web"), "`{status}`: {out}");
    // Its own traffic moves both versions' figures on the dashboard.
    eventually("the demo's own traffic reaches both versions", async || {
        let (_, history) = sh(format!(
            "curl -s -m 5 -H 'Authorization: Bearer {token}' {api}/v1/live/history"
        ));
        let history: serde_json::Value =
            serde_json::from_str(&history).map_err(|e| e.to_string())?;
        let last = history["samples"]
            .as_array()
            .and_then(|s| s.last())
            .cloned()
            .unwrap_or_default();
        let moving = last["services"][0]["versions"]
            .as_array()
            .is_some_and(|vs| vs.len() == 2 && vs.iter().all(|v| v["rps"].as_f64() > Some(0.0)));
        moving.then_some(()).ok_or(last.to_string())
    })
    .within(patient(Duration::from_secs(10)))
    .await;

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

/// A rollout walkthrough run as a process to its end: its output and how long it took.
struct Walkthrough {
    /// Standard output, line by line.
    lines: Vec<String>,
    status: std::process::ExitStatus,
    took: Duration,
}

impl Walkthrough {
    /// The output, for failure messages.
    fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The lines that contain `part`.
    fn with(&self, part: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| l.contains(part))
            .map(String::as_str)
            .collect()
    }

    /// The seconds of the last line, `graygate demo rollout...: <outcome> in 23.4s, as expected`.
    fn seconds(&self, outcome: &str) -> f64 {
        let last = self.lines.last().map_or("", String::as_str);
        let (_, rest) = last
            .split_once(&format!("{outcome} in "))
            .unwrap_or_else(|| panic!("no `{outcome} in` in the last line:\n{}", self.text()));
        rest.split_once("s, as expected")
            .and_then(|(s, _)| s.parse().ok())
            .unwrap_or_else(|| panic!("no seconds in the last line:\n{}", self.text()))
    }
}

/// Kills the child when the test ends, however it ends.
struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `graygate demo rollout <args>`; its stdout lines go to the returned channel (and to
/// the test's output, shown when it fails).
fn start_walkthrough(args: &[&str]) -> (Kill, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(binary())
        .args(["demo", "rollout"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the walkthrough");
    let stdout = child.stdout.take().unwrap();
    let (send, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if send.send(line).is_err() {
                break;
            }
        }
    });
    (Kill(child), lines)
}

/// Runs `graygate demo rollout <args>` to its end, within `limit`.
async fn walkthrough(args: &[&str], limit: Duration) -> Walkthrough {
    let started = Instant::now();
    let (mut child, lines) = start_walkthrough(args);
    let status = eventually(
        format!("`graygate demo rollout {}` ends", args.join(" ")),
        async || match child.0.try_wait() {
            Ok(Some(status)) => Ok(status),
            other => Err(other),
        },
    )
    .within(limit)
    .await;
    let took = started.elapsed();
    Walkthrough {
        // The reader ends with the output: the process is gone.
        lines: lines.iter().collect(),
        status,
        took,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_healthy_rollout_walkthrough_promotes_step_by_step() {
    let run = walkthrough(&[], patient(Duration::from_secs(120))).await;
    assert!(run.status.success(), "exit {}:\n{}", run.status, run.text());

    // The four steps of the default plan, in order, each after the verdicts that allowed it.
    let steps = run.with(": canary on ");
    let weights: Vec<&str> = steps
        .iter()
        .filter_map(|l| l.split(": canary on ").nth(1)?.split(' ').next())
        .collect();
    assert_eq!(weights, ["5%", "25%", "50%", "100%"], "{}", run.text());
    for (i, step) in steps.iter().enumerate() {
        assert!(step.contains(&format!("step {}/4", i + 1)), "{step}");
        if i > 0 {
            assert!(step.contains("passing window"), "{step}");
            assert!(step.contains("vs stable 0.0% (0/"), "{step}");
        }
    }
    assert_eq!(run.with("promoted: canary is the stable version").len(), 1);
    assert_eq!(
        run.with("guard passed").len(),
        2,
        "the line and ctl's status"
    );
    assert!(run.with("ABORTED").is_empty(), "{}", run.text());

    // After the promote everyone is on the canary, and no request failed at any weight move.
    let after = run.with("After the promote: ");
    assert!(
        after[0].contains(": stable answered 0 (0 failed), canary ")
            && after[0].ends_with(" (0 failed)")
            && !after[0].contains("canary 0 "),
        "{}",
        after[0]
    );
    let all = run.with("All traffic: ")[0];
    assert!(
        all.contains("(0 failed), canary ") && all.ends_with(" (0 failed)"),
        "{all}"
    );

    // The rollout was started with ctl and the printed plan, and its status printed by ctl.
    let plan = run.with("The plan, in ")[0];
    let plan = plan
        .strip_prefix("The plan, in ")
        .and_then(|p| p.strip_suffix(':'))
        .unwrap_or_else(|| panic!("{plan}"));
    assert_eq!(
        run.with("ctl --addr http://127.0.0.1:")
            .iter()
            .map(|l| l.split_once(" rollout ").map_or("", |(_, rest)| rest))
            .collect::<Vec<_>>(),
        [
            format!("start --service web --plan {plan}"),
            "status --service web".to_string()
        ]
    );
    assert_eq!(run.with("  steps = [5, 25, 50, 100]").len(), 1);
    assert_eq!(
        run.with("web: canary promoted at step 4/4 (100%): promoted canary: guard passed")
            .len(),
        1,
        "{}",
        run.text()
    );
    let seconds = run.seconds("promoted");
    assert!(seconds < 120.0, "promoted in {seconds}s");
    assert!(
        run.took < patient(Duration::from_secs(120)),
        "{:?}",
        run.took
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failing_rollout_walkthrough_aborts_in_under_a_minute() {
    let run = walkthrough(&["--failing"], patient(Duration::from_secs(75))).await;
    assert!(run.status.success(), "exit {}:\n{}", run.status, run.text());

    // Aborted at the first step, with the verdict that says why.
    let aborted = run.with("ABORTED");
    assert_eq!(aborted.len(), 1, "{}", run.text());
    let line = aborted[0];
    assert!(
        line.contains("ABORTED at step 1/4 (5%), everyone back on stable: canary 5xx ")
            && line.contains(" vs stable 0.0% (0/")
            && line.contains(": FAIL")
            && line.ends_with("(2 failing windows in a row)"),
        "{line}"
    );
    assert_eq!(
        run.with("failing window 1 of 2 at step 1/4: canary 5xx ")
            .len(),
        1
    );
    assert_eq!(
        run.with(": canary on ").len(),
        1,
        "never past the first step"
    );

    // From then on every request goes to stable; stable never failed.
    let after = run.with("After the abort: ")[0];
    assert!(
        after.contains("(0 failed), canary 0 (0 failed)") && !after.contains("answered 0 "),
        "{after}"
    );
    let all = run.with("All traffic: ")[0];
    assert!(
        all.contains(": stable answered ") && all.contains(" (0 failed), canary "),
        "{all}"
    );
    assert!(
        !all.contains("canary 0 "),
        "the canary answered some: {all}"
    );

    // ctl's status says so too.
    assert_eq!(
        run.with("web: canary aborted at step 1/4 (0%): aborted: canary 5xx ")
            .len(),
        1,
        "{}",
        run.text()
    );
    let seconds = run.seconds("aborted (the canary failed 10% of its requests)");
    assert!(seconds < 60.0, "aborted in {seconds}s");
    assert!(
        run.took < patient(Duration::from_secs(60)),
        "{:?}",
        run.took
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walkthrough_stopped_early_says_so_and_fails() {
    let (mut child, lines) = start_walkthrough(&[]);
    eventually("the rollout has started", async || match lines.try_recv() {
        Ok(line) if line.contains("step 1/4: canary on 5%") => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .within(Duration::from_secs(30))
    .await;
    let status = Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = eventually("the walkthrough stops on SIGINT", async || {
        match child.0.try_wait() {
            Ok(Some(status)) => Ok(status),
            other => Err(other),
        }
    })
    .await;
    assert_eq!(exit.code(), Some(1), "{exit}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.ends_with("graygate: demo rollout: stopped before the rollout ended\n"),
        "{stderr}"
    );
}

#[test]
fn a_walkthrough_takes_no_listen_address() {
    let out = Command::new(binary())
        .args(["demo", "--listen", "127.0.0.1:0", "rollout"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the subcommand 'rollout' cannot be used with '--listen <LISTEN>'"),
        "{stderr}"
    );
}
