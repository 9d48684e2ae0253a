//! `POST /v1/reload`: the config file read again, as SIGHUP does, and what that did to each part
//! of the config. The same answer is what SIGHUP writes to the log, one line per part.

use serde::{Deserialize, Serialize};

/// What a reload did to one part of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The new settings are in force.
    Applied,
    /// Nothing to do: the settings in force are the file's (for the policy: the file's policy
    /// is the one last applied, so runtime changes stay).
    Unchanged,
    /// Not applied, on purpose (`message` says why and what would apply it); the settings in
    /// force stay.
    Refused,
    /// Not applied: something went wrong (the store cannot be reached, ...); the settings in
    /// force stay.
    Failed,
}

impl ReloadOutcome {
    /// As the JSON writes it: `applied`, `unchanged`, `refused`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Applied => "applied",
            ReloadOutcome::Unchanged => "unchanged",
            ReloadOutcome::Refused => "refused",
            ReloadOutcome::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One part of the config (upstreams, timeouts, log) after a reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadedPart {
    pub outcome: ReloadOutcome,
    /// What changed, or why not, in words.
    pub message: String,
}

/// The config's policy after a reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadedPolicy {
    pub outcome: ReloadOutcome,
    /// What was done, or why not, in words.
    pub message: String,
    /// The revision of the policy running after the reload.
    pub revision: u64,
    /// When refused: the services with a rollout in progress (`?force=true` applies the
    /// config's policy over them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<String>,
}

/// `POST /v1/reload[?force=true]`: what reading the config file again did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// The config file read.
    pub config: String,
    /// The upstream table: added, removed and changed upstreams.
    pub upstreams: ReloadedPart,
    /// Connect, response and idle timeouts of the upstreams, and the client and upstream body
    /// timeouts.
    pub timeouts: ReloadedPart,
    /// The process log's format.
    pub log: ReloadedPart,
    /// The TLS certificates (`[tls] certs`), when the config has `[tls]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ReloadedPart>,
    /// The config's policy (seeds the store; applied only when it changed since it was last
    /// applied, and never over a rollout in progress unless forced).
    pub policy: ReloadedPolicy,
    /// Settings that differ in the file but take effect only at a restart (`listen`, `store`,
    /// ...), by their config names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_needed: Vec<String>,
}

impl Reloaded {
    /// Every part with its name, in the order they are applied.
    pub fn parts(&self) -> Vec<(&'static str, ReloadOutcome, &str)> {
        let mut parts = vec![
            (
                "upstreams",
                self.upstreams.outcome,
                self.upstreams.message.as_str(),
            ),
            ("timeouts", self.timeouts.outcome, &self.timeouts.message),
            ("log", self.log.outcome, &self.log.message),
        ];
        if let Some(tls) = &self.tls {
            parts.push(("tls", tls.outcome, &tls.message));
        }
        parts.push(("policy", self.policy.outcome, &self.policy.message));
        parts
    }

    /// True when a part was refused or failed: not everything in the file is in force.
    pub fn incomplete(&self) -> bool {
        self.parts()
            .iter()
            .any(|(_, o, _)| matches!(o, ReloadOutcome::Refused | ReloadOutcome::Failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_answer_keeps_its_json() {
        let value = json!({
            "config": "/etc/graygate.toml",
            "upstreams": {"outcome": "applied", "message": "added next"},
            "timeouts": {"outcome": "unchanged", "message": "as before"},
            "log": {"outcome": "unchanged", "message": "text"},
            "policy": {"outcome": "refused", "message": "a rollout is in progress on web",
                       "revision": 7, "rollouts": ["web"]},
            "restart_needed": ["listen"]
        });
        let typed: Reloaded = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), value);
        assert!(typed.incomplete());
        assert_eq!(typed.parts()[3].0, "policy");
        let mut fine = typed;
        fine.policy.outcome = ReloadOutcome::Unchanged;
        assert!(!fine.incomplete());

        // With `[tls]`, the certificates are a part of their own, before the policy.
        fine.tls = Some(ReloadedPart {
            outcome: ReloadOutcome::Failed,
            message: "site.key: the key does not match the certificate site.pem".into(),
        });
        let names: Vec<&str> = fine.parts().iter().map(|p| p.0).collect();
        assert_eq!(names, ["upstreams", "timeouts", "log", "tls", "policy"]);
        assert!(fine.incomplete());
        let json = serde_json::to_value(&fine).unwrap();
        assert_eq!(json["tls"]["outcome"], "failed");
    }
}
