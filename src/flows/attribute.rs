//! Attribution: which local VM a captured frame belongs to, which way it went, and which partner
//! VM was at the other end; and the per-tap tally that batches attributed frames for the table.
//!
//! Rules (one tap = one VM interface, so a frame is only ever accounted for the tap's own VM):
//! - source MAC is one of the VM's → the VM sent it (`Out`), the partner is the destination IP;
//! - else destination MAC is one of the VM's → the VM received it (`In`), the partner is the
//!   source IP;
//! - else the frame is not the VM's (flooded by the bridge, or another host's): `Foreign`.
//!
//! Two VMs on the same host: a frame from u to v crosses u's tap and v's tap, and is counted once
//! on each: as u's `Out` on u's tap and v's `In` on v's tap — once per direction per VM.
//!
//! Frames sent to a group MAC (broadcast, multicast; e.g. ARP requests) or to a multicast,
//! broadcast or unspecified IPv4 address are not traffic with one partner: counted as `Group`.
//! ARP is counted as `Arp`, never as traffic: a guest's kernel answers it whatever its firewall
//! says, so it must not vouch for a conversation (`flows::answered`), and it weighs nothing next
//! to one. IPv6 partners: an IPv4-mapped address (`::ffff:a.b.c.d`) is the VM `a.b.c.d`; any
//! other IPv6 address is looked up in [`Ipv6Aliases`] (the IPv6 addresses of known VMs); the rest
//! is counted as `Ipv6Unmapped` — a partner the decision cannot locate gives it nothing to act on.
//!
//! A guest chooses what it writes on its interface, so its own end of a frame must be its own
//! address: a frame it sends from another address (IPv4 source not its id nor one of its known
//! addresses, IPv6 source not one of its known addresses) is counted as `Spoofed`, and a frame
//! it receives for another address as `Misaddressed`; neither is anyone's traffic. A VM's other
//! addresses reach the check through [`Ipv6Aliases`] (IPv4 ones as `::ffff:a.b.c.d`).
//!
//! Pure: no I/O, no clock.

use super::frame::{self, Mac, Malformed, Payload};
use super::table::{Direction, FlowTable, Update};
use scored_proto::VmId;
use std::collections::HashMap;
use std::time::Duration;

/// IPv6 addresses of known VMs, mapped to their (IPv4) VM ids.
pub type Ipv6Aliases = HashMap<[u8; 16], VmId>;

/// Why a well-formed frame was not attributed to a (VM, partner).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Skip {
    /// Neither from nor to the tap's VM.
    Foreign,
    /// To a group MAC, or to a multicast / broadcast / unspecified address.
    Group,
    /// Not IPv4, IPv6 or ARP.
    NotIp,
    /// An IPv6 partner with no known VM id.
    Ipv6Unmapped,
    /// The partner address is the VM's own id.
    SelfAddressed,
    /// The tap's VM id is not known yet (learned from the first IPv4 frame it sends).
    Unlearned,
    /// Sent by the tap's VM from an address not its own.
    Spoofed,
    /// Received by the tap's VM for an address not its own.
    Misaddressed,
    /// ARP: answered by any guest's kernel, so never traffic with a partner.
    Arp,
}

