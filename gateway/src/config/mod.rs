//! Configuration: the YAML schema, loading with located errors
//! (`FILE:LINE:COLUMN: KEY.PATH: message`), validation, and resolution into
//! the effective settings the running gateway uses.

pub mod resolved;
pub mod types;

use std::fmt;
use std::path::Path;

pub use resolved::Resolved;

/// One config problem, located in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The path as given by the user.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Key path such as `devices[3].properties[1].type` (may be empty for the root).
    pub key_path: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.key_path, self.message
        )
    }
}

/// Every problem found in a config file (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads, parses, validates and resolves the config file at `path`.
pub fn load(path: &Path) -> Result<Resolved, ConfigErrors> {
    let _ = path;
    todo!("config loader (config helper)")
}
