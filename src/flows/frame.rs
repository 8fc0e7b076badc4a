//! Parsing the headers of one captured Ethernet frame: MACs, up to two VLAN tags (802.1Q, QinQ),
//! and the addresses of IPv4, IPv6 or ARP. Nothing beyond what attribution needs is read.
//!
//! Pure and total: any byte slice gives either a [`Frame`] or a [`Malformed`] reason, never a
//! panic (a property test feeds it random bytes). No allocation.

/// EtherTypes this parser understands.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// Pre-standard QinQ outer tag, still emitted by some switches.
pub const ETHERTYPE_QINQ_OLD: u16 = 0x9100;

/// VLAN tags accepted before the payload (QinQ = 2); more is treated as malformed.
pub const MAX_VLAN_TAGS: u8 = 2;

/// A MAC address.
pub type Mac = [u8; 6];

/// What a frame carries, as far as attribution cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Addresses as big-endian u32 (the form of `VmId`).
    Ipv4 {
        src: u32,
        dst: u32,
    },
    Ipv6 {
        src: [u8; 16],
        dst: [u8; 16],
    },
    /// An ARP packet for IPv4 over Ethernet: sender and target protocol addresses.
    Arp {
        sender: u32,
        target: u32,
    },
    /// Any other EtherType (LLDP, MPLS, …): counted, never attributed.
    Other {
        ethertype: u16,
    },
}

/// The parsed headers of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub dst: Mac,
    pub src: Mac,
    /// VLAN tags skipped (0, 1 or 2).
    pub vlans: u8,
    pub payload: Payload,
}

/// Why a frame could not be parsed. Each reason has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// Shorter than an Ethernet header (14 bytes).
    ShortEthernet,
    /// A VLAN tag cut short.
    ShortVlan,
    /// More than [`MAX_VLAN_TAGS`] tags.
    TooManyVlans,
    /// Less than 20 bytes after the EtherType, or a version other than 4, or IHL < 5.
    BadIpv4Header,
    /// The IPv4 total length (or header length) runs past the captured bytes.
    TruncatedIpv4,
    /// Less than 40 bytes after the EtherType, or a version other than 6.
    BadIpv6Header,
    /// The IPv6 payload length runs past the captured bytes.
    TruncatedIpv6,
    /// ARP shorter than 28 bytes or not IPv4-over-Ethernet.
    BadArp,
}

impl Malformed {
    pub const ALL: [Malformed; 8] = [
        Malformed::ShortEthernet,
        Malformed::ShortVlan,
        Malformed::TooManyVlans,
        Malformed::BadIpv4Header,
        Malformed::TruncatedIpv4,
        Malformed::BadIpv6Header,
        Malformed::TruncatedIpv6,
        Malformed::BadArp,
    ];

