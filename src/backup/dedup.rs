//! Deduplication tables, bounded by memory, not by disk size.
//!
//! * Cross-disk, within one project: before a disk is read in full, the
//!   maps of the project's other disk heads (and the disk's own previous
//!   record) are loaded into a digest → location table ([`KnownChunks`]),
//!   so a new instance booted from the same image as others stores only
//!   what differs. Only heads are used: their segments are pinned by open
//!   reference intervals and cannot be collected while the backup runs
//!   (`docs/design.md` §4.1); the commit re-checks each reused segment.
//!   Only the caller's project is ever consulted, so nothing about another
//!   project's data can be learned or shared.
//! * Within one backup: the chunks it stored itself (the "session").
//!
//! Both are [`DigestTable`]s: fixed-size, 4-way set-associative, 40 bytes
//! per chunk, sized from `[backup] dedup_memory`. A chunk the table forgot
//! (evicted, or never loaded) is stored once more: dedup is an
//! optimisation; correctness rests on the full digest, compared in full.

use super::map::MapWalker;
use super::reader::RecordReader;
use super::EngineError;
use super::PreviousRecord;
use crate::chunk::{ChunkDigest, ChunkRef};

/// Slots per bucket: a digest lives in one of the 4 slots of its bucket.
const WAYS: usize = 4;
/// Bytes per slot (digest and segment id).
pub const SLOT_BYTES: usize = std::mem::size_of::<ChunkRef>();
/// Leaves read at once while a head is loaded.
const LOAD_WINDOW: usize = 64;

/// A bounded digest → location table. It grows by doubling up to its
/// budget; at the budget a new digest replaces one of its bucket's.
#[derive(Debug, Default)]
pub struct DigestTable {
    slots: Vec<ChunkRef>,
    max_slots: usize,
    len: usize,
    evicted: u64,
}

impl DigestTable {
    /// A table of at most `memory` bytes.
    pub fn with_memory(memory: usize) -> DigestTable {
        // A power of two number of buckets, at least one.
        let buckets = (memory / SLOT_BYTES / WAYS).max(1);
        let buckets = if buckets.is_power_of_two() {
            buckets
        } else {
            buckets.next_power_of_two() / 2
        };
        DigestTable {
            slots: Vec::new(),
            max_slots: buckets * WAYS,
            len: 0,
            evicted: 0,
        }
    }

    fn bucket(&self, d: &ChunkDigest) -> usize {
        // Digests are uniform (SHA-256 or a keyed HMAC): any 8 bytes do.
        let h = u64::from_le_bytes([
            d.0[0], d.0[1], d.0[2], d.0[3], d.0[4], d.0[5], d.0[6], d.0[7],
        ]);
        let buckets = self.slots.len() / WAYS;
        (h as usize & (buckets - 1)) * WAYS
    }

    pub fn get(&self, d: &ChunkDigest) -> Option<ChunkRef> {
        if self.slots.is_empty() {
            return None;
        }
        let b = self.bucket(d);
        self.slots[b..b + WAYS]
            .iter()
            .find(|s| !s.is_zero() && s.digest == *d)
            .copied()
    }

