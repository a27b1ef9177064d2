//! A backup record served as a block device: the [`ExportSource`] behind
//! `ekko export` (an NBD export of one disk of a backup).
//!
//! The record's map is loaded once ([`map_tree`]: one entry per chunk, a
//! few tens of bytes each), so every read knows at once which chunks it
//! needs and which are zero. Stored chunks are fetched through the
//! [`RecordReader`] (its digest check runs before any byte is served) and
//! kept decoded in a cache bounded in bytes, least recently used first out.
//! Concurrent reads of one chunk share one fetch. A chunk that cannot be
//! fetched or fails its check fails the reads that need it, and only them:
//! the next read of it tries the store again.
//!
//! A read fetches the chunks it lacks as a restore does: adjacent records
//! of a segment in one ranged GET. A reader that goes on where an earlier
//! read ended (`nbdcopy`, `qemu-img convert`, a booting guest) also gets
//! the next [`READ_AHEAD`] chunks fetched before it asks for them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};

use super::reader::RecordReader;
use super::restore::{map_tree, plan_fetches, refuse_write_keys, Fetch, Wanted};
use super::{EngineError, PreviousRecord};
use crate::chunk::{ChunkDigest, ChunkRef};
use crate::nbd::server::{ExportSource, SourceError};
use crate::segment::RecordExpect;

/// Chunks one read fetches at once (a 32 MiB read of 256 KiB chunks needs
/// 128; a few in flight keep the store busy without a burst of GETs).
const FETCHES_PER_READ: usize = 8;
/// Bytes fetched ahead of a sequential reader, in whole aligned blocks
/// (64 chunks of 256 KiB, in GETs of at most [`RANGE_MAX`] side by side),
/// and never more than a quarter of the cache (they would be evicted
/// before they are read). Measured with `tools/bench-export.sh` on Swift:
/// 8 MiB and 1 MiB GETs copy 0.72-0.77x as fast as a restore, 16 MiB and
/// 2 MiB 0.77-0.82x.
const READ_AHEAD_BYTES: u64 = 16 << 20;
/// Ranged GETs one export has in flight at once.
const GETS_IN_FLIGHT: usize = 16;
/// The largest merged GET: a reader waits for the whole range, so ranges
/// stay short and many are in flight (a restore, which waits for nothing,
/// takes 8 MiB at once).
const RANGE_MAX: u64 = 2 << 20;
/// Records one blocking task decodes (1 MiB of 256 KiB chunks).
const DECODE_GROUP: usize = 4;
/// Ends of recent reads remembered to tell a sequential reader (several
/// clients, each with many requests in flight).
const RECENT_READS: usize = 64;

type Chunk = Bytes;
type Fetched = Result<Chunk, Arc<String>>;
type Fetching = Shared<BoxFuture<'static, Fetched>>;

/// Decoded chunks by digest within a byte budget, least recently used out.
struct ChunkCache {
    map: HashMap<ChunkDigest, (Chunk, u64)>,
    /// Last use → digest: the oldest first.
    order: BTreeMap<u64, ChunkDigest>,
    bytes: u64,
    budget: u64,
    tick: u64,
}

impl ChunkCache {
    fn new(budget: u64) -> ChunkCache {
        ChunkCache {
            map: HashMap::new(),
            order: BTreeMap::new(),
            bytes: 0,
            budget,
            tick: 0,
        }
    }

    fn contains(&self, d: &ChunkDigest) -> bool {
        self.map.contains_key(d)
    }

    fn get(&mut self, d: &ChunkDigest) -> Option<Chunk> {
        self.tick += 1;
        let (chunk, used) = self.map.get_mut(d)?;
        self.order.remove(used);
        *used = self.tick;
        self.order.insert(self.tick, *d);
        Some(chunk.clone())
    }

