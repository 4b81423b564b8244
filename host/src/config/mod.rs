//! Configuration: parsed once into typed structs, validated at load, read through
//! [`env::Env`] so tests never touch the process environment.

pub mod env;
pub mod error;
pub mod hosts;
pub mod provider;
pub mod settings;
pub mod yaml;

pub use error::ConfigError;
