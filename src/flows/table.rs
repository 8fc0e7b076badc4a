//! The flow table: for each local VM u and each partner v, the traffic between them (bytes each
//! way, packets) as an exponentially weighted rate, λ(u, v) in bytes/s.
//!
//! Pure data structure: no I/O, no clock, no hidden randomness. Every call that needs the time
//! takes `now` (a `Duration` since the caller's epoch); the eviction sampler is seeded from
//! [`TableConfig::seed`]. Memory is bounded by [`TableConfig::cap`].
//!
//! # Rate: an exponentially weighted moving average, not a sliding window
//! Each entry keeps three exponentially decayed sums (bytes out, bytes in, packets). Time is cut
//! into ticks of [`TableConfig::tick`]; every tick multiplies a sum by `d = e^(−tick/window)` and a
//! packet adds its size to the sum of its tick. The rate is `sum · (1 − d) / tick`, which for a
//! steady stream of `x` bytes per tick converges to exactly `x / tick` (read at a tick's end;
//! within a tick the partial tick makes a steady reading dip by up to `1 − d`, 3.3% with the
//! defaults). A new stream reaches 63% of its rate after one window. Why not a sliding window
//! of buckets: (1) O(1) state per series keeps an entry at 32 bytes, where `B` buckets per series
//! would cost `B` counters; (2) a burst fades smoothly instead of dropping off a cliff when it
//! leaves the window, so a decision taken on either side of a window edge sees nearly the same
//! λ, which is the stability the thesis asks for (§5.1.4: averaged over a window long enough to
//! ignore bursts); (3) an update in the current tick is one addition per sum.
//!
//! # Layout
//! One open-addressing table (linear probing, seeded hash, size not a power of two) of 32-byte
//! slots keyed by (VM, partner), so an update is one probe in one place. Each VM also has a
//! list of its slot indices (inline when it has one partner, else a power-of-two segment of a
//! shared arena), so reading λ(u,·) reads one short array and then u's slots with loads that do
//! not depend on one another; a linked chain would make every partner a dependent memory miss
//! (measured at ~0.3–0.4 µs each on the CI machine, against ~20 ns for independent loads).
//! Deleted entries become tombstones that stay in their VM's list until the next rebuild (growth,
//! or too many tombstones), which keeps the lists valid without back pointers. Per entry at the
//! cap: 32 bytes / 0.8 load = 40, plus ≤ 8 of list (1000 partners per VM) or 12 / 0.75 of VM
//! record (one partner per VM).
//!
//! # Bounds
//! Entries idle for [`TableConfig::idle`] expire ([`FlowTable::expire`], incremental). At
//! [`TableConfig::cap`] entries, inserting a new one evicts the lightest (smallest current
//! weight) of a few sampled entries and counts it in [`TableStats::evictions`].

use scored_proto::VmId;
use std::time::Duration;

/// Which way a frame went, seen from the local VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent by the local VM to the partner.
    Out,
    /// Received by the local VM from the partner.
    In,
}

/// How the table measures and bounds traffic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TableConfig {
    /// Granularity of time: decay is applied per tick. At least 100 ms.
    pub tick: Duration,
    /// Time constant of the moving average: traffic `window` ago weighs `1/e` of traffic now.
    pub window: Duration,
    /// An entry with no traffic for this long expires.
    pub idle: Duration,
    /// Hard cap on (VM, partner) entries; memory stays below about `cap × 64` bytes.
    pub cap: usize,
    /// Seeds the hash (so a VM cannot aim crafted partner addresses at one probe run) and the
    /// eviction sampler. The daemon passes a random value; tests a fixed one.
    pub seed: u64,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            tick: Duration::from_secs(1),
            window: Duration::from_secs(30),
            idle: Duration::from_secs(120),
            cap: 131_072,
            seed: 0x5c0e_f10a_7ab1_e5ed,
        }
    }
}

/// A configuration the table cannot work with.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TableError {
    #[error("flow table tick {0:?} is below the 100 ms minimum")]
    TickTooShort(Duration),
    #[error("flow table window {window:?} is shorter than its tick {tick:?}")]
    WindowBelowTick { window: Duration, tick: Duration },
    #[error("flow table idle timeout {idle:?} is shorter than its tick {tick:?}")]
    IdleBelowTick { idle: Duration, tick: Duration },
    #[error("flow table cap {0} is outside 1..=100000000")]
    Cap(usize),
}

/// One partner of a local VM as the table sees it at a given time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PartnerRate {
    pub partner: VmId,
    /// Bytes/s the local VM sends to the partner.
    pub out_bytes_per_sec: f64,
    /// Bytes/s the local VM receives from the partner.
    pub in_bytes_per_sec: f64,
    /// Frames/s both ways.
    pub packets_per_sec: f64,
    /// Time since the last frame between them (tick resolution).
    pub idle: Duration,
}

impl PartnerRate {
    /// λ(u, v): both directions summed, bytes/s.
    pub fn rate(&self) -> f64 {
        self.out_bytes_per_sec + self.in_bytes_per_sec
    }
}

/// One update for [`FlowTable::record_batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Update {
    pub vm: VmId,
    pub partner: VmId,
    pub dir: Direction,
    pub bytes: u64,
    pub packets: u64,
}

impl Update {
    fn key(&self) -> u64 {
        (self.vm.0 as u64) << 32 | self.partner.0 as u64
    }
}

/// A constant stream over whole ticks, for [`FlowTable::record_steady`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Steady {
    pub bytes_per_tick: f64,
    pub packets_per_tick: f64,
    pub ticks: u32,
}

