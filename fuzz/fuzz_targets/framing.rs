#![no_main]
// The properties checked live in `outpost::fuzzing::framing`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::framing(data));
