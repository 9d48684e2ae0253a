//! Traffic mirroring through the real `graygate run`: copies reach the mirror version marked as
//! copies while the client gets the primary's answer; a mirror that never answers adds no
//! latency and holds at most `max_in_flight` copies; the comparison counts equal and different
//! answers. Backends are real servers on 127.0.0.1 port 0.

use crate::support::raw::{RawRequest, RawUpstream};
use crate::support::*;
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A mirror target that keeps every request it receives and answers `200 shadow`.
async fn recording_mirror() -> (RawUpstream, Arc<Mutex<Vec<RawRequest>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let upstream = RawUpstream::serve(move |request| {
        kept.lock().unwrap().push(request.clone());
        Some(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nshadow\n".to_vec())
    })
    .await;
    (upstream, seen)
}

fn mirror_metric(text: &str, name: &str, labels: &str) -> f64 {
    metric(text, &format!("{name}{{{labels}}}")).unwrap_or(0.0)
}

/// A mirrored GET reaches the mirror with the mirror header and the version header naming the
/// mirror version; the client gets the primary's answer. A bodied POST within `max_body` is
/// copied with its body, one above it is not (skipped: `body`), and a method not listed is not
/// (skipped: `method`).
#[tokio::test]
async fn a_mirrored_request_reaches_the_mirror_marked_and_the_client_gets_the_primarys_answer() {
    let stable = backend("stable").await;
    let (mirror, seen) = recording_mirror().await;
    let gg = gateway()
        .upstream("stable", &stable)
        .upstream("shadow", &mirror)
        .route(route("web"))
        .service(
            service("web")
                .stable("stable", "stable")
                .version("shadow", "shadow")
                .mirror("shadow", 100.0, |m| {
                    m.methods = vec!["GET".into(), "POST".into()];
                    m.max_body = "16B".into();
                }),
        )
        .version_header("X-Gray-Version")
        .metrics()
        .start()
        .await;
    let mut client = gg.client();

    let reply = client.get_path("/hello?x=1", &[("X-Trace", "t1")]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body, "stable\n",
        "the client gets the primary's answer"
    );
    assert!(reply.headers.get("x-graygate-mirror").is_none());
    let copy = eventually("the copy reaches the mirror", async || {
        seen.lock().unwrap().first().cloned().ok_or("nothing yet")
    })
    .await;
    assert_eq!(copy.line(), "GET /hello?x=1 HTTP/1.1");
    assert_eq!(copy.header_values("x-graygate-mirror"), ["1"]);
    assert_eq!(copy.header_values("x-gray-version"), ["shadow"]);
    assert_eq!(copy.header_values("x-trace"), ["t1"]);
    assert_eq!(copy.header_values("host"), ["example.com"]);

    let small = client
        .request("POST", "/form", &[], Bytes::from_static(b"0123456789"))
        .await;
    assert_eq!(small.body, "stable\n");
    let big = client
        .request("POST", "/form", &[], Bytes::from(vec![b'x'; 100]))
        .await;
    assert_eq!(big.body, "stable\n");
    assert_eq!(
        big.headers.get("x-body-bytes").unwrap(),
        "100",
        "the primary gets the whole body"
    );
    let put = client.request("PUT", "/form", &[], Bytes::new()).await;
    assert_eq!(put.body, "stable\n");

    let copy = eventually("the small POST's copy", async || {
        let seen = seen.lock().unwrap();
        seen.iter()
            .find(|r| r.line().starts_with("POST"))
            .cloned()
            .ok_or(seen.len())
    })
    .await;
    assert_eq!(copy.body, b"0123456789");
    assert_eq!(copy.header_values("content-length"), ["10"]);
    let labels = "service=\"web\",version=\"shadow\"";
    let text = eventually("the skips counted", async || {
        let text = gg.scrape().await;
        let body = mirror_metric(
            &text,
            "graygate_mirror_skipped_total",
            &format!("reason=\"body\",{labels}"),
        );
        let method = mirror_metric(
            &text,
            "graygate_mirror_skipped_total",
            &format!("reason=\"method\",{labels}"),
        );
        equals((body, method), (1.0, 1.0)).map(|_| text)
    })
    .await;
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "the GET and the small POST only"
    );
    assert_eq!(
        mirror_metric(
            &text,
            "graygate_mirror_decisions_total",
            &format!("decision=\"mirrored\",{labels}")
        ),
        4.0
    );
    assert_eq!(
        metric(&text, "graygate_mirror_requests_total{code=\"200\",service=\"web\",status_class=\"2xx\",version=\"shadow\"}"),
        Some(2.0),
        "{text}"
    );
    // The copies are not traffic of the version they went to.
    assert!(!text.contains(
        "graygate_requests_total{route=\"web\",status_class=\"2xx\",version=\"shadow\"}"
    ));
}