impl Skip {
    pub const ALL: [Skip; 9] = [
        Skip::Foreign,
        Skip::Group,
        Skip::NotIp,
        Skip::Ipv6Unmapped,
        Skip::SelfAddressed,
        Skip::Unlearned,
        Skip::Spoofed,
        Skip::Misaddressed,
        Skip::Arp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Skip::Foreign => "foreign",
            Skip::Group => "group",
            Skip::NotIp => "not_ip",
            Skip::Ipv6Unmapped => "ipv6_unmapped",
            Skip::SelfAddressed => "self_addressed",
            Skip::Unlearned => "unlearned",
            Skip::Spoofed => "spoofed",
            Skip::Misaddressed => "misaddressed",
            Skip::Arp => "arp",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Outcome of attributing one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribution {
    Counted { partner: VmId, dir: Direction },
    Skipped(Skip),
    Malformed(Malformed),
}

fn is_group_mac(m: &Mac) -> bool {
    m[0] & 1 == 1
}

/// Multicast (224/4), reserved (240/4, which holds 255.255.255.255) or unspecified (0.0.0.0).
fn is_group_ipv4(a: u32) -> bool {
    a >> 28 >= 0xe || a == 0
}

fn ipv6_partner(a: &[u8; 16], aliases: &Ipv6Aliases) -> Result<VmId, Skip> {
    if a[0] == 0xff || a.iter().all(|b| *b == 0) {
        return Err(Skip::Group);
    }
    if a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff {
        return Ok(VmId(u32::from_be_bytes([a[12], a[13], a[14], a[15]])));
    }
    aliases.get(a).copied().ok_or(Skip::Ipv6Unmapped)
}

/// Attributes one frame captured on the tap of local VM `vm` whose MACs are `macs`: `bytes`
/// are its first bytes (at least the headers), `wire_len` its whole length.
#[inline]
pub fn attribute(
    vm: VmId,
    macs: &[Mac],
    aliases: &Ipv6Aliases,
    bytes: &[u8],
    wire_len: usize,
) -> Attribution {
    let f = match frame::parse_captured(bytes, wire_len) {
        Ok(f) => f,
        Err(m) => return Attribution::Malformed(m),
    };
    let dir = if macs.contains(&f.src) {
        if is_group_mac(&f.dst) {
            return Attribution::Skipped(Skip::Group);
        }
        Direction::Out
    } else if macs.contains(&f.dst) {
        Direction::In
    } else {
        return Attribution::Skipped(Skip::Foreign);
    };
    // The partner, and the VM's own end of the frame (checked last, so frames skipped for
    // another reason keep it).
    let (partner, own) = match (f.payload, dir) {
        (Payload::Ipv4 { src, dst }, Direction::Out) => (dst, ipv4_mapped(src)),
        (Payload::Ipv4 { src, dst }, Direction::In) => (src, ipv4_mapped(dst)),
        (Payload::Arp { .. }, _) => return Attribution::Skipped(Skip::Arp),
        (Payload::Ipv6 { src, dst }, Direction::Out) => match ipv6_partner(&dst, aliases) {
            Ok(v) => (v.0, src),
            Err(s) => return Attribution::Skipped(s),
        },
        (Payload::Ipv6 { src, dst }, Direction::In) => match ipv6_partner(&src, aliases) {
            Ok(v) => (v.0, dst),
            Err(s) => return Attribution::Skipped(s),
        },
        (Payload::Other { .. }, _) => return Attribution::Skipped(Skip::NotIp),
    };
    if is_group_ipv4(partner) {
        return Attribution::Skipped(Skip::Group);
    }
    if partner == vm.0 {
        return Attribution::Skipped(Skip::SelfAddressed);
    }
    if !is_own(vm, &own, aliases) {
        return Attribution::Skipped(match dir {
            Direction::Out => Skip::Spoofed,
            Direction::In => Skip::Misaddressed,
        });
    }
    Attribution::Counted {
        partner: VmId(partner),
        dir,
    }
}

/// `::ffff:a.b.c.d`.
fn ipv4_mapped(a: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[10] = 0xff;
    m[11] = 0xff;
    m[12..].copy_from_slice(&a.to_be_bytes());
    m
}

/// Whether `a` is one of `vm`'s addresses: its id, or an address `aliases` gives it.
fn is_own(vm: VmId, a: &[u8; 16], aliases: &Ipv6Aliases) -> bool {
    if a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff {
        let v4 = u32::from_be_bytes([a[12], a[13], a[14], a[15]]);
        if v4 == vm.0 {
            return true;
        }
    }
    aliases.get(a) == Some(&vm)
}

/// The IPv4 address a frame was sent from, if `macs` sent it: how a tap learns its VM's id when
/// nobody told it (the debug CLI).
pub fn sender_ipv4(macs: &[Mac], bytes: &[u8], wire_len: usize) -> Option<VmId> {
    let f = frame::parse_captured(bytes, wire_len).ok()?;
    if !macs.contains(&f.src) {
        return None;
    }
    let a = match f.payload {
        Payload::Ipv4 { src, .. } => src,
        Payload::Arp { sender, .. } => sender,
        _ => return None,
    };
    (!is_group_ipv4(a)).then_some(VmId(a))
}

/// Frame counts of one tap (or a sum over taps). Frames and bytes are as captured: with 1-in-N
/// sampling they count sampled frames; the attributed bytes put into the table are scaled by N.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCounters {
    pub frames: u64,
    /// L2 bytes (Ethernet header included, no FCS) as the kernel handed them over.
    pub bytes: u64,
    pub attributed_frames: u64,
    pub attributed_bytes: u64,
    pub skipped: [u64; Skip::ALL.len()],
    pub malformed: [u64; Malformed::ALL.len()],
}

impl FrameCounters {
    pub fn add(&mut self, o: &FrameCounters) {
        self.frames += o.frames;
        self.bytes += o.bytes;
        self.attributed_frames += o.attributed_frames;
        self.attributed_bytes += o.attributed_bytes;
        for (a, b) in self.skipped.iter_mut().zip(o.skipped) {
            *a += b;
        }
        for (a, b) in self.malformed.iter_mut().zip(o.malformed) {
            *a += b;
        }
    }

