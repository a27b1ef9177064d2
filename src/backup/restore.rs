//! Restoring and verifying a backup record: walk its map tree, fetch every
//! stored chunk (many in flight), check each digest, and write the data
//! at its position. Zero chunks are never written, so a raw target stays
//! sparse; a qcow2 target is converted from it with `qemu-img`.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;

use super::reader::RecordReader;
use super::EngineError;
use super::Progress;
use crate::chunk::ChunkRef;
use crate::index::{positions, shape};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetFormat {
    Raw,
    Qcow2,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub chunks: u64,
    pub zero_chunks: u64,
    pub bytes_written: u64,
    /// Byte ranges whose chunk was missing or corrupt, with the reason.
    pub bad: Vec<(u64, u64, String)>,
}

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
    let leaves: Vec<_> = futures::stream::iter(frontier.iter().map(|r| reader.page(r)))
        .buffered(16)
        .collect()
        .await;
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

/// Every leaf entry of a record's map, in position order.
pub async fn map_entries(
    reader: &RecordReader,
    root: ChunkRef,
    disk_size: u64,
    chunk_size: u64,
) -> Result<Vec<ChunkRef>, EngineError> {
    Ok(map_tree(reader, root, disk_size, chunk_size).await?.entries)
}

/// Read every chunk of a record; with `target`, write it there.
async fn walk(
    reader: &RecordReader,
    root: ChunkRef,
    disk_size: u64,
    chunk_size: u64,
    target: Option<Arc<std::fs::File>>,
    concurrency: usize,
    progress: Option<&Progress>,
) -> Result<RestoreStats, EngineError> {
    let entries = map_entries(reader, root, disk_size, chunk_size).await?;
    if let Some(p) = progress {
        let stored = entries.iter().filter(|e| !e.is_zero()).count() as u64;
        p.add_total((stored * chunk_size).min(disk_size));
    }
    let mut stats = RestoreStats::default();
    let jobs = entries.into_iter().enumerate().filter_map(|(pos, r)| {
        if r.is_zero() {
            None
        } else {
            Some((pos as u64, r))
        }
    });
    stats.zero_chunks = positions(disk_size, chunk_size);
    let mut results = futures::stream::iter(jobs.map(|(pos, r)| {
        let target = target.clone();
        async move {
            let data = reader.read(&r).await;
            match (data, target) {
                (Ok(d), Some(f)) => {
                    let len = d.len() as u64;
                    tokio::task::spawn_blocking(move || f.write_all_at(&d, pos * chunk_size))
                        .await
                        .map_err(|e| EngineError::Other(e.to_string()))?
                        .map_err(|source| EngineError::Target {
                            path: "restore target".into(),
                            source,
                        })?;
                    Ok::<_, EngineError>((pos, Ok(len)))
                }
                (Ok(d), None) => Ok((pos, Ok(d.len() as u64))),
                (Err(e), _) => Ok((pos, Err(e.to_string()))),
            }
        }
    }))
    .buffer_unordered(concurrency.max(1));
    while let Some(res) = results.next().await {
        let (pos, outcome) = res?;
        stats.zero_chunks -= 1;
        match outcome {
            Ok(n) => {
                stats.chunks += 1;
                stats.bytes_written += n;
                if let Some(p) = progress {
                    p.advance(n);
                }
            }
            Err(why) => {
                let start = pos * chunk_size;
                stats
                    .bad
                    .push((start, chunk_size.min(disk_size - start), why));
            }
        }
    }
    stats.bad.sort_by_key(|b| b.0);
    Ok(stats)
}

/// Check every chunk of a record (digests, checksums), writing nothing.
pub async fn verify(
    reader: &RecordReader,
    root: ChunkRef,
    disk_size: u64,
    chunk_size: u64,
    progress: Option<&Progress>,
) -> Result<RestoreStats, EngineError> {
    walk(reader, root, disk_size, chunk_size, None, 16, progress).await
}

/// Restore a record to `path`. Fails (naming the byte ranges) when a chunk
/// is missing or corrupt; the partial file is left for inspection.
pub async fn restore(
    reader: &RecordReader,
    root: ChunkRef,
    disk_size: u64,
    chunk_size: u64,
    path: &Path,
    format: TargetFormat,
    progress: Option<&Progress>,
) -> Result<RestoreStats, EngineError> {
    let raw_path = match format {
        TargetFormat::Raw => path.to_path_buf(),
        TargetFormat::Qcow2 => path.with_extension("ekko-restore.raw"),
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&raw_path)
        .map_err(|source| EngineError::Target {
            path: raw_path.display().to_string(),
            source,
        })?;
    file.set_len(disk_size)
        .map_err(|source| EngineError::Target {
            path: raw_path.display().to_string(),
            source,
        })?;
    let file = Arc::new(file);
    let stats = walk(
        reader,
        root,
        disk_size,
        chunk_size,
        Some(file.clone()),
        16,
        progress,
    )
    .await?;
    file.sync_all().map_err(|source| EngineError::Target {
        path: raw_path.display().to_string(),
        source,
    })?;
    if !stats.bad.is_empty() {
        let ranges: Vec<String> = stats
            .bad
            .iter()
            .map(|(o, l, why)| format!("{o}+{l} ({why})"))
            .collect();
        return Err(EngineError::Other(format!(
            "restore incomplete: damaged ranges {}",
            ranges.join(", ")
        )));
    }
    if format == TargetFormat::Qcow2 {
        let out = std::process::Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&raw_path)
            .arg(path)
            .output()
            .map_err(|source| EngineError::Target {
                path: path.display().to_string(),
                source,
            })?;
        let _ = std::fs::remove_file(&raw_path);
        if !out.status.success() {
            return Err(EngineError::Other(format!(
                "qemu-img convert: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    Ok(stats)
}
