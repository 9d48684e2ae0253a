//! Upstreams in the shared policy: the servers (address, weight, drained), protocol, TLS
//! settings and health checks of an upstream that every instance of a fleet builds the same way,
//! and the admin API's edits of them as pure functions.
//!
//! An instance's effective upstream table is its config file's `[[upstreams]]` (local defaults)
//! overlaid by these: a policy upstream replaces a file upstream of the same name. Nothing here
//! reads a file or resolves a name; whether an instance can build a definition (a server line
//! that parses, a CA file it has) is checked where the table is built
//! (`crate::config::shared_upstream`), with the same rules as the config file's.
//!
//! The health settings are the config file's own types ([`HealthFile`], [`PassiveFile`]): one
//! shape, one set of defaults, read the same way from TOML and JSON.

use super::edit::{EditError, EditErrorKind};
use super::model::PolicyDoc;
use super::path::FieldPath;
pub use crate::config::file::{HealthFile, PassiveFile};
use serde::{Deserialize, Serialize};

/// One upstream of the shared policy (`upstreams.<name>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamDoc {
    /// Its servers, in order; at least one that is not drained.
    pub servers: Vec<ServerDoc>,
    /// `http1` (default), `h2` (HTTP/2 over TLS) or `h2c` (HTTP/2 over plain TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Every server over TLS (`true`), none (`false`); absent: as the server addresses say
    /// (`https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// TLS: a CA file (PEM) to verify the servers with instead of the system's roots. The file
    /// must exist on every instance (relative paths are read from each instance's config
    /// directory): an instance that lacks it cannot apply the revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// TLS: the name sent as SNI and verified; default: each server's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// TLS: a client certificate (chain) file, with `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// TLS: the client certificate's private key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// Active health checks; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthFile>,
    /// Passive ejection from real answers; absent: the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveFile>,
}

/// One server of a shared upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerDoc {
    /// `host:port`, `http://host:port` or `https://host:port`, as in a config file's server line.
    pub address: String,
    /// Share of the requests relative to the other servers (1 to 1000); default 1.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
    /// A drained server gets no new requests (requests in flight on it finish); it keeps its
    /// weight for when it is undrained.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
}

impl ServerDoc {
    /// A server with weight 1, not drained.
    pub fn new(address: impl Into<String>) -> Self {
        ServerDoc {
            address: address.into(),
            weight: 1,
            drained: false,
        }
    }
}

fn one() -> u32 {
    1
}

fn is_one(weight: &u32) -> bool {
    *weight == 1
}

/// `upstreams.<name>`.
pub fn upstream_field(name: &str) -> FieldPath {
    FieldPath::new("upstreams").field(name)
}

/// The address a server is known by in the admin API and in `ctl`: its `host:port`, without a
/// scheme (`https://a:443` and `a:443` are the same server).
pub fn server_key(address: &str) -> &str {
    let address = address.trim();
    address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address)
}

fn not_found(message: String) -> EditError {
    EditError {
        kind: EditErrorKind::NotFound,
        field: None,
        message,
    }
}

fn upstream_mut<'a>(doc: &'a mut PolicyDoc, name: &str) -> Result<&'a mut UpstreamDoc, EditError> {
    doc.upstreams.get_mut(name).ok_or_else(|| {
        not_found(format!(
            "no upstream named `{name}` in the shared policy (an upstream only in an instance's config file is changed there; define it here with PUT /v1/upstreams/{name})"
        ))
    })
}

/// The index of server `address` of upstream `name`.
fn server_index(up: &UpstreamDoc, name: &str, address: &str) -> Result<usize, EditError> {
    let key = server_key(address);
    up.servers
        .iter()
        .position(|s| server_key(&s.address) == key)
        .ok_or_else(|| {
            let known: Vec<&str> = up.servers.iter().map(|s| server_key(&s.address)).collect();
            not_found(format!(
                "upstream `{name}` has no server `{key}` (its servers: {})",
                known.join(", ")
            ))
        })
}

/// Defines upstream `name` or replaces its definition; true when it is new.
pub fn put_upstream(
    doc: &mut PolicyDoc,
    name: &str,
    upstream: UpstreamDoc,
) -> Result<bool, EditError> {
    check_name(name)?;
    check_servers(name, &upstream)?;
    Ok(doc.upstreams.insert(name.to_string(), upstream).is_none())
}

/// Deletes upstream `name`; refused while a version of a service uses it (whether or not an
/// instance's config file has an upstream of that name: the fleet's answer must not depend on
/// which instance is asked).
pub fn delete_upstream(doc: &mut PolicyDoc, name: &str) -> Result<UpstreamDoc, EditError> {
    upstream_mut(doc, name)?;
    for (i, service) in doc.services.iter().enumerate() {
        for (version, upstream) in &service.versions {
            if upstream == name {
                return Err(EditError::invalid(
                    FieldPath::new("services")
                        .index(i)
                        .field("versions")
                        .field(version.clone()),
                    format!(
                        "upstream `{name}` is used by version `{version}` of service `{}`: point the version elsewhere or delete it first",
                        service.name
                    ),
                ));
            }
        }
    }
    Ok(doc.upstreams.remove(name).expect("found above"))
}

