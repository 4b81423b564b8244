#![no_main]
// The properties checked live in `outpost::fuzzing::glob`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::glob(data));
