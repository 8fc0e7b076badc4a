//! Traffic a guest controls: λ(u, v) as the decision reads it from capture counts only what the
//! other end answers. Each direction of a pair counts up to [`ANSWER_RATIO`] times the bytes seen
//! the other way, so a guest that sprays frames at a VM that does not answer (a firewall that
//! drops, a datagram sink, a forged source whose answers go elsewhere) draws neither of them
//! anywhere, while a conversation, even a bulk transfer answered only by ACKs, counts in full.
//!
//! The flow table keeps both directions as measured (for `scored flows`); this rule applies where
//! capture hands λ to the decision. The synthetic source, fed by the operator or the simulator, is
//! not guest-controlled and does not apply it. Pure: no I/O, no clock.

use super::table::PartnerRate;

/// How many bytes one direction may count per byte seen the other way. A TCP bulk transfer with
/// 64 KiB offloaded segments (what a tap sees from a virtio guest) and one 66-byte ACK per two
/// segments is about 2000:1 (a single ACK per segment, measured on the test veths: ~800:1);
/// twice that leaves such transfers whole.
pub const ANSWER_RATIO: f64 = 4096.0;

/// λ(u, v) in bytes/s counting each direction up to `ratio` times the other.
pub fn answered(out_bytes_per_sec: f64, in_bytes_per_sec: f64, ratio: f64) -> f64 {
    out_bytes_per_sec.min(ratio * in_bytes_per_sec)
        + in_bytes_per_sec.min(ratio * out_bytes_per_sec)
}

/// [`answered`] of a partner's measured rates, with [`ANSWER_RATIO`].
pub fn answered_rate(r: &PartnerRate) -> f64 {
    answered(r.out_bytes_per_sec, r.in_bytes_per_sec, ANSWER_RATIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_way_traffic_counts_nothing() {
        assert_eq!(answered(1e9, 0.0, ANSWER_RATIO), 0.0);
        assert_eq!(answered(0.0, 1e9, ANSWER_RATIO), 0.0);
        assert_eq!(answered(0.0, 0.0, ANSWER_RATIO), 0.0);
    }

    #[test]
    fn a_conversation_counts_in_full_up_to_the_ratio() {
        // Request/response, and a bulk transfer with its ACKs.
        assert_eq!(answered(3000.0, 1000.0, ANSWER_RATIO), 4000.0);
        assert_eq!(answered(2000.0 * 66.0, 66.0, ANSWER_RATIO), 2001.0 * 66.0);
        // Beyond the ratio, a direction counts only what the answers vouch for, either way.
        assert_eq!(answered(1e9, 10.0, 100.0), 1000.0 + 10.0);
        assert_eq!(answered(10.0, 1e9, 100.0), 10.0 + 1000.0);
    }

    #[test]
    fn the_rule_reads_a_partner_rate() {
        let r = PartnerRate {
            partner: scored_proto::VmId(2),
            out_bytes_per_sec: 5e6,
            in_bytes_per_sec: 0.0,
            packets_per_sec: 1000.0,
            idle: std::time::Duration::ZERO,
        };
        assert_eq!(answered_rate(&r), 0.0);
        let r = PartnerRate {
            in_bytes_per_sec: 1e5,
            ..r
        };
        assert_eq!(answered_rate(&r), 5.1e6);
    }
}
