//! Compaction: a segment most of whose records no backup uses any more is
//! rewritten. Its live records are copied verbatim into a new segment, the
//! catalog switches in one transaction (the old segment becomes
//! `relocated`, a redirect for the maps that name it), and the old object
//! is deleted after the grace period by garbage collection.
//!
//! Maps are never rewritten: they keep naming the old segment id, and every
//! reader resolves it through the catalog's relocations (shipped to workers
//! in their jobs, and written to the store as `relocations/<new id>` for a
//! catalog rebuilt from the store alone).

use std::collections::{HashMap, HashSet};

use futures::StreamExt;

use super::PassReport;
use crate::backup::reader::RecordReader;
use crate::backup::writer::{new_segment_id, now_unix};
use crate::backup::{relocation_object, segment_object, EngineError};
use crate::chunk::{ChunkDigest, ChunkRef};
use crate::db::segments::{self, RecordRoot, Segment};
use crate::index::{positions, shape};
use crate::segment::{decode_record, read_whole, RecordExpect, SegmentWriter};
use crate::Ekko;

/// Candidate segments measured per pass.
const CANDIDATES_PER_PASS: i64 = 256;
/// Candidates whose users' maps are walked together (pages shared between
/// records are read once per batch).
const BATCH: usize = 32;
/// Index pages fetched at once while walking maps.
const PAGES_IN_FLIGHT: usize = 16;

/// Walk the maps of `records`, calling `visit(record index, reference)` for
/// every index page and stored chunk they name (as written in the map, not
/// resolved). With `share_pages`, a page (and so its subtree) already seen
/// in an earlier record is not walked again: right for "which records are
/// used at all", not for "which record uses what".
pub async fn walk_maps<F>(
    reader: &RecordReader,
    records: &[RecordRoot],
    share_pages: bool,
    mut visit: F,
) -> Result<(), EngineError>
where
    F: FnMut(usize, ChunkRef),
{
    let mut seen: HashSet<ChunkRef> = HashSet::new();
    for (i, rec) in records.iter().enumerate() {
        if !share_pages {
            seen.clear();
        }
        let root = ChunkRef {
            digest: ChunkDigest::from_slice(&rec.root_digest).ok_or_else(|| {
                EngineError::Other(format!(
                    "disk {} record {}: corrupt root digest",
                    rec.disk_id, rec.seq
                ))
            })?,
            segment: rec.root_segment as u64,
        };
        if root.is_zero() || !seen.insert(root) {
            continue;
        }
        // The catalog checks what hosts report; a row that still has an
        // impossible shape is refused here, never divided by.
        let (size, chunk) = (rec.virtual_size, rec.chunk_size);
        if size <= 0 || chunk <= 0 || !(chunk as u64).is_power_of_two() {
            return Err(EngineError::Other(format!(
                "disk {} record {}: impossible shape ({size} bytes in chunks of {chunk})",
                rec.disk_id, rec.seq
            )));
        }
        visit(i, root);
        let levels = shape(positions(size as u64, chunk as u64)).len();
        let mut frontier = vec![root];
        for level in 0..levels {
            // The last level's pages are leaves: their entries are chunks.
            let leaf = level + 1 == levels;
            let fetches: Vec<_> = frontier.iter().map(|r| reader.page(r)).collect();
            let pages: Vec<_> = futures::stream::iter(fetches)
                .buffered(PAGES_IN_FLIGHT)
                .collect()
                .await;
            let mut next = Vec::new();
            for page in pages {
                for e in page?.entries {
                    if e.is_zero() {
                        continue;
                    }
                    if leaf {
                        visit(i, e);
                    } else if seen.insert(e) {
                        visit(i, e);
                        next.push(e);
                    }
                }
            }
            frontier = next;
        }
    }
    Ok(())
}

/// Measure the live share of the segments that lost users since they were
/// last measured, and compact those under `[retention]
/// compaction_threshold`.
pub async fn compact(ekko: &Ekko, report: &mut PassReport) -> anyhow::Result<()> {
    let threshold = ekko.config.retention.compaction_threshold;
    if threshold <= 0.0 {
        return Ok(());
    }
    let db = ekko.db()?.clone();
    let candidates = db
        .run(|c| segments::compaction_candidates(c, crate::db::now(), CANDIDATES_PER_PASS))
        .await?;
    let mut by_project: HashMap<String, Vec<Segment>> = HashMap::new();
    for s in candidates {
        by_project.entry(s.project_id.clone()).or_default().push(s);
    }
    for (project, segs) in by_project {
        let reader = ekko.project_reader(&project).await?;
        for batch in segs.chunks(BATCH) {
            let ids: Vec<i64> = batch.iter().map(|s| s.id).collect();
            let q = ids.clone();
            let records = db.run(move |c| segments::records_using(c, &q)).await?;
            let targets: HashSet<u64> = ids.iter().map(|&i| i as u64).collect();
            let mut live: HashMap<u64, HashSet<ChunkDigest>> = HashMap::new();
            let walked = walk_maps(&reader, &records, true, |_, r| {
                let at = reader.resolve(r.segment);
                if targets.contains(&at) {
                    live.entry(at).or_default().insert(r.digest);
                }
            })
            .await;
            if let Err(e) = walked {
                // Damage is scrub's to report; never compact on a guess.
                tracing::warn!(project = %project, error = %e, "maps unreadable: segments not compacted");
                let q = ids.clone();
                db.run(move |c| {
                    q.iter()
                        .try_for_each(|&id| segments::set_live_bytes(c, id, None))
                })
                .await?;
                continue;
            }
            for s in batch {
                let used = live.remove(&(s.id as u64)).unwrap_or_default();
                if let Err(e) = compact_one(ekko, &reader, s, &used, threshold, report).await {
                    tracing::warn!(segment = format!("{:016x}", s.id), error = %e, "segment not compacted");
                }
            }
        }
    }
    Ok(())
}