    pub fn skipped(&self, s: Skip) -> u64 {
        self.skipped[s.index()]
    }

    pub fn malformed(&self, m: Malformed) -> u64 {
        self.malformed[m.index()]
    }

    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }
}

/// Attributed traffic waiting to be written into the shared table.
#[derive(Clone, Copy, Debug)]
struct Pending {
    partner: VmId,
    dir: Direction,
    bytes: u64,
    frames: u64,
}

/// Distinct (partner, direction) pairs a tally holds before it must be flushed.
pub const TALLY_CAPACITY: usize = 64;

/// One tap's running tally: attributes frames, aggregates them per (partner, direction), and
/// flushes the aggregate into a [`FlowTable`] — so a capture thread takes the table's lock once
/// per batch instead of once per frame.
#[derive(Clone, Debug)]
pub struct TapTally {
    vm: Option<VmId>,
    macs: Vec<Mac>,
    /// Each attributed frame stands for `scale` frames (1-in-`scale` sampling).
    scale: u64,
    pending: Vec<Pending>,
    /// Reused buffer for the table's batch update.
    batch: Vec<Update>,
    counters: FrameCounters,
}

impl TapTally {
    /// `vm = None`: learn the VM id from the first IPv4 or ARP frame the VM sends.
    pub fn new(vm: Option<VmId>, macs: Vec<Mac>, scale: u32) -> Self {
        TapTally {
            vm,
            macs,
            scale: scale.max(1) as u64,
            pending: Vec::with_capacity(TALLY_CAPACITY),
            batch: Vec::with_capacity(TALLY_CAPACITY),
            counters: FrameCounters::default(),
        }
    }

    pub fn vm(&self) -> Option<VmId> {
        self.vm
    }

    pub fn counters(&self) -> &FrameCounters {
        &self.counters
    }

    /// Takes the counters accumulated since the last call.
    pub fn take_counters(&mut self) -> FrameCounters {
        std::mem::take(&mut self.counters)
    }

    /// Accounts one whole captured frame. Returns true when the tally is full and must be
    /// flushed before the next frame.
    #[inline]
    pub fn frame(&mut self, bytes: &[u8], aliases: &Ipv6Aliases) -> bool {
        self.frame_captured(bytes, bytes.len(), aliases)
    }

