//! The parts of the protocol the simulation does not execute, as a model: gossipsub's delivery of
//! each publish, the periodic inventories, the heartbeats during a migration, and the time a round
//! takes. Every parameter is named here with where it comes from; docs/evaluation.md
//! ("Protocol scale") states the same.

use super::Counts;

/// What travels, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Handoff,
    Capacity,
    Lookup,
    Statistics,
    MigrationAnnounce,
    InventoryChange,
    InventoryRepublish,
    Heartbeat,
    GossipIhave,
}

pub const KINDS: [Kind; 9] = [
    Kind::Handoff,
    Kind::Capacity,
    Kind::Lookup,
    Kind::Statistics,
    Kind::MigrationAnnounce,
    Kind::InventoryChange,
    Kind::InventoryRepublish,
    Kind::Heartbeat,
    Kind::GossipIhave,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Handoff => "handoff",
            Kind::Capacity => "capacity",
            Kind::Lookup => "lookup",
            Kind::Statistics => "statistics",
            Kind::MigrationAnnounce => "migration_announce",
            Kind::InventoryChange => "inventory_change",
            Kind::InventoryRepublish => "inventory_republish",
            Kind::Heartbeat => "heartbeat",
            Kind::GossipIhave => "gossip_ihave",
        }
    }
}

/// One kind's traffic, cluster-wide: per decision (token step) and per round (every VM's turn
/// once). Gossip kinds count every copy sent on a connection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row {
    pub kind: Kind,
    pub messages_per_decision: f64,
    pub bytes_per_decision: f64,
    pub messages_per_round: f64,
    pub bytes_per_round: f64,
}

/// The model's parameters. Defaults: gossipsub's (libp2p-gossipsub 0.50 defaults, with
/// scored's heartbeat, `p2p::behaviour`), the daemon's (`republish_every`, the heartbeat every
/// `handoff_timeout / 4`), and the latencies measured in docs/evaluation.md.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Model {
    /// Gossipsub mesh degree D (`mesh_n`).
    pub mesh: usize,
    /// Peers sent IHAVE at each gossip heartbeat: max(`gossip_lazy`, `gossip_factor` × non-mesh
    /// peers), at most the non-mesh peers.
    pub gossip_lazy: usize,
    pub gossip_factor: f64,
    /// Heartbeats a message id is advertised in (`history_gossip`).
    pub history_gossip: usize,
    /// Bytes of one IHAVE entry: the default message id (base58 PeerId, 52 characters, and the
    /// decimal sequence number, 19) with its protobuf tag and length.
    pub ihave_entry: u64,
    /// Inventories the data centre republishes a second (`p2p.inventory_republish_per_s`): each
    /// host every `p2p::zombies::republish_every(hosts, this)`.
    pub republish_per_s: u32,
    /// Token heartbeat period while a turn waits (`handoff_timeout_ms / 4`, default 2 s / 4).
    pub heartbeat_s: f64,
    /// A decision with its capacity round trip, cached locations, loopback libp2p (the
    /// `daemon_decision` bench, 10 partners, release: 0.78 ms).
    pub decision_s: f64,
    /// Hand-off round trip: 0.24 ms for a 64-slot token, 0.64 ms for dc-2560's 82 KB token (the
    /// `p2p` bench, p50), read as a fixed part and a per-byte part.
    pub handoff_fixed_s: f64,
    pub handoff_per_byte_s: f64,
    /// The inventory read at each token arrival (hypervisor calls bench, `vms_incremental`:
    /// one listing of every domain's state, XML only for what changed): 0.16 ms at 1 guest,
    /// 0.52 ms at 16, read as a fixed part and a part per guest.
    pub inventory_read_fixed_s: f64,
    pub inventory_read_per_vm_s: f64,
    /// One live migration, the holder waiting for it (testbed median, 1.4 s).
    pub migration_s: f64,
    /// One round of statistics requests (≤ 64 in flight) answered, loopback (≈ one capacity
    /// round, 1 ms).
    pub stats_batch_s: f64,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            mesh: 6,
            gossip_lazy: 6,
            gossip_factor: 0.25,
            history_gossip: 3,
            ihave_entry: 2 + 52 + 19,
            republish_per_s: crate::p2p::zombies::INVENTORIES_PER_S,
            heartbeat_s: 0.5,
            decision_s: 0.78e-3,
            handoff_fixed_s: 0.24e-3,
            handoff_per_byte_s: 0.40e-3 / 82_000.0,
            inventory_read_fixed_s: 0.136e-3,
            inventory_read_per_vm_s: 0.024e-3,
            migration_s: 1.4,
            stats_batch_s: 1e-3,
        }
    }
}

