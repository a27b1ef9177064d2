//! Rebuild the catalog from the object store alone (`ekko-manage catalog
//! rebuild`), for when the database is lost. Every committed backup left a
//! manifest (`manifests/<id>.json`) in its project's container; replaying
//! them in time order through the ordinary catalog commit recreates the
//! instances, disks, backups, segments and reference intervals.
//!
//! What the store cannot tell is which dirty bitmaps QEMU still holds, so
//! every rebuilt disk's next backup reads the whole disk. A manifest whose
//! map or data is no longer complete in the store (a segment is missing) is
//! skipped and reported, never half-imported.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use diesel::Connection;

use crate::backup::reader::RecordReader;
use crate::backup::restore::map_tree;
use crate::db::backups::{self, Backup, BackupStatus, DiskCommit};
use crate::db::catalog_rebuilds;
use crate::db::instances::{self, DiskReport};
use crate::db::segments;
use crate::manifest::Manifest;
use crate::Ekko;

/// What a rebuild did.
#[derive(Debug, Default)]
pub struct RebuildReport {
    pub projects: usize,
    pub backups: usize,
    /// Manifests not imported, with the reason.
    pub skipped: Vec<(String, String)>,
    pub segments: usize,
    /// Segments no imported backup references (left to the orphan sweep).
    pub unreferenced_segments: usize,
}

/// Rebuild an empty catalog from the store.
pub async fn rebuild(ekko: &Ekko) -> anyhow::Result<RebuildReport> {
    let holder = rebuild_holder(ekko);
    let report = rebuild_unfinished(ekko, "primary", &holder).await?;
    ekko.db()?
        .run(move |c| catalog_rebuilds::finish(c, &holder))
        .await?;
    Ok(report)
}

