//! Backing up one disk: read the changed chunks in position order, hash
//! (SHA-256) and compress them on the blocking pool, reuse what the
//! previous record or this backup already stored, pack the rest into
//! segments, and build the new map as the chunks pass
//! ([`super::map_builder`]), writing only the pages whose content changed.
//!
//! Memory is bounded by configuration, not by the disk: the read plan is
//! lazy, a bounded channel joins reading and processing, the dedup tables
//! have a byte budget (`[backup] dedup_memory`), one leaf is open at a time
//! and segments (chunks and pages alike) are uploaded as they fill.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;

use super::dedup::{DigestTable, KnownChunks};
use super::map_builder::{Changes, MapBuilder, ReadPlan};
use super::reader::RecordReader;
use super::writer::{SegmentPacker, WrittenSegment};
use super::EngineError;
pub use super::PreviousRecord;
use super::Progress;
use crate::chunk::{is_zero, ChunkDigest, ChunkRef, Compressor};
use crate::crypto::{identity, ProjectKeys};
use crate::extract::DiskSnapshot;
use crate::format::RECORD_CHUNK;
use crate::segment::{encode_record, EncodedRecord};

#[derive(Debug, Clone, Default)]
pub struct DiskBackupOptions {
    pub chunk_size: u64,
    pub compression_level: i32,
    pub segment_size: usize,
    /// Bytes for the dedup tables (`[backup] dedup_memory`).
    pub dedup_memory: usize,
    /// Advanced by the bytes read.
    pub progress: Option<Arc<Progress>>,
}

#[derive(Debug, Clone, Default)]
pub struct DiskBackupResult {
    pub root: ChunkRef,
    pub size: u64,
    pub chunk_size: u64,
    pub full_read: bool,
    /// Bytes read from the disk.
    pub read_bytes: u64,
    /// Plaintext bytes of chunks stored for the first time.
    pub new_bytes: u64,
    /// Bytes written to the object store (segments, data and pages).
    pub stored_bytes: u64,
    pub new_chunks: u64,
    pub reused_chunks: u64,
    pub zero_chunks: u64,
    pub pages_written: u64,
    pub segments: Vec<WrittenSegment>,
    /// Built without the previous record's map: `ref_deltas` are whole counts.
    pub fresh_map: bool,
    /// Per segment: references this disk's map gained (+) or lost (−).
    pub ref_deltas: BTreeMap<u64, i64>,
}

struct Processed {
    pos: u64,
    digest: ChunkDigest,
    zero: bool,
    raw_len: u32,
    encoded: Option<EncodedRecord>,
}

/// One `read_ranges` call reads at most this many ranges or bytes, so the
/// read plan is never materialised whole.
const READ_WINDOW_RANGES: usize = 16 << 10;
const READ_WINDOW_BYTES: u64 = 16 << 30;
/// Chunks travel from the reader to the hashing stage in batches of this
/// many bytes, 4 batches queued and 3 processed at once.
const BATCH_BYTES: usize = 4 << 20;