    fn insert(&mut self, d: ChunkDigest, chunk: Chunk) {
        let weight = chunk.len() as u64;
        if weight > self.budget || self.map.contains_key(&d) {
            return;
        }
        self.tick += 1;
        self.bytes += weight;
        self.order.insert(self.tick, d);
        self.map.insert(d, (chunk, self.tick));
        while self.bytes > self.budget {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((c, _)) = self.map.remove(&oldest) {
                self.bytes -= c.len() as u64;
            }
        }
    }
}

/// One disk of a backup, readable at any offset.
pub struct BackupExport {
    reader: Arc<RecordReader>,
    entries: Vec<ChunkRef>,
    disk_size: u64,
    chunk_size: u64,
    cache: Arc<Mutex<ChunkCache>>,
    fetching: Arc<Mutex<HashMap<ChunkDigest, Fetching>>>,
    /// Where recent reads ended (chunk positions), newest last.
    recent: Mutex<VecDeque<u64>>,
    /// Chunk positions read ahead (0: none).
    ahead: u64,
    gets: Arc<tokio::sync::Semaphore>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BackupExport {
    /// Load the record's map; keep at most `cache_bytes` of decoded chunks.
    pub async fn open(
        reader: Arc<RecordReader>,
        record: &PreviousRecord,
        cache_bytes: u64,
    ) -> Result<BackupExport, EngineError> {
        // A host with only a public-key project's write keys opens no chunk.
        refuse_write_keys(&reader)?;
        if record.chunk_size == 0 {
            return Err(EngineError::Other("record with a chunk size of 0".into()));
        }
        let tree = map_tree(&reader, record.root, record.disk_size, record.chunk_size).await?;
        Ok(BackupExport {
            reader,
            entries: tree.entries,
            disk_size: record.disk_size,
            chunk_size: record.chunk_size,
            cache: Arc::new(Mutex::new(ChunkCache::new(cache_bytes))),
            fetching: Arc::new(Mutex::new(HashMap::new())),
            recent: Mutex::new(VecDeque::new()),
            ahead: READ_AHEAD_BYTES.min(cache_bytes / 4) / record.chunk_size,
            gets: Arc::new(tokio::sync::Semaphore::new(GETS_IN_FLIGHT)),
        })
    }

    /// Bytes of the disk at chunk position `pos`.
    fn chunk_len(&self, pos: u64) -> u64 {
        self.chunk_size.min(self.disk_size - pos * self.chunk_size)
    }

    /// The decoded chunk at `pos` (`None`: a zero chunk), from the cache or
    /// the store.
    async fn chunk(&self, pos: u64) -> Result<Option<Chunk>, String> {
        let r = self.entries[pos as usize];
        if r.is_zero() {
            return Ok(None);
        }
        if let Some(c) = lock(&self.cache).get(&r.digest) {
            return Ok(Some(c));
        }
        let fetch = lock(&self.fetching)
            .entry(r.digest)
            .or_insert_with(|| {
                // Spawned, and it removes its own entry: a reader that gives
                // up (its client left) leaves no fetch nobody drives.
                let (tx, rx) = oneshot::channel::<Fetched>();
                let (reader, gets) = (self.reader.clone(), self.gets.clone());
                let (cache, fetching) = (self.cache.clone(), self.fetching.clone());
                let expect = RecordExpect::chunk(self.chunk_size);
                tokio::spawn(async move {
                    let _get = gets.acquire_owned().await;
                    // `read` checks the digest before returning the bytes.
                    let got = reader.read(&r, expect).await.map(Bytes::from).map_err(|e| {
                        Arc::new(format!(
                            "chunk {} (segment {:016x}): {e}",
                            r.digest, r.segment
                        ))
                    });
                    if let Ok(c) = &got {
                        lock(&cache).insert(r.digest, c.clone());
                    }
                    let _ = tx.send(got);
                    lock(&fetching).remove(&r.digest);
                });
                let abandoned = || Arc::new("chunk fetch abandoned".to_string());
                rx.map(move |r| r.unwrap_or_else(|_| Err(abandoned())))
                    .boxed()
                    .shared()
            })
            .clone();
        let got = fetch.await;
        let chunk = got.map_err(|e| e.to_string())?;
        lock(&self.cache).insert(r.digest, chunk.clone());
        Ok(Some(chunk))
    }

    /// Whether a read of positions `first..=last` goes on where a recent
    /// read ended (remembering where this one ends).
    fn sequential(&self, first: u64, last: u64) -> bool {
        let mut recent = lock(&self.recent);
        let near = recent
            .iter()
            .any(|&end| first <= end + self.ahead && first + self.ahead >= end);
        recent.push_back(last + 1);
        if recent.len() > RECENT_READS {
            recent.pop_front();
        }
        near
    }

    /// Start merged fetches of the stored chunks of positions `from..to`
    /// that are neither cached nor being fetched. They are registered as
    /// being fetched at once (under the lock, before any wait), so no other
    /// read fetches them again and [`Self::chunk`] waits for them; the
    /// planning and the GETs run in a task of their own, which settles every
    /// registered chunk even if the read that started it is dropped.
    fn prefetch(&self, from: u64, to: u64) {
        let mut senders: HashMap<ChunkDigest, oneshot::Sender<Fetched>> = HashMap::new();
        let wanted: Vec<ChunkRef> = {
            let cache = lock(&self.cache);
            let mut fetching = lock(&self.fetching);
            (from..to)
                .map(|pos| {
                    let r = self.entries[pos as usize];
                    if r.is_zero() || cache.contains(&r.digest) || fetching.contains_key(&r.digest)
                    {
                        return ChunkRef::ZERO;
                    }
                    let (tx, rx) = oneshot::channel::<Fetched>();
                    let abandoned = || Arc::new("chunk fetch abandoned".to_string());
                    let fut = rx.map(move |r| r.unwrap_or_else(|_| Err(abandoned())));
                    fetching.insert(r.digest, fut.boxed().shared());
                    senders.insert(r.digest, tx);
                    r
                })
                .collect()
        };
        if senders.is_empty() {
            return;
        }
        let (reader, chunk_size) = (self.reader.clone(), self.chunk_size);
        let (cache, fetching) = (self.cache.clone(), self.fetching.clone());
        let gets = self.gets.clone();
        tokio::spawn(async move {
            let (fetches, unlocated) =
                plan_fetches(&reader, from, wanted.clone(), chunk_size, RANGE_MAX).await;
            for (pos, why) in unlocated {
                let d = wanted[(pos - from) as usize].digest;
                if let Some(tx) = senders.remove(&d) {
                    let _ = tx.send(Err(Arc::new(why)));
                    lock(&fetching).remove(&d);
                }
            }
            for f in fetches {
                let mine: Vec<_> = f
                    .records
                    .iter()
                    .filter_map(|w| senders.remove(&w.digest).map(|tx| (w.digest, tx)))
                    .collect();
                tokio::spawn(fetch_range(
                    reader.clone(),
                    f,
                    chunk_size,
                    cache.clone(),
                    fetching.clone(),
                    mine,
                    gets.clone(),
                ));
            }
            // Anything left was planned nowhere: let its readers try alone.
            for (d, _) in senders {
                lock(&fetching).remove(&d);
            }
        });
    }
}

/// GET one merged range, then decode (digest checked) its records on the
/// blocking pool, several at once, each cached and handed to the readers
/// waiting for it as soon as it is ready.
async fn fetch_range(
    reader: Arc<RecordReader>,
    f: Fetch,
    chunk_size: u64,
    cache: Arc<Mutex<ChunkCache>>,
    fetching: Arc<Mutex<HashMap<ChunkDigest, Fetching>>>,
    senders: Vec<(ChunkDigest, oneshot::Sender<Fetched>)>,
    gets: Arc<tokio::sync::Semaphore>,
) {
    let mut senders: HashMap<ChunkDigest, oneshot::Sender<Fetched>> = senders.into_iter().collect();
    let segment = f.segment;
    let get = gets.acquire_owned().await;
    let got = reader
        .store()
        .get_range(
            reader.container(),
            &super::segment_object(segment),
            f.start,
            f.end - f.start,
        )
        .await;
    drop(get);
    let keys = reader.keys();
    // Records decoded a few at a time per blocking task: one hand-off per
    // group rather than per chunk, groups decoded side by side.
    let groups: Vec<Vec<Wanted>> = {
        let mut groups = Vec::new();
        let mut records = f.records.into_iter().peekable();
        while records.peek().is_some() {
            groups.push(records.by_ref().take(DECODE_GROUP).collect());
        }
        groups
    };
    let start = f.start;
    let decoded = futures::stream::iter(groups)
        .map(|group| {
            let (got, keys) = (got.as_ref().map(|b| b.clone()), keys.clone());
            async move {
                let digests: Vec<ChunkDigest> = group.iter().map(|w| w.digest).collect();
                let failed =
                    |why: Arc<String>| digests.iter().map(|d| (*d, Err(why.clone()))).collect();
                let bytes = match got {
                    Ok(b) => b,
                    Err(e) => return failed(Arc::new(format!("segment {segment:016x}: {e}"))),
                };
                let done = tokio::task::spawn_blocking(move || {
                    let expect = RecordExpect::chunk(chunk_size);
                    group
                        .iter()
                        .map(|w| {
                            let at = (w.offset - start) as usize;
                            let end = at + w.length as usize;
                            let r = match bytes.get(at..end) {
                                None => {
                                    Err(Arc::new(format!("segment {segment:016x}: short read")))
                                }
                                Some(record) => crate::segment::decode_record(
                                    segment,
                                    record,
                                    &w.digest,
                                    expect,
                                    keys.as_deref(),
                                )
                                .map(Bytes::from)
                                .map_err(|e| Arc::new(format!("chunk {}: {e}", w.digest))),
                            };
                            (w.digest, r)
                        })
                        .collect::<Vec<(ChunkDigest, Fetched)>>()
                })
                .await;
                match done {
                    Ok(r) => r,
                    Err(e) => failed(Arc::new(format!("decoding chunks: {e}"))),
                }
            }
        })
        .buffer_unordered(FETCHES_PER_READ)
        .flat_map(futures::stream::iter);
    futures::pin_mut!(decoded);
    while let Some((d, r)) = decoded.next().await {
        if let Ok(c) = &r {
            lock(&cache).insert(d, c.clone());
        }
        if let Some(tx) = senders.remove(&d) {
            let _ = tx.send(r);
            lock(&fetching).remove(&d);
        }
    }
}

#[async_trait::async_trait]
impl ExportSource for BackupExport {
    fn size(&self) -> u64 {
        self.disk_size
    }