/// Who runs a rebuild: host, process and a nonce (a container's process
/// is often pid 1).
fn rebuild_holder(ekko: &Ekko) -> String {
    format!(
        "{}:{}:{}",
        ekko.config.default.host,
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

/// [`rebuild`] from `source` by `holder`, still marked unfinished in the
/// catalog: from before the store is read until
/// [`catalog_rebuilds::finish`], retention, garbage collection, the orphan
/// sweep and replication refuse to run (the catalog knows only part of the
/// store: they would delete the rest).
async fn rebuild_unfinished(
    ekko: &Ekko,
    source: &str,
    holder: &str,
) -> anyhow::Result<RebuildReport> {
    let db = ekko.db()?.clone();
    let (source, h) = (source.to_string(), holder.to_string());
    db.run(move |c| catalog_rebuilds::begin(c, &source, &h))
        .await?;
    let mut report = RebuildReport::default();
    // Read everything first: a store outage aborts the rebuild before the
    // catalog is touched, so it can simply be run again.
    let plans = match plan_all(ekko, &mut report).await {
        Ok(plans) => plans,
        Err(e) => {
            // Nothing committed: no partial catalog to guard.
            let h = holder.to_string();
            if let Err(f) = db.run(move |c| catalog_rebuilds::finish(c, &h)).await {
                tracing::warn!(error = %f, "the failed rebuild stays recorded: run it again");
            }
            return Err(e);
        }
    };
    for plan in plans {
        commit_project(ekko, plan, holder, &mut report).await?;
    }
    Ok(report)
}

/// Every project's plan, from the store alone.
async fn plan_all(ekko: &Ekko, report: &mut RebuildReport) -> anyhow::Result<Vec<ProjectPlan>> {
    let prefix = &ekko.config.swift.container_prefix;
    let mut plans = Vec::new();
    for container in ekko.store.containers(prefix).await? {
        let project = container[prefix.len()..].to_string();
        if project.is_empty() {
            continue;
        }
        if let Some(plan) = plan_project(ekko, &container, &project, report).await? {
            plans.push(plan);
        }
    }
    Ok(plans)
}

/// Rebuild an empty catalog from the second store of `[replication]` (the
/// first is lost too): every backup it holds whole comes back, recorded as
/// held there, so restores read it from there (`source` `replica`, or
/// `auto` once the first store fails them).
pub async fn rebuild_from_replica(ekko: &Ekko) -> anyhow::Result<RebuildReport> {
    let replica = ekko.replica.clone().ok_or_else(|| {
        anyhow::anyhow!("no second store is configured ([replication] backend = none)")
    })?;
    let second = ekko.reading_from(replica.store.clone())?;
    let holder = rebuild_holder(ekko);
    let report = rebuild_unfinished(&second, "replica", &holder).await?;
    crate::replication::record_rebuilt(&second, &replica).await?;
    second
        .db()?
        .run(move |c| catalog_rebuilds::finish(c, &holder))
        .await?;
    Ok(report)
}

/// A project's manifests whose data is complete in the store, oldest first,
/// with each disk's references per segment.
struct ProjectPlan {
    segment_sizes: HashMap<u64, u64>,
    /// Compacted segments (as maps name them) → where their records are.
    relocations: HashMap<u64, u64>,
    chunk_counts: HashMap<u64, i32>,
    planned: Vec<(Manifest, Vec<BTreeMap<u64, i64>>)>,
}

/// Whether an error means the data is gone or damaged (skip the backup),
/// rather than the store being unavailable (stop and let the operator retry).
fn is_missing(e: &crate::backup::EngineError) -> bool {
    use crate::backup::EngineError as E;
    use crate::store::StoreError as S;
    match e {
        E::Store(
            S::NotFound { .. } | S::BadRange { .. } | S::InvalidName(_) | S::TooLarge { .. },
        ) => true,
        E::Store(_)
        | E::Extract(_)
        | E::Target { .. }
        | E::TargetExists { .. }
        | E::TargetLink { .. } => false,
        E::Segment(_) | E::Chunk(_) | E::Index(_) | E::Other(_) => true,
    }
}

async fn plan_project(
    ekko: &Ekko,
    container: &str,
    project: &str,
    report: &mut RebuildReport,
) -> anyhow::Result<Option<ProjectPlan>> {
    let store = &ekko.store;
    let segment_sizes: HashMap<u64, u64> = store
        .list(container, "segments/")
        .await?
        .into_iter()
        .filter_map(|m| {
            let id = u64::from_str_radix(m.name.strip_prefix("segments/")?, 16).ok()?;
            Some((id, m.size))
        })
        .collect();
    let manifest_objects = store.list(container, "manifests/").await?;
    if manifest_objects.is_empty() && segment_sizes.is_empty() {
        return Ok(None); // not a project's container (e.g. the self-test's)
    }
    report.projects += 1;
    let relocations = load_relocations(store.as_ref(), container, &segment_sizes).await?;
    // An encrypted project: its key comes back from the store's copy (the
    // master key must be the one that wrapped it).
    let keys = match ekko
        .keyring
        .project_keys_from_store(container, project)
        .await?
    {
        Some((wrapped, keys)) => {
            ekko.keyring.import(project, wrapped).await?;
            Some(keys)
        }
        None => None,
    };
    let mut manifests = Vec::new();
    for meta in manifest_objects {
        let bytes = match crate::store::get_capped(
            store.as_ref(),
            container,
            &meta.name,
            crate::store::SMALL_OBJECT_MAX,
        )
        .await
        {
            Ok(b) => b,
            Err(crate::store::StoreError::NotFound { .. }) => continue,
            Err(e @ crate::store::StoreError::TooLarge { .. }) => {
                tracing::warn!(error = %e, "object ignored");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match Manifest::decode_with(&meta.name, &bytes, keys.as_deref()) {
            Ok(m) if m.project_id == project => manifests.push(m),
            Ok(m) => report.skipped.push((
                m.backup_id,
                format!("names project {}, found in {container}", m.project_id),
            )),
            Err(e) => report.skipped.push((meta.name.clone(), e.to_string())),
        }
    }
    // Oldest first, so each disk's records get their sequence in order.
    manifests.sort_by(|a, b| (a.created_at, &a.backup_id).cmp(&(b.created_at, &b.backup_id)));

    let reader = RecordReader::new(store.clone(), container)
        .with_relocations(relocations.clone())
        .with_keys(keys);
    let mut planned = Vec::new();
    let mut chunk_counts = HashMap::new();
    for m in manifests {
        // Load every disk's map first; a manifest is imported whole or not.
        let mut maps = Vec::new();
        let mut missing = None;
        for d in &m.disks {
            let Some(root) = d.root() else { continue };
            match map_tree(&reader, root, d.size, d.chunk_size).await {
                Ok(tree) => {
                    let refs = tree.references();
                    if let Some(seg) = refs
                        .keys()
                        .find(|s| !segment_sizes.contains_key(&reader.resolve(**s)))
                    {
                        missing = Some(format!("disk {}: segment {seg:016x} is missing", d.device));
                    }
                    maps.push(refs);
                }
                Err(e) if is_missing(&e) => missing = Some(format!("disk {}: {e}", d.device)),
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(why) = missing {
            tracing::warn!(backup = %m.backup_id, why, "manifest not imported");
            report.skipped.push((m.backup_id.clone(), why));
            continue;
        }
        for refs in &maps {
            for seg in refs.keys() {
                if !chunk_counts.contains_key(&reader.resolve(*seg)) {
                    let (at, trailer) = reader.trailer(*seg).await?;
                    chunk_counts.insert(at, trailer.len() as i32);
                }
            }
        }
        planned.push((m, maps));
    }
    Ok(Some(ProjectPlan {
        segment_sizes,
        relocations,
        chunk_counts,
        planned,
    }))
}

/// The store's relocation notes (`relocations/<id>`, written by compaction)
/// as one-hop redirects to segments that exist.
async fn load_relocations(
    store: &dyn crate::store::ObjectStore,
    container: &str,
    segment_sizes: &HashMap<u64, u64>,
) -> anyhow::Result<HashMap<u64, u64>> {
    #[derive(serde::Deserialize)]
    struct Note {
        segment: String,
        replaces: Vec<String>,
    }
    let hex = |h: &str| u64::from_str_radix(h, 16).ok();
    let mut direct = HashMap::new();
    for meta in store.list(container, "relocations/").await? {
        let bytes = match crate::store::get_capped(
            store,
            container,
            &meta.name,
            crate::store::SMALL_OBJECT_MAX,
        )
        .await
        {
            Ok(b) => b,
            Err(crate::store::StoreError::NotFound { .. }) => continue,
            Err(e @ crate::store::StoreError::TooLarge { .. }) => {
                tracing::warn!(error = %e, "object ignored");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let Ok(note) = serde_json::from_slice::<Note>(&bytes) else {
            tracing::warn!(object = %meta.name, "unreadable relocation note ignored");
            continue;
        };
        let Some(to) = hex(&note.segment) else {
            continue;
        };
        for from in note.replaces.iter().filter_map(|h| hex(h)) {
            direct.insert(from, to);
        }
    }
    // Follow chains (a segment compacted twice) to a segment that exists.
    let mut out = HashMap::new();
    for &from in direct.keys() {
        let mut at = from;
        for _ in 0..64 {
            match direct.get(&at) {
                Some(&next) => at = next,
                None => break,
            }
        }
        if at != from && segment_sizes.contains_key(&at) {
            out.insert(from, at);
        }
    }
    Ok(out)
}

/// Replay a project's planned manifests through the catalog commit.
async fn commit_project(
    ekko: &Ekko,
    plan: ProjectPlan,
    holder: &str,
    report: &mut RebuildReport,
) -> anyhow::Result<()> {
    let db = ekko.db()?.clone();
    // Set when another rebuild has taken the mark over: this one stops.
    let taken_over = Arc::new(AtomicBool::new(false));
    let ProjectPlan {
        segment_sizes,
        relocations,
        chunk_counts,
        planned,
    } = plan;
    // Per catalog disk: the references its head record holds.
    let mut head_refs: HashMap<String, BTreeMap<u64, i64>> = HashMap::new();
    let mut known_segments: BTreeSet<u64> = BTreeSet::new();
    let mut touched_disks: BTreeSet<String> = BTreeSet::new();
    for (m, maps) in planned {
        let reports: Vec<DiskReport> = m
            .disks
            .iter()
            .map(|d| DiskReport {
                device: d.device.clone(),
                node_name: if d.node_name.is_empty() {
                    d.device.clone()
                } else {
                    d.node_name.clone()
                },
                virtual_size: d.size as i64,
            })
            .collect();
        let (m2, maps2) = (m.clone(), maps.clone());
        let prev = head_refs.clone();
        let known = known_segments.clone();
        // Per segment a map names: where its records are, that segment's
        // size and record count.
        let homes: HashMap<u64, (u64, i64, i32)> = maps
            .iter()
            .flat_map(|r| r.keys())
            .map(|s| {
                let at = relocations.get(s).copied().unwrap_or(*s);
                (*s, (at, segment_sizes[&at] as i64, chunk_counts[&at]))
            })
            .collect();
        let (h, lost) = (holder.to_string(), taken_over.clone());
        let committed = db
            .run(move |c| {
                c.transaction(|c| {
                    if !catalog_rebuilds::holds(c, &h)? {
                        lost.store(true, Ordering::SeqCst);
                        return Err(crate::db::DbError::Conflict(
                            "another catalog rebuild took over".into(),
                        ));
                    }
                    let m = m2;
                    let name = if m.instance_name.is_empty() {
                        &m.instance_id
                    } else {
                        &m.instance_name
                    };
                    instances::upsert(
                        c,
                        &m.instance_id,
                        &m.project_id,
                        &m.host,
                        name,
                        &reports,
                        instances::MOVE_ALWAYS,
                    )?;
                    let disks = instances::disks_of(c, &m.instance_id)?;
                    let mut b =
                        Backup::queued(&m.project_id, &m.user_id, &m.instance_id, &m.name, "auto");
                    b.id = m.backup_id.clone();
                    b.description = m.description.clone();
                    b.created_at = m.created_at;
                    b.status = BackupStatus::Running;
                    backups::insert(c, &b)?;
                    let mut new_known = known;
                    let mut commits = Vec::new();
                    let mut heads = Vec::new();
                    for (d, refs) in m.disks.iter().zip(maps2) {
                        let disk =
                            disks.iter().find(|x| x.device == d.device).ok_or_else(|| {
                                crate::db::DbError::Conflict(format!("disk {} vanished", d.device))
                            })?;
                        let before = prev.get(&disk.id).cloned().unwrap_or_default();
                        let mut deltas: BTreeMap<u64, i64> = refs.clone();
                        for (seg, n) in &before {
                            *deltas.entry(*seg).or_insert(0) -= n;
                        }
                        deltas.retain(|_, v| *v != 0);
                        let mut new_segments = Vec::new();
                        for s in refs.keys() {
                            let (at, size, count) = homes[s];
                            if at == *s {
                                if new_known.insert(*s) {
                                    new_segments.push((*s as i64, size, count));
                                }
                                continue;
                            }
                            // Compacted: its home is live, its id a redirect.
                            if new_known.insert(at) {
                                segments::insert(
                                    c,
                                    &segments::Segment::live(at as i64, &m.project_id, size, count),
                                )?;
                            }
                            if new_known.insert(*s) {
                                segments::insert_redirect(c, *s as i64, &m.project_id, at as i64)?;
                            }
                        }
                        let root = d.root().unwrap_or(crate::chunk::ChunkRef::ZERO);
                        commits.push(DiskCommit {
                            disk_id: disk.id.clone(),
                            base_seq: disk.head_seq,
                            virtual_size: d.size as i64,
                            chunk_size: d.chunk_size as i32,
                            root_digest: root.digest.0.to_vec(),
                            root_segment: root.segment as i64,
                            bitmap_name: None,
                            full_read: d.full_read,
                            read_bytes: d.read_bytes as i64,
                            new_bytes: d.new_bytes as i64,
                            stored_bytes: d.stored_bytes as i64,
                            new_segments,
                            ref_deltas: deltas.into_iter().map(|(s, v)| (s as i64, v)).collect(),
                            fresh_map: false,
                            full_reason: None,
                        });
                        heads.push((disk.id.clone(), refs));
                    }
                    backups::commit(c, &m.backup_id, &m.kind, &m.consistency, &commits, None)?;
                    Ok((heads, new_known))
                })
            })
            .await;
        anyhow::ensure!(
            !taken_over.load(Ordering::SeqCst),
            "another catalog rebuild took this one's mark over while it read the store: this \
             one stops (the other goes on)"
        );
        match committed {
            Ok((heads, known)) => {
                for (disk, refs) in heads {
                    touched_disks.insert(disk.clone());
                    head_refs.insert(disk, refs);
                }
                known_segments = known;
                report.backups += 1;
                crate::failpoint::hit("rebuild.after-backup");
            }
            Err(e) => report.skipped.push((m.backup_id.clone(), e.to_string())),
        }
    }
    let disks: Vec<String> = touched_disks.into_iter().collect();
    db.run(move |c| {
        for d in &disks {
            instances::require_full_read(c, d)?;
        }
        Ok(())
    })
    .await?;
    report.segments += known_segments.len();
    report.unreferenced_segments += segment_sizes
        .keys()
        .filter(|s| !known_segments.contains(s))
        .count();
    Ok(())
}
