//! Building a backup record's map as its chunks pass, in position order.
//!
//! One leaf is open at a time: the previous record's leaf (or zeros), the
//! positions the snapshot says changed, and the new entries as the chunks
//! are decided. When the stream moves past it the leaf is closed: written
//! if its content changed (else its old ref is kept), pushed into the
//! [`TreeBuilder`], and any segment that filled is uploaded. Untouched
//! leaves are taken from the previous record by ref, through a
//! [`MapCursor`] that holds one page per level. Memory: one leaf, one page
//! per level, whatever the disk size.
//!
//! It also counts, per segment, how many references (chunks and pages)
//! this disk's map gained or lost (`docs/design.md` §3).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::map::MapCursor;
use super::reader::RecordReader;
use super::writer::SegmentPacker;
use super::{EngineError, PreviousRecord};
use crate::chunk::{ChunkRef, Compressor};
use crate::crypto::{identity, ProjectKeys};
use crate::format::{INDEX_FANOUT, RECORD_INDEX_PAGE};
use crate::index::{leaf_range, positions, shape, IndexError, IndexPage, TreeBuilder};
use crate::segment::encode_record;

const FANOUT: u64 = INDEX_FANOUT as u64;

/// The snapshot's changed and zero extents, read forward once, leaf by
/// leaf; never expanded into per-chunk lists.
pub(super) struct Changes<'a> {
    changed: &'a [(u64, u64)],
    zeros: &'a [(u64, u64)],
    at: usize,
    size: u64,
    chunk: u64,
    positions: u64,
}

impl<'a> Changes<'a> {
    pub fn new(changed: &'a [(u64, u64)], zeros: &'a [(u64, u64)], size: u64, chunk: u64) -> Self {
        Changes {
            changed,
            zeros,
            at: 0,
            size,
            chunk,
            positions: positions(size, chunk),
        }
    }

    pub fn leaves(&self) -> u64 {
        shape(self.positions)[0]
    }

    /// The positions of leaf `leaf` that changed, as a bit mask over its
    /// entries. Leaves are asked for in increasing order.
    pub fn changed_in(&mut self, leaf: u64) -> u64 {
        let c = self.chunk;
        let range = leaf_range(leaf, self.positions);
        if range.is_empty() {
            return 0;
        }
        let (start, end) = (range.start * c, (range.end * c).min(self.size));
        while self
            .changed
            .get(self.at)
            .is_some_and(|&(off, len)| off.saturating_add(len) <= start)
        {
            self.at += 1;
        }
        let mut mask = 0u64;
        for &(off, len) in self.changed[self.at..].iter().take_while(|r| r.0 < end) {
            if len == 0 {
                continue;
            }
            let first = (off / c).max(range.start);
            let last = ((off.saturating_add(len) - 1) / c).min(range.end - 1);
            for p in first..=last {
                mask |= 1 << (p - range.start);
            }
        }
        mask
    }

    /// Whether chunk `p` lies wholly in a zero extent (costs no read).
    pub fn is_zero(&self, p: u64) -> bool {
        let (s, e) = (p * self.chunk, ((p + 1) * self.chunk).min(self.size));
        let i = self.zeros.partition_point(|z| z.0 + z.1 <= s);
        self.zeros
            .get(i)
            .is_some_and(|z| z.0 <= s && z.0 + z.1 >= e)
    }
}

/// Byte ranges to read, in order: the changed chunks that are not zero,
/// adjacent ones merged up to 64 MiB. Lazy: one leaf's positions at a time.
pub(super) struct ReadPlan<'a> {
    changes: Changes<'a>,
    leaf: u64,
    base: u64,
    mask: u64,
    pending: Option<(u64, u64)>,
}

impl<'a> ReadPlan<'a> {
    pub fn new(changes: Changes<'a>) -> Self {
        ReadPlan {
            changes,
            leaf: 0,
            base: 0,
            mask: 0,
            pending: None,
        }
    }
}

