//! The dashboard in a real browser: headless Chromium over WebDriver ([`Browser`]) against the
//! real `graygate run`, with real backends and traffic, used as an on-call engineer uses it.
//!
//! - signing in: a wrong token is refused on the page, the right one shows the dashboard under
//!   the token's name and leaves only an `HttpOnly` cookie, which page scripts cannot read;
//! - under traffic, both versions' figures move on screen; screenshots of the main screen at
//!   1280 px and at phone width (390 px) are saved in `target/tmp/dashboard/`;
//! - a rollout started from the page against a canary failing 10% of its requests is watched
//!   until the page shows it aborted, with the failing verdicts and their figures;
//! - a gray-list entry added from the page sends that client IP to the canary, and its removal
//!   sends it back;
//! - a weight set from the page and undone from the history: routing follows both, and the
//!   history names the signed-in user;
//! - the fleet panel: two instances on one Redis, both listed on one's page; one that cannot apply
//!   a change (it lacks an upstream the change uses) is shown diverged with the reason, in red;
//!   a store that cannot be read and a fleet view that cannot be read are said in the panel, and
//!   the page stays;
//! - a form POST from another origin (another port of 127.0.0.1, so the same site, where
//!   `SameSite` does not hold the cookie back) is refused and changes nothing.

use crate::support::*;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often the rollout driver looks (`[rollouts] tick`).
const TICK: Duration = Duration::from_millis(200);

/// The gray list the `gray-ips` rule looks the client IP up in.
const LIST: &str = "gray_ips";

/// `web` with a gray-list rule and a sticky split by `X-User-Id` that gives the canary
/// `canary_percent`; an admin API with alice's token, a rollout driver ticking every [`TICK`].
async fn start(canary_percent: f64) -> (Backend, Backend, Gateway) {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let gg = web_gateway(&stable, &canary)
        .trusted_proxies(["127.0.0.0/8"])
        .service(
            web()
                .rule("gray-ips", "canary", client_ip().lookup(LIST).equals("1"))
                .split("canary", canary_percent, by_header("X-User-Id")),
        )
        .admin_token("alice", TOKEN)
        .rollouts(TICK, Duration::from_secs(2))
        .start()
        .await;
    (stable, canary, gg)
}

/// The dashboard's address on `gg`.
fn ui(gg: &Gateway) -> String {
    format!("http://{}/ui/", gg.admin_addr())
}

/// Opens the dashboard and signs in with `token` through the form.
async fn sign_in(browser: &Browser, gg: &Gateway, token: &str) {
    browser.goto(&ui(gg)).await;
    browser.type_into("#signin-token", token).await;
    browser.click("#signin-submit").await;
}

/// Opens the dashboard signed in as alice, on the overview with the `web` panel.
async fn signed_in(width: u32, height: u32, gg: &Gateway) -> Browser {
    let browser = Browser::start(width, height).await;
    sign_in(&browser, gg, TOKEN).await;
    browser
        .wait_text("#whoami", "signed in", Duration::from_secs(10), |t| {
            t == "alice"
        })
        .await;
    browser.find("section.service[data-service='web']").await;
    browser
}

/// Waits until the page's header shows policy revision `n`.
async fn shows_revision(browser: &Browser, n: u64) {
    let want = format!("rev {n}");
    browser
        .wait_text(
            "#revision",
            &format!("revision {n} shown"),
            Duration::from_secs(10),
            |t| t == want,
        )
        .await;
}

/// Waits until `GET /` with `headers` is answered by `version` (a change reaches the data plane
/// by the store's push).
async fn routed(gg: &Gateway, headers: &[(&str, &str)], version: &str) {
    eventually(format!("{headers:?} routed to {version}"), || async {
        equals(gg.client().version(headers).await, version.to_string())
    })
    .await;
}

/// Requests with a new user id each, on a few keep-alive connections, paced, until stopped;
/// bounded in count and in time.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    answers: Arc<[AtomicU64; 3]>,
}

