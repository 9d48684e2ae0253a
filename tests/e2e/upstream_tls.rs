//! TLS from graygate to its upstreams: servers written `https://`, verified against the
//! upstream's `ca` or the system roots, with SNI, a client certificate for servers that require
//! one, and a certificate that fails verification treated as a server that cannot be reached.

use crate::support::*;

/// An upstream entry with `servers`, the rest set by `edit`.
fn upstream(name: &str, servers: &[String], edit: impl FnOnce(&mut UpstreamFile)) -> UpstreamFile {
    let mut u = UpstreamFile {
        name: name.into(),
        servers: servers.to_vec(),
        ..UpstreamFile::default()
    };
    edit(&mut u);
    u
}

fn https(backend: &TlsBackend) -> String {
    format!("https://{}", backend.addr())
}

/// An upstream of `backend` at `https://localhost:PORT` verified with the test CA.
fn trusted(name: &str, backend: &TlsBackend, pki: &Pki) -> UpstreamFile {
    let server = format!("https://localhost:{}", backend.addr().port());
    upstream(name, &[server], |u| u.ca = Some(pki.path("ca.pem")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_verified_with_its_ca_and_sent_its_host_as_sni() {
    let pki = Pki::new();
    let stable = tls_backend("stable", &pki).start().await;
    let gg = gateway()
        .upstream_file(trusted("stable", &stable, &pki))
        .service(service("web").stable("stable", "stable"))
        .route(route("web"))
        .start()
        .await;
    let mut c = gg.client();
    for _ in 0..3 {
        let r = c.get(&[("x-user", "7")]).await;
        assert_eq!(r.status, 200, "{r:?}\n{}", gg.log_text());
        assert_eq!(r.body, "stable\n");
        assert_eq!(r.headers["x-sni"], "localhost", "the host is the SNI");
        assert_eq!(r.headers["x-alpn"], "http/1.1");
        assert_eq!(r.headers["x-http-version"], "HTTP/1.1");
        assert_eq!(
            r.headers["echo-host"], "example.com",
            "Host as the client sent it"
        );
        assert_eq!(r.headers["echo-x-user"], "7");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_names_every_server_and_an_ip_address_sends_none() {
    let pki = Pki::new();
    let named = tls_backend("named", &pki).start().await;
    let by_ip = tls_backend("by-ip", &pki).start().await;
    let gg = gateway()
        .upstream_file(upstream("stable", &[https(&named)], |u| {
            u.ca = Some(pki.path("ca.pem"));
            u.sni = Some("stable.test".into());
        }))
        .upstream_file(upstream("canary", &[https(&by_ip)], |u| {
            u.ca = Some(pki.path("ca.pem"));
        }))
        .route(route("web"))
        .service(web().rule("beta", "canary", header("X-Env").equals("beta")))
        .start()
        .await;
    let mut c = gg.client();
    let r = c.get(&[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "named\n"), "{r:?}");
    assert_eq!(r.headers["x-sni"], "stable.test");
    // 127.0.0.1: no SNI (RFC 6066), verified against the certificate's IP address.
    let r = c.get(&[("X-Env", "beta")]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "by-ip\n"), "{r:?}");
    assert_eq!(r.headers["x-sni"], "-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_requires_a_client_certificate_gets_it() {
    let pki = Pki::new();
    let mtls = tls_backend("mtls", &pki)
        .require_client_cert()
        .start()
        .await;
    let with_cert = gateway()
        .upstream_file(upstream("stable", &[https(&mtls)], |u| {
            u.ca = Some(pki.path("ca.pem"));
            u.client_cert = Some(pki.path("client.pem"));
            u.client_key = Some(pki.path("client.key"));
        }))
        .service(service("web").stable("stable", "stable"))
        .route(route("web"))
        .start()
        .await;
    let r = with_cert.client().get(&[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "mtls\n"), "{r:?}");
    assert_eq!(r.headers["x-client-cert"], "graygate-client");

    // Without one, the server refuses the handshake: nothing else can answer, so 502.
    let without = gateway()
        .upstream_file(upstream("stable", &[https(&mtls)], |u| {
            u.ca = Some(pki.path("ca.pem"));
        }))
        .service(service("web").stable("stable", "stable"))
        .route(route("web"))
        .start()
        .await;
    let r = without.client().get(&[]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.body, "graygate: upstream unavailable\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_unknown_ca_is_a_server_that_cannot_be_reached() {
    let pki = Pki::new();
    let stable = tls_backend("stable", &pki).start().await;
    let canary = tls_backend("canary", &pki).start().await;
    let wrong_ca = |name: &str, backend: &TlsBackend| {
        upstream(name, &[https(backend)], |u| {
            u.ca = Some(pki.path("other-ca.pem"));
        })
    };
    // The canary's certificate is not trusted: its requests fall back to stable.
    let gg = gateway()
        .upstream_file(trusted("stable", &stable, &pki))
        .upstream_file(wrong_ca("canary", &canary))
        .route(route("web"))
        .service(web().rule("beta", "canary", header("X-Env").equals("beta")))
        .start()
        .await;
    let mut c = gg.client();
    for _ in 0..3 {
        let r = c.get(&[("X-Env", "beta")]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "stable\n"), "{r:?}");
    }
    let log = gg.log_text();
    let down: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("upstream server is down"))
        .collect();
    assert_eq!(down.len(), 1, "logged once:\n{log}");
    assert!(
        down[0].contains("TLS handshake") && down[0].contains("UnknownIssuer"),
        "{}",
        down[0]
    );

    // Stable's certificate is not trusted: nothing can answer, 502.
    let gg = gateway()
        .upstream_file(wrong_ca("stable", &stable))
        .service(service("web").stable("stable", "stable"))
        .route(route("web"))
        .start()
        .await;
    let r = gg.client().get(&[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (502, "graygate: upstream unavailable\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ca_the_system_roots_decide() {
    let pki = Pki::new();
    let stable = tls_backend("stable", &pki).start().await;
    let server = format!("https://localhost:{}", stable.addr().port());
    let config = || {
        gateway()
            .upstream_file(upstream("stable", std::slice::from_ref(&server), |_| {}))
            .service(service("web").stable("stable", "stable"))
            .route(route("web"))
    };
    // SSL_CERT_FILE replaces the system's bundle, as it does for OpenSSL: with the test CA in it,
    // the server is trusted; with another CA, it is not.
    let trusting = config()
        .env("SSL_CERT_FILE", &pki.path("ca.pem"))
        .start()
        .await;
    let r = trusting.client().get(&[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "stable\n"), "{r:?}");
    let distrusting = config()
        .env("SSL_CERT_FILE", &pki.path("other-ca.pem"))
        .start()
        .await;
    assert_eq!(distrusting.client().get(&[]).await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_tls_files_that_cannot_be_used() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
    let check_with = |edit: &dyn Fn(&mut UpstreamFile)| {
        let mut u = upstream("stable", &["https://localhost:8443".into()], |_| {});
        edit(&mut u);
        let path = gateway()
            .upstream_file(u)
            .service(service("web").stable("stable", "stable"))
            .route(route("web"))
            .write(dir.path());
        let c = check(&path);
        assert_eq!(c.code, 1, "{c:?}");
        c.stderr.replace(&format!("{}/", dir.path().display()), "")
    };
    type Edit<'a> = &'a dyn Fn(&mut UpstreamFile);
    let cases: [(Edit, String); 5] = [
        (
            &|u| u.ca = Some("missing.pem".into()),
            "graygate.toml:6:1: upstreams[0].ca: cannot read missing.pem: No such file or directory (os error 2)".into(),
        ),
        (
            &|u| u.ca = Some("empty.pem".into()),
            "graygate.toml:6:1: upstreams[0].ca: no certificate in empty.pem (expected PEM `-----BEGIN CERTIFICATE-----`)".into(),
        ),
        (
            &|u| u.client_cert = Some(pki.path("client.pem")),
            "upstreams[0].client_key: `client_cert` and `client_key` go together: give both".into(),
        ),
        (
            &|u| {
                u.client_cert = Some(pki.path("client.pem"));
                u.client_key = Some(pki.path("server.key"));
            },
            format!(
                "upstreams[0].client_key: {} is not the key of {}",
                pki.path("server.key"),
                pki.path("client.pem")
            ),
        ),
        (
            &|u| u.protocol = Some("h2c".into()),
            "graygate.toml:6:1: upstreams[0].protocol: `h2c` is HTTP/2 over plain TCP, but the upstream uses TLS".into(),
        ),
    ];
    for (edit, want) in cases {
        let got = check_with(edit);
        assert!(got.contains(&want), "want: {want}\ngot:  {got}");
    }
}
