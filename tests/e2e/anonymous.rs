//! Exact sticky splits for anonymous visitors, through the real `graygate run` process: 10,000
//! clients with cookie jars land at the weight and keep their version; a wider weight keeps every
//! earlier canary client on the canary; a rollback sends everyone back; a forged cookie is
//! replaced.

use crate::support::*;
use graygate::policy::model::StickyCookieDoc;

/// One client's cookie jar: the bucket cookie graygate gave it, as `name=value`.
fn jar_of(reply: &Reply) -> Option<String> {
    let set = reply.headers.get("set-cookie")?.to_str().ok()?;
    Some(set.split(';').next()?.to_string())
}

/// `clients` visitors, spread over 8 connections: each one's first answer (no cookie) and the
/// cookie it got.
async fn first_visits(addr: std::net::SocketAddr, clients: usize) -> Vec<(String, String)> {
    let mut tasks = Vec::new();
    for part in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::new(addr);
            let mut seen = Vec::new();
            for _ in (part..clients).step_by(8) {
                let r = c.get(&[]).await;
                assert_eq!(r.status, 200, "{r:?}");
                let jar = jar_of(&r).expect("a visitor without a cookie gets one");
                seen.push((r.body.trim().to_string(), jar));
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Each client's version now, sending its cookie, spread over 8 connections; no cookie is set.
async fn versions_now(addr: std::net::SocketAddr, jars: &[String]) -> Vec<String> {
    let mut tasks = Vec::new();
    for part in 0..8 {
        let mine: Vec<String> = jars.iter().skip(part).step_by(8).cloned().collect();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::new(addr);
            let mut out = Vec::new();
            for jar in mine {
                let r = c.get(&[("Cookie", &jar)]).await;
                assert_eq!(r.status, 200, "{r:?}");
                assert!(
                    r.headers.get("set-cookie").is_none(),
                    "a valid cookie is not set again"
                );
                out.push(r.body.trim().to_string());
            }
            out
        }));
    }
    // Back in the order of `jars`.
    let parts: Vec<Vec<String>> = {
        let mut parts = Vec::new();
        for t in tasks {
            parts.push(t.await.unwrap());
        }
        parts
    };
    (0..jars.len())
        .map(|i| parts[i % 8][i / 8].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_anonymous_clients_land_at_the_weight_and_keep_their_version() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let gg = web_gateway(&stable, &canary)
        .metrics()
        .admin()
        .service(web().cookie_split("canary", 10.0, StickyCookieDoc::default()))
        .start()
        .await;
    let clients = first_visits(gg.addr, 10_000).await;
    let canary_first = clients.iter().filter(|(v, _)| v == "canary").count();
    assert!(
        (900..=1_100).contains(&canary_first),
        "{canary_first} of 10,000 on the canary at 10%"
    );
    let jars: Vec<String> = clients.iter().map(|(_, j)| j.clone()).collect();
    assert!(jars[0].starts_with("graygate_bucket="), "{}", jars[0]);
    // Again with their cookies: every client keeps its version.
    let again = versions_now(gg.addr, &jars).await;
    for (i, ((first, _), now)) in clients.iter().zip(&again).enumerate() {
        assert_eq!(first, now, "client {i} changed version");
    }

    // Wider: every earlier canary client stays there, and about 30% are now.
    let ctl = gg.ctl();
    ctl.ok(&["weights", "set", "--service", "web", "canary=30"]);
    let wider = versions_now(gg.addr, &jars).await;
    for (i, ((first, _), now)) in clients.iter().zip(&wider).enumerate() {
        if first == "canary" {
            assert_eq!(
                now, "canary",
                "client {i} left the canary when the weight grew"
            );
        }
    }
    let canary_wider = wider.iter().filter(|v| *v == "canary").count();
    assert!(
        (2_900..=3_100).contains(&canary_wider),
        "{canary_wider} of 10,000 at 30%"
    );

    // Rollback: everyone back on stable at once, cookies or not.
    ctl.ok(&["rollback", "--service", "web"]);
    let back = versions_now(gg.addr, &jars).await;
    assert!(back.iter().all(|v| v == "stable"), "after the rollback");

    let metrics = gg.scrape().await;
    assert_eq!(
        metric(
            &metrics,
            "graygate_policy_notes_total{note=\"bucket_cookie:new\",service=\"web\"}"
        ),
        Some(10_000.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_unsigned_bucket_cookie_is_replaced() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let signed = StickyCookieDoc {
        name: "gb".into(),
        key: Some("a-key-of-16-bytes-or-more".into()),
        ..StickyCookieDoc::default()
    };
    let gg = web_gateway(&stable, &canary)
        .metrics()
        .service(web().cookie_split("canary", 50.0, signed))
        .start()
        .await;
    let mut c = gg.client();
    let r = c.get(&[]).await;
    let jar = jar_of(&r).expect("a cookie");
    let set = r.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.ends_with("; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax"),
        "{set}"
    );
    // Kept as given.
    let kept = c.get(&[("Cookie", &jar)]).await;
    assert!(kept.headers.get("set-cookie").is_none());
    assert_eq!(kept.body, r.body);
    // Forged: the id alone, another signature, an id of the client's choosing.
    let id = jar
        .trim_start_matches("gb=")
        .split('.')
        .next()
        .unwrap()
        .to_string();
    for forged in [
        format!("gb={id}"),
        format!("gb={id}.00ff"),
        "gb=ffffffffffffffff.1234".into(),
    ] {
        let r = c.get(&[("Cookie", &forged)]).await;
        let new = jar_of(&r).expect("a forged cookie is replaced");
        assert_ne!(new, forged);
        assert!(new.starts_with("gb="), "{new}");
    }
    let metrics = gg.scrape().await;
    assert_eq!(
        metric(
            &metrics,
            "graygate_policy_notes_total{note=\"bucket_cookie:replaced\",service=\"web\"}"
        ),
        Some(3.0)
    );
}
