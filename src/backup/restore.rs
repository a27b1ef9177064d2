//! Restoring and verifying a backup record: walk its map tree a window of
//! leaves at a time ([`super::map::MapWalker`], `[backup] restore_window`),
//! fetch every stored chunk of the window (many in flight), check each
//! digest, and write the data at its position into a [`RestoreTarget`].
//! Zero chunks are never written, so a raw target stays sparse. What is
//! kept across windows is counters and the first bad ranges: memory does
//! not grow with the disk.
//!
//! The target is a seam: a file on a host today ([`super::file_target`]),
//! an image or an export next. Adding one means implementing
//! [`RestoreTarget`]; the walk, the checks and the fetch plan stay here.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use futures::StreamExt;

use super::map::MapWalker;
use super::reader::{check_entry, RecordReader};
use super::EngineError;
use super::Progress;
use crate::chunk::ChunkRef;
use crate::index::{positions, shape};
use crate::segment::RecordExpect;

pub use crate::status::ImageFormat as TargetFormat;

/// Where a restored disk goes.
#[async_trait::async_trait]
pub trait RestoreTarget: Send + Sync {
    /// Write restored bytes at `offset` (called from the blocking pool,
    /// several at once).
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()>;
    /// These ranges are complete (a file starts writing them back).
    fn written(&self, _ranges: Vec<(u64, u64)>) {}
    /// A streaming target (an image upload) takes data in disk order
    /// through a buffer of this many bytes: the walk then plans windows of
    /// at most half of it, and [`admit`](RestoreTarget::admit)s each
    /// before fetching it. `None`: the target writes anywhere (a file).
    fn stream_buffer(&self) -> Option<u64> {
        None
    }
    /// Wait until data up to byte `end` fits the stream's buffer (the
    /// stream has sent what lies a buffer before it).
    async fn admit(&self, _end: u64) -> Result<(), EngineError> {
        Ok(())
    }
    /// Everything is written: make it durable and final.
    async fn finish(&self) -> Result<(), EngineError>;
    /// The restore is abandoned: remove what it wrote.
    fn discard(&self);
    /// What errors and logs call it.
    fn describe(&self) -> String;
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub chunks: u64,
    pub zero_chunks: u64,
    pub bytes_written: u64,
    /// Chunks missing or corrupt.
    pub bad_chunks: u64,
    /// The first [`BAD_RANGES_KEPT`] byte ranges whose chunk was missing or
    /// corrupt, in disk order, with the reason.
    pub bad: Vec<(u64, u64, String)>,
}

/// Bad ranges a restore or verify names; past these it only counts.
pub const BAD_RANGES_KEPT: usize = 100;

/// A record's map: every index page (all levels, root first) and every leaf
/// entry in position order.
pub struct MapTree {
    pub pages: Vec<ChunkRef>,
    pub entries: Vec<ChunkRef>,
}

impl MapTree {
    /// References the record holds into each segment: one per index page
    /// and one per stored (non-zero) leaf entry. The catalog's reference
    /// intervals count the same way (`disk::back_up_disk`'s deltas).
    pub fn references(&self) -> std::collections::BTreeMap<u64, i64> {
        let mut refs = std::collections::BTreeMap::new();
        for r in self.pages.iter().chain(&self.entries) {
            if !r.is_zero() {
                *refs.entry(r.segment).or_insert(0) += 1;
            }
        }
        refs
    }
}

/// Load a record's whole map tree.
pub async fn map_tree(
    reader: &RecordReader,
    root: ChunkRef,
    disk_size: u64,
    chunk_size: u64,
) -> Result<MapTree, EngineError> {
    let n = positions(disk_size, chunk_size);
    let levels = shape(n).len();
    let mut pages = vec![root];
    let mut frontier = vec![root];
    for _ in 1..levels {
        let mut next = Vec::new();
        for r in &frontier {
            next.extend(reader.page(r).await?.entries);
        }
        pages.extend(&next);
        frontier = next;
    }
    // `frontier` now holds the leaf pages' refs.
    let mut entries = Vec::with_capacity(n as usize);
    // Futures collected first: a lazily mapping iterator inside the stream
    // makes the caller's future not `Send` for every lifetime.
    let fetches: Vec<_> = frontier.iter().map(|r| reader.page(r)).collect();
    let leaves: Vec<_> = futures::stream::iter(fetches).buffered(16).collect().await;
    for p in leaves {
        entries.extend(p?.entries);
    }
    if entries.len() as u64 != n {
        return Err(EngineError::Other(format!(
            "map has {} entries, expected {n}",
            entries.len()
        )));
    }
    Ok(MapTree { pages, entries })
}

