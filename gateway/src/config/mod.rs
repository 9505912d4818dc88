//! Configuration: the YAML schema, loading with located errors
//! (`FILE:LINE:COLUMN: KEY.PATH: message`), validation, and resolution into
//! the effective settings the running gateway uses.

mod client;
mod ctx;
mod devices;
mod drivers;
mod gateway;
pub mod include;
pub mod load;
mod message;
mod names;
pub mod profile;
mod properties;
pub mod report;
pub mod resolved;
pub mod reuse;
pub mod schema;
pub mod secrets;
pub mod sources;
mod tls;
pub mod tree;
pub mod types;

use std::fmt;
use std::path::Path;

pub use resolved::Resolved;
pub use reuse::Reuse;

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

/// Largest password file read (only its first line is used).
pub const MAX_PASSWORD_FILE_BYTES: u64 = 64 * 1024;
/// Largest PEM file (CA bundle, certificate, key) read.
pub const MAX_PEM_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads the file at `path`, refusing more than `limit` bytes without
/// reading further: a config that names `/dev/zero`, a FIFO or a huge file
/// gets an error instead of filling the memory.
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut data = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut data)?;
    if data.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "larger than {} bytes",
            limit
        )));
    }
    Ok(data)
}

/// Resolves a configured path against the config file's directory.
pub(crate) fn config_path(base: &Path, f: &str) -> std::path::PathBuf {
    let p = Path::new(f);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    std::path::absolute(&full).unwrap_or(full)
}

/// A password file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read password file `{}`: {source}", .path.display())]
pub struct PasswordFileError {
    /// The file, resolved against the config file's directory.
    pub path: std::path::PathBuf,
    /// Why it cannot be read (missing, too large, not UTF-8, …).
    #[source]
    pub source: std::io::Error,
}

/// The first line of a password file, without its line ending.
pub fn read_password_file(base: &Path, f: &str) -> Result<String, PasswordFileError> {
    let p = Path::new(f);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let read = read_limited(&full, MAX_PASSWORD_FILE_BYTES)
        .and_then(|b| String::from_utf8(b).map_err(std::io::Error::other));
    match read {
        Ok(s) => Ok(s
            .split('\n')
            .next()
            .unwrap_or("")
            .trim_end_matches('\r')
            .to_string()),
        Err(source) => Err(PasswordFileError { path: full, source }),
    }
}

/// Reads, parses, validates and resolves the config file at `path`.
pub fn load(path: &Path) -> Result<Resolved, ConfigErrors> {
    load_reusing(path, Reuse::default())
}

/// [`load`], taking over the devices of the included files `reuse` names
/// instead of reading those files (see [`reuse`]).
pub fn load_reusing(path: &Path, reuse: Reuse) -> Result<Resolved, ConfigErrors> {
    let label = path.display().to_string();
    let stamp = sources::Stamp::read(path);
    let text = match read_limited(path, tree::MAX_CONFIG_BYTES as u64) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => {
                return Err(ConfigErrors(vec![ConfigError {
                    file: label,
                    line: 1,
                    column: 1,
                    key_path: String::new(),
                    message: "cannot read the config: it is not UTF-8 text".into(),
                }]))
            }
        },
        Err(e) => {
            return Err(ConfigErrors(vec![ConfigError {
                file: label,
                line: 1,
                column: 1,
                key_path: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }]))
        }
    };
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let mut resolved = load::load_string(text, &label, base, reuse)?;
    if let Some(s) = stamp {
        resolved.sources.stamps.insert(0, (path.to_path_buf(), s));
    }
    Ok(resolved)
}

/// Parses, validates and resolves config `text`; errors name `file_label`;
/// relative `passwordFile`s are resolved against `base_dir`.
pub fn load_str(text: &str, file_label: &str, base_dir: &Path) -> Result<Resolved, ConfigErrors> {
    load::load_str(text, file_label, base_dir)
}

#[cfg(test)]
mod tests;
