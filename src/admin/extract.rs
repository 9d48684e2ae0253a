//! Request extractors whose refusals are [`ApiError`]s: a JSON body that names the field it
//! trips on, query parameters that name the parameter, and [`Write`]: who changes the policy,
//! at which revision, and the one way a change is applied.

use super::auth::Caller;
use super::error::ApiError;
use super::AdminState;
use crate::api::{ErrorCode, IfMatch};
use crate::gateway::Applied;
use crate::policy::edit;
use crate::policy::PolicyDoc;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use http::request::Parts;
use http::{header, HeaderMap};
use serde::de::DeserializeOwned;
use std::error::Error as _;
use std::sync::Arc;

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
                ErrorCode::TooLarge,
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
                ErrorCode::MalformedJson,
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

/// Query parameters, read by axum's `Query`; a value that does not fit is a 400 naming the
/// parameter (`limit: `ten` is not a whole number`).
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|q| Query(q.0))
            .map_err(|e| query_error(&e))
    }
}

/// The error axum's `Query` keeps inside its rejection: the parameter's name and what is wrong.
type QueryError = serde_path_to_error::Error<serde::de::value::Error>;

fn query_error(rejection: &QueryRejection) -> ApiError {
    let inner = rejection
        .source()
        .and_then(|axum_error| axum_error.source())
        .and_then(|e| e.downcast_ref::<QueryError>());
    match inner {
        Some(e) => ApiError::at(ErrorCode::BadRequest, e.path().to_string(), e.inner()),
        None => ApiError::bad_request(format!("query: {rejection}")),
    }
}

/// The `If-Match` of a request; a value that is no revision is a 400 about `If-Match`.
pub fn if_match(headers: &HeaderMap) -> Result<IfMatch, ApiError> {
    match headers.get(header::IF_MATCH) {
        None => Ok(IfMatch::Any),
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| ApiError::bad_request("If-Match: not a revision like \"7\""))?;
            IfMatch::parse(text).map_err(|e| ApiError::at(ErrorCode::BadRequest, "If-Match", e))
        }
    }
}

/// A change of the policy: who asks (the [`Caller`] the authentication found), the revision
/// they expect (`If-Match`), and [`Write::apply`], the one way a handler changes the policy.
pub struct Write {
    state: Arc<AdminState>,
    caller: Caller,
    if_match: IfMatch,
}

impl FromRequestParts<Arc<AdminState>> for Write {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AdminState>,
    ) -> Result<Self, Self::Rejection> {
        // Set by the authentication layer in front of every `/v1` route.
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("this endpoint needs a bearer token"))?;
        Ok(Write {
            state: state.clone(),
            caller,
            if_match: if_match(&parts.headers)?,
        })
    }
}

impl Write {
    /// Who makes the change (the token's name).
    pub fn caller(&self) -> &str {
        &self.caller.0
    }

    /// Makes one change through [`Gateway::change`](crate::gateway::Gateway::change), recorded
    /// with `summary`; refuses one that adds two rules whose ranges overlap.
    pub async fn apply<T>(
        &self,
        summary: &str,
        mut edit: impl FnMut(&mut PolicyDoc) -> Result<T, ApiError>,
    ) -> Result<Applied<T>, ApiError> {
        self.state
            .gateway
            .change(self.if_match.expected(), &self.caller.0, summary, |doc| {
                let before = doc.clone();
                let value = edit(doc)?;
                edit::check_no_new_overlaps(&before, doc)?;
                Ok(value)
            })
            .await
            .map_err(ApiError::from)
    }

    /// Makes `doc` the policy again (undo). It was accepted before, so only compiling judges it
    /// again (the upstreams may have changed since); an overlap it had is no new one.
    pub async fn restore(&self, summary: &str, doc: &PolicyDoc) -> Result<Applied<()>, ApiError> {
        self.state
            .gateway
            .change(
                self.if_match.expected(),
                &self.caller.0,
                summary,
                |current| {
                    current.clone_from(doc);
                    Ok(())
                },
            )
            .await
            .map_err(ApiError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HistoryQuery, Revision, RuleQuery};
    use http::{HeaderValue, StatusCode};

    #[test]
    fn if_match_reads_revisions_and_names_itself() {
        let mut headers = HeaderMap::new();
        assert_eq!(if_match(&headers).unwrap(), IfMatch::Any);
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"7\""));
        assert_eq!(if_match(&headers).unwrap(), IfMatch::Exactly(Revision(7)));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("seven"));
        let e = if_match(&headers).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.field.as_deref(), Some("If-Match"));
        assert_eq!(
            e.message(),
            "If-Match: `seven` is not a policy revision like \"7\" (the ETag of a GET)"
        );
    }

    #[test]
    fn trailing_garbage_is_malformed() {
        let e = parse_json::<serde_json::Value>(b"{} x").unwrap_err();
        assert_eq!(e.code, ErrorCode::MalformedJson);
    }

    async fn query<T: DeserializeOwned>(uri: &str) -> Result<T, ApiError> {
        let (mut parts, ()) = http::Request::get(uri).body(()).unwrap().into_parts();
        Query::<T>::from_request_parts(&mut parts, &())
            .await
            .map(|q| q.0)
    }

    #[tokio::test]
    async fn query_errors_name_the_parameter() {
        assert_eq!(
            query::<HistoryQuery>("/v1/history?limit=5").await.unwrap(),
            HistoryQuery {
                limit: Some(5),
                before: None
            }
        );
        let e = query::<HistoryQuery>("/v1/history?limit=ten")
            .await
            .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::BadRequest, Some("limit"))
        );
        assert_eq!(e.message(), "limit: `ten` is not a whole number");
        let e = query::<RuleQuery>("/v1/services/web/rules?position=first")
            .await
            .unwrap_err();
        assert_eq!(e.message(), "position: `first` is not a whole number");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}