    fn preferred_block(&self) -> u32 {
        self.chunk_size.min(u32::MAX as u64) as u32
    }

    async fn read(&self, offset: u64, length: u32) -> Result<Bytes, SourceError> {
        let end = offset + length as u64;
        if length == 0 || end > self.disk_size {
            return Err(format!("read {offset}+{length} past the end").into());
        }
        let (first, last) = (offset / self.chunk_size, (end - 1) / self.chunk_size);
        // A sequential reader gets whole blocks of READ_AHEAD positions
        // ahead (block-aligned: a window sliding one chunk per read would
        // fetch one chunk per GET at its end).
        let to = match self.ahead > 1 && self.sequential(first, last) {
            true => (last + 1 + self.ahead).div_ceil(self.ahead) * self.ahead,
            false => last + 1,
        };
        self.prefetch(first, to.min(self.entries.len() as u64));
        let chunks: Vec<(u64, Option<Chunk>)> = futures::stream::iter(first..=last)
            .map(|pos| async move { self.chunk(pos).await.map(|c| (pos, c)) })
            .buffered(FETCHES_PER_READ)
            .try_collect()
            .await?;
        // Within one chunk (most reads: clients read chunk-aligned), the
        // cached bytes themselves, not a copy.
        if let [(pos, Some(c))] = chunks.as_slice() {
            let start = pos * self.chunk_size;
            if c.len() as u64 == self.chunk_len(*pos) {
                return Ok(c.slice((offset - start) as usize..(end - start) as usize));
            }
        }
        let mut out = Vec::with_capacity(length as usize);
        for (pos, chunk) in chunks {
            let start = pos * self.chunk_size;
            let from = offset.max(start) - start;
            let to = end.min(start + self.chunk_len(pos)) - start;
            match chunk {
                Some(c) if c.len() as u64 != self.chunk_len(pos) => {
                    return Err(format!(
                        "chunk at position {pos}: {} bytes, expected {}",
                        c.len(),
                        self.chunk_len(pos)
                    )
                    .into())
                }
                Some(c) => out.extend_from_slice(&c[from as usize..to as usize]),
                None => out.resize(out.len() + (to - from) as usize, 0),
            }
        }
        Ok(Bytes::from(out))
    }

