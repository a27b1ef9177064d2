//! What the `ekko` command line does for an operator on the catalog and
//! the store directly: back up an instance through its QMP socket, restore,
//! verify and delete backups. The API and the workers reach the same
//! engine through the message bus.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::backup::dedup::KnownChunks;
use crate::backup::disk::{back_up_disk, DiskBackupOptions, DiskBackupResult, PreviousRecord};
use crate::backup::reader::RecordReader;
use crate::backup::restore::{restore, verify, RestoreStats, TargetFormat};
use crate::backup::{container, Progress};
use crate::chunk::{ChunkDigest, ChunkRef};
use crate::db::backups::{self, Backup, BackupStatus, DiskCommit};
use crate::db::instances::{self, DiskReport};
use crate::extract::pull::{DiskRequest, PullBackup, PullOptions};
use crate::extract::DiskSnapshot;
use crate::manifest::{self, Manifest, ManifestDisk};
use crate::qmp::{commands, QmpClient};
use crate::Ekko;

/// A backup request from the command line.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub qmp_socket: std::path::PathBuf,
    pub instance_id: String,
    pub project_id: String,
    pub name: String,
    pub full: bool,
    pub agent_socket: Option<std::path::PathBuf>,
    /// Advanced by the bytes read, for a progress display.
    pub progress: Option<Arc<Progress>>,
}

/// The outcome, per disk.
pub struct BackupOutcome {
    pub backup: Backup,
    pub disks: Vec<(String, DiskBackupResult)>,
}

impl BackupOutcome {
    /// The figures an operator reads after a backup: what was scanned,
    /// read, new and stored, the dedup and compression ratios, throughput.
    pub fn summary(&self, took: Duration) -> String {
        use std::fmt::Write;
        let b = &self.backup;
        let secs = took.as_secs_f64().max(1e-9);
        let mib = |v: u64| v as f64 / (1 << 20) as f64;
        let mut out = format!(
            "backup {} {} ({}, {}-consistent) in {secs:.2} s\n",
            b.id,
            b.status,
            b.kind.as_deref().unwrap_or("?"),
            b.consistency.as_deref().unwrap_or("?"),
        );
        let (mut scanned, mut read, mut new, mut stored) = (0, 0, 0, 0);
        for (dev, r) in &self.disks {
            let _ = writeln!(
                out,
                "  {dev}: {:.1} MiB scanned, {:.1} MiB read, {:.1} MiB new, {:.1} MiB stored; {} chunks new, {} reused, {} zero, {} index pages",
                mib(r.size), mib(r.read_bytes), mib(r.new_bytes), mib(r.stored_bytes),
                r.new_chunks, r.reused_chunks, r.zero_chunks, r.pages_written
            );
            scanned += r.size;
            read += r.read_bytes;
            new += r.new_bytes;
            stored += r.stored_bytes;
        }
        let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        let _ = writeln!(
            out,
            "  total: {:.1} MiB scanned, {:.1} MiB read ({:.0} MiB/s), dedup {:.2}x (read/new), compression {:.2}x (new/stored)",
            mib(scanned),
            mib(read),
            mib(read) / secs,
            ratio(read, new),
            ratio(new, stored)
        );
        out
    }
}

fn engine_options(ekko: &Ekko, progress: Option<Arc<Progress>>) -> DiskBackupOptions {
    DiskBackupOptions {
        chunk_size: ekko.config.backup.chunk_size.bytes(),
        compression_level: ekko.config.backup.compression_level as i32,
        segment_size: ekko.config.backup.segment_size.bytes() as usize,
        progress,
    }
}

/// Largest cross-disk dedup table (entries of 256 KiB chunks: 512 GiB of
/// data, about 150 MiB of memory).
const DEDUP_MAX_ENTRIES: usize = 2 << 20;

/// A committed record as the base of an incremental or a dedup source.
fn previous_record(rec: &backups::BackupDisk) -> Option<PreviousRecord> {
    Some(PreviousRecord {
        root: root_of(rec).ok()?,
        disk_size: rec.virtual_size as u64,
        chunk_size: rec.chunk_size as u64,
    })
}

fn project_container(ekko: &Ekko, project: &str) -> String {
    container(&ekko.config.swift.container_prefix, project)
}

