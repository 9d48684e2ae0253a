//! How answers about the policy go out: as JSON with the revision as their `ETag`, whether the
//! body says the revision too ([`Revisioned`]) or not ([`Tagged`], a document as it is).

use crate::api::{Revision, Revisioned, Tagged};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, StatusCode};
use serde::Serialize;

fn with_etag(revision: Revision, body: impl IntoResponse) -> Response {
    ([(header::ETAG, revision.etag())], body).into_response()
}

impl<T: Serialize> IntoResponse for Revisioned<T> {
    fn into_response(self) -> Response {
        with_etag(self.revision, Json(self))
    }
}

impl<T: Serialize> IntoResponse for Tagged<T> {
    fn into_response(self) -> Response {
        with_etag(self.revision, Json(self.body))
    }
}

/// 201 for something a `PUT` created, else 200.
pub(super) fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}
