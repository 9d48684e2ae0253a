//! The history of policy changes and undo.
//!
//! `GET /v1/history` answers pages of [`HistoryChange`]s (who, when, what, no documents), newest
//! first, with the path of the next page; `GET /v1/history/{revision}` answers one
//! [`HistoryEntry`] with the documents before and after the change. A page never carries a
//! document: a history of big policies stays cheap to list.

use crate::policy::PolicyDoc;
use serde::{Deserialize, Serialize};

/// One applied change with the documents before and after it (`GET /v1/history/{revision}`).
/// Undo applies an entry's `after` as a new change; history is never rewritten.
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

/// One applied change in a page of `GET /v1/history`: who made it, when and what, without the
/// documents (`GET /v1/history/{revision}` has them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryChange {
    /// The revision this change made.
    pub revision: u64,
    /// When, in RFC 3339 UTC with milliseconds.
    pub time: String,
    /// Who: the admin token's name, or `config` for the config's policy (start, SIGHUP).
    pub actor: String,
    /// What, in a few words (`weights web: canary=10`).
    pub summary: String,
    /// Size of the stored record in bytes: what this change costs of `[history] max_bytes`.
    pub bytes: u64,
}

/// `GET /v1/history`: one page of changes, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub entries: Vec<HistoryChange>,
    /// The path of the next (older) page, `None` on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `GET /v1/history/{revision}`: one change with its documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryOne {
    pub entry: HistoryEntry,
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
        let change = json!({"revision": 2, "time": "2026-01-01T00:00:00.000Z", "actor": "alice",
            "summary": "weights web: canary=10", "bytes": 120});
        let answer = json!({"revision": 2, "entries": [change],
            "next": "/v1/history?limit=1&before=2"});
        let typed: Revisioned<History> = serde_json::from_value(answer.clone()).unwrap();
        assert_eq!(typed.body.entries[0].actor, "alice");
        assert_eq!(serde_json::to_value(&typed).unwrap(), answer);
        // The last page has no `next`.
        let last = json!({"revision": 2, "entries": []});
        let typed: Revisioned<History> = serde_json::from_value(last.clone()).unwrap();
        assert_eq!(typed.body.next, None);
        assert_eq!(serde_json::to_value(&typed).unwrap(), last);

        let entry = json!({"revision": 2, "time": "2026-01-01T00:00:00.000Z", "actor": "alice",
            "summary": "weights web: canary=10", "before": {"routes": [], "services": []},
            "after": {"routes": [], "services": []}});
        let answer = json!({"revision": 2, "entry": entry});
        let typed: Revisioned<HistoryOne> = serde_json::from_value(answer.clone()).unwrap();
        assert_eq!(typed.body.entry.summary, "weights web: canary=10");
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
