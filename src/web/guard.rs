//! What every HTTP request passes before it is served.
//!
//! Any web page the user opens can make the browser send requests to 127.0.0.1, so:
//! - the Host header must name this listener (`127.0.0.1`, `localhost` or `[::1]`,
//!   at its port): a page of another site that had its own name resolved to
//!   127.0.0.1 (DNS rebinding) sends its own name and is refused;
//! - an Origin header, which browsers send on cross-origin requests, on POSTs and on
//!   WebSocket upgrades, must be this listener's own;
//! - the data and every write need the broker's token as `Authorization: Bearer`,
//!   which no other site's page has and which a browser never sends on its own.
//!   A WebSocket proves itself in its `connect` instead, like any TCP client.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Web;
use super::error::ApiError;

/// The host names the listener answers to.
const LOCAL_NAMES: [&str; 3] = ["127.0.0.1", "localhost", "[::1]"];

/// Refuses requests whose Host or Origin is not this listener's.
pub(super) async fn local_only(State(web): State<Arc<Web>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok());
    let Some(host) = host else {
        return ApiError::new(StatusCode::BAD_REQUEST, "a Host header is required").into_response();
    };
    if !is_local_authority(host, web.port) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "the Host {host:?} is not this broker's: it answers to 127.0.0.1, localhost and [::1] at \
                 port {} only (a page of another site reaching 127.0.0.1 under its own name is refused)",
                web.port
            ),
        )
        .into_response();
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let own =
            origin.strip_prefix("http://").is_some_and(|authority| is_local_authority(authority, web.port));
        if !own {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!("requests from the page of {origin:?} are refused: only this broker's own page may call it"),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Refuses requests without the broker's token.
pub(super) async fn token(State(web): State<Arc<Web>>, request: Request, next: Next) -> Response {
    match bearer(request.headers()) {
        Some(offered) if web.token_matches(offered) => next.run(request).await,
        offered => {
            let message = if offered.is_some() {
                "wrong token: it is not this broker's (a token from an earlier start?)"
            } else {
                "this needs the broker's token as \"Authorization: Bearer <token>\" (message-broker serve \
                 prints the page's address with it; programs of the broker's user find it in the runtime file)"
            };
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"message-broker\""),
            );
            response
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `host` or `host:port` naming this listener: a local name, at `port` if one is given.
fn is_local_authority(authority: &str, port: u16) -> bool {
    let (name, given_port) = match authority.rsplit_once(':') {
        // `[::1]` alone has colons inside its brackets only.
        Some((name, given)) if !given.contains(']') => (name, Some(given)),
        _ => (authority, None),
    };
    let port_ok = given_port.is_none_or(|given| given.parse::<u16>() == Ok(port));
    port_ok && LOCAL_NAMES.iter().any(|local| name.eq_ignore_ascii_case(local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_names_at_this_port_are_served() {
        for good in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080", "[::1]:8080", "127.0.0.1", "[::1]"]
        {
            assert!(is_local_authority(good, 8080), "{good}");
        }
        for bad in [
            "evil.example:8080",
            "127.0.0.1:8081",
            "127.0.0.1.evil.example:8080",
            "localhost.:8080",
            "[::2]:8080",
            "127.0.0.2:8080",
            "",
            "127.0.0.1:",
        ] {
            assert!(!is_local_authority(bad, 8080), "{bad}");
        }
    }

    #[test]
    fn the_token_is_read_from_a_bearer_authorization() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
