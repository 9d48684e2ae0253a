//! One `[[upstreams]]` entry validated: its server lines (`https://` among them), its protocol
//! and its TLS settings, with the TLS files read, so that `graygate check` reports a file that is
//! missing or unusable, at the line of its field.
//!
//! The rules, each answered at the field it is about:
//! - servers written `https://host:port` use TLS, `http://host:port` or `host:port` do not;
//!   `tls = true` makes every server TLS, `tls = false` refuses `https://`; one upstream's servers
//!   all speak one way;
//! - `protocol = "h2"` is HTTP/2 over TLS (TLS is on unless `tls = false`, which is an error),
//!   `"h2c"` HTTP/2 over plain TCP (TLS is an error), `"http1"` the default;
//! - `ca`, `sni`, `client_cert`, `client_key` only with TLS; the files are relative to the
//!   config's directory; `client_cert` and `client_key` together.

use std::path::Path;

use super::file::UpstreamFile;
use super::ConfigError;
use crate::policy::upstreams::{check_servers, upstream_field, UpstreamDoc};
use crate::policy::FieldPath;
use crate::proxy::{PemFile, Protocol, ServerConfig, TlsOptions, Transport, UpstreamConfig};

/// Why this instance cannot build an upstream of the shared policy: which upstream, the field
/// (`upstreams.api.servers[1]`) and what is wrong with it. The same rules as a config file's
/// `[[upstreams]]`, so the message is the one `graygate check` would give for that line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SharedUpstreamError {
    /// The upstream's name.
    pub upstream: String,
    /// The field at fault, from the root of the policy document.
    pub field: FieldPath,
    /// What is wrong, without the field.
    pub message: String,
}

/// Upstream `name` of the shared policy as the data plane takes it, checked as a config file's
/// upstream is. Relative file paths (`ca`, `client_cert`, `client_key`) are read from `base`,
/// this instance's config directory: a file this instance lacks is an error here, and the
/// revision is not applied on this instance.
pub fn shared_upstream(
    name: &str,
    doc: &UpstreamDoc,
    base: &Path,
) -> Result<UpstreamConfig, SharedUpstreamError> {
    let root = upstream_field(name);
    // The inner checks write fields under a prefix of their own; it is swapped for the
    // upstream's path, so that a name with a dot in it stays one segment.
    const PREFIX: &str = "upstream";
    let error = |field: &str, message: String| {
        let rest = field
            .strip_prefix(PREFIX)
            .unwrap_or(field)
            .trim_start_matches('.');
        SharedUpstreamError {
            upstream: name.to_string(),
            field: root.join(&FieldPath::parse(rest)),
            message,
        }
    };
    check_servers(name, doc).map_err(|e| SharedUpstreamError {
        upstream: name.to_string(),
        field: e.field.unwrap_or_else(|| root.clone()),
        message: e.message,
    })?;
    let file = UpstreamFile {
        name: name.to_string(),
        servers: doc
            .servers
            .iter()
            .map(|s| match s.weight {
                1 => s.address.clone(),
                w => format!("{} weight={w}", s.address),
            })
            .collect(),
        protocol: doc.protocol.clone(),
        tls: doc.tls,
        ca: doc.ca.clone(),
        sni: doc.sni.clone(),
        client_cert: doc.client_cert.clone(),
        client_key: doc.client_key.clone(),
        health: doc.health.clone(),
        passive: doc.passive.clone(),
    };
    let at = |field: &str, message: String| ConfigError::Invalid {
        file: String::new(),
        line: 0,
        column: 0,
        field: field.to_string(),
        message,
    };
    let mut config = upstream_config(PREFIX, &file, base, &at).map_err(|e| match e {
        ConfigError::Invalid { field, message, .. } => error(&field, message),
        other => error("", other.to_string()),
    })?;
    for (server, given) in config.servers.iter_mut().zip(&doc.servers) {
        if given.drained {
            server.weight = 0;
        }
    }
    // The data plane's own rules (a TLS name for every server, health values that work
    // together), as for a config file; its fields start with `upstreams[0]`.
    crate::proxy::check_upstreams(std::slice::from_ref(&config)).map_err(|e| {
        let field = e.field();
        let rest = field.strip_prefix("upstreams[0]").unwrap_or(&field);
        error(&format!("{PREFIX}{rest}"), e.to_string())
    })?;
    Ok(config)
}

