//! Every refusal of the admin API, as one JSON shape with the status that fits:
//!
//! ```json
//! {"error": {"code": "invalid", "message": "services[0].rules[1].when.cidr[0]: `300.1.1.1` is ...",
//!            "field": "services[0].rules[1].when.cidr[0]"}}
//! ```
//!
//! `message` is meant to be shown as it is (`graygate ctl` prints it unchanged); it starts with the
//! field when there is one. `code` is for scripts:
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `malformed_json` | the body is not JSON |
//! | 400 | `bad_request` | the JSON does not fit (unknown field, missing field, wrong type), a bad `If-Match` or query |
//! | 401 | `unauthorized` | no bearer token, or a wrong one |
//! | 403 | `forbidden` | no tokens are configured and the client is not on loopback |
//! | 404 | `not_found` | no such route, service, version, rule, history revision or endpoint |
//! | 409 | `exists` | a create found one with the same name |
//! | 409 | `stale_revision` | `If-Match` names another revision than the stored one |
//! | 409 | `busy` | other writers kept changing the policy during this change |
//! | 413 | `too_large` | the body is larger than the admin API accepts |
//! | 422 | `invalid` | the change makes the policy invalid, or the request makes no sense |
//! | 500 | `store_bad_data` | the store holds data graygate did not write |
//! | 503 | `store_unavailable` | the store cannot be reached |

use crate::gateway::ChangeError;
use crate::policy::edit::{EditError, EditErrorKind};
use crate::policy::{CompileError, FieldPath};
use crate::store::StoreError;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, StatusCode};

