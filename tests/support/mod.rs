//! Shared helpers of the integration tests.
#![allow(dead_code)]
pub mod cluster;
pub mod host;
pub mod inprocess;
pub mod prometheus;
pub mod time;