impl Iterator for ReadPlan<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let c = self.changes.chunk;
        loop {
            while self.mask == 0 {
                if self.leaf >= self.changes.leaves() {
                    return self.pending.take();
                }
                let changed = self.changes.changed_in(self.leaf);
                self.base = self.leaf * FANOUT;
                self.mask = bits(changed)
                    .filter(|&i| !self.changes.is_zero(self.base + i))
                    .fold(0, |m, i| m | 1 << i);
                self.leaf += 1;
            }
            let p = self.base + self.mask.trailing_zeros() as u64;
            self.mask &= self.mask - 1;
            let (s, e) = (p * c, ((p + 1) * c).min(self.changes.size));
            match &mut self.pending {
                Some(last) if last.0 + last.1 == s && last.1 < (64 << 20) => last.1 += e - s,
                _ => {
                    if let Some(done) = self.pending.replace((s, e - s)) {
                        return Some(done);
                    }
                }
            }
        }
    }
}

/// The set bits of a mask, lowest first.
fn bits(mask: u64) -> impl Iterator<Item = u64> {
    (0..64).filter(move |i| mask & (1 << i) != 0)
}

fn bump(deltas: &mut BTreeMap<u64, i64>, r: &ChunkRef, by: i64) {
    if !r.is_zero() {
        *deltas.entry(r.segment).or_insert(0) += by;
    }
}

/// The leaf being filled.
struct OpenLeaf {
    index: u64,
    /// The previous record's leaf, if it has one.
    old: Option<ChunkRef>,
    /// Its entries (zeros without a previous record).
    base: Vec<ChunkRef>,
    entries: Vec<ChunkRef>,
    /// Positions whose chunk the read stream still owes.
    expected: u64,
}

/// What a finished map is.
pub(super) struct BuiltMap {
    pub root: ChunkRef,
    pub deltas: BTreeMap<u64, i64>,
    pub pages_written: u64,
    /// Changed positions inside zero extents (never read).
    pub zero_chunks: u64,
}

pub(super) struct MapBuilder<'a> {
    reader: &'a RecordReader,
    keys: Option<Arc<ProjectKeys>>,
    compressor: Compressor,
    positions: u64,
    changes: Changes<'a>,
    prev: Option<MapCursor>,
    tree: TreeBuilder,
    /// The first leaf not opened or passed yet.
    next: u64,
    open: Option<OpenLeaf>,
    deltas: BTreeMap<u64, i64>,
    pages_written: u64,
    zero_chunks: u64,
}

impl<'a> MapBuilder<'a> {
    pub fn new(
        reader: &'a RecordReader,
        prev: Option<&PreviousRecord>,
        changes: Changes<'a>,
        compression_level: i32,
    ) -> Result<Self, EngineError> {
        let n = changes.positions;
        Ok(MapBuilder {
            reader,
            keys: reader.keys(),
            compressor: Compressor::new(compression_level)?,
            positions: n,
            prev: prev.map(|p| MapCursor::new(p.root, p.disk_size, p.chunk_size)),
            changes,
            tree: TreeBuilder::new(n),
            next: 0,
            open: None,
            deltas: BTreeMap::new(),
            pages_written: 0,
            zero_chunks: 0,
        })
    }

    /// The previous record's entry at `pos` (zero without one), opening
    /// its leaf; earlier leaves are closed first.
    pub async fn old_at(
        &mut self,
        pos: u64,
        packer: &mut SegmentPacker,
    ) -> Result<ChunkRef, EngineError> {
        let leaf = pos / FANOUT;
        self.open_leaf(leaf, packer).await?;
        let i = (pos % FANOUT) as usize;
        match &self.open {
            Some(o) if o.index == leaf && o.expected & (1 << i) != 0 => Ok(o.base[i]),
            _ => Err(EngineError::Other(format!(
                "the read stream gave position {pos}, which was not to be read"
            ))),
        }
    }

    /// The new entry at `pos` (after [`MapBuilder::old_at`]).
    pub fn set(&mut self, pos: u64, entry: ChunkRef) -> Result<(), EngineError> {
        let i = (pos % FANOUT) as usize;
        match &mut self.open {
            Some(o) if o.index == pos / FANOUT => {
                o.entries[i] = entry;
                o.expected &= !(1 << i);
                Ok(())
            }
            _ => Err(EngineError::Other(format!(
                "position {pos}: its leaf is not open"
            ))),
        }
    }

