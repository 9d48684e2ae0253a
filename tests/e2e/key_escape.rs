//! memcached keys as the original nginx + lua design writes them. Its client (lua-resty-memcached)
//! escapes every key with `ngx.escape_uri`: the IPv6 client `2001:db8::1` is the key
//! `2001%3Adb8%3A%3A1`, and a multi-hop `X-Forwarded-For` (looked up whole) is
//! `10.0.0.7%2C%2010.0.0.9`. These tests write those keys straight into a real memcached, as the
//! lua code would, and show graygate missing them by default and finding them, and writing them
//! (admin API, `graygate ctl`, `graygate import`), with `[store] key_escape = { list = "uri" }`.

use crate::original_layouts::memcached_design;
use crate::support::*;

/// The original's keys for an IPv6 client, a multi-hop `X-Forwarded-For` and an IPv4 client,
/// each flagged gray, written as lua-resty-memcached writes them.
fn write_the_originals_keys(mc: &MemcachedServer) {
    for key in ["2001%3Adb8%3A%3A1", "10.0.0.7%2C%2010.0.0.9", "10.0.0.5"] {
        let reply = mc.raw(&format!("set {key} 0 0 1\r\n1\r\n"), "\r\n");
        assert_eq!(reply, "STORED\r\n", "set {key}");
    }
}

/// What memcached holds under `key`: its value, or `None`.
fn stored(mc: &MemcachedServer, key: &str) -> Option<String> {
    let reply = mc.raw(&format!("get {key}\r\n"), "END\r\n");
    let mut lines = reply.lines();
    let head = lines.next()?;
    head.starts_with("VALUE ")
        .then(|| lines.next().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_key_escape_the_originals_ipv6_and_multi_hop_keys_are_missed() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let mc = MemcachedServer::start().await;
    write_the_originals_keys(&mc);
    let gg = memcached_design(&mc, &prod, &gray).start().await;
    // The observation: the same memcached, the same clients, another answer than the original.
    gg.client()
        .assert_versions(&[
            (&[("X-Real-IP", "2001:db8::1")], "prod"),
            (&[("X-Forwarded-For", "10.0.0.7, 10.0.0.9")], "prod"),
            // Keys with nothing to escape were always shared.
            (&[("X-Real-IP", "10.0.0.5")], "gray"),
        ])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_key_escape_uri_the_originals_keys_are_read_and_written() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let mc = MemcachedServer::start().await;
    write_the_originals_keys(&mc);
    let gg = memcached_design(&mc, &prod, &gray)
        .key_escape("gray_ips", "uri")
        .admin()
        .metrics()
        .start()
        .await;
    let mut c = gg.client();
    c.assert_versions(&[
        (&[("X-Real-IP", "2001:db8::1")], "gray"),
        // The original looks a multi-hop header up whole, never as its leftmost address.
        (&[("X-Forwarded-For", "10.0.0.7, 10.0.0.9")], "gray"),
        (&[("X-Forwarded-For", "10.0.0.9, 10.0.0.7")], "prod"),
        (&[("X-Forwarded-For", "10.0.0.5, 10.0.0.9")], "prod"),
        (&[("X-Forwarded-For", "10.0.0.5")], "gray"),
        (&[("X-Real-IP", "10.0.0.5")], "gray"),
        (&[("X-Real-IP", "2001:db8::2")], "prod"),
    ])
    .await;

    // Writes through `graygate ctl` land under the original's key, and take effect.
    let ctl = gg.ctl();
    ctl.ok(&["list", "add", "gray_ips", "2001:db8::2"]);
    assert_eq!(stored(&mc, "2001%3Adb8%3A%3A2").as_deref(), Some("1"));
    assert_eq!(stored(&mc, "2001:db8::2"), None);
    gg.eventually_answers(&[("X-Real-IP", "2001:db8::2")], "gray")
        .within(std::time::Duration::from_secs(2))
        .await;
    ctl.ok(&["list", "remove", "gray_ips", "2001:db8::1"]);
    assert_eq!(stored(&mc, "2001%3Adb8%3A%3A1"), None);
    gg.eventually_answers(&[("X-Real-IP", "2001:db8::1")], "prod")
        .within(std::time::Duration::from_secs(2))
        .await;
}

/// A `tokens` list looked up by the `TOKEN` header, its keys escaped: a key of 90 `:` is 270
/// bytes once escaped, past memcached's 250.
fn tokens_design(mc: &MemcachedServer, prod: &Backend, gray: &Backend) -> GatewayBuilder {
    gateway()
        .upstream("prod", prod)
        .upstream("gray", gray)
        .route(route("app"))
        .store(mc)
        .key_escape("tokens", "uri")
        .admin()
        .metrics()
        .service(crate::original_layouts::app_service().rule(
            "token",
            "gray",
            header("TOKEN").lookup("tokens").equals("1"),
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_too_long_once_escaped_is_refused_on_write_and_counted_on_lookup() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let mc = MemcachedServer::start().await;
    let builder = tokens_design(&mc, &prod, &gray);
    let dir = tempfile::Builder::new()
        .prefix("graygate-e2e")
        .tempdir()
        .expect("a temp dir");
    let config = builder.write(dir.path());
    let colons = ":".repeat(90);

    // `graygate import` escapes what it writes, and names the line of a key too long escaped.
    std::fs::write(dir.path().join("ok.txt"), "a:b 1\n2001:db8::3 1\n").unwrap();
    std::fs::write(dir.path().join("long.txt"), format!("a:c 1\n{colons} 1\n")).unwrap();
    let Imported {
        code,
        stdout,
        stderr,
    } = import(&config, &["--list", "tokens", "ok.txt"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stored(&mc, "a%3Ab").as_deref(), Some("1"));
    assert_eq!(stored(&mc, "2001%3Adb8%3A%3A3").as_deref(), Some("1"));
    let Imported {
        code,
        stdout,
        stderr,
    } = import(&config, &["--list", "tokens", "long.txt"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let escaped = "%3A".repeat(90);
    assert!(
        stderr.contains(&format!(
            "long.txt:2: `{colons}` is 270 bytes once escaped as the original's memcached client escapes it (`{escaped}`), and a memcached key holds at most 250"
        )),
        "{stderr}"
    );

    let gg = builder.start_in(dir.keep()).await;
    let mut c = gg.client();
    c.assert_versions(&[(&[("TOKEN", "a:b")], "gray"), (&[("TOKEN", "b:a")], "prod")])
        .await;

    // The admin API refuses it, naming the field.
    let mut admin = gg.admin_api();
    let body = serde_json::json!({"entries": [{"key": "a:d"}, {"key": colons}]}).to_string();
    let (reply, json) = admin
        .send("POST", "/v1/lists/tokens/entries", &[], &body)
        .await;
    assert_eq!(reply.status, 422, "{reply:?}");
    assert_eq!(json["error"]["field"], "entries[1].key", "{json}");
    let message = json["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("is 270 bytes once escaped as the original's memcached client escapes it"),
        "{json}"
    );
    // Nothing of the refused request was written.
    assert_eq!(stored(&mc, "a%3Ad"), None);

    // A request with that identity is served as not on the list, and counted.
    assert_eq!(c.version(&[("TOKEN", &colons)]).await, "prod");
    let counted = metric(
        &gg.scrape().await,
        r#"graygate_store_unusable_keys_total{store="memcached"}"#,
    );
    assert_eq!(counted, Some(1.0));
}
