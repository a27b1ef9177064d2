//! Reading records back from segments.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Mutex;

use super::{segment_object, EngineError};
use crate::chunk::{ChunkDigest, ChunkRef};
use crate::crypto::ProjectKeys;
use crate::index::IndexPage;
use crate::segment::{decode_record, parse_footer, parse_trailer, TrailerEntry, FOOTER_LEN};
use crate::store::{ObjectStore, StoreError};

type Trailer = Arc<HashMap<ChunkDigest, TrailerEntry>>;

/// Where compaction moved segments' records: the segment id written in the
/// maps → the segment that holds those records now (always one hop: a
/// compaction re-points earlier redirects to its new segment).
pub type Relocations = HashMap<u64, u64>;

/// Fresh relocations from the catalog, for a reader that finds a segment
/// gone (compacted and deleted after it loaded its map).
#[async_trait::async_trait]
pub trait RelocationSource: Send + Sync {
    async fn relocations(&self) -> Result<Relocations, EngineError>;
}

/// Finds and decodes records of one project's segments.
pub struct RecordReader {
    store: Arc<dyn ObjectStore>,
    container: String,
    trailers: Mutex<HashMap<u64, Trailer>>,
    relocations: std::sync::RwLock<Arc<Relocations>>,
    source: Option<Arc<dyn RelocationSource>>,
    /// The project's keys, when its data is encrypted.
    keys: Option<Arc<ProjectKeys>>,
}

impl RecordReader {
    pub fn new(store: Arc<dyn ObjectStore>, container: &str) -> RecordReader {
        RecordReader {
            store,
            container: container.to_string(),
            trailers: Mutex::new(HashMap::new()),
            relocations: Default::default(),
            source: None,
            keys: None,
        }
    }

    /// Open sealed records (and write new ones) with the project's keys.
    pub fn with_keys(mut self, keys: Option<Arc<ProjectKeys>>) -> RecordReader {
        self.keys = keys;
        self
    }

    pub fn keys(&self) -> Option<Arc<ProjectKeys>> {
        self.keys.clone()
    }

    /// Read compacted segments' records where they are now.
    pub fn with_relocations(self, relocations: Relocations) -> RecordReader {
        *self.relocations.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(relocations);
        self
    }

    /// Re-resolve from `source` when a segment is missing.
    pub fn with_relocation_source(mut self, source: Arc<dyn RelocationSource>) -> RecordReader {
        self.source = Some(source);
        self
    }

    /// The segment that holds the records written to `segment`.
    pub fn resolve(&self, segment: u64) -> u64 {
        let map = self.relocations.read().unwrap_or_else(|e| e.into_inner());
        map.get(&segment).copied().unwrap_or(segment)
    }

    /// After a miss: reload the relocations; whether `segment` now resolves
    /// elsewhere (then the caller retries).
    async fn moved_since(&self, segment: u64, was: u64) -> bool {
        let Some(source) = &self.source else {
            return false;
        };
        match source.relocations().await {
            Ok(fresh) => {
                let now = fresh.get(&segment).copied().unwrap_or(segment);
                *self.relocations.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
                now != was
            }
            Err(e) => {
                tracing::warn!(error = %e, "relocations not reloaded");
                false
            }
        }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn container(&self) -> &str {
        &self.container
    }

    /// The trailer of the segment that holds `segment`'s records (footer,
    /// then trailer: two ranged GETs), and that segment's id.
    pub async fn trailer(&self, segment: u64) -> Result<(u64, Trailer), EngineError> {
        let physical = self.resolve(segment);
        match self.trailer_of(physical).await {
            Err(EngineError::Store(StoreError::NotFound { .. }))
                if self.moved_since(segment, physical).await =>
            {
                let physical = self.resolve(segment);
                Ok((physical, self.trailer_of(physical).await?))
            }
            other => Ok((physical, other?)),
        }
    }

    async fn trailer_of(&self, segment: u64) -> Result<Trailer, EngineError> {
        if let Some(t) = self.trailers.lock().await.get(&segment) {
            return Ok(t.clone());
        }
        let name = segment_object(segment);
        let meta = self.store.head(&self.container, &name).await?;
        let footer_bytes = self
            .store
            .get_range(
                &self.container,
                &name,
                meta.size - FOOTER_LEN as u64,
                FOOTER_LEN as u64,
            )
            .await?;
        let footer = parse_footer(segment, &footer_bytes)?;
        let len = meta.size - FOOTER_LEN as u64 - footer.trailer_offset;
        let bytes = self
            .store
            .get_range(&self.container, &name, footer.trailer_offset, len)
            .await?;
        let entries = parse_trailer(segment, &footer, &bytes)?;
        let map: Trailer = Arc::new(entries.into_iter().map(|e| (e.digest, e)).collect());
        self.trailers.lock().await.insert(segment, map.clone());
        Ok(map)
    }

    /// Where a record is: the segment that holds it and its trailer entry.
    pub async fn locate(&self, r: &ChunkRef) -> Result<(u64, TrailerEntry), EngineError> {
        let (segment, trailer) = self.trailer(r.segment).await?;
        let entry = trailer.get(&r.digest).copied().ok_or_else(|| {
            EngineError::Other(format!(
                "record {} is not in segment {segment:016x}",
                r.digest
            ))
        })?;
        Ok((segment, entry))
    }

    /// Fetch and decode one record (digest checked).
    pub async fn read(&self, r: &ChunkRef) -> Result<Vec<u8>, EngineError> {
        let (segment, e) = self.locate(r).await?;
        let bytes: Bytes = self
            .store
            .get_range(
                &self.container,
                &segment_object(segment),
                e.offset,
                e.length as u64,
            )
            .await?;
        let digest = r.digest;
        let keys = self.keys.clone();
        let plain = tokio::task::spawn_blocking(move || {
            decode_record(segment, &bytes, &digest, keys.as_deref())
        })
        .await
        .map_err(|e| EngineError::Other(e.to_string()))??;
        Ok(plain)
    }

    pub async fn page(&self, r: &ChunkRef) -> Result<IndexPage, EngineError> {
        Ok(IndexPage::decode(&self.read(r).await?)?)
    }
}
