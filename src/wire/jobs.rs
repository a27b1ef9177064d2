//! Jobs: what the conductor sends a compute host (`backup.run`,
//! `restore.run`, `job.cancel`). A job carries everything the host needs
//! from the catalog, so hosts never read the database.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkDigest, ChunkRef};

/// A committed record, as a base for an incremental or a dedup source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    /// Hex SHA-256 of the map tree's root page.
    pub root_digest: String,
    pub root_segment: u64,
    pub disk_size: u64,
    pub chunk_size: u64,
}

/// One disk of a backup job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDisk {
    pub disk_id: String,
    pub device: String,
    pub node_name: String,
    /// The catalog head this backup builds on (checked again at commit).
    pub base_seq: i64,
    /// The head record, when the disk has one.
    pub head: Option<RecordRef>,
    /// The bitmap the catalog expects to track writes since the head.
    pub expected_bitmap: Option<String>,
    /// The catalog lost track of the disk (e.g. after a rebuild).
    pub needs_full_read: bool,
}

/// `backup.run`: back up one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupJob {
    pub job_id: String,
    pub backup_id: String,
    pub project_id: String,
    pub user_id: String,
    pub instance_id: String,
    pub instance_name: String,
    pub name: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
    /// Read every disk in full.
    pub full: bool,
    pub disks: Vec<JobDisk>,
    /// Other heads of the project a full read may reuse chunks from.
    pub dedup_sources: Vec<RecordRef>,
    /// Where compaction moved the project's segments (see [`Relocation`]).
    #[serde(default)]
    pub relocations: Vec<Relocation>,
    /// Stored records scrub found damaged: never reused, stored afresh.
    #[serde(default)]
    pub bad_records: Vec<BadRecord>,
    /// A symmetric project's key, wrapped by the master key.
    #[serde(default)]
    pub project_key: Option<crate::crypto::WrappedKey>,
    /// A public-key project's write keys, wrapped by the host key (the
    /// host gets no project key then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_keys: Option<crate::crypto::WrappedKey>,
    /// A worker that receives the job later than this fails it instead.
    pub deadline: DateTime<Utc>,
    /// The libvirt checkpoint of the backup every disk's head belongs to:
    /// the host defines it again and reads only what changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
}

/// A libvirt checkpoint as the catalog keeps it (see
/// `extract::SavedCheckpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub name: String,
    /// The checkpoint's XML, without the domain and without `<parent>`.
    pub xml: String,
}

/// Segment `from` (as maps name it) now lives in segment `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relocation {
    pub from: u64,
    pub to: u64,
}

impl Relocation {
    /// The catalog's (id, relocated_to) pairs of a project.
    pub fn from_rows(rows: &[(i64, i64)]) -> Vec<Relocation> {
        rows.iter()
            .map(|&(from, to)| Relocation {
                from: from as u64,
                to: to as u64,
            })
            .collect()
    }

    /// As a lookup table: old segment → new segment.
    pub fn map(list: &[Relocation]) -> std::collections::HashMap<u64, u64> {
        list.iter().map(|r| (r.from, r.to)).collect()
    }
}

/// A damaged stored record: hex digest and the segment holding the copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRecord {
    pub digest: String,
    pub segment: u64,
}

impl BadRecord {
    pub fn from_rows(rows: &[(Vec<u8>, i64)]) -> Vec<BadRecord> {
        rows.iter()
            .filter_map(|(d, s)| {
                Some(BadRecord {
                    digest: ChunkDigest::from_slice(d)?.to_hex(),
                    segment: *s as u64,
                })
            })
            .collect()
    }

    pub fn chunk_ref(&self) -> Option<ChunkRef> {
        Some(ChunkRef {
            digest: ChunkDigest::from_hex(&self.digest)?,
            segment: self.segment,
        })
    }
}

/// `restore.run`: write one disk of a backup to a file on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreJob {
    pub job_id: String,
    pub restore_id: String,
    pub backup_id: String,
    pub project_id: String,
    /// The disk's record in the backup.
    pub record: RecordRef,
    /// File name under the host's `[backup] restore_dir` (empty for an
    /// image).
    pub path: String,
    /// `raw` or `qcow2`.
    pub format: String,
    #[serde(default)]
    pub relocations: Vec<Relocation>,
    #[serde(default)]
    pub project_key: Option<crate::crypto::WrappedKey>,
    pub deadline: DateTime<Utc>,
    /// A restore into a Glance image instead of a file (a worker that does
    /// not know this field sees an empty path and refuses the job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageJob>,
    /// The backup's copy in the second store (`[replication]`), when it has
    /// one: read instead of the first store, or after the first store
    /// failed a restore into a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_copy: Option<SecondCopy>,
}

/// Where a restore finds the backup's second copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondCopy {
    /// The second store's key in the catalog: a host reads it only through
    /// its own `[replication]` store of the same key.
    pub store: String,
    /// Read it first (asked for, or the first store's copy is damaged).
    pub first: bool,
    /// Read only it (`source` `replica`): no fallback to the first store.
    #[serde(default)]
    pub only: bool,
}

/// The Glance image a restore uploads into, created by the controller.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageJob {
    /// Glance's URL (without `/v2`).
    pub glance_url: String,
    pub image_id: String,
    /// The tenant's token (sent with the host's service token, so Glance
    /// takes it even once expired).
    pub user_token: String,
}

// The token stays out of logs.
impl std::fmt::Debug for ImageJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageJob")
            .field("glance_url", &self.glance_url)
            .field("image_id", &self.image_id)
            .finish_non_exhaustive()
    }
}

/// `job.cancel`: stop a queued or running job on its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelJob {
    pub job_id: String,
}

/// `export.start` (control queue: it must not wait behind running
/// backups): serve one disk of a backup read-only over NBD until
/// `expires_at` (or an `export.stop`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportJob {
    pub export_id: String,
    /// The NBD name the export answers to (and only to): a secret.
    pub nbd_name: String,
    pub backup_id: String,
    pub project_id: String,
    pub record: RecordRef,
    #[serde(default)]
    pub relocations: Vec<Relocation>,
    #[serde(default)]
    pub project_key: Option<crate::crypto::WrappedKey>,
    pub expires_at: DateTime<Utc>,
    /// The backup's copy in the second store, when it has one: served
    /// instead of the first store's when `first` (an export cannot switch
    /// stores under its clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_copy: Option<SecondCopy>,
}

/// `export.stop` (control queue): end an export now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopExport {
    pub export_id: String,
}