/// Measure one segment against the records its users still name; rewrite
/// it if its live share is under `threshold`.
async fn compact_one(
    ekko: &Ekko,
    reader: &RecordReader,
    seg: &Segment,
    used: &HashSet<ChunkDigest>,
    threshold: f64,
    report: &mut PassReport,
) -> anyhow::Result<()> {
    let db = ekko.db()?.clone();
    let id = seg.id as u64;
    let container = reader.container().to_string();
    let bytes = crate::store::get_capped(
        ekko.store.as_ref(),
        &container,
        &segment_object(id),
        super::max_segment_object(ekko),
    )
    .await?;
    let entries = read_whole(id, &bytes)?;
    let total: u64 = entries.iter().map(|e| e.length as u64).sum();
    let live: Vec<_> = entries
        .into_iter()
        .filter(|e| used.contains(&e.digest))
        .collect();
    let live_bytes: u64 = live.iter().map(|e| e.length as u64).sum();
    let sid = seg.id;
    db.run(move |c| segments::set_live_bytes(c, sid, Some(live_bytes as i64)))
        .await?;
    report.segments_measured += 1;
    report.measured_bytes += total as i64;
    report.measured_live_bytes += live_bytes as i64;
    tracing::debug!(
        segment = format!("{id:016x}"),
        live_bytes,
        total,
        "live share measured"
    );
    // Nothing live: garbage collection deletes it whole.
    if live.is_empty() || live_bytes as f64 >= threshold * total as f64 {
        return Ok(());
    }
    // Copy the live records verbatim, each checked first: a damaged one
    // stops the compaction (scrub reports it; nothing is hidden).
    let new_id = new_segment_id();
    let keys = reader.keys();
    let (body, records) = tokio::task::spawn_blocking(move || {
        let mut w = SegmentWriter::new(new_id, now_unix(), live_bytes as usize);
        for e in &live {
            let start = e.offset as usize;
            let record = bytes
                .get(start..start + e.length as usize)
                .ok_or_else(|| anyhow::anyhow!("record {} out of range", e.digest))?;
            decode_record(
                id,
                record,
                &e.digest,
                RecordExpect::of_kind(e.kind),
                keys.as_deref(),
            )?;
            w.push_record(id, record)?;
        }
        let n = w.records();
        Ok::<_, anyhow::Error>((w.finish(), n))
    })
    .await??;
    let size = body.len() as i64;
    ekko.store
        .put(&container, &segment_object(new_id), body.into())
        .await?;
    // The store's own record of the move, for a rebuild: everything that
    // now resolves to the new segment.
    let mut replaces = db.run(move |c| segments::redirected_to(c, sid)).await?;
    replaces.push(sid);
    let note = serde_json::json!({
        "segment": format!("{new_id:016x}"),
        "replaces": replaces.iter().map(|r| format!("{r:016x}")).collect::<Vec<_>>(),
    });
    ekko.store
        .put(
            &container,
            &relocation_object(new_id),
            serde_json::to_vec(&note)?.into(),
        )
        .await?;
    crate::failpoint::hit("compaction.before-switch");
    let mut new = Segment::live(new_id as i64, &seg.project_id, size, records as i32);
    // Measured: all of it is live now.
    new.live_bytes = Some(live_bytes as i64);
    new.live_checked_at = Some(crate::db::now());
    let switched = db.run(move |c| segments::relocate(c, sid, &new)).await?;
    crate::failpoint::hit("compaction.after-switch");
    if !switched {
        // Another pass got there first (or the segment lost its last user):
        // ours is an orphan; remove it now rather than at the next sweep.
        for name in [segment_object(new_id), relocation_object(new_id)] {
            let _ = ekko.store.delete(&container, &name).await;
        }
        return Ok(());
    }
    tracing::info!(
        segment = format!("{id:016x}"),
        into = format!("{new_id:016x}"),
        live_bytes,
        total,
        "segment compacted"
    );
    report.segments_compacted += 1;
    report.bytes_rewritten += size;
    Ok(())
}
