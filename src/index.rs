//! A disk's map, position → chunk, as a tree of content-addressed index
//! pages. Leaves hold the refs of [`INDEX_FANOUT`] consecutive chunks; inner
//! pages hold the refs of [`INDEX_FANOUT`] pages of the level below. Every
//! backup record has a complete tree (restore and delete need no chain),
//! but an incremental writes only the pages on the paths to what changed:
//! an unchanged page has the same bytes, so the same digest, and is reused
//! by reference.
//!
//! Page plaintext (little-endian):
//! `version u8, level u8, 2 reserved, count u32, first position u64,` then
//! `count × (digest [32], segment u64)`.

use crate::chunk::{ChunkDigest, ChunkRef};
use crate::format::INDEX_PAGE_VERSION;
use crate::format::{INDEX_ENTRY_LEN as ENTRY, INDEX_FANOUT, INDEX_PAGE_HEADER_LEN as PAGE_HEADER};

#[derive(Debug, thiserror::Error)]
#[error("index page: {0}")]
pub struct IndexError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPage {
    pub level: u8,
    /// Position (chunk index at level 0, page index at level k) of entry 0.
    pub first: u64,
    pub entries: Vec<ChunkRef>,
}

impl IndexPage {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PAGE_HEADER + self.entries.len() * ENTRY);
        out.push(INDEX_PAGE_VERSION);
        out.push(self.level);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.first.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.digest.0);
            out.extend_from_slice(&e.segment.to_le_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<IndexPage, IndexError> {
        if b.len() < PAGE_HEADER || b[0] != INDEX_PAGE_VERSION {
            return Err(IndexError("bad header or unknown version".into()));
        }
        let count = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
        if count > INDEX_FANOUT || b.len() != PAGE_HEADER + count * ENTRY {
            return Err(IndexError(format!("{count} entries in {} bytes", b.len())));
        }
        let mut first = [0u8; 8];
        first.copy_from_slice(&b[8..16]);
        let entries = b[PAGE_HEADER..]
            .chunks_exact(ENTRY)
            .map(|e| {
                let mut seg = [0u8; 8];
                seg.copy_from_slice(&e[32..40]);
                ChunkRef {
                    digest: ChunkDigest::from_slice(&e[..32]).unwrap_or_default(),
                    segment: u64::from_le_bytes(seg),
                }
            })
            .collect();
        Ok(IndexPage {
            level: b[1],
            first: u64::from_le_bytes(first),
            entries,
        })
    }
}

/// Number of chunk positions of a disk.
pub fn positions(disk_size: u64, chunk_size: u64) -> u64 {
    disk_size.div_ceil(chunk_size)
}

/// Pages per level, leaves first; the last level has one page (the root).
pub fn shape(positions: u64) -> Vec<u64> {
    let f = INDEX_FANOUT as u64;
    let mut levels = vec![positions.div_ceil(f).max(1)];
    while let Some(&top) = levels.last() {
        if top == 1 {
            break;
        }
        levels.push(top.div_ceil(f));
    }
    levels
}

/// Stores a finished page (level, index at that level, the page) and
/// returns its ref: writes it, or recognises it as unchanged.
pub type PageStore<'a> = dyn FnMut(u8, u64, &IndexPage) -> Result<ChunkRef, IndexError> + 'a;

/// Builds a tree bottom-up from leaf refs given in order, holding at most
/// one pending page per level. Each finished inner page goes to the
/// `store` given with the leaf that finished it.
pub struct TreeBuilder {
    levels: Vec<(u64, Vec<ChunkRef>)>, // per level above the leaves: (next page index, pending refs)
    total_leaves: u64,
    shape: Vec<u64>,
    leaves_seen: u64,
}

impl TreeBuilder {
    pub fn new(positions: u64) -> Self {
        let shape = shape(positions);
        TreeBuilder {
            levels: vec![(0, Vec::new()); shape.len()],
            total_leaves: shape[0],
            shape,
            leaves_seen: 0,
        }
    }

    /// Add the ref of the next leaf page (already stored by the caller).
    pub fn push_leaf(&mut self, leaf: ChunkRef, store: &mut PageStore) -> Result<(), IndexError> {
        if self.leaves_seen >= self.total_leaves {
            return Err(IndexError("more leaves than the disk has".into()));
        }
        self.leaves_seen += 1;
        self.push(1, leaf, store)
    }

    fn push(&mut self, level: usize, r: ChunkRef, store: &mut PageStore) -> Result<(), IndexError> {
        if level >= self.shape.len() {
            // Above the top: this ref is the root.
            self.levels[0].1.push(r);
            return Ok(());
        }
        self.levels[level].1.push(r);
        let below = self.shape[level - 1];
        let (index, pending) = &self.levels[level];
        let covered = (*index) * INDEX_FANOUT as u64 + pending.len() as u64;
        if pending.len() == INDEX_FANOUT || covered == below {
            let (index, entries) = {
                let slot = &mut self.levels[level];
                let idx = slot.0;
                slot.0 += 1;
                (idx, std::mem::take(&mut slot.1))
            };
            let page = IndexPage {
                level: level as u8,
                first: index * INDEX_FANOUT as u64,
                entries,
            };
            let stored = store(level as u8, index, &page)?;
            self.push(level + 1, stored, store)?;
        }
        Ok(())
    }

