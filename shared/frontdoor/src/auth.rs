//! API-key authentication, the same for REST and MCP.
//!
//! The key comes in `Authorization: Bearer <key>` or `X-Api-Key: <key>` and is checked with
//! [`PlatformRecords::authenticate`] (which compares hashes; keys are never stored). A
//! missing, unknown or revoked key is a 401 with a JSON body and `WWW-Authenticate: Bearer`.
//! Keys are never logged: nothing here formats a header value, and errors name no key.
//!
//! [`PlatformRecords::authenticate`]: tb_core::ports::PlatformRecords::authenticate

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tb_core::ports::PlatformRecords;

/// Who is calling, as established by authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub user: tb_core::domain::UserId,
    pub key_id: Option<String>,
}

/// Longer presented keys are refused without a lookup.
pub const MAX_KEY_LEN: usize = 512;

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    Invalid,
    /// The records could not be reached: 503, so clients retry instead of dropping the key.
    Unavailable,
}

impl AuthError {
    pub fn message(&self) -> &'static str {
        match self {
            AuthError::Missing => {
                "an API key is required: send `Authorization: Bearer <key>` or `X-Api-Key: <key>`"
            }
            AuthError::Malformed => {
                "the Authorization header must be `Bearer <key>` (or send `X-Api-Key: <key>`)"
            }
            AuthError::Invalid => "the API key is not valid (unknown or revoked)",
            AuthError::Unavailable => "authentication is temporarily unavailable; retry shortly",
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        if self == AuthError::Unavailable {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, HeaderValue::from_static("2"))],
                axum::Json(json!({"error": "unavailable", "message": self.message()})),
            )
                .into_response();
        }
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
            axum::Json(json!({"error": "unauthorized", "message": self.message()})),
        )
            .into_response()
    }
}

/// The key presented in `headers`, if any. `Authorization` wins over `X-Api-Key`.
pub fn presented_key(headers: &HeaderMap) -> Result<&str, AuthError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| AuthError::Malformed)?.trim();
        let (scheme, key) = value.split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        return non_empty(key.trim());
    }
    if let Some(value) = headers.get("x-api-key") {
        return non_empty(value.to_str().map_err(|_| AuthError::Malformed)?.trim());
    }
    Err(AuthError::Missing)
}

fn non_empty(key: &str) -> Result<&str, AuthError> {
    match key.len() {
        0 => Err(AuthError::Missing),
        n if n > MAX_KEY_LEN => Err(AuthError::Invalid),
        _ => Ok(key),
    }
}

/// Authenticates the request's key against the platform records.
pub async fn authenticate(
    records: &dyn PlatformRecords,
    headers: &HeaderMap,
) -> Result<Caller, AuthError> {
    let key = presented_key(headers)?;
    match records.authenticate(key).await {
        Ok(Some(k)) if k.revoked_at_ms.is_none() => Ok(Caller {
            user: k.user,
            key_id: Some(k.id),
        }),
        Ok(_) => {
            tracing::info!("request refused: invalid or revoked API key");
            Err(AuthError::Invalid)
        }
        Err(e) => {
            tracing::warn!("authentication unavailable: {e}");
            Err(AuthError::Unavailable)
        }
    }
}
