//! Gray list endpoints: add and remove entries in bulk (with TTLs), list them, count them.
//!
//! Entries go straight to the store ([`Store::put_entries`](crate::store::Store::put_entries)),
//! in the store's own layout: with memcached a gray IP is `set <ip> 0 <ttl> 1`, exactly what the
//! original nginx + lua design reads. List writes are not policy changes: they do not move the
//! revision and are not in the history (they are logged with the caller's name).

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{JsonBody, Query};
use super::{AdminState, Shared};
use crate::api::{
    paths, EntriesRemoved, EntriesWritten, EntryCount, EntryList, EntryQuery, ListedEntry,
    NewEntries, RemoveEntries,
};
use crate::policy::edit;
use crate::store::{limits, Entry};
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use std::sync::Arc;
use std::time::SystemTime;

/// Most entries one request may write or remove.
pub const MAX_ENTRIES: usize = 100_000;

/// The routes of gray lists.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new()
        .route(
            paths::LIST_ENTRIES,
            get(list_entries).post(add_entries).delete(remove_entries),
        )
        .route(paths::LIST_COUNT, get(count))
}

fn check_list(list: &str) -> Result<(), ApiError> {
    if list.is_empty() || list.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::invalid(
            "list",
            format!("`{list}` is not a list name (no spaces or control characters)"),
        ));
    }
    Ok(())
}

/// Checks how many `field` (entries or keys) one request gives: 1 to [`MAX_ENTRIES`].
fn check_batch(field: &str, len: usize) -> Result<(), ApiError> {
    if len == 0 || len > MAX_ENTRIES {
        return Err(ApiError::invalid(
            field,
            format!("give 1 to {MAX_ENTRIES} {field}, not {len}"),
        ));
    }
    Ok(())
}

/// Checks a key with the checks every way in shares ([`limits::check_key`]), naming `field`.
fn check_key(field: &str, key: &str, ip_list: Option<&str>) -> Result<(), ApiError> {
    limits::check_key(key, ip_list).map_err(|e| ApiError::invalid(field, e.to_string()))
}

/// `POST /v1/lists/{list}/entries`.
async fn add_entries(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    Path(list): Path<String>,
    JsonBody(body): JsonBody<NewEntries>,
) -> Result<Json<EntriesWritten>, ApiError> {
    check_list(&list)?;
    check_batch("entries", body.entries.len())?;
    let ip_lists = edit::ip_keyed_lists(s.gateway.policy().doc());
    let ip_list = ip_lists.get(&list).map(ToString::to_string);
    let mut entries = Vec::with_capacity(body.entries.len());
    for (i, e) in body.entries.iter().enumerate() {
        let field = format!("entries[{i}].key");
        check_key(&field, &e.key, ip_list.as_deref())?;
        // As the store will write it: a memcached list escaping its keys can make one too long.
        s.gateway
            .store()
            .check_key(&list, &e.key)
            .map_err(|err| ApiError::invalid(&field, err.to_string()))?;
        let ttl =
            match &e.ttl {
                None => None,
                Some(text) => Some(limits::parse_ttl(text).map_err(|err| {
                    ApiError::invalid(format!("entries[{i}].ttl"), err.to_string())
                })?),
            };
        let value = e.value.clone().unwrap_or_else(|| "1".to_string());
        entries.push(Entry::new(e.key.clone(), value, ttl));
    }
    s.gateway.store().put_entries(&list, &entries).await?;
    tracing::info!(actor = %caller.0, %list, written = entries.len(), "list entries written");
    Ok(Json(EntriesWritten {
        list,
        written: entries.len(),
    }))
}

/// `DELETE /v1/lists/{list}/entries`.
async fn remove_entries(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    Path(list): Path<String>,
    JsonBody(body): JsonBody<RemoveEntries>,
) -> Result<Json<EntriesRemoved>, ApiError> {
    check_list(&list)?;
    check_batch("keys", body.keys.len())?;
    for (i, key) in body.keys.iter().enumerate() {
        check_key(&format!("keys[{i}]"), key, None)?;
    }
    let removed = s.gateway.store().remove_entries(&list, &body.keys).await?;
    tracing::info!(actor = %caller.0, %list, removed, "list entries removed");
    Ok(Json(EntriesRemoved { list, removed }))
}

/// `GET /v1/lists/{list}/entries`: every live entry, sorted by key; with `q` or `limit`, those
/// whose key contains `q`, at most `limit` of them. Not with memcached, which cannot enumerate
/// keys.
async fn list_entries(
    State(s): Shared,
    Path(list): Path<String>,
    Query(query): Query<EntryQuery>,
) -> Result<Json<EntryList>, ApiError> {
    check_list(&list)?;
    let search = query.q.is_some() || query.limit.is_some();
    let limit = query.limit.unwrap_or(EntryQuery::DEFAULT_LIMIT);
    if search && (limit == 0 || limit > EntryQuery::MAX_LIMIT) {
        return Err(ApiError::invalid(
            "limit",
            format!(
                "a search answers 1 to {} entries, not {limit}",
                EntryQuery::MAX_LIMIT
            ),
        ));
    }
    let entries = s.gateway.store().list_entries(&list).await?;
    let count = entries.len();
    let now = SystemTime::now();
    let needle = query.q.as_deref().unwrap_or("");
    let mut matching = entries.into_iter().filter(|e| e.key.contains(needle));
    let shown: Vec<ListedEntry> = matching
        .by_ref()
        .take(if search { limit } else { usize::MAX })
        .map(|e| ListedEntry {
            key: e.key,
            value: e.value,
            expires_at: e
                .expires_at
                .map(|at| humantime::format_rfc3339_seconds(at).to_string()),
            ttl_seconds: e
                .expires_at
                .map(|at| at.duration_since(now).unwrap_or_default().as_secs()),
        })
        .collect();
    let truncated = matching.next().is_some();
    Ok(Json(EntryList {
        list,
        count,
        entries: shown,
        truncated,
    }))
}

/// `GET /v1/lists/{list}/count`.
async fn count(State(s): Shared, Path(list): Path<String>) -> Result<Json<EntryCount>, ApiError> {
    check_list(&list)?;
    let count = s.gateway.store().list_entries(&list).await?.len();
    Ok(Json(EntryCount { list, count }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_every_store_can_hold() {
        check_key("k", "10.0.0.7", Some("services[0].rules[0].when")).unwrap();
        check_key("k", "TOKEN_abc", None).unwrap();
        let e = check_key("entries[1].key", "a b", None).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("entries[1].key"));
        let e =
            check_key("entries[0].key", "alice", Some("services[0].rules[0].when")).unwrap_err();
        assert!(e.message().contains("is not an IP address"), "{e}");
        assert!(check_key("k", &"x".repeat(251), None).is_err());
    }

    #[test]
    fn one_request_gives_1_to_max_entries() {
        check_batch("entries", 1).unwrap();
        check_batch("keys", MAX_ENTRIES).unwrap();
        for (field, len) in [("entries", 0), ("keys", MAX_ENTRIES + 1)] {
            let e = check_batch(field, len).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field));
            assert_eq!(
                e.message(),
                format!("{field}: give 1 to {MAX_ENTRIES} {field}, not {len}")
            );
        }
    }
}