/// Adds a server to upstream `name`; refused when it has one with that address already.
pub fn add_server(doc: &mut PolicyDoc, name: &str, server: ServerDoc) -> Result<(), EditError> {
    let up = upstream_mut(doc, name)?;
    let key = server_key(&server.address).to_string();
    if let Some(j) = up
        .servers
        .iter()
        .position(|s| server_key(&s.address) == key)
    {
        return Err(EditError {
            kind: EditErrorKind::Exists,
            field: Some(upstream_field(name).field("servers").index(j)),
            message: format!("upstream `{name}` has server `{key}` already"),
        });
    }
    up.servers.push(server);
    let up = up.clone();
    check_servers(name, &up)
}

/// Changes server `address` of upstream `name`: its weight and/or whether it is drained.
/// Refused when no server of the upstream would be left to take requests.
pub fn set_server(
    doc: &mut PolicyDoc,
    name: &str,
    address: &str,
    weight: Option<u32>,
    drained: Option<bool>,
) -> Result<ServerDoc, EditError> {
    let up = upstream_mut(doc, name)?;
    let j = server_index(up, name, address)?;
    if let Some(weight) = weight {
        up.servers[j].weight = weight;
    }
    if let Some(drained) = drained {
        up.servers[j].drained = drained;
    }
    let server = up.servers[j].clone();
    let up = up.clone();
    check_servers(name, &up)?;
    Ok(server)
}

/// Removes server `address` from upstream `name`; refused for its last server in service.
pub fn remove_server(
    doc: &mut PolicyDoc,
    name: &str,
    address: &str,
) -> Result<ServerDoc, EditError> {
    let up = upstream_mut(doc, name)?;
    let j = server_index(up, name, address)?;
    let server = up.servers.remove(j);
    let up = up.clone();
    check_servers(name, &up)?;
    Ok(server)
}

/// A name an upstream can have: what a version's upstream may say.
fn check_name(name: &str) -> Result<(), EditError> {
    let bad = name.trim().is_empty()
        || name.trim() != name
        || name.chars().any(|c| c.is_control() || c == '/');
    if bad {
        return Err(EditError::invalid(
            FieldPath::new("upstreams"),
            format!("`{name}` is not an upstream name (not empty, no spaces around it, no `/`)"),
        ));
    }
    Ok(())
}

