//! The real `graygate run` process between a real client and real backends, routing by every
//! kind of matcher, surviving restarts, swaps and dead upstreams.

use crate::support::*;
use std::collections::HashSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_matcher_routes_as_specified() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let gg = web_gateway(&stable, &canary)
        .trusted_proxies(["127.0.0.1"])
        .service(
            web()
                .override_cookie("gray", "canary")
                .rule("office", "canary", cidr(["10.20.0.0/16"]))
                .rule("env", "canary", header("X-Env").equals("beta"))
                .rule("teams", "canary", cookie("team").one_of(["red", "blue"]))
                .rule(
                    "mobile",
                    "canary",
                    header("User-Agent").regex("(?i)iphone|android"),
                )
                .rule("ab", "canary", query("ab").equals("b"))
                .rule("range", "canary", header("X-Uid").range(100, 199))
                .rule("vip", "canary", header("X-Uid").ids([7, 4242]))
                .rule("tail", "canary", header("X-Uid").suffix(["77"]))
                .rule("mod", "canary", header("X-Uid").modulo(1000, [500]))
                .rule(
                    "both",
                    "canary",
                    all([
                        header("X-A").present(),
                        any([header("X-B").equals("1"), not(header("X-C").present())]),
                    ]),
                )
                .rule("pct", "canary", header("X-Pct").percent(50.0)),
        )
        .start()
        .await;
    let mut c = gg.client();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "stable"),
        (&[("X-Forwarded-For", "10.20.3.4")], "canary"),
        (&[("X-Forwarded-For", "10.21.3.4")], "stable"),
        (&[("X-Env", "beta")], "canary"),
        (&[("X-Env", "prod")], "stable"),
        (&[("Cookie", "a=1; team=blue")], "canary"),
        (&[("Cookie", "team=green")], "stable"),
        (&[("User-Agent", "Mozilla/5.0 (iPhone)")], "canary"),
        (&[("User-Agent", "curl/8")], "stable"),
        (&[("X-Uid", "150")], "canary"),
        (&[("X-Uid", "200")], "stable"),
        (&[("X-Uid", "4242")], "canary"),
        (&[("X-Uid", "1077")], "canary"),
        (&[("X-Uid", "3500")], "canary"),
        (&[("X-Uid", "3501")], "stable"),
        (&[("X-A", "1")], "canary"),
        (&[("X-A", "1"), ("X-C", "1")], "stable"),
        (&[("X-A", "1"), ("X-C", "1"), ("X-B", "1")], "canary"),
        (&[("Cookie", "gray=always")], "canary"),
        (&[("Cookie", "gray=never"), ("X-Env", "beta")], "stable"),
    ];
    c.assert_versions(cases).await;
    assert_eq!(c.get_path("/x?ab=b", &[]).await.body, "canary\n");
    assert_eq!(c.get_path("/x?ab=a", &[]).await.body, "stable\n");
    // The percent rule: some identities in, some out, each one always the same.
    let mut seen = HashSet::new();
    for id in 0..40 {
        let id = format!("user-{id}");
        let first = c.version(&[("X-Pct", &id)]).await;
        assert_eq!(first, c.version(&[("X-Pct", &id)]).await);
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "a 50% rule sends some identities each way");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_split_holds_its_weight_and_survives_a_restart() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let gg = web_gateway(&stable, &canary)
        .service(web().split("canary", 10.0, by_header("X-User")))
        .start()
        .await;
    let mut c = gg.client();
    let mut answers = Vec::with_capacity(10_000);
    for id in 0..10_000 {
        answers.push(c.version(&[("X-User", &format!("u{id}"))]).await == "canary");
    }
    let share = answers.iter().filter(|a| **a).count() as f64 / 100.0;
    assert!(
        (8.5..=11.5).contains(&share),
        "canary share {share}% is not within 1.5 points of 10%"
    );

    // Same data directory, new process: every identity gets the same version.
    let gg = gg.restart().await;
    let mut c = gg.client();
    for (id, was_canary) in answers.iter().enumerate() {
        let now = c.version(&[("X-User", &format!("u{id}"))]).await == "canary";
        assert_eq!(
            now, *was_canary,
            "identity u{id} changed version after a restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarded_for_from_an_untrusted_peer_cannot_select_the_canary() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let base =
        web_gateway(&stable, &canary).service(web().rule("gray-ip", "canary", cidr(["10.0.0.7"])));
    let spoof: &[(&str, &str)] = &[("X-Forwarded-For", "10.0.0.7"), ("X-Real-IP", "10.0.0.7")];

    // No trusted proxies: the peer (127.0.0.1) is the client, whatever the headers say.
    let gg = base.clone().start().await;
    let mut c = gg.client();
    c.assert_versions(&[
        (spoof, "stable"),
        (&[("X-Forwarded-For", "1.1.1.1, 10.0.0.7")], "stable"),
    ])
    .await;
    // What the backend sees: the real peer appended, X-Real-IP replaced.
    let r = c.get(spoof).await;
    assert_eq!(r.headers["echo-x-forwarded-for"], "10.0.0.7, 127.0.0.1");
    assert_eq!(r.headers["echo-x-real-ip"], "127.0.0.1");
    drop(gg);

    // Loopback trusted (a proxy in front): now the forwarded address counts, rightmost untrusted.
    let trusted = base.trusted_proxies(["127.0.0.0/8"]);
    let gg = trusted.clone().start().await;
    let mut c = gg.client();
    c.assert_versions(&[
        (&[("X-Forwarded-For", "10.0.0.7")], "canary"),
        // The client itself claimed 10.0.0.7, the proxy saw 1.1.1.1: the proxy's word counts.
        (&[("X-Forwarded-For", "10.0.0.7, 1.1.1.1")], "stable"),
    ])
    .await;
    drop(gg);

    // The original design's order, for operators whose own load balancer sets the headers.
    let gg = trusted.original_client_ip().start().await;
    let mut c = gg.client();
    c.assert_versions(&[
        (&[("X-Real-IP", "10.0.0.7")], "canary"),
        (
            &[("X-Real-IP", "10.0.0.8"), ("X-Forwarded-For", "10.0.0.7")],
            "stable",
        ),
        (&[("X-Forwarded-For", "10.0.0.7")], "canary"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_swap_under_concurrent_requests_loses_none() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    fn everyone_to(version: &'static str) -> impl FnOnce(&mut graygate::policy::PolicyDoc) {
        move |policy| policy.services[0].rules[0].version = version.to_string()
    }
    let mut gg = web_gateway(&stable, &canary)
        .policy_file("policy.toml")
        .service(web().rule("all", "stable", cidr(["0.0.0.0/0"])))
        .start()
        .await;

    let addr = gg.addr;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = Client::new(addr);
                let mut seen = Vec::new();
                for _ in 0..600 {
                    let r = c.get(&[]).await;
                    assert_eq!(r.status, 200, "a request failed during the swap: {r:?}");
                    seen.push(r.body);
                }
                seen
            })
        })
        .collect();
    // Swap while the workers run.
    let mut c = gg.client();
    eventually("200 requests reach stable", async || {
        stable.requests() > 200
    })
    .await;
    gg.change_policy(everyone_to("canary"));
    eventually("the new policy takes effect", async || {
        equals(c.version(&[]).await, "canary")
    })
    .within(std::time::Duration::from_secs(5))
    .await;
    let mut total = 0;
    for w in workers {
        let seen = w.await.expect("worker");
        total += seen.len();
        assert!(seen.iter().all(|b| b == "stable\n" || b == "canary\n"));
    }
    assert_eq!(total, 2400);

    // A broken policy is rejected and the running one stays.
    gg.change_policy(everyone_to("nonexistent"));
    eventually("the log names the unknown version", async || {
        gg.log_text().contains("unknown version `nonexistent`")
    })
    .within(std::time::Duration::from_secs(5))
    .await;
    assert_eq!(c.version(&[]).await, "canary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_down_is_served_by_stable_and_stable_down_is_a_clear_502() {
    let stable = backend("stable").await;
    let gg = web_gateway(&stable, dead_addr())
        .service(web().override_header("X-Gray", "canary"))
        .start()
        .await;
    let mut c = gg.client();
    for _ in 0..5 {
        assert_eq!(c.version(&[("X-Gray", "always")]).await, "stable");
    }
    drop(gg);

    let gg = web_gateway(dead_addr(), dead_addr())
        .service(web())
        .start()
        .await;
    let r = gg.client().get(&[]).await;
    assert_eq!(r.status, 502);
    assert!(
        r.body.contains("graygate"),
        "short body naming graygate: {:?}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_body_streams_through_intact() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let gg = web_gateway(&stable, &canary).service(web()).start().await;
    let body = bytes::Bytes::from(vec![b'x'; 50 * 1024 * 1024]);
    let r = gg.client().request("POST", "/upload", &[], body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-body-bytes"], (50 * 1024 * 1024).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_a_404() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let gg = gateway()
        .upstream("stable", &stable)
        .upstream("canary", &canary)
        .route(route("web").hosts(["api.test"]))
        .service(service("web").stable("stable", "stable"))
        .start()
        .await;
    let r = gg.client().get(&[]).await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echo_passes_through_intact() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    // A WebSocket echo backend as the stable upstream.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() || ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let canary = backend("canary").await;
    let gg = web_gateway(echo, &canary).service(web()).start().await;

    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/chat", gg.addr))
        .await
        .expect("the upgrade goes through graygate");
    assert_eq!(response.status(), 101);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("hello {i}"))
        );
    }
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.close(None).await.unwrap();
    server.abort();
}