    /// Accounts a frame of `wire_len` bytes of which `bytes` (the headers) were captured.
    #[inline]
    pub fn frame_captured(&mut self, bytes: &[u8], wire_len: usize, aliases: &Ipv6Aliases) -> bool {
        let wire_len = wire_len.max(bytes.len());
        let len = wire_len as u64;
        self.counters.frames += 1;
        self.counters.bytes += len;
        let vm = match self.vm {
            Some(vm) => vm,
            None => match sender_ipv4(&self.macs, bytes, wire_len) {
                Some(vm) => {
                    self.vm = Some(vm);
                    vm
                }
                None => {
                    self.counters.skipped[Skip::Unlearned.index()] += 1;
                    return false;
                }
            },
        };
        match attribute(vm, &self.macs, aliases, bytes, wire_len) {
            Attribution::Counted { partner, dir } => {
                self.counters.attributed_frames += 1;
                self.counters.attributed_bytes += len;
                let bytes = len * self.scale;
                let frames = self.scale;
                // Frames of one flow come in runs: the last pending pair is the likely one.
                if let Some(p) = self
                    .pending
                    .iter_mut()
                    .rev()
                    .find(|p| p.partner == partner && p.dir == dir)
                {
                    p.bytes += bytes;
                    p.frames += frames;
                    return false;
                }
                self.pending.push(Pending {
                    partner,
                    dir,
                    bytes,
                    frames,
                });
                self.pending.len() == TALLY_CAPACITY
            }
            Attribution::Skipped(s) => {
                self.counters.skipped[s.index()] += 1;
                false
            }
            Attribution::Malformed(m) => {
                self.counters.malformed[m.index()] += 1;
                false
            }
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes the pending aggregate into `table` at `now` and empties it.
    pub fn flush(&mut self, table: &mut FlowTable, now: Duration) {
        if let Some(vm) = self.vm {
            self.batch.clear();
            self.batch.extend(self.pending.iter().map(|p| Update {
                vm,
                partner: p.partner,
                dir: p.dir,
                bytes: p.bytes,
                packets: p.frames,
            }));
            table.record_batch(&self.batch, now);
        }
        self.pending.clear();
    }

    /// Drops the pending aggregate (the VM left: its traffic must not reach the table).
    pub fn discard(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::tests::{A, B, udp4};
    use super::super::table::TableConfig;
    use super::*;

    const VA: VmId = VmId(0x0a00_0001);
    const VB: VmId = VmId(0x0a00_0002);
    const IPA: [u8; 4] = [10, 0, 0, 1];
    const IPB: [u8; 4] = [10, 0, 0, 2];

    fn no_aliases() -> Ipv6Aliases {
        Ipv6Aliases::new()
    }

    #[test]
    fn out_and_in_by_mac() {
        let al = no_aliases();
        let f = udp4(A, B, IPA, IPB, 100);
        assert_eq!(
            attribute(VA, &[A], &al, &f, f.len()),
            Attribution::Counted {
                partner: VB,
                dir: Direction::Out
            }
        );
        // The same frame on B's tap is B's incoming traffic from A.
        assert_eq!(
            attribute(VB, &[B], &al, &f, f.len()),
            Attribution::Counted {
                partner: VA,
                dir: Direction::In
            }
        );
        // On a third VM's tap (flooded by the bridge) it is nobody's.
        let c = [2, 0, 0, 0, 0, 0x0c];
        assert_eq!(
            attribute(VmId(3), &[c], &al, &f, f.len()),
            Attribution::Skipped(Skip::Foreign)
        );
    }

    #[test]
    fn group_traffic_is_not_a_partner() {
        let al = no_aliases();
        let bcast = udp4(A, [0xff; 6], IPA, [10, 0, 0, 255], 10);
        assert_eq!(
            attribute(VA, &[A], &al, &bcast, bcast.len()),
            Attribution::Skipped(Skip::Group)
        );
        let mcast = udp4(A, B, IPA, [239, 1, 2, 3], 10);
        assert_eq!(
            attribute(VA, &[A], &al, &mcast, mcast.len()),
            Attribution::Skipped(Skip::Group)
        );
        let dhcp = udp4(B, A, [0, 0, 0, 0], IPA, 10);
        assert_eq!(
            attribute(VA, &[A], &al, &dhcp, dhcp.len()),
            Attribution::Skipped(Skip::Group)
        );
        let own = udp4(A, B, IPA, IPA, 10);
        assert_eq!(
            attribute(VA, &[A], &al, &own, own.len()),
            Attribution::Skipped(Skip::SelfAddressed)
        );
    }

    fn ipv6_frame(src: Mac, dst: Mac, sip: [u8; 16], dip: [u8; 16]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&frame::ETHERTYPE_IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, 59, 64]);
        f.extend_from_slice(&sip);
        f.extend_from_slice(&dip);
        f
    }

    #[test]
    fn a_vm_is_credited_only_with_frames_from_or_to_its_own_address() {
        let mut al = no_aliases();
        let ipc = [10, 0, 0, 3];
        // A sends "from" C's address: not A's traffic.
        let forged = udp4(A, B, ipc, IPB, 100);
        assert_eq!(
            attribute(VA, &[A], &al, &forged, forged.len()),
            Attribution::Skipped(Skip::Spoofed)
        );
        // A frame to A's MAC but another address: A's kernel drops it; not A's traffic.
        let misaddressed = udp4(B, A, IPB, ipc, 100);
        assert_eq!(
            attribute(VA, &[A], &al, &misaddressed, misaddressed.len()),
            Attribution::Skipped(Skip::Misaddressed)
        );
        // Once C's address is known to be A's second one, both are A's traffic.
        al.insert(ipv4_mapped(u32::from_be_bytes(ipc)), VA);
        assert_eq!(
            attribute(VA, &[A], &al, &forged, forged.len()),
            Attribution::Counted {
                partner: VB,
                dir: Direction::Out
            }
        );
        assert_eq!(
            attribute(VA, &[A], &al, &misaddressed, misaddressed.len()),
            Attribution::Counted {
                partner: VB,
                dir: Direction::In
            }
        );
        // An address known as another VM's is not A's.
        al.insert(ipv4_mapped(u32::from_be_bytes(ipc)), VB);
        assert_eq!(
            attribute(VA, &[A], &al, &forged, forged.len()),
            Attribution::Skipped(Skip::Spoofed)
        );
        // IPv6: the source must be one of A's known addresses.
        let a6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let b6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        al.insert(b6, VB);
        let f6 = ipv6_frame(A, B, a6, b6);
        assert_eq!(
            attribute(VA, &[A], &al, &f6, f6.len()),
            Attribution::Skipped(Skip::Spoofed)
        );
        al.insert(a6, VA);
        assert_eq!(
            attribute(VA, &[A], &al, &f6, f6.len()),
            Attribution::Counted {
                partner: VB,
                dir: Direction::Out
            }
        );
        // ARP: the kernel answers it whatever the guest's firewall says, so it vouches for no
        // conversation (and weighs nothing next to one).
        let mut arp = Vec::new();
        arp.extend_from_slice(&A);
        arp.extend_from_slice(&B);
        arp.extend_from_slice(&frame::ETHERTYPE_ARP.to_be_bytes());
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        arp.extend_from_slice(&B);
        arp.extend_from_slice(&IPB);
        arp.extend_from_slice(&A);
        arp.extend_from_slice(&IPA);
        assert_eq!(
            attribute(VA, &[A], &al, &arp, arp.len()),
            Attribution::Skipped(Skip::Arp)
        );
    }

    #[test]
    fn ipv6_partners_map_or_are_counted_apart() {
        let mut al = no_aliases();
        let a6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let b6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        // A's own address is known (the check of the VM's own end needs it).
        al.insert(a6, VA);
        let f = ipv6_frame(A, B, a6, b6);
        assert_eq!(
            attribute(VA, &[A], &al, &f, f.len()),
            Attribution::Skipped(Skip::Ipv6Unmapped)
        );
        al.insert(b6, VB);
        assert_eq!(
            attribute(VA, &[A], &al, &f, f.len()),
            Attribution::Counted {
                partner: VB,
                dir: Direction::Out
            }
        );
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[10, 9, 8, 7]);
        let g = ipv6_frame(B, A, mapped, a6);
        assert_eq!(
            attribute(VA, &[A], &al, &g, g.len()),
            Attribution::Counted {
                partner: VmId(0x0a09_0807),
                dir: Direction::In
            }
        );
        let mut ff = [0u8; 16];
        ff[0] = 0xff;
        assert_eq!(
            attribute(VA, &[A], &al, &ipv6_frame(A, B, a6, ff), 54),
            Attribution::Skipped(Skip::Group)
        );
    }

