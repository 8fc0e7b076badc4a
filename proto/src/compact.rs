//! Hand-packed sections of the wire format where postcard's generic encoding would cost too
//! much: sets of VM ids (as runs of consecutive ids), token slots (columns of packed flags and
//! load classes) and the global policy's schedule (zig-zag deltas of slot indices).
//!
//! Every reader here bounds a count by the bytes that remain BEFORE it allocates, and checks
//! every sum for overflow: a hostile length can never make us reserve memory or panic.

use crate::{Slot, VmId};

/// Largest level a slot can carry: the slot's flag byte keeps bit 7 for `visited`.
pub const MAX_SLOT_LEVEL: u8 = 0x7f;
const VISITED_BIT: u8 = 0x80;

/// A problem in a packed section; the codec wraps it with the message name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

impl Malformed {
    fn new(msg: impl Into<String>) -> Self {
        Malformed(msg.into())
    }
}

/// A cursor over input bytes; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    #[cfg(test)]
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], Malformed> {
        if n > self.buf.len() {
            return Err(Malformed(format!(
                "{what}: needs {n} bytes but only {} remain",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Unsigned LEB128, as postcard writes integers; rejects values wider than `bits` and
    /// over-long encodings, so every value has exactly one encoding.
    pub(crate) fn varint(&mut self, bits: u32, what: &str) -> Result<u64, Malformed> {
        let max_bytes = bits.div_ceil(7) as usize;
        let mut value: u64 = 0;
        for i in 0..max_bytes {
            let Some((&b, tail)) = self.buf.split_first() else {
                return Err(Malformed(format!("{what}: input ends inside a varint")));
            };
            self.buf = tail;
            let shift = 7 * i as u32;
            let chunk = u64::from(b & 0x7f);
            if shift + 7 > bits && chunk >> (bits - shift) != 0 {
                return Err(Malformed(format!("{what}: varint exceeds {bits} bits")));
            }
            value |= chunk << shift;
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(Malformed(format!("{what}: over-long varint")));
                }
                return Ok(value);
            }
        }
        Err(Malformed(format!("{what}: varint exceeds {bits} bits")))
    }

    /// A count that will size an allocation: at most `max`, and at most what `bytes_each` bytes
    /// per item in the remaining input can hold.
    pub(crate) fn count(
        &mut self,
        max: usize,
        bytes_each: usize,
        what: &str,
    ) -> Result<usize, Malformed> {
        let n = self.varint(64, what)?;
        if n > max as u64 {
            return Err(Malformed(format!("{what}: {n} exceeds the limit of {max}")));
        }
        let n = n as usize;
        if n.saturating_mul(bytes_each) > self.buf.len() {
            return Err(Malformed(format!(
                "{what}: {n} items cannot fit in the {} bytes that remain",
                self.buf.len()
            )));
        }
        Ok(n)
    }
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Writes strictly increasing ids as runs of consecutive ids:
/// `runs: varint`, then per run `gap: varint, len-1: varint`, where the first run's gap is its
/// first id and later gaps count the ids skipped since the previous run ended. Dense addresses
/// (a data centre's VMs) cost a few bytes per subnet instead of bytes per VM.
pub(crate) fn put_id_runs(out: &mut Vec<u8>, ids: impl Iterator<Item = u32> + Clone) {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for id in ids {
        match runs.last_mut() {
            Some((start, len)) if u64::from(*start) + u64::from(*len) == u64::from(id) => {
                *len += 1;
            }
            _ => runs.push((id, 1)),
        }
    }
    put_varint(out, runs.len() as u64);
    let mut next: u64 = 0;
    for (start, len) in runs {
        put_varint(out, u64::from(start) - next);
        put_varint(out, u64::from(len - 1));
        next = u64::from(start) + u64::from(len) + 1;
    }
}

/// Reads runs written by [`put_id_runs`] into exactly `n` strictly increasing ids.
pub(crate) fn read_id_runs(
    r: &mut Reader<'_>,
    n: usize,
    what: &str,
) -> Result<Vec<VmId>, Malformed> {
    // Each run takes at least two bytes and holds at least one id.
    let runs = r.count(n, 2, what)?;
    let mut ids = Vec::with_capacity(n);
    // One past the last id allowed to start the next run (a gap of 0 still leaves a hole of one
    // id, otherwise the two runs would have been one).
    let mut next: u64 = 0;
    for _ in 0..runs {
        let gap = r.varint(32, what)?;
        let len = r.varint(32, what)? + 1;
        let start = next + gap;
        let end = start + len; // exclusive; both < 2^34, no overflow in u64
        if end > 1 << 32 {
            return Err(Malformed::new(format!(
                "{what}: a run of ids passes 255.255.255.255"
            )));
        }
        if ids.len() as u64 + len > n as u64 {
            return Err(Malformed::new(format!(
                "{what}: runs hold more than the {n} ids announced"
            )));
        }
        ids.extend((start..end).map(|v| VmId(v as u32)));
        next = end + 1;
    }
    if ids.len() != n {
        return Err(Malformed::new(format!(
            "{what}: runs hold {} ids, {n} announced",
            ids.len()
        )));
    }
    Ok(ids)
}

/// Ids must be strictly increasing to be written as runs.
pub(crate) fn check_sorted(ids: impl Iterator<Item = VmId>, what: &str) -> Result<(), Malformed> {
    let mut last: Option<VmId> = None;
    for id in ids {
        if let Some(l) = last
            && id <= l
        {
            return Err(Malformed::new(format!(
                "{what}: ids must be sorted and unique ({id} follows {l})"
            )));
        }
        last = Some(id);
    }
    Ok(())
}

/// Writes a set of ids: `n: varint` then runs. Sorts and de-duplicates a copy when needed.
pub(crate) fn put_id_set(out: &mut Vec<u8>, ids: &[VmId]) {
    if check_sorted(ids.iter().copied(), "").is_ok() {
        put_varint(out, ids.len() as u64);
        put_id_runs(out, ids.iter().map(|v| v.0));
    } else {
        let mut v = ids.to_vec();
        v.sort_unstable();
        v.dedup();
        put_varint(out, v.len() as u64);
        put_id_runs(out, v.iter().map(|v| v.0));
    }
}

pub(crate) fn read_id_set(
    r: &mut Reader<'_>,
    max: usize,
    what: &str,
) -> Result<Vec<VmId>, Malformed> {
    // A run of n ids takes at least 2 bytes, so n itself is not bounded by the input: bound it by
    // the limit, and let read_id_runs fill exactly n without over-allocating.
    let n = r.varint(64, what)?;
    if n > max as u64 {
        return Err(Malformed::new(format!(
            "{what}: {n} ids exceed the limit of {max}"
        )));
    }
    read_id_runs(r, n as usize, what)
}

/// Token slots: `n: varint`, the ids as runs, then `n` flag bytes (bit 7 visited, bits 0..6
/// level) and `n` load-class bytes. Columns rather than records so that the constant-ish columns
/// stay cheap to compress later without a format change to the others.
pub(crate) fn put_slots(out: &mut Vec<u8>, slots: &[Slot]) -> Result<(), Malformed> {
    check_sorted(slots.iter().map(|s| s.vm), "token slots")?;
    put_varint(out, slots.len() as u64);
    put_id_runs(out, slots.iter().map(|s| s.vm.0));
    out.reserve(2 * slots.len());
    for s in slots {
        if s.level > MAX_SLOT_LEVEL {
            return Err(Malformed::new(format!(
                "token slot {}: level {} exceeds {MAX_SLOT_LEVEL}",
                s.vm, s.level
            )));
        }
        out.push(s.level | if s.visited { VISITED_BIT } else { 0 });
    }
    out.extend(slots.iter().map(|s| s.load));
    Ok(())
}

pub(crate) fn read_slots(r: &mut Reader<'_>, max: usize) -> Result<Vec<Slot>, Malformed> {
    let what = "token slots";
    // Every slot costs two column bytes, which bounds n by the input before anything is reserved.
    let n = r.count(max, 2, what)?;
    let ids = read_id_runs(r, n, what)?;
    let flags = r.bytes(n, "token slot flags")?;
    let loads = r.bytes(n, "token slot loads")?;
    Ok(ids
        .into_iter()
        .zip(flags.iter().zip(loads))
        .map(|(vm, (&f, &load))| Slot {
            vm,
            level: f & MAX_SLOT_LEVEL,
            visited: f & VISITED_BIT != 0,
            load,
        })
        .collect())
}

/// The global policy's order: `m: varint`, then each VM as the zig-zag delta of its slot index
/// from the previous entry's. Every entry must name a slot, at most once.
pub(crate) fn put_schedule(
    out: &mut Vec<u8>,
    schedule: &[VmId],
    slots: &[Slot],
) -> Result<(), Malformed> {
    put_varint(out, schedule.len() as u64);
    let mut prev: i64 = 0;
    for vm in schedule {
        let Ok(i) = slots.binary_search_by_key(vm, |s| s.vm) else {
            return Err(Malformed::new(format!(
                "token schedule names VM {vm}, which has no slot"
            )));
        };
        put_varint(out, zigzag(i as i64 - prev));
        prev = i as i64;
    }
    Ok(())
}

pub(crate) fn read_schedule(r: &mut Reader<'_>, slots: &[Slot]) -> Result<Vec<VmId>, Malformed> {
    let what = "token schedule";
    let m = r.count(slots.len(), 1, what)?;
    let mut seen = vec![0u64; slots.len().div_ceil(64)];
    let mut out = Vec::with_capacity(m);
    let mut prev: i64 = 0;
    for _ in 0..m {
        let d = unzigzag(r.varint(64, what)?);
        let i = prev
            .checked_add(d)
            .filter(|i| *i >= 0 && (*i as usize) < slots.len());
        let Some(i) = i else {
            return Err(Malformed::new(format!(
                "{what}: entry points outside the {} slots",
                slots.len()
            )));
        };
        let iu = i as usize;
        if seen[iu / 64] & (1 << (iu % 64)) != 0 {
            return Err(Malformed::new(format!(
                "{what}: VM {} appears twice",
                slots[iu].vm
            )));
        }
        seen[iu / 64] |= 1 << (iu % 64);
        out.push(slots[iu].vm);
        prev = i;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint_roundtrip(v: u64) -> u64 {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        let mut r = Reader::new(&out);
        let got = r.varint(64, "v").unwrap();
        assert_eq!(r.remaining(), 0);
        got
    }

    #[test]
    fn varints_match_postcard() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            assert_eq!(varint_roundtrip(v), v);
            let mut ours = Vec::new();
            put_varint(&mut ours, v);
            assert_eq!(ours, postcard::to_stdvec(&v).unwrap());
        }
    }

    #[test]
    fn varint_rejects_overflow_and_overlong() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x1f]);
        assert!(r.varint(32, "v").is_err());
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(r.varint(32, "v").unwrap(), u32::MAX as u64);
        let mut r = Reader::new(&[0x80, 0x00]);
        assert!(r.varint(32, "v").is_err());
        let mut r = Reader::new(&[0x80]);
        assert!(r.varint(32, "v").is_err());
        let mut r = Reader::new(&[0xff; 11]);
        assert!(r.varint(64, "v").is_err());
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(r.varint(64, "v").unwrap(), u64::MAX);
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
        assert!(r.varint(64, "v").is_err());
    }

    #[test]
    fn id_runs_roundtrip_including_extremes() {
        for ids in [
            vec![],
            vec![0],
            vec![u32::MAX],
            vec![0, 1, 2, 4, 5, u32::MAX - 1, u32::MAX],
            (100..400).chain(402..410).collect::<Vec<u32>>(),
        ] {
            let vms: Vec<VmId> = ids.iter().map(|&i| VmId(i)).collect();
            let mut out = Vec::new();
            put_id_set(&mut out, &vms);
            let mut r = Reader::new(&out);
            assert_eq!(read_id_set(&mut r, 1 << 20, "ids").unwrap(), vms);
            assert_eq!(r.remaining(), 0);
        }
    }

    #[test]
    fn id_runs_refuse_hostile_lengths() {
        // One run claiming 2^32 ids where only 3 were announced.
        let mut out = Vec::new();
        put_varint(&mut out, 3);
        put_varint(&mut out, 1);
        put_varint(&mut out, 0);
        put_varint(&mut out, u32::MAX as u64);
        let mut r = Reader::new(&out);
        assert!(read_id_set(&mut r, 1 << 20, "ids").is_err());
        // A run that passes the end of the id space.
        let mut out = Vec::new();
        put_varint(&mut out, 2);
        put_varint(&mut out, 1);
        put_varint(&mut out, u32::MAX as u64);
        put_varint(&mut out, 1);
        let mut r = Reader::new(&out);
        let e = read_id_set(&mut r, 1 << 20, "ids").unwrap_err();
        assert!(e.0.contains("255.255.255.255"), "{e:?}");
        // Announcing more ids than the limit.
        let mut out = Vec::new();
        put_varint(&mut out, u64::MAX);
        let mut r = Reader::new(&out);
        assert!(read_id_set(&mut r, 1 << 20, "ids").is_err());
    }

    #[test]
    fn schedule_rejects_duplicates_and_strays() {
        let slots: Vec<Slot> = (0..5)
            .map(|i| Slot {
                vm: VmId(10 + i),
                level: 0,
                visited: false,
                load: 0,
            })
            .collect();
        let mut out = Vec::new();
        put_schedule(&mut out, &[VmId(13), VmId(10), VmId(14)], &slots).unwrap();
        let mut r = Reader::new(&out);
        assert_eq!(
            read_schedule(&mut r, &slots).unwrap(),
            vec![VmId(13), VmId(10), VmId(14)]
        );
        assert!(put_schedule(&mut Vec::new(), &[VmId(99)], &slots).is_err());
        let mut dup = Vec::new();
        put_varint(&mut dup, 2);
        put_varint(&mut dup, zigzag(2));
        put_varint(&mut dup, zigzag(0));
        assert!(read_schedule(&mut Reader::new(&dup), &slots).is_err());
        let mut stray = Vec::new();
        put_varint(&mut stray, 1);
        put_varint(&mut stray, zigzag(-1));
        assert!(read_schedule(&mut Reader::new(&stray), &slots).is_err());
    }
}