    /// Name used in metric labels and reports.
    pub fn name(self) -> &'static str {
        match self {
            Malformed::ShortEthernet => "short_ethernet",
            Malformed::ShortVlan => "short_vlan",
            Malformed::TooManyVlans => "too_many_vlans",
            Malformed::BadIpv4Header => "bad_ipv4_header",
            Malformed::TruncatedIpv4 => "truncated_ipv4",
            Malformed::BadIpv6Header => "bad_ipv6_header",
            Malformed::TruncatedIpv6 => "truncated_ipv6",
            Malformed::BadArp => "bad_arp",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[inline]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

#[inline]
fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

#[inline]
fn mac(b: &[u8], at: usize) -> Mac {
    let mut m = [0; 6];
    m.copy_from_slice(&b[at..at + 6]);
    m
}

/// Parses the headers of one whole Ethernet frame (without FCS, as AF_PACKET delivers it).
#[inline]
pub fn parse(frame: &[u8]) -> Result<Frame, Malformed> {
    parse_captured(frame, frame.len())
}

/// Parses a frame of `wire_len` bytes of which only the first `frame.len()` were captured
/// (capture copies headers only). Lengths in the headers are checked against `wire_len`;
/// addresses are read from the captured bytes.
#[inline]
pub fn parse_captured(frame: &[u8], wire_len: usize) -> Result<Frame, Malformed> {
    let wire_len = wire_len.max(frame.len());
    if frame.len() < 14 {
        return Err(Malformed::ShortEthernet);
    }
    let dst = mac(frame, 0);
    let src = mac(frame, 6);
    let mut at = 12;
    let mut vlans = 0u8;
    let mut ethertype = be16(frame, at).ok_or(Malformed::ShortEthernet)?;
    while matches!(
        ethertype,
        ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_OLD
    ) {
        if vlans == MAX_VLAN_TAGS {
            return Err(Malformed::TooManyVlans);
        }
        vlans += 1;
        at += 4;
        ethertype = be16(frame, at).ok_or(Malformed::ShortVlan)?;
    }
    let l3 = &frame[at + 2..];
    let l3_len = wire_len - (at + 2);
    let payload = match ethertype {
        ETHERTYPE_IPV4 => ipv4(l3, l3_len)?,
        ETHERTYPE_IPV6 => ipv6(l3, l3_len)?,
        ETHERTYPE_ARP => arp(l3)?,
        other => Payload::Other { ethertype: other },
    };
    Ok(Frame {
        dst,
        src,
        vlans,
        payload,
    })
}

#[inline]
fn ipv4(p: &[u8], wire_len: usize) -> Result<Payload, Malformed> {
    if p.len() < 20 {
        return Err(Malformed::BadIpv4Header);
    }
    let version = p[0] >> 4;
    let ihl = (p[0] & 0x0f) as usize * 4;
    if version != 4 || ihl < 20 {
        return Err(Malformed::BadIpv4Header);
    }
    let total = be16(p, 2).ok_or(Malformed::BadIpv4Header)? as usize;
    // Ethernet pads short packets, so more bytes than `total` is normal; fewer is a cut frame.
    // A total below the header length is also a lie about the packet, except the 0 that BIG TCP
    // GSO super-frames (over 64 KiB) carry.
    let big_gso = total == 0 && wire_len > 0xffff;
    if (!big_gso && (total < ihl || total > wire_len)) || ihl > wire_len {
        return Err(Malformed::TruncatedIpv4);
    }
    Ok(Payload::Ipv4 {
        src: be32(p, 12).ok_or(Malformed::BadIpv4Header)?,
        dst: be32(p, 16).ok_or(Malformed::BadIpv4Header)?,
    })
}

#[inline]
fn ipv6(p: &[u8], wire_len: usize) -> Result<Payload, Malformed> {
    if p.len() < 40 || p[0] >> 4 != 6 {
        return Err(Malformed::BadIpv6Header);
    }
    let payload_len = be16(p, 4).ok_or(Malformed::BadIpv6Header)? as usize;
    // A zero payload length with a hop-by-hop header is a jumbogram; AF_PACKET may also hand us
    // GSO super-frames whose length field is zeroed. Neither is a truncation.
    if payload_len != 0 && 40 + payload_len > wire_len {
        return Err(Malformed::TruncatedIpv6);
    }
    let mut src = [0; 16];
    let mut dst = [0; 16];
    src.copy_from_slice(&p[8..24]);
    dst.copy_from_slice(&p[24..40]);
    Ok(Payload::Ipv6 { src, dst })
}

#[inline]
fn arp(p: &[u8]) -> Result<Payload, Malformed> {
    // htype 1 (Ethernet), ptype 0x0800, hlen 6, plen 4.
    if p.len() < 28 || p[0..6] != [0, 1, 8, 0, 6, 4] {
        return Err(Malformed::BadArp);
    }
    Ok(Payload::Arp {
        sender: be32(p, 14).ok_or(Malformed::BadArp)?,
        target: be32(p, 24).ok_or(Malformed::BadArp)?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub const A: Mac = [0x02, 0, 0, 0, 0, 0x0a];
    pub const B: Mac = [0x02, 0, 0, 0, 0, 0x0b];

    /// An Ethernet + IPv4 + UDP frame with `payload` bytes of UDP payload.
    pub fn udp4(src: Mac, dst: Mac, sip: [u8; 4], dip: [u8; 4], payload: usize) -> Vec<u8> {
        let mut f = Vec::with_capacity(42 + payload);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = (20 + 8 + payload) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&sip);
        f.extend_from_slice(&dip);
        f.extend_from_slice(&[0x30, 0x39, 0x23, 0x28]);
        f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.resize(42 + payload, 0xab);
        f
    }

    fn tagged(mut f: Vec<u8>, tags: &[u16]) -> Vec<u8> {
        for (n, tpid) in tags.iter().enumerate() {
            let at = 12 + 4 * n;
            let mut tag = tpid.to_be_bytes().to_vec();
            tag.extend_from_slice(&(100 + n as u16).to_be_bytes());
            f.splice(at..at, tag);
        }
        f
    }

    #[test]
    fn ipv4_udp() {
        let f = udp4(A, B, [10, 0, 0, 1], [10, 0, 0, 2], 100);
        let p = parse(&f).unwrap();
        assert_eq!(p.src, A);
        assert_eq!(p.dst, B);
        assert_eq!(p.vlans, 0);
        assert_eq!(
            p.payload,
            Payload::Ipv4 {
                src: 0x0a00_0001,
                dst: 0x0a00_0002
            }
        );
    }

    #[test]
    fn vlan_and_qinq_are_skipped() {
        let f = udp4(A, B, [10, 0, 0, 1], [10, 0, 0, 2], 10);
        let one = tagged(f.clone(), &[ETHERTYPE_VLAN]);
        assert_eq!(parse(&one).unwrap().vlans, 1);
        let two = tagged(f.clone(), &[ETHERTYPE_QINQ, ETHERTYPE_VLAN]);
        let p = parse(&two).unwrap();
        assert_eq!(p.vlans, 2);
        assert!(matches!(
            p.payload,
            Payload::Ipv4 {
                src: 0x0a00_0001,
                ..
            }
        ));
        let old = tagged(f.clone(), &[ETHERTYPE_QINQ_OLD, ETHERTYPE_VLAN]);
        assert_eq!(parse(&old).unwrap().vlans, 2);
        let three = tagged(f, &[ETHERTYPE_QINQ, ETHERTYPE_VLAN, ETHERTYPE_VLAN]);
        assert_eq!(parse(&three), Err(Malformed::TooManyVlans));
        assert_eq!(parse(&one[..15]), Err(Malformed::ShortVlan));
    }

    #[test]
    fn ipv6_and_arp() {
        let mut f = Vec::new();
        f.extend_from_slice(&B);
        f.extend_from_slice(&A);
        f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let mut ip = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        ip.extend((0..16).map(|i| i as u8));
        ip.extend((0..16).map(|i| 0xf0 | i as u8));
        ip.extend([0; 8]);
        f.extend_from_slice(&ip);
        match parse(&f).unwrap().payload {
            Payload::Ipv6 { src, dst } => {
                assert_eq!(src[15], 15);
                assert_eq!(dst[0], 0xf0);
            }
            p => panic!("{p:?}"),
        }
        assert_eq!(parse(&f[..f.len() - 1]), Err(Malformed::TruncatedIpv6));
        assert_eq!(parse(&f[..50]), Err(Malformed::BadIpv6Header));

        let mut a = Vec::new();
        a.extend_from_slice(&[0xff; 6]);
        a.extend_from_slice(&A);
        a.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        a.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        a.extend_from_slice(&A);
        a.extend_from_slice(&[10, 0, 0, 1]);
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&[10, 0, 0, 2]);
        assert_eq!(
            parse(&a).unwrap().payload,
            Payload::Arp {
                sender: 0x0a00_0001,
                target: 0x0a00_0002
            }
        );
        assert_eq!(parse(&a[..41]), Err(Malformed::BadArp));
        let mut not_ipv4 = a.clone();
        not_ipv4[16] = 0x86;
        assert_eq!(parse(&not_ipv4), Err(Malformed::BadArp));
    }

    #[test]
    fn malformed_ipv4() {
        let f = udp4(A, B, [10, 0, 0, 1], [10, 0, 0, 2], 100);
        assert_eq!(parse(&f[..13]), Err(Malformed::ShortEthernet));
        assert_eq!(parse(&f[..30]), Err(Malformed::BadIpv4Header));
        // Cut in the payload: the total length promises more.
        assert_eq!(parse(&f[..100]), Err(Malformed::TruncatedIpv4));
        let mut v = f.clone();
        v[14] = 0x65;
        assert_eq!(parse(&v), Err(Malformed::BadIpv4Header));
        let mut ihl = f.clone();
        ihl[14] = 0x43;
        assert_eq!(parse(&ihl), Err(Malformed::BadIpv4Header));
        let mut short_total = f.clone();
        short_total[16..18].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(parse(&short_total), Err(Malformed::TruncatedIpv4));
        // Ethernet padding after the IP packet is fine.
        let mut padded = udp4(A, B, [10, 0, 0, 1], [10, 0, 0, 2], 2);
        padded.resize(60, 0);
        assert!(parse(&padded).is_ok());
    }

    #[test]
    fn captured_headers_are_checked_against_the_wire_length() {
        let f = udp4(A, B, [10, 0, 0, 1], [10, 0, 0, 2], 1400);
        // 64 bytes captured of a 1442-byte frame: fine.
        let p = parse_captured(&f[..64], f.len()).unwrap();
        assert!(matches!(
            p.payload,
            Payload::Ipv4 {
                dst: 0x0a00_0002,
                ..
            }
        ));
        // The same 64 bytes claiming a shorter frame than the IPv4 length: truncated.
        assert_eq!(
            parse_captured(&f[..64], 1000),
            Err(Malformed::TruncatedIpv4)
        );
        // A wire length below what was captured is taken as the captured length.
        assert_eq!(parse_captured(&f, 10), parse(&f));
    }

    #[test]
    fn other_ethertypes_are_reported() {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&0x88ccu16.to_be_bytes());
        assert_eq!(
            parse(&f).unwrap().payload,
            Payload::Other { ethertype: 0x88cc }
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            extra in prop_oneof![Just(0usize), 0usize..70_000],
        ) {
            let _ = parse(&bytes);
            let _ = parse_captured(&bytes, bytes.len() + extra);
        }

        #[test]
        fn mutated_valid_frames_never_panic(
            cut in 0usize..140,
            flips in proptest::collection::vec((0usize..140, any::<u8>()), 0..6),
            tags in 0usize..4,
        ) {
            let mut f = udp4(A, B, [10, 0, 0, 1], [10, 0, 0, 2], 80);
            f = tagged(f, &[ETHERTYPE_QINQ, ETHERTYPE_VLAN, ETHERTYPE_VLAN][..tags.min(3)]);
            for (at, b) in flips {
                if at < f.len() { f[at] = b; }
            }
            f.truncate(cut.min(f.len()));
            let _ = parse(&f);
        }
    }
}
