//! Shared helpers of the integration tests.
#![allow(dead_code)]
pub mod cluster;
pub mod inprocess;
