#![no_main]
// The properties checked live in `outpost::fuzzing::provider`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::provider(data));
