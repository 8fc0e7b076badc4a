//! The real flow source: AF_PACKET capture (through `pnet` datalink) on each local VM's tap.
//!
//! pnet opens and binds each tap's AF_PACKET socket; the thread then reads it without pnet's
//! receiver, which makes two system calls (poll, recvfrom) and copies the whole frame for every
//! frame (measured: 2.6 s of CPU per million frames on the CI machine). Instead:
//! - a TPACKET_V3 ring shared with the kernel ([`CaptureConfig::ring_bytes`]): the kernel writes
//!   the first [`SNAP`] bytes (a socket filter's snap length) and the whole length of each frame
//!   into blocks, and the thread walks a block of thousands of frames per wake-up, with no
//!   system call per frame;
//! - or, when the ring cannot be set up (or `ring_bytes` is 0), `recvmmsg(2)` with `MSG_TRUNC`:
//!   up to [`BATCH`] frames per call, headers copied, whole lengths reported, with wake-ups
//!   coalesced ([`CaptureConfig::coalesce`]).
//!
//! One thread per tap. Each thread attributes frames into a private [`TapTally`] and, at most
//! every [`CaptureConfig::flush_every`] (or when the tally is full), takes the shared table's
//! lock once to write the batch and to expire a bounded slice of idle entries. Readers
//! ([`FlowSource::partners`]) take the same lock for the length of one VM's walk. So nobody waits
//! on capture for more than one batch write, and capture never waits on a reader for more than
//! one walk; the kernel socket buffer ([`CaptureConfig::rcvbuf_bytes`]) absorbs the gap.
//!
//! Taps come and go as VMs migrate: [`CaptureSource::set_taps`] starts threads for new taps,
//! signals the threads of removed taps (they exit within [`CaptureConfig::poll`]; the caller is
//! never blocked on a join), and restarts taps whose capture failed (a tap deleted and
//! re-created). Sampling 1-in-N runs in the kernel (a classic BPF filter on the socket), so
//! unsampled frames cost no copy and no system call; the table gets each sampled frame × N.
//!
//! λ handed to the decision counts what each partner answers ([`super::answered`]); the table
//! keeps both directions as captured.
//!
//! Must not: decide anything, call the hypervisor, or block its caller.

use super::answered::answered_rate;
use super::attribute::{FrameCounters, Ipv6Aliases, Skip, TapTally};
use super::frame::Mac;
use super::table::{FlowTable, PartnerRate, TableConfig};
use super::{FlowError, FlowSource, Result, SourceStats, TapStatus};
use crate::hypervisor::Vm;
use pnet::datalink::{self, DataLinkReceiver, NetworkInterface};
use scored_proto::VmId;
use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How capture runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CaptureConfig {
    pub table: TableConfig,
    /// Keep one frame in N, chosen at random by the kernel (1 = every frame).
    pub sample_one_in: u32,
    /// How long an idle capture thread sleeps in poll(2) before it checks whether to stop.
    pub poll: Duration,
    /// Longest time attributed traffic waits in a thread's tally before reaching the table.
    pub flush_every: Duration,
    /// After a read that emptied the socket, wait this long before the next one so frames
    /// accumulate and are read many per system call, instead of one wake-up per frame. Adds at
    /// most this much delay to a rate averaged over seconds; the socket buffer holds the frames.
    pub coalesce: Duration,
    /// Table slots examined for expiry per flush (bounds the lock hold).
    pub expire_budget: usize,
    /// Socket receive buffer: how much the kernel holds while a thread is busy (`recvmmsg`).
    pub rcvbuf_bytes: usize,
    /// Size of each tap's TPACKET_V3 ring (kernel memory; 0: read with `recvmmsg` instead).
    pub ring_bytes: usize,
}

