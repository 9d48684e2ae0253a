//! Requests and answers about upstreams: the effective table an instance runs (the config
//! file's upstreams overlaid by the shared policy's) and the changes of the policy's upstreams.
//! The definitions themselves are [`crate::policy::upstreams`]'s types, sent as they are.

use super::status::VersionHealth;
use crate::policy::upstreams::{ServerDoc, UpstreamDoc};
use serde::{Deserialize, Serialize};

/// Where an upstream of an instance's table is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamSource {
    /// This instance's config file (`[[upstreams]]`): a local default, not shared.
    Config,
    /// The shared policy: the same on every instance.
    Policy,
}

/// `GET /v1/upstreams`: every upstream this instance runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamList {
    pub upstreams: Vec<UpstreamView>,
}

/// One upstream as this instance runs it (`GET /v1/upstreams/{name}` too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamView {
    pub name: String,
    pub source: UpstreamSource,
    /// A policy upstream that replaces this instance's config file upstream of the same name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replaces_config: bool,
    /// `http1`, `h2` or `h2c`.
    pub protocol: String,
    /// Its servers are spoken to over TLS.
    pub tls: bool,
    /// Its servers, in order.
    pub servers: Vec<ServerView>,
    /// The health of its servers, as this instance's checks and passive ejection see them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<VersionHealth>,
    /// The policy's definition, for an upstream of the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<UpstreamDoc>,
}

/// One server of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerView {
    /// `host:port`.
    pub address: String,
    /// Its weight (kept while it is drained).
    pub weight: u32,
    /// Gets no new requests.
    pub drained: bool,
}

/// `PUT /v1/upstreams/{name}`: the definition stored, and whether it is new.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamPut {
    pub created: bool,
    pub name: String,
    pub upstream: UpstreamDoc,
}

/// `DELETE /v1/upstreams/{name}`: the definition that was deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamDeleted {
    pub name: String,
    pub deleted: UpstreamDoc,
}

/// `PATCH /v1/upstreams/{name}/servers/{server}`: what to change; a field left out stays.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetServer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<bool>,
}

/// The answer to adding (`POST /v1/upstreams/{name}/servers`), changing or removing a server:
/// the server as it is now (or was, when removed) and the upstream's definition after the
/// change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerWritten {
    pub name: String,
    pub server: ServerDoc,
    pub upstream: UpstreamDoc,
}