    /// Remember `r` (a stored chunk); the first location of a digest is
    /// kept. Returns false when it took another digest's place.
    pub fn insert(&mut self, r: ChunkRef) -> bool {
        if r.is_zero() {
            return true;
        }
        if self.len * 4 >= self.slots.len() * 3 && self.slots.len() < self.max_slots {
            self.grow();
        }
        let b = self.bucket(&r.digest);
        let bucket = &mut self.slots[b..b + WAYS];
        if bucket.iter().any(|s| !s.is_zero() && s.digest == r.digest) {
            return true;
        }
        if let Some(free) = bucket.iter_mut().find(|s| s.is_zero()) {
            *free = r;
            self.len += 1;
            return true;
        }
        if self.slots.len() < self.max_slots {
            // Below the budget a full bucket is a reason to grow, not to forget.
            self.grow();
            return self.insert(r);
        }
        // Full bucket at the budget: a slot chosen by the new digest's bits goes.
        let bucket = &mut self.slots[b..b + WAYS];
        bucket[(r.digest.0[8] as usize) % WAYS] = r;
        self.evicted += 1;
        false
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(WAYS * 1024).min(self.max_slots);
        let old = std::mem::replace(&mut self.slots, vec![ChunkRef::ZERO; size]);
        self.len = 0;
        for r in old.into_iter().filter(|r| !r.is_zero()) {
            self.insert(r);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a new digest would now replace another.
    pub fn is_full(&self) -> bool {
        self.slots.len() >= self.max_slots && self.len * 8 >= self.max_slots * 7
    }

    /// Digests replaced so far (each costs one duplicate chunk at most).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Bytes the table holds now.
    pub fn memory(&self) -> usize {
        self.slots.len() * SLOT_BYTES
    }
}

/// Chunks a backup may reuse instead of storing them again.
#[derive(Debug, Default)]
pub struct KnownChunks {
    table: DigestTable,
}

impl KnownChunks {
    /// The stored chunks of `records` (project heads, newest first), read
    /// leaf by leaf into a table of at most `memory` bytes, except the
    /// copies in `avoid` (found damaged). Loading stops when the table is
    /// full.
    pub async fn load(
        reader: &RecordReader,
        records: &[PreviousRecord],
        avoid: &std::collections::HashSet<ChunkRef>,
        memory: usize,
    ) -> Result<KnownChunks, EngineError> {
        let mut table = DigestTable::with_memory(memory);
        'heads: for r in records {
            let mut walker = MapWalker::new(reader, r.root, r.disk_size, r.chunk_size);
            loop {
                if table.is_full() {
                    tracing::info!(memory, "dedup table full; further chunks not loaded");
                    break 'heads;
                }
                // An unreadable head costs dedup, never the backup.
                let window = match walker.next_window(LOAD_WINDOW).await {
                    Ok(Some(w)) => w,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "a project head's map is unreadable; not used further for dedup");
                        break;
                    }
                };
                for e in window
                    .entries
                    .into_iter()
                    .filter(|e| !e.is_zero() && !avoid.contains(e))
                {
                    table.insert(e);
                }
            }
        }
        Ok(KnownChunks { table })
    }

    pub fn get(&self, digest: &ChunkDigest) -> Option<ChunkRef> {
        self.table.get(digest)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Bytes the table holds.
    pub fn memory(&self) -> usize {
        self.table.memory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u64) -> ChunkRef {
        ChunkRef {
            digest: ChunkDigest::of(&n.to_le_bytes()),
            segment: 1 + n % 7,
        }
    }

    #[test]
    fn the_table_remembers_within_its_budget_and_forgets_past_it() {
        let mut t = DigestTable::with_memory(1 << 20);
        let cap = (1 << 20) / SLOT_BYTES;
        for n in 0..1000 {
            assert!(t.insert(r(n)));
        }
        assert!((0..1000).all(|n| t.get(&r(n).digest) == Some(r(n))));
        assert_eq!(t.get(&r(5000).digest), None);
        // The first location of a digest stays.
        t.insert(ChunkRef {
            digest: r(3).digest,
            segment: 99,
        });
        assert_eq!(t.get(&r(3).digest), Some(r(3)));
        assert_eq!(t.len(), 1000);
        // Ten times the budget: memory stays at it, recent ones mostly found.
        for n in 0..(10 * cap as u64) {
            t.insert(r(n));
        }
        assert!(t.memory() <= 1 << 20, "{}", t.memory());
        assert!(t.is_full());
        assert!(t.evicted() > 0);
        let last = 10 * cap as u64 - 1;
        assert_eq!(t.get(&r(last).digest), Some(r(last)));
        // Whatever it returns is exactly what was stored under that digest.
        for n in 0..1000 {
            if let Some(found) = t.get(&r(n).digest) {
                assert_eq!(found, r(n));
            }
        }
        // A tiny budget still works.
        let mut t = DigestTable::with_memory(0);
        t.insert(r(1));
        assert_eq!(t.get(&r(1).digest), Some(r(1)));
    }
}