/// Back up one disk into the project container `reader` reads (its
/// relocations say where compacted records are). A chunk found in `known`
/// (the project's heads, see [`KnownChunks`]) is referenced, not stored.
pub async fn back_up_disk(
    snap: &dyn DiskSnapshot,
    prev: Option<&PreviousRecord>,
    known: Arc<KnownChunks>,
    reader: &RecordReader,
    opts: &DiskBackupOptions,
) -> Result<DiskBackupResult, EngineError> {
    let (size, c) = (snap.size(), opts.chunk_size);
    let full_read = snap.full_reason().is_some();
    let prev = prev.filter(|p| p.disk_size == size && p.chunk_size == c);
    let keys = reader.keys();
    if prev.is_none() && !full_read {
        return Err(EngineError::Other(
            "no compatible previous record (size or chunk size changed): this disk needs a full read".into(),
        ));
    }
    let changes = || Changes::new(snap.changed(), snap.zeros(), size, c);
    let mut result = DiskBackupResult {
        size,
        chunk_size: c,
        full_read,
        ..Default::default()
    };
    let mut packer = SegmentPacker::new(
        reader.store().clone(),
        reader.container(),
        opts.segment_size,
    );
    let mut map = MapBuilder::new(reader, prev, changes(), opts.compression_level)?;
    // This backup's own chunks, in what the heads' table left of the budget.
    let mut session = DigestTable::with_memory(opts.dedup_memory.saturating_sub(known.memory()));
    let level = opts.compression_level;
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<(u64, Vec<u8>)>>(4);
    let progress = opts.progress.clone().unwrap_or_default();
    progress.add_total(ReadPlan::new(changes()).map(|r| r.1).sum());

    // ---- read in position order, a window of the plan at a time; hash and
    // compress in parallel; decide in order. NBD reads, hashing and
    // compression (on the blocking pool) and packing overlap.
    let producer = async {
        let mut plan = ReadPlan::new(changes()).peekable();
        let mut read_bytes = 0u64;
        let mut partial: Vec<u8> = Vec::new();
        let mut partial_pos = 0u64;
        let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
        'windows: while plan.peek().is_some() {
            let (mut window, mut bytes) = (Vec::new(), 0u64);
            while let Some(r) =
                plan.next_if(|_| window.len() < READ_WINDOW_RANGES && bytes < READ_WINDOW_BYTES)
            {
                bytes += r.1;
                window.push(r);
            }
            let mut stream = snap.read_ranges(window);
            while let Some(piece) = stream.next().await {
                let (off, bytes) = piece?;
                read_bytes += bytes.len() as u64;
                progress.advance(bytes.len() as u64);
                let mut at = off;
                let mut rest: &[u8] = &bytes;
                while !rest.is_empty() {
                    if partial.is_empty() {
                        partial_pos = at / c;
                    }
                    let chunk_len = (((partial_pos + 1) * c).min(size) - partial_pos * c) as usize;
                    let take = (chunk_len - partial.len()).min(rest.len());
                    partial.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    at += take as u64;
                    if partial.len() == chunk_len {
                        batch.push((partial_pos, std::mem::take(&mut partial)));
                    }
                }
                if batch.len() * c as usize >= BATCH_BYTES
                    && tx.send(std::mem::take(&mut batch)).await.is_err()
                {
                    break 'windows;
                }
            }
        }
        if !batch.is_empty() {
            let _ = tx.send(batch).await;
        }
        drop(tx);
        Ok::<u64, EngineError>(read_bytes)
    };
    let consumer = async {
        let mut processed_batches = std::pin::pin!(tokio_stream_from(rx)
            .map(|b| process(b, level, known.clone(), keys.clone()))
            .buffered(3));
        while let Some(processed) = processed_batches.next().await {
            for ch in processed? {
                // Same data as the previous record at this position?
                let old = map.old_at(ch.pos, &mut packer).await?;
                let entry = if ch.zero {
                    result.zero_chunks += 1;
                    ChunkRef::ZERO
                } else if let Some(r) = session.get(&ch.digest) {
                    result.reused_chunks += 1;
                    r
                } else if let Some(r) = known.get(&ch.digest) {
                    result.reused_chunks += 1;
                    r
                } else if !old.is_zero() && old.digest == ch.digest {
                    result.reused_chunks += 1;
                    old
                } else {
                    let record = ch
                        .encoded
                        .ok_or_else(|| EngineError::Other("chunk was not encoded".into()))?;
                    let r = packer.push(&record).await?;
                    result.new_chunks += 1;
                    result.new_bytes += ch.raw_len as u64;
                    r
                };
                session.insert(entry);
                map.set(ch.pos, entry)?;
            }
        }
        Ok::<(), EngineError>(())
    };
    let (read, consumed) = tokio::join!(producer, consumer);
    consumed?;
    result.read_bytes = read?;

    // ---- the rest of the map: unchanged leaves and subtrees reused as is
    let built = map.finish(&mut packer).await?;
    packer.flush().await?;
    if session.evicted() > 0 {
        tracing::info!(
            evicted = session.evicted(),
            "dedup table full: some chunks of this backup may be stored twice"
        );
    }
    result.zero_chunks += built.zero_chunks;
    result.pages_written = built.pages_written;
    result.root = built.root;
    result.stored_bytes = packer.stored_bytes;
    result.segments = packer.written;
    result.ref_deltas = built.deltas;
    result.fresh_map = prev.is_none();
    Ok(result)
}