/// Counters and sizes, for metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Live (VM, partner) entries.
    pub entries: usize,
    pub inserts: u64,
    pub expirations: u64,
    /// Entries dropped because the table was at its cap.
    pub evictions: u64,
    /// Entries dropped because their VM left the host.
    pub forgotten: u64,
    /// Updates refused (the VM id is the broadcast address, which no VM can have).
    pub rejected: u64,
    /// Full rehashes (growth, shrink or tombstone cleanup).
    pub rebuilds: u64,
    /// Slots allocated (live + tombstones + empty).
    pub slots: usize,
    /// Heap bytes held by the table.
    pub memory_bytes: usize,
}

const EMPTY: u64 = u64::MAX;
const GONE: u64 = u64::MAX - 1;
const NIL: u32 = u32::MAX;
/// The VM id no local VM can have (255.255.255.255); it marks free slots.
const FREE_VM: u32 = u32::MAX;
/// Live entries per slot at most; beyond it the table grows (until the cap's size).
const MAX_LIVE_LOAD: f64 = 0.8;
/// Live entries plus tombstones per slot at most; beyond it the table is rebuilt.
const MAX_USED_LOAD: f64 = 0.9;
/// Below this live load (after expiry) the table shrinks.
const MIN_LIVE_LOAD: f64 = 0.2;
const MIN_SLOTS: usize = 64;
/// Entries sampled to choose one to evict.
const EVICTION_SAMPLE: usize = 8;
/// Powers of `d` precomputed for small gaps (most gaps between updates are a tick or two).
const POWERS: usize = 64;

/// Allocates `n` copies of `fill`. Large arrays are first marked for transparent huge pages:
/// the table is probed at random, and with 4 KiB pages nearly every probe of a big table also
/// misses the TLB (doubly costly under a hypervisor's nested paging). The hint is given before
/// the memory is first touched, so the kernel can back it with 2 MiB pages from the start.
fn filled_vec<T: Copy>(n: usize, fill: T) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let bytes = n * size_of::<T>();
        if bytes >= 4 << 20 {
            let start = v.as_mut_ptr() as usize;
            let first = start.div_ceil(PAGE) * PAGE;
            let end = (start + bytes) / PAGE * PAGE;
            if end > first {
                // SAFETY: [first, end) lies inside the allocation just made; MADV_HUGEPAGE only
                // changes how the kernel backs it and never its contents. Failure is harmless.
                unsafe {
                    libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
                }
            }
        }
    }
    v.resize(n, fill);
    v
}

/// Asks the CPU to start loading `s` (a hint; no effect on results).
#[inline(always)]
fn prefetch<T>(s: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: prefetch is a hint: it never faults and has no architectural effect.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((s as *const T).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = s;
}

/// One (VM, partner) entry: 32 bytes, two per cache line.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Slot {
    /// `vm << 32 | partner`, or EMPTY / GONE.
    key: u64,
    /// Tick of the last update; the sums are as of this tick.
    tick: u32,
    /// Decayed frame count. f32 is enough for a figure only shown to operators (relative
    /// rounding 6e-8 per batch added); bytes, which the decision uses, stay f64.
    packets: f32,
    out: f64,
    inn: f64,
}

const FREE_SLOT: Slot = Slot {
    key: EMPTY,
    tick: 0,
    packets: 0.0,
    out: 0.0,
    inn: 0.0,
};

/// A VM and the list of its slots: with `len == 1`, `at` is the slot itself; with more, `at` is
/// where the list starts in the arena, in a segment of `len.next_power_of_two()` entries.
#[derive(Clone, Copy, Debug)]
struct Head {
    vm: u32,
    at: u32,
    len: u32,
}

const FREE_HEAD: Head = Head {
    vm: FREE_VM,
    at: 0,
    len: 0,
};

/// The flow table. See the module documentation.
#[derive(Clone, Debug)]
pub struct FlowTable {
    config: TableConfig,
    tick_ns: u64,
    idle_ticks: u32,
    /// `d^k` for `k < POWERS`.
    powers: [f64; POWERS],
    decay: f64,
    /// `(1 − d) / tick`: converts a decayed sum into a rate per second.
    rate_factor: f64,
    slots: Vec<Slot>,
    /// Segments of slot indices, one per VM with more than one entry (see [`Head`]). Segments
    /// outgrown by their VM stay as garbage until the next rebuild.
    arena: Vec<u32>,
    heads: Vec<Head>,
    head_count: usize,
    live: usize,
    gone: usize,
    max_slots: usize,
    /// Cache of the last `now → tick` conversion (a division per update is measurable).
    cached_tick: u32,
    cached_start_ns: u64,
    cached_end_ns: u64,
    expire_cursor: usize,
    rng: u64,
    stats: TableStats,
}

