//! # Outpost
//!
//! A capability-based credential proxy for AI agents. Agents call
//! `http://outpost:8080/<upstream path>` with `X-Provider: <name>`; Outpost decides who
//! is calling and what they may do, has the provider's auth module — a WebAssembly
//! component — sign the request, and forwards it. The agent never holds a secret.
//!
//! Module map, in the order a request meets it:
//! - [`server`] — the HTTP front: accepts connections; [`worker`] — the serving threads
//!   they are handed to; [`management`] — health, readiness, docs, metrics;
//! - [`pipeline`] — the request's phases, one module each; [`idle`] — idle timeouts on
//!   streamed bodies, both ways;
//! - [`runtime`] — the WebAssembly runtime that runs auth modules;
//! - [`policy`] — path canonicalisation, globs and routes (pure, fuzzed);
//! - [`providers`] — loading providers and their modules;
//! - [`config`] — settings, provider YAML, hosts.yaml;
//! - [`state`] — key-value state (embedded; Redis to scale out);
//! - [`plugin`] — `outpost plugin new|inspect`, tools for plugin authors (not on the request path);
//! - [`error`] — every wire error, mapped in one place.

pub mod builtin;
pub mod client;
pub mod config;
pub mod error;
pub mod framing;
// Fuzz-target bodies for `fuzz/` and their corpus-replay tests; not part of the API.
#[doc(hidden)]
pub mod fuzzing;
pub mod idle;
pub mod management;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod policy;
pub mod providers;
pub mod runtime;
pub mod server;
pub mod state;
pub mod worker;