/// A refusal: status, a stable code for scripts, a message for people, and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    /// Starts with `field: ` when there is a field.
    pub message: String,
    /// A path into the document or the request body (`services[0].split.weights.canary`).
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// An error about `field`: the message is prefixed with it.
    pub fn at(
        status: StatusCode,
        code: &'static str,
        field: impl Into<String>,
        message: impl std::fmt::Display,
    ) -> Self {
        let field = field.into();
        ApiError {
            status,
            code,
            message: format!("{field}: {message}"),
            field: Some(field),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 422 about `field` of the request.
    pub fn invalid(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        ApiError::at(StatusCode::UNPROCESSABLE_ENTITY, "invalid", field, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// A JSON body that does not parse or does not fit the expected shape; `path` is where
    /// (`.` for the whole body).
    pub fn from_json(error: &serde_json::Error, path: &str) -> Self {
        use serde_json::error::Category;
        let (code, what) = match error.classify() {
            Category::Syntax | Category::Eof => ("malformed_json", "malformed JSON"),
            Category::Data | Category::Io => ("bad_request", "does not fit"),
        };
        if path.is_empty() || path == "." || code == "malformed_json" {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                code,
                format!("request body: {what}: {error}"),
            );
        }
        ApiError::at(StatusCode::BAD_REQUEST, code, path, error)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<EditError> for ApiError {
    fn from(e: EditError) -> Self {
        let (status, code) = match e.kind {
            EditErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            EditErrorKind::Exists => (StatusCode::CONFLICT, "exists"),
            EditErrorKind::Invalid => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
        };
        match e.field {
            Some(field) => ApiError::at(status, code, field, e.message),
            None => ApiError::new(status, code, e.message),
        }
    }
}

impl From<CompileError> for ApiError {
    fn from(e: CompileError) -> Self {
        ApiError::at(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            e.path,
            e.message,
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (status, code) = match &e {
            StoreError::Unavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            StoreError::Conflict { .. } => (StatusCode::CONFLICT, "stale_revision"),
            StoreError::BadData { .. } | StoreError::Open { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "store_bad_data")
            }
        };
        ApiError::new(status, code, e.chain().to_string())
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Edit(e) => e.into(),
            ChangeError::Rejected(e) => e.into(),
            ChangeError::Stale { .. } => {
                ApiError::new(StatusCode::CONFLICT, "stale_revision", e.to_string())
            }
            ChangeError::Busy { .. } => ApiError::new(StatusCode::CONFLICT, "busy", e.to_string()),
            ChangeError::Store(e) => e.into(),
        }
    }
}

/// Lets an edit closure of [`crate::gateway::Gateway::change`] refuse with an [`ApiError`] of
/// the request (a bad parameter found while editing): it travels as an edit error.
impl From<ApiError> for ChangeError {
    fn from(e: ApiError) -> Self {
        let kind = match e.status {
            StatusCode::NOT_FOUND => EditErrorKind::NotFound,
            StatusCode::CONFLICT => EditErrorKind::Exists,
            _ => EditErrorKind::Invalid,
        };
        let message = match &e.field {
            Some(field) => e
                .message
                .strip_prefix(&format!("{field}: "))
                .unwrap_or(&e.message)
                .to_string(),
            None => e.message,
        };
        ChangeError::Edit(EditError {
            kind,
            field: e.field.as_deref().map(FieldPath::parse),
            message,
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(field) = self.field {
            error["field"] = serde_json::Value::String(field);
        }
        let body = Json(serde_json::json!({ "error": error }));
        if self.status == StatusCode::UNAUTHORIZED {
            (self.status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{self, PolicyDoc};

    #[test]
    fn compile_errors_are_422_naming_the_field() {
        let doc: PolicyDoc = serde_json::from_value(serde_json::json!({
            "services": [{"name": "web", "stable": "v1", "versions": {"v1": "nope"}}]
        }))
        .unwrap();
        let e: ApiError = policy::compile(&doc, &["prod"]).unwrap_err().into();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.code, "invalid");
        assert_eq!(e.field.as_deref(), Some("services[0].versions.v1"));
        assert_eq!(
            e.message,
            "services[0].versions.v1: unknown upstream `nope` (configured upstreams: prod)"
        );
    }

    #[test]
    fn change_errors_map_to_their_status() {
        let stale: ApiError = ChangeError::Stale {
            expected: 3,
            actual: 4,
        }
        .into();
        assert_eq!(
            (stale.status, stale.code),
            (StatusCode::CONFLICT, "stale_revision")
        );
        assert_eq!(
            stale.message,
            "the policy is at revision 4, not 3: read it again and retry"
        );
        let gone: ApiError = ChangeError::Edit(EditError {
            kind: EditErrorKind::NotFound,
            field: None,
            message: "no service named `x`".into(),
        })
        .into();
        assert_eq!(
            (gone.status, gone.code),
            (StatusCode::NOT_FOUND, "not_found")
        );
        let down: ApiError = ChangeError::Store(StoreError::Unavailable {
            store: "redis",
            detail: "down".into(),
            source: None,
        })
        .into();
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
        // An ApiError raised inside an edit comes back out unchanged.
        let original = ApiError::invalid("entries[2].ttl", "`soon` is not a duration");
        let back: ApiError = ChangeError::from(original.clone()).into();
        assert_eq!(back, original);
    }

    #[test]
    fn json_errors_are_400_and_name_the_field() {
        let syntax = serde_json::from_str::<PolicyDoc>("{\"routes\": [").unwrap_err();
        let e = ApiError::from_json(&syntax, ".");
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "malformed_json")
        );
        assert!(
            e.message.starts_with("request body: malformed JSON: EOF"),
            "{e}"
        );

        let mut de = serde_json::Deserializer::from_str(
            r#"{"services": [{"name": "w", "stable": "a", "versions": {}, "stabel": 1}]}"#,
        );
        let err = serde_path_to_error::deserialize::<_, PolicyDoc>(&mut de).unwrap_err();
        let e = ApiError::from_json(err.inner(), &err.path().to_string());
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "bad_request"));
        assert_eq!(e.field.as_deref(), Some("services[0].stabel"));
        assert!(
            e.message
                .starts_with("services[0].stabel: unknown field `stabel`"),
            "{e}"
        );
    }
}
