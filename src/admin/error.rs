//! Every refusal of the admin API: an [`ApiError`] is an [`ErrorCode`] (which fixes the HTTP
//! status), the field at fault and what is wrong with it, sent as the one error body of
//! [`crate::api::ErrorBody`]. The codes and their statuses are listed in `docs/admin-api.md`.
//!
//! The field and the detail are kept apart and joined only when the message is written
//! (`services[0].versions.v1: unknown upstream ...`), so an error raised inside an edit can travel
//! through [`ChangeError`] and come back out unchanged.

use crate::api::{ErrorBody, ErrorCode, ErrorDetail};
use crate::gateway::ChangeError;
use crate::policy::edit::{EditError, EditErrorKind};
use crate::policy::{CompileError, FieldPath};
use crate::store::StoreError;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, StatusCode};

/// A refusal: a stable code for scripts, the field at fault, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct ApiError {
    pub code: ErrorCode,
    /// A path into the document or the request body (`services[0].split.weights.canary`), or
    /// the header or query parameter at fault.
    pub field: Option<String>,
    /// What is wrong, without the field.
    pub detail: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError {
            code,
            field: None,
            detail: detail.into(),
        }
    }

    /// An error about `field`.
    pub fn at(code: ErrorCode, field: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        ApiError {
            code,
            field: Some(field.into()),
            detail: detail.to_string(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::BadRequest, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::NotFound, detail)
    }

    /// 422 about `field` of the request.
    pub fn invalid(field: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        ApiError::at(ErrorCode::Invalid, field, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Unauthorized, detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Forbidden, detail)
    }

    /// The HTTP status it is sent with.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The message people read: `field: detail`, or the detail alone.
    pub fn message(&self) -> String {
        match &self.field {
            Some(field) => format!("{field}: {}", self.detail),
            None => self.detail.clone(),
        }
    }

    /// The body it is sent as.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message(),
                field: self.field.clone(),
            },
        }
    }

    /// A JSON body that does not parse or does not fit the expected shape; `path` is where
    /// (`.` for the whole body).
    pub fn from_json(error: &serde_json::Error, path: &str) -> Self {
        use serde_json::error::Category;
        let (code, what) = match error.classify() {
            Category::Syntax | Category::Eof => (ErrorCode::MalformedJson, "malformed JSON"),
            Category::Data | Category::Io => (ErrorCode::BadRequest, "does not fit"),
        };
        if path.is_empty() || path == "." || code == ErrorCode::MalformedJson {
            return ApiError::new(code, format!("request body: {what}: {error}"));
        }
        ApiError::at(code, path, error)
    }
}

impl From<EditError> for ApiError {
    fn from(e: EditError) -> Self {
        let code = match e.kind {
            EditErrorKind::NotFound => ErrorCode::NotFound,
            EditErrorKind::Exists => ErrorCode::Exists,
            EditErrorKind::Invalid => ErrorCode::Invalid,
        };
        ApiError {
            code,
            field: e.field.map(String::from),
            detail: e.message,
        }
    }
}

impl From<CompileError> for ApiError {
    fn from(e: CompileError) -> Self {
        ApiError::at(ErrorCode::Invalid, e.path, e.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::Unavailable { .. } => ErrorCode::StoreUnavailable,
            StoreError::Conflict { .. } => ErrorCode::StaleRevision,
            StoreError::BadData { .. } | StoreError::Open { .. } => ErrorCode::StoreBadData,
        };
        ApiError::new(code, e.chain().to_string())
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Edit(e) => e.into(),
            ChangeError::Rejected(e) => e.into(),
            ChangeError::Stale { .. } => ApiError::new(ErrorCode::StaleRevision, e.to_string()),
            ChangeError::Busy { .. } => ApiError::new(ErrorCode::Busy, e.to_string()),
            ChangeError::Store(e) => e.into(),
            ChangeError::StoreBehind { .. } => {
                ApiError::new(ErrorCode::StoreUnavailable, e.to_string())
            }
        }
    }
}

/// Lets an edit closure of [`crate::gateway::Gateway::change`] refuse with an [`ApiError`] of
/// the request (a bad parameter found while editing): it travels as an edit error.
impl From<ApiError> for ChangeError {
    fn from(e: ApiError) -> Self {
        let kind = match e.code {
            ErrorCode::NotFound => EditErrorKind::NotFound,
            ErrorCode::Exists => EditErrorKind::Exists,
            _ => EditErrorKind::Invalid,
        };
        ChangeError::Edit(EditError {
            kind,
            field: e.field.as_deref().map(FieldPath::parse),
            message: e.detail,
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(self.body());
        if status == StatusCode::UNAUTHORIZED {
            (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else if self.code == ErrorCode::Upgrading {
            (status, [(header::RETRY_AFTER, "1")], body).into_response()
        } else {
            (status, body).into_response()
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
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.code, ErrorCode::Invalid);
        assert_eq!(e.field.as_deref(), Some("services[0].versions.v1"));
        assert_eq!(
            e.message(),
            "services[0].versions.v1: unknown upstream `nope` (configured upstreams: prod)"
        );
        assert_eq!(e.to_string(), e.message());
    }

    #[test]
    fn change_errors_map_to_their_status() {
        let stale: ApiError = ChangeError::Stale {
            expected: 3,
            actual: 4,
        }
        .into();
        assert_eq!(
            (stale.status(), stale.code),
            (StatusCode::CONFLICT, ErrorCode::StaleRevision)
        );
        assert_eq!(
            stale.message(),
            "the policy is at revision 4, not 3: read it again and retry"
        );
        let gone: ApiError = ChangeError::Edit(EditError {
            kind: EditErrorKind::NotFound,
            field: None,
            message: "no service named `x`".into(),
        })
        .into();
        assert_eq!(
            (gone.status(), gone.code),
            (StatusCode::NOT_FOUND, ErrorCode::NotFound)
        );
        let down: ApiError = ChangeError::Store(StoreError::Unavailable {
            store: "redis",
            detail: "down".into(),
            source: None,
        })
        .into();
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
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
            (e.status(), e.code),
            (StatusCode::BAD_REQUEST, ErrorCode::MalformedJson)
        );
        assert!(
            e.message().starts_with("request body: malformed JSON: EOF"),
            "{e}"
        );

        let mut de = serde_json::Deserializer::from_str(
            r#"{"services": [{"name": "w", "stable": "a", "versions": {}, "stabel": 1}]}"#,
        );
        let err = serde_path_to_error::deserialize::<_, PolicyDoc>(&mut de).unwrap_err();
        let e = ApiError::from_json(err.inner(), &err.path().to_string());
        assert_eq!(
            (e.status(), e.code),
            (StatusCode::BAD_REQUEST, ErrorCode::BadRequest)
        );
        assert_eq!(e.field.as_deref(), Some("services[0].stabel"));
        assert!(
            e.message()
                .starts_with("services[0].stabel: unknown field `stabel`"),
            "{e}"
        );
    }

    #[test]
    fn the_body_carries_code_message_and_field() {
        let e = ApiError::invalid("entries[1].ttl", "`soon` is not a duration");
        assert_eq!(
            serde_json::to_value(e.body()).unwrap(),
            serde_json::json!({"error": {"code": "invalid",
                "message": "entries[1].ttl: `soon` is not a duration", "field": "entries[1].ttl"}})
        );
    }
}
