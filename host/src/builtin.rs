//! The built-in auth modules, compiled to components by `build.rs` and embedded here.
//! They are loaded through exactly the same path as a plugin file (D20).

include!(concat!(env!("OUT_DIR"), "/builtin_modules.rs"));