/// Bytes of each frame copied out of the kernel: Ethernet, two VLAN tags and an IPv6 header
/// take 62; the rest is never looked at.
pub const SNAP: usize = 128;
/// Frames read per system call at most.
pub const BATCH: usize = 64;

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            table: TableConfig::default(),
            sample_one_in: 1,
            poll: Duration::from_millis(100),
            flush_every: Duration::from_millis(50),
            coalesce: Duration::from_millis(2),
            expire_budget: 4096,
            rcvbuf_bytes: 8 << 20,
            ring_bytes: 4 << 20,
        }
    }
}

/// One tap to watch: its device name and the VM behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapSpec {
    pub name: String,
    /// `None`: learn it from the first IPv4 or ARP frame the VM sends (the debug command).
    pub vm: Option<VmId>,
    /// The VM's MAC address(es) on this tap: frames from them are the VM's, frames to them too.
    pub macs: Vec<Mac>,
}

struct Shared {
    table: Mutex<FlowTable>,
    epoch: Instant,
    aliases: Mutex<Arc<Ipv6Aliases>>,
    aliases_generation: AtomicU64,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, FlowTable> {
        // A capture thread never panics while holding the lock; if one did, the table is still
        // a consistent value (every write is a whole slot), so keep using it.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
}

/// What a capture thread publishes about itself.
#[derive(Default)]
struct TapShared {
    counters: Mutex<FrameCounters>,
    kernel_drops: AtomicU64,
    cpu_ns: AtomicU64,
    /// Learned VM id + 1 (0 = not learned yet).
    vm: AtomicU64,
    running: AtomicBool,
    /// The reader in use: true for the TPACKET_V3 ring, false for recvmmsg.
    ring: AtomicBool,
    error: Mutex<Option<String>>,
}

struct TapThread {
    spec: TapSpec,
    stop: Arc<AtomicBool>,
    status: Arc<TapShared>,
    handle: Option<JoinHandle<()>>,
}

/// The capture source. See the module documentation.
pub struct CaptureSource {
    config: CaptureConfig,
    shared: Arc<Shared>,
    taps: BTreeMap<String, TapThread>,
    /// Threads told to stop, joined once they have finished.
    stopping: Vec<TapThread>,
    /// Counters of taps no longer watched.
    retired: FrameCounters,
    retired_drops: u64,
    retired_cpu_ns: u64,
    remote_aliases: Ipv6Aliases,
    local_aliases: Ipv6Aliases,
}

impl CaptureSource {
    pub fn new(config: CaptureConfig) -> Result<Self> {
        let table = FlowTable::new(config.table)?;
        Ok(CaptureSource {
            config,
            shared: Arc::new(Shared {
                table: Mutex::new(table),
                epoch: Instant::now(),
                aliases: Mutex::new(Arc::new(Ipv6Aliases::new())),
                aliases_generation: AtomicU64::new(0),
            }),
            taps: BTreeMap::new(),
            stopping: Vec::new(),
            retired: FrameCounters::default(),
            retired_drops: 0,
            retired_cpu_ns: 0,
            remote_aliases: Ipv6Aliases::new(),
            local_aliases: Ipv6Aliases::new(),
        })
    }

    /// The time on this source's clock (the table's `now`).
    pub fn now(&self) -> Duration {
        self.shared.now()
    }

    /// IPv6 addresses of VMs on other hosts (from their announcements), so IPv6 traffic with
    /// them is attributed. Replaces the previous set.
    pub fn set_ipv6_aliases(&mut self, aliases: Ipv6Aliases) {
        self.remote_aliases = aliases;
        self.publish_aliases();
    }

    fn publish_aliases(&self) {
        let mut all = self.remote_aliases.clone();
        all.extend(self.local_aliases.iter().map(|(a, v)| (*a, *v)));
        *self
            .shared
            .aliases
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(all);
        self.shared
            .aliases_generation
            .fetch_add(1, Ordering::Release);
    }

