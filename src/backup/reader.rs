//! Reading records back from segments.
//!
//! Every length a segment states is checked against the format before it
//! sizes a GET or a buffer: the footer's trailer against the object's
//! size, a trailer entry against the largest record of its kind. Trailers
//! are cached, least recently used first out, within a byte budget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{segment_object, EngineError};
use crate::chunk::{ChunkDigest, ChunkRef};
use crate::crypto::ProjectKeys;
use crate::format::MAX_SEGMENT_RECORDS;
use crate::index::IndexPage;
use crate::segment::{
    decode_record, parse_footer, parse_trailer, RecordExpect, SegmentError, TrailerEntry,
    FOOTER_LEN, HEADER_LEN, RECORD_HEADER_LEN, TRAILER_ENTRY_LEN,
};
use crate::store::{ObjectStore, StoreError};

type Trailer = Arc<HashMap<ChunkDigest, TrailerEntry>>;

/// Memory limits of one job's reads (a backup's, a restore's or a
/// verify's), from `[backup]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Bytes of segment trailers kept cached.
    pub trailer_cache: usize,
    /// Map leaves (64 chunks each) a restore or verify plans and fetches
    /// at a time.
    pub restore_window: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            trailer_cache: 32 << 20,
            restore_window: 1024,
        }
    }
}

impl ReadLimits {
    pub fn from_config(c: &crate::config::BackupOptions) -> ReadLimits {
        ReadLimits {
            trailer_cache: c.trailer_cache.bytes() as usize,
            restore_window: (c.restore_window as usize).max(1),
        }
    }
}

/// Trailers by segment id, the least recently used evicted past a byte
/// budget (the newest always stays, whatever its size).
struct TrailerCache {
    map: HashMap<u64, (Trailer, usize, u64)>,
    bytes: usize,
    budget: usize,
    tick: u64,
}

impl TrailerCache {
    fn new(budget: usize) -> TrailerCache {
        TrailerCache {
            map: HashMap::new(),
            bytes: 0,
            budget,
            tick: 0,
        }
    }

    fn get(&mut self, segment: u64) -> Option<Trailer> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&segment).map(|(t, _, used)| {
            *used = tick;
            t.clone()
        })
    }

    fn insert(&mut self, segment: u64, t: Trailer) {
        // What the table holds: buckets of (key, value) plus a control byte.
        let weight = t.capacity() * (std::mem::size_of::<(ChunkDigest, TrailerEntry)>() + 1)
            + std::mem::size_of::<HashMap<ChunkDigest, TrailerEntry>>();
        self.tick += 1;
        if let Some((_, old, _)) = self.map.insert(segment, (t, weight, self.tick)) {
            self.bytes -= old;
        }
        self.bytes += weight;
        while self.bytes > self.budget && self.map.len() > 1 {
            let Some((&lru, _)) = self
                .map
                .iter()
                .filter(|(&id, _)| id != segment)
                .min_by_key(|(_, (_, _, used))| *used)
            else {
                break;
            };
            if let Some((_, w, _)) = self.map.remove(&lru) {
                self.bytes -= w;
            }
        }
    }
}

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
    trailers: Mutex<TrailerCache>,
    limits: ReadLimits,
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
            trailers: Mutex::new(TrailerCache::new(ReadLimits::default().trailer_cache)),
            limits: ReadLimits::default(),
            relocations: Default::default(),
            source: None,
            keys: None,
        }
    }

    /// Bound the trailer cache and a restore's window.
    pub fn with_limits(mut self, limits: ReadLimits) -> RecordReader {
        self.trailers = Mutex::new(TrailerCache::new(limits.trailer_cache));
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> ReadLimits {
        self.limits
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
        if let Some(t) = self.cached(segment) {
            return Ok(t);
        }
        let name = segment_object(segment);
        let meta = self.store.head(&self.container, &name).await?;
        let corrupt = |message: String| SegmentError::Corrupt { segment, message };
        if meta.size < (HEADER_LEN + FOOTER_LEN) as u64 {
            return Err(corrupt(format!("{} bytes: not an Ekko segment", meta.size)).into());
        }
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
        let len = trailer_len(meta.size, footer.trailer_offset, footer.count)
            .map_err(|why| corrupt(why.to_string()))?;
        let bytes = self
            .store
            .get_range(&self.container, &name, footer.trailer_offset, len)
            .await?;
        let entries = parse_trailer(segment, &footer, &bytes)?;
        drop(bytes);
        let map: Trailer = Arc::new(entries.into_iter().map(|e| (e.digest, e)).collect());
        self.trailers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(segment, map.clone());
        Ok(map)
    }

    fn cached(&self, segment: u64) -> Option<Trailer> {
        self.trailers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(segment)
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

    /// Fetch and decode one record (digest checked), refused before the
    /// GET if its trailer entry is not what `expect` allows.
    pub async fn read(&self, r: &ChunkRef, expect: RecordExpect) -> Result<Vec<u8>, EngineError> {
        let (segment, e) = self.locate(r).await?;
        check_entry(segment, &e, expect)?;
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
            decode_record(segment, &bytes, &digest, expect, keys.as_deref())
        })
        .await
        .map_err(|e| EngineError::Other(e.to_string()))??;
        Ok(plain)
    }

    pub async fn page(&self, r: &ChunkRef) -> Result<IndexPage, EngineError> {
        Ok(IndexPage::decode(&self.read(r, RecordExpect::PAGE).await?)?)
    }
}

