//! # Outpost
//!
//! A capability-based credential proxy for AI agents. Agents call
//! `http://outpost:8080/<upstream path>` with `X-Provider: <name>`; Outpost decides who
//! is calling and what they may do, has the provider's auth module — a WebAssembly
//! component — sign the request, and forwards it. The agent never holds a secret.
//!
//! Module map, in the order a request meets it:
//! - [`server`] — the HTTP front and management endpoints;
//! - [`pipeline`] — the request's phases, one module each;
//! - [`runtime`] — the WebAssembly runtime that runs auth modules;
//! - [`providers`] — loading providers and their modules;
//! - [`config`] — settings, provider YAML, hosts.yaml;
//! - [`state`] — key-value state (embedded; Redis to scale out);
//! - [`error`] — every wire error, mapped in one place.

pub mod builtin;
pub mod client;
pub mod config;
pub mod error;
pub mod pipeline;
pub mod providers;
pub mod runtime;
pub mod server;
pub mod state;
