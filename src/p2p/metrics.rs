//! The p2p layer's counters. Handed out as a bundle of prometheus-client metrics (cheap clones
//! sharing one value) that the metrics module registers; nothing here serves HTTP.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label set of per-protocol counters: `protocol="/scored/token/1"`.
pub type ProtocolLabel = Vec<(String, String)>;

/// Label set of refusal counters: `reason="rate_limited"`.
pub type ReasonLabel = Vec<(String, String)>;

/// The `reason` of requests refused because their peer exceeded its rate limit.
pub const RATE_LIMITED: &str = "rate_limited";
/// Incoming connections refused before their handshake: too many already in it from one
/// address, or from addresses outside the topology.
pub const PENDING_INCOMING: &str = "pending_incoming";
/// Connections refused by an established or outgoing connection limit.
pub const CONNECTION_LIMIT: &str = "connection_limit";
/// Request streams dropped because their peer already has its limit of requests in flight.
pub const REQUESTS_IN_FLIGHT: &str = "requests_in_flight";
/// Request streams dropped because their bytes would exceed the peer's or the host's budget.
pub const INFLIGHT_BYTES: &str = "inflight_bytes";

/// The request protocols, each with its series from the start.
/// The request protocols counted, in the order [`P2pMetrics::sent_by_protocol`] gives them.
pub const PROTOCOLS: [&str; 5] = [
    scored_proto::TOKEN_PROTOCOL,
    scored_proto::LOCATION_PROTOCOL,
    scored_proto::CAPACITY_PROTOCOL,
    scored_proto::STATS_PROTOCOL,
    scored_proto::GROUP_PROTOCOL,
];

#[derive(Clone, Debug, Default)]
pub struct P2pMetrics {
    /// Connections refused because the peer's PeerId is not in the topology.
    pub refused_connections: Counter,
    /// Frames that failed to decode (the peer is disconnected).
    pub malformed_frames: Counter,
    /// Requests refused because the peer uses another topology file.
    pub topology_mismatches: Counter,
    /// Gossip announcements rejected (undecodable, or a host speaking for another).
    pub rejected_announcements: Counter,
    /// Requests answered, by protocol.
    pub requests_served: Family<ProtocolLabel, Counter>,
    /// Peer input refused without being handled, by reason ([`RATE_LIMITED`], the transport
    /// limits, and the announcement reasons of `AnnouncementRejected::reason`).
    pub rejected: Family<ReasonLabel, Counter>,
    /// Incoming connections in their handshake now.
    pub pending_incoming: Gauge,
    /// Requests this host sent, by protocol (what a decision costs the network).
    pub requests_sent: Family<ProtocolLabel, Counter>,
    /// Announcements this host published on gossip (its own; forwarding is gossip's).
    pub announcements_published: Counter,
    /// Announcements from peers that reached this host (valid or not, repeats included).
    pub announcements_received: Counter,
    /// Gossip messages (announcements this host published or forwarded, and gossip's own
    /// control messages) that gossipsub gave up sending to a peer: its queue to that peer was
    /// full, or a message waited longer than gossipsub lets it (1 s to forward, 5 s to publish).
    pub gossip_dropped: Counter,
}

