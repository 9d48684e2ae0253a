//! Upstreams in the shared policy: two graygate instances on one real Redis, each with its own
//! config file. A server added, drained or weighted through one instance's admin API (or
//! `graygate ctl`) changes where both send requests; an invalid definition is refused naming its
//! field and writes nothing; an upstream only in the config files works as before; a revision
//! one instance cannot build (a CA file only the other has) leaves that instance on its old
//! policy while the other runs it, and its admin API still takes changes (for the fleet).

use crate::support::*;
use graygate::policy::upstreams::{ServerDoc, UpstreamDoc};
use std::collections::BTreeMap;
use std::time::Duration;

/// `web` on the shared upstream `api` (one server: `first`), and `local` (path `/local`) on an
/// upstream only in the config file; over `redis`, with the admin API.
fn instance(redis: &RedisServer, first: &Backend, local: &Backend) -> GatewayBuilder {
    let mut builder = gateway()
        .upstream("local", local)
        .store(redis_store(redis.url()))
        .admin()
        .service(service("web").stable("v1", "api"))
        .service(service("local").stable("v1", "local"))
        .route(route("local").path_prefix("/local"))
        .route(route("web"));
    builder.policy_mut().upstreams.insert(
        "api".into(),
        UpstreamDoc {
            servers: vec![ServerDoc::new(first.addr().to_string())],
            ..UpstreamDoc::default()
        },
    );
    builder
}

/// Which backend answered each of `n` requests to `/`, counted by name.
async fn spread(client: &mut Client, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        *seen.entry(client.version(&[]).await).or_default() += 1;
    }
    seen
}

/// The revision an instance runs (its status), not the one stored.
async fn running(admin: &mut Admin) -> u64 {
    admin.get("/v1/status").await["revision"]
        .as_u64()
        .expect("a revision in the status")
}

