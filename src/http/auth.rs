//! The bearer secret and the check every protected request passes.

use std::fmt;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::AppState;
use super::error::ApiError;

/// Fewest characters a `CRON_SECRET` may have.
pub const MIN_SECRET_LEN: usize = 16;

/// The endpoint's bearer secret. Only its SHA-256 digest is kept, and it is never
/// printed: `Debug` shows nothing of it.
#[derive(Clone)]
pub struct CronSecret {
    digest: [u8; 32],
}

impl CronSecret {
    /// Accepts `secret` if it has at least [`MIN_SECRET_LEN`] characters.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong, without the secret.
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.chars().count() < MIN_SECRET_LEN {
            return Err(format!(
                "CRON_SECRET must have at least {MIN_SECRET_LEN} characters (it has {})",
                secret.chars().count()
            ));
        }
        Ok(Self {
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// Whether `presented` is the secret. Both sides are hashed first, so the
    /// comparison takes the same time whatever the presented token's length or
    /// content.
    pub fn verify(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digest.ct_eq(&presented).into()
    }
}

impl fmt::Debug for CronSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CronSecret(..)")
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Lets a request through only with the right bearer token; otherwise 401.
pub async fn require_bearer(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let authorized = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token)
        .is_some_and(|token| state.secret().verify(token));
    if authorized {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secrets_are_refused_without_echoing_them() {
        let error = CronSecret::new("tooshort").unwrap_err();
        assert!(!error.contains("tooshort"));
        assert!(CronSecret::new("0123456789abcdef").is_ok());
    }

    #[test]
    fn only_the_exact_secret_verifies() {
        let secret = CronSecret::new("0123456789abcdef").unwrap();
        assert!(secret.verify("0123456789abcdef"));
        for wrong in [
            "",
            "0123456789abcde",
            "0123456789abcdefg",
            "0123456789ABCDEF",
        ] {
            assert!(!secret.verify(wrong), "{wrong}");
        }
        assert_eq!(format!("{secret:?}"), "CronSecret(..)");
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
