//! Console sessions: a signed, expiring cookie after the admin token was shown once, and a
//! CSRF token bound to that cookie for every form.
//!
//! Sessions are stateless: the cookie carries its own expiry and a random id, signed with a
//! key derived from `ADMIN_TOKEN`. Every enqueuer replica derives the same key, so a session
//! works on all of them, and changing the admin token ends every session at once. Logging out
//! removes the cookie from the browser; a copy taken before stays valid until it expires.

use std::time::Duration;

use axum::extract::{FromRef, FromRequest, FromRequestParts, OptionalFromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use axum_extra::extract::cookie::{Cookie, Key, SameSite, SignedCookieJar};
use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::error::ConsoleError;
use crate::config::Secret;
use crate::http::state::AppState;

/// The cookie's name; it is sent only to `/admin`.
pub const COOKIE: &str = "poda_console";
const COOKIE_PATH: &str = "/admin";
/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// The keys of the console, derived from the admin token.
#[derive(Clone)]
pub struct ConsoleKeys {
    cookie: Key,
    csrf: [u8; 32],
    /// False when no admin token is set: then nobody logs in.
    enabled: bool,
}

impl ConsoleKeys {
    pub fn derive(admin_token: &Secret) -> Self {
        let token = admin_token.expose().as_bytes();
        let cookie = Sha512::new()
            .chain_update(b"poda console cookie\0")
            .chain_update(token)
            .finalize();
        let csrf = Sha256::new()
            .chain_update(b"poda console csrf\0")
            .chain_update(token)
            .finalize();
        ConsoleKeys {
            cookie: Key::from(&cookie),
            csrf: csrf.into(),
            enabled: !token.is_empty(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn csrf_token(&self, cookie_value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.csrf).expect("any key length");
        mac.update(cookie_value.as_bytes());
        hex(&mac.finalize().into_bytes())
    }
}

impl FromRef<AppState> for Key {
    fn from_ref(state: &AppState) -> Key {
        state.console.cookie.clone()
    }
}

/// A logged-in console user. Extracting it from a request without a valid session answers
/// 303 to the login page.
#[derive(Debug, Clone)]
pub struct Session {
    csrf: String,
}

impl Session {
    /// The token every form of this session carries.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Refuses a state-changing request whose form does not carry this session's token.
    fn check_csrf(&self, presented: &str) -> Result<(), ConsoleError> {
        if bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes())) {
            Ok(())
        } else {
            tracing::warn!("console form refused: missing or wrong CSRF token");
            Err(ConsoleError::Forbidden)
        }
    }
}

/// A state-changing request from a console form: it has a session, and its form carries that
/// session's CSRF token. Without a session it answers 303 to the login page; without the
/// token (a missing or unreadable form included) 403.
#[derive(Debug)]
pub struct CsrfChecked;

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

impl FromRequest<AppState> for CsrfChecked {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let session =
            <Session as FromRequestParts<AppState>>::from_request_parts(&mut parts, state)
                .await
                .map_err(IntoResponse::into_response)?;
        let request = Request::from_parts(parts, body);
        let presented = Form::<CsrfForm>::from_request(request, state)
            .await
            .map(|Form(form)| form.csrf)
            .unwrap_or_default();
        session
            .check_csrf(&presented)
            .map_err(IntoResponse::into_response)?;
        Ok(CsrfChecked)
    }
}

/// The answer to a request without a session: log in first.
pub struct LoginRequired;

impl IntoResponse for LoginRequired {
    fn into_response(self) -> Response {
        Redirect::to("/admin/login").into_response()
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = LoginRequired;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let jar = SignedCookieJar::<Key>::from_headers(&parts.headers, Key::from_ref(state));
        let value = jar.get(COOKIE).ok_or(LoginRequired)?.value().to_owned();
        if !state.console.enabled || !unexpired(&value) {
            return Err(LoginRequired);
        }
        Ok(Session {
            csrf: state.console.csrf_token(&value),
        })
    }
}

impl OptionalFromRequestParts<AppState> for Session {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(
            <Session as FromRequestParts<AppState>>::from_request_parts(parts, state)
                .await
                .ok(),
        )
    }
}

/// A cookie value is `v1.<expiry, unix seconds>.<random id>`; the signature around it is the
/// jar's.
fn unexpired(value: &str) -> bool {
    let mut parts = value.split('.');
    match (
        parts.next(),
        parts.next().and_then(|s| s.parse::<i64>().ok()),
    ) {
        (Some("v1"), Some(expires)) => Utc::now().timestamp() < expires,
        _ => false,
    }
}

/// Whether `presented` is the admin token (constant time; an unset token matches nothing).
pub fn is_admin_token(state: &AppState, presented: &str) -> bool {
    let expected = state.admin_token.expose().as_bytes();
    !expected.is_empty() && bool::from(presented.trim().as_bytes().ct_eq(expected))
}

/// The jar with a new session's cookie in it.
pub fn start(state: &AppState, headers: &HeaderMap) -> SignedCookieJar {
    let expires = Utc::now().timestamp() + SESSION_TTL.as_secs() as i64;
    let value = format!("v1.{expires}.{}", uuid::Uuid::new_v4().simple());
    let cookie = Cookie::build((COOKIE, value))
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(behind_https(headers))
        .max_age(time_duration(SESSION_TTL))
        .build();
    SignedCookieJar::from_headers(headers, Key::from_ref(state)).add(cookie)
}

/// The jar with the session's cookie removed.
pub fn end(state: &AppState, headers: &HeaderMap) -> SignedCookieJar {
    SignedCookieJar::from_headers(headers, Key::from_ref(state))
        .remove(Cookie::build(COOKIE).path(COOKIE_PATH))
}

/// A proxy that terminates TLS says so; the cookie is then sent over HTTPS only.
fn behind_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

fn time_duration(d: Duration) -> time::Duration {
    time::Duration::seconds(d.as_secs() as i64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_read_from_the_value() {
        let later = Utc::now().timestamp() + 60;
        let earlier = Utc::now().timestamp() - 1;
        assert!(unexpired(&format!("v1.{later}.abc")));
        assert!(!unexpired(&format!("v1.{earlier}.abc")));
        assert!(!unexpired("v2.99999999999.abc"));
        assert!(!unexpired("garbage"));
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_session_and_the_admin_token() {
        let keys = ConsoleKeys::derive(&Secret::new("one"));
        let other = ConsoleKeys::derive(&Secret::new("two"));
        assert_eq!(keys.csrf_token("v1.1.a"), keys.csrf_token("v1.1.a"));
        assert_ne!(keys.csrf_token("v1.1.a"), keys.csrf_token("v1.1.b"));
        assert_ne!(keys.csrf_token("v1.1.a"), other.csrf_token("v1.1.a"));
        assert!(!ConsoleKeys::derive(&Secret::default()).enabled());
    }
}
