//! The host side of a job, shared by ekko-backup (jobs from the bus) and
//! the `ekko` command line (jobs it plans and runs itself): a wire job is
//! mapped to an engine plan, run against a hypervisor's snapshot and the
//! store, and its outcome mapped back to the wire report the catalog
//! commits.

use std::collections::HashSet;
use std::sync::Arc;

use crate::backup::disk::DiskBackupOptions;
use crate::backup::instance::{back_up_instance, DiskPlan, InstanceOutcome, InstancePlan};
use crate::backup::reader::{ReadLimits, RecordReader};
use crate::backup::{PreviousRecord, Progress};
use crate::chunk::{ChunkDigest, ChunkRef};
use crate::config::EkkoConfig;
use crate::extract::{DiskRequest, InstanceSnapshot, SavedCheckpoint};
use crate::hypervisor::{Hypervisor, LocalInstance, SnapshotOptions};
use crate::wire::{
    BackupFinished, BackupJob, BadRecord, Checkpoint, DiskCommit, RecordRef, Relocation,
};
use crate::Ekko;

/// A backup whose data and manifest are stored; its snapshot still waits
/// for `commit` (the new bitmaps take over) or `abort`.
pub struct Executed {
    pub finished: BackupFinished,
    pub outcome: InstanceOutcome,
    pub snapshot: Box<dyn InstanceSnapshot>,
}

/// The engine's options from `[backup]`.
pub fn engine_options(config: &EkkoConfig, progress: Option<Arc<Progress>>) -> DiskBackupOptions {
    DiskBackupOptions {
        chunk_size: config.backup.chunk_size.bytes(),
        compression_level: config.backup.compression_level as i32,
        segment_size: config.backup.segment_size.bytes() as usize,
        dedup_memory: config.backup.dedup_memory.bytes() as usize,
        progress,
    }
}

/// A record named by a job, as the engine reads it; `None` if malformed.
pub fn previous(r: &RecordRef) -> Option<PreviousRecord> {
    Some(PreviousRecord {
        root: ChunkRef {
            digest: ChunkDigest::from_hex(&r.root_digest)?,
            segment: r.root_segment,
        },
        disk_size: r.disk_size,
        chunk_size: r.chunk_size,
    })
}

/// What the job asks of the hypervisor, per disk.
pub fn disk_requests(job: &BackupJob) -> Vec<DiskRequest> {
    job.disks
        .iter()
        .map(|d| DiskRequest {
            device: d.device.clone(),
            node: d.node_name.clone(),
            expected_bitmap: d.expected_bitmap.clone(),
            expected_size: d.head.as_ref().map(|h| h.disk_size),
            force_full: job.full || d.needs_full_read,
        })
        .collect()
}

/// The engine's plan of a backup job run by `host`.
pub fn plan_of(job: &BackupJob, host: &str) -> InstancePlan {
    InstancePlan {
        backup_id: job.backup_id.clone(),
        project_id: job.project_id.clone(),
        user_id: job.user_id.clone(),
        instance_id: job.instance_id.clone(),
        instance_name: job.instance_name.clone(),
        name: job.name.clone(),
        description: job.description.clone(),
        created_at: job.created_at.naive_utc(),
        host: host.to_string(),
        disks: job
            .disks
            .iter()
            .map(|d| DiskPlan {
                disk_id: d.disk_id.clone(),
                device: d.device.clone(),
                node_name: d.node_name.clone(),
                base_seq: d.base_seq,
                head: d.head.as_ref().and_then(previous),
            })
            .collect(),
        dedup_sources: job.dedup_sources.iter().filter_map(previous).collect(),
        avoid: job
            .bad_records
            .iter()
            .filter_map(BadRecord::chunk_ref)
            .collect::<HashSet<_>>(),
    }
}

/// The report of a finished backup: what the catalog commits.
pub fn finished_of(job: &BackupJob, outcome: &InstanceOutcome, host: &str) -> BackupFinished {
    BackupFinished {
        job_id: job.job_id.clone(),
        backup_id: job.backup_id.clone(),
        project_id: job.project_id.clone(),
        host: host.to_string(),
        kind: outcome.kind.as_str().to_string(),
        consistency: outcome.consistency.as_str().to_string(),
        disks: outcome
            .disks
            .iter()
            .map(|o| {
                let r = &o.result;
                DiskCommit {
                    disk_id: o.disk_id.clone(),
                    base_seq: o.base_seq,
                    virtual_size: r.size as i64,
                    chunk_size: r.chunk_size as i32,
                    root_digest: r.root.digest.0.to_vec(),
                    root_segment: r.root.segment as i64,
                    bitmap_name: o.new_bitmap.clone(),
                    full_read: r.full_read,
                    read_bytes: r.read_bytes as i64,
                    new_bytes: r.new_bytes as i64,
                    stored_bytes: r.stored_bytes as i64,
                    new_segments: r
                        .segments
                        .iter()
                        .map(|s| (s.id as i64, s.size as i64, s.records as i32))
                        .collect(),
                    ref_deltas: r.ref_deltas.iter().map(|(s, d)| (*s as i64, *d)).collect(),
                    fresh_map: r.fresh_map,
                    full_reason: o.full_reason.as_ref().map(|f| f.as_str().to_string()),
                }
            })
            .collect(),
        checkpoint: None,
    }
}