/// The trailer's length from the footer, checked against the object's
/// size before it is fetched: it lies between the header and the footer,
/// holds `count` entries, and each record takes at least a header.
fn trailer_len(size: u64, trailer_offset: u64, count: u32) -> Result<u64, &'static str> {
    let end = size - FOOTER_LEN as u64;
    if trailer_offset < HEADER_LEN as u64 || trailer_offset > end {
        return Err("trailer offset out of range");
    }
    let len = end - trailer_offset;
    if len != count as u64 * TRAILER_ENTRY_LEN as u64 {
        return Err("trailer length does not match the footer");
    }
    if count > MAX_SEGMENT_RECORDS
        || count as u64 * (RECORD_HEADER_LEN + TRAILER_ENTRY_LEN) as u64
            > size - (HEADER_LEN + FOOTER_LEN) as u64
    {
        return Err("more records than the segment can hold");
    }
    Ok(len)
}

/// A trailer entry must be a whole record of the kind and at most the size
/// the caller expects, or it is not fetched.
pub fn check_entry(
    segment: u64,
    e: &TrailerEntry,
    expect: RecordExpect,
) -> Result<(), SegmentError> {
    let message = if e.kind != expect.kind {
        format!(
            "record {}: kind {}, expected {}",
            e.digest, e.kind, expect.kind
        )
    } else if (e.length as u64) > expect.max_record_len() || (e.length as usize) < RECORD_HEADER_LEN
    {
        format!(
            "record {}: length {} is not a record of at most {} bytes",
            e.digest,
            e.length,
            expect.max_record_len()
        )
    } else {
        return Ok(());
    };
    Err(SegmentError::Corrupt { segment, message })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::chunk::Compressor;
    use crate::format::RECORD_CHUNK;
    use crate::segment::{encode_record, SegmentWriter};
    use crate::store::local::LocalStore;
    use crate::store::{ByteStream, ObjectMeta, StoreResult};

    /// A local store that counts GETs and the bytes they asked for.
    struct Counting {
        inner: LocalStore,
        gets: AtomicU64,
        asked: AtomicU64,
    }

    #[async_trait::async_trait]
    impl ObjectStore for Counting {
        async fn put(&self, c: &str, n: &str, body: Bytes) -> StoreResult<()> {
            self.inner.put(c, n, body).await
        }
        async fn put_stream(&self, c: &str, n: &str, body: ByteStream) -> StoreResult<u64> {
            self.inner.put_stream(c, n, body).await
        }
        async fn get(&self, c: &str, n: &str) -> StoreResult<Bytes> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            self.inner.get(c, n).await
        }
        async fn get_range(&self, c: &str, n: &str, off: u64, len: u64) -> StoreResult<Bytes> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            self.asked.fetch_add(len, Ordering::SeqCst);
            self.inner.get_range(c, n, off, len).await
        }
        async fn get_stream(&self, c: &str, n: &str) -> StoreResult<ByteStream> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            self.inner.get_stream(c, n).await
        }
        async fn head(&self, c: &str, n: &str) -> StoreResult<ObjectMeta> {
            self.inner.head(c, n).await
        }
        async fn list(&self, c: &str, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
            self.inner.list(c, prefix).await
        }
        async fn delete(&self, c: &str, n: &str) -> StoreResult<()> {
            self.inner.delete(c, n).await
        }
        async fn containers(&self, prefix: &str) -> StoreResult<Vec<String>> {
            self.inner.containers(prefix).await
        }
    }

    fn counting(dir: &std::path::Path) -> Arc<Counting> {
        Arc::new(Counting {
            inner: LocalStore::new(dir, false).unwrap(),
            gets: AtomicU64::new(0),
            asked: AtomicU64::new(0),
        })
    }

    /// A segment of one chunk, with `edit` applied to its bytes; the
    /// trailer checksum is recomputed, as a hostile writer would.
    fn segment(id: u64, edit: impl FnOnce(&mut Vec<u8>, usize)) -> (Vec<u8>, ChunkDigest) {
        let data = b"ekko".repeat(1000);
        let digest = ChunkDigest::of(&data);
        let mut c = Compressor::new(1).unwrap();
        let mut w = SegmentWriter::new(id, 1, 1 << 20);
        w.push_encoded(&encode_record(&mut c, None, RECORD_CHUNK, digest, &data).unwrap());
        let mut bytes = w.finish();
        let footer = bytes.len() - FOOTER_LEN;
        let trailer = u64::from_le_bytes(bytes[footer..footer + 8].try_into().unwrap()) as usize;
        edit(&mut bytes, trailer);
        let crc = crc32fast::hash(&bytes[trailer..footer]);
        bytes[footer + 12..footer + 16].copy_from_slice(&crc.to_le_bytes());
        (bytes, digest)
    }

    #[tokio::test]
    async fn hostile_lengths_are_refused_before_the_get() {
        let dir = tempfile::tempdir().unwrap();
        let store = counting(dir.path());
        // A trailer entry claiming a 2 GiB record.
        let (bytes, digest) = segment(5, |b, t| {
            b[t + 40..t + 44].copy_from_slice(&(1u32 << 31).to_le_bytes());
        });
        store
            .put("c", &segment_object(5), bytes.into())
            .await
            .unwrap();
        let reader = RecordReader::new(store.clone(), "c");
        let r = ChunkRef { digest, segment: 5 };
        reader.trailer(5).await.unwrap();
        let gets = store.gets.load(Ordering::SeqCst);
        let err = reader
            .read(&r, RecordExpect::chunk(256 << 10))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("length 2147483648"), "{err}");
        assert_eq!(
            store.gets.load(Ordering::SeqCst),
            gets,
            "no GET for the record"
        );
        // The same record read as a page: refused by its kind.
        let err = reader.page(&r).await.unwrap_err();
        assert!(err.to_string().contains("kind 1, expected 2"), "{err}");
        assert_eq!(store.gets.load(Ordering::SeqCst), gets);

        // A footer claiming 2^31 records: the trailer is not fetched.
        let (mut bytes, _) = segment(6, |_, _| {});
        let footer = bytes.len() - FOOTER_LEN;
        bytes[footer + 8..footer + 12].copy_from_slice(&(1u32 << 31).to_le_bytes());
        store
            .put("c", &segment_object(6), bytes.into())
            .await
            .unwrap();
        let before = store.gets.load(Ordering::SeqCst);
        assert!(reader.trailer(6).await.is_err());
        assert_eq!(store.gets.load(Ordering::SeqCst), before + 1, "footer only");
        // A footer whose trailer offset points before the header.
        let (mut bytes, _) = segment(7, |_, _| {});
        let footer = bytes.len() - FOOTER_LEN;
        bytes[footer..footer + 8].copy_from_slice(&3u64.to_le_bytes());
        store
            .put("c", &segment_object(7), bytes.into())
            .await
            .unwrap();
        let (before, asked) = (
            store.gets.load(Ordering::SeqCst),
            store.asked.load(Ordering::SeqCst),
        );
        assert!(reader.trailer(7).await.is_err());
        assert_eq!(store.gets.load(Ordering::SeqCst), before + 1, "footer only");
        assert_eq!(
            store.asked.load(Ordering::SeqCst),
            asked + FOOTER_LEN as u64
        );
    }

    #[tokio::test]
    async fn the_trailer_cache_keeps_to_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = counting(dir.path());
        let mut refs = Vec::new();
        for id in 1..=20u64 {
            let (bytes, digest) = segment(id, |_, _| {});
            store
                .put("c", &segment_object(id), bytes.into())
                .await
                .unwrap();
            refs.push(ChunkRef {
                digest,
                segment: id,
            });
        }
        let reader = RecordReader::new(store.clone(), "c").with_limits(ReadLimits {
            trailer_cache: 1000,
            restore_window: 1,
        });
        for r in &refs {
            reader
                .read(r, RecordExpect::chunk(256 << 10))
                .await
                .unwrap();
        }
        let cache = reader.trailers.lock().unwrap();
        assert!(
            cache.bytes <= 1000 || cache.map.len() == 1,
            "{} bytes",
            cache.bytes
        );
        assert!(cache.map.contains_key(&20), "the newest stays");
        assert!(!cache.map.contains_key(&1), "the oldest went");
    }
}
