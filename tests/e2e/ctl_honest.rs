//! `graygate ctl` is honest about what it talks to and what it was given: pointed at anything but
//! a graygate admin API it exits 3 naming the address (and sends no change there); a closed
//! stdout ends it quietly; a weight that is no percentage is a usage error; a TOML document's
//! errors name the line of the user's file.

use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support::TOKEN;

/// A web service with a range rule, an admin API with one token.
async fn start() -> (Backend, Backend, Gateway) {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let gg = web_gateway(&stable, &canary)
        .admin_token("alice", TOKEN)
        .service(web().rule("beta", "canary", header("X-User-Id").range(1, 1000)))
        .start()
        .await;
    (stable, canary, gg)
}

/// An application that answers every request with 200 and the JSON a promote would get from
/// the admin API (even an ETag), and counts the requests that are not GETs. With `admin_header`
/// it also claims to be the admin API, like a graygate of another version would.
struct Impostor {
    addr: SocketAddr,
    writes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Impostor {
    async fn start(admin_header: bool) -> Impostor {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writes = Arc::new(AtomicUsize::new(0));
        let counted = writes.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        if req.method() != hyper::Method::GET {
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                        let body = r#"{"revision": 2, "service": "web", "stable": "canary", "previous_stable": "stable"}"#;
                        let mut resp = hyper::Response::builder()
                            .header("content-type", "application/json")
                            .header("etag", "\"2\"");
                        if admin_header {
                            resp = resp.header("x-graygate-admin", "0.0.1");
                        }
                        let resp = resp.body(Full::new(Bytes::from(body))).unwrap();
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Impostor { addr, writes, task }
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn not_admin(addr: SocketAddr, what: &str, status: &str) -> String {
    format!(
        "graygate ctl: http://{addr} is not a graygate admin API: its answer to {what} ({status}) \
         has no X-Graygate-Admin header. Give --addr (or GRAYGATE_ADMIN) the admin address \
         graygate prints at start (`graygate: admin on http://...`), not a traffic listener"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_pointed_at_the_traffic_port_exits_3_and_changes_nothing() {
    let (stable, canary, gg) = start().await;
    let mut admin = gg.admin_api();
    let before = admin.revision().await;

    let data_plane = Ctl::new(gg.addr, Some(TOKEN));
    let run = data_plane.run(&["promote", "-s", "web"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        not_admin(gg.addr, "GET /healthz", "200 OK"),
        "{run:?}"
    );
    assert_eq!(run.stdout, "", "nothing printed as a success");
    // Only the probe reached the application: the change itself was never sent.
    let reached = stable.requests() + canary.requests();
    assert_eq!(reached, 1);
    assert_eq!(admin.revision().await, before, "the policy did not move");

    // A read is refused the same way.
    let run = data_plane.run(&["status"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        not_admin(gg.addr, "GET /v1/status", "200 OK")
    );

    // The admin address itself still works.
    gg.ctl().ok(&["status"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_answering_like_the_admin_api_does_not_fool_ctl() {
    let app = Impostor::start(false).await;
    let ctl = Ctl::new(app.addr, Some(TOKEN));
    for args in [
        &["promote", "-s", "web"][..],
        &["weights", "set", "-s", "web", "canary=10"],
        &["--json", "rollback", "-s", "web"],
    ] {
        let run = ctl.run(args);
        assert_eq!(run.code, 3, "{args:?}: {run:?}");
        assert_eq!(
            run.stderr.trim(),
            not_admin(app.addr, "GET /healthz", "200 OK"),
            "{args:?}"
        );
    }
    assert_eq!(app.writes.load(Ordering::SeqCst), 0, "a change was sent");
    let run = ctl.run(&["history"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        not_admin(app.addr, "GET /v1/history?limit=20", "200 OK")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_ctl_cannot_read_is_exit_3_naming_what_was_asked() {
    let app = Impostor::start(true).await;
    let run = Ctl::new(app.addr, Some(TOKEN)).run(&["status"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        format!(
            "graygate ctl: the admin API at http://{} answered GET /v1/status with JSON this \
             graygate ctl does not read (is it another version of graygate?): missing field \
             `store`",
            app.addr
        )
    );
}

/// Runs `graygate ctl <args>` against `addr` with stdout a pipe nobody reads any more.
fn run_into_closed_pipe(addr: SocketAddr, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let mut cmd = Command::new(binary());
    cmd.arg("ctl")
        .args(args)
        .env("GRAYGATE_ADMIN", format!("http://{addr}"))
        .env("GRAYGATE_TOKEN", TOKEN)
        .stdout(writer);
    tokio::task::block_in_place(|| cmd.output()).expect("run graygate ctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_ctl_quietly() {
    let (_s, _c, gg) = start().await;
    for args in [
        &["status"][..],
        &["--json", "status"],
        &["history"],
        &["policy", "get"],
        &["rules", "list", "-s", "web"],
        &["weights", "set", "-s", "web", "canary=5"],
    ] {
        let out = run_into_closed_pipe(gg.admin_addr(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
    }
    // Output that cannot be written for another reason is an error.
    if std::path::Path::new("/dev/full").exists() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut cmd = Command::new(binary());
        cmd.args(["ctl", "status"])
            .env("GRAYGATE_ADMIN", format!("http://{}", gg.admin_addr()))
            .env("GRAYGATE_TOKEN", TOKEN)
            .stdout(full);
        let out = tokio::task::block_in_place(|| cmd.output()).unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            "graygate ctl: cannot write the output: No space left on device (os error 28)"
        );
    }
    // The change was made even though its summary could not be printed.
    let weights = gg.ctl().ok(&["weights", "get", "-s", "web"]);
    assert!(weights.contains("canary=5%"), "{weights}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_that_is_no_percentage_is_a_usage_error() {
    let (_s, _c, gg) = start().await;
    let ctl = gg.ctl();
    let before = gg.admin_api().revision().await;
    for weight in ["canary=nan", "canary=inf", "canary=-5", "canary=150"] {
        let run = ctl.run(&["weights", "set", "-s", "web", weight]);
        assert_eq!(run.code, 2, "{weight}: {run:?}");
        assert_eq!(
            run.stderr.trim(),
            format!(
                "graygate ctl: `{weight}`: the weight of canary must be a percentage from 0 to 100"
            )
        );
    }
    let run = ctl.run(&["weights", "set", "-s", "web", "canary"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        "graygate ctl: `canary`: write VERSION=PERCENT, like canary=10"
    );
    assert_eq!(gg.admin_api().revision().await, before);
    ctl.ok(&["weights", "set", "-s", "web", "canary=100"]);
}

/// The policy of `config`, as a user writes it in a file of its own; line 17 is the last rule's
/// CIDR list.
const POLICY: &str = r#"[[routes]]
service = "web"

[[services]]
name = "web"
stable = "stable"
versions = { stable = "stable", canary = "canary" }

[[services.rules]]
name = "beta"
version = "canary"
when = { header = "X-User-Id", range = { start = 1, end = 1000 } }

[[services.rules]]
name = "office"
version = "canary"
when = { cidr = ["300.1.1.1"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toml_documents_report_errors_at_the_line_of_the_file() {
    let (_s, _c, gg) = start().await;
    let ctl = gg.ctl();
    let before = gg.admin_api().revision().await;
    let dir = tempfile::tempdir().unwrap();
    let run = ctl.run(&["policy", "get"]);
    assert_eq!((run.code, run.stderr.trim()), (0, "revision 1"), "{run:?}");

    // A field the API refuses: named at its line in the user's file.
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, POLICY).unwrap();
    let path = file.to_str().unwrap();
    let run = ctl.run(&["policy", "put", path]);
    assert_eq!(run.code, 1, "{run:?}");
    let expected = format!(
        "{path}:17:18: services[0].rules[1].when.cidr[0]: `300.1.1.1` is neither an IP address nor a network"
    );
    assert!(run.stderr.starts_with(&expected), "{run:?}");

    // --json still gives the API's error as it is.
    let run = ctl.run(&["--json", "policy", "put", path]);
    assert_eq!(run.code, 1, "{run:?}");
    let err: serde_json::Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(err["error"]["field"], "services[0].rules[1].when.cidr[0]");

    // A shape error, found before anything is sent: a usage error at the line.
    std::fs::write(
        &file,
        POLICY.replace("stable = \"stable\"", "stabel = \"stable\""),
    )
    .unwrap();
    let run = ctl.run(&["policy", "put", path]);
    assert_eq!(run.code, 2, "{run:?}");
    let expected = format!(
        "graygate ctl: {path}:6:1: services[0].stabel: unknown field `stabel`, expected one of"
    );
    assert!(run.stderr.starts_with(&expected), "{run:?}");

    // One rule in a file of its own: the API names it inside the whole policy, the message
    // names the line of the rule's file.
    let rule = dir.path().join("rule.toml");
    std::fs::write(
        &rule,
        "name = \"office\"\nversion = \"canary\"\nwhen = { cidr = [\"10.0.0.0/8\", \"10.1.0.0/33\"] }\n",
    )
    .unwrap();
    let rule = rule.to_str().unwrap();
    let run = ctl.run(&["rules", "add", "-s", "web", rule]);
    assert_eq!(run.code, 1, "{run:?}");
    let expected = format!(
        "{rule}:3:32: services[0].rules[1].when.cidr[1]: `10.1.0.0/33` is neither an IP address nor a network"
    );
    assert!(run.stderr.starts_with(&expected), "{run:?}");

    // A JSON document's shape error is a usage error too, with serde_json's position.
    let run = ctl.run(&["services", "put", "{\"name\": \"api\", \"stabel\": \"v1\"}"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .starts_with("graygate ctl: argument: stabel: unknown field `stabel`"),
        "{run:?}"
    );

    assert_eq!(
        gg.admin_api().revision().await,
        before,
        "nothing was applied"
    );
}

#[test]
fn every_ctl_command_explains_itself() {
    let help = |args: &[&str]| {
        let out = Command::new(binary())
            .arg("ctl")
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = help(&[]);
    assert!(
        top.contains("promote") && top.contains("Address of the admin API"),
        "{top}"
    );
    let set = help(&["weights", "set"]);
    assert!(set.contains("VERSION=PERCENT (0 to 100)"), "{set}");
    assert!(set.contains("Hash salt of the split"), "{set}");
}