/// The snapshot's checkpoint as the wire carries it.
pub fn wire_checkpoint(c: SavedCheckpoint) -> Checkpoint {
    Checkpoint {
        name: c.name,
        xml: c.xml,
    }
}

/// Run a backup job on `instance`: snapshot every disk the job names,
/// store chunks and the manifest. On error the snapshot is already
/// aborted (the bitmaps are as before). `tag` makes the new bitmaps' names
/// unique per attempt, so a bitmap of an attempt whose outcome was lost
/// never passes for the catalog's.
pub async fn back_up(
    ekko: &Ekko,
    hypervisor: &dyn Hypervisor,
    instance: &LocalInstance,
    job: &BackupJob,
    tag: &str,
    progress: Option<Arc<Progress>>,
) -> anyhow::Result<Executed> {
    let engine = engine_options(&ekko.config, progress);
    let mut opts = SnapshotOptions::of(&ekko.config, tag);
    opts.checkpoint = job.checkpoint.as_ref().map(|c| SavedCheckpoint {
        name: c.name.clone(),
        xml: c.xml.clone(),
    });
    let snapshot = hypervisor
        .snapshot(instance, &disk_requests(job), &opts)
        .await?;
    crate::failpoint::hit("backup.after-snapshot");
    let keys = match ekko.keyring.open_job(
        &job.project_id,
        job.project_key.as_ref(),
        job.write_keys.as_ref(),
    ) {
        Ok(k) => k,
        Err(e) => {
            snapshot.abort().await?;
            return Err(e.into());
        }
    };
    let reader = RecordReader::new(ekko.store.clone(), &ekko.container(&job.project_id))
        .with_relocations(Relocation::map(&job.relocations))
        .with_keys(keys)
        .with_limits(ReadLimits::from_config(&ekko.config.backup));
    let host = &ekko.config.default.host;
    let plan = plan_of(job, host);
    match back_up_instance(snapshot.as_ref(), &plan, &reader, &engine).await {
        Ok(outcome) => {
            crate::failpoint::hit("backup.after-manifest");
            for d in &outcome.disks {
                if let Some(why) = &d.full_reason {
                    tracing::info!(backup = %job.backup_id, disk = %d.device, reason = why.as_str(), "disk read in full");
                }
            }
            let mut finished = finished_of(job, &outcome, host);
            finished.checkpoint = snapshot.checkpoint().map(wire_checkpoint);
            Ok(Executed {
                finished,
                outcome,
                snapshot,
            })
        }
        Err(e) => {
            snapshot.abort().await?;
            Err(e.into())
        }
    }
}

/// Start streaming `record` into the Glance image `image` the controller
/// created (the map's allocation first: the stream's layout), as
/// `[glance]` says; the walk then feeds it ([`crate::backup::restore::restore`]).
pub async fn image_target(
    ekko: &crate::Ekko,
    reader: &RecordReader,
    record: &crate::backup::PreviousRecord,
    format: crate::backup::restore::TargetFormat,
    image: &crate::wire::ImageJob,
) -> anyhow::Result<crate::backup::image_target::ImageTarget> {
    use crate::backup::image_target::{ImageTarget, ImageUpload};
    let opts = &ekko.config.glance;
    let upload = ImageUpload {
        glance: ekko.glance().await?,
        url: image.glance_url.clone(),
        image_id: image.image_id.clone(),
        user_token: image.user_token.clone(),
        rate_limit: opts.upload_rate_limit.bytes(),
        idle_timeout: std::time::Duration::from_secs(opts.timeout.max(1)),
    };
    let allocation = crate::backup::restore::allocation(reader, record).await?;
    Ok(ImageTarget::start(
        upload,
        format,
        record.disk_size,
        record.chunk_size,
        allocation,
        opts.stream_buffer.bytes(),
    )?)
}
