//! The fuzz targets' shared entry points: the harness lives with the
//! regression tests in `gateway/tests/fuzz_harness/`, so that inputs found
//! here replay in the normal test suite through the same code.

#[path = "../../gateway/tests/fuzz_harness/mod.rs"]
pub mod harness;
