//! Who is calling: bearer tokens compared in constant time, or loopback-only when no token is
//! configured.

use super::error::ApiError;
use crate::config::AdminToken;
use http::HeaderValue;
use std::net::IpAddr;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// The caller of a request, as changes are recorded in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// The name recorded for changes when no tokens are configured.
pub const LOCAL_CALLER: &str = "local";

/// The configured tokens.
#[derive(Debug, Clone)]
pub struct Auth {
    tokens: Vec<AdminToken>,
}

impl Auth {
    pub fn new(tokens: Vec<AdminToken>) -> Self {
        Auth { tokens }
    }

    /// True when no tokens are configured: loopback clients only, unauthenticated.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Checks a request from `peer` with this `Authorization` header.
    ///
    /// Every configured token is compared, each in constant time, and the match is selected
    /// without a branch, so the time taken says nothing about which token or how much of one
    /// matched (only, as with any comparison of unequal lengths, whether the length is right).
    pub fn check(
        &self,
        peer: IpAddr,
        authorization: Option<&HeaderValue>,
    ) -> Result<Caller, ApiError> {
        if self.is_open() {
            if !peer.is_loopback() {
                return Err(ApiError::forbidden(
                    "no admin tokens are configured: the admin API only answers clients on this machine",
                ));
            }
            return Ok(Caller(LOCAL_CALLER.to_string()));
        }
        let Some(value) = authorization else {
            return Err(ApiError::unauthorized(
                "missing bearer token: send `Authorization: Bearer <token>` (graygate ctl: --token or GRAYGATE_TOKEN)",
            ));
        };
        let given = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| value.as_bytes().strip_prefix(b"bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        let given = given.trim_ascii();
        let mut found = u32::MAX;
        for (i, token) in self.tokens.iter().enumerate() {
            let equal = token.secret.as_bytes().ct_eq(given);
            found.conditional_assign(&(i as u32), equal);
        }
        match self.tokens.get(found as usize) {
            Some(token) => Ok(Caller(token.name.clone())),
            None => Err(ApiError::unauthorized("invalid bearer token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorCode;
    use http::StatusCode;

    fn auth() -> Auth {
        Auth::new(vec![
            AdminToken {
                name: "alice".into(),
                secret: "alice-secret-0123456789".into(),
            },
            AdminToken {
                name: "ci".into(),
                secret: "ci-secret-0123456789ab".into(),
            },
        ])
    }

    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn the_right_token_names_its_caller() {
        let h = HeaderValue::from_static("Bearer ci-secret-0123456789ab");
        assert_eq!(auth().check(REMOTE, Some(&h)).unwrap(), Caller("ci".into()));
        let h = HeaderValue::from_static("Bearer alice-secret-0123456789");
        assert_eq!(
            auth().check(REMOTE, Some(&h)).unwrap(),
            Caller("alice".into())
        );
    }

    #[test]
    fn missing_or_wrong_tokens_are_401() {
        let e = auth().check(LOOPBACK, None).unwrap_err();
        assert_eq!(
            (e.status(), e.code),
            (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized)
        );
        assert!(e.message().starts_with("missing bearer token"), "{e}");
        for wrong in [
            "Bearer alice-secret-012345678",
            "Bearer alice-secret-01234567890",
            "Bearer ",
            "Bearer ci-secret-0123456789aB",
        ] {
            let h = HeaderValue::from_str(wrong).unwrap();
            let e = auth().check(LOOPBACK, Some(&h)).unwrap_err();
            assert_eq!(e.message(), "invalid bearer token", "{wrong}");
        }
        let h = HeaderValue::from_static("Basic YWxpY2U6eA==");
        let e = auth().check(LOOPBACK, Some(&h)).unwrap_err();
        assert_eq!(
            e.message(),
            "the Authorization header must be `Bearer <token>`"
        );
    }

    #[test]
    fn without_tokens_only_loopback_is_served() {
        let open = Auth::new(Vec::new());
        assert_eq!(open.check(LOOPBACK, None).unwrap(), Caller("local".into()));
        assert_eq!(
            open.check("::1".parse().unwrap(), None).unwrap(),
            Caller("local".into())
        );
        let e = open.check(REMOTE, None).unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
    }
}
