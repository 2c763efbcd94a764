//! What a command could not do, worded for the person at the console: one line that
//! starts with `error:` and says what to do, ready to print (the REPL prints it under the
//! line typed, herdctl on stderr with a non-zero exit).

use std::fmt;

/// A command's failure, as the person at the console reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(String);

/// The words shown.
impl std::ops::Deref for Failure {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

/// Words already put for the person (`error: ...`).
impl From<String> for Failure {
    fn from(text: String) -> Self {
        Failure(text)
    }
}

impl From<&str> for Failure {
    fn from(text: &str) -> Self {
        Failure(text.to_string())
    }
}

/// A domain error: its message, as an error line.
impl From<herd::error::Error> for Failure {
    fn from(err: herd::error::Error) -> Self {
        Failure(format!("error: {err}"))
    }
}
