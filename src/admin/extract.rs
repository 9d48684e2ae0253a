//! Request extractors whose refusals are [`ApiError`]s: a JSON body that names the field it
//! trips on, and the `If-Match` revision.

use super::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use http::request::Parts;
use http::{header, StatusCode};
use serde::de::DeserializeOwned;

/// Largest request body accepted: a whole policy with large CIDR lists, or a bulk list write.
pub const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// A JSON body. Malformed JSON, an unknown or missing field, or a wrong type is a 400 naming the
/// field (`services[0].rules[1].when.cidr`).
pub struct JsonBody<T>(pub T);

/// A JSON body that may be left out (an empty body means `T::default()`).
pub struct OptionalJson<T>(pub T);

async fn read_body(req: Request) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body: cannot be read (at most {BODY_LIMIT} bytes): {e}"),
            )
        })
}

/// Parses `bytes` as `T`, naming the field of the first error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| ApiError::from_json(e.inner(), &e.path().to_string()))?;
    de.end().map_err(|e| ApiError::from_json(&e, "."))?;
    Ok(value)
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "request body: this endpoint needs a JSON body",
            ));
        }
        parse_json(&bytes).map(JsonBody)
    }
}

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

/// The revision a change expects the policy to be at: `If-Match: "7"` (quotes optional, `*` or no
/// header: any revision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfMatch(pub Option<u64>);

impl IfMatch {
    pub fn parse(value: &str) -> Result<Option<u64>, ApiError> {
        let v = value.trim();
        if v == "*" {
            return Ok(None);
        }
        let v = v.strip_prefix("W/").unwrap_or(v).trim_matches('"');
        v.parse::<u64>().map(Some).map_err(|_| {
            ApiError::at(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "If-Match",
                format!("`{value}` is not a policy revision like \"7\" (the ETag of a GET)"),
            )
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.headers.get(header::IF_MATCH) {
            None => Ok(IfMatch(None)),
            Some(v) => {
                let text = v
                    .to_str()
                    .map_err(|_| ApiError::bad_request("If-Match: not a revision like \"7\""))?;
                IfMatch::parse(text).map(IfMatch)
            }
        }
    }
}

/// The `ETag` of a response about policy revision `revision`.
pub fn etag(revision: u64) -> String {
    format!("\"{revision}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_reads_revisions() {
        assert_eq!(IfMatch::parse("\"7\"").unwrap(), Some(7));
        assert_eq!(IfMatch::parse("7").unwrap(), Some(7));
        assert_eq!(IfMatch::parse("W/\"12\"").unwrap(), Some(12));
        assert_eq!(IfMatch::parse("*").unwrap(), None);
        let e = IfMatch::parse("abc").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("If-Match"));
        assert_eq!(etag(7), "\"7\"");
    }

    #[test]
    fn trailing_garbage_is_malformed() {
        let e = parse_json::<serde_json::Value>(b"{} x").unwrap_err();
        assert_eq!(e.code, "malformed_json");
    }
}