/// The checks of a definition that need no instance: weights in range and one server that is
/// not drained. The rest (addresses, TLS, health) is the config file's rules, checked when a
/// table is built.
pub fn check_servers(name: &str, up: &UpstreamDoc) -> Result<(), EditError> {
    let field = upstream_field(name).field("servers");
    for (j, s) in up.servers.iter().enumerate() {
        if !(1..=crate::proxy::MAX_WEIGHT).contains(&s.weight) {
            return Err(EditError::invalid(
                field.index(j).field("weight"),
                format!(
                    "weight {} is not a whole number from 1 to {} (drain a server to send it nothing)",
                    s.weight,
                    crate::proxy::MAX_WEIGHT
                ),
            ));
        }
    }
    if up.servers.iter().all(|s| s.drained) {
        let message = if up.servers.is_empty() {
            format!("upstream `{name}` needs at least one server")
        } else {
            format!("upstream `{name}` needs at least one server that is not drained: every request to it would fail")
        };
        return Err(EditError::invalid(field, message));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::ServiceDoc;
    use std::collections::BTreeMap;

    fn api() -> UpstreamDoc {
        UpstreamDoc {
            servers: vec![ServerDoc::new("10.0.0.1:80"), ServerDoc::new("10.0.0.2:80")],
            ..UpstreamDoc::default()
        }
    }

    fn doc_with_api() -> PolicyDoc {
        let mut doc = PolicyDoc::default();
        put_upstream(&mut doc, "api", api()).unwrap();
        doc
    }

    #[test]
    fn an_empty_map_is_left_out_and_old_documents_still_read() {
        let doc = PolicyDoc::default();
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            r#"{"routes":[],"services":[]}"#
        );
        let old: PolicyDoc = serde_json::from_str(r#"{"routes":[],"services":[]}"#).unwrap();
        assert!(old.upstreams.is_empty());
    }

    #[test]
    fn a_definition_reads_and_writes_with_its_defaults_left_out() {
        let json = r#"{"routes":[],"services":[],"upstreams":{"api":{"servers":[{"address":"10.0.0.1:80"},{"address":"https://b:443","weight":3,"drained":true}],"protocol":"h2","health":{"path":"/ready"}}}}"#;
        let doc: PolicyDoc = serde_json::from_str(json).unwrap();
        let api = &doc.upstreams["api"];
        assert_eq!(api.servers[0], ServerDoc::new("10.0.0.1:80"));
        assert_eq!(
            api.servers[1],
            ServerDoc {
                address: "https://b:443".into(),
                weight: 3,
                drained: true
            }
        );
        assert_eq!(serde_json::to_string(&doc).unwrap(), json);
        let unknown = serde_json::from_str::<PolicyDoc>(
            r#"{"upstreams":{"api":{"servers":[{"address":"a:1","wieght":2}]}}}"#,
        )
        .unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `wieght`"),
            "{unknown}"
        );
    }

    #[test]
    fn servers_are_added_drained_weighted_and_removed() {
        let mut doc = doc_with_api();
        add_server(&mut doc, "api", ServerDoc::new("10.0.0.3:80")).unwrap();
        let dup = add_server(&mut doc, "api", ServerDoc::new("http://10.0.0.3:80")).unwrap_err();
        assert_eq!(dup.kind, EditErrorKind::Exists);
        assert_eq!(dup.field.unwrap().to_string(), "upstreams.api.servers[2]");

        let drained = set_server(&mut doc, "api", "10.0.0.1:80", None, Some(true)).unwrap();
        assert!(drained.drained);
        let weighted = set_server(&mut doc, "api", "10.0.0.2:80", Some(5), None).unwrap();
        assert_eq!(weighted.weight, 5);
        assert_eq!(
            doc.upstreams["api"]
                .servers
                .iter()
                .map(|s| (s.weight, s.drained))
                .collect::<Vec<_>>(),
            vec![(1, true), (5, false), (1, false)]
        );
        let removed = remove_server(&mut doc, "api", "10.0.0.3:80").unwrap();
        assert_eq!(removed.address, "10.0.0.3:80");

        // The last server in service cannot go, nor be drained; a weight stays in range.
        let last =
            set_server(&mut doc.clone(), "api", "10.0.0.2:80", None, Some(true)).unwrap_err();
        assert_eq!(last.field.unwrap().to_string(), "upstreams.api.servers");
        assert_eq!(
            last.message,
            "upstream `api` needs at least one server that is not drained: every request to it would fail"
        );
        assert!(remove_server(&mut doc.clone(), "api", "10.0.0.2:80").is_err());
        let heavy = set_server(&mut doc.clone(), "api", "10.0.0.2:80", Some(0), None).unwrap_err();
        assert_eq!(
            heavy.field.unwrap().to_string(),
            "upstreams.api.servers[1].weight"
        );

        let missing = set_server(&mut doc, "api", "10.9.9.9:80", Some(2), None).unwrap_err();
        assert_eq!(missing.kind, EditErrorKind::NotFound);
        assert_eq!(
            missing.message,
            "upstream `api` has no server `10.9.9.9:80` (its servers: 10.0.0.1:80, 10.0.0.2:80)"
        );
        let nowhere = add_server(&mut doc, "web", ServerDoc::new("a:1")).unwrap_err();
        assert_eq!(nowhere.kind, EditErrorKind::NotFound);
    }

    #[test]
    fn an_upstream_a_version_uses_is_not_deleted() {
        let mut doc = doc_with_api();
        doc.services.push(ServiceDoc {
            name: "web".into(),
            stable: "v1".into(),
            versions: BTreeMap::from([("v1".into(), "stable".into()), ("v2".into(), "api".into())]),
            override_: None,
            follow: false,
            rules: Vec::new(),
            split: None,
            previous_stable: None,
            previous_weight: None,
            rollout: None,
            mirror: None,
        });
        let used = delete_upstream(&mut doc, "api").unwrap_err();
        assert_eq!(used.field.unwrap().to_string(), "services[0].versions.v2");
        assert_eq!(
            used.message,
            "upstream `api` is used by version `v2` of service `web`: point the version elsewhere or delete it first"
        );
        doc.services[0].versions.remove("v2");
        assert_eq!(delete_upstream(&mut doc, "api").unwrap(), api());
        assert!(doc.upstreams.is_empty());
    }

    #[test]
    fn a_definition_needs_a_name_and_a_server_in_service() {
        let mut doc = PolicyDoc::default();
        assert!(put_upstream(&mut doc, " api", api()).is_err());
        assert!(put_upstream(&mut doc, "a/b", api()).is_err());
        let none = put_upstream(&mut doc, "api", UpstreamDoc::default()).unwrap_err();
        assert_eq!(none.message, "upstream `api` needs at least one server");
        assert!(put_upstream(&mut doc, "api", api()).unwrap(), "new");
        assert!(!put_upstream(&mut doc, "api", api()).unwrap(), "replaced");
    }
}
