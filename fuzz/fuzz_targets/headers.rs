#![no_main]
// The properties checked live in `outpost::fuzzing::headers`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::headers(data));