    fn extents(&self, offset: u64, length: u64) -> Vec<(u64, bool)> {
        let end = (offset + length).min(self.disk_size);
        let mut out: Vec<(u64, bool)> = Vec::new();
        let mut at = offset;
        while at < end {
            let pos = at / self.chunk_size;
            let next = ((pos + 1) * self.chunk_size).min(end);
            let zero = self.entries.get(pos as usize).is_none_or(|r| r.is_zero());
            match out.last_mut() {
                Some((len, z)) if *z == zero => *len += next - at,
                _ => out.push((next - at, zero)),
            }
            at = next;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;
    use futures::stream::BoxStream;

    use super::*;
    use crate::backup::disk::{back_up_disk, DiskBackupOptions};
    use crate::extract::{DiskSnapshot, ExtractError, FullReason};
    use crate::store::local::LocalStore;
    use crate::store::{ByteStream, ObjectMeta, ObjectStore, StoreResult};

    const C: u64 = 64 << 10;

    /// 32 chunk positions; every fourth one zero.
    struct Disk;

    fn chunk_data(pos: u64) -> Vec<u8> {
        if pos % 4 == 3 {
            return vec![0; C as usize];
        }
        (0..C)
            .map(|i| (i as u8) ^ (pos as u8) ^ ((i >> 9) as u8))
            .collect()
    }

    #[async_trait::async_trait]
    impl DiskSnapshot for Disk {
        fn device(&self) -> &str {
            "vda"
        }
        fn size(&self) -> u64 {
            32 * C
        }
        fn full_reason(&self) -> Option<&FullReason> {
            Some(&FullReason::Requested)
        }
        fn changed(&self) -> &[(u64, u64)] {
            &[(0, 32 * C)]
        }
        fn zeros(&self) -> &[(u64, u64)] {
            &[]
        }
        fn new_bitmap(&self) -> Option<&str> {
            None
        }
        fn read_ranges<'a>(
            &'a self,
            ranges: Vec<(u64, u64)>,
        ) -> BoxStream<'a, Result<(u64, Bytes), ExtractError>> {
            let pieces = ranges.into_iter().flat_map(|(off, len)| {
                (off / C..(off + len) / C).map(|p| Ok((p * C, Bytes::from(chunk_data(p)))))
            });
            futures::stream::iter(pieces).boxed()
        }
    }

