//! The fuzz targets' shared entry points: the harness is the
//! `fieldgate-fuzz-harness` crate (`testkit/fuzz/`), which the regression
//! tests (`gateway/tests/e2e/fuzz_regressions.rs`) use too, so that inputs
//! found here replay in the normal test suite through the same code.

pub use fieldgate_fuzz_harness as harness;
