//! The bearer secrets of `serve`, taken from the environment and kept only as digests:
//! `CRON_SECRET`, which may start runs, and `READ_SECRET`, which may only read.

use std::fmt;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Fewest characters a secret may have.
pub const MIN_SECRET_LEN: usize = 16;

/// A bearer secret. Only its SHA-256 digest is kept, and it is never printed:
/// `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Secret {
    name: &'static str,
    digest: [u8; 32],
}

/// The secret that may start runs (`CRON_SECRET`).
pub type CronSecret = Secret;

impl Secret {
    /// Accepts `secret` if it has at least [`MIN_SECRET_LEN`] characters and no
    /// whitespace at either end (a secret read from a file with its newline could
    /// never be sent back in a header, so every request would be refused).
    ///
    /// # Errors
    ///
    /// A message saying what is wrong, without the secret.
    pub fn new(secret: &str) -> Result<Self, String> {
        Self::named("CRON_SECRET", secret)
    }

    /// The read-only secret (`READ_SECRET`), checked as [`Secret::new`] checks.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong, without the secret.
    pub fn read(secret: &str) -> Result<Self, String> {
        Self::named("READ_SECRET", secret)
    }

    fn named(name: &'static str, secret: &str) -> Result<Self, String> {
        if secret.trim() != secret {
            return Err(format!(
                "{name} starts or ends with whitespace (a newline from a secret file?); \
                 no request could present it: remove it"
            ));
        }
        // A header value is visible ASCII: a secret with anything else in it could
        // never be presented, and every request would be refused.
        if let Some(bad) = secret.chars().find(|c| !c.is_ascii_graphic() && *c != ' ') {
            return Err(format!(
                "{name} holds {}, which no Authorization header can carry; \
                 use printable ASCII only (e.g. `openssl rand -hex 32`)",
                if bad.is_ascii() {
                    "a control character"
                } else {
                    "a non-ASCII character"
                }
            ));
        }
        if secret.chars().count() < MIN_SECRET_LEN {
            return Err(format!(
                "{name} must have at least {MIN_SECRET_LEN} characters (it has {})",
                secret.chars().count()
            ));
        }
        Ok(Self {
            name,
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// Whether this and `other` are the same secret.
    pub fn same_as(&self, other: &Secret) -> bool {
        self.digest.ct_eq(&other.digest).into()
    }

    /// Whether `presented` is the secret. Both sides are hashed first, so the
    /// comparison takes the same time whatever the presented token's length or
    /// content.
    pub fn verify(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digest.ct_eq(&presented).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, ..)", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secrets_are_refused_without_echoing_them() {
        let error = CronSecret::new("tooshort").unwrap_err();
        assert!(!error.contains("tooshort"));
        for padded in [
            "0123456789abcdef\n",
            " 0123456789abcdef",
            "0123456789abcdef\t",
        ] {
            let error = CronSecret::new(padded).unwrap_err();
            assert!(
                error.contains("whitespace") && !error.contains("0123"),
                "{error}"
            );
        }
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
        assert_eq!(format!("{secret:?}"), "Secret(CRON_SECRET, ..)");
    }
}
