//! `config`: bytes → the config loader and validator exactly as
//! `fieldgate check` runs it (`fieldgate::config::load_str`, then the
//! report). It must never panic and must return either a resolved config
//! whose topics are safe or located errors, one line each.

use std::path::Path;
use std::sync::OnceLock;

use fieldgate::config::{self, ConfigErrors, Resolved};

use super::topics;

/// The file name errors are reported against.
pub const LABEL: &str = "fuzz/config.yaml";

/// An empty directory that relative paths (`passwordFile`, TLS files)
/// resolve against.
fn base_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("fieldgate-fuzz-config")
            .tempdir()
            .expect("temporary directory")
    })
    .path()
}

/// The fuzz entry point: the bytes as config text (invalid UTF-8 replaced,
/// as `fieldgate check` would refuse it before parsing).
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = check_text(&text);
}

/// Loads `text` and checks the outcome; returns it for the caller.
pub fn check_text(text: &str) -> Result<Resolved, ConfigErrors> {
    let outcome = config::load_str(text, LABEL, base_dir());
    match &outcome {
        Ok(resolved) => {
            // What `fieldgate check` prints.
            let report = config::report::render(resolved);
            assert!(!report.is_empty(), "empty report");
            topics::check_resolved(resolved);
        }
        Err(errors) => check_errors(text, errors),
    }
    outcome
}

/// Lines as YAML counts them (CR, LF and CR LF end a line).
fn yaml_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(['\r', '\n']) {
        lines.push(&rest[..i]);
        let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[i + skip..];
    }
    lines.push(rest);
    lines
}

/// Every error is located inside the text, names the file, and prints as
/// one `FILE:LINE:COLUMN: KEY.PATH: message` line.
fn check_errors(text: &str, errors: &ConfigErrors) {
    assert!(!errors.0.is_empty(), "an error result without errors");
    let lines = yaml_lines(text);
    for e in &errors.0 {
        assert_eq!(e.file, LABEL, "{e:?}");
        assert!(e.line >= 1 && e.column >= 1, "not 1-based: {e:?}");
        assert!(
            e.line <= lines.len(),
            "line {} beyond the text's {} lines: {e:?}",
            e.line,
            lines.len()
        );
        let width = lines[e.line - 1].chars().count();
        assert!(
            e.column <= width + 1,
            "column {} beyond line {} ({width} characters): {e:?}",
            e.column,
            e.line
        );
        assert!(!e.message.trim().is_empty(), "empty message: {e:?}");
        let printed = e.to_string();
        assert!(
            !printed.contains(['\n', '\r']),
            "an error does not print as one line: {printed:?}"
        );
        let prefix = format!("{LABEL}:{}:{}: ", e.line, e.column);
        assert!(printed.starts_with(&prefix), "{printed:?}");
    }
}