    #[test]
    fn tally_aggregates_scales_and_learns() {
        let al = no_aliases();
        let mut table = FlowTable::new(TableConfig {
            window: Duration::from_secs(1_000_000),
            ..TableConfig::default()
        })
        .unwrap();
        // Unknown VM id: learned from the first frame A sends.
        let mut t = TapTally::new(None, vec![A], 4);
        let to_a = udp4(B, A, IPB, IPA, 58);
        assert!(!t.frame(&to_a, &al));
        assert_eq!(t.counters().skipped(Skip::Unlearned), 1);
        let from_a = udp4(A, B, IPA, IPB, 58);
        for _ in 0..10 {
            assert!(!t.frame(&from_a, &al));
            assert!(!t.frame(&to_a, &al));
        }
        assert_eq!(t.vm(), Some(VA));
        t.frame(&[0u8; 5], &al);
        t.flush(&mut table, Duration::from_secs(1));
        assert!(!t.has_pending());
        let (o, i) = table.decayed_bytes(VA, VB, Duration::from_secs(1)).unwrap();
        // 10 frames of 100 bytes each way, each standing for 4.
        assert!((o - 4000.0).abs() < 0.01, "{o}");
        assert!((i - 4000.0).abs() < 0.01, "{i}");
        let c = t.take_counters();
        assert_eq!(c.frames, 22);
        assert_eq!(c.attributed_frames, 20);
        assert_eq!(c.attributed_bytes, 2000);
        assert_eq!(c.malformed(Malformed::ShortEthernet), 1);
        assert_eq!(t.counters().frames, 0);
    }

    #[test]
    fn tally_reports_full_at_capacity() {
        let al = no_aliases();
        let mut t = TapTally::new(Some(VA), vec![A], 1);
        for n in 0..TALLY_CAPACITY {
            let f = udp4(A, B, IPA, [10, 1, (n / 256) as u8, n as u8 + 1], 10);
            let full = t.frame(&f, &al);
            assert_eq!(full, n + 1 == TALLY_CAPACITY);
        }
    }
}