impl P2pMetrics {
    pub fn register(&self, registry: &mut Registry) {
        // Every label value a family can take exists from the start, so rate() and alerts see
        // a zero rather than an absent series.
        let transport = [
            RATE_LIMITED,
            PENDING_INCOMING,
            CONNECTION_LIMIT,
            REQUESTS_IN_FLIGHT,
            INFLIGHT_BYTES,
            super::gossip::UNDECODABLE,
        ];
        for reason in transport
            .into_iter()
            .chain(super::directory::AnnouncementRejected::REASONS)
        {
            let _ = self
                .rejected
                .get_or_create(&vec![("reason".to_string(), reason.to_string())]);
        }
        for protocol in PROTOCOLS {
            let _ = self
                .requests_served
                .get_or_create(&vec![("protocol".to_string(), protocol.to_string())]);
            let _ = self
                .requests_sent
                .get_or_create(&vec![("protocol".to_string(), protocol.to_string())]);
        }
        registry.register(
            "scored_p2p_refused_connections",
            "Connections refused: the peer's PeerId is not in the topology",
            self.refused_connections.clone(),
        );
        registry.register(
            "scored_p2p_malformed_frames",
            "Frames from peers that failed to decode; the peer was disconnected",
            self.malformed_frames.clone(),
        );
        registry.register(
            "scored_p2p_topology_mismatches",
            "Requests refused because the peer was started with another topology file",
            self.topology_mismatches.clone(),
        );
        registry.register(
            "scored_p2p_rejected_announcements",
            "Gossip announcements rejected as undecodable or not the author's to make",
            self.rejected_announcements.clone(),
        );
        registry.register(
            "scored_p2p_requests_served",
            "Requests from peers answered, by protocol",
            self.requests_served.clone(),
        );
        registry.register(
            "scored_p2p_rejected",
            "Peer input refused without being handled, by reason (rate_limited: over the peer's allowance; pending_incoming, connection_limit: a connection over a transport limit; requests_in_flight, inflight_bytes: a request stream over its peer's or the host's budget; future_stamp, not_its_migration, inventory_too_large, ...: announcements, see docs/protocol.md)",
            self.rejected.clone(),
        );
        registry.register(
            "scored_p2p_requests_sent",
            "Requests this host sent to peers, by protocol",
            self.requests_sent.clone(),
        );
        registry.register(
            "scored_p2p_announcements_published",
            "Announcements this host published on gossip (inventories, migrations, groups)",
            self.announcements_published.clone(),
        );
        registry.register(
            "scored_p2p_announcements_received",
            "Announcements from peers delivered to this host by gossip, repeats and rejected ones included",
            self.announcements_received.clone(),
        );
        registry.register(
            "scored_p2p_gossip_dropped",
            "Gossip messages this host gave up sending to a peer (its queue to the peer full, or a message queued past gossipsub's limit): a slow peer, or this host overloaded",
            self.gossip_dropped.clone(),
        );
        registry.register(
            "scored_p2p_pending_incoming_connections",
            "Incoming connections in their Noise/Yamux handshake now",
            self.pending_incoming.clone(),
        );
    }

    pub(crate) fn served(&self, protocol: &str) {
        self.requests_served
            .get_or_create(&vec![("protocol".to_string(), protocol.to_string())])
            .inc();
    }

    pub(crate) fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    pub(crate) fn sent(&self, protocol: &str) {
        self.requests_sent
            .get_or_create(&vec![("protocol".to_string(), protocol.to_string())])
            .inc();
    }

    /// Requests sent over every protocol so far.
    pub fn sent_total(&self) -> u64 {
        self.sent_by_protocol().iter().sum()
    }

    /// Requests sent so far, by protocol in [`PROTOCOLS`]' order.
    pub fn sent_by_protocol(&self) -> [u64; PROTOCOLS.len()] {
        PROTOCOLS.map(|protocol| {
            self.requests_sent
                .get_or_create(&vec![("protocol".to_string(), protocol.to_string())])
                .get()
        })
    }

    /// Requests answered over every protocol so far.
    pub fn served_total(&self) -> u64 {
        PROTOCOLS.iter().map(|p| self.served_count(p)).sum()
    }

    /// Requests refused for `reason` so far.
    pub fn rejected_count(&self, reason: &str) -> u64 {
        self.rejected
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .get()
    }

    /// Requests answered for `protocol` so far.
    pub fn served_count(&self, protocol: &str) -> u64 {
        self.requests_served
            .get_or_create(&vec![("protocol".to_string(), protocol.to_string())])
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_exposition() {
        let m = P2pMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        m.refused_connections.inc();
        m.served("/scored/token/1");
        m.reject(RATE_LIMITED);
        m.sent("/scored/capacity/1");
        m.announcements_published.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(
            text.contains("scored_p2p_refused_connections_total 1"),
            "{text}"
        );
        assert!(
            text.contains("scored_p2p_requests_served_total{protocol=\"/scored/token/1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("scored_p2p_rejected_total{reason=\"rate_limited\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("scored_p2p_requests_sent_total{protocol=\"/scored/capacity/1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("scored_p2p_announcements_published_total 1"),
            "{text}"
        );
    }
}
