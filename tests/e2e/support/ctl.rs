//! Runs the real `graygate ctl` against a gateway's admin API, and calls the admin API directly.

use super::gateway::binary;
use super::{Client, Reply};
use bytes::Bytes;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

/// What a `graygate ctl` run printed and how it exited.
#[derive(Debug)]
pub struct CtlRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `graygate ctl` pointed at one admin API with one token.
pub struct Ctl {
    addr: SocketAddr,
    token: Option<String>,
}

impl Ctl {
    pub fn new(addr: SocketAddr, token: Option<&str>) -> Ctl {
        Ctl {
            addr,
            token: token.map(str::to_string),
        }
    }

    /// `graygate ctl <args>` with the address and token in its environment, as a shell user
    /// sets them.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.arg("ctl")
            .args(args)
            .env("GRAYGATE_ADMIN", format!("http://{}", self.addr))
            .env_remove("GRAYGATE_TOKEN");
        if let Some(token) = &self.token {
            cmd.env("GRAYGATE_TOKEN", token);
        }
        cmd
    }

    /// Runs `graygate ctl <args>` (address and token through the environment). Blocks the
    /// calling runtime thread only (the gateway is another process).
    pub fn run(&self, args: &[&str]) -> CtlRun {
        self.run_with_input(args, None)
    }

    /// [`Ctl::run`] with `input` on its stdin (none: stdin is empty).
    pub fn run_with_input(&self, args: &[&str], input: Option<&str>) -> CtlRun {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = tokio::task::block_in_place(|| {
            let mut child = cmd.spawn()?;
            let mut stdin = child.stdin.take().expect("a piped stdin");
            // Written from a thread, so that a ctl that does not read it cannot block us.
            let input = input.unwrap_or_default().to_string();
            let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
            let out = child.wait_with_output();
            let _ = writer.join();
            out
        })
        .expect("run graygate ctl");
        CtlRun {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `graygate ctl <first> | graygate ctl <second>`: the first's stdout is the second's stdin.
    /// Both must exit 0; the second's run.
    pub fn pipe(&self, first: &[&str], second: &[&str]) -> CtlRun {
        let out = self.ok(first);
        let run = self.run_with_input(second, Some(&out));
        assert_eq!(
            run.code, 0,
            "graygate ctl {first:?} | graygate ctl {second:?}: {run:?}"
        );
        run
    }

    /// Runs and asserts exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(run.code, 0, "graygate ctl {args:?}: {run:?}");
        run.stdout
    }

    /// Runs with `--json`, asserts exit 0, and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("ctl {args:?} printed no JSON ({e}): {out}"))
    }
}

/// The admin API over HTTP, with an optional bearer token.
pub struct Admin {
    client: Client,
    /// Sent as `Host`, as every client of the admin API does (a browser, ctl, curl).
    authority: String,
    token: Option<String>,
}

impl Admin {
    pub fn new(addr: SocketAddr, token: Option<&str>) -> Admin {
        Admin {
            client: Client::new(addr),
            authority: addr.to_string(),
            token: token.map(str::to_string),
        }
    }

    /// Sends `method path` with `body` and extra `headers`; returns the reply and its body as
    /// JSON (`Null` when it is not JSON).
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (Reply, serde_json::Value) {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !all.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            all.push(("host", &self.authority));
        }
        if let Some(auth) = &auth {
            all.push(("authorization", auth));
        }
        if !body.is_empty() {
            all.push(("content-type", "application/json"));
        }
        let reply = self
            .client
            .request(method, path, &all, Bytes::from(body.to_string()))
            .await;
        let json = serde_json::from_str(&reply.body).unwrap_or(serde_json::Value::Null);
        (reply, json)
    }

    /// GET and expect 200; the JSON.
    pub async fn get(&mut self, path: &str) -> serde_json::Value {
        let (reply, json) = self.send("GET", path, &[], "").await;
        assert_eq!(reply.status, 200, "GET {path}: {reply:?}");
        json
    }

    /// `POST /v1/explain` of `request` and expect 200; the decision as JSON.
    pub async fn explain(&mut self, request: &str) -> serde_json::Value {
        let (reply, json) = self.send("POST", "/v1/explain", &[], request).await;
        assert_eq!(reply.status, 200, "POST /v1/explain {request}: {reply:?}");
        json
    }

    /// The policy's revision, from the ETag of `GET /v1/policy`.
    pub async fn revision(&mut self) -> u64 {
        let (reply, _) = self.send("GET", "/v1/policy", &[], "").await;
        assert_eq!(reply.status, 200, "GET /v1/policy: {reply:?}");
        reply.headers["etag"]
            .to_str()
            .ok()
            .and_then(|etag| etag.trim_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("an ETag with a revision: {reply:?}"))
    }
}
