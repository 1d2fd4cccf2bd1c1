//! The harness's error type: a message meant for a human reading a failed test.

use std::fmt;

/// An error from the harness: what failed, with enough context (log tails, statuses) to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

/// `Result` with the harness's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with this message.
    pub fn msg(m: impl Into<String>) -> Self {
        Error(m.into())
    }

    /// The same error with `context` in front of it.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error(format!("{context}: {}", self.0))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(format!("JSON: {e}"))
    }
}

impl From<String> for Error {
    fn from(e: String) -> Self {
        Error(e)
    }
}

impl From<&str> for Error {
    fn from(e: &str) -> Self {
        Error(e.to_string())
    }
}

/// The test-helper way to fail: a panic with the whole message.
#[track_caller]
pub(crate) fn fail(e: Error) -> ! {
    #[allow(clippy::panic)]
    {
        panic!("{e}")
    }
}
