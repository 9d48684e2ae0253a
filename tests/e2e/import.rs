//! `graygate import` holds what it writes to the admin API's bounds: a TTL past ten years is a
//! usage error naming `--ttl` (it was a panic, exit 101), and every key gets the admin API's key
//! checks, refused with the `file:line` at fault (a 300-byte key, or a non-IP key in a list rules
//! look the client IP up in, were written).

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_refuses_what_the_admin_api_refuses() {
    let builder = web_gateway(dead_addr(), dead_addr())
        .admin()
        .service(web().rule(
            "gray-ips",
            "canary",
            client_ip().lookup("gray_ips").equals("1"),
        ));
    let dir = tempfile::Builder::new()
        .prefix("graygate-e2e")
        .tempdir()
        .expect("a temp dir")
        .keep();
    let config = builder.write(&dir);
    std::fs::write(dir.join("ips.txt"), "10.0.0.7\n# office\n10.0.0.8 0\n").unwrap();
    std::fs::write(dir.join("names.txt"), "10.0.0.9\n\nalice\n").unwrap();
    let long = format!("tok-1 42\n{} 7\n", "k".repeat(300));
    std::fs::write(dir.join("tokens.txt"), long).unwrap();

    let got = import(
        &config,
        &["--list", "gray_ips", "--ttl", "500000000000y", "ips.txt"],
    );
    assert_eq!(got.code, 2, "a usage error, not a panic: {got:?}");
    assert!(got.stderr.contains("--ttl"), "{got:?}");
    assert!(
        got.stderr
            .contains("`500000000000y` is longer than the longest TTL, 10 years"),
        "{got:?}"
    );

    let got = import(&config, &["--list", "gray_ips", "names.txt"]);
    assert_eq!(got.code, 1, "{got:?}");
    assert!(
        got.stderr.contains(
            "names.txt:3: `alice` is not an IP address, and this list is looked up by client IP \
             (services[0].rules[0].when): it would never match"
        ),
        "{got:?}"
    );

    let got = import(&config, &["--list", "tokens", "tokens.txt"]);
    assert_eq!(got.code, 1, "{got:?}");
    assert!(got.stderr.contains("tokens.txt:2: `kkkk"), "{got:?}");
    assert!(
        got.stderr.contains("is not a key: 1 to 250 bytes"),
        "{got:?}"
    );

    let got = import(&config, &["--list", "gray_ips", "--ttl", "10y", "ips.txt"]);
    assert_eq!(got.code, 0, "{got:?}");
    assert!(
        got.stdout
            .contains("imported 2 entries from ips.txt into list `gray_ips`"),
        "{got:?}"
    );

    // Only the accepted file was written.
    let gg = builder.start_in(dir).await;
    let mut admin = gg.admin_api();
    let ips = admin.get("/v1/lists/gray_ips/entries").await;
    let keys: Vec<&str> = ips["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["10.0.0.7", "10.0.0.8"], "{ips}");
    assert!(ips["entries"][0]["ttl_seconds"].as_u64().unwrap() > 9 * 365 * 86_400);
    assert_eq!(admin.get("/v1/lists/tokens/count").await["count"], 0);
}

/// Into a memcached list while graygate serves: the embedded policy store is graygate's (it
/// failed on its lock before), the lists are memcached's, so the import goes on; the keys are
/// checked against the config's policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_into_memcached_while_graygate_serves() {
    let memcached = MemcachedServer::start().await;
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let gg = web_gateway(&stable, &canary)
        .store(&memcached)
        .cache_ttl(std::time::Duration::from_millis(200))
        .trusted_proxies(["127.0.0.0/8"])
        .service(web().rule(
            "gray-ips",
            "canary",
            client_ip().lookup("gray_ips").equals("1"),
        ))
        .start()
        .await;
    let config = gg.dir().join("graygate.toml");
    std::fs::write(gg.dir().join("ips.txt"), "10.0.0.7\n10.0.0.8 0\n").unwrap();
    std::fs::write(gg.dir().join("names.txt"), "alice\n").unwrap();

    let got = import(&config, &["--list", "gray_ips", "ips.txt"]);
    assert_eq!(got.code, 0, "{got:?}");
    assert!(
        got.stdout
            .contains("imported 2 entries from ips.txt into list `gray_ips`"),
        "{got:?}"
    );
    assert!(
        got.stderr.contains(
            "held by a running graygate: the keys are checked against the config's policy"
        ),
        "{got:?}"
    );
    gg.eventually_answers(&[("X-Real-IP", "10.0.0.7")], "canary")
        .await;
    assert_eq!(
        gg.client().version(&[("X-Real-IP", "10.0.0.8")]).await,
        "stable"
    );
    // The config's policy looks the list up by client IP: a name is refused, as before.
    let got = import(&config, &["--list", "gray_ips", "names.txt"]);
    assert_eq!(got.code, 1, "{got:?}");
    assert!(
        got.stderr
            .contains("names.txt:1: `alice` is not an IP address"),
        "{got:?}"
    );
}