impl FlowTable {
    pub fn new(config: TableConfig) -> Result<Self, TableError> {
        if config.tick < Duration::from_millis(100) {
            return Err(TableError::TickTooShort(config.tick));
        }
        if config.window < config.tick {
            return Err(TableError::WindowBelowTick {
                window: config.window,
                tick: config.tick,
            });
        }
        if config.idle < config.tick {
            return Err(TableError::IdleBelowTick {
                idle: config.idle,
                tick: config.tick,
            });
        }
        if config.cap == 0 || config.cap > 100_000_000 {
            return Err(TableError::Cap(config.cap));
        }
        let tick_ns = config.tick.as_nanos().min(u64::MAX as u128) as u64;
        let decay = (-config.tick.as_secs_f64() / config.window.as_secs_f64()).exp();
        let mut powers = [1.0; POWERS];
        for k in 1..POWERS {
            powers[k] = powers[k - 1] * decay;
        }
        let idle_ticks = (config.idle.as_nanos() / tick_ns as u128).min(u32::MAX as u128) as u32;
        let max_slots = ((config.cap as f64 / MAX_LIVE_LOAD).ceil() as usize + 1).max(MIN_SLOTS);
        Ok(FlowTable {
            config,
            tick_ns,
            idle_ticks,
            powers,
            decay,
            rate_factor: (1.0 - decay) / config.tick.as_secs_f64(),
            slots: vec![FREE_SLOT; MIN_SLOTS],
            arena: Vec::new(),
            heads: vec![FREE_HEAD; MIN_SLOTS],
            head_count: 0,
            live: 0,
            gone: 0,
            max_slots,
            cached_tick: 0,
            cached_start_ns: 0,
            cached_end_ns: tick_ns,
            expire_cursor: 0,
            rng: config.seed | 1,
            stats: TableStats::default(),
        })
    }

    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// Live (VM, partner) entries.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn stats(&self) -> TableStats {
        TableStats {
            entries: self.live,
            slots: self.slots.len(),
            memory_bytes: self.slots.capacity() * size_of::<Slot>()
                + self.arena.capacity() * size_of::<u32>()
                + self.heads.capacity() * size_of::<Head>(),
            ..self.stats
        }
    }

    /// Accounts `bytes` and `packets` between local VM `vm` and `partner` at time `now`.
    ///
    /// Returns false (and counts it) when `vm` is 255.255.255.255, the one id no VM can have.
    #[inline]
    pub fn record(
        &mut self,
        vm: VmId,
        partner: VmId,
        dir: Direction,
        bytes: u64,
        packets: u64,
        now: Duration,
    ) -> bool {
        let tick = self.tick_cached(now);
        let (out, inn) = match dir {
            Direction::Out => (bytes as f64, 0.0),
            Direction::In => (0.0, bytes as f64),
        };
        self.add(vm, partner, tick, out, inn, packets as f64)
    }

    /// Accounts a batch of updates at `now`: the same as [`FlowTable::record`] for each, but the
    /// slot of each update is requested from memory a few updates ahead, so the cache misses of
    /// a batch overlap instead of following one another. Returns how many were refused.
    pub fn record_batch(&mut self, batch: &[Update], now: Duration) -> usize {
        const AHEAD: usize = 8;
        let tick = self.tick_cached(now);
        let mut refused = 0;
        for (k, u) in batch.iter().enumerate() {
            if let Some(a) = batch.get(k + AHEAD) {
                let n = self.slots.len();
                prefetch(&self.slots[self.home(a.key(), n)]);
            }
            let (out, inn) = match u.dir {
                Direction::Out => (u.bytes as f64, 0.0),
                Direction::In => (0.0, u.bytes as f64),
            };
            if !self.add(u.vm, u.partner, tick, out, inn, u.packets as f64) {
                refused += 1;
            }
        }
        refused
    }

    /// Accounts a steady stream: `steady.bytes_per_tick` and `steady.packets_per_tick` in each
    /// of the `steady.ticks` ticks that end with the tick of `now`, as if [`FlowTable::record`]
    /// were called once per tick (closed form, O(1) whatever the number of ticks). Used by the
    /// synthetic source.
    pub fn record_steady(
        &mut self,
        vm: VmId,
        partner: VmId,
        dir: Direction,
        steady: Steady,
        now: Duration,
    ) -> bool {
        let Steady {
            bytes_per_tick,
            packets_per_tick,
            ticks,
        } = steady;
        if ticks == 0 {
            return true;
        }
        let tick = self.tick_cached(now);
        // Σ_{j<ticks} d^j: the weight at `tick` of one unit added in each of those ticks.
        let series = if self.decay < 1.0 {
            (1.0 - self.decay_pow(ticks)) / (1.0 - self.decay)
        } else {
            ticks as f64
        };
        let (out, inn) = match dir {
            Direction::Out => (bytes_per_tick * series, 0.0),
            Direction::In => (0.0, bytes_per_tick * series),
        };
        self.add(vm, partner, tick, out, inn, packets_per_tick * series)
    }

    #[inline]
    fn add(
        &mut self,
        vm: VmId,
        partner: VmId,
        tick: u32,
        out: f64,
        inn: f64,
        packets: f64,
    ) -> bool {
        if vm.0 == FREE_VM {
            self.stats.rejected += 1;
            return false;
        }
        let key = (vm.0 as u64) << 32 | partner.0 as u64;
        let n = self.slots.len();
        let mut i = self.home(key, n);
        loop {
            let k = self.slots[i].key;
            if k == key {
                let last = self.slots[i].tick;
                let s = if tick > last {
                    let f = self.decay_pow(tick - last);
                    let s = &mut self.slots[i];
                    s.out *= f;
                    s.inn *= f;
                    s.packets *= f as f32;
                    s.tick = tick;
                    s
                } else {
                    &mut self.slots[i]
                };
                // An update stamped before the entry's tick (two capture threads racing to the
                // lock) is added undecayed: off by at most one tick of decay.
                s.out += out;
                s.inn += inn;
                s.packets += packets as f32;
                return true;
            }
            if k == EMPTY {
                break;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        self.insert(
            key,
            Slot {
                key,
                tick,
                packets: packets as f32,
                out,
                inn,
            },
        );
        true
    }

    /// λ(u, ·) at `now`: each partner of `vm` with its rate in bytes/s, both directions summed.
    pub fn partners(&self, vm: VmId, now: Duration) -> Vec<(VmId, f64)> {
        let tick = self.tick_of(now);
        let mut out = Vec::with_capacity(self.listed(vm));
        self.walk(vm, |s| {
            let f = self.decay_pow(tick.saturating_sub(s.tick)) * self.rate_factor;
            out.push((VmId(s.key as u32), (s.out + s.inn) * f));
        });
        out
    }

    /// Each partner of `vm` at `now`, directions and packets apart.
    pub fn partner_rates(&self, vm: VmId, now: Duration) -> Vec<PartnerRate> {
        let tick = self.tick_of(now);
        let mut out = Vec::with_capacity(self.listed(vm));
        self.walk(vm, |s| {
            let age = tick.saturating_sub(s.tick);
            let f = self.decay_pow(age) * self.rate_factor;
            out.push(PartnerRate {
                partner: VmId(s.key as u32),
                out_bytes_per_sec: s.out * f,
                in_bytes_per_sec: s.inn * f,
                packets_per_sec: s.packets as f64 * f,
                idle: Duration::from_nanos(self.tick_ns.saturating_mul(age as u64)),
            });
        });
        out
    }

    /// The decayed byte sums of (vm, partner) at `now`: `(out, in)`. With a window much longer
    /// than the traffic, these are the bytes exchanged (tests compare them with what was sent).
    pub fn decayed_bytes(&self, vm: VmId, partner: VmId, now: Duration) -> Option<(f64, f64)> {
        let tick = self.tick_of(now);
        let key = (vm.0 as u64) << 32 | partner.0 as u64;
        self.find(key).map(|i| {
            let s = &self.slots[i];
            let f = self.decay_pow(tick.saturating_sub(s.tick));
            (s.out * f, s.inn * f)
        })
    }

    /// Aggregate load of `vm` (all partners, both directions) at `now`, bytes/s.
    pub fn vm_load(&self, vm: VmId, now: Duration) -> f64 {
        let tick = self.tick_of(now);
        let mut sum = 0.0;
        self.walk(vm, |s| {
            sum += (s.out + s.inn) * self.decay_pow(tick.saturating_sub(s.tick));
        });
        sum * self.rate_factor
    }

    /// The local VMs that have at least one live entry, sorted.
    pub fn vms(&self) -> Vec<VmId> {
        let mut vms: Vec<VmId> = self
            .heads
            .iter()
            .filter(|h| h.vm != FREE_VM)
            .filter(|h| {
                let mut any = false;
                self.walk(VmId(h.vm), |_| any = true);
                any
            })
            .map(|h| VmId(h.vm))
            .collect();
        vms.sort_unstable();
        vms
    }

    /// Drops every entry of `vm` (it left this host: its traffic here says nothing any more).
    pub fn forget_vm(&mut self, vm: VmId) -> usize {
        let Some(h) = self.head_index(vm.0) else {
            return 0;
        };
        let head = self.heads[h];
        let mut dropped = 0;
        for k in 0..head.len {
            let i = self.list_entry(&head, k);
            let s = &mut self.slots[i];
            if s.key != GONE {
                s.key = GONE;
                dropped += 1;
            }
        }
        self.heads[h].len = 0;
        self.live -= dropped;
        self.gone += dropped;
        self.stats.forgotten += dropped as u64;
        dropped
    }

    /// Expires entries idle for longer than [`TableConfig::idle`] at `now`, examining at most
    /// `budget` slots from where the previous call stopped (so a caller holding a lock bounds
    /// how long it holds it). Returns the number expired. A full pass takes
    /// `stats().slots / budget` calls.
    pub fn expire(&mut self, now: Duration, budget: usize) -> usize {
        let tick = self.tick_of(now);
        let n = self.slots.len();
        let mut expired = 0;
        let mut i = self.expire_cursor.min(n);
        for _ in 0..budget.min(n) {
            if i >= n {
                i = 0;
            }
            let s = &mut self.slots[i];
            if s.key < GONE && tick.saturating_sub(s.tick) > self.idle_ticks {
                s.key = GONE;
                expired += 1;
            }
            i += 1;
        }
        self.expire_cursor = i;
        self.live -= expired;
        self.gone += expired;
        self.stats.expirations += expired as u64;
        if self.gone > 0 {
            if self.slots.len() > MIN_SLOTS && (self.live as f64) < MIN_LIVE_LOAD * n as f64 {
                let target = ((self.live as f64 / (2.0 * MIN_LIVE_LOAD)) as usize).max(MIN_SLOTS);
                self.rebuild(target);
            } else if (self.live + self.gone) as f64 > MAX_USED_LOAD * n as f64 || self.gone > n / 4
            {
                self.rebuild(n);
            }
        }
        expired
    }

    /// Expires every idle entry now (a full pass).
    pub fn expire_all(&mut self, now: Duration) -> usize {
        self.expire_cursor = 0;
        self.expire(now, self.slots.len())
    }

    /// The tick of `now`.
    fn tick_of(&self, now: Duration) -> u32 {
        let ns = now.as_nanos().min(u64::MAX as u128) as u64;
        (ns / self.tick_ns).min(u32::MAX as u64) as u32
    }

    #[inline]
    fn tick_cached(&mut self, now: Duration) -> u32 {
        let ns = now.as_nanos().min(u64::MAX as u128) as u64;
        if ns >= self.cached_start_ns && ns < self.cached_end_ns {
            return self.cached_tick;
        }
        let t = (ns / self.tick_ns).min(u32::MAX as u64);
        self.cached_tick = t as u32;
        self.cached_start_ns = t * self.tick_ns;
        self.cached_end_ns = self.cached_start_ns.saturating_add(self.tick_ns);
        self.cached_tick
    }

    #[inline]
    fn decay_pow(&self, k: u32) -> f64 {
        if (k as usize) < POWERS {
            self.powers[k as usize]
        } else {
            self.decay.powi(k.min(i32::MAX as u32) as i32)
        }
    }

    #[inline]
    fn hash(&self, key: u64) -> u64 {
        // murmur3's 64-bit finaliser over the seeded key: cheap and mixes every input bit.
        let mut h = key ^ self.config.seed;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    /// Maps a hash onto `0..n` without a division (Lemire's multiply-shift), so the table size
    /// need not be a power of two and can sit close to the cap.
    #[inline]
    fn home(&self, key: u64, n: usize) -> usize {
        ((self.hash(key) as u128 * n as u128) >> 64) as usize
    }

    fn find(&self, key: u64) -> Option<usize> {
        let n = self.slots.len();
        let mut i = self.home(key, n);
        loop {
            let k = self.slots[i].key;
            if k == key {
                return Some(i);
            }
            if k == EMPTY {
                return None;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// Slot index number `k` of the list of `head`.
    #[inline]
    fn list_entry(&self, head: &Head, k: u32) -> usize {
        if head.len == 1 {
            head.at as usize
        } else {
            self.arena[(head.at + k) as usize] as usize
        }
    }

    /// Length of `vm`'s list (live entries and tombstones).
    fn listed(&self, vm: VmId) -> usize {
        self.head_index(vm.0)
            .map_or(0, |h| self.heads[h].len as usize)
    }

    fn walk(&self, vm: VmId, mut f: impl FnMut(&Slot)) {
        let Some(h) = self.head_index(vm.0) else {
            return;
        };
        let head = self.heads[h];
        let list = match head.len {
            0 => &[][..],
            1 => std::slice::from_ref(&head.at),
            n => &self.arena[head.at as usize..(head.at + n) as usize],
        };
        const AHEAD: usize = 8;
        for (k, &i) in list.iter().enumerate() {
            if let Some(&j) = list.get(k + AHEAD) {
                prefetch(&self.slots[j as usize]);
            }
            let s = &self.slots[i as usize];
            // Tombstones keep their place in the list until the next rebuild.
            if s.key != GONE {
                f(s);
            }
        }
    }

    fn insert(&mut self, key: u64, slot: Slot) {
        if self.live >= self.config.cap {
            self.evict_one(slot.tick);
        }
        let n = self.slots.len();
        if (self.live + 1) as f64 > MAX_LIVE_LOAD * n as f64 && n < self.max_slots {
            let grown = (n + n / 2).min(self.max_slots);
            self.rebuild(grown);
        } else if (self.live + self.gone + 1) as f64 > MAX_USED_LOAD * n as f64
            || self.arena.len() > 4 * (self.live + self.gone) + 4096
        {
            // Too many tombstones, or lists outgrown many times over: lay everything out anew.
            self.rebuild(n);
        }
        let i = self.place(key, slot);
        self.link(i);
        self.live += 1;
        self.stats.inserts += 1;
    }

    /// Writes `slot` into the first empty slot of its probe run. Never reuses a tombstone: it may
    /// still be listed by some VM.
    fn place(&mut self, key: u64, slot: Slot) -> usize {
        let n = self.slots.len();
        let mut i = self.home(key, n);
        while self.slots[i].key != EMPTY {
            i += 1;
            if i == n {
                i = 0;
            }
        }
        self.slots[i] = slot;
        i
    }

    /// Appends slot `i` to its VM's list.
    fn link(&mut self, i: usize) {
        let vm = (self.slots[i].key >> 32) as u32;
        let h = match self.head_index(vm) {
            Some(h) => h,
            None => self.add_head(vm),
        };
        let Head { at, len, .. } = self.heads[h];
        let i = i as u32;
        match len {
            0 => self.heads[h].at = i,
            1 => {
                self.heads[h].at = self.arena.len() as u32;
                self.arena.extend_from_slice(&[at, i]);
            }
            // Full segment (its size is the next power of two): move to one twice as big.
            n if n.is_power_of_two() => {
                let new = self.arena.len();
                self.arena
                    .extend_from_within(at as usize..(at + n) as usize);
                self.arena.push(i);
                self.arena.resize(new + 2 * n as usize, NIL);
                self.heads[h].at = new as u32;
            }
            n => self.arena[(at + n) as usize] = i,
        }
        self.heads[h].len = len + 1;
    }

    fn head_home(&self, vm: u32, n: usize) -> usize {
        ((self.hash(vm as u64 ^ 0x9e37_79b9_0000_0000) as u128 * n as u128) >> 64) as usize
    }

    fn head_index(&self, vm: u32) -> Option<usize> {
        let n = self.heads.len();
        let mut i = self.head_home(vm, n);
        loop {
            let h = self.heads[i];
            if h.vm == vm {
                return Some(i);
            }
            if h.vm == FREE_VM {
                return None;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    fn add_head(&mut self, vm: u32) -> usize {
        let n = self.heads.len();
        if (self.head_count + 1) as f64 > MAX_USED_LOAD * n as f64 {
            let old = std::mem::replace(&mut self.heads, filled_vec(n + n / 2, FREE_HEAD));
            for h in old.into_iter().filter(|h| h.vm != FREE_VM) {
                self.put_head(h);
            }
        }
        self.head_count += 1;
        self.put_head(Head { vm, at: 0, len: 0 })
    }

    fn put_head(&mut self, head: Head) -> usize {
        let n = self.heads.len();
        let mut i = self.head_home(head.vm, n);
        while self.heads[i].vm != FREE_VM {
            i += 1;
            if i == n {
                i = 0;
            }
        }
        self.heads[i] = head;
        i
    }

    /// Rehashes every live entry into `n` slots, dropping tombstones and VMs left without
    /// entries, and lays every VM's list out again without garbage.
    fn rebuild(&mut self, n: usize) {
        let n = n.max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, filled_vec(n, FREE_SLOT));
        // Room for as many VMs as before at a 75% load (fewer if entries left with them).
        let heads = (self.head_count.min(self.live) as f64 / 0.75).ceil() as usize;
        self.heads = filled_vec(heads.max(MIN_SLOTS), FREE_HEAD);
        self.head_count = 0;
        // VMs with entries ≤ min(VMs, entries) ≤ 75% of the heads: `add_head` never regrows the
        // heads here, so the head indices kept in `placed` stay valid.
        let mut placed = Vec::with_capacity(self.live);
        for s in old.into_iter().filter(|s| s.key < GONE) {
            let i = self.place(s.key, s);
            let vm = (s.key >> 32) as u32;
            let h = match self.head_index(vm) {
                Some(h) => h,
                None => self.add_head(vm),
            };
            self.heads[h].len += 1;
            placed.push((i as u32, h as u32));
        }
        // Segments sized exactly to the next power of two, in one pass over the VMs.
        let mut end = 0u32;
        for head in self.heads.iter_mut().filter(|h| h.len > 1) {
            head.at = end;
            end += head.len.next_power_of_two();
        }
        self.arena = filled_vec(end as usize, NIL);
        let mut fill = vec![0u32; self.heads.len()];
        for (i, h) in placed {
            let head = &mut self.heads[h as usize];
            if head.len == 1 {
                head.at = i;
            } else {
                self.arena[(head.at + fill[h as usize]) as usize] = i;
                fill[h as usize] += 1;
            }
        }
        self.gone = 0;
        self.expire_cursor = 0;
        self.stats.rebuilds += 1;
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic from the configured seed.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Drops the lightest of a few sampled live entries: the one with the smallest decayed byte
    /// sum at `tick`, which is both the quietest and, among equals, the longest idle.
    fn evict_one(&mut self, tick: u32) {
        let n = self.slots.len();
        let mut victim: Option<(usize, f64)> = None;
        for _ in 0..EVICTION_SAMPLE {
            let mut i = ((self.next_random() as u128 * n as u128) >> 64) as usize;
            // Walk to the next live entry; the table is at least 70% live here, so this is short.
            let mut steps = 0;
            while self.slots[i].key >= GONE && steps < n {
                i = if i + 1 == n { 0 } else { i + 1 };
                steps += 1;
            }
            let s = &self.slots[i];
            if s.key >= GONE {
                continue;
            }
            let weight = (s.out + s.inn) * self.decay_pow(tick.saturating_sub(s.tick));
            if victim.is_none_or(|(_, w)| weight < w) {
                victim = Some((i, weight));
            }
        }
        if let Some((i, _)) = victim {
            self.slots[i].key = GONE;
            self.live -= 1;
            self.gone += 1;
            self.stats.evictions += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn table(window: u64, idle: u64, cap: usize) -> FlowTable {
        FlowTable::new(TableConfig {
            tick: SEC,
            window: Duration::from_secs(window),
            idle: Duration::from_secs(idle),
            cap,
            seed: 7,
        })
        .unwrap()
    }

    fn vm(n: u32) -> VmId {
        VmId(0x0a00_0000 + n)
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-9)
    }

    #[test]
    fn slot_is_thirty_two_bytes() {
        assert_eq!(size_of::<Slot>(), 32);
        assert_eq!(size_of::<Head>(), 12);
    }

    #[test]
    fn rejects_bad_configs() {
        let ok = TableConfig::default();
        let bad = |c: TableConfig| FlowTable::new(c).unwrap_err();
        assert!(matches!(
            bad(TableConfig {
                tick: Duration::from_millis(10),
                ..ok
            }),
            TableError::TickTooShort(_)
        ));
        assert!(matches!(
            bad(TableConfig {
                window: Duration::from_millis(500),
                ..ok
            }),
            TableError::WindowBelowTick { .. }
        ));
        assert!(matches!(
            bad(TableConfig {
                idle: Duration::from_millis(500),
                ..ok
            }),
            TableError::IdleBelowTick { .. }
        ));
        assert!(matches!(
            bad(TableConfig { cap: 0, ..ok }),
            TableError::Cap(0)
        ));
    }

    #[test]
    fn steady_rate_converges_to_the_exact_rate() {
        let mut t = table(10, 1000, 100);
        // 1000 bytes out and 500 in every second, in 10 frames each way.
        for s in 0..200u32 {
            for _ in 0..10 {
                t.record(vm(1), vm(2), Direction::Out, 100, 1, s * SEC);
                t.record(vm(1), vm(2), Direction::In, 50, 1, s * SEC);
            }
        }
        // Read at the start of the next tick: the sums hold whole ticks only.
        let r = t.partner_rates(vm(1), 200 * SEC);
        assert_eq!(r.len(), 1);
        // After 20 windows the start-up transient is e^-20 of the rate. The read happens one
        // tick after the last update, so everything has decayed once more by d.
        let d = (-0.1f64).exp();
        assert!(close(r[0].out_bytes_per_sec, 1000.0 * d, 1e-6), "{r:?}");
        assert!(close(r[0].in_bytes_per_sec, 500.0 * d, 1e-6), "{r:?}");
        assert!(close(r[0].packets_per_sec, 20.0 * d, 1e-6), "{r:?}");
        assert!(close(r[0].rate(), 1500.0 * d, 1e-6));
        assert_eq!(r[0].idle, SEC);
        let l = t.partners(vm(1), 199 * SEC);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].0, vm(2));
        assert!(close(l[0].1, 1500.0, 1e-6), "{l:?}");
    }

    #[test]
    fn step_response_follows_the_time_constant() {
        let mut t = table(10, 1000, 100);
        // A stream that starts at t=0: after one window the EWMA reads 1 − e^-1 of the rate.
        for s in 0..10u32 {
            t.record(vm(1), vm(2), Direction::Out, 1000, 1, s * SEC);
        }
        let r = t.partners(vm(1), 9 * SEC)[0].1;
        let expect = 1000.0 * (1.0 - (-1.0f64).exp());
        assert!(close(r, expect, 1e-9), "{r} vs {expect}");
        // It stops: 3 windows later only e^-3 of it is left.
        let later = t.partners(vm(1), 39 * SEC)[0].1;
        assert!(close(later, r * (-3.0f64).exp(), 1e-9), "{later}");
    }

    #[test]
    fn a_burst_fades_smoothly_and_its_bytes_are_kept() {
        let mut t = table(1_000_000, 1000, 100);
        // A very long window: the decayed sum is the byte count.
        t.record(vm(1), vm(2), Direction::Out, 123_456, 100, 5 * SEC);
        t.record(vm(1), vm(2), Direction::In, 654, 3, 6 * SEC);
        let (o, i) = t.decayed_bytes(vm(1), vm(2), 7 * SEC).unwrap();
        assert!(close(o, 123_456.0, 1e-5), "{o}");
        assert!(close(i, 654.0, 1e-5), "{i}");
        assert!(t.decayed_bytes(vm(2), vm(1), 7 * SEC).is_none());
    }

    #[test]
    fn steady_closed_form_matches_per_tick_updates() {
        let mut a = table(7, 1000, 100);
        let mut b = table(7, 1000, 100);
        a.record(vm(1), vm(2), Direction::Out, 5000, 5, Duration::ZERO);
        b.record(vm(1), vm(2), Direction::Out, 5000, 5, Duration::ZERO);
        for s in 1..=25u32 {
            a.record(vm(1), vm(2), Direction::In, 300, 2, s * SEC);
        }
        let steady = Steady {
            bytes_per_tick: 300.0,
            packets_per_tick: 2.0,
            ticks: 25,
        };
        b.record_steady(vm(1), vm(2), Direction::In, steady, 25 * SEC);
        let ra = a.partner_rates(vm(1), 30 * SEC)[0];
        let rb = b.partner_rates(vm(1), 30 * SEC)[0];
        assert!(close(ra.in_bytes_per_sec, rb.in_bytes_per_sec, 1e-9));
        assert!(close(ra.out_bytes_per_sec, rb.out_bytes_per_sec, 1e-9));
        assert!(close(ra.packets_per_sec, rb.packets_per_sec, 1e-6));
    }

    #[test]
    fn a_batch_is_the_same_as_one_by_one() {
        let mut a = table(10, 1000, 300);
        let mut b = table(10, 1000, 300);
        let batch: Vec<Update> = (0..500u32)
            .map(|i| Update {
                vm: vm(i % 5),
                partner: vm(100 + (i * 7) % 400),
                dir: if i % 3 == 0 {
                    Direction::In
                } else {
                    Direction::Out
                },
                bytes: 60 + i as u64,
                packets: 1,
            })
            .collect();
        for (n, chunk) in batch.chunks(64).enumerate() {
            let now = Duration::from_millis(700 * n as u64);
            for u in chunk {
                a.record(u.vm, u.partner, u.dir, u.bytes, u.packets, now);
            }
            b.record_batch(chunk, now);
        }
        assert_eq!(a.len(), b.len());
        assert_eq!(a.stats().evictions, b.stats().evictions);
        for u in 0..5 {
            let mut ra = a.partner_rates(vm(u), 5 * SEC);
            let mut rb = b.partner_rates(vm(u), 5 * SEC);
            ra.sort_by_key(|r| r.partner);
            rb.sort_by_key(|r| r.partner);
            assert_eq!(ra, rb);
        }
    }

    #[test]
    fn out_of_order_updates_are_added_without_decay() {
        let mut t = table(1_000_000, 1000, 100);
        t.record(vm(1), vm(2), Direction::Out, 100, 1, 10 * SEC);
        t.record(vm(1), vm(2), Direction::Out, 50, 1, 9 * SEC);
        let (o, _) = t.decayed_bytes(vm(1), vm(2), 10 * SEC).unwrap();
        assert!(close(o, 150.0, 1e-5));
    }

    #[test]
    fn partners_of_each_vm_are_apart() {
        let mut t = table(10, 1000, 10_000);
        for u in 1..=20 {
            for v in 100..(100 + u) {
                t.record(vm(u), vm(v), Direction::Out, (u * 1000 + v) as u64, 1, SEC);
            }
        }
        assert_eq!(t.len(), (1..=20).sum::<u32>() as usize);
        assert_eq!(t.vms(), (1..=20).map(vm).collect::<Vec<_>>());
        for u in 1..=20 {
            let mut p = t.partners(vm(u), SEC);
            p.sort_by_key(|x| x.0);
            let ids: Vec<VmId> = p.iter().map(|x| x.0).collect();
            assert_eq!(ids, (100..(100 + u)).map(vm).collect::<Vec<_>>());
            let d = t.rate_factor;
            for (v, r) in p {
                let expect = (u * 1000 + (v.0 - 0x0a00_0000)) as f64 * d;
                assert!(close(r, expect, 1e-9));
            }
        }
        assert!(t.partners(vm(99), SEC).is_empty());
    }

    #[test]
    fn broadcast_vm_is_rejected() {
        let mut t = table(10, 100, 10);
        assert!(!t.record(VmId(u32::MAX), vm(1), Direction::Out, 1, 1, SEC));
        assert_eq!(t.len(), 0);
        assert_eq!(t.stats().rejected, 1);
    }

    #[test]
    fn idle_entries_expire_and_busy_ones_stay() {
        let mut t = table(10, 5, 1000);
        for p in 0..100 {
            t.record(vm(1), vm(1000 + p), Direction::Out, 10, 1, SEC);
        }
        for p in 0..10 {
            t.record(vm(1), vm(1000 + p), Direction::Out, 10, 1, 5 * SEC);
        }
        // Idle for exactly 5 ticks: not yet.
        assert_eq!(t.expire_all(6 * SEC), 0);
        assert_eq!(t.expire_all(7 * SEC), 90);
        assert_eq!(t.len(), 10);
        assert_eq!(t.partners(vm(1), 7 * SEC).len(), 10);
        assert_eq!(t.stats().expirations, 90);
        // Incremental: a budget of one slot per call still gets there.
        let slots = t.stats().slots;
        let mut n = 0;
        for _ in 0..slots {
            n += t.expire(100 * SEC, 1);
        }
        assert_eq!(n, 10);
        assert!(t.is_empty());
        assert!(t.vms().is_empty());
        // Re-inserting after a full expiry works and the table shrank back.
        t.record(vm(1), vm(2), Direction::In, 1, 1, 100 * SEC);
        assert_eq!(t.partners(vm(1), 100 * SEC).len(), 1);
        assert!(t.stats().slots <= 2 * MIN_SLOTS);
    }

    #[test]
    fn cap_evicts_the_lightest_and_counts_it() {
        let cap = 1000;
        let mut t = table(10, 1000, cap);
        // 1000 entries, heavy ones and one-byte ones, then 500 more one-byte entries.
        for p in 0..cap as u32 {
            let bytes = if p % 2 == 0 { 1_000_000 } else { 1 };
            t.record(vm(1), vm(10_000 + p), Direction::Out, bytes, 1, SEC);
        }
        assert_eq!(t.stats().evictions, 0);
        for p in 0..500 {
            t.record(vm(2), vm(50_000 + p), Direction::In, 1, 1, SEC);
        }
        let s = t.stats();
        assert_eq!(t.len(), cap);
        assert_eq!(s.evictions, 500);
        // Sampling 8 when half the table is heavy: a heavy entry is evicted only when all 8
        // samples are heavy (p ≈ 0.4%); the heavy half must be nearly intact.
        let heavy = t
            .partners(vm(1), SEC)
            .into_iter()
            .filter(|(_, r)| *r > 1000.0)
            .count();
        assert!(heavy >= 480, "only {heavy} of 500 heavy entries left");
        // Memory stays bounded by the cap.
        assert!(s.slots <= t.max_slots);
    }

    #[test]
    fn forget_vm_drops_only_that_vm() {
        let mut t = table(10, 1000, 1000);
        for p in 0..50 {
            t.record(vm(1), vm(100 + p), Direction::Out, 1, 1, SEC);
            t.record(vm(2), vm(100 + p), Direction::Out, 1, 1, SEC);
        }
        assert_eq!(t.forget_vm(vm(1)), 50);
        assert_eq!(t.forget_vm(vm(1)), 0);
        assert!(t.partners(vm(1), SEC).is_empty());
        assert_eq!(t.partners(vm(2), SEC).len(), 50);
        // The VM comes back (migrated back): it starts from nothing.
        t.record(vm(1), vm(100), Direction::Out, 7, 1, 2 * SEC);
        assert_eq!(t.partners(vm(1), 2 * SEC).len(), 1);
        assert_eq!(t.len(), 51);
    }

    #[test]
    fn growth_and_churn_keep_every_entry_reachable() {
        let mut t = table(10, 3, 5000);
        let mut expect = std::collections::HashMap::new();
        for round in 0..20u32 {
            for i in 0..400u32 {
                let u = vm(i % 7);
                let v = vm(1000 + (i * 13 + round * 101) % 3000);
                t.record(u, v, Direction::Out, 1, 1, round * SEC);
                expect.insert((u, v), round);
            }
            t.expire(round * SEC, 1500);
        }
        let now = 19 * SEC;
        t.expire_all(now);
        expect.retain(|_, r| 19 - *r <= 3);
        let mut seen = 0;
        for u in t.vms() {
            for (v, _) in t.partners(u, now) {
                assert!(expect.contains_key(&(u, v)), "{u} {v} should have expired");
                seen += 1;
            }
        }
        assert_eq!(seen, expect.len());
        assert_eq!(t.len(), expect.len());
    }
}
