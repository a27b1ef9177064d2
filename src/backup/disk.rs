//! Backing up one disk: read the changed chunks, hash (SHA-256) and
//! compress them on the blocking pool, reuse what the previous record or
//! this backup already stored, pack the rest into segments, and build the
//! new map tree, writing only the pages whose content changed.
//!
//! It also counts, per segment, how many references (chunks and pages) this
//! disk's map gained or lost: the catalog records them as reference
//! intervals (`docs/design.md` §3).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::StreamExt;

use super::dedup::KnownChunks;
use super::reader::RecordReader;
use super::writer::{new_segment_id, now_unix, SegmentPacker, WrittenSegment};
use super::EngineError;
pub use super::PreviousRecord;
use super::Progress;
use crate::chunk::{is_zero, ChunkDigest, ChunkRef, Compressor};
use crate::crypto::{identity, ProjectKeys};
use crate::extract::DiskSnapshot;
use crate::format::{RECORD_CHUNK, RECORD_INDEX_PAGE};
use crate::index::{leaf_range, positions, shape, IndexError, IndexPage, TreeBuilder};
use crate::segment::{encode_record, EncodedRecord, SegmentWriter};

#[derive(Debug, Clone, Default)]
pub struct DiskBackupOptions {
    pub chunk_size: u64,
    pub compression_level: i32,
    pub segment_size: usize,
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

/// Load every page ref of the previous tree except the leaves' contents:
/// `levels[k]` lists the refs of the level-k pages (k = 0: leaf pages).
async fn previous_levels(
    reader: &RecordReader,
    prev: &PreviousRecord,
) -> Result<Vec<Vec<ChunkRef>>, EngineError> {
    let n = positions(prev.disk_size, prev.chunk_size);
    let sh = shape(n);
    let mut levels = vec![Vec::new(); sh.len()];
    levels[sh.len() - 1] = vec![prev.root];
    for level in (0..sh.len() - 1).rev() {
        let mut refs = Vec::with_capacity(sh[level] as usize);
        for parent in &levels[level + 1] {
            refs.extend(reader.page(parent).await?.entries);
        }
        if refs.len() as u64 != sh[level] {
            return Err(EngineError::Other(format!(
                "previous map: level {level} has {} pages, expected {}",
                refs.len(),
                sh[level]
            )));
        }
        levels[level] = refs;
    }
    Ok(levels)
}

/// Packs index pages synchronously (the tree builder's callback is sync);
/// the segments are uploaded once the tree is complete.
struct PagePacker {
    compressor: Compressor,
    keys: Option<Arc<ProjectKeys>>,
    current: Option<SegmentWriter>,
    finished: Vec<SegmentWriter>,
    target: usize,
}

impl PagePacker {
    fn push(&mut self, page: &IndexPage) -> Result<ChunkRef, IndexError> {
        let plain = page.encode();
        let keys = self.keys.as_deref();
        let digest = identity(keys, &plain);
        let record = encode_record(
            &mut self.compressor,
            keys,
            RECORD_INDEX_PAGE,
            digest,
            &plain,
        )
        .map_err(|e| IndexError(e.to_string()))?;
        let target = self.target;
        let w = self
            .current
            .get_or_insert_with(|| SegmentWriter::new(new_segment_id(), now_unix(), target));
        w.push_encoded(&record);
        let r = ChunkRef {
            digest,
            segment: w.id(),
        };
        if w.len() >= target {
            if let Some(full) = self.current.take() {
                self.finished.push(full);
            }
        }
        Ok(r)
    }
}

fn bump(deltas: &mut BTreeMap<u64, i64>, r: &ChunkRef, by: i64) {
    if !r.is_zero() {
        *deltas.entry(r.segment).or_insert(0) += by;
    }
}

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
    let n = positions(size, c);
    let full_read = snap.full_reason().is_some();
    let prev = prev.filter(|p| p.disk_size == size && p.chunk_size == c);
    let keys = reader.keys();
    if prev.is_none() && !full_read {
        return Err(EngineError::Other(
            "no compatible previous record (size or chunk size changed): this disk needs a full read".into(),
        ));
    }
    let prev_levels = match prev {
        Some(p) => Some(previous_levels(reader, p).await?),
        None => None,
    };