impl Traffic {
    /// `connections` connections, each a request every 10 ms, for at most `limit`.
    fn start(gg: &Gateway, connections: u64, limit: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let answers: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let deadline = Instant::now() + patient(limit);
        let tasks = (0..connections)
            .map(|c| {
                let (stop, answers, addr) = (stop.clone(), answers.clone(), gg.addr);
                tokio::spawn(async move {
                    let mut client = Client::new(addr);
                    for n in 0..100_000u64 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        // Spread user ids, so that the sticky split's share is steady.
                        let user = ((n * connections + c) * 7919 % 1_000_000).to_string();
                        let reply = client.get(&[("x-user-id", &user)]).await;
                        let slot = match (reply.status, reply.body.trim()) {
                            (200, "stable") => 0,
                            (200, "canary") => 1,
                            _ => 2,
                        };
                        answers[slot].fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            tasks,
            answers,
        }
    }

    async fn stop(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a traffic connection");
        }
        let a = &self.answers;
        (
            a[0].load(Ordering::Relaxed),
            a[1].load(Ordering::Relaxed),
            a[2].load(Ordering::Relaxed),
        )
    }
}

/// The number a figure shows (`95.0 req/s` -> 95.0); `None` for `— req/s`.
fn figure(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_takes_the_token_once_and_keeps_only_an_http_only_cookie() {
    let (_s, _c, gg) = start(0.0).await;
    let browser = Browser::start(1280, 900).await;
    browser.goto(&ui(&gg)).await;

    // Not signed in: the sign-in form, and nothing of the gateway on the page.
    browser.find("#signin-token").await;
    assert!(
        browser.all("#app").await.is_empty(),
        "no dashboard before sign-in"
    );
    let page = browser.js("return document.body.innerText").await;
    assert!(
        !page.as_str().unwrap_or("").contains("web"),
        "the page shows nothing of the gateway before sign-in: {page}"
    );

    // A wrong token is refused on the page.
    sign_in(&browser, &gg, "not-the-token-0000").await;
    let error = browser
        .wait_text("#signin-error", "a refusal", Duration::from_secs(10), |t| {
            !t.is_empty()
        })
        .await;
    assert_eq!(error, "invalid bearer token");
    assert!(browser.all("#app").await.is_empty(), "still no dashboard");

    // The right one: the dashboard under alice's name, the store and revision shown.
    browser.type_into("#signin-token", TOKEN).await;
    browser.click("#signin-submit").await;
    browser
        .wait_text("#whoami", "signed in", Duration::from_secs(10), |t| {
            t == "alice"
        })
        .await;
    browser.find("section.service[data-service='web']").await;
    browser
        .wait_text(
            "#store-state",
            "the store's state",
            Duration::from_secs(10),
            |t| t == "connected",
        )
        .await;
    let revision = gg.admin_api().revision().await;
    shows_revision(&browser, revision).await;
    // Everything the page loaded came from graygate itself: no CDN, no other host. Its weight,
    // for the record: the page and its files as transferred on a first load.
    let loaded = browser
        .js("return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource')).map((e) => [e.name, e.transferSize])")
        .await;
    let origin = format!("http://{}/", gg.admin_addr());
    let mut files = 0u64;
    for entry in loaded.as_array().expect("entries") {
        let url = entry[0].as_str().unwrap_or("");
        assert!(url.starts_with(&origin), "loaded from elsewhere: {url}");
        if url.contains("/ui/") {
            files += entry[1].as_u64().unwrap_or(0);
        }
    }
    eprintln!("first load: {files} bytes of /ui/ files transferred");
    assert!(
        files > 10_000 && files < 150_000,
        "the page's files weigh {files} bytes"
    );
    // The browser keeps a session cookie that page scripts cannot read, and no token.
    let cookies = browser.js("return document.cookie").await;
    assert_eq!(
        cookies,
        Value::from(""),
        "HttpOnly: no script reads the cookie"
    );
    let stored = browser
        .js("return JSON.stringify(localStorage) + JSON.stringify(sessionStorage)")
        .await;
    assert!(
        !stored.as_str().unwrap_or("").contains(TOKEN),
        "the token is not kept: {stored}"
    );

    // A reload stays signed in; signing out shows the form again, and a reload stays out.
    browser.goto(&ui(&gg)).await;
    browser
        .wait_text(
            "#whoami",
            "signed in after a reload",
            Duration::from_secs(10),
            |t| t == "alice",
        )
        .await;
    browser.click("#signout").await;
    browser.find("#signin-token").await;
    browser.goto(&ui(&gg)).await;
    browser.find("#signin-token").await;
    assert!(browser.all("#app").await.is_empty(), "signed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_traffic_both_versions_figures_move_on_screen() {
    let (_s, _c, gg) = start(30.0).await;
    let browser = signed_in(1280, 900, &gg).await;
    let stable_rps = "[data-version='stable'] .rps";
    let canary_rps = "[data-version='canary'] .rps";
    let before = (
        browser.text(stable_rps).await,
        browser.text(canary_rps).await,
    );

    let traffic = Traffic::start(&gg, 4, Duration::from_secs(60));
    // Both versions' req/s rise from nothing; the canary's actual share nears its 30%.
    let moving = |t: &str| figure(t).is_some_and(|v| v > 5.0);
    let stable = browser
        .wait_text(
            stable_rps,
            "stable's req/s under traffic",
            Duration::from_secs(20),
            moving,
        )
        .await;
    let canary = browser
        .wait_text(
            canary_rps,
            "canary's req/s under traffic",
            Duration::from_secs(20),
            moving,
        )
        .await;
    assert!(
        stable.ends_with(" req/s") && canary.ends_with(" req/s"),
        "with units: {stable}, {canary}"
    );
    assert_ne!(
        (stable.clone(), canary.clone()),
        before,
        "the figures moved"
    );
    browser
        .wait_text(
            "[data-version='canary'] .configured",
            "the configured share",
            Duration::from_secs(10),
            |t| figure(t) == Some(30.0) && t.ends_with(" %"),
        )
        .await;
    let p50 = browser.text("[data-version='canary'] .p50").await;
    assert!(p50.ends_with(" ms"), "p50 with its unit: {p50}");
    browser
        .wait_text(
            "[data-version='canary'] .health",
            "the canary's servers",
            Duration::from_secs(10),
            |t| t.contains("1 up"),
        )
        .await;
    // The charts draw both versions.
    let lines = browser
        .all("section.service[data-service='web'] svg path")
        .await;
    assert!(lines.len() >= 2, "chart lines: {}", lines.len());

    // Screenshots of the main screen under traffic, at desktop and phone widths, kept as the
    // run's artifacts; at phone width nothing runs off the side of the page.
    let desktop = browser.screenshot("overview-1280").await;
    browser.resize(390, 844).await;
    browser
        .wait_text(
            canary_rps,
            "the figures at phone width",
            Duration::from_secs(5),
            moving,
        )
        .await;
    let overflow = browser
        .js("return document.documentElement.scrollWidth - window.innerWidth")
        .await;
    assert!(
        overflow.as_i64().is_some_and(|px| px <= 0),
        "the page is {overflow} px wider than a 390 px phone"
    );
    let phone = browser.screenshot("overview-390").await;
    let (stable_answers, canary_answers, failed) = traffic.stop().await;
    assert_eq!(failed, 0, "no failed request");
    assert!(stable_answers > 0 && canary_answers > 0);
    eprintln!("screenshots: {} {}", desktop.display(), phone.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_started_on_the_page_against_a_failing_canary_is_shown_aborted_with_its_verdicts()
{
    let (_s, canary, gg) = start(0.0).await;
    canary.fail_every(10);
    let browser = signed_in(1280, 900, &gg).await;
    browser
        .wait_text(
            ".rollout-state",
            "no rollout yet",
            Duration::from_secs(10),
            |t| t == "none",
        )
        .await;
    let traffic = Traffic::start(&gg, 4, Duration::from_secs(90));

    // A short plan, typed into the form: windows of a second on 20 requests of each version.
    browser
        .wait_text(
            "input.rollout-version",
            "the version prefilled",
            Duration::from_secs(5),
            |_| true,
        )
        .await;
    let version = browser
        .js("return document.querySelector('input.rollout-version').value")
        .await;
    assert_eq!(version, Value::from("canary"), "the canary prefilled");
    browser.click(".rollout-plan summary").await;
    browser.type_into("input.rollout-steps", "25,50,100").await;
    browser.type_into("input.rollout-step-time", "3s").await;
    browser.type_into("input.rollout-interval", "1s").await;
    browser.type_into("input.rollout-min-requests", "20").await;
    browser.type_into("input.rollout-max-wait", "30s").await;
    browser.click("button.act-start").await;
    let question = browser.confirm().await;
    assert_eq!(question, "Start a rollout of canary in web?");
    browser
        .wait_text(
            "#message",
            "the start acknowledged",
            Duration::from_secs(10),
            |t| t.starts_with("ok: web: rollout of canary started"),
        )
        .await;

    // Watched on the page until the analysis aborts it.
    let state = browser
        .wait_text(
            ".rollout-state",
            "the rollout aborted on screen",
            Duration::from_secs(60),
            |t| t == "aborted",
        )
        .await;
    assert_eq!(state, "aborted");
    browser
        .wait_text(
            ".rollout-verdicts",
            "the verdicts",
            Duration::from_secs(10),
            |t| t.contains("aborted"),
        )
        .await;
    let verdicts = browser.all(".rollout-verdicts li.verdict").await;
    assert!(!verdicts.is_empty(), "verdicts are shown");
    // Failing windows (or the hard guard's abort) that ended it.
    let failing = browser
        .all(
            ".rollout-verdicts li.verdict.outcome-fail, .rollout-verdicts li.verdict.outcome-abort",
        )
        .await;
    assert!(
        !failing.is_empty(),
        "the failing verdicts that aborted it, among {} shown",
        verdicts.len()
    );
    let latest = failing[0].text().await.unwrap();
    assert!(
        latest.contains("canary") && latest.contains("5xx") && latest.contains("requests"),
        "a verdict with its figures: {latest}"
    );
    let reason = browser.text(".rollout-reason").await;
    assert!(reason.starts_with("aborted: canary 5xx"), "{reason}");
    let banner = browser.find(".rollout-banner").await;
    assert!(
        banner.is_displayed().await.unwrap(),
        "the abort banner shows"
    );
    browser.screenshot("rollout-aborted").await;

    // What the page shows is what happened: the canary's weight is back to 0, stable answers.
    let view = gg.admin_api().get("/v1/services/web/rollout").await;
    assert_eq!(view["state"], "aborted", "{view}");
    assert_eq!(view["weight"].as_f64(), Some(0.0), "{view}");
    let (_, canary_answers, _) = traffic.stop().await;
    assert!(canary_answers > 0, "the canary answered during the rollout");
    let history = gg.admin_api().get("/v1/history?limit=50").await;
    let started_by_alice =
        history["entries"].as_array().unwrap().iter().any(|e| {
            e["actor"] == "alice" && e["summary"].as_str().unwrap_or("").contains("rollout")
        });
    assert!(
        started_by_alice,
        "the start is recorded under alice: {history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gray_list_entry_added_on_the_page_routes_that_ip_to_the_canary() {
    let (_s, _c, gg) = start(0.0).await;
    let browser = signed_in(1280, 900, &gg).await;
    let mut client = gg.client();
    let ip = [("x-real-ip", "10.9.8.7")];
    assert_eq!(client.version(&ip).await, "stable");

    browser.click("#nav-lists").await;
    browser
        .wait_text(
            "#list-name",
            "the gray list",
            Duration::from_secs(10),
            |t| t.contains(LIST),
        )
        .await;
    browser
        .wait_text(
            "#list-count",
            "an empty list",
            Duration::from_secs(10),
            |t| t == "0",
        )
        .await;
    browser.type_into("#list-key", "10.9.8.7").await;
    browser.type_into("#list-ttl", "1h").await;
    browser.click("#list-add").await;
    assert_eq!(browser.confirm().await, format!("Add 10.9.8.7 to {LIST}?"));
    browser.find("tr.entry[data-key='10.9.8.7']").await;
    browser
        .wait_text("#list-count", "one entry", Duration::from_secs(10), |t| {
            t == "1"
        })
        .await;
    let expires = browser.text("tr.entry[data-key='10.9.8.7']").await;
    assert!(
        expires.contains("in 60 min") || expires.contains("in 1 h"),
        "{expires}"
    );

    // A request from that IP goes to the canary; any other stays on stable.
    routed(&gg, &ip, "canary").await;
    assert_eq!(client.version(&[("x-real-ip", "10.9.8.8")]).await, "stable");
    // The search finds it.
    browser.type_into("#list-search", "9.8").await;
    browser.find("tr.entry[data-key='10.9.8.7']").await;

    // Removed from the page: back on stable.
    browser
        .click("tr.entry[data-key='10.9.8.7'] button.entry-remove")
        .await;
    assert_eq!(
        browser.confirm().await,
        format!("Remove 10.9.8.7 from {LIST}?")
    );
    browser
        .wait_text(
            "#list-count",
            "the entry removed",
            Duration::from_secs(10),
            |t| t == "0",
        )
        .await;
    routed(&gg, &ip, "stable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_set_on_the_page_is_undone_from_the_history() {
    let (_s, _c, gg) = start(0.0).await;
    let browser = signed_in(1280, 900, &gg).await;
    let mut admin = gg.admin_api();
    let before = admin.revision().await;

    // The weight control: everyone without a rule to the canary.
    browser
        .type_into("[data-version='canary'] input.weight-input", "100")
        .await;
    browser
        .click("[data-version='canary'] button.weight-apply")
        .await;
    assert_eq!(
        browser.confirm().await,
        "Set the weight of canary in web to 100 %?"
    );
    let changed = before + 1;
    shows_revision(&browser, changed).await;
    routed(&gg, &[("x-user-id", "42")], "canary").await;

    // The history shows the change under alice; its diff; undo it.
    browser.click("#nav-history").await;
    let row = format!("tr.change[data-revision='{changed}']");
    let text = browser.text(&row).await;
    assert!(
        text.contains("alice"),
        "the change under the signed-in name: {text}"
    );
    browser.click(&format!("{row} button.diff")).await;
    browser
        .wait_text("#history-diff", "the diff", Duration::from_secs(10), |t| {
            t.contains("100")
        })
        .await;
    browser.click(&format!("{row} button.undo")).await;
    assert_eq!(browser.confirm().await, format!("Undo revision {changed}?"));
    let undone = changed + 1;
    shows_revision(&browser, undone).await;
    routed(&gg, &[("x-user-id", "42")], "stable").await;
    let weights = admin.get("/v1/services/web/weights").await;
    assert_eq!(
        weights["split"]["weights"]["canary"].as_f64(),
        Some(0.0),
        "{weights}"
    );
    let history = admin.get("/v1/history?limit=1").await;
    assert_eq!(history["entries"][0]["actor"], "alice", "{history}");
    assert_eq!(history["entries"][0]["revision"], undone, "{history}");
    browser
        .find(&format!("tr.change[data-revision='{undone}']"))
        .await;
}

/// A page of another origin that posts a form to `target` as soon as it loads.
async fn foreign_page(
    target: String,
    enctype: &'static str,
    field: &'static str,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let page = format!(
        "<!doctype html><title>evil</title><form id=f method=post action=\"{target}\" enctype=\"{enctype}\">\
         <input type=hidden name='{field}' value='x'></form><script>document.getElementById('f').submit()</script>"
    );
    tokio::spawn(async move {
        for _ in 0..10 {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut head = [0u8; 4096];
            let _ = socket.read(&mut head).await;
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = socket.write_all(reply.as_bytes()).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_post_from_another_origin_is_refused_though_signed_in() {
    let (_s, _c, gg) = start(0.0).await;
    // Signed in: the browser holds the session cookie for 127.0.0.1.
    let browser = signed_in(1280, 900, &gg).await;
    let mut admin = gg.admin_api();
    let before = admin.revision().await;
    let base = format!("http://{}", gg.admin_addr());

    // Another port of the same host: same site, so SameSite=Strict still sends the cookie;
    // only the Origin check stands between the page and the API.
    let cases = [
        (
            format!("{base}/v1/services/web/weights"),
            "application/x-www-form-urlencoded",
            "weights",
        ),
        (
            format!("{base}/v1/services/web/rules"),
            "text/plain",
            "{\"name\":\"evil\",\"version\":\"canary\",\"when\":{\"always\":true},\"x\":\"",
        ),
        (
            format!("{base}/v1/services/web/promote"),
            "multipart/form-data",
            "x",
        ),
    ];
    for (target, enctype, field) in cases {
        let evil = foreign_page(target.clone(), enctype, field).await;
        browser.goto(&format!("http://{evil}/")).await;
        let refused = browser
            .wait_text(
                "body",
                "the API's answer to the form",
                Duration::from_secs(10),
                |t| t.contains("\"error\""),
            )
            .await;
        assert!(
            refused.contains("forbidden") && refused.contains("refused: Origin `http://127.0.0.1:"),
            "{enctype} to {target}: {refused}"
        );
    }
    assert_eq!(admin.revision().await, before, "nothing changed");
    let rules = admin.get("/v1/services/web").await;
    assert!(!rules.to_string().contains("evil"), "{rules}");
}

/// The heartbeat of the fleet panel's instances.
const HEARTBEAT: Duration = Duration::from_millis(300);

/// The fleet panel's row of instance `id`, or the cell `cell` of it.
fn fleet_row(id: &str, cell: &str) -> String {
    format!("#fleet-panel tr.instance[data-instance='{id}'] {cell}")
        .trim_end()
        .to_string()
}

/// Two instances on one Redis, A with an upstream B lacks: A's page lists both (A marked as
/// the one serving it), and after a change through A that uses that upstream the panel shows B
/// diverged with the reason, in red, in ctl fleet's words, and the header says so. When Redis
/// goes away the panel says the store is unreadable; when A's admin API goes away, it says it
/// cannot read the fleet and the page stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_panel_lists_every_instance_and_shows_one_that_cannot_apply_a_change() {
    let mut redis = RedisServer::start().await;
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let extra = backend("extra").await;
    let on_redis = || {
        web_gateway(&stable, &canary)
            .service(web())
            .store(redis_store(redis.url()))
            .admin_token("alice", TOKEN)
            .fleet(HEARTBEAT, "reseed")
    };
    let a = on_redis().upstream("extra", &extra).start().await;
    let b = on_redis().start().await;
    let a_id = a.admin_api().get("/v1/fleet").await["this"]
        .as_str()
        .expect("A's id")
        .to_string();
    let b_id = b.admin_api().get("/v1/fleet").await["this"]
        .as_str()
        .expect("B's id")
        .to_string();

    // A's page lists both, A as the one serving the page, both in step.
    let browser = signed_in(1280, 900, &a).await;
    browser
        .wait_text(
            "#fleet-summary",
            "both instances listed",
            Duration::from_secs(10),
            |t| t == "store at revision 1; 2 live instances, all in step",
        )
        .await;
    assert_eq!(
        browser.text(&fleet_row(&a_id, ".role")).await,
        "this page",
        "A marks itself"
    );
    assert!(
        browser.all(&fleet_row(&b_id, ".role")).await.is_empty(),
        "B is not the page's instance"
    );
    for id in [&a_id, &b_id] {
        assert_eq!(browser.text(&fleet_row(id, ".instance-state")).await, "ok");
        assert_eq!(
            browser.text(&fleet_row(id, ".instance-revision")).await,
            "1"
        );
        assert_eq!(
            browser.text(&fleet_row(id, ".instance-source")).await,
            "store"
        );
        assert_eq!(
            browser.text(&fleet_row(id, ".instance-store")).await,
            "healthy"
        );
    }
    let seen = browser.text(&fleet_row(&b_id, ".instance-seen")).await;
    assert!(seen.ends_with(" s ago"), "last seen, as a time ago: {seen}");
    assert_eq!(browser.text("#fleet-state").await, "fleet: 2 in step");

    // A change through A that B cannot apply: B is diverged at 2, with the reason, in red.
    a.ctl().ok(&["versions", "set", "-s", "web", "v3", "extra"]);
    let state = browser
        .wait_text(
            &fleet_row(&b_id, ".instance-state"),
            "B diverged on A's page",
            Duration::from_secs(10),
            |t| t.starts_with("DIVERGED at 2: "),
        )
        .await;
    assert!(state.contains("unknown upstream `extra`"), "{state}");
    assert_eq!(
        browser.text(&fleet_row(&b_id, ".instance-revision")).await,
        "1 (store 2)",
        "B routes with what it applied"
    );
    let class = browser
        .js(&format!(
            "return document.querySelector(\"{}\").className",
            fleet_row(&b_id, "")
        ))
        .await;
    assert_eq!(class, Value::from("instance bad"), "B's row is marked red");
    let colour = browser
        .js(&format!(
            "return getComputedStyle(document.querySelector(\"{}\")).color",
            fleet_row(&b_id, ".instance-state")
        ))
        .await;
    assert_eq!(
        colour,
        Value::from("rgb(185, 28, 28)"),
        "in the colour of trouble"
    );
    browser
        .wait_text(
            &fleet_row(&a_id, ".instance-revision"),
            "A at 2",
            Duration::from_secs(10),
            |t| t == "2",
        )
        .await;
    assert_eq!(
        browser.text(&fleet_row(&a_id, ".instance-state")).await,
        "ok"
    );
    assert_eq!(
        browser.text("#fleet-summary").await,
        "store at revision 2; 2 live instances; 1 needs attention"
    );
    assert_eq!(browser.text("#fleet-state").await, "fleet: 1 diverged");
    // The page's words are ctl fleet's: its table's line for B ends with the same state.
    let table = a.ctl().ok(&["fleet"]);
    let line = table
        .lines()
        .find(|l| l.starts_with(b_id.as_str()))
        .unwrap_or_else(|| panic!("B in ctl fleet: {table}"));
    assert!(line.ends_with(&state), "ctl: `{line}`, page: `{state}`");

    // Screenshots of the header and the panel at desktop and phone widths; nothing runs off a
    // phone's side.
    let header = browser.screenshot("fleet-header-1280").await;
    browser
        .js("document.getElementById('fleet-panel').scrollIntoView()")
        .await;
    let desktop = browser.screenshot("fleet-1280").await;
    browser.resize(390, 844).await;
    browser
        .js("document.getElementById('fleet-panel').scrollIntoView()")
        .await;
    let overflow = browser
        .js("return document.documentElement.scrollWidth - window.innerWidth")
        .await;
    assert!(
        overflow.as_i64().is_some_and(|px| px <= 0),
        "the page is {overflow} px wider than a 390 px phone"
    );
    let phone = browser.screenshot("fleet-390").await;
    eprintln!(
        "screenshots: {} {} {}",
        header.display(),
        desktop.display(),
        phone.display()
    );

    // Redis goes away: A's page says the store is unreadable and A's store degraded (B's record
    // cannot be read any more).
    browser.resize(1280, 900).await;
    redis.stop();
    browser
        .wait_text(
            &fleet_row(&a_id, ".instance-state"),
            "A's store degraded",
            Duration::from_secs(15),
            |t| t == "store degraded",
        )
        .await;
    assert_eq!(
        browser.text("#fleet-summary").await,
        "store unreadable: other instances may be missing; 1 listed; 1 needs attention"
    );
    assert!(
        browser
            .text(&fleet_row(&a_id, ".instance-store"))
            .await
            .starts_with("degraded since "),
        "since when"
    );
    assert_eq!(
        browser.text("#fleet-state").await,
        "fleet: 1 needs attention"
    );
    browser
        .js("document.getElementById('fleet-panel').scrollIntoView()")
        .await;
    browser.screenshot("fleet-store-down-1280").await;

    // A's admin API goes away: the panel says it cannot read the fleet, keeps the last table,
    // and the page stays up.
    a.kill();
    let error = browser
        .wait_text(
            "#fleet-error",
            "the failed read said in the panel",
            Duration::from_secs(10),
            |t| !t.is_empty(),
        )
        .await;
    assert!(
        error.starts_with("The fleet view cannot be read: the admin API cannot be reached")
            && error.contains("The table below is as read at"),
        "{error}"
    );
    assert!(browser
        .find("#fleet-error")
        .await
        .is_displayed()
        .await
        .unwrap());
    assert_eq!(browser.text("#fleet-state").await, "fleet: unknown");
    assert_eq!(
        browser.text(&fleet_row(&a_id, ".instance-state")).await,
        "store degraded",
        "the last table stays"
    );
    assert_eq!(browser.all("#app").await.len(), 1, "the page stays");
    drop(b);
}
