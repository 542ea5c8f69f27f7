use crate::bindings::flint::job::types::{ErrorChain, ErrorKind};
use std::fmt;

/// A job's error: a message and the chain of causes under it.
///
/// Any `std::error::Error` converts into it with `?`, keeping its `source()` chain, so the
/// user sees the root cause on their terminal. An error the host returned (a failed
/// action) keeps what kind of failure it was through `?` and [`Error::context`], so the
/// submitter learns why the job ended (a limit, a failed task...), not just that it did.
///
/// ```
/// fn parse(s: &str) -> flint::Result<u64> {
///     Ok(s.parse::<u64>()?)
/// }
/// assert!(parse("x").unwrap_err().to_string().contains("invalid digit"));
/// ```
pub struct Error {
    message: String,
    causes: Vec<String>,
    /// Set on errors that came from the host.
    kind: Option<ErrorKind>,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with just a message.
    ///
    /// ```
    /// let e = flint::Error::msg("no input given");
    /// assert_eq!(e.to_string(), "no input given");
    /// ```
    pub fn msg(message: impl fmt::Display) -> Self {
        Error {
            message: message.to_string(),
            causes: Vec::new(),
            kind: None,
        }
    }

    /// Wraps this error in an outer message, keeping it as the cause.
    ///
    /// ```
    /// let e = flint::Error::msg("file missing").context("loading centroids");
    /// assert_eq!(format!("{e:#}"), "loading centroids: file missing");
    /// ```
    pub fn context(self, message: impl fmt::Display) -> Self {
        let mut causes = vec![self.message];
        causes.extend(self.causes);
        Error {
            message: message.to_string(),
            causes,
            kind: self.kind,
        }
    }

    /// An error of a limit the task hit, named by its setting (`task.memory`): the host
    /// reports it as that limit, which another attempt would hit again.
    pub(crate) fn limit(setting: &str, message: impl fmt::Display) -> Self {
        Error {
            message: message.to_string(),
            causes: Vec::new(),
            kind: Some(ErrorKind::Limit(setting.to_string())),
        }
    }

    /// An error of the task's input, which the row type cannot read: the host reports
    /// it as bad input, which another attempt would read again.
    pub(crate) fn bad_input(self) -> Self {
        Error {
            kind: Some(ErrorKind::BadInput),
            ..self
        }
    }

    pub(crate) fn into_chain(self) -> ErrorChain {
        ErrorChain {
            message: self.message,
            causes: self.causes,
            kind: self.kind,
        }
    }

    pub(crate) fn from_chain(c: ErrorChain) -> Self {
        Error {
            message: c.message,
            causes: c.causes,
            kind: c.kind,
        }
    }
}

impl fmt::Display for Error {
    /// `{}` shows the message; `{:#}` the whole chain.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if f.alternate() {
            for c in &self.causes {
                write!(f, ": {c}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:#}")
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(e: E) -> Self {
        let mut causes = Vec::new();
        let mut src = e.source();
        while let Some(s) = src {
            causes.push(s.to_string());
            src = s.source();
        }
        Error {
            message: e.to_string(),
            causes,
            kind: None,
        }
    }
}