    async fn open_leaf(
        &mut self,
        leaf: u64,
        packer: &mut SegmentPacker,
    ) -> Result<(), EngineError> {
        if self.open.as_ref().is_some_and(|o| o.index == leaf) {
            return Ok(());
        }
        if leaf < self.next {
            return Err(EngineError::Other(format!(
                "leaf {leaf} came back out of order"
            )));
        }
        if let Some(o) = self.open.take() {
            self.close(o, packer).await?;
        }
        while self.next < leaf {
            self.pass_leaf(packer).await?;
        }
        self.open = self.start_leaf(packer).await?;
        if self.open.is_none() {
            return Err(EngineError::Other(format!(
                "leaf {leaf} has nothing to read"
            )));
        }
        Ok(())
    }

    /// Open leaf `self.next`, or push it as it was when nothing changed in
    /// it (then `None`).
    async fn start_leaf(
        &mut self,
        packer: &mut SegmentPacker,
    ) -> Result<Option<OpenLeaf>, EngineError> {
        let leaf = self.next;
        self.next += 1;
        let mask = self.changes.changed_in(leaf);
        let old = match &mut self.prev {
            Some(cursor) => {
                cursor.seek(self.reader, leaf).await?;
                Some(cursor.page_ref(0, leaf)?)
            }
            None => None,
        };
        if let (0, Some(old)) = (mask, old) {
            self.push_leaf(old, packer).await?;
            return Ok(None);
        }
        let range = leaf_range(leaf, self.positions);
        let len = (range.end - range.start) as usize;
        let base = match old {
            Some(old) => {
                let page = self.reader.page(&old).await?;
                if page.entries.len() != len || page.level != 0 {
                    return Err(EngineError::Other(format!(
                        "previous map: leaf {leaf} has {} entries, expected {len}",
                        page.entries.len()
                    )));
                }
                page.entries
            }
            None => vec![ChunkRef::ZERO; len],
        };
        let mut entries = base.clone();
        let mut expected = 0u64;
        for i in bits(mask) {
            if self.changes.is_zero(range.start + i) {
                entries[i as usize] = ChunkRef::ZERO;
                self.zero_chunks += 1;
            } else {
                expected |= 1 << i;
            }
        }
        Ok(Some(OpenLeaf {
            index: leaf,
            old,
            base,
            entries,
            expected,
        }))
    }

    /// A leaf the read stream has nothing for: kept, or closed at once.
    async fn pass_leaf(&mut self, packer: &mut SegmentPacker) -> Result<(), EngineError> {
        match self.start_leaf(packer).await? {
            Some(o) => self.close(o, packer).await,
            None => Ok(()),
        }
    }

    async fn close(&mut self, o: OpenLeaf, packer: &mut SegmentPacker) -> Result<(), EngineError> {
        if o.expected != 0 {
            let missing = o.index * FANOUT + o.expected.trailing_zeros() as u64;
            return Err(EngineError::Other(format!(
                "position {missing} changed but its chunk was never read"
            )));
        }
        for (old, new) in o.base.iter().zip(&o.entries) {
            if old != new {
                bump(&mut self.deltas, old, -1);
                bump(&mut self.deltas, new, 1);
            }
        }
        let page = IndexPage {
            level: 0,
            first: o.index * FANOUT,
            entries: o.entries,
        };
        let plain = page.encode();
        let digest = identity(self.keys.as_deref(), &plain);
        let r = match o.old {
            Some(old) if old.digest == digest => old,
            _ => {
                self.pages_written += 1;
                let record = encode_record(
                    &mut self.compressor,
                    self.keys.as_deref(),
                    RECORD_INDEX_PAGE,
                    digest,
                    &plain,
                )?;
                let r = packer.append_page(&record);
                bump(&mut self.deltas, &r, 1);
                if let Some(old) = o.old {
                    bump(&mut self.deltas, &old, -1);
                }
                r
            }
        };
        self.push_leaf(r, packer).await
    }

