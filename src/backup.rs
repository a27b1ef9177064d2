//! The backup engine: turns a [`DiskSnapshot`](crate::extract::DiskSnapshot)
//! into a complete, independent backup record (chunks packed into segments,
//! a map tree sharing unchanged pages with the previous record), and reads
//! records back (restore, verify).
//!
//! * [`reader`]: finds records in segments (footer → trailer → ranged GET),
//!   caching trailers; loads index pages.
//! * [`writer`]: packs records into segments and uploads full ones.
//! * [`disk`]: backs up one disk; computes the segment reference deltas the
//!   catalog commit records.
//! * [`restore`]: restores or verifies a record.

pub mod disk;
pub mod reader;
pub mod restore;
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
}

/// The object name of a segment.
pub fn segment_object(id: u64) -> String {
    format!("segments/{id:016x}")
}

/// The container holding a project's objects.
pub fn container(prefix: &str, project_id: &str) -> String {
    format!("{prefix}{project_id}")
}
