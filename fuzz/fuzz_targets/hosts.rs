#![no_main]
// The properties checked live in `outpost::fuzzing::hosts`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::hosts(data));