    /// Push a leaf's ref into the tree; the inner pages it completes are
    /// kept by ref when unchanged, else written. Full segments go up.
    async fn push_leaf(
        &mut self,
        leaf: ChunkRef,
        packer: &mut SegmentPacker,
    ) -> Result<(), EngineError> {
        let MapBuilder {
            keys,
            compressor,
            prev,
            tree,
            deltas,
            pages_written,
            ..
        } = self;
        let mut store = |level: u8, index: u64, page: &IndexPage| {
            let plain = page.encode();
            let digest = identity(keys.as_deref(), &plain);
            let old = match prev {
                Some(cursor) => Some(
                    cursor
                        .page_ref(level as usize, index)
                        .map_err(|e| IndexError(e.to_string()))?,
                ),
                None => None,
            };
            match old {
                Some(o) if o.digest == digest => Ok(o),
                _ => {
                    *pages_written += 1;
                    let record = encode_record(
                        compressor,
                        keys.as_deref(),
                        RECORD_INDEX_PAGE,
                        digest,
                        &plain,
                    )
                    .map_err(|e| IndexError(e.to_string()))?;
                    let r = packer.append_page(&record);
                    bump(deltas, &r, 1);
                    if let Some(o) = old {
                        bump(deltas, &o, -1);
                    }
                    Ok(r)
                }
            }
        };
        tree.push_leaf(leaf, &mut store)?;
        packer.upload_sealed().await
    }

    /// Close the open leaf and pass the rest; the new map's root.
    pub async fn finish(mut self, packer: &mut SegmentPacker) -> Result<BuiltMap, EngineError> {
        if let Some(o) = self.open.take() {
            self.close(o, packer).await?;
        }
        while self.next < self.changes.leaves() {
            self.pass_leaf(packer).await?;
        }
        let root = self.tree.finish()?;
        self.deltas.retain(|_, v| *v != 0);
        Ok(BuiltMap {
            root,
            deltas: self.deltas,
            pages_written: self.pages_written,
            zero_chunks: self.zero_chunks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u64 = 256 << 10;

    /// The per-chunk lists the engine used to build, for comparison.
    fn per_chunk(changed: &[(u64, u64)], zeros: &[(u64, u64)], size: u64) -> (Vec<u64>, Vec<u64>) {
        let n = positions(size, C);
        let ch = Changes::new(changed, zeros, size, C);
        let mut all: Vec<u64> = changed
            .iter()
            .filter(|r| r.1 > 0)
            .flat_map(|&(o, l)| o / C..=((o + l - 1) / C).min(n - 1))
            .collect();
        all.dedup();
        let read = all.iter().copied().filter(|&p| !ch.is_zero(p)).collect();
        (all, read)
    }

    #[test]
    fn leaf_masks_and_the_read_plan_match_the_per_chunk_lists() {
        let size = 300 * FANOUT * C + 12345; // a short last chunk and leaf
        let changed = vec![
            (0, 1),
            (C - 1, 2),
            (70 * C + 5, 3 * C),
            (64 * 64 * C, 200 * C),
            (size - 10, 10),
        ];
        let zeros = vec![(70 * C, 2 * C), (64 * 64 * C + 10 * C, 100 * C)];
        let (all, read) = per_chunk(&changed, &zeros, size);
        let mut ch = Changes::new(&changed, &zeros, size, C);
        let from_masks: Vec<u64> = (0..ch.leaves())
            .flat_map(|l| {
                bits(ch.changed_in(l))
                    .map(move |i| l * FANOUT + i)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(from_masks, all);
        let plan: Vec<(u64, u64)> =
            ReadPlan::new(Changes::new(&changed, &zeros, size, C)).collect();
        let planned: Vec<u64> = plan
            .iter()
            .flat_map(|&(o, l)| o / C..(o + l).div_ceil(C))
            .collect();
        assert_eq!(planned, read);
        // Adjacent chunks are merged; the last one is short.
        assert!(plan.iter().any(|r| r.1 > C));
        assert_eq!(plan.last().map(|r| r.0 + r.1), Some(size));
        // A full read of a disk of holes reads nothing.
        let whole = [(0, size)];
        assert_eq!(
            ReadPlan::new(Changes::new(&whole, &whole, size, C)).count(),
            0
        );
    }
}
