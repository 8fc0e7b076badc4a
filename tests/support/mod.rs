//! Shared helpers of the integration tests, one file per job; every test binary joins them with
//! `mod support;` (the benches include single files with `#[path]`). Helpers build and watch
//! what a test needs; they assert nothing about scored themselves.

// Every test binary compiles all of them and uses a part.
#![allow(dead_code)]

pub mod cluster;
pub mod direct;
pub mod four_hosts;
pub mod host;
pub mod inprocess;
pub mod loopback;
pub mod netns;
pub mod openmetrics;
pub mod prometheus;
pub mod raw_peer;
pub mod rogue;
pub mod time;
pub mod two_hosts;