    // ---- which chunk positions changed, and which of them are all zeros
    let mut changed: Vec<u64> = Vec::new();
    for &(off, len) in snap.changed() {
        if len == 0 {
            continue;
        }
        let (first, last) = (off / c, (off + len - 1) / c);
        let start = match changed.last() {
            Some(&l) if l >= first => l + 1,
            _ => first,
        };
        changed.extend(start..=last.min(n.saturating_sub(1)));
    }
    let zeros = snap.zeros();
    let chunk_is_zero = |p: u64| -> bool {
        let (s, e) = (p * c, ((p + 1) * c).min(size));
        let i = zeros.partition_point(|z| z.0 + z.1 <= s);
        zeros.get(i).is_some_and(|z| z.0 <= s && z.0 + z.1 >= e)
    };
    let mut result = DiskBackupResult {
        size,
        chunk_size: c,
        full_read,
        ..Default::default()
    };
    let mut new_entries: HashMap<u64, ChunkRef> = HashMap::with_capacity(changed.len());
    let mut to_read: Vec<(u64, u64)> = Vec::new();
    for &p in &changed {
        if chunk_is_zero(p) {
            new_entries.insert(p, ChunkRef::ZERO);
            result.zero_chunks += 1;
            continue;
        }
        let (s, e) = (p * c, ((p + 1) * c).min(size));
        match to_read.last_mut() {
            Some(last) if last.0 + last.1 == s && last.1 < (64 << 20) => last.1 += e - s,
            _ => to_read.push((s, e - s)),
        }
    }