/// Back up every qcow2 disk of the instance behind `qmp_socket`.
pub async fn backup_instance(ekko: &Ekko, req: &BackupRequest) -> anyhow::Result<BackupOutcome> {
    let db = ekko.db()?.clone();
    let qmp = Arc::new(QmpClient::connect(&req.qmp_socket, Duration::from_secs(30)).await?);
    let nodes = commands::block_nodes(&qmp).await?;
    let reports: Vec<DiskReport> = nodes
        .iter()
        .filter(|n| n.driver == "qcow2" && !n.node_name.starts_with("ekko-"))
        .map(|n| DiskReport {
            device: n.node_name.clone(),
            node_name: n.node_name.clone(),
            virtual_size: n.virtual_size.unwrap_or(0) as i64,
        })
        .collect();
    anyhow::ensure!(
        !reports.is_empty(),
        "no qcow2 disk found behind {}",
        req.qmp_socket.display()
    );

    let host = ekko.config.default.host.clone();
    let (r2, id, project, name, mode) = (
        reports.clone(),
        req.instance_id.clone(),
        req.project_id.clone(),
        req.name.clone(),
        if req.full { "full" } else { "auto" },
    );
    let dedup_heads = ekko.config.backup.dedup_heads as usize;
    let (backup, disks, interrupted, project_heads) = db
        .run(move |c| {
            instances::upsert(c, &id, &project, &host, &id, &r2)?;
            // QEMU serves one QMP client at a time and we hold it: a backup
            // of this instance still `running` belongs to a process that
            // died. Its bitmaps were rolled back by `PullBackup::recover`.
            let interrupted =
                backups::interrupt_running(c, &id, "interrupted: the process running it stopped")?;
            let b = Backup::queued(&project, "operator", &id, &name, mode);
            backups::insert(c, &b)?;
            backups::transition(c, &b.id, BackupStatus::Running, None)?;
            let disks = instances::disks_of(c, &id)?;
            let mut out = Vec::new();
            for d in disks
                .into_iter()
                .filter(|d| r2.iter().any(|r| r.device == d.device))
            {
                let head = backups::head_record(c, &d.id)?;
                out.push((d, head));
            }
            let own: Vec<String> = out.iter().map(|(d, _)| d.id.clone()).collect();
            let others = backups::project_heads(c, &project, &own, dedup_heads)?;
            Ok((b, out, interrupted, others))
        })
        .await?;
    // Their manifests may have reached the store: a catalog rebuild must
    // not bring them back. Their segments are left to the orphan sweep.
    for stale in &interrupted {
        tracing::warn!(backup = %stale, "marked an interrupted backup as failed");
        remove_manifest(ekko, &req.project_id, stale).await;
    }

    let result = run_backup(ekko, &qmp, req, &backup, &disks, &project_heads).await;
    match result {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            let (id, why) = (backup.id.clone(), format!("{e:#}"));
            db.run(move |c| {
                backups::transition(c, &id, BackupStatus::Error, Some(&why)).map(|_| ())
            })
            .await?;
            Err(e)
        }
    }
}

/// Back up one disk: a full read first loads the chunks it may reuse (its
/// own previous record and the project's other heads).
async fn back_up_one(
    reader: &RecordReader,
    snap: &crate::extract::pull::PulledDisk,
    prev: Option<PreviousRecord>,
    project_heads: &[backups::BackupDisk],
    engine: &DiskBackupOptions,
    ekko: &Ekko,
) -> anyhow::Result<DiskBackupResult> {
    let container = reader.container().to_string();
    let known = if snap.full_reason().is_some() {
        let sources: Vec<PreviousRecord> = prev
            .into_iter()
            .chain(project_heads.iter().filter_map(previous_record))
            .filter(|r| r.chunk_size == engine.chunk_size)
            .collect();
        let known = KnownChunks::load(reader, &sources, DEDUP_MAX_ENTRIES).await?;
        tracing::info!(disk = %snap.device, sources = sources.len(), chunks = known.len(), "full read: dedup table loaded");
        known
    } else {
        KnownChunks::default()
    };
    Ok(back_up_disk(
        snap,
        prev.as_ref(),
        Arc::new(known),
        ekko.store.clone(),
        &container,
        engine,
    )
    .await?)
}