    /// A local store that counts ranged GETs and can fail them.
    struct Counting {
        inner: LocalStore,
        ranged: AtomicU64,
        failing: std::sync::atomic::AtomicBool,
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
            self.inner.get(c, n).await
        }
        async fn get_range(&self, c: &str, n: &str, off: u64, len: u64) -> StoreResult<Bytes> {
            self.ranged.fetch_add(1, Ordering::SeqCst);
            // Slow enough for concurrent readers to meet on one fetch.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if self.failing.load(Ordering::SeqCst) {
                return self.inner.get_range(c, "missing", off, len).await;
            }
            self.inner.get_range(c, n, off, len).await
        }
        async fn get_stream(&self, c: &str, n: &str) -> StoreResult<ByteStream> {
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

    #[tokio::test]
    async fn reads_share_fetches_and_a_failed_fetch_fails_only_its_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Counting {
            inner: LocalStore::new(dir.path(), false).unwrap(),
            ranged: AtomicU64::new(0),
            failing: Default::default(),
        });
        let reader = Arc::new(RecordReader::new(store.clone(), "c"));
        let opts = DiskBackupOptions {
            chunk_size: C,
            compression_level: 1,
            segment_size: 4 << 20,
            dedup_memory: 1 << 20,
            progress: None,
        };
        let made = back_up_disk(&Disk, None, Arc::default(), &reader, &opts)
            .await
            .unwrap();
        let record = PreviousRecord {
            root: made.root,
            disk_size: 32 * C,
            chunk_size: C,
        };
        let export = BackupExport::open(reader, &record, 0).await.unwrap();
        assert_eq!(export.size(), 32 * C);
        assert_eq!(export.preferred_block(), C as u32);
        // Data and zero runs as the map says.
        assert_eq!(
            export.extents(C / 2, 4 * C),
            vec![(5 * C / 2, false), (C, true), (C / 2, false)]
        );
        // A read across chunks and a zero chunk: the disk's bytes.
        let got = export.read(C + 100, (3 * C) as u32).await.unwrap();
        let disk: Vec<u8> = (0..32).flat_map(chunk_data).collect();
        assert!(got[..] == disk[(C + 100) as usize..(4 * C + 100) as usize]);