/// Records closer than this in a segment are fetched with one GET (the gap
/// is read and dropped: cheaper than another request).
const RANGE_GAP: u64 = 256 << 10;
/// Ranged GETs in flight per restore or verify: enough to keep an object
/// store's proxy and object servers busy at once.
const RANGES_IN_FLIGHT: usize = 8;

/// Largest single GET of a restore; with `concurrency` in flight this bounds
/// the memory a restore uses, whatever the disk size.
const RANGE_MAX: u64 = 8 << 20;

/// One stored record and the disk positions that hold it.
pub(super) struct Wanted {
    pub offset: u64,
    pub length: u32,
    pub digest: crate::chunk::ChunkDigest,
    pub positions: Vec<u64>,
}

/// Consecutive records of one segment fetched with one ranged GET.
pub(super) struct Fetch {
    pub segment: u64,
    pub start: u64,
    pub end: u64,
    pub records: Vec<Wanted>,
}

/// Group a map's stored entries into ranged GETs: per segment, in offset
/// order, adjacent records merged (a chunk shared by several positions is
/// fetched once). Entries whose segment cannot be located are returned
/// with the reason.
pub(super) async fn plan_fetches(
    reader: &RecordReader,
    first: u64,
    entries: Vec<ChunkRef>,
    chunk_size: u64,
    range_max: u64,
) -> (Vec<Fetch>, Vec<(u64, String)>) {
    let mut by_record: HashMap<(u64, u64), Wanted> = HashMap::new();
    let mut unlocated = Vec::new();
    let expect = RecordExpect::chunk(chunk_size);
    for (pos, r) in (first..).zip(entries) {
        if r.is_zero() {
            continue;
        }
        // A trailer entry is checked before it sizes a GET.
        let located = reader.locate(&r).await.and_then(|(segment, e)| {
            check_entry(segment, &e, expect)?;
            Ok((segment, e))
        });
        match located {
            Ok((segment, e)) => by_record
                .entry((segment, e.offset))
                .or_insert_with(|| Wanted {
                    offset: e.offset,
                    length: e.length,
                    digest: r.digest,
                    positions: Vec::new(),
                })
                .positions
                .push(pos),
            Err(e) => unlocated.push((pos, e.to_string())),
        }
    }
    let mut records: Vec<((u64, u64), Wanted)> = by_record.into_iter().collect();
    records.sort_by_key(|(k, _)| *k);
    let mut fetches: Vec<Fetch> = Vec::new();
    for ((segment, _), w) in records {
        let end = w.offset + w.length as u64;
        match fetches.last_mut() {
            Some(f)
                if f.segment == segment
                    && w.offset <= f.end + RANGE_GAP
                    && end - f.start <= range_max =>
            {
                f.end = end;
                f.records.push(w);
            }
            _ => fetches.push(Fetch {
                segment,
                start: w.offset,
                end,
                records: vec![w],
            }),
        }
    }
    (fetches, unlocated)
}

/// Per disk position: the bytes restored there, or why it failed.
type PositionOutcomes = Vec<(u64, Result<u64, String>)>;

/// Decode (and with `target`, write) the records of one fetched range.
/// Returns per position the bytes written or why it failed.
fn decode_fetch(
    f: &Fetch,
    bytes: &[u8],
    chunk_size: u64,
    target: Option<&dyn RestoreTarget>,
    keys: Option<&crate::crypto::ProjectKeys>,
) -> Result<PositionOutcomes, EngineError> {
    let mut out = Vec::new();
    let mut written: Vec<(u64, u64)> = Vec::new();
    for w in &f.records {
        let at = (w.offset - f.start) as usize;
        let Some(record) = bytes.get(at..at + w.length as usize) else {
            let why = format!("segment {:016x}: short read", f.segment);
            out.extend(w.positions.iter().map(|&p| (p, Err(why.clone()))));
            continue;
        };
        let expect = RecordExpect::chunk(chunk_size);
        match crate::segment::decode_record(f.segment, record, &w.digest, expect, keys) {
            Ok(plain) => {
                for &pos in &w.positions {
                    if let Some(t) = target {
                        t.write_at(pos * chunk_size, &plain).map_err(|source| {
                            EngineError::Target {
                                path: t.describe(),
                                source,
                            }
                        })?;
                        written.push((pos * chunk_size, plain.len() as u64));
                    }
                    out.push((pos, Ok(plain.len() as u64)));
                }
            }
            Err(e) => out.extend(w.positions.iter().map(|&p| (p, Err(e.to_string())))),
        }
    }
    if let Some(t) = target {
        t.written(written);
    }
    Ok(out)
}