/// A round's time, and what it is made of (seconds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Projection {
    pub decisions_s: f64,
    pub handoffs_s: f64,
    pub arrival_reads_s: f64,
    pub statistics_s: f64,
    /// Waiting for the migrations the simulated turns made, at their rate.
    pub migrations_s: f64,
}

impl Projection {
    /// Without migrations: the token's own pace.
    pub fn turns_s(&self) -> f64 {
        self.decisions_s + self.handoffs_s + self.arrival_reads_s + self.statistics_s
    }

    pub fn total_s(&self) -> f64 {
        self.turns_s() + self.migrations_s
    }
}

/// Topic of the announcements (`/scored/announce/1`), in every gossipsub message.
const TOPIC: usize = "/scored/announce/1".len();

fn varint_len(mut v: u64) -> u64 {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

impl Model {
    /// Gossip peers of a host: the ones it dials (its successor and `CHORDS` hashed ones,
    /// `p2p::gossip`) and, as many on average, the ones that dial it; every other host when
    /// there are fewer.
    pub fn peers(hosts: usize) -> usize {
        hosts
            .saturating_sub(1)
            .min(2 * (crate::p2p::gossip::CHORDS + 1))
    }

    /// Copies of one publish sent on connections: the publisher floods its topic peers
    /// (`flood_publish`), every other host forwards once to its mesh peers but the one it
    /// heard it from. Duplicates included (they are what the mesh costs).
    pub fn copies(&self, hosts: usize) -> f64 {
        let p = Self::peers(hosts);
        let d = self.mesh.min(p);
        (p + hosts.saturating_sub(1) * d.saturating_sub(1)) as f64
    }

    /// IHAVE entries one publish causes: every host advertises its id to its gossip peers at
    /// `history_gossip` heartbeats (IWANT follow-ups are rare in a stable mesh: not counted).
    pub fn ihave_entries(&self, hosts: usize) -> f64 {
        let p = Self::peers(hosts);
        let non_mesh = p.saturating_sub(self.mesh.min(p));
        let targets = self
            .gossip_lazy
            .max((self.gossip_factor * non_mesh as f64) as usize)
            .min(non_mesh);
        (hosts * targets * self.history_gossip) as f64
    }

    /// Bytes of a gossipsub message carrying a `frame`-byte announcement, signed (rpc.proto:
    /// `from` 38-byte PeerId, `data`, `seqno` 8 bytes, `topic`, `signature` 64 bytes; no `key`,
    /// Ed25519 keys are inlined in the PeerId), inside an RPC with its length prefix.
    pub fn envelope(frame: u64) -> u64 {
        let field = |len: u64| 1 + varint_len(len) + len;
        let message = field(38) + field(frame) + field(8) + field(TOPIC as u64) + field(64);
        let rpc = field(message);
        varint_len(rpc) + rpc
    }

    /// The round's time at the simulated turns' rates of hand-offs and migrations.
    pub fn round(&self, c: &Counts) -> Projection {
        let v = c.vms as f64;
        let per = |x: u64| {
            if c.decisions == 0 {
                0.0
            } else {
                x as f64 / c.decisions as f64
            }
        };
        let handoffs = per(c.handoffs.messages / 2) * v;
        let per_host = v / c.hosts.max(1) as f64;
        let statistics_s = if c.stats_rounds > 0 {
            (c.hosts.saturating_sub(1) as f64 / 64.0).ceil() * self.stats_batch_s
        } else {
            0.0
        };
        Projection {
            decisions_s: v * self.decision_s,
            handoffs_s: handoffs
                * (self.handoff_fixed_s + self.handoff_per_byte_s * c.token_frame as f64),
            arrival_reads_s: handoffs
                * (self.inventory_read_fixed_s + per_host * self.inventory_read_per_vm_s),
            statistics_s,
            migrations_s: per(c.migrations) * v * self.migration_s,
        }
    }

    /// Every kind's traffic. Gossip publishes are fanned out to `copies` each; time-driven
    /// publishes (inventories every `republish_every`, heartbeats while a migration runs) take
    /// the round time from [`Model::round`], migrations included.
    pub fn rows(&self, c: &Counts) -> Vec<Row> {
        let n = c.hosts;
        let v = c.vms as f64;
        let d = c.decisions.max(1) as f64;
        let copies = self.copies(n);
        let round = self.round(c);
        let gossip = |t: &super::Tally| -> (f64, f64) {
            let frame = if t.messages > 0 {
                t.bytes as f64 / t.messages as f64
            } else {
                0.0
            };
            let each = Self::envelope(frame.round() as u64) as f64;
            (
                t.messages as f64 * copies,
                t.messages as f64 * copies * each,
            )
        };
        // Per decision from what the turns did; a round is `vms` decisions.
        let stepped = |kind, (m, b): (f64, f64)| Row {
            kind,
            messages_per_decision: m / d,
            bytes_per_decision: b / d,
            messages_per_round: m / d * v,
            bytes_per_round: b / d * v,
        };
        let per_round = |kind, (m, b): (f64, f64)| Row {
            kind,
            messages_per_decision: m / v,
            bytes_per_decision: b / v,
            messages_per_round: m,
            bytes_per_round: b,
        };
        let stats = if c.stats_rounds > 0 {
            let r = c.stats_rounds as f64;
            (c.stats.messages as f64 / r, c.stats.bytes as f64 / r)
        } else {
            (0.0, 0.0)
        };
        let period = crate::p2p::zombies::republish_every(n, self.republish_per_s);
        let republished = n as f64 * round.total_s() / period.as_secs_f64();
        let inventory_each = Self::envelope(c.inventory_frame.round() as u64) as f64;
        let republish = (republished * copies, republished * copies * inventory_each);
        // Steps beat at once; a migration's wait beats every `heartbeat_s` more.
        let beat_frame = if c.heartbeats.messages > 0 {
            c.heartbeats.bytes as f64 / c.heartbeats.messages as f64
        } else {
            0.0
        };
        let waiting_beats = (c.migrations as f64 * self.migration_s / self.heartbeat_s).floor();
        let beats = super::Tally {
            messages: c.heartbeats.messages + waiting_beats as u64,
            bytes: c.heartbeats.bytes + (waiting_beats * beat_frame) as u64,
        };
        let publishes_stepped =
            (c.migration_announces.messages + c.inventory_changes.messages + beats.messages) as f64;
        let ihave_each = self.ihave_entries(n);
        let mut rows = vec![
            stepped(
                Kind::Handoff,
                (c.handoffs.messages as f64, c.handoffs.bytes as f64),
            ),
            stepped(
                Kind::Capacity,
                (c.capacity.messages as f64, c.capacity.bytes as f64),
            ),
            stepped(
                Kind::Lookup,
                (c.lookups.messages as f64, c.lookups.bytes as f64),
            ),
            per_round(Kind::Statistics, stats),
            stepped(Kind::MigrationAnnounce, gossip(&c.migration_announces)),
            stepped(Kind::InventoryChange, gossip(&c.inventory_changes)),
            per_round(Kind::InventoryRepublish, republish),
            stepped(Kind::Heartbeat, gossip(&beats)),
        ];
        let ihave_stepped = publishes_stepped * ihave_each;
        let ihave_round = republished * ihave_each;
        let entry = self.ihave_entry as f64;
        rows.push(Row {
            kind: Kind::GossipIhave,
            messages_per_decision: ihave_stepped / d + ihave_round / v,
            bytes_per_decision: (ihave_stepped / d + ihave_round / v) * entry,
            messages_per_round: ihave_stepped / d * v + ihave_round,
            bytes_per_round: (ihave_stepped / d * v + ihave_round) * entry,
        });
        rows
    }
}