async fn run_backup(
    ekko: &Ekko,
    qmp: &Arc<QmpClient>,
    req: &BackupRequest,
    backup: &Backup,
    disks: &[(crate::db::instances::Disk, Option<backups::BackupDisk>)],
    project_heads: &[backups::BackupDisk],
) -> anyhow::Result<BackupOutcome> {
    let engine = engine_options(ekko, req.progress.clone());
    let requests: Vec<DiskRequest> = disks
        .iter()
        .map(|(d, head)| DiskRequest {
            device: d.device.clone(),
            node: d.node_name.clone(),
            expected_bitmap: head.as_ref().and(d.bitmap_name.clone()),
            expected_size: head.as_ref().map(|h| h.virtual_size as u64),
            force_full: req.full || d.needs_full_read,
        })
        .collect();
    let cfg = &ekko.config.backup;
    let opts = PullOptions {
        backup_id: backup.id.clone(),
        scratch_dir: cfg.scratch_dir.clone().into(),
        scratch_limit: cfg.scratch_limit.bytes(),
        granularity: 65536,
        requests_in_flight: cfg.nbd_requests_in_flight as usize,
        read_rate_limit: cfg.read_rate_limit.bytes(),
        qmp_timeout: Duration::from_secs(60),
        agent_socket: req.agent_socket.clone(),
        agent_timeout: Duration::from_secs(30),
        existing_nbd_socket: None,
    };
    let pull = PullBackup::begin(qmp.clone(), &requests, opts).await?;
    let store = ekko.store.clone();
    let container = project_container(ekko, &backup.project_id);
    let reader = RecordReader::new(store.clone(), &container);
    let mut results = Vec::new();
    let mut commits = Vec::new();
    for ((d, head), snap) in disks.iter().zip(&pull.disks) {
        // A previous record with another chunk size cannot be merged into.
        let usable = head
            .as_ref()
            .and_then(previous_record)
            .filter(|p| p.chunk_size == engine.chunk_size && p.disk_size == snap.size());
        let res = match back_up_one(&reader, snap, usable, project_heads, &engine, ekko).await {
            Ok(r) => r,
            Err(e) => {
                pull.abort().await?;
                return Err(e);
            }
        };
        commits.push(DiskCommit {
            disk_id: d.id.clone(),
            base_seq: d.head_seq,
            virtual_size: res.size as i64,
            chunk_size: res.chunk_size as i32,
            root_digest: res.root.digest.0.to_vec(),
            root_segment: res.root.segment as i64,
            bitmap_name: Some(snap.new_bitmap.clone()),
            full_read: res.full_read,
            read_bytes: res.read_bytes as i64,
            new_bytes: res.new_bytes as i64,
            stored_bytes: res.stored_bytes as i64,
            new_segments: res
                .segments
                .iter()
                .map(|s| (s.id as i64, s.size as i64, s.records as i32))
                .collect(),
            ref_deltas: res
                .ref_deltas
                .iter()
                .map(|(s, d)| (*s as i64, *d))
                .collect(),
        });
        results.push((d.device.clone(), res));
    }
    let kind = if results.iter().any(|r| r.1.full_read) {
        "full"
    } else {
        "incremental"
    };
    // The manifest goes to the store first, so the catalog can be rebuilt
    // from the store; the catalog commit makes the backup visible.
    let manifest = Manifest {
        version: crate::format::MANIFEST_VERSION,
        backup_id: backup.id.clone(),
        project_id: backup.project_id.clone(),
        user_id: backup.user_id.clone(),
        instance_id: backup.instance_id.clone(),
        instance_name: backup.instance_id.clone(),
        host: ekko.config.default.host.clone(),
        name: backup.name.clone(),
        description: backup.description.clone(),
        kind: kind.to_string(),
        consistency: pull.consistency.as_str().to_string(),
        created_at: backup.created_at,
        disks: commits
            .iter()
            .zip(&results)
            .zip(disks)
            .map(|((c, (dev, r)), (d, _))| ManifestDisk {
                disk_id: c.disk_id.clone(),
                device: dev.clone(),
                node_name: d.node_name.clone(),
                seq: c.base_seq + 1,
                size: r.size,
                chunk_size: r.chunk_size,
                root_digest: r.root.digest.to_hex(),
                root_segment: format!("{:016x}", r.root.segment),
                full_read: r.full_read,
                read_bytes: r.read_bytes,
                new_bytes: r.new_bytes,
                stored_bytes: r.stored_bytes,
            })
            .collect(),
    };
    let manifest_name = manifest::object_name(&backup.id);
    if let Err(e) = store
        .put(&container, &manifest_name, manifest.encode().into())
        .await
    {
        pull.abort().await?;
        return Err(e.into());
    }
    crate::failpoint::hit("backup.before-commit");
    let consistency = pull.consistency.as_str().to_string();
    let (id, kind) = (backup.id.clone(), kind.to_string());
    let committed = ekko
        .db()?
        .run(move |c| backups::commit(c, &id, &kind, &consistency, &commits))
        .await;
    match committed {
        Ok(b) => {
            // Only now may the old bitmaps go.
            if let Err(e) = pull.commit().await {
                tracing::error!(error = %e, "backup committed, but the bitmap rotation did not finish; the next backup re-reads the disk");
            }
            Ok(BackupOutcome {
                backup: b,
                disks: results,
            })
        }
        Err(e) => {
            // The commit's outcome may be unknown (connection lost after
            // COMMIT): keep the manifest unless the catalog says the backup
            // is not available.
            let id = backup.id.clone();
            let committed = match ekko.db()?.run(move |c| backups::get(c, &id)).await {
                Ok(b) => b.status() == Some(BackupStatus::Available),
                Err(_) => true,
            };
            if !committed {
                remove_manifest(ekko, &backup.project_id, &backup.id).await;
            }
            if let Err(abort) = pull.abort().await {
                tracing::error!(error = %abort, "rolling back the bitmaps failed; the next backup re-reads the disk");
            }
            Err(e.into())
        }
    }
}

