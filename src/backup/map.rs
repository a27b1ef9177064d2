//! Reading a record's map tree lazily, in position order, holding one
//! page per level: what a backup, a restore or a dedup load keeps of a map
//! grows with the tree's height, not with the disk.
//!
//! [`MapCursor`] follows the path from the root to one leaf (an incremental
//! asks it for the previous record's page refs as the new tree is built);
//! [`MapWalker`] yields leaves' entries a window at a time (restore, verify,
//! dedup). Every page is checked for the number of entries its place in
//! the tree allows before it is used: a map is read from the store.

use futures::StreamExt;

use super::reader::RecordReader;
use super::EngineError;
use crate::chunk::ChunkRef;
use crate::format::INDEX_FANOUT;
use crate::index::{leaf_range, positions, shape};

const FANOUT: u64 = INDEX_FANOUT as u64;
/// Leaf pages fetched at once while walking a map.
const LEAVES_IN_FLIGHT: usize = 16;

/// The path from a map's root to one leaf: one loaded page per level above
/// the leaves.
pub struct MapCursor {
    root: ChunkRef,
    /// Pages per level, leaves first; the last is the root's level.
    shape: Vec<u64>,
    /// Per level k ≥ 1: the page of that level on the path (index, entries).
    path: Vec<Option<(u64, Vec<ChunkRef>)>>,
    /// Inner pages loaded so far.
    pub pages_loaded: u64,
}

impl MapCursor {
    pub fn new(root: ChunkRef, disk_size: u64, chunk_size: u64) -> MapCursor {
        let shape = shape(positions(disk_size, chunk_size));
        MapCursor {
            root,
            path: vec![None; shape.len()],
            shape,
            pages_loaded: 0,
        }
    }

    pub fn leaves(&self) -> u64 {
        self.shape[0]
    }

    fn top(&self) -> usize {
        self.shape.len() - 1
    }

    /// Load the pages on the path to `leaf` that are not loaded yet, top
    /// down (moving forward leaf by leaf loads each inner page once).
    pub async fn seek(&mut self, reader: &RecordReader, leaf: u64) -> Result<(), EngineError> {
        if leaf >= self.leaves() {
            return Err(EngineError::Other(format!(
                "map: leaf {leaf} of {}",
                self.leaves()
            )));
        }
        for level in (1..=self.top()).rev() {
            let index = leaf / FANOUT.pow(level as u32);
            if matches!(&self.path[level], Some((i, _)) if *i == index) {
                continue;
            }
            let r = self.page_ref(level, index)?;
            let page = reader.page(&r).await?;
            let children = (self.shape[level - 1] - index * FANOUT).min(FANOUT);
            if page.entries.len() as u64 != children || page.level as usize != level {
                return Err(EngineError::Other(format!(
                    "map page {} (level {level}, index {index}) has {} entries at level {}, expected {children}",
                    r.digest,
                    page.entries.len(),
                    page.level
                )));
            }
            self.pages_loaded += 1;
            self.path[level] = Some((index, page.entries));
        }
        Ok(())
    }

    /// The ref of page `index` of `level` (0: leaves), from the page above
    /// it on the current path (see [`MapCursor::seek`]).
    pub fn page_ref(&self, level: usize, index: u64) -> Result<ChunkRef, EngineError> {
        if level == self.top() {
            return if index == 0 {
                Ok(self.root)
            } else {
                Err(EngineError::Other(format!(
                    "map: no page {index} at the root's level"
                )))
            };
        }
        match &self.path[level + 1] {
            Some((i, entries)) if *i == index / FANOUT => entries
                .get((index % FANOUT) as usize)
                .copied()
                .ok_or_else(|| {
                    EngineError::Other(format!("map: no page {index} at level {level}"))
                }),
            _ => Err(EngineError::Other(format!(
                "map: page {index} at level {level} is not on the cursor's path"
            ))),
        }
    }
}

/// A record's leaves in position order, a window at a time.
pub struct MapWalker<'r> {
    reader: &'r RecordReader,
    cursor: MapCursor,
    positions: u64,
    next: u64,
}

/// Consecutive leaves' entries: position `first` onwards.
pub struct LeafWindow {
    pub first: u64,
    pub entries: Vec<ChunkRef>,
    /// The leaf pages' own refs, in order.
    pub leaves: Vec<ChunkRef>,
}

impl<'r> MapWalker<'r> {
    pub fn new(reader: &'r RecordReader, root: ChunkRef, disk_size: u64, chunk_size: u64) -> Self {
        MapWalker {
            reader,
            cursor: MapCursor::new(root, disk_size, chunk_size),
            positions: positions(disk_size, chunk_size),
            next: 0,
        }
    }

    /// Inner pages read so far, each once.
    pub fn inner_pages(&self) -> u64 {
        self.cursor.pages_loaded
    }

    /// The entries of the next `leaves` leaves (fewer at the end), `None`
    /// once every leaf was given.
    pub async fn next_window(&mut self, leaves: usize) -> Result<Option<LeafWindow>, EngineError> {
        let total = self.cursor.leaves();
        if self.next >= total {
            return Ok(None);
        }
        let end = (self.next + leaves.max(1) as u64).min(total);
        let mut refs = Vec::with_capacity((end - self.next) as usize);
        for leaf in self.next..end {
            self.cursor.seek(self.reader, leaf).await?;
            refs.push(self.cursor.page_ref(0, leaf)?);
        }
        let first = self.next * FANOUT;
        // Futures collected first: a lazily mapping iterator inside the
        // stream makes the caller's future not `Send` for every lifetime.
        let fetches: Vec<_> = refs.iter().map(|r| self.reader.page(r)).collect();
        let mut pages = futures::stream::iter(fetches).buffered(LEAVES_IN_FLIGHT);
        let mut entries = Vec::with_capacity(((end - self.next) * FANOUT) as usize);
        let mut leaf = self.next;
        while let Some(page) = pages.next().await {
            let page = page?;
            let range = leaf_range(leaf, self.positions);
            if page.entries.len() as u64 != range.end - range.start || page.level != 0 {
                return Err(EngineError::Other(format!(
                    "map leaf {leaf} has {} entries, expected {}",
                    page.entries.len(),
                    range.end - range.start
                )));
            }
            entries.extend(page.entries);
            leaf += 1;
        }
        drop(pages);
        self.next = end;
        Ok(Some(LeafWindow {
            first,
            entries,
            leaves: refs,
        }))
    }
}
