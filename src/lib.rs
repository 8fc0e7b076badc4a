//! scored: the S-CORE daemon. Every hypervisor runs one; together they move VMs closer to the
//! VMs they talk to, passing a single token, with no central controller.
//!
//! Data flows one way: capture → flows → decide → migrate → announce. See docs/architecture.md.

pub mod config;
pub mod cost;
pub mod daemon;
pub mod decide;
pub mod diagnostics;
pub mod flows;
pub mod forecast;
pub mod hypervisor;
pub mod identity;
pub mod lab;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod p2p;
pub mod rules;
pub mod sim;
#[cfg(feature = "testbed")]
pub mod testbed;
pub mod token;
pub mod topology;

pub use scored_proto as proto;
