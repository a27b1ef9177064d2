//! One instance's backup, all disks at one instant: each disk of an
//! [`InstanceSnapshot`] backed up on its plan (the head it builds on, the
//! chunks a full read may reuse), then the manifest stored, so the catalog
//! can be rebuilt from the store. What the catalog commits is in the
//! returned [`InstanceOutcome`]; the snapshot is committed or aborted by
//! the caller once it knows whether the catalog took the backup.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::NaiveDateTime;

use super::dedup::KnownChunks;
use super::disk::{back_up_disk, DiskBackupOptions, DiskBackupResult};
use super::reader::RecordReader;
use super::{EngineError, PreviousRecord};
use crate::chunk::ChunkRef;
use crate::extract::{DiskSnapshot, InstanceSnapshot};
use crate::manifest::{self, Manifest, ManifestDisk};
use crate::status::{BackupKind, Consistency};

/// What a backup of one instance is asked to do.
#[derive(Debug, Clone)]
pub struct InstancePlan {
    pub backup_id: String,
    pub project_id: String,
    pub user_id: String,
    pub instance_id: String,
    pub instance_name: String,
    pub name: String,
    pub description: String,
    pub created_at: NaiveDateTime,
    /// The host that runs it (recorded in the manifest).
    pub host: String,
    /// One per disk of the snapshot, in the same order.
    pub disks: Vec<DiskPlan>,
    /// Other heads of the project a full read may reuse chunks from.
    pub dedup_sources: Vec<PreviousRecord>,
    /// Stored records known to be damaged: never reused.
    pub avoid: HashSet<ChunkRef>,
}

/// One disk of an [`InstancePlan`].
#[derive(Debug, Clone)]
pub struct DiskPlan {
    pub disk_id: String,
    pub device: String,
    pub node_name: String,
    /// The catalog's head sequence this backup builds on.
    pub base_seq: i64,
    /// The head record, when the disk has one.
    pub head: Option<PreviousRecord>,
}

/// One disk's part of a finished backup.
#[derive(Debug)]
pub struct DiskOutcome {
    pub disk_id: String,
    pub device: String,
    pub base_seq: i64,
    /// The bitmap that tracks writes after this backup.
    pub new_bitmap: Option<String>,
    /// Why the disk was read in full, if it was.
    pub full_reason: Option<crate::extract::FullReason>,
    pub result: DiskBackupResult,
}

/// A backup whose data and manifest are stored.
#[derive(Debug)]
pub struct InstanceOutcome {
    pub kind: BackupKind,
    pub consistency: Consistency,
    pub disks: Vec<DiskOutcome>,
}

/// Back up one disk: a full read first loads the chunks it may reuse (its
/// own previous record and the project's other heads).
async fn back_up_one(
    reader: &RecordReader,
    snap: &dyn DiskSnapshot,
    disk: &DiskPlan,
    plan: &InstancePlan,
    engine: &DiskBackupOptions,
) -> Result<DiskBackupResult, EngineError> {
    // A previous record with another chunk or disk size cannot be merged into.
    let prev = disk
        .head
        .filter(|p| p.chunk_size == engine.chunk_size && p.disk_size == snap.size());
    let known = if snap.full_reason().is_some() {
        let sources: Vec<_> = prev
            .into_iter()
            .chain(plan.dedup_sources.iter().copied())
            .filter(|r| r.chunk_size == engine.chunk_size)
            .collect();
        // The heads' chunks take at most half the budget; this backup's own
        // the rest.
        let memory = engine.dedup_memory / 2;
        let known = KnownChunks::load(reader, &sources, &plan.avoid, memory).await?;
        tracing::info!(disk = %snap.device(), sources = sources.len(), chunks = known.len(), "full read: dedup table loaded");
        known
    } else {
        KnownChunks::default()
    };
    back_up_disk(snap, prev.as_ref(), Arc::new(known), reader, engine).await
}

/// Back up every disk of `snapshot` on `plan` into `reader`'s container,
/// then store the manifest. The snapshot is left to the caller.
pub async fn back_up_instance(
    snapshot: &dyn InstanceSnapshot,
    plan: &InstancePlan,
    reader: &RecordReader,
    engine: &DiskBackupOptions,
) -> Result<InstanceOutcome, EngineError> {
    let disks = snapshot.disks();
    if disks.len() != plan.disks.len() {
        return Err(EngineError::Other(format!(
            "the snapshot has {} disks, the plan {}",
            disks.len(),
            plan.disks.len()
        )));
    }
    let mut outcomes = Vec::with_capacity(disks.len());
    for (i, snap) in disks.iter().copied().enumerate() {
        let d = &plan.disks[i];
        let result = back_up_one(reader, snap, d, plan, engine).await?;
        outcomes.push(DiskOutcome {
            disk_id: d.disk_id.clone(),
            device: d.device.clone(),
            base_seq: d.base_seq,
            new_bitmap: snap.new_bitmap().map(String::from),
            full_reason: snap.full_reason().cloned(),
            result,
        });
    }
    let kind = if outcomes.iter().any(|o| o.result.full_read) {
        BackupKind::Full
    } else {
        BackupKind::Incremental
    };
    let outcome = InstanceOutcome {
        kind,
        consistency: snapshot.consistency(),
        disks: outcomes,
    };
    // The manifest goes to the store first, so the catalog can be rebuilt
    // from the store; the catalog commit makes the backup visible.
    let manifest = manifest_of(plan, &outcome);
    let keys = reader.keys();
    let body = manifest
        .encode_for(keys.as_deref())
        .map_err(|e| EngineError::Other(format!("manifest: {e}")))?;
    reader
        .store()
        .put(
            reader.container(),
            &manifest::object_name(&plan.backup_id),
            body.into(),
        )
        .await?;
    Ok(outcome)
}

fn manifest_of(plan: &InstancePlan, outcome: &InstanceOutcome) -> Manifest {
    Manifest {
        version: crate::format::MANIFEST_VERSION,
        backup_id: plan.backup_id.clone(),
        project_id: plan.project_id.clone(),
        user_id: plan.user_id.clone(),
        instance_id: plan.instance_id.clone(),
        instance_name: plan.instance_name.clone(),
        host: plan.host.clone(),
        name: plan.name.clone(),
        description: plan.description.clone(),
        kind: outcome.kind.as_str().to_string(),
        consistency: outcome.consistency.as_str().to_string(),
        created_at: plan.created_at,
        disks: outcome
            .disks
            .iter()
            .zip(&plan.disks)
            .map(|(o, d)| ManifestDisk {
                disk_id: o.disk_id.clone(),
                device: o.device.clone(),
                node_name: d.node_name.clone(),
                seq: o.base_seq + 1,
                size: o.result.size,
                chunk_size: o.result.chunk_size,
                root_digest: o.result.root.digest.to_hex(),
                root_segment: format!("{:016x}", o.result.root.segment),
                full_read: o.result.full_read,
                read_bytes: o.result.read_bytes,
                new_bytes: o.result.new_bytes,
                stored_bytes: o.result.stored_bytes,
            })
            .collect(),
    }
}
