//! Secrets that must never leak.
//!
//! The access token is the one thing agent-bootstrap must not leak: not in argv, logs, error messages,
//! `Debug` output or files. It lives in [`Secret`], whose `Debug` and `Display` print `***`, and the only
//! way to read it is the deliberately loud [`Secret::expose`]. Output of child processes is passed through
//! [`Masker`] before it reaches a log line.

use std::fmt;

/// The text shown wherever a secret would have been.
pub const REDACTED: &str = "***";

/// A secret string (an access token). Redacted in `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Every call site is a place where the token leaves our hands: the
    /// `Authorization` header, the child's `VSTS_AGENT_INPUT_TOKEN`, or `token`'s stdout.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Replaces every occurrence of known secrets in text (child output, server bodies) with `***`.
///
/// Clones share one list: a token fetched later (a refresh) is masked by every copy.
#[derive(Clone, Default)]
pub struct Masker {
    secrets: std::sync::Arc<std::sync::RwLock<Vec<String>>>,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.secrets.read().map_or(0, |s| s.len());
        write!(f, "Masker({n} secrets)")
    }
}

impl Masker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(secret: &Secret) -> Self {
        let masker = Self::new();
        masker.add(secret);
        masker
    }

    pub fn add(&self, secret: &Secret) {
        // Very short values would mask ordinary words; tokens are long.
        if secret.expose().len() >= 8
            && let Ok(mut list) = self.secrets.write()
            && !list.iter().any(|s| s == secret.expose())
        {
            list.push(secret.expose().to_owned());
        }
    }

    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_owned();
        let Ok(list) = self.secrets.read() else {
            return String::from(REDACTED);
        };
        for secret in list.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let secret = Secret::new("eyJhbGciOi.super-secret-token");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert!(!format!("{:?}", Some(&secret)).contains("super-secret"));
        assert_eq!(secret.expose(), "eyJhbGciOi.super-secret-token");
    }

    #[test]
    fn masker_replaces_every_occurrence() {
        let secret = Secret::new("abcdefgh12345");
        let masker = Masker::with(&secret);
        assert_eq!(
            masker.mask("x abcdefgh12345 y abcdefgh12345"),
            "x *** y ***"
        );
        assert_eq!(masker.mask("nothing here"), "nothing here");
    }

    #[test]
    fn clones_share_secrets_added_later() {
        let masker = Masker::new();
        let copy = masker.clone();
        masker.add(&Secret::new("refreshed-token-2"));
        assert_eq!(copy.mask("x refreshed-token-2"), "x ***");
    }

    #[test]
    fn masker_ignores_tiny_values() {
        let masker = Masker::with(&Secret::new("a"));
        assert_eq!(masker.mask("a cat"), "a cat");
    }
}
