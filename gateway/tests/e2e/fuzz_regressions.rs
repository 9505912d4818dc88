//! Replays fuzz inputs through the fuzz targets' entry points (the same
//! code and checks cargo-fuzz runs, `testkit/fuzz/`): the inputs the
//! fuzzers found (`tests/fuzz_regressions/<target>/`) and the seed corpora
//! (`fuzz/seeds/<target>/`). Every input must pass without a panic.
//! See docs/fuzzing.md.

use fieldgate_fuzz_harness as fuzz_harness;

use std::path::{Path, PathBuf};

/// The files of `dir`, sorted (none when it does not exist).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs every input of `target` from the regression and seed directories;
/// returns how many ran.
fn replay(target: &str) -> usize {
    let run = fuzz_harness::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, run)| *run)
        .unwrap_or_else(|| panic!("no fuzz target {target}"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = [
        root.join("tests/fuzz_regressions").join(target),
        root.join("../fuzz/seeds").join(target),
    ];
    let mut ran = 0;
    for file in dirs.iter().flat_map(|d| inputs(d)) {
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let outcome = std::panic::catch_unwind(|| run(&data));
        if let Err(panic) = outcome {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{target}: {} fails: {msg}", file.display());
        }
        ran += 1;
    }
    ran
}

#[test]
fn config_inputs_pass() {
    assert!(replay("config") > 0);
}

#[test]
fn set_payload_inputs_pass() {
    assert!(replay("set_payload") > 0);
}

#[test]
fn modbus_decode_inputs_pass() {
    assert!(replay("modbus_decode") > 0);
}

#[test]
fn store_recovery_inputs_pass() {
    assert!(replay("store_recovery") > 0);
}

#[test]
fn topics_inputs_pass() {
    assert!(replay("topics") > 0);
}

/// Every example config in `configs/` loads through the `config` target's
/// checks (they are its seeds too).
#[test]
fn example_configs_pass_the_config_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut n = 0;
    for file in inputs(&root) {
        if file.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&file).expect("config text");
            if let Err(e) = fuzz_harness::config::check_text(&text) {
                panic!("{}: {e}", file.display());
            }
            n += 1;
        }
    }
    assert!(n > 0);
}
