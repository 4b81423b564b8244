//! Integration tests: the real `outpost` binary over sockets, against mock upstreams.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

mod check;
mod foundation;
mod hardening;
mod languages;
mod modules;
mod pipeline;
mod plugins;
mod state;
