//! [`Secret`]: a value that must never reach a log line.

use std::fmt;

/// A secret value (an access or refresh token, a PKCE verifier, a password hash).
///
/// `Debug` prints `[redacted]`, there is no `Display`, and the value is only reachable
/// through [`Secret::expose`] or [`Secret::into_inner`], so a secret inside a struct
/// that is logged with `{:?}` stays out of the log.
#[derive(Clone, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value itself. Use it where it is needed (an HTTP header, a form field) and
    /// nowhere else.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret<String> {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret<String> {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::from("eyJ0eXAi.secret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(s.expose(), "eyJ0eXAi.secret");
    }
}