/// Read every chunk of a record; with `target`, write it there. The map is
/// walked a window of leaves at a time; per window, chunks are fetched in
/// ranges of adjacent records (few large GETs rather than one per chunk),
/// `concurrency` ranges in flight, each decoded and written on the
/// blocking pool.
async fn walk(
    reader: &RecordReader,
    root: ChunkRef,
    disk_size: u64,
    chunk_size: u64,
    target: Option<Arc<dyn RestoreTarget>>,
    concurrency: usize,
    progress: Option<&Progress>,
) -> Result<RestoreStats, EngineError> {
    let streaming = target.as_ref().and_then(|t| t.stream_buffer());
    // A window is counted in map leaves (INDEX_FANOUT chunks each); two
    // windows fill a stream's buffer (at least one leaf each).
    let leaf_bytes = chunk_size.max(1) * crate::format::INDEX_FANOUT as u64;
    let window = match streaming {
        Some(buffer) => {
            (buffer / 2 / leaf_bytes).clamp(1, reader.limits().restore_window as u64) as usize
        }
        None => reader.limits().restore_window,
    };
    let keys = reader.keys();
    // The first position of the next window to plan.
    let mut next_first = 0u64;
    let mut walker = Some(MapWalker::new(reader, root, disk_size, chunk_size));
    // The next window is walked and planned while the current one's last
    // fetches are in flight (no drain at window edges); only one window's
    // plan and the fetches in flight are held.
    let mut planning: Option<BoxFuture<'_, Result<Planned<'_>, EngineError>>> = None;
    let mut pending: std::collections::VecDeque<Fetch> = Default::default();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut stored = 0u64;
    let mut stats = RestoreStats::default();
    let mut bad: Vec<(u64, String)> = Vec::new();
    loop {
        while in_flight.len() < concurrency.max(1) {
            let Some(f) = pending.pop_front() else { break };
            in_flight.push(fetch(reader, f, chunk_size, target.clone(), keys.clone()));
        }
        if pending.is_empty() && planning.is_none() {
            if let Some(w) = walker.take() {
                let end = disk_size.min(
                    (next_first + window as u64 * crate::format::INDEX_FANOUT as u64)
                        .saturating_mul(chunk_size),
                );
                let admitting = target.clone().filter(|_| streaming.is_some());
                planning = Some(
                    async move {
                        if let Some(t) = admitting {
                            t.admit(end).await?;
                        }
                        plan_window(reader, w, window, chunk_size, disk_size).await
                    }
                    .boxed(),
                );
            }
        }
        if in_flight.is_empty() && planning.is_none() {
            break;
        }
        let done: PositionOutcomes = tokio::select! {
            Some(res) = in_flight.next(), if !in_flight.is_empty() => res?,
            planned = async { planning.as_mut().expect("guarded").await }, if planning.is_some() => {
                planning = None;
                let planned = planned?;
                walker = planned.walker;
                next_first = planned.next;
                stored += planned.stored;
                if let Some(p) = progress {
                    p.add_total(planned.bytes);
                }
                pending.extend(planned.fetches);
                planned.unlocated.into_iter().map(|(p, why)| (p, Err(why))).collect()
            }
        };
        for (pos, outcome) in done {
            match outcome {
                Ok(n) => {
                    stats.chunks += 1;
                    stats.bytes_written += n;
                    if let Some(p) = progress {
                        p.advance(n);
                    }
                }
                Err(why) => {
                    stats.bad_chunks += 1;
                    bad.push((pos, why));
                    if bad.len() >= 2 * BAD_RANGES_KEPT {
                        bad.sort_by_key(|b| b.0);
                        bad.truncate(BAD_RANGES_KEPT);
                    }
                }
            }
        }
        // A stream waits for every position in order: one that cannot be
        // read ends the restore now.
        if streaming.is_some() && !bad.is_empty() {
            break;
        }
    }
    bad.sort_by_key(|b| b.0);
    bad.truncate(BAD_RANGES_KEPT);
    stats.bad = bad
        .into_iter()
        .map(|(pos, why)| {
            let start = pos * chunk_size;
            (start, chunk_size.min(disk_size - start), why)
        })
        .collect();
    stats.zero_chunks = positions(disk_size, chunk_size) - stored;
    Ok(stats)
}

/// One window of the map, planned.
struct Planned<'r> {
    /// `None` once the map is walked.
    walker: Option<MapWalker<'r>>,
    fetches: Vec<Fetch>,
    unlocated: Vec<(u64, String)>,
    /// Stored chunks and their bytes.
    stored: u64,
    bytes: u64,
    /// The first position after this window.
    next: u64,
}