        // Eight readers of one chunk at once (no cache): one GET.
        export.read(0, 10).await.unwrap();
        let before = store.ranged.load(Ordering::SeqCst);
        let reads = (0..8).map(|i| export.read(5 * C + i * 100, 100));
        for (i, r) in futures::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            let at = (5 * C + i as u64 * 100) as usize;
            assert!(r.unwrap()[..] == disk[at..at + 100]);
        }
        assert_eq!(store.ranged.load(Ordering::SeqCst) - before, 1);
        // Zero chunks never reach the store.
        let before = store.ranged.load(Ordering::SeqCst);
        assert!(export
            .read(3 * C, C as u32)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 0));
        assert_eq!(store.ranged.load(Ordering::SeqCst), before);

        // The store fails: reads needing a chunk fail; zero ranges still
        // read; once it is back, the same chunk reads (no error cached).
        store.failing.store(true, Ordering::SeqCst);
        assert!(export.read(6 * C, 10).await.is_err());
        assert!(export.read(7 * C, 10).await.is_ok());
        store.failing.store(false, Ordering::SeqCst);
        let at = (6 * C) as usize;
        assert!(export.read(6 * C, 10).await.unwrap()[..] == disk[at..at + 10]);
    }

    fn digest(i: u8) -> ChunkDigest {
        ChunkDigest::of(&[i])
    }

    #[test]
    fn the_cache_keeps_to_its_budget_least_recently_used_out() {
        let mut c = ChunkCache::new(300);
        for i in 0..3 {
            c.insert(digest(i), Bytes::from(vec![i; 100]));
        }
        assert!(c.get(&digest(0)).is_some(), "0 is now the most recent");
        c.insert(digest(3), Bytes::from(vec![3; 100]));
        assert_eq!(c.bytes, 300);
        assert!(c.get(&digest(1)).is_none(), "the least recently used went");
        for i in [0, 2, 3] {
            assert_eq!(c.get(&digest(i)).unwrap()[0], i);
        }
        // Larger than the whole budget: not cached, nothing evicted.
        c.insert(digest(9), Bytes::from(vec![9; 301]));
        assert!(c.get(&digest(9)).is_none());
        assert_eq!(c.map.len(), 3);
        let mut none = ChunkCache::new(0);
        none.insert(digest(1), Bytes::from(vec![1]));
        assert!(none.get(&digest(1)).is_none());
    }
}