/// A stream over an mpsc receiver (without pulling in tokio-stream).
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// Hash, zero-check and compress a batch of chunks on the blocking pool.
/// Hash and (unless already known) compress a batch of chunks.
async fn process(
    batch: Vec<(u64, Vec<u8>)>,
    level: i32,
    known: Arc<KnownChunks>,
    keys: Option<Arc<ProjectKeys>>,
) -> Result<Vec<Processed>, EngineError> {
    tokio::task::spawn_blocking(move || {
        let mut compressor = Compressor::new(level)?;
        let mut out = Vec::with_capacity(batch.len());
        for (pos, data) in batch {
            let raw_len = data.len() as u32;
            if is_zero(&data) {
                out.push(Processed {
                    pos,
                    digest: ChunkDigest::default(),
                    zero: true,
                    raw_len,
                    encoded: None,
                });
                continue;
            }
            let digest = identity(keys.as_deref(), &data);
            // A known chunk is referenced, never stored: skip the zstd work.
            let encoded = match known.get(&digest) {
                Some(_) => None,
                None => Some(encode_record(
                    &mut compressor,
                    keys.as_deref(),
                    RECORD_CHUNK,
                    digest,
                    &data,
                )?),
            };
            out.push(Processed {
                pos,
                digest,
                zero: false,
                raw_len,
                encoded,
            });
        }
        Ok::<_, EngineError>(out)
    })
    .await
    .map_err(|e| EngineError::Other(format!("chunk worker: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::restore::{verify, RestoreTarget};
    use crate::chunk::alloc_probe::largest_allocation;
    use crate::extract::{ExtractError, FullReason};
    use crate::store::local::LocalStore;
    use bytes::Bytes;
    use futures::stream::BoxStream;

    const C: u64 = 256 << 10;

    /// A sparse disk: `written` chunk positions hold data, the rest reads
    /// as holes.
    struct SparseDisk {
        size: u64,
        full: Option<FullReason>,
        changed: Vec<(u64, u64)>,
        zeros: Vec<(u64, u64)>,
    }

    fn chunk_data(pos: u64) -> Vec<u8> {
        (0..C)
            .map(|i| (i as u8) ^ (pos as u8) ^ ((i >> 9) as u8))
            .collect()
    }

    impl SparseDisk {
        fn new(size: u64, written: &[u64], changed: Vec<(u64, u64)>) -> SparseDisk {
            let mut zeros = Vec::new();
            let mut at = 0;
            for &p in written {
                if p * C > at {
                    zeros.push((at, p * C - at));
                }
                at = (p + 1) * C;
            }
            zeros.push((at, size - at));
            SparseDisk {
                size,
                full: Some(FullReason::Requested),
                changed,
                zeros,
            }
        }
    }

    #[async_trait::async_trait]
    impl DiskSnapshot for SparseDisk {
        fn device(&self) -> &str {
            "vda"
        }
        fn size(&self) -> u64 {
            self.size
        }
        fn full_reason(&self) -> Option<&FullReason> {
            self.full.as_ref()
        }
        fn changed(&self) -> &[(u64, u64)] {
            &self.changed
        }
        fn zeros(&self) -> &[(u64, u64)] {
            &self.zeros
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

    /// Counts what a restore writes, keeps nothing.
    #[derive(Default)]
    struct Counter(std::sync::atomic::AtomicU64);

    #[async_trait::async_trait]
    impl RestoreTarget for Counter {
        fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            assert_eq!(data, chunk_data(offset / C));
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        async fn finish(&self) -> Result<(), EngineError> {
            Ok(())
        }
        fn discard(&self) {}
        fn describe(&self) -> String {
            "counter".into()
        }
    }

    /// A 256 GiB sparse disk (a million chunk positions, 16,384 leaves):
    /// a full backup, an incremental and a restore make no allocation that
    /// grows with the disk (the engine used to size per-position tables:
    /// 100 MiB and more for this disk).
    #[test]
    fn no_allocation_grows_with_the_disk() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn crate::store::ObjectStore> =
            Arc::new(LocalStore::new(dir.path(), false).unwrap());
        let size = 256u64 << 30;
        let positions = size / C;
        let written: Vec<u64> = (0..40u64).map(|i| i * (positions / 40) + i).collect();
        let opts = DiskBackupOptions {
            chunk_size: C,
            compression_level: 1,
            segment_size: 4 << 20,
            dedup_memory: 8 << 20,
            progress: None,
        };
        let reader = RecordReader::new(store, "c");
        let full = SparseDisk::new(size, &written, vec![(0, size)]);
        let (first, largest) = largest_allocation(|| {
            rt.block_on(back_up_disk(&full, None, Arc::default(), &reader, &opts))
        });
        let first = first.unwrap();
        assert_eq!(first.new_chunks, 40);
        assert!(largest < 12 << 20, "full backup: {largest} bytes at once");
        // An incremental touching a few chunks, through the previous map.
        let mut incr = SparseDisk::new(size, &written, vec![(written[3] * C, C), (size - C, C)]);
        incr.full = None;
        let prev = PreviousRecord {
            root: first.root,
            disk_size: size,
            chunk_size: C,
        };
        let (second, largest) = largest_allocation(|| {
            rt.block_on(back_up_disk(
                &incr,
                Some(&prev),
                Arc::default(),
                &reader,
                &opts,
            ))
        });
        let second = second.unwrap();
        assert_eq!((second.new_chunks, second.reused_chunks), (0, 1));
        assert_eq!(second.zero_chunks, 1);
        assert!(second.pages_written <= 4 + 2, "{}", second.pages_written);
        assert!(largest < 12 << 20, "incremental: {largest} bytes at once");
        // Restore and verify, a window at a time.
        let target = Arc::new(Counter::default());
        let record = PreviousRecord {
            root: second.root,
            disk_size: size,
            chunk_size: C,
        };
        let (stats, largest) = largest_allocation(|| {
            rt.block_on(crate::backup::restore::restore(
                &reader,
                &record,
                target.clone(),
                None,
            ))
        });
        let stats = stats.unwrap();
        assert_eq!(stats.chunks, 40);
        assert_eq!(target.0.load(std::sync::atomic::Ordering::SeqCst), 40);
        assert!(largest < 12 << 20, "restore: {largest} bytes at once");
        let v = rt
            .block_on(verify(&reader, second.root, size, C, None))
            .unwrap();
        assert_eq!((v.chunks, v.bad_chunks), (40, 0));
    }
}