/// Delete a backup: it disappears from the catalog at once (ekko-retention
/// reclaims its space), then its manifest leaves the store so a catalog
/// rebuild does not bring it back.
pub async fn delete_backup(ekko: &Ekko, backup_id: &str) -> anyhow::Result<Backup> {
    let id = backup_id.to_string();
    let backup = ekko
        .db()?
        .run(move |c| backups::delete_if_allowed(c, &id))
        .await?;
    remove_manifest(ekko, &backup.project_id, backup_id).await;
    Ok(backup)
}

/// Remove the manifest of a backup that is not (or no longer) committed, so
/// a catalog rebuild does not bring it back. Best effort: a failure is
/// logged and the orphan sweep of ekko-retention removes it later.
async fn remove_manifest(ekko: &Ekko, project_id: &str, backup_id: &str) {
    let container = project_container(ekko, project_id);
    match ekko
        .store
        .delete(&container, &manifest::object_name(backup_id))
        .await
    {
        Ok(()) | Err(crate::store::StoreError::NotFound { .. }) => {}
        Err(e) => tracing::warn!(error = %e, backup = backup_id, "manifest not removed"),
    }
}

/// Restore disk `device` (or the only disk) of a backup to `path`.
pub async fn restore_backup(
    ekko: &Ekko,
    backup_id: &str,
    device: Option<&str>,
    path: &Path,
    format: TargetFormat,
    progress: Option<&Progress>,
) -> anyhow::Result<RestoreStats> {
    let (backup, rec) = record_of(ekko, backup_id, device).await?;
    anyhow::ensure!(
        backup.status() == Some(BackupStatus::Available),
        "backup {backup_id} is {}, not available",
        backup.status
    );
    let reader = RecordReader::new(
        ekko.store.clone(),
        &project_container(ekko, &backup.project_id),
    );
    let root = root_of(&rec)?;
    Ok(restore(
        &reader,
        root,
        rec.virtual_size as u64,
        rec.chunk_size as u64,
        path,
        format,
        progress,
    )
    .await?)
}

/// Re-read every chunk of every disk of a backup and check its digest.
pub async fn verify_backup(
    ekko: &Ekko,
    backup_id: &str,
    progress: Option<&Progress>,
) -> anyhow::Result<Vec<(String, RestoreStats)>> {
    let id = backup_id.to_string();
    let (backup, recs) = ekko
        .db()?
        .run(move |c| Ok((backups::get(c, &id)?, backups::disks_of(c, &id)?)))
        .await?;
    let reader = RecordReader::new(
        ekko.store.clone(),
        &project_container(ekko, &backup.project_id),
    );
    let mut out = Vec::new();
    for rec in recs {
        let stats = verify(
            &reader,
            root_of(&rec)?,
            rec.virtual_size as u64,
            rec.chunk_size as u64,
            progress,
        )
        .await?;
        out.push((rec.disk_id.clone(), stats));
    }
    Ok(out)
}

async fn record_of(
    ekko: &Ekko,
    backup_id: &str,
    device: Option<&str>,
) -> anyhow::Result<(Backup, backups::BackupDisk)> {
    let (id, dev) = (backup_id.to_string(), device.map(String::from));
    let (backup, recs, disks) = ekko
        .db()?
        .run(move |c| {
            let b = backups::get(c, &id)?;
            let recs = backups::disks_of(c, &id)?;
            let disks = instances::disks_of(c, &b.instance_id)?;
            Ok((b, recs, disks))
        })
        .await?;
    let rec = match dev {
        Some(dev) => {
            let disk = disks
                .iter()
                .find(|d| d.device == dev)
                .ok_or_else(|| anyhow::anyhow!("backup {backup_id} has no disk {dev}"))?;
            recs.into_iter().find(|r| r.disk_id == disk.id)
        }
        None if recs.len() == 1 => recs.into_iter().next(),
        None => anyhow::bail!(
            "backup {backup_id} has {} disks: name one with --disk",
            recs.len()
        ),
    };
    Ok((
        backup,
        rec.ok_or_else(|| anyhow::anyhow!("backup {backup_id} has no record for that disk"))?,
    ))
}

fn root_of(rec: &backups::BackupDisk) -> anyhow::Result<ChunkRef> {
    Ok(ChunkRef {
        digest: ChunkDigest::from_slice(&rec.root_digest)
            .ok_or_else(|| anyhow::anyhow!("corrupt root digest in the catalog"))?,
        segment: rec.root_segment as u64,
    })
}
