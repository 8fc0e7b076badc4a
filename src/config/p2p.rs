//! `[p2p]`: where the peer-to-peer transport listens.
//!
//! Reads the address only; the transport and its peers are `crate::p2p`'s.

use super::section::{OptionSpec, Section};
use libp2p::Multiaddr;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

/// The peer-to-peer transport. Restart to change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// libp2p listen address; unset = this host's `address` and `p2p_port` from the topology.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "as_display_opt",
        deserialize_with = "from_str_opt"
    )]
    pub listen: Option<Multiaddr>,
}

impl Section for P2pConfig {
    const OPTIONS: &'static [OptionSpec] = options!("p2p", P2pConfig { listen: Restart });
    // A multiaddress that parses is a valid one.
    type Error = Infallible;

    fn check(&self) -> Vec<Infallible> {
        Vec::new()
    }
}

fn as_display_opt<T: fmt::Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

fn from_str_opt<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: FromStr,
    T::Err: fmt::Display,
    D: Deserializer<'de>,
{
    let s = String::deserialize(d)?;
    s.parse()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}")))
}
