//! The backup engine: turns a [`DiskSnapshot`](crate::extract::DiskSnapshot)
//! into a complete, independent backup record (chunks packed into segments,
//! a map tree sharing unchanged pages with the previous record), and reads
//! records back (restore, verify).
//!
//! * [`reader`]: finds records in segments (footer → trailer → ranged GET),
//!   caching trailers; loads index pages.
//! * [`writer`]: packs records into segments and uploads full ones.
//! * [`dedup`]: the chunks a backup may reuse (the project's heads, its
//!   own), in tables of bounded memory.
//! * [`map`]: reads a record's map lazily (one page per level).
//! * [`map_builder`]: builds the new map as chunks pass; computes the
//!   segment reference deltas the catalog commit records.
//! * [`disk`]: backs up one disk.
//! * [`restore`]: restores or verifies a record, a window of leaves at a
//!   time.
//! * [`export`]: serves a record as an NBD export (reads through a
//!   bounded cache of checked chunks).
//! * [`file_target`], [`target_dir`]: restores into files on this host,
//!   created exclusively and never through a link.
//!
//! Per job, memory is bounded by `[backup]` options (`dedup_memory`,
//! `trailer_cache`, `restore_window`, `segment_size`), never by the disk
//! size: nothing holds one entry per chunk of the disk.

pub mod dedup;
pub mod disk;
pub mod export;
pub mod file_target;
pub mod image_target;
pub mod instance;
pub mod map;
mod map_builder;
pub mod qcow2_stream;
pub mod reader;
pub mod restore;
pub mod target_dir;
pub mod writer;

use crate::chunk::ChunkError;
use crate::extract::ExtractError;
use crate::index::IndexError;
use crate::segment::SegmentError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{0}")]
    Other(String),
    #[error("restore target {path}: {source}")]
    Target {
        path: String,
        source: std::io::Error,
    },
    /// The target's name is taken (a dangling link included).
    #[error("{path} exists: a restore never overwrites")]
    TargetExists { path: String },
    /// A directory on the way to the target is a link (or not a directory).
    #[error("{path} is a link or not a directory: a restore never follows links")]
    TargetLink { path: String },
}

/// The object listing the segments compaction moved into segment `id`
/// (`{"segment": id, "replaces": [...]}`), so a catalog rebuilt from the
/// store alone can still follow older maps.
pub fn relocation_object(id: u64) -> String {
    format!("relocations/{id:016x}")
}

/// The object name of a segment.
pub fn segment_object(id: u64) -> String {
    format!("segments/{id:016x}")
}

/// A committed record of a disk: the base of an incremental, or a source
/// of chunks to reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousRecord {
    pub root: crate::chunk::ChunkRef,
    pub disk_size: u64,
    pub chunk_size: u64,
}

/// Bytes of work done and to do, shared with whoever shows or reports
/// progress (the command line's bar, a worker's status messages).
#[derive(Debug, Default)]
pub struct Progress {
    total: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
}

impl Progress {
    pub fn add_total(&self, bytes: u64) {
        self.total
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn advance(&self, bytes: u64) {
        self.done
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// (done, total) in bytes.
    pub fn get(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.done.load(Relaxed), self.total.load(Relaxed))
    }
}