    // ---- read, hash and compress in parallel; decide in order. The reader
    // feeds batches through a small channel so NBD reads, hashing and
    // compression (on the blocking pool) and packing overlap.
    let mut packer = SegmentPacker::new(
        reader.store().clone(),
        reader.container(),
        opts.segment_size,
    );
    let mut session: HashMap<ChunkDigest, ChunkRef> = HashMap::new();
    let mut prev_leaf_cache: Option<(u64, Vec<ChunkRef>)> = None;
    let level = opts.compression_level;
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<(u64, Vec<u8>)>>(4);
    let progress = opts.progress.clone().unwrap_or_default();
    progress.add_total(to_read.iter().map(|r| r.1).sum());
    let producer = async {
        let mut stream = snap.read_ranges(to_read);
        let mut read_bytes = 0u64;
        let mut partial: Vec<u8> = Vec::new();
        let mut partial_pos = 0u64;
        let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
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
            if batch.len() * c as usize >= (4 << 20)
                && tx.send(std::mem::take(&mut batch)).await.is_err()
            {
                break;
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
                let entry = if ch.zero {
                    result.zero_chunks += 1;
                    ChunkRef::ZERO
                } else if let Some(r) = session.get(&ch.digest) {
                    result.reused_chunks += 1;
                    *r
                } else if let Some(r) = known.get(&ch.digest) {
                    result.reused_chunks += 1;
                    r
                } else {
                    // Same data as the previous record at this position?
                    let old = match &prev_levels {
                        Some(levels) => {
                            old_entry(reader, levels, &mut prev_leaf_cache, ch.pos).await?
                        }
                        None => ChunkRef::ZERO,
                    };
                    if !old.is_zero() && old.digest == ch.digest {
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
                    }
                };
                if !entry.is_zero() {
                    session.insert(entry.digest, entry);
                }
                new_entries.insert(ch.pos, entry);
            }
        }
        Ok::<(), EngineError>(())
    };
    let (read, consumed) = tokio::join!(producer, consumer);
    consumed?;
    result.read_bytes = read?;
    packer.flush().await?;

    // ---- the new map: unchanged leaves and subtrees are reused as is
    let leaves = shape(n)[0];
    let mut changed_leaves: Vec<u64> = changed
        .iter()
        .map(|p| p / crate::format::INDEX_FANOUT as u64)
        .collect();
    changed_leaves.dedup();
    let mut deltas: BTreeMap<u64, i64> = BTreeMap::new();
    let mut pages = PagePacker {
        compressor: Compressor::new(level)?,
        keys: keys.clone(),
        current: None,
        finished: Vec::new(),
        target: opts.segment_size,
    };
    let mut leaf_refs = Vec::with_capacity(leaves as usize);
    let mut next_changed = changed_leaves.iter().peekable();
    for l in 0..leaves {
        let touched = next_changed.peek().is_some_and(|&&x| x == l);
        if touched {
            next_changed.next();
        }
        let old_leaf = prev_levels.as_ref().map(|lv| lv[0][l as usize]);
        if let (false, Some(old)) = (touched, old_leaf) {
            leaf_refs.push(old);
            continue;
        }
        let range = leaf_range(l, n);
        let base: Vec<ChunkRef> = match old_leaf {
            Some(old) => reader.page(&old).await?.entries,
            None => vec![ChunkRef::ZERO; (range.end - range.start) as usize],
        };
        let mut entries = base.clone();
        for (i, p) in range.clone().enumerate() {
            if let Some(new) = new_entries.get(&p) {
                if *new != base[i] {
                    bump(&mut deltas, &base[i], -1);
                    bump(&mut deltas, new, 1);
                }
                entries[i] = *new;
            }
        }
        let page = IndexPage {
            level: 0,
            first: range.start,
            entries,
        };
        let digest = identity(keys.as_deref(), &page.encode());
        let r = match old_leaf {
            Some(old) if old.digest == digest => old,
            _ => {
                result.pages_written += 1;
                let r = pages.push(&page)?;
                bump(&mut deltas, &r, 1);
                if let Some(old) = old_leaf {
                    bump(&mut deltas, &old, -1);
                }
                r
            }
        };
        leaf_refs.push(r);
    }
    let mut inner_written = 0u64;
    let mut inner_deltas: Vec<(ChunkRef, i64)> = Vec::new();
    let root = {
        let prev_levels = &prev_levels;
        let pages = &mut pages;
        let mut builder = TreeBuilder::new(n, |lvl, idx, page: &IndexPage| {
            let digest = identity(keys.as_deref(), &page.encode());
            let old = prev_levels
                .as_ref()
                .and_then(|lv| lv.get(lvl as usize))
                .and_then(|v| v.get(idx as usize))
                .copied();
            match old {
                Some(o) if o.digest == digest => Ok(o),
                _ => {
                    inner_written += 1;
                    let r = pages.push(page)?;
                    inner_deltas.push((r, 1));
                    if let Some(o) = old {
                        inner_deltas.push((o, -1));
                    }
                    Ok(r)
                }
            }
        });
        for r in &leaf_refs {
            builder.push_leaf(*r)?;
        }
        builder.finish()?
    };
    result.pages_written += inner_written;
    for (r, by) in inner_deltas {
        bump(&mut deltas, &r, by);
    }
    // A one-leaf tree's root is its leaf, counted above.
    let mut finished = std::mem::take(&mut pages.finished);
    finished.extend(pages.current.take());
    for w in finished {
        packer.upload(w).await?;
    }
    packer.flush().await?;
    deltas.retain(|_, v| *v != 0);
    result.root = root;
    result.stored_bytes = packer.stored_bytes;
    result.segments = packer.written;
    result.ref_deltas = deltas;
    result.fresh_map = prev.is_none();
    Ok(result)
}

/// The previous record's entry at `pos` (loading its leaf once).
async fn old_entry(
    reader: &RecordReader,
    levels: &[Vec<ChunkRef>],
    cache: &mut Option<(u64, Vec<ChunkRef>)>,
    pos: u64,
) -> Result<ChunkRef, EngineError> {
    let leaf = pos / crate::format::INDEX_FANOUT as u64;
    if cache.as_ref().map(|c| c.0) != Some(leaf) {
        let page = reader.page(&levels[0][leaf as usize]).await?;
        *cache = Some((leaf, page.entries));
    }
    let entries = &cache
        .as_ref()
        .map(|c| &c.1)
        .ok_or_else(|| EngineError::Other("leaf cache".into()))?;
    Ok(entries[(pos % crate::format::INDEX_FANOUT as u64) as usize])
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
