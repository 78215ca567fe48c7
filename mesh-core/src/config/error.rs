//! Configuration errors: every one names where the setting came from (variable, or
//! file and key), the value, and what was expected.

use std::fmt;
use std::path::PathBuf;

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An environment variable (or an entry of a [`Source`](super::Source)).
    Variable(String),
    /// A key in `MESH_CONFIG_FILE`.
    File {
        /// The file.
        path: PathBuf,
        /// Dotted key, e.g. `services.api.timeout`.
        key: String,
    },
    /// Code: a builder call.
    Code(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Variable(name) => f.write_str(name),
            Origin::File { path, key } => write!(f, "{}: key `{key}`", path.display()),
            Origin::Code(what) => write!(f, "configured in code: {what}"),
        }
    }
}

/// What is wrong with one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The value does not parse.
    Invalid {
        /// The value given.
        value: String,
        /// What a valid value looks like.
        expected: String,
    },
    /// No such setting (a misspelling must never be silently ignored).
    Unknown {
        /// The value given.
        value: String,
        /// What the user may have meant.
        hint: String,
    },
    /// A setting reserved for a feature this version does not have yet.
    NotSupportedYet,
    /// The rest is said in the message.
    Other(String),
}

/// One problem found while reading the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    origin: Origin,
    kind: ProblemKind,
}

impl Problem {
    pub(crate) fn new(origin: Origin, kind: ProblemKind) -> Self {
        Problem { origin, kind }
    }

    pub(crate) fn invalid(origin: Origin, value: &str, expected: impl Into<String>) -> Self {
        Problem::new(
            origin,
            ProblemKind::Invalid {
                value: value.to_string(),
                expected: expected.into(),
            },
        )
    }

    pub(crate) fn other(origin: Origin, message: impl Into<String>) -> Self {
        Problem::new(origin, ProblemKind::Other(message.into()))
    }

    /// Where the bad setting came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// What is wrong.
    pub fn kind(&self) -> &ProblemKind {
        &self.kind
    }

    /// The variable's name, when the setting came from one.
    pub fn variable(&self) -> Option<&str> {
        match &self.origin {
            Origin::Variable(name) => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ProblemKind::Invalid { value, expected } => {
                write!(f, "{}={value:?}: expected {expected}", self.origin)
            }
            ProblemKind::Unknown { value, hint } => {
                write!(f, "{}={value:?}: unknown setting; {hint}", self.origin)
            }
            ProblemKind::NotSupportedYet => write!(
                f,
                "{}: this setting is reserved for a feature this version does not have yet",
                self.origin
            ),
            ProblemKind::Other(message) => write!(f, "{}: {message}", self.origin),
        }
    }
}

/// The configuration could not be read; lists every problem found, not just the
/// first, so one start-up shows everything to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<Problem>,
}

impl ConfigError {
    pub(crate) fn new(problems: Vec<Problem>) -> Self {
        debug_assert!(!problems.is_empty());
        ConfigError { problems }
    }

    /// Every problem found.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// True when `variable` is named by one of the problems.
    pub fn names_variable(&self, variable: &str) -> bool {
        self.problems.iter().any(|p| p.variable() == Some(variable))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "invalid mesh configuration: {one}"),
            many => {
                write!(f, "invalid mesh configuration ({} problems):", many.len())?;
                for p in many {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}