/// Waits until `admin`'s instance runs `revision`.
async fn runs(admin: &mut Admin, revision: u64, who: &str) {
    eventually(format!("{who} runs revision {revision}"), async || {
        equals(running(admin).await, revision)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_added_drained_and_weighted_through_one_instance_route_on_both() {
    let (api1, api2, local) = (
        backend("api-1").await,
        backend("api-2").await,
        backend("local").await,
    );
    let redis = RedisServer::start().await;
    let a = instance(&redis, &api1, &local).start().await;
    let b = instance(&redis, &api1, &local).start().await;
    let (mut ca, mut cb) = (a.client(), b.client());
    let (mut aa, mut ab) = (a.admin_api(), b.admin_api());
    assert_eq!(
        spread(&mut ca, 10).await,
        BTreeMap::from([("api-1".into(), 10)])
    );
    assert_eq!(
        spread(&mut cb, 10).await,
        BTreeMap::from([("api-1".into(), 10)])
    );

    // A server added through A: B sends to it too.
    let api2_addr = api2.addr().to_string();
    let (reply, json) = aa
        .send(
            "POST",
            "/v1/upstreams/api/servers",
            &[],
            &format!(r#"{{"address":"{api2_addr}"}}"#),
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let added = json["revision"].as_u64().expect("the change's revision");
    runs(&mut ab, added, "B").await;
    let both = spread(&mut cb, 40).await;
    assert_eq!(both.get("api-1"), Some(&20), "{both:?}");
    assert_eq!(both.get("api-2"), Some(&20), "{both:?}");

    // A weight: 3 to 1, on both instances (the smooth round robin is exact over whole rounds).
    let api1_addr = api1.addr().to_string();
    let (reply, json) = aa
        .send(
            "PATCH",
            &format!("/v1/upstreams/api/servers/{api1_addr}"),
            &[],
            r#"{"weight":3}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let weighted = json["revision"].as_u64().unwrap();
    runs(&mut ab, weighted, "B").await;
    runs(&mut aa, weighted, "A").await;
    for client in [&mut ca, &mut cb] {
        let split = spread(client, 400).await;
        assert_eq!(split.get("api-1"), Some(&300), "{split:?}");
        assert_eq!(split.get("api-2"), Some(&100), "{split:?}");
    }

    // Drained through `graygate ctl` on B while a slow request is in flight on it through A:
    // that request finishes on the table it started with; neither instance sends it new ones.
    api2.delay(patient(Duration::from_secs(3)));
    let arrived = api2.requests();
    // Four turns of the 3:1 schedule: one of them is api-2's.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let mut client = a.client();
            tokio::spawn(async move { client.get(&[]).await })
        })
        .collect();
    eventually("a request is in flight on api-2", async || {
        equals(api2.requests(), arrived + 1)
    })
    .await;
    let out = b.ctl().ok(&["upstreams", "drain", "api", &api2_addr]);
    assert!(
        out.contains(&format!("upstream api: server {api2_addr} drained")),
        "{out}"
    );
    let drained = ab.revision().await;
    runs(&mut aa, drained, "A").await;
    runs(&mut ab, drained, "B").await;
    assert!(
        !slow.iter().all(|t| t.is_finished()),
        "the slow request was still in flight when A swapped its table"
    );
    let mut answered = Vec::new();
    for task in slow {
        let reply = task.await.expect("the request task");
        assert_eq!(reply.status, 200, "{reply:?}");
        answered.push(reply.body.trim().to_string());
    }
    answered.sort();
    assert_eq!(answered, ["api-1", "api-1", "api-1", "api-2"]);
    api2.delay(Duration::ZERO);
    let before = api2.requests();
    assert_eq!(
        spread(&mut ca, 50).await,
        BTreeMap::from([("api-1".into(), 50)])
    );
    assert_eq!(
        spread(&mut cb, 50).await,
        BTreeMap::from([("api-1".into(), 50)])
    );
    assert_eq!(api2.requests(), before, "a drained server got requests");

    // Both list the same shared upstream, and the config file's own with its source.
    for admin in [&mut aa, &mut ab] {
        let list = admin.get("/v1/upstreams").await;
        let upstreams = list["upstreams"].as_array().unwrap();
        let by_name = |name: &str| {
            upstreams
                .iter()
                .find(|u| u["name"] == name)
                .unwrap_or_else(|| panic!("{name} listed: {list}"))
        };
        assert_eq!(by_name("local")["source"], "config");
        let api = by_name("api");
        assert_eq!(api["source"], "policy");
        assert_eq!(
            api["servers"],
            serde_json::json!([
                {"address": api1_addr, "weight": 3, "drained": false},
                {"address": api2_addr, "weight": 1, "drained": true},
            ])
        );
    }
    let table = a.ctl().ok(&["upstreams", "list"]);
    assert!(
        table.contains("policy") && table.contains("config"),
        "{table}"
    );

    // The upstream only in the config files works unchanged on both.
    for client in [&mut ca, &mut cb] {
        let r = client.get_path("/local", &[]).await;
        assert_eq!((r.status, r.body.trim()), (200, "local"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_definition_is_refused_naming_its_field_and_nothing_is_written() {
    let (api1, local) = (backend("api-1").await, backend("local").await);
    let redis = RedisServer::start().await;
    let a = instance(&redis, &api1, &local).start().await;
    let mut admin = a.admin_api();
    let revision = admin.revision().await;
    let cases = [
        (
            "PUT",
            "/v1/upstreams/api",
            r#"{"servers":[{"address":"127.0.0.1:9"},{"address":"nohost"}]}"#,
            "upstreams.api.servers[1]",
            "upstreams.api.servers[1]: `nohost` has no port: write host:port",
        ),
        (
            "PUT",
            "/v1/upstreams/extra",
            r#"{"servers":[{"address":"127.0.0.1:9"}],"protocol":"http3"}"#,
            "upstreams.extra.protocol",
            "upstreams.extra.protocol: unknown protocol `http3` (known: http1, h2, h2c)",
        ),
        (
            "PATCH",
            &format!("/v1/upstreams/api/servers/{}", api1.addr()),
            r#"{"drained":true}"#,
            "upstreams.api.servers",
            "upstreams.api.servers: upstream `api` needs at least one server that is not drained: every request to it would fail",
        ),
        (
            "DELETE",
            "/v1/upstreams/api",
            "",
            "services[0].versions.v1",
            "services[0].versions.v1: upstream `api` is used by version `v1` of service `web`: point the version elsewhere or delete it first",
        ),
    ];
    for (method, path, body, field, message) in cases {
        let (reply, json) = admin.send(method, path, &[], body).await;
        assert_eq!(reply.status, 422, "{method} {path}: {reply:?}");
        assert_eq!(json["error"]["field"], field, "{json}");
        assert_eq!(json["error"]["message"], message, "{json}");
    }
    assert_eq!(admin.revision().await, revision, "nothing was written");
    let history = admin.get("/v1/history").await;
    assert_eq!(
        history["entries"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );
    let mut client = a.client();
    assert_eq!(client.version(&[]).await, "api-1");

    // ctl says the same and exits 1.
    let run = a.ctl().run(&[
        "upstreams",
        "put",
        "api",
        r#"{"servers":[{"address":"nohost"}]}"#,
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("upstreams.api.servers[0]: `nohost` has no port: write host:port"),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_one_instance_cannot_build_leaves_it_on_its_old_policy() {
    let (api1, local) = (backend("api-1").await, backend("local").await);
    let redis = RedisServer::start().await;
    let a = instance(&redis, &api1, &local).start().await;
    let b = instance(&redis, &api1, &local).start().await;
    let (mut aa, mut ab) = (a.admin_api(), b.admin_api());
    let before = running(&mut ab).await;

    // Only A has the CA file its definition names (relative: each instance's config directory).
    let pki = Pki::new();
    std::fs::copy(pki.path("ca.pem"), a.dir().join("ca.pem")).expect("copy the CA");
    let (reply, json) = aa
        .send(
            "PUT",
            "/v1/upstreams/secure",
            &[],
            r#"{"servers":[{"address":"https://localhost:9"}],"ca":"ca.pem"}"#,
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let next = json["revision"].as_u64().unwrap();
    runs(&mut aa, next, "A").await;

    // B says why, once, and stays on its revision and its table.
    let line = b.log_line("not applied on this instance").await;
    assert!(
        line.contains("secure") && line.contains("upstreams.secure.ca"),
        "{line}"
    );
    assert_eq!(running(&mut ab).await, before);
    let listed = ab.get("/v1/upstreams").await;
    assert!(
        !listed["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "secure"),
        "{listed}"
    );
    // Both keep serving.
    let (mut ca, mut cb) = (a.client(), b.client());
    for client in [&mut ca, &mut cb] {
        assert_eq!(client.version(&[]).await, "api-1");
    }
    // B's admin API still takes changes: they are the fleet's (A runs them); B stays as it is.
    let (reply, json) = ab
        .send(
            "PATCH",
            &format!("/v1/upstreams/api/servers/{}", api1.addr()),
            &[],
            r#"{"weight":2}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let next = json["revision"].as_u64().unwrap();
    runs(&mut aa, next, "A").await;
    assert_eq!(running(&mut ab).await, before);
    assert_eq!(cb.version(&[]).await, "api-1");

    // Once B has the file too, the next reload applies the revision.
    std::fs::copy(pki.path("ca.pem"), b.dir().join("ca.pem")).expect("copy the CA");
    eventually("B applies the revision once it has the CA", async || {
        equals(running(&mut ab).await, next)
    })
    .within(Duration::from_secs(30))
    .await;
}
