//! `[p2p]`: where the peer-to-peer transport listens, and how much of this host others may
//! hold through it (connections, streams, requests and bytes in flight).
//!
//! Reads and checks the values only; the transport and its peers are `crate::p2p`'s.

use super::section::{OptionSpec, Section, ZeroValue, at_least_one};
use crate::p2p::TransportLimits;
use libp2p::Multiaddr;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The peer-to-peer transport. Restart to change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// libp2p listen address; unset = this host's `address` and `p2p_port` from the topology.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "as_display_opt",
        deserialize_with = "from_str_opt"
    )]
    pub listen: Option<Multiaddr>,
    /// Incoming connections in their handshake from addresses the topology does not list.
    pub max_pending_incoming: u32,
    /// Incoming connections in their handshake from any one IP address.
    pub max_pending_incoming_per_ip: u32,
    pub max_pending_outgoing: u32,
    /// Established connections, all peers together.
    pub max_established: u32,
    pub max_established_per_peer: u32,
    pub handshake_timeout_ms: u64,
    pub max_streams_per_connection: u32,
    /// Requests from one peer being received or awaiting this host's answer.
    pub max_requests_per_peer: u32,
    /// MiB of request frames being received, all peers together.
    pub max_inflight_mib: u32,
    /// MiB of request frames being received from one peer.
    pub max_inflight_per_peer_mib: u32,
    /// Inventories the whole data centre republishes per second when nothing changes: each
    /// host republishes every max(30 s, hosts / this) (`p2p::zombies::republish_every`).
    pub inventory_republish_per_s: u32,
    /// Seconds a connection nothing uses stays open (a gossip mesh peer's is always in use).
    pub idle_connection_timeout_s: u32,
}

impl Default for P2pConfig {
    fn default() -> Self {
        let d = TransportLimits::default();
        P2pConfig {
            listen: None,
            max_pending_incoming: d.max_pending_incoming,
            max_pending_incoming_per_ip: d.max_pending_incoming_per_ip,
            max_pending_outgoing: d.max_pending_outgoing,
            max_established: d.max_established,
            max_established_per_peer: d.max_established_per_peer,
            handshake_timeout_ms: d.handshake_timeout.as_millis() as u64,
            max_streams_per_connection: d.max_streams_per_connection as u32,
            max_requests_per_peer: d.max_requests_per_peer as u32,
            max_inflight_mib: (d.max_inflight_bytes >> 20) as u32,
            max_inflight_per_peer_mib: (d.max_inflight_bytes_per_peer >> 20) as u32,
            inventory_republish_per_s: crate::p2p::zombies::INVENTORIES_PER_S,
            idle_connection_timeout_s: crate::p2p::IDLE_CONNECTION_TIMEOUT.as_secs() as u32,
        }
    }
}

impl P2pConfig {
    /// The transport's limits these values set.
    pub fn limits(&self) -> TransportLimits {
        TransportLimits {
            max_pending_incoming: self.max_pending_incoming,
            max_pending_incoming_per_ip: self.max_pending_incoming_per_ip,
            max_pending_outgoing: self.max_pending_outgoing,
            max_established: self.max_established,
            max_established_per_peer: self.max_established_per_peer,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            max_streams_per_connection: self.max_streams_per_connection as usize,
            max_requests_per_peer: self.max_requests_per_peer as usize,
            max_inflight_bytes: (self.max_inflight_mib as usize) << 20,
            max_inflight_bytes_per_peer: (self.max_inflight_per_peer_mib as usize) << 20,
        }
    }
}

/// A `[p2p]` value that cannot be right.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum P2pConfigError {
    #[error(transparent)]
    Zero(#[from] ZeroValue),
    #[error("max_inflight_per_peer_mib ({per_peer}) exceeds max_inflight_mib ({total})")]
    PeerOverTotal { per_peer: u32, total: u32 },
}

impl P2pConfigError {
    pub fn keys(&self) -> Vec<String> {
        match self {
            P2pConfigError::Zero(e) => vec![e.key.into()],
            P2pConfigError::PeerOverTotal { .. } => vec![
                "p2p.max_inflight_per_peer_mib".into(),
                "p2p.max_inflight_mib".into(),
            ],
        }
    }
}

impl Section for P2pConfig {
    const OPTIONS: &'static [OptionSpec] = options!(
        "p2p",
        P2pConfig {
            listen: Restart,
            max_pending_incoming: Restart,
            max_pending_incoming_per_ip: Restart,
            max_pending_outgoing: Restart,
            max_established: Restart,
            max_established_per_peer: Restart,
            handshake_timeout_ms: Restart,
            max_streams_per_connection: Restart,
            max_requests_per_peer: Restart,
            max_inflight_mib: Restart,
            max_inflight_per_peer_mib: Restart,
            inventory_republish_per_s: Restart,
            idle_connection_timeout_s: Restart,
        }
    );
    type Error = P2pConfigError;

    fn check(&self) -> Vec<P2pConfigError> {
        let mut out: Vec<P2pConfigError> = [
            ("p2p.max_pending_incoming", self.max_pending_incoming.into()),
            (
                "p2p.max_pending_incoming_per_ip",
                self.max_pending_incoming_per_ip.into(),
            ),
            ("p2p.max_pending_outgoing", self.max_pending_outgoing.into()),
            ("p2p.max_established", self.max_established.into()),
            (
                "p2p.max_established_per_peer",
                self.max_established_per_peer.into(),
            ),
            ("p2p.handshake_timeout_ms", self.handshake_timeout_ms),
            (
                "p2p.max_streams_per_connection",
                self.max_streams_per_connection.into(),
            ),
            (
                "p2p.max_requests_per_peer",
                self.max_requests_per_peer.into(),
            ),
            ("p2p.max_inflight_mib", self.max_inflight_mib.into()),
            (
                "p2p.max_inflight_per_peer_mib",
                self.max_inflight_per_peer_mib.into(),
            ),
            (
                "p2p.inventory_republish_per_s",
                self.inventory_republish_per_s.into(),
            ),
            (
                "p2p.idle_connection_timeout_s",
                self.idle_connection_timeout_s.into(),
            ),
        ]
        .into_iter()
        .filter_map(|(key, v)| at_least_one(key, v).map(Into::into))
        .collect();
        if self.max_inflight_per_peer_mib > self.max_inflight_mib {
            out.push(P2pConfigError::PeerOverTotal {
                per_peer: self.max_inflight_per_peer_mib,
                total: self.max_inflight_mib,
            });
        }
        out
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
