//! Gray list entries: bulk writes with TTLs, removal, listing and counting. List writes are not
//! policy changes, so none of these answers carries a revision.

use serde::{Deserialize, Serialize};

/// Body of `POST /v1/lists/{list}/entries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEntries {
    pub entries: Vec<NewEntry>,
}

/// One entry to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEntry {
    pub key: String,
    /// Default `"1"`: the original design's gray flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// How long the entry lives (`"1h"`, `"30m"`); absent: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// Body of `DELETE /v1/lists/{list}/entries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveEntries {
    pub keys: Vec<String>,
}

/// `POST /v1/lists/{list}/entries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntriesWritten {
    pub list: String,
    pub written: usize,
}

/// `DELETE /v1/lists/{list}/entries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntriesRemoved {
    pub list: String,
    /// How many of the keys existed.
    pub removed: usize,
}

/// `GET /v1/lists/{list}/entries`: every live entry, sorted by key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryList {
    pub list: String,
    /// Every live entry of the list, whatever the search.
    pub count: usize,
    pub entries: Vec<ListedEntry>,
    /// True when a search matched more entries than its `limit`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// One live entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedEntry {
    pub key: String,
    pub value: String,
    /// When it expires, RFC 3339 UTC; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Seconds left; absent: never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// `GET /v1/lists/{list}/count`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryCount {
    pub list: String,
    pub count: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_keep_their_json() {
        let listed = json!({"list": "gray_ips", "count": 2, "entries": [
            {"key": "10.0.0.7", "value": "1", "expires_at": "2026-01-01T00:00:00Z", "ttl_seconds": 3599},
            {"key": "10.0.0.8", "value": "1"}]});
        let typed: EntryList = serde_json::from_value(listed.clone()).unwrap();
        assert_eq!(typed.entries[1].expires_at, None);
        assert_eq!(serde_json::to_value(&typed).unwrap(), listed);
        let body = NewEntries {
            entries: vec![NewEntry {
                key: "10.0.0.7".into(),
                value: Some("1".into()),
                ttl: None,
            }],
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"entries": [{"key": "10.0.0.7", "value": "1"}]})
        );
        let e =
            serde_json::from_value::<NewEntries>(json!({"entries": [{"key": "a", "tll": "1h"}]}))
                .unwrap_err();
        assert!(e.to_string().starts_with("unknown field `tll`"), "{e}");
    }
}