/// Walk the next `window` leaves and plan their fetches.
async fn plan_window<'r>(
    reader: &'r RecordReader,
    mut walker: MapWalker<'r>,
    window: usize,
    chunk_size: u64,
    disk_size: u64,
) -> Result<Planned<'r>, EngineError> {
    let Some(w) = walker.next_window(window).await? else {
        return Ok(Planned {
            walker: None,
            fetches: Vec::new(),
            unlocated: Vec::new(),
            stored: 0,
            bytes: 0,
            next: 0,
        });
    };
    let next = w.first + w.entries.len() as u64;
    let (mut stored, mut bytes) = (0, 0);
    for (pos, e) in (w.first..).zip(&w.entries) {
        if !e.is_zero() {
            stored += 1;
            bytes += chunk_size.min(disk_size - pos * chunk_size);
        }
    }
    let (fetches, unlocated) =
        plan_fetches(reader, w.first, w.entries, chunk_size, RANGE_MAX).await;
    Ok(Planned {
        walker: Some(walker),
        fetches,
        unlocated,
        stored,
        bytes,
        next,
    })
}

/// GET one planned range, then decode (and write) it on the blocking pool.
async fn fetch(
    reader: &RecordReader,
    f: Fetch,
    chunk_size: u64,
    target: Option<Arc<dyn RestoreTarget>>,
    keys: Option<Arc<crate::crypto::ProjectKeys>>,
) -> Result<PositionOutcomes, EngineError> {
    let name = super::segment_object(f.segment);
    let bytes = match reader
        .store()
        .get_range(reader.container(), &name, f.start, f.end - f.start)
        .await
    {
        Ok(b) => b,
        Err(e) => {
            let why = e.to_string();
            return Ok(f
                .records
                .iter()
                .flat_map(|w| w.positions.iter().map(|&p| (p, Err(why.clone()))))
                .collect());
        }
    };
    tokio::task::spawn_blocking(move || {
        decode_fetch(&f, &bytes, chunk_size, target.as_deref(), keys.as_deref())
    })
    .await
    .map_err(|e| EngineError::Other(format!("restore worker: {e}")))?
}

/// Which positions of a record hold data (the rest are zero chunks): one
/// walk of the map's pages, no chunk read. A streaming target lays out its
/// stream from it before the first byte.
pub async fn allocation(
    reader: &RecordReader,
    record: &super::PreviousRecord,
) -> Result<super::qcow2_stream::Allocation, EngineError> {
    let n = positions(record.disk_size, record.chunk_size);
    let mut allocation = super::qcow2_stream::Allocation::new(n);
    let mut walker = MapWalker::new(reader, record.root, record.disk_size, record.chunk_size);
    while let Some(w) = walker
        .next_window(reader.limits().restore_window.max(1))
        .await?
    {
        for (pos, e) in (w.first..).zip(&w.entries) {
            if !e.is_zero() {
                allocation.set(pos);
            }
        }
    }
    Ok(allocation)
}

/// Check every chunk of a record (digests, checksums), writing nothing.
/// Write keys (a public-key project's host) open no chunk: refuse before a
/// restore target is created (not half-way through it), and before a
/// verify reports every chunk as bad.
pub fn refuse_write_keys(reader: &RecordReader) -> Result<(), EngineError> {
    if reader.keys().is_some_and(|k| !k.can_open_chunks()) {
        return Err(EngineError::Other(
            "this project's chunks are sealed to its public key: only the restore side \
             (the master key, [encryption] restore_host) can read them"
                .into(),
        ));
    }
    Ok(())
}

pub async fn verify(
    reader: &RecordReader,
    root: ChunkRef,
    disk_size: u64,
    chunk_size: u64,
    progress: Option<&Progress>,
) -> Result<RestoreStats, EngineError> {
    refuse_write_keys(reader)?;
    walk(
        reader,
        root,
        disk_size,
        chunk_size,
        None,
        RANGES_IN_FLIGHT,
        progress,
    )
    .await
}

/// Restore a record into `target`, and finish it (durable, converted).
/// Fails, naming the byte ranges, when a chunk is missing or corrupt; the
/// target is then left as it is (the caller discards it, or keeps it for
/// inspection).
pub async fn restore(
    reader: &RecordReader,
    record: &super::PreviousRecord,
    target: Arc<dyn RestoreTarget>,
    progress: Option<&Progress>,
) -> Result<RestoreStats, EngineError> {
    refuse_write_keys(reader)?;
    let stats = walk(
        reader,
        record.root,
        record.disk_size,
        record.chunk_size,
        Some(target.clone()),
        RANGES_IN_FLIGHT,
        progress,
    )
    .await?;
    if stats.bad_chunks > 0 {
        let ranges: Vec<String> = stats
            .bad
            .iter()
            .map(|(o, l, why)| format!("{o}+{l} ({why})"))
            .collect();
        let more = stats.bad_chunks - stats.bad.len() as u64;
        return Err(EngineError::Other(format!(
            "restore incomplete: damaged ranges {}{}",
            ranges.join(", "),
            if more > 0 {
                format!(" and {more} more chunks")
            } else {
                String::new()
            }
        )));
    }
    target.finish().await?;
    Ok(stats)
}
