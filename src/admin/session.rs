//! Dashboard sign-in: a bearer token exchanged once for a session cookie, so that the page never
//! holds the token (no script can read an `HttpOnly` cookie) and a browser never sends the cookie
//! from another site (`SameSite=Strict`).
//!
//! - `POST /v1/session` with `{"token": "..."}` checks the token as a bearer token is checked and
//!   answers `Set-Cookie: graygate_session=<256 random bits>; HttpOnly; SameSite=Strict; Path=/;
//!   Max-Age=<[admin] session_ttl>`. With no tokens configured (loopback only) `{}` signs in as
//!   `local`.
//! - `GET /v1/session` says who a request is from (cookie, bearer token, or open loopback); 401
//!   otherwise: what the dashboard asks first, so that it shows nothing but the sign-in to a
//!   client that is not signed in.
//! - `DELETE /v1/session` forgets the session and clears the cookie.
//!
//! Sessions live in this process's memory, at most [`MAX_SESSIONS`] of them: a restart or an
//! upgrade signs everyone out (the dashboard asks for the token again). A session carries the
//! token's name, so that changes made from the dashboard are recorded under it in the history.
//!
//! The cookie has no `Secure` attribute: the admin listener speaks plain HTTP (it is meant for
//! loopback or a private network; put TLS in front of it to reach it from elsewhere).

use super::auth::Caller;
use super::error::ApiError;
use super::extract::JsonBody;
use super::{AdminState, Shared};
use crate::api::{paths, Session, SignIn};
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The session cookie's name.
pub const COOKIE: &str = "graygate_session";

/// Most sessions kept at once: past it, signing in drops the sessions closest to expiring, so
/// that no client can grow this process's memory by signing in again and again.
pub const MAX_SESSIONS: usize = 10_000;

/// One signed-in browser.
#[derive(Debug, Clone)]
struct Signed {
    caller: Caller,
    expires: Instant,
    expires_at: SystemTime,
}

/// The sessions of this process.
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    by_id: Mutex<HashMap<String, Signed>>,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Sessions {
            ttl,
            by_id: Mutex::new(HashMap::new()),
        }
    }

    /// A new session for `caller`: its id (the cookie's value) and when it expires.
    fn open(&self, caller: Caller) -> Result<(String, SystemTime), ApiError> {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(
            |_| ApiError::internal("the system's random number generator failed: no session"),
        )?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let signed = Signed {
            caller,
            expires: now + self.ttl,
            expires_at: SystemTime::now() + self.ttl,
        };
        let expires_at = signed.expires_at;
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires > now);
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(id.clone(), signed);
        Ok((id, expires_at))
    }

    /// The caller of a live session, with when it expires.
    fn find(&self, id: &str) -> Option<(Caller, SystemTime)> {
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some(s) if s.expires > Instant::now() => Some((s.caller.clone(), s.expires_at)),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    fn close(&self, id: &str) {
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// How many sessions are live.
    #[cfg(test)]
    fn len(&self) -> usize {
        let now = Instant::now();
        let map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|s| s.expires > now).count()
    }
}

/// The session id in a request's `Cookie` headers, if any.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// Who a request is from: its bearer token, else its session cookie, else (no tokens
/// configured) `local` for a client on this machine. With it: when the session expires (a
/// cookie's only).
pub fn identify(
    state: &AdminState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(Caller, Option<SystemTime>), ApiError> {
    let authorization = headers.get(header::AUTHORIZATION);
    if authorization.is_none() && !state.auth.is_open() {
        if let Some((caller, expires_at)) = cookie(headers).and_then(|id| state.sessions.find(id)) {
            return Ok((caller, Some(expires_at)));
        }
    }
    state
        .auth
        .check(peer.ip(), authorization)
        .map(|caller| (caller, None))
}

/// The session routes; they authenticate on their own (signing in needs no session).
pub fn router() -> Router<Arc<AdminState>> {
    Router::new().route(paths::SESSION, get(who).post(sign_in).delete(sign_out))
}

fn session(state: &AdminState, caller: Caller, expires_at: Option<SystemTime>) -> Session {
    Session {
        name: caller.0,
        expires_at: expires_at.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        open: state.auth.is_open(),
    }
}

/// `GET /v1/session`.
async fn who(
    State(s): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Session>, ApiError> {
    let (caller, expires_at) = identify(&s, peer, &headers)?;
    Ok(Json(session(&s, caller, expires_at)))
}

/// `POST /v1/session`: the token checked as a bearer token is, then a session cookie.
async fn sign_in(
    State(s): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    JsonBody(body): JsonBody<SignIn>,
) -> Result<Response, ApiError> {
    let bearer = body
        .token
        .as_deref()
        .map(|t| HeaderValue::from_str(&format!("Bearer {}", t.trim())))
        .transpose()
        .map_err(|_| ApiError::unauthorized("invalid bearer token"))?;
    let caller = match s.auth.check(peer.ip(), bearer.as_ref()) {
        Ok(caller) => caller,
        Err(e) => {
            tracing::warn!(peer = %peer, "dashboard sign-in refused: {}", e.message());
            return Err(e);
        }
    };
    let (id, expires_at) = s.sessions.open(caller.clone())?;
    tracing::info!(actor = %caller.0, peer = %peer, "dashboard sign-in");
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        s.sessions.ttl.as_secs()
    );
    let mut response = Json(session(&s, caller, Some(expires_at))).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|_| ApiError::internal("session cookie"))?,
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `DELETE /v1/session`: the session is forgotten, the cookie cleared.
async fn sign_out(State(s): Shared, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers) {
        s.sessions.close(id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("graygate_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; graygate_session=abc ; b=2"),
        );
        assert_eq!(cookie(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("graygate_session=xyz"),
        );
        assert_eq!(cookie(&h), Some("xyz"));
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("xgraygate_session=no"),
        );
        assert_eq!(cookie(&h), None);
    }

    #[test]
    fn sessions_expire_and_are_bounded() {
        let sessions = Sessions::new(Duration::from_millis(50));
        let (id, _) = sessions.open(Caller("alice".into())).unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(sessions.find(&id).unwrap().0, Caller("alice".into()));
        assert!(sessions.find("not-a-session").is_none());
        std::thread::sleep(Duration::from_millis(80));
        assert!(sessions.find(&id).is_none(), "expired");

        let sessions = Sessions::new(Duration::from_secs(60));
        let first = sessions.open(Caller("a".into())).unwrap().0;
        for _ in 0..MAX_SESSIONS {
            sessions.open(Caller("b".into())).unwrap();
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(sessions.find(&first).is_none(), "the oldest was dropped");
        let (id, _) = sessions.open(Caller("c".into())).unwrap();
        sessions.close(&id);
        assert!(sessions.find(&id).is_none());
    }
}