    /// The root's ref, once every leaf was pushed (a single leaf is the
    /// root).
    pub fn finish(mut self) -> Result<ChunkRef, IndexError> {
        if self.leaves_seen != self.total_leaves {
            return Err(IndexError(format!(
                "{} of {} leaves given",
                self.leaves_seen, self.total_leaves
            )));
        }
        self.levels[0]
            .1
            .pop()
            .ok_or_else(|| IndexError("no root".into()))
    }
}

/// Leaf `index` of a map: the entries for its positions.
pub fn leaf_range(index: u64, positions: u64) -> std::ops::Range<u64> {
    let f = INDEX_FANOUT as u64;
    let start = index * f;
    start..(start + f).min(positions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn r(n: u64) -> ChunkRef {
        ChunkRef {
            digest: ChunkDigest::of(&n.to_le_bytes()),
            segment: 1 + n % 3,
        }
    }

    #[test]
    fn pages_round_trip() {
        let p = IndexPage {
            level: 0,
            first: 128,
            entries: (0..64).map(r).chain([ChunkRef::ZERO]).take(64).collect(),
        };
        assert_eq!(IndexPage::decode(&p.encode()).unwrap(), p);
        let mut bad = p.encode();
        bad.pop();
        assert!(IndexPage::decode(&bad).is_err());
    }

    #[test]
    fn shapes() {
        assert_eq!(shape(0), vec![1]);
        assert_eq!(shape(64), vec![1]);
        assert_eq!(shape(65), vec![2, 1]);
        assert_eq!(shape(64 * 64 + 1), vec![65, 2, 1]);
        assert_eq!(positions(10 << 20, 256 << 10), 40);
        assert_eq!(leaf_range(1, 100), 64..100);
    }

    fn build(
        n: u64,
        leaf_of: impl Fn(u64) -> ChunkRef,
        pages: &mut HashMap<ChunkDigest, IndexPage>,
    ) -> ChunkRef {
        let mut written = Vec::new();
        let leaves = shape(n)[0];
        let mut store = |_, _, page: &IndexPage| {
            let d = ChunkDigest::of(&page.encode());
            written.push((d, page.clone()));
            Ok(ChunkRef {
                digest: d,
                segment: 9,
            })
        };
        let mut b = TreeBuilder::new(n);
        for l in 0..leaves {
            b.push_leaf(leaf_of(l), &mut store).unwrap();
        }
        let root = b.finish().unwrap();
        pages.extend(written);
        root
    }

    #[test]
    fn unchanged_subtrees_have_unchanged_digests() {
        let n = 64 * 64 * 3 + 5; // 3 levels above the leaves
        let mut pages = HashMap::new();
        let root1 = build(n, r, &mut pages);
        let root1b = build(n, r, &mut HashMap::new());
        assert_eq!(root1, root1b, "same map, same root");
        let changed = |l: u64| if l == 100 { r(999_999) } else { r(l) };
        let mut pages2 = HashMap::new();
        let root2 = build(n, changed, &mut pages2);
        assert_ne!(root1.digest, root2.digest);
        // Only the path to leaf 100 differs: one page per inner level.
        let new_pages = pages2.keys().filter(|d| !pages.contains_key(d)).count();
        assert_eq!(new_pages, shape(n).len() - 1);
        // Walk the tree from the root: leaf refs come back in order.
        let mut frontier = vec![root2];
        while let Some(p) = frontier.first().and_then(|f| pages2.get(&f.digest)) {
            if p.level == 1 {
                break;
            }
            frontier = frontier
                .iter()
                .flat_map(|f| pages2[&f.digest].entries.clone())
                .collect();
        }
        let leaves: Vec<ChunkRef> = frontier
            .iter()
            .flat_map(|f| pages2[&f.digest].entries.clone())
            .collect();
        assert_eq!(leaves.len() as u64, shape(n)[0]);
        assert_eq!(leaves[100], r(999_999));
        assert_eq!(leaves[101], r(101));
    }

    #[test]
    fn wrong_leaf_counts_are_errors() {
        let mut store = |_, _, p: &IndexPage| {
            Ok(ChunkRef {
                digest: ChunkDigest::of(&p.encode()),
                segment: 1,
            })
        };
        let mut b = TreeBuilder::new(65);
        b.push_leaf(r(0), &mut store).unwrap();
        assert!(b.finish().is_err());
        let mut b = TreeBuilder::new(10);
        b.push_leaf(r(0), &mut store).unwrap();
        assert!(b.push_leaf(r(1), &mut store).is_err());
    }
}
