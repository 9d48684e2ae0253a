//! The history of policy changes and undo. A [`HistoryEntry`] is also what the stores keep: the
//! gateway writes one with every change, in the same conditional write as the policy itself.

use crate::policy::PolicyDoc;
use serde::{Deserialize, Serialize};

/// One applied change, as kept in the store's history: who made it, when, and the document
/// before and after. Undo applies an entry's `after` as a new change; history is never rewritten.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The revision this change made.
    pub revision: u64,
    /// When, in RFC 3339 UTC with milliseconds.
    pub time: String,
    /// Who: the admin token's name, or `config` for the config's policy (start, SIGHUP).
    pub actor: String,
    /// What, in a few words (`weights web: canary=10`).
    pub summary: String,
    /// The document before the change.
    pub before: PolicyDoc,
    /// The document the change made: what undo applies again.
    pub after: PolicyDoc,
}

/// `GET /v1/history`: the newest changes, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub entries: Vec<HistoryEntry>,
}

/// Body of `POST /v1/undo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Undo {
    /// The revision whose policy becomes current again (as a new revision).
    pub revision: u64,
}

/// `POST /v1/undo`: the policy now stored and running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Undone {
    /// The revision whose policy was restored.
    pub restored: u64,
    pub policy: PolicyDoc,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Revisioned;
    use serde_json::json;

    #[test]
    fn history_and_undo_keep_their_json() {
        let entry = json!({"revision": 2, "time": "2026-01-01T00:00:00.000Z", "actor": "alice",
            "summary": "weights web: canary=10", "before": {"routes": [], "services": []},
            "after": {"routes": [], "services": []}});
        let answer = json!({"revision": 2, "entries": [entry]});
        let typed: Revisioned<History> = serde_json::from_value(answer.clone()).unwrap();
        assert_eq!(typed.body.entries[0].actor, "alice");
        assert_eq!(serde_json::to_value(&typed).unwrap(), answer);
        let undone =
            json!({"revision": 3, "restored": 1, "policy": {"routes": [], "services": []}});
        let typed: Revisioned<Undone> = serde_json::from_value(undone.clone()).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), undone);
        assert_eq!(
            serde_json::to_value(Undo { revision: 5 }).unwrap(),
            json!({"revision": 5})
        );
    }
}
