//! Cross-disk deduplication within one project: before a disk is read in
//! full, the maps of the project's other disk heads (and the disk's own
//! previous record) are loaded into a digest → location table, so a new
//! instance booted from the same image as others stores only what differs.
//!
//! Only heads are used: their segments are pinned by open reference
//! intervals and cannot be collected while the backup runs
//! (`docs/design.md` §4.1); the commit re-checks each reused segment. Only
//! the caller's project is ever consulted, so nothing about another
//! project's data can be learned or shared.

use std::collections::HashMap;

use super::reader::RecordReader;
use super::restore::map_tree;
use super::EngineError;
use super::PreviousRecord;
use crate::chunk::{ChunkDigest, ChunkRef};

/// Chunks a backup may reuse instead of storing them again.
#[derive(Debug, Default)]
pub struct KnownChunks {
    chunks: HashMap<ChunkDigest, ChunkRef>,
}

impl KnownChunks {
    /// The stored chunks of `records` (project heads), at most
    /// `max_entries` in all, except the copies in `avoid` (found damaged).
    pub async fn load(
        reader: &RecordReader,
        records: &[PreviousRecord],
        avoid: &std::collections::HashSet<ChunkRef>,
        max_entries: usize,
    ) -> Result<KnownChunks, EngineError> {
        let mut chunks = HashMap::new();
        for r in records {
            if chunks.len() >= max_entries {
                tracing::info!(max_entries, "dedup table full; further heads not loaded");
                break;
            }
            // An unreadable head costs dedup, never the backup.
            let tree = match map_tree(reader, r.root, r.disk_size, r.chunk_size).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "a project head's map is unreadable; not used for dedup");
                    continue;
                }
            };
            for e in tree
                .entries
                .into_iter()
                .filter(|e| !e.is_zero() && !avoid.contains(e))
            {
                chunks.entry(e.digest).or_insert(e);
            }
        }
        Ok(KnownChunks { chunks })
    }

    pub fn get(&self, digest: &ChunkDigest) -> Option<ChunkRef> {
        self.chunks.get(digest).copied()
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}
