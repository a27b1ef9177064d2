//! Scrub: each pass re-reads `[retention] scrub_percentage` of the live
//! segments (never verified first, then the longest unverified) and checks
//! every record: checksum, decompression and digest. A damaged or missing
//! record is recorded in `bad_chunks`, so no backup deduplicates against
//! that copy again; the backups whose maps use it are marked (their
//! `error` says what is damaged, they stay listed), and the disks whose
//! head uses it read everything and build a fresh map at their next backup,
//! which stores the data again.

use std::collections::HashSet;
use std::sync::Arc;

use super::compaction::walk_maps;
use super::PassReport;
use crate::backup::segment_object;
use crate::chunk::{ChunkDigest, ChunkRef};
use crate::crypto::ProjectKeys;
use crate::db::segments::{self, Segment};
use crate::db::{backups, instances};
use crate::segment::{decode_record, read_whole, RecordExpect};
use crate::store::project_container as container;
use crate::store::StoreError;
use crate::Ekko;

/// What a re-read of one segment found.
enum Damage {
    None,
    /// These records are damaged; the rest checked out.
    Records(HashSet<ChunkDigest>),
    /// The object is gone or unreadable as a whole.
    Whole(String),
}

pub async fn scrub(ekko: &Ekko, percent: f64, report: &mut PassReport) -> anyhow::Result<()> {
    if percent <= 0.0 {
        return Ok(());
    }
    let db = ekko.db()?.clone();
    let due = db.run(move |c| segments::due_for_scrub(c, percent)).await?;
    let prefix = ekko.config.swift.container_prefix.clone();
    let mut keyring: std::collections::HashMap<String, Option<Arc<ProjectKeys>>> =
        Default::default();
    for seg in due {
        let cont = container(&prefix, &seg.project_id);
        let id = seg.id as u64;
        let keys = match keyring.get(&seg.project_id) {
            Some(k) => k.clone(),
            None => {
                let k = ekko.keyring.project_keys(&seg.project_id).await?;
                keyring.insert(seg.project_id.clone(), k.clone());
                k
            }
        };
        let max = super::max_segment_object(ekko);
        let name = segment_object(id);
        let damage = match crate::store::get_capped(ekko.store.as_ref(), &cont, &name, max).await {
            Ok(bytes) => {
                tokio::task::spawn_blocking(move || check_segment(id, &bytes, keys.as_deref()))
                    .await?
            }
            Err(StoreError::NotFound { .. }) => Damage::Whole("the object is missing".into()),
            Err(e) => {
                // Not damage: the store did not answer; the next pass retries.
                tracing::warn!(segment = format!("{id:016x}"), error = %e, "segment not scrubbed");
                continue;
            }
        };
        report.segments_scrubbed += 1;
        if !matches!(damage, Damage::None) {
            mark_damage(ekko, &seg, damage, report).await?;
        }
        let sid = seg.id;
        db.run(move |c| segments::set_verified(c, sid)).await?;
    }
    Ok(())
}

fn check_segment(id: u64, bytes: &[u8], keys: Option<&ProjectKeys>) -> Damage {
    let entries = match read_whole(id, bytes) {
        Ok(e) => e,
        Err(e) => return Damage::Whole(e.to_string()),
    };
    let bad: HashSet<ChunkDigest> = entries
        .iter()
        .filter(|e| {
            let start = e.offset as usize;
            bytes
                .get(start..start + e.length as usize)
                .is_none_or(|record| {
                    decode_record(id, record, &e.digest, RecordExpect::of_kind(e.kind), keys)
                        .is_err()
                })
        })
        .map(|e| e.digest)
        .collect();
    if bad.is_empty() {
        Damage::None
    } else {
        Damage::Records(bad)
    }
}

/// Find which counting records use the damage, and record it.
async fn mark_damage(
    ekko: &Ekko,
    seg: &Segment,
    damage: Damage,
    report: &mut PassReport,
) -> anyhow::Result<()> {
    let db = ekko.db()?.clone();
    let id = seg.id as u64;
    let what = match &damage {
        Damage::Records(bad) => format!("{} damaged record(s) in segment {id:016x}", bad.len()),
        Damage::Whole(why) => format!("segment {id:016x}: {why}"),
        Damage::None => return Ok(()),
    };
    tracing::error!(segment = format!("{id:016x}"), project = %seg.project_id, damage = %what, "scrub found damage");
    let reader = ekko.project_reader(&seg.project_id).await?;
    let sid = seg.id;
    let records = db.run(move |c| segments::records_using(c, &[sid])).await?;
    // Per record (pages not shared), so each record answers for itself; a
    // record whose map cannot be walked is damaged too.
    let mut bad_refs: HashSet<ChunkRef> = HashSet::new();
    let mut affected = Vec::new();
    for (i, rec) in records.iter().enumerate() {
        let mut hit = false;
        let walked = walk_maps(&reader, std::slice::from_ref(rec), false, |_, r| {
            let damaged = reader.resolve(r.segment) == id
                && match &damage {
                    Damage::Records(bad) => bad.contains(&r.digest),
                    _ => true,
                };
            if damaged {
                bad_refs.insert(r);
                hit = true;
            }
        })
        .await;
        if hit || walked.is_err() {
            affected.push(i);
        }
    }
    // Whole-segment damage with no user left to name its records: record
    // nothing per chunk (no map names them), the segment is simply gone.
    let project = seg.project_id.clone();
    let message = format!("damaged: {what} (found by scrub)");
    let marked: Vec<_> = affected.iter().map(|&i| records[i].clone()).collect();
    report.damaged_records += bad_refs.len();
    let n = db
        .run(move |c| {
            for r in &bad_refs {
                segments::mark_bad(c, &project, &r.digest.0, r.segment as i64)?;
            }
            let mut backups_marked = HashSet::new();
            for rec in &marked {
                if backups_marked.insert(rec.backup_id.clone()) {
                    backups::mark_damaged(c, &rec.backup_id, &message)?;
                }
                if rec.is_head == 1 {
                    instances::require_full_read(c, &rec.disk_id)?;
                }
            }
            Ok(backups_marked.len())
        })
        .await?;
    report.backups_damaged += n;
    Ok(())
}