/// Sends `total` GETs over `clients` concurrent connections; the latencies, sorted.
async fn load(addr: std::net::SocketAddr, clients: usize, total: usize) -> Vec<Duration> {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let mut client = Client::new(addr);
                let mut latencies = Vec::with_capacity(total / clients);
                for _ in 0..total / clients {
                    let started = Instant::now();
                    let reply = client.get(&[]).await;
                    latencies.push(started.elapsed());
                    assert_eq!(reply.status, 200, "{reply:?}");
                    assert_eq!(reply.body, "stable\n");
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for task in tasks {
        all.extend(task.await.expect("a client"));
    }
    all.sort();
    all
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

/// Under load, a mirror that accepts connections and never answers adds no latency: the p99
/// with it stays under its timeout and near the p99 without it. At most `max_in_flight` copies
/// run (the gauge reaches the cap and never passes it) while the skips for `in_flight` grow.
#[tokio::test]
async fn a_hanging_mirror_adds_no_latency_and_holds_at_most_its_cap() {
    const CAP: f64 = 8.0;
    const TOTAL: usize = 2_000;
    const CLIENTS: usize = 4;
    let stable = backend("stable").await;
    let hanging = HangingServer::start();
    let hanging_addr: std::net::SocketAddr = hanging.addr().parse().unwrap();
    let base = |mirrored: bool| {
        let web = service("web")
            .stable("stable", "stable")
            .version("shadow", "shadow");
        let web = if mirrored {
            web.mirror("shadow", 100.0, |m| {
                m.max_in_flight = CAP as usize;
                m.timeout = Duration::from_secs(2);
            })
        } else {
            web
        };
        gateway()
            .upstream("stable", &stable)
            .upstream("shadow", hanging_addr)
            .route(route("web"))
            .service(web)
            .metrics()
    };
    let plain = base(false).start().await;
    let mirrored = base(true).start().await;

    let off = tokio::time::timeout(
        patient(Duration::from_secs(120)),
        load(plain.addr, CLIENTS, TOTAL),
    )
    .await
    .expect("the load without a mirror ends");
    drop(plain);

    let labels = "service=\"web\",version=\"shadow\"";
    let in_flight_series = format!("graygate_mirror_in_flight{{{labels}}}");
    let skipped_series = format!("graygate_mirror_skipped_total{{reason=\"in_flight\",{labels}}}");
    let running = tokio::spawn(load(mirrored.addr, CLIENTS, TOTAL));
    let mut samples = Vec::new();
    while !running.is_finished() {
        let text = mirrored.scrape().await;
        samples.push((
            metric(&text, &in_flight_series).unwrap_or(0.0),
            metric(&text, &skipped_series).unwrap_or(0.0),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let on = tokio::time::timeout(patient(Duration::from_secs(120)), running)
        .await
        .expect("the load with a hanging mirror ends")
        .expect("the load task");
    let text = mirrored.scrape().await;
    samples.push((
        metric(&text, &in_flight_series).unwrap_or(0.0),
        metric(&text, &skipped_series).unwrap_or(0.0),
    ));

    let (p99_off, p99_on) = (p99(&off), p99(&on));
    assert!(
        p99_on < Duration::from_secs(2),
        "p99 with the hanging mirror {p99_on:?} reaches the mirror's timeout"
    );
    assert!(
        p99_on < p99_off * 5 + Duration::from_millis(20),
        "p99 with the hanging mirror {p99_on:?}, without {p99_off:?}"
    );
    assert!(
        samples.iter().all(|(in_flight, _)| *in_flight <= CAP),
        "the gauge passed the cap: {samples:?}"
    );
    assert!(
        samples.iter().any(|(in_flight, _)| *in_flight == CAP),
        "the gauge never reached the cap: {samples:?}"
    );
    let first_at_cap = samples
        .iter()
        .find(|(f, _)| *f == CAP)
        .map(|(_, s)| *s)
        .unwrap();
    let (_, last_skipped) = *samples.last().unwrap();
    assert!(
        last_skipped > first_at_cap && last_skipped >= (TOTAL as f64) / 2.0,
        "skips for in_flight did not grow: {samples:?}"
    );
    // Every copy that started either is still waiting or timed out; none was answered.
    assert_eq!(
        metric(&text, "graygate_mirror_requests_total{code=\"200\",service=\"web\",status_class=\"2xx\",version=\"shadow\"}"),
        None
    );
    eventually("the hanging copies time out", async || {
        let text = mirrored.scrape().await;
        let timeouts = metric(
            &text,
            &format!("graygate_mirror_skipped_total{{reason=\"timeout\",{labels}}}"),
        )
        .unwrap_or(0.0);
        if timeouts >= CAP {
            Ok(timeouts)
        } else {
            Err(timeouts)
        }
    })
    .within(Duration::from_secs(10))
    .await;
}

/// With `compare`, a mirror that answers as the primary does is counted as matching, one that
/// answers a different body as a mismatch, which is logged with both statuses and the path and
/// kept for the admin API (`GET /v1/services/{name}/mirror`).
#[tokio::test]
async fn the_comparison_counts_matches_and_a_deliberate_mismatch() {
    let stable = backend("stable").await;
    // Answers as the primary does: the same name, so the same body.
    let twin = backend("stable").await;
    let other = backend("other").await;
    let compared = |m: &mut graygate::policy::mirror::MirrorDoc| m.compare = true;
    let gg = gateway()
        .upstream("stable", &stable)
        .upstream("twin", &twin)
        .upstream("other", &other)
        .route(route("same").path_prefix("/same"))
        .route(route("diff").path_prefix("/diff"))
        .service(
            service("same")
                .stable("stable", "stable")
                .version("twin", "twin")
                .mirror("twin", 100.0, compared),
        )
        .service(
            service("diff")
                .stable("stable", "stable")
                .version("other", "other")
                .mirror("other", 100.0, compared),
        )
        .metrics()
        .admin()
        .start()
        .await;
    let mut client = gg.client();
    for _ in 0..10 {
        assert_eq!(client.get_path("/same/page", &[]).await.body, "stable\n");
        assert_eq!(client.get_path("/diff/page", &[]).await.body, "stable\n");
    }
    let series = |service: &str, version: &str, result: &str| {
        format!("graygate_mirror_comparisons_total{{result=\"{result}\",service=\"{service}\",version=\"{version}\"}}")
    };
    let text = eventually("every answer compared", async || {
        let text = gg.scrape().await;
        let seen = (
            metric(&text, &series("same", "twin", "match")),
            metric(&text, &series("diff", "other", "mismatch")),
        );
        equals(seen, (Some(10.0), Some(10.0))).map(|_| text)
    })
    .await;
    assert_eq!(metric(&text, &series("same", "twin", "mismatch")), None);
    assert_eq!(metric(&text, &series("diff", "other", "match")), None);
    assert_eq!(twin.requests(), 10);
    assert_eq!(other.requests(), 10);
    let mut admin = gg.admin_api();
    let diff = admin.get("/v1/services/diff/mirror").await;
    assert_eq!(
        (&diff["version"], &diff["compare"]),
        (&"other".into(), &true.into()),
        "{diff}"
    );
    let mismatches = diff["mismatches"].as_array().expect("mismatches");
    assert_eq!(mismatches.len(), 10, "{diff}");
    for m in mismatches {
        assert_eq!(m["path"], "/diff/page", "{m}");
        assert_eq!(
            (&m["primary_status"], &m["mirror_status"]),
            (&200.into(), &200.into()),
            "{m}"
        );
        assert_eq!(m["same_body"], false, "{m}");
    }
    let same = admin.get("/v1/services/same/mirror").await;
    assert_eq!(same["mismatches"], serde_json::json!([]), "{same}");
    let (reply, _) = admin
        .send("GET", "/v1/services/nothing/mirror", &[], "")
        .await;
    assert_eq!(reply.status, 404, "{reply:?}");
    eventually(
        "a mismatch is logged with the path and both statuses",
        async || {
            gg.log_text().lines().any(|l| {
                l.contains("mirror answered differently from the primary")
                    && l.contains("/diff/page")
                    && l.contains("primary_status=200")
                    && l.contains("mirror_status=200")
            })
        },
    )
    .await;
}

/// A mirror is set, explained and taken away at runtime through the admin API, like any other
/// part of a service: a bad one is refused naming its field, `explain` (API and `ctl`) says
/// whether a request would be copied, and copies start and stop with the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_is_set_explained_and_removed_through_the_admin_api() {
    let stable = backend("stable").await;
    let shadow = backend("shadow").await;
    let gg = gateway()
        .upstream("stable", &stable)
        .upstream("shadow", &shadow)
        .route(route("web"))
        .service(
            service("web")
                .stable("stable", "stable")
                .version("shadow", "shadow"),
        )
        .admin()
        .metrics()
        .start()
        .await;
    let mut admin = gg.admin_api();
    let mut client = gg.client();
    let web = |mirror: &str| {
        format!(
            r#"{{"name": "web", "stable": "stable", "versions": {{"stable": "stable", "shadow": "shadow"}}{mirror}}}"#
        )
    };

    let (reply, json) = admin
        .send(
            "PUT",
            "/v1/services/web",
            &[],
            &web(r#", "mirror": {"version": "shadow", "percent": 0}"#),
        )
        .await;
    assert_eq!(reply.status, 422, "{reply:?}");
    assert_eq!(
        json["error"]["field"], "services[0].mirror.percent",
        "{json}"
    );
    let (reply, json) = admin
        .send(
            "PUT",
            "/v1/services/web",
            &[],
            &web(r#", "mirror": {"version": "shadow", "percent": 10, "timeout": "soon"}"#),
        )
        .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(json.to_string().contains("timeout"), "{json}");

    let e = admin.explain(r#"{"path": "/a"}"#).await;
    assert!(e.get("mirror").is_none(), "no mirror yet: {e}");
    assert_eq!(client.get(&[]).await.body, "stable\n");
    assert_eq!(shadow.requests(), 0);

    let (reply, _) = admin
        .send(
            "PUT",
            "/v1/services/web",
            &[],
            &web(r#", "mirror": {"version": "shadow", "percent": 50}"#),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let e = admin
        .explain(r#"{"path": "/a", "mirror_random": 4999}"#)
        .await;
    assert_eq!(e["version"], "stable", "the primary is unchanged: {e}");
    assert_eq!(e["mirror"]["version"], "shadow", "{e}");
    assert_eq!(e["mirror"]["mirrored"], true, "{e}");
    let e = admin
        .explain(r#"{"path": "/a", "mirror_random": 5000}"#)
        .await;
    assert_eq!(e["mirror"]["mirrored"], false, "{e}");
    let e = admin
        .explain(r#"{"method": "POST", "path": "/a", "mirror_random": 1}"#)
        .await;
    assert_eq!(e["mirror"]["mirrored"], false, "{e}");
    assert_eq!(e["mirror"]["reason"], "method POST is not copied", "{e}");
    let out = gg.ctl().ok(&["explain", "--method", "POST"]);
    assert!(
        out.contains("mirror     shadow not copied: method POST is not copied"),
        "{out}"
    );

    for _ in 0..200 {
        assert_eq!(client.get(&[]).await.body, "stable\n");
    }
    let mirrored =
        "graygate_mirror_decisions_total{decision=\"mirrored\",service=\"web\",version=\"shadow\"}";
    let in_flight = "graygate_mirror_in_flight{service=\"web\",version=\"shadow\"}";
    let copied = eventually("every copy drawn has reached the mirror", async || {
        let text = gg.scrape().await;
        let drawn = metric(&text, mirrored).unwrap_or(0.0);
        let running = metric(&text, in_flight).unwrap_or(0.0);
        equals(
            (drawn as usize, running, shadow.requests()),
            (shadow.requests(), 0.0, drawn as usize),
        )
        .map(|_| drawn as usize)
    })
    .await;
    assert!(
        (60..=140).contains(&copied),
        "about half of 200 copied: {copied}"
    );

    let (reply, _) = admin.send("PUT", "/v1/services/web", &[], &web("")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    for _ in 0..50 {
        assert_eq!(client.get(&[]).await.body, "stable\n");
    }
    let text = gg.scrape().await;
    assert_eq!(
        metric(&text, mirrored),
        Some(copied as f64),
        "no request drawn after the mirror is removed"
    );
    assert_eq!(metric(&text, in_flight), Some(0.0));
    assert_eq!(shadow.requests(), copied);
    assert!(admin
        .explain(r#"{"path": "/a"}"#)
        .await
        .get("mirror")
        .is_none());
}
