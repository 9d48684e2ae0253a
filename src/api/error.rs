//! The body of every refusal and its code:
//!
//! ```json
//! {"error": {"code": "invalid", "message": "services[0].rules[1].when.cidr[0]: `300.1.1.1` is ...",
//!            "field": "services[0].rules[1].when.cidr[0]"}}
//! ```
//!
//! `message` is meant to be shown as it is (`graygate ctl` prints it unchanged); it starts with
//! the field when there is one. `code` is for scripts; each code has one HTTP status
//! ([`ErrorCode::status`]).

use http::StatusCode;
use serde::{Deserialize, Serialize};

/// Why the admin API refused a request, for scripts. Written in `snake_case` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not JSON, or is missing where one is needed.
    MalformedJson,
    /// 400: the JSON does not fit (unknown field, missing field, wrong type), a bad `If-Match`
    /// or query parameter.
    BadRequest,
    /// 401: no bearer token, or a wrong one.
    Unauthorized,
    /// 403: no tokens are configured and the client (or the `Host` it asked for) is not on
    /// loopback; or a change comes from another site (`Origin`, `Sec-Fetch-Site`).
    Forbidden,
    /// 404: no such route, service, version, rule, history revision or endpoint.
    NotFound,
    /// 409: a create found one with the same name.
    Exists,
    /// 409: `If-Match` names another revision than the stored one.
    StaleRevision,
    /// 409: other writers kept changing the policy during this change.
    Busy,
    /// 413: the body is larger than the admin API accepts.
    TooLarge,
    /// 415: a change sent as something other than JSON (a form, `text/plain`): what a page of
    /// another site can make a browser send without asking.
    UnsupportedMediaType,
    /// 422: the change makes the policy invalid, or the request makes no sense.
    Invalid,
    /// 500: the store holds data graygate did not write.
    StoreBadData,
    /// 500: this process could not do what was asked for a reason of its own (the system's
    /// random number generator failed, so no session could be opened).
    Internal,
    /// 503: the store cannot be reached.
    StoreUnavailable,
    /// 503 with `Retry-After`: this process is handing over to a new one (an upgrade); the
    /// change can be sent again in a moment, when the new process answers.
    Upgrading,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::MalformedJson,
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Exists,
        ErrorCode::StaleRevision,
        ErrorCode::Busy,
        ErrorCode::TooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::Invalid,
        ErrorCode::StoreBadData,
        ErrorCode::Internal,
        ErrorCode::StoreUnavailable,
        ErrorCode::Upgrading,
    ];

    /// The HTTP status a refusal with this code is sent with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::MalformedJson | ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Exists | ErrorCode::StaleRevision | ErrorCode::Busy => StatusCode::CONFLICT,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::StoreBadData | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::StoreUnavailable | ErrorCode::Upgrading => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The code as it is written on the wire (`stale_revision`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Exists => "exists",
            ErrorCode::StaleRevision => "stale_revision",
            ErrorCode::Busy => "busy",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Invalid => "invalid",
            ErrorCode::StoreBadData => "store_bad_data",
            ErrorCode::Internal => "internal",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Upgrading => "upgrading",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of a refusal: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What a refusal says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// For people, shown as it is; starts with `field: ` when there is a field.
    pub message: String,
    /// A path into the policy document (`services[0].split.weights.canary`) or into the request
    /// body (`entries[1].ttl`), or the header or query parameter at fault (`If-Match`, `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_written_as_before() {
        let expected = [
            ("malformed_json", 400),
            ("bad_request", 400),
            ("unauthorized", 401),
            ("forbidden", 403),
            ("not_found", 404),
            ("exists", 409),
            ("stale_revision", 409),
            ("busy", 409),
            ("too_large", 413),
            ("unsupported_media_type", 415),
            ("invalid", 422),
            ("store_bad_data", 500),
            ("internal", 500),
            ("store_unavailable", 503),
            ("upgrading", 503),
        ];
        for (code, (text, status)) in ErrorCode::ALL.iter().zip(expected) {
            assert_eq!(code.as_str(), text);
            assert_eq!(code.to_string(), text);
            assert_eq!(serde_json::to_value(code).unwrap(), text);
            let back: ErrorCode = serde_json::from_value(serde_json::json!(text)).unwrap();
            assert_eq!(back, *code);
            assert_eq!(code.status().as_u16(), status, "{text}");
        }
    }

    #[test]
    fn error_bodies_round_trip_and_leave_out_a_missing_field() {
        let body = ErrorBody {
            error: ErrorDetail {
                code: ErrorCode::Invalid,
                message: "entries[1].ttl: `soon` is not a duration".into(),
                field: Some("entries[1].ttl".into()),
            },
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "invalid",
                "message": "entries[1].ttl: `soon` is not a duration", "field": "entries[1].ttl"}})
        );
        assert_eq!(serde_json::from_value::<ErrorBody>(json).unwrap(), body);
        let plain = ErrorBody {
            error: ErrorDetail {
                code: ErrorCode::NotFound,
                message: "no service named `shop`".into(),
                field: None,
            },
        };
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            serde_json::json!({"error": {"code": "not_found", "message": "no service named `shop`"}})
        );
    }
}
