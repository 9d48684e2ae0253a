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
use crate::proxy::{PemFile, Protocol, ServerConfig, TlsOptions, Transport, UpstreamConfig};

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

/// `upstreams[i]` as the data plane takes it; `base` is the config's directory, `at` places an
/// error at a field.
pub(super) fn upstream_config(
    i: usize,
    u: &UpstreamFile,
    base: &Path,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<UpstreamConfig, ConfigError> {
    let field = |name: &str| format!("upstreams[{i}].{name}");
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
        health: super::health::health_check(i, u.health.as_ref(), at)?,
        passive: super::health::passive_health(i, u.passive.as_ref(), at)?,
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
}