/// How a server line asked to be spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// `host:port`: as the upstream says (`tls`, `protocol`).
    Bare,
    /// `http://host:port`: plain TCP.
    Http,
    /// `https://host:port`: TLS.
    Https,
}

/// An upstream as the data plane takes it; `prefix` is where it is written (`upstreams[2]` in a
/// config file, `upstreams.api` in the shared policy), `base` the config's directory, `at`
/// places an error at a field.
pub(super) fn upstream_config(
    prefix: &str,
    u: &UpstreamFile,
    base: &Path,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<UpstreamConfig, ConfigError> {
    let field = |name: &str| format!("{prefix}.{name}");
    let mut servers = Vec::new();
    let mut schemes = Vec::new();
    for (j, line) in u.servers.iter().enumerate() {
        let trimmed = line.trim_start();
        let (scheme, rest) = if let Some(rest) = trimmed.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = trimmed.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            (Scheme::Bare, line.as_str())
        };
        let server = rest
            .parse::<ServerConfig>()
            .map_err(|e| at(&field(&format!("servers[{j}]")), e.to_string()))?;
        servers.push(server);
        schemes.push(scheme);
    }

    let protocol = match &u.protocol {
        None => Protocol::default(),
        Some(p) => p
            .parse::<Protocol>()
            .map_err(|e| at(&field("protocol"), e.to_string()))?,
    };

    let server_field = |j: usize| field(&format!("servers[{j}]"));
    let first_https = schemes.iter().position(|s| *s == Scheme::Https);
    let tls = match u.tls {
        Some(false) => {
            if let Some(j) = first_https {
                return Err(at(
                    &server_field(j),
                    format!(
                        "`{}` asks for TLS, but the upstream sets tls = false",
                        u.servers[j].trim()
                    ),
                ));
            }
            false
        }
        Some(true) => {
            if let Some(j) = schemes.iter().position(|s| *s == Scheme::Http) {
                return Err(at(
                    &server_field(j),
                    format!(
                        "`{}` is plain HTTP, but the upstream sets tls = true",
                        u.servers[j].trim()
                    ),
                ));
            }
            true
        }
        None => match first_https {
            Some(https) => {
                if let Some(j) = schemes.iter().position(|s| *s != Scheme::Https) {
                    return Err(at(
                        &server_field(j),
                        format!(
                            "`{}` is plain but `{}` is TLS: the servers of one upstream all speak one way (write https:// on each, or set tls = true)",
                            u.servers[j].trim(),
                            u.servers[https].trim()
                        ),
                    ));
                }
                true
            }
            None => protocol == Protocol::H2 && !schemes.contains(&Scheme::Http),
        },
    };

    let tls_options = if tls {
        let read = |name: &str, value: &Option<String>| -> Result<Option<PemFile>, ConfigError> {
            let Some(file) = value else { return Ok(None) };
            let path = base.join(file);
            PemFile::read(path.clone())
                .map(Some)
                .map_err(|e| at(&field(name), format!("cannot read {}: {e}", path.display())))
        };
        Some(TlsOptions {
            ca: read("ca", &u.ca)?,
            sni: u.sni.clone(),
            client_cert: read("client_cert", &u.client_cert)?,
            client_key: read("client_key", &u.client_key)?,
        })
    } else {
        for (name, given) in [
            ("ca", u.ca.is_some()),
            ("sni", u.sni.is_some()),
            ("client_cert", u.client_cert.is_some()),
            ("client_key", u.client_key.is_some()),
        ] {
            if given {
                return Err(at(
                    &field(name),
                    format!("`{name}` is a TLS setting, but the upstream does not use TLS: write its servers as https://host:port or set tls = true"),
                ));
            }
        }
        None
    };
    let transport =
        Transport::new(protocol, tls_options).map_err(|e| at(&field(e.field()), e.to_string()))?;
    Ok(UpstreamConfig {
        name: u.name.clone(),
        servers,
        transport,
        health: super::health::health_check(prefix, u.health.as_ref(), at)?,
        passive: super::health::passive_health(prefix, u.passive.as_ref(), at)?,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use crate::proxy::Protocol;
    use std::path::Path;

    const LISTEN: &str = "listen = [\"127.0.0.1:8080\"]\n";

    fn error(upstream: &str) -> String {
        parse(
            &format!("{LISTEN}[[upstreams]]\nname = \"a\"\n{upstream}"),
            Path::new("/nowhere/g.toml"),
        )
        .expect_err("invalid")
        .to_string()
    }

    #[test]
    fn protocols_and_plain_servers() {
        let config = |extra: &str| {
            parse(
                &format!("{LISTEN}[[upstreams]]\nname = \"a\"\nservers = [\"http://h:1\", \"h:2 weight=2\"]\n{extra}"),
                Path::new("g.toml"),
            )
            .unwrap()
        };
        let plain = config("");
        let a = &plain.upstreams[0];
        assert_eq!(a.transport.protocol(), Protocol::Http1);
        assert!(a.transport.tls().is_none());
        assert_eq!(a.servers[0].addr, "h:1");
        assert_eq!(a.servers[1].weight, 2);
        let h2c = config("protocol = \"h2c\"\n");
        assert_eq!(h2c.upstreams[0].transport.protocol(), Protocol::H2c);
    }

    #[test]
    fn every_mistake_names_its_line_and_field() {
        let cases = [
            (
                "servers = [\"h:1\"]\nprotocol = \"http2\"\n",
                "/nowhere/g.toml:5:1: upstreams[0].protocol: unknown protocol `http2` (known: http1, h2, h2c)",
            ),
            (
                "servers = [\"https://h:1\"]\ntls = false\n",
                "/nowhere/g.toml:4:12: upstreams[0].servers[0]: `https://h:1` asks for TLS, but the upstream sets tls = false",
            ),
            (
                "servers = [\"h:1\", \"http://h:2\"]\ntls = true\n",
                "/nowhere/g.toml:4:19: upstreams[0].servers[1]: `http://h:2` is plain HTTP, but the upstream sets tls = true",
            ),
            (
                "servers = [\"https://h:1\", \"h:2\"]\n",
                "/nowhere/g.toml:4:27: upstreams[0].servers[1]: `h:2` is plain but `https://h:1` is TLS: the servers of one upstream all speak one way (write https:// on each, or set tls = true)",
            ),
            (
                "servers = [\"https://h\"]\n",
                "/nowhere/g.toml:4:12: upstreams[0].servers[0]: `h` has no port: write host:port",
            ),
            (
                "servers = [\"h:1\"]\nca = \"ca.pem\"\n",
                "/nowhere/g.toml:5:1: upstreams[0].ca: `ca` is a TLS setting, but the upstream does not use TLS: write its servers as https://host:port or set tls = true",
            ),
            (
                "servers = [\"h:1\"]\nprotocol = \"h2c\"\nsni = \"x\"\n",
                "/nowhere/g.toml:6:1: upstreams[0].sni: `sni` is a TLS setting, but the upstream does not use TLS: write its servers as https://host:port or set tls = true",
            ),
            (
                "servers = [\"http://h:1\"]\nprotocol = \"h2\"\n",
                "/nowhere/g.toml:5:1: upstreams[0].protocol: `h2` is HTTP/2 over TLS, but the upstream has tls = false or http:// servers: use protocol = \"h2c\" for HTTP/2 over plain TCP",
            ),
            (
                "servers = [\"https://h:1\"]\nprotocol = \"h2c\"\n",
                "/nowhere/g.toml:5:1: upstreams[0].protocol: `h2c` is HTTP/2 over plain TCP, but the upstream uses TLS (https:// servers or tls = true): use protocol = \"h2\"",
            ),
            (
                "servers = [\"https://h:1\"]\nca = \"missing.pem\"\n",
                "/nowhere/g.toml:5:1: upstreams[0].ca: cannot read /nowhere/missing.pem: No such file or directory (os error 2)",
            ),
            (
                "servers = [\"https://h:1\"]\nclient_cert = \"c.pem\"\n",
                "/nowhere/g.toml:5:1: upstreams[0].client_cert: cannot read /nowhere/c.pem: No such file or directory (os error 2)",
            ),
        ];
        for (upstream, message) in cases {
            assert_eq!(error(upstream), message, "{upstream}");
        }
    }

    #[test]
    fn the_policys_upstreams_are_checked_and_named_like_the_files() {
        let config = |policy: &str| {
            parse(
                &format!("{LISTEN}[[upstreams]]\nname = \"stable\"\nservers = [\"h:1\"]\n{policy}"),
                Path::new("/nowhere/g.toml"),
            )
        };
        let good = config(
            "[[policy.services]]\nname = \"web\"\nstable = \"v1\"\nversions = { v1 = \"stable\", v2 = \"api\" }\n\
             [policy.upstreams.api]\nservers = [{ address = \"h:2\", weight = 3 }, { address = \"h:3\", drained = true }]\n",
        )
        .expect("valid");
        assert_eq!(
            good.policy.unwrap().doc.upstreams["api"].servers[0].weight,
            3
        );
        let bad = config(
            "[policy.upstreams.api]\nservers = [{ address = \"h:2\" }, { address = \"nohost\" }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            bad.ends_with("policy.upstreams.api.servers[1]: `nohost` has no port: write host:port"),
            "{bad}"
        );
    }

    #[test]
    fn a_shared_upstream_is_built_as_a_file_upstream_with_drained_servers_at_weight_0() {
        use crate::policy::upstreams::{ServerDoc, UpstreamDoc};
        let doc = UpstreamDoc {
            servers: vec![
                ServerDoc::new("http://h:1"),
                ServerDoc {
                    address: "h:2".into(),
                    weight: 4,
                    drained: true,
                },
                ServerDoc {
                    address: "h:3".into(),
                    weight: 2,
                    drained: false,
                },
            ],
            protocol: Some("h2c".into()),
            ..UpstreamDoc::default()
        };
        let built = super::shared_upstream("api.v2", &doc, Path::new("/nowhere")).unwrap();
        assert_eq!(built.name, "api.v2");
        let weights: Vec<(&str, u32)> = built
            .servers
            .iter()
            .map(|s| (s.addr.as_str(), s.weight))
            .collect();
        assert_eq!(weights, [("h:1", 1), ("h:2", 0), ("h:3", 2)]);
        assert_eq!(built.transport.protocol(), Protocol::H2c);

        let mut tls = doc.clone();
        tls.protocol = None;
        tls.ca = Some("ca.pem".into());
        let e = super::shared_upstream("api.v2", &tls, Path::new("/nowhere")).unwrap_err();
        assert_eq!(e.upstream, "api.v2");
        assert_eq!(e.field.to_string(), "upstreams.api.v2.ca");
        assert_eq!(
            e.message,
            "`ca` is a TLS setting, but the upstream does not use TLS: write its servers as https://host:port or set tls = true"
        );
        let mut health = doc.clone();
        health.health = Some(crate::config::file::HealthFile {
            interval: Some("soon".into()),
            ..Default::default()
        });
        let e = super::shared_upstream("api", &health, Path::new("/nowhere")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "upstreams.api.health.interval: `soon` is not a duration like \"2s\" or \"300ms\": expected number at 0"
        );
    }
}