    /// Watches exactly these taps: starts the new ones, stops those not listed (forgetting the
    /// traffic of VMs no longer behind any tap), restarts failed ones. Returns after starting
    /// threads; never waits for one to stop. Errors list the taps that could not be opened.
    pub fn set_taps(&mut self, specs: &[TapSpec]) -> Result<()> {
        self.reap();
        let wanted: BTreeMap<&str, &TapSpec> = specs.iter().map(|s| (s.name.as_str(), s)).collect();
        let mut departed: HashSet<VmId> = HashSet::new();
        let names: Vec<String> = self.taps.keys().cloned().collect();
        for name in names {
            let keep = match (wanted.get(name.as_str()), self.taps.get(&name)) {
                (Some(spec), Some(t)) => {
                    **spec == t.spec && t.status.running.load(Ordering::Acquire)
                }
                _ => false,
            };
            if !keep && let Some(t) = self.taps.remove(&name) {
                t.stop.store(true, Ordering::Release);
                if let Some(vm) = t.spec.vm.or_else(|| learned(&t.status)) {
                    departed.insert(vm);
                }
                self.stopping.push(t);
            }
        }
        let mut errors = Vec::new();
        for spec in specs {
            if self.taps.contains_key(&spec.name) {
                continue;
            }
            match self.start(spec) {
                Ok(t) => {
                    if let Some(vm) = spec.vm {
                        departed.remove(&vm);
                    }
                    self.taps.insert(spec.name.clone(), t);
                }
                Err(e) => errors.push(e),
            }
        }
        // A VM still behind another tap (or restarted on this one) keeps its traffic.
        for t in self.taps.values() {
            if let Some(vm) = t.spec.vm.or_else(|| learned(&t.status)) {
                departed.remove(&vm);
            }
        }
        if !departed.is_empty() {
            // The stop flags are set before this lock is taken and threads check them under
            // it, so no batch of a departed VM lands after its traffic is forgotten.
            let mut table = self.shared.table();
            for vm in departed {
                table.forget_vm(vm);
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(FlowError::Several(errors)),
        }
    }

    fn start(&self, spec: &TapSpec) -> Result<TapThread> {
        let err = |call: &'static str, e: io::Error| FlowError::Tap {
            tap: spec.name.clone(),
            vm: spec.vm,
            call,
            message: e.to_string(),
        };
        if spec.macs.is_empty() {
            return Err(FlowError::Tap {
                tap: spec.name.clone(),
                vm: spec.vm,
                call: "configure",
                message: "no MAC address given for the VM".into(),
            });
        }
        let (rx, fd, ring) = open(&spec.name, &self.config).map_err(|(call, e)| err(call, e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(TapShared {
            running: AtomicBool::new(true),
            ring: AtomicBool::new(ring.is_some()),
            ..TapShared::default()
        });
        let worker = Worker {
            spec: spec.clone(),
            rx,
            fd,
            ring,
            shared: self.shared.clone(),
            status: status.clone(),
            stop: stop.clone(),
            config: self.config,
            forged_logged: std::cell::Cell::new(false),
        };
        let handle = std::thread::Builder::new()
            .name(format!("capture-{}", spec.name))
            .spawn(move || worker.run())
            .map_err(|e| err("spawn capture thread", e))?;
        Ok(TapThread {
            spec: spec.clone(),
            stop,
            status,
            handle: Some(handle),
        })
    }

    /// Joins the stopped threads that have finished (never waits).
    fn reap(&mut self) {
        let mut still = Vec::new();
        for mut t in self.stopping.drain(..) {
            if t.handle.as_ref().is_some_and(|h| !h.is_finished()) {
                still.push(t);
                continue;
            }
            if let Some(h) = t.handle.take() {
                let _ = h.join();
            }
            self.retired.add(&lock(&t.status.counters));
            self.retired_drops += t.status.kernel_drops.load(Ordering::Acquire);
            self.retired_cpu_ns += t.status.cpu_ns.load(Ordering::Acquire);
        }
        self.stopping = still;
    }

    /// Every tap and its state.
    pub fn taps(&self) -> Vec<TapStatus> {
        self.taps
            .values()
            .map(|t| TapStatus {
                name: t.spec.name.clone(),
                vm: t.spec.vm.or_else(|| learned(&t.status)),
                frames: lock(&t.status.counters).frames,
                kernel_drops: t.status.kernel_drops.load(Ordering::Acquire),
                running: t.status.running.load(Ordering::Acquire),
                reader: if t.status.ring.load(Ordering::Acquire) {
                    "tpacket-v3 ring"
                } else {
                    "recvmmsg"
                },
                error: lock(&t.status.error).clone(),
            })
            .collect()
    }

    /// Stops every thread and waits for them (at most about one poll interval).
    pub fn shutdown(&mut self) {
        let all: Vec<TapThread> = std::mem::take(&mut self.taps).into_values().collect();
        for t in &all {
            t.stop.store(true, Ordering::Release);
        }
        self.stopping.extend(all);
        for t in &mut self.stopping {
            if let Some(h) = t.handle.take() {
                let _ = h.join();
            }
        }
        self.reap();
    }

    /// Runs `f` on the table (under its lock) at the source's current time.
    pub fn with_table<R>(&self, f: impl FnOnce(&FlowTable, Duration) -> R) -> R {
        let now = self.now();
        f(&self.shared.table(), now)
    }
}

impl Drop for CaptureSource {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn learned(status: &TapShared) -> Option<VmId> {
    match status.vm.load(Ordering::Acquire) {
        0 => None,
        v => Some(VmId((v - 1) as u32)),
    }
}

impl FlowSource for CaptureSource {
    fn follow(&mut self, vms: &[Vm]) -> Result<()> {
        let mut specs = Vec::new();
        let mut errors = Vec::new();
        self.local_aliases.clear();
        for vm in vms {
            for iface in &vm.interfaces {
                // Every known address of the VM: its IPv6 ones locate it as a partner, and all
                // of them (IPv4 as ::ffff:a.b.c.d) are its own end of the frames it exchanges.
                for a in &iface.addresses {
                    let key = match a {
                        IpAddr::V6(a) => a.octets(),
                        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                    };
                    self.local_aliases.insert(key, vm.id);
                }
                match &iface.tap {
                    Some(tap) => specs.push(TapSpec {
                        name: tap.clone(),
                        vm: Some(vm.id),
                        macs: vec![iface.mac],
                    }),
                    None => errors.push(FlowError::NoTap {
                        vm: vm.id,
                        mac: iface.mac,
                    }),
                }
            }
        }
        self.publish_aliases();
        if let Err(e) = self.set_taps(&specs) {
            match e {
                FlowError::Several(v) => errors.extend(v),
                e => errors.push(e),
            }
        }
        // A VM that left without a tap of its own still must not keep its old traffic.
        let local: HashSet<VmId> = vms.iter().map(|v| v.id).collect();
        {
            let mut table = self.shared.table();
            for vm in table.vms() {
                if !local.contains(&vm) {
                    table.forget_vm(vm);
                }
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(FlowError::Several(errors)),
        }
    }

    /// λ counts what each partner answers (`flows::answered`): a guest controls what it sends.
    fn partners(&self, vm: VmId) -> Vec<(VmId, f64)> {
        let now = self.now();
        let rates = self.shared.table().partner_rates(vm, now);
        rates
            .iter()
            .map(|r| (r.partner, answered_rate(r)))
            .filter(|(_, rate)| *rate > 0.0)
            .collect()
    }

    fn partner_rates(&self, vm: VmId) -> Vec<PartnerRate> {
        let now = self.now();
        self.shared.table().partner_rates(vm, now)
    }

    fn stats(&self) -> SourceStats {
        let mut frames = self.retired;
        let mut drops = self.retired_drops;
        let mut cpu = self.retired_cpu_ns;
        for t in self.taps.values().chain(&self.stopping) {
            frames.add(&lock(&t.status.counters));
            drops += t.status.kernel_drops.load(Ordering::Acquire);
            cpu += t.status.cpu_ns.load(Ordering::Acquire);
        }
        SourceStats {
            frames,
            table: self.shared.table().stats(),
            kernel_drops: drops,
            cpu: Duration::from_nanos(cpu),
            taps: self.taps(),
        }
    }
}

/// A bound capture socket: pnet's receiver, the descriptor it owns, and the ring if one was
/// set up.
type Opened = (Box<dyn DataLinkReceiver>, RawFd, Option<Ring>);

/// Opens an AF_PACKET socket on `name` with our options, then hands it to pnet.
fn open(
    name: &str,
    config: &CaptureConfig,
) -> std::result::Result<Opened, (&'static str, io::Error)> {
    let cname = CString::new(name).map_err(|_| {
        (
            "interface name",
            io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"),
        )
    })?;
    // SAFETY: `cname` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(("find interface", io::Error::last_os_error()));
    }
    // Protocol 0: the socket receives nothing until pnet binds it to this interface with
    // ETH_P_ALL, so no frame of another interface slips in between socket() and bind().
    // SAFETY: plain system call; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(("open AF_PACKET socket", io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let size = config.rcvbuf_bytes.min(i32::MAX as usize) as libc::c_int;
    // SO_RCVBUFFORCE ignores rmem_max (needs CAP_NET_ADMIN, which capture needs anyway);
    // fall back to the capped SO_RCVBUF.
    if setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        &size,
    )
    .is_err()
    {
        setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, &size)
            .map_err(|e| ("set receive buffer", e))?;
    }
    if config.sample_one_in > 1 {
        // Accept whole frames: with `recvmmsg`, a snap length would also cut the length the
        // kernel reports.
        attach_filter(fd.as_raw_fd(), config.sample_one_in, u32::MAX)
            .map_err(|e| ("attach sampling filter", e))?;
    }
    let iface = NetworkInterface {
        name: name.to_string(),
        description: String::new(),
        index,
        mac: None,
        ips: Vec::new(),
        flags: 0,
    };
    let raw = fd.into_raw_fd();
    let cfg = datalink::Config {
        // pnet's own read and write paths are not used (see the module documentation).
        read_buffer_size: 64,
        write_buffer_size: 64,
        read_timeout: Some(config.poll),
        // Taps and veths deliver every frame to AF_PACKET anyway; leave the device as it was.
        promiscuous: false,
        socket_fd: Some(raw),
        ..datalink::Config::default()
    };
    // pnet binds the socket to the interface and owns (and on error closes) the descriptor.
    match datalink::channel(&iface, cfg) {
        Ok(datalink::Channel::Ethernet(_tx, rx)) => {
            // A ring that cannot be had (old kernel, memory) is not fatal: recvmmsg works.
            let ring = (config.ring_bytes > 0)
                .then(|| Ring::new(raw, config.ring_bytes).ok())
                .flatten();
            if ring.is_some() {
                // The ring reports whole lengths whatever the snap: copy only the headers.
                attach_filter(raw, config.sample_one_in, SNAP as u32)
                    .map_err(|e| ("attach snap filter", e))?;
            }
            Ok((rx, raw, ring))
        }
        Ok(_) => Err((
            "open datalink channel",
            io::Error::other("pnet returned a non-Ethernet channel"),
        )),
        Err(e) => Err(("bind AF_PACKET socket", e)),
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` points to a live value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Classic BPF: keep a frame (its first `snap` bytes) when the kernel's per-packet random
/// number is 0 mod `n` (always, for `n` ≤ 1).
fn attach_filter(fd: RawFd, n: u32, snap: u32) -> io::Result<()> {
    let ins = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let mut sampled = [
        ins(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            0,
            0,
            (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32,
        ),
        ins(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, 0, 0, n),
        ins(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 1, 0),
        ins(libc::BPF_RET | libc::BPF_K, 0, 0, snap),
        ins(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
    ];
    let mut all = [ins(libc::BPF_RET | libc::BPF_K, 0, 0, snap)];
    let prog: &mut [libc::sock_filter] = if n > 1 { &mut sampled } else { &mut all };
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
}

/// Frames received and dropped by the kernel for this socket since the last call.
fn kernel_stats(fd: RawFd) -> Option<(u64, u64)> {
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: `st` and `len` are valid for the kernel to write.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    (r == 0).then_some((st.tp_packets as u64, st.tp_drops as u64))
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for the kernel to write.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The body of one capture thread.
struct Worker {
    spec: TapSpec,
    /// pnet's receiver: owns the socket (closes it when dropped). Its read path is not used.
    #[allow(dead_code)]
    rx: Box<dyn DataLinkReceiver>,
    /// The socket `rx` owns; valid as long as `rx` lives.
    fd: RawFd,
    ring: Option<Ring>,
    shared: Arc<Shared>,
    status: Arc<TapShared>,
    stop: Arc<AtomicBool>,
    config: CaptureConfig,
    /// Whether this tap's forged frames were logged (once per tap: a guest may send millions).
    forged_logged: std::cell::Cell<bool>,
}

impl Worker {
    fn run(mut self) {
        let mut tally = TapTally::new(
            self.spec.vm,
            self.spec.macs.clone(),
            self.config.sample_one_in,
        );
        let mut batch = None;
        let mut ring = self.ring.take();
        let mut generation = u64::MAX;
        let mut aliases = Arc::new(Ipv6Aliases::new());
        let mut last_flush = Instant::now();
        let poll_ms = self.config.poll.as_millis().clamp(1, i32::MAX as u128) as i32;
        let failure = loop {
            if self.stop.load(Ordering::Acquire) {
                break None;
            }
            let g = self.shared.aliases_generation.load(Ordering::Acquire);
            if g != generation {
                generation = g;
                aliases = lock(&self.shared.aliases).clone();
            }
            let mut account = |headers: &[u8], len: usize| {
                if tally.frame_captured(headers, len, &aliases) {
                    self.flush(&mut tally);
                    last_flush = Instant::now();
                }
            };
            let read = match ring.as_mut() {
                Some(r) => r.read(poll_ms, &mut account),
                None => batch
                    .get_or_insert_with(|| BatchReader::new(self.fd))
                    .read(poll_ms, &mut account),
            };
            match read {
                Ok(0) => {
                    // Idle: still flush, publish, and expire, so quiet hosts age out too.
                    self.flush(&mut tally);
                    last_flush = Instant::now();
                }
                Ok(n) => {
                    if last_flush.elapsed() >= self.config.flush_every {
                        self.flush(&mut tally);
                        last_flush = Instant::now();
                    }
                    if ring.is_none() && n < BATCH && !self.config.coalesce.is_zero() {
                        std::thread::sleep(self.config.coalesce);
                    }
                }
                Err(e) => break Some(e),
            }
        };
        // The ring is unmapped before pnet's receiver closes the socket.
        drop(ring);
        if let Some(e) = failure {
            // The tap went away (VM stopped or migrated) or the socket broke: keep what was
            // counted, say why, and let `set_taps` restart it if the tap is still wanted.
            *lock(&self.status.error) = Some(format!("read from tap {}: {e}", self.spec.name));
        }
        self.flush(&mut tally);
        self.status.running.store(false, Ordering::Release);
        // `self.rx` (pnet's receiver, owner of the socket) is dropped here, closing it.
    }

    fn flush(&self, tally: &mut TapTally) {
        {
            let mut table = self.shared.table();
            if self.stop.load(Ordering::Acquire) {
                tally.discard();
            } else {
                let now = self.shared.now();
                tally.flush(&mut table, now);
                table.expire(now, self.config.expire_budget);
            }
        }
        if let Some(vm) = tally.vm() {
            self.status.vm.store(vm.0 as u64 + 1, Ordering::Release);
        }
        let counters = tally.take_counters();
        let forged = counters.skipped(Skip::Spoofed) + counters.skipped(Skip::Misaddressed);
        if forged > 0 && !self.forged_logged.replace(true) {
            tracing::warn!(
                tap = %self.spec.name,
                vm = ?tally.vm().map(|v| v.to_string()),
                frames = forged,
                "capture: frames from or to an address not the VM's own; not counted as traffic (logged once per tap, counted in scored_flow_spoofed_total)"
            );
        }
        lock(&self.status.counters).add(&counters);
        if let Some((_, drops)) = kernel_stats(self.fd) {
            self.status.kernel_drops.fetch_add(drops, Ordering::AcqRel);
        }
        self.status
            .cpu_ns
            .store(thread_cpu().as_nanos() as u64, Ordering::Release);
    }
}

/// Reads frames from an AF_PACKET socket in batches: headers copied, whole lengths reported.
struct BatchReader {
    fd: RawFd,
    bufs: Box<[[u8; SNAP]; BATCH]>,
    /// Only read by the kernel, through `msgs`; kept here so it lives as long as they do.
    #[allow(dead_code)]
    iov: Box<[libc::iovec; BATCH]>,
    msgs: Box<[libc::mmsghdr; BATCH]>,
}

impl BatchReader {
    fn new(fd: RawFd) -> Self {
        let mut bufs = Box::new([[0u8; SNAP]; BATCH]);
        let mut iov: Box<[libc::iovec; BATCH]> = Box::new(
            [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; BATCH],
        );
        for (v, b) in iov.iter_mut().zip(bufs.iter_mut()) {
            v.iov_base = b.as_mut_ptr().cast();
            v.iov_len = SNAP;
        }
        // SAFETY: mmsghdr is plain data for which all-zero is a valid value.
        let mut msgs: Box<[libc::mmsghdr; BATCH]> = Box::new(unsafe { std::mem::zeroed() });
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        BatchReader {
            fd,
            bufs,
            iov,
            msgs,
        }
    }

    /// Reads the frames waiting (up to [`BATCH`]), waiting up to `poll_ms` for the first, and
    /// hands each to `f` as (headers, whole length). Returns how many; 0 when none came in time.
    fn read(&mut self, poll_ms: i32, f: &mut impl FnMut(&[u8], usize)) -> io::Result<usize> {
        let n = self.receive(poll_ms)?;
        for k in 0..n {
            let len = self.msgs[k].msg_len as usize;
            f(&self.bufs[k][..len.min(SNAP)], len);
        }
        Ok(n)
    }

    fn receive(&mut self, poll_ms: i32) -> io::Result<usize> {
        loop {
            // SAFETY: `msgs` points to BATCH headers whose iovecs point into `bufs`, all owned
            // by `self` (boxed, so they do not move) and valid for the kernel to write.
            let n = unsafe {
                libc::recvmmsg(
                    self.fd,
                    self.msgs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    std::ptr::null_mut(),
                )
            };
            if n > 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => {}
                _ => return Err(e),
            }
            if !wait_readable(self.fd, poll_ms)? {
                return Ok(0);
            }
        }
    }
}

/// The pending error of a socket that poll(2) flagged without data (e.g. ENETDOWN when the tap
/// was deleted).
/// Waits up to `poll_ms` for `fd` to become readable: `Ok(true)` when the caller should try its
/// read again (readable, or the wait was interrupted), `Ok(false)` on timeout, an error when the
/// socket reports one.
fn wait_readable(fd: RawFd, poll_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, poll_ms) };
    if r == 0 {
        return Ok(false);
    }
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(true);
        }
        return Err(e);
    }
    if p.revents & libc::POLLIN == 0 {
        return Err(socket_error(fd, p.revents));
    }
    Ok(true)
}

fn socket_error(fd: RawFd, revents: libc::c_short) -> io::Error {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for the kernel to write.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if err != 0 {
        io::Error::from_raw_os_error(err)
    } else if revents & (libc::POLLHUP | libc::POLLNVAL) != 0 {
        io::Error::other(format!("socket closed (poll events {revents:#x})"))
    } else {
        io::Error::other(format!("poll returned events {revents:#x} without data"))
    }
}

/// A TPACKET_V3 receive ring mapped from the kernel: blocks of frames (headers only, whole
/// lengths), handed over block by block through each block's status word.
struct Ring {
    fd: RawFd,
    map: *mut u8,
    block_size: usize,
    blocks: usize,
    next: usize,
}

// SAFETY: the mapping belongs to this value alone (one capture thread reads it); moving it to
// that thread is the only transfer.
unsafe impl Send for Ring {}

/// Size of one ring block: a power-of-two number of pages, small enough to allocate on a busy
/// host, large enough for ~1500 frames of headers.
const RING_BLOCK: usize = 256 << 10;
/// A block is handed over when full or after this many milliseconds, whichever comes first.
const RING_BLOCK_TIMEOUT_MS: u32 = 8;

impl Ring {
    fn new(fd: RawFd, bytes: usize) -> io::Result<Ring> {
        let version = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_VERSION, &version)?;
        let blocks = (bytes / RING_BLOCK).max(2);
        let frame_size = 2048usize;
        let req = libc::tpacket_req3 {
            tp_block_size: RING_BLOCK as u32,
            tp_block_nr: blocks as u32,
            tp_frame_size: frame_size as u32,
            tp_frame_nr: (RING_BLOCK / frame_size * blocks) as u32,
            tp_retire_blk_tov: RING_BLOCK_TIMEOUT_MS,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        let len = RING_BLOCK * blocks;
        // SAFETY: maps the ring the kernel just allocated for `fd`; checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Ring {
            fd,
            map: map.cast(),
            block_size: RING_BLOCK,
            blocks,
            next: 0,
        })
    }

    /// Hands every frame of the next full (or timed-out) block to `f` as (headers, whole
    /// length) and gives the block back, waiting up to `poll_ms` for one. Returns the number of
    /// frames; 0 when no block came in time.
    fn read(&mut self, poll_ms: i32, f: &mut impl FnMut(&[u8], usize)) -> io::Result<usize> {
        use std::sync::atomic::{AtomicU32, fence};
        loop {
            // SAFETY: block `next` lies inside the mapping; its descriptor starts the block.
            let block = unsafe { self.map.add(self.next * self.block_size) };
            // SAFETY: block_status is an aligned u32 inside the block descriptor, shared with
            // the kernel, which hands the block over by setting TP_STATUS_USER.
            let status = unsafe {
                let desc = block.cast::<libc::tpacket_block_desc>();
                &*(std::ptr::addr_of!((*desc).hdr.bh1.block_status) as *const AtomicU32)
            };
            if status.load(Ordering::Acquire) & libc::TP_STATUS_USER != 0 {
                // SAFETY: the block is ours until we set its status back; the kernel wrote a
                // valid header.
                let hdr = unsafe { (*block.cast::<libc::tpacket_block_desc>()).hdr.bh1 };
                let n = hdr.num_pkts as usize;
                let mut at = hdr.offset_to_first_pkt as usize;
                for _ in 0..n {
                    if at + size_of::<libc::tpacket3_hdr>() > self.block_size {
                        break;
                    }
                    // SAFETY: `at` was checked to leave room for a frame header in the block.
                    let h = unsafe {
                        std::ptr::read_unaligned(block.add(at).cast::<libc::tpacket3_hdr>())
                    };
                    let start = at + h.tp_mac as usize;
                    let snap = h.tp_snaplen as usize;
                    if start + snap > self.block_size {
                        break;
                    }
                    // SAFETY: [start, start + snap) was checked to lie inside the block.
                    let headers = unsafe { std::slice::from_raw_parts(block.add(start), snap) };
                    f(headers, h.tp_len as usize);
                    if h.tp_next_offset == 0 {
                        break;
                    }
                    at += h.tp_next_offset as usize;
                }
                fence(Ordering::Release);
                status.store(libc::TP_STATUS_KERNEL, Ordering::Release);
                self.next = (self.next + 1) % self.blocks;
                return Ok(n);
            }
            if !wait_readable(self.fd, poll_ms)? {
                return Ok(0);
            }
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.map.cast(), self.block_size * self.blocks) };
    }
}
