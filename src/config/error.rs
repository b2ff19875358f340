//! Configuration errors: each names the file, the key and where the key was set (a line of the
//! file or an environment variable), and never carries a secret's value.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// Dotted key path, e.g. `camera[0].fragment.duration_ms`; empty for whole-file problems.
    pub path: String,
    /// 1-based line of the key in the file; `None` when the key was set by an environment
    /// variable, is absent from the file, or the file could not be read.
    pub line: Option<usize>,
    /// The environment variable that set the key, when one did.
    pub env_var: Option<String>,
    /// The offending value as TOML (shortened when long); `None` for secrets and whole-table
    /// problems.
    pub value: Option<String>,
    /// What is wrong and, where it helps, what is allowed.
    pub message: String,
}

impl ConfigError {
    /// An error about the file as a whole (unreadable, not TOML).
    pub(crate) fn file(file: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            path: String::new(),
            line,
            env_var: None,
            value: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    /// `FILE:LINE: PATH = VALUE: MESSAGE`, with `environment variable VAR` in place of the line
    /// when the key came from the environment.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(var) = &self.env_var {
            write!(f, ": environment variable {var}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
            if let Some(value) = &self.value {
                write!(f, " = {value}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a configuration (never empty). `Display` prints one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    /// Wraps a list of errors, sorted by line (errors without a line last, in the order found).
    /// `None` when the list is empty: no errors is not an error.
    pub(crate) fn from_vec(mut errors: Vec<ConfigError>) -> Option<Self> {
        if errors.is_empty() {
            return None;
        }
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        Some(Self(errors))
    }

    /// A single error.
    pub(crate) fn one(error: ConfigError) -> Self {
        Self(vec![error])
    }

    /// The errors.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// Number of errors (at least 1).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false`: kept for the `len`/`is_empty` pair.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The errors, owned.
    pub fn into_vec(self) -> Vec<ConfigError> {
        self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}
