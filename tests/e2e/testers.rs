//! Who may pick a version by hand: a tester override limited to networks and a secret, and the
//! version header of an upstream graygate, believed from a trusted proxy only. Two real
//! graygates chained, and clients on other loopback addresses (127.0.0.2) as untrusted peers.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

/// GET / from the local address `from` (a loopback address other than 127.0.0.1), with these
/// headers: the body, trimmed.
async fn get_from(from: &str, to: SocketAddr, headers: &[(&str, &str)]) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(to).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .uri("/")
        .header("host", "example.com");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_from_an_untrusted_network_or_with_a_wrong_secret_is_ignored_and_counted() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let gg = web_gateway(&stable, &canary)
        .metrics()
        .service(
            web()
                .override_header("X-Gray", "canary")
                .override_from(&["127.0.0.1/32"])
                .override_secret("s3cret-of-16-bytes"),
        )
        .start()
        .await;
    let right = ("X-Gray", "always:s3cret-of-16-bytes");
    assert_eq!(get_from("127.0.0.1", gg.addr, &[right]).await, "canary");
    // From 127.0.0.2, outside `from`; then with no secret and a wrong one.
    assert_eq!(get_from("127.0.0.2", gg.addr, &[right]).await, "stable");
    assert_eq!(
        get_from("127.0.0.1", gg.addr, &[("X-Gray", "always")]).await,
        "stable"
    );
    let wrong = ("X-Gray", "always:s3cret-of-16-bytez");
    assert_eq!(get_from("127.0.0.1", gg.addr, &[wrong]).await, "stable");
    let metrics = gg.scrape().await;
    let note = |n: &str| {
        metric(
            &metrics,
            &format!(
                "graygate_policy_notes_total{{note=\"override_refused:{n}\",service=\"web\"}}"
            ),
        )
    };
    assert_eq!((note("network"), note("secret")), (Some(1.0), Some(2.0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_override_value_from_ctl_reaches_the_canary() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let mut service = web().override_header("X-Gray", "canary");
    let doc: &mut graygate::policy::model::ServiceDoc = service.as_mut();
    if let Some(o) = &mut doc.override_ {
        o.key = Some("signing-key-of-16-bytes".into());
    }
    let gg = web_gateway(&stable, &canary)
        .admin()
        .service(service)
        .start()
        .await;
    let value = gg
        .ctl()
        .ok(&["override-token", "--service", "web", "--ttl", "1h"]);
    let value = value.trim();
    assert!(value.starts_with("always:"), "{value}");
    let mut c = gg.client();
    assert_eq!(c.version(&[("X-Gray", value)]).await, "canary");
    assert_eq!(c.version(&[("X-Gray", "always")]).await, "stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_graygate_follows_the_front_ones_choice_and_ignores_untrusted_clients() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    // The inner service: follows the version header from 127.0.0.1 only.
    let inner = web_gateway(&stable, &canary)
        .metrics()
        .trusted_proxies(["127.0.0.1/32"])
        .service(web().follow())
        .start()
        .await;
    // The front: beta testers to the canary; both versions are served through the inner one.
    let front = web_gateway(inner.addr, inner.addr)
        .service(web().rule("beta", "canary", header("X-Env").equals("beta")))
        .start()
        .await;
    assert_eq!(
        get_from("127.0.0.3", front.addr, &[("X-Env", "beta")]).await,
        "canary"
    );
    assert_eq!(get_from("127.0.0.3", front.addr, &[]).await, "stable");
    // A client naming the version itself, to the front: removed there, not believed.
    let forged = ("X-Graygate-Version", "canary");
    assert_eq!(get_from("127.0.0.3", front.addr, &[forged]).await, "stable");
    // Straight to the inner one from an untrusted address: ignored, and counted.
    assert_eq!(get_from("127.0.0.2", inner.addr, &[forged]).await, "stable");
    let metrics = inner.scrape().await;
    assert_eq!(
        metric(
            &metrics,
            "graygate_decisions_total{reason=\"followed\",service=\"web\",version=\"canary\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "graygate_policy_notes_total{note=\"follow_refused:untrusted\",service=\"web\"}"
        ),
        Some(1.0)
    );
}
