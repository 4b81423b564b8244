#![no_main]
// The properties checked live in `outpost::fuzzing::path`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::path(data));
