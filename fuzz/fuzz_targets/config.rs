#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fieldgate_fuzz::harness::config::run(data);
});
