//! Packing records into segments and uploading each one once it reaches the
//! target size.

use std::sync::Arc;

use bytes::Bytes;

use super::{segment_object, EngineError};
use crate::chunk::ChunkRef;
use crate::format::MAX_SEGMENT_RECORDS;
use crate::segment::{EncodedRecord, SegmentWriter};
use crate::store::ObjectStore;

/// A segment this backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenSegment {
    pub id: u64,
    pub size: u64,
    pub records: u32,
}

pub struct SegmentPacker {
    store: Arc<dyn ObjectStore>,
    container: String,
    target: usize,
    current: Option<SegmentWriter>,
    /// The segment of index pages being filled: pages get segments of
    /// their own, so a map stays readable when a data segment is damaged
    /// (restore and verify then name the damaged ranges).
    pages: Option<SegmentWriter>,
    /// Full segments waiting for an upload slot (see [`SegmentPacker::append`]).
    sealed: Vec<SegmentWriter>,
    /// Uploads in flight, so packing goes on while a segment is stored.
    uploads: std::collections::VecDeque<tokio::task::JoinHandle<Result<(), EngineError>>>,
    pub written: Vec<WrittenSegment>,
    pub stored_bytes: u64,
}

/// Seconds since the epoch, stamped into segment headers.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Largest segment of index pages (a 1 TiB disk's full map is about
/// 170 MiB of pages: some 20 segments).
pub const PAGE_SEGMENT_MAX: usize = 8 << 20;

/// Segments uploading at once per backup.
const UPLOADS_IN_FLIGHT: usize = 2;

/// A random, non-zero 63-bit segment id (0 means "zero chunk").
pub fn new_segment_id() -> u64 {
    loop {
        let id = (uuid::Uuid::new_v4().as_u128() as u64) >> 1;
        if id != 0 {
            return id;
        }
    }
}

impl SegmentPacker {
    pub fn new(store: Arc<dyn ObjectStore>, container: &str, target: usize) -> SegmentPacker {
        SegmentPacker {
            store,
            container: container.to_string(),
            target,
            current: None,
            pages: None,
            sealed: Vec::new(),
            uploads: std::collections::VecDeque::new(),
            written: Vec::new(),
            stored_bytes: 0,
        }
    }

    /// Add an encoded record; uploads the segment when it is full.
    pub async fn push(&mut self, record: &EncodedRecord) -> Result<ChunkRef, EngineError> {
        let r = self.append(record);
        self.upload_sealed().await?;
        Ok(r)
    }

    /// Add an encoded chunk record without waiting; a segment that fills
    /// waits for [`SegmentPacker::upload_sealed`].
    pub fn append(&mut self, record: &EncodedRecord) -> ChunkRef {
        let target = self.target;
        Self::append_to(&mut self.current, &mut self.sealed, target, record)
    }

    /// Add an encoded index page without waiting (the map builder's page
    /// store is synchronous); the caller runs
    /// [`SegmentPacker::upload_sealed`] next. Page segments are at most
    /// [`PAGE_SEGMENT_MAX`], so the one being filled costs little memory.
    pub fn append_page(&mut self, record: &EncodedRecord) -> ChunkRef {
        let target = self.target.min(PAGE_SEGMENT_MAX);
        Self::append_to(&mut self.pages, &mut self.sealed, target, record)
    }

    fn append_to(
        current: &mut Option<SegmentWriter>,
        sealed: &mut Vec<SegmentWriter>,
        target: usize,
        record: &EncodedRecord,
    ) -> ChunkRef {
        let now = now_unix();
        let w = current.get_or_insert_with(|| SegmentWriter::new(new_segment_id(), now, target));
        w.push_encoded(record);
        let r = ChunkRef {
            digest: record.digest,
            segment: w.id(),
        };
        if w.len() >= target || w.records() >= MAX_SEGMENT_RECORDS as usize {
            sealed.extend(current.take());
        }
        r
    }

    /// Upload the segments that filled (waiting for upload slots).
    pub async fn upload_sealed(&mut self) -> Result<(), EngineError> {
        for w in std::mem::take(&mut self.sealed) {
            self.upload(w).await?;
        }
        Ok(())
    }

    /// Start uploading the segment being filled (waiting for an upload
    /// slot).
    async fn seal(&mut self) -> Result<(), EngineError> {
        for w in [self.current.take(), self.pages.take()]
            .into_iter()
            .flatten()
        {
            self.upload(w).await?;
        }
        Ok(())
    }

    /// Upload a finished segment (waiting for an upload slot).
    async fn upload(&mut self, w: SegmentWriter) -> Result<(), EngineError> {
        if w.is_empty() {
            return Ok(());
        }
        while self.uploads.len() >= UPLOADS_IN_FLIGHT {
            if let Some(h) = self.uploads.pop_front() {
                h.await
                    .map_err(|e| EngineError::Other(format!("upload task: {e}")))??;
            }
        }
        let (id, records) = (w.id(), w.records() as u32);
        let bytes = Bytes::from(w.finish());
        let size = bytes.len() as u64;
        let (store, container, name) = (
            self.store.clone(),
            self.container.clone(),
            segment_object(id),
        );
        self.uploads.push_back(tokio::spawn(async move {
            store
                .put(&container, &name, bytes)
                .await
                .map_err(EngineError::from)
        }));
        self.stored_bytes += size;
        self.written.push(WrittenSegment { id, size, records });
        Ok(())
    }

    /// Upload the segment being filled, and wait until every segment is
    /// stored.
    pub async fn flush(&mut self) -> Result<(), EngineError> {
        self.upload_sealed().await?;
        self.seal().await?;
        while let Some(h) = self.uploads.pop_front() {
            h.await
                .map_err(|e| EngineError::Other(format!("upload task: {e}")))??;
        }
        Ok(())
    }
}
