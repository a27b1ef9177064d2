//! Reading records back from segments.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Mutex;

use super::{segment_object, EngineError};
use crate::chunk::{ChunkDigest, ChunkRef};
use crate::index::IndexPage;
use crate::segment::{decode_record, parse_footer, parse_trailer, TrailerEntry, FOOTER_LEN};
use crate::store::ObjectStore;

type Trailer = Arc<HashMap<ChunkDigest, TrailerEntry>>;

/// Finds and decodes records of one project's segments.
pub struct RecordReader {
    store: Arc<dyn ObjectStore>,
    container: String,
    trailers: Mutex<HashMap<u64, Trailer>>,
}

impl RecordReader {
    pub fn new(store: Arc<dyn ObjectStore>, container: &str) -> RecordReader {
        RecordReader {
            store,
            container: container.to_string(),
            trailers: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn container(&self) -> &str {
        &self.container
    }

    /// The trailer of a segment (footer, then trailer: two ranged GETs).
    pub async fn trailer(&self, segment: u64) -> Result<Trailer, EngineError> {
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

    /// Where a record is: its segment's trailer entry.
    pub async fn locate(&self, r: &ChunkRef) -> Result<TrailerEntry, EngineError> {
        let trailer = self.trailer(r.segment).await?;
        trailer.get(&r.digest).copied().ok_or_else(|| {
            EngineError::Other(format!(
                "record {} is not in segment {:016x}",
                r.digest, r.segment
            ))
        })
    }

    /// Fetch and decode one record (digest checked).
    pub async fn read(&self, r: &ChunkRef) -> Result<Vec<u8>, EngineError> {
        let e = self.locate(r).await?;
        let bytes: Bytes = self
            .store
            .get_range(
                &self.container,
                &segment_object(r.segment),
                e.offset,
                e.length as u64,
            )
            .await?;
        let segment = r.segment;
        let digest = r.digest;
        let plain = tokio::task::spawn_blocking(move || decode_record(segment, &bytes, &digest))
            .await
            .map_err(|e| EngineError::Other(e.to_string()))??;
        Ok(plain)
    }

    pub async fn page(&self, r: &ChunkRef) -> Result<IndexPage, EngineError> {
        Ok(IndexPage::decode(&self.read(r).await?)?)
    }
}
