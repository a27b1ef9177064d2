//! Reports: what compute hosts send the conductor (all routed to the
//! status queue): heartbeats, inventory, a job's start, progress and
//! outcome. Every field is checked against the job as planned before the
//! catalog changes (see `service::reports`).

use serde::{Deserialize, Serialize};

/// `host.heartbeat`: a host is alive, what it runs and how much at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub host: String,
    pub version: String,
    /// Backups this host runs at once.
    pub capacity: u32,
    /// The exports this host serves (a host that predates exports sends
    /// none; one that sends a list serves nothing it leaves out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exports: Option<Vec<String>>,
}

/// `export.ready`: the host listens for an export's clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportReady {
    pub export_id: String,
    pub host: String,
    /// `ADDRESS:PORT` clients connect to.
    pub address: String,
    /// Clients must upgrade to TLS.
    pub tls: bool,
}

/// `export.ended`: the host serves an export no more (its lifetime ran
/// out, it was stopped, or it could not start: `error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportEnded {
    pub export_id: String,
    pub host: String,
    #[serde(default)]
    pub error: Option<String>,
}

/// Sent by a worker as it starts (or restarts) a job. Status messages name
/// the job only: the conductor finds its backup or restore in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStarted {
    pub job_id: String,
    pub host: String,
    /// Attempts on this host so far, this one included.
    pub attempt: u32,
}

/// Sent every few seconds while a job runs; also the job's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    pub job_id: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// A backup's data and manifest are stored: what the catalog commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFinished {
    pub job_id: String,
    pub backup_id: String,
    pub project_id: String,
    pub host: String,
    /// `full` or `incremental`.
    pub kind: String,
    /// `crash` or `application`.
    pub consistency: String,
    pub disks: Vec<DiskCommit>,
    /// The libvirt checkpoint made at the backup's instant: the next
    /// backup's base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<super::jobs::Checkpoint>,
}

/// A job ended without a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailed {
    pub job_id: String,
    pub host: String,
    pub error: String,
    /// The backup's manifest may have been stored and must be removed.
    pub manifest_written: bool,
}

/// A restore is written and synced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreFinished {
    pub job_id: String,
    pub host: String,
    pub bytes_written: u64,
}

/// What one disk of a finished backup adds to the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCommit {
    pub disk_id: String,
    /// The disk head the worker built its map and deltas on.
    pub base_seq: i64,
    pub virtual_size: i64,
    pub chunk_size: i32,
    pub root_digest: Vec<u8>,
    pub root_segment: i64,
    /// The bitmap that tracks writes since this backup.
    pub bitmap_name: Option<String>,
    pub full_read: bool,
    pub read_bytes: i64,
    pub new_bytes: i64,
    pub stored_bytes: i64,
    /// Segments written: (id, size, records).
    pub new_segments: Vec<(i64, i64, i32)>,
    /// Per segment: references this disk's map gained or lost.
    pub ref_deltas: Vec<(i64, i64)>,
    /// The map was built from scratch, not on the head's map (a resized
    /// disk, or one whose stored data was found damaged): the deltas are
    /// the new map's whole counts and every reference of the head ends.
    #[serde(default)]
    pub fresh_map: bool,
    /// Why the disk was read in full (`extract::FullReason::as_str`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_reason: Option<String>,
}

/// One instance a host can back up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryInstance {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub disks: Vec<InventoryDisk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryDisk {
    pub device: String,
    pub node_name: String,
    pub virtual_size: u64,
}

/// `host.inventory`: the instances a host serves now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInventory {
    pub host: String,
    pub instances: Vec<InventoryInstance>,
}
