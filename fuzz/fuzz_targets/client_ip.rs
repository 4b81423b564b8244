#![no_main]
// The properties checked live in `outpost::fuzzing::client_ip`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| outpost::fuzzing::client_ip(data));
