//! The hypervisor seam: where a compute host's instances and their disks
//! come from, and how all disks of one instance are snapshotted at one
//! instant for a backup. ekko-backup and the command line see only the
//! [`Hypervisor`] trait.
//!
//! * [`qmp`]: QEMU instances whose QMP sockets Ekko is given (the embedded
//!   default, hosts without libvirt).
//! * [`libvirt`]: a Nova compute host's domains, through libvirt's backup
//!   API and checkpoints (`[backup] instance_source = libvirt`).
//!
//! Adding a driver means a module here and a case in [`from_config`]; the
//! API, the conductor and retention never see it.

pub mod libvirt;
pub mod qmp;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::EkkoConfig;
use crate::extract::{DiskRequest, ExtractError, InstanceSnapshot, SavedCheckpoint};

/// One instance this host serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInstance {
    pub id: String,
    pub project_id: String,
    pub name: String,
}

/// One disk of an instance, as the host sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Ekko's name for the disk (e.g. `vda`).
    pub device: String,
    /// The hypervisor's name for it (a QEMU node name).
    pub node_name: String,
    pub virtual_size: u64,
}

/// How a snapshot may use the host.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Unique per backup attempt: names the new bitmaps and scratch files,
    /// so an attempt whose outcome was lost never passes for another.
    pub tag: String,
    /// Where point-in-time overlays live while the backup reads.
    pub scratch_dir: PathBuf,
    /// Largest total size of those overlays; 0 = only free space.
    pub scratch_limit: u64,
    pub requests_in_flight: usize,
    /// Bytes per second; 0 = unlimited.
    pub read_rate_limit: u64,
    /// The checkpoint the catalog keeps with the backup every disk's head
    /// belongs to (libvirt): defined again before an incremental. `None`:
    /// the backup reads in full.
    pub checkpoint: Option<SavedCheckpoint>,
}

impl SnapshotOptions {
    /// `[backup]`'s options, for an attempt tagged `tag`.
    pub fn of(config: &EkkoConfig, tag: &str) -> SnapshotOptions {
        let b = &config.backup;
        SnapshotOptions {
            tag: tag.to_string(),
            scratch_dir: b.scratch_dir.clone().into(),
            scratch_limit: b.scratch_limit.bytes(),
            requests_in_flight: b.nbd_requests_in_flight as usize,
            read_rate_limit: b.read_rate_limit.bytes(),
            checkpoint: None,
        }
    }
}

/// A hypervisor driver (see the module documentation).
#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// The instances this host serves now.
    async fn instances(&self) -> anyhow::Result<Vec<LocalInstance>>;

    async fn find(&self, id: &str) -> anyhow::Result<Option<LocalInstance>> {
        Ok(self.instances().await?.into_iter().find(|i| i.id == id))
    }

    /// An instance's disks now.
    async fn disks(&self, instance: &LocalInstance) -> Result<Vec<DiskInfo>, ExtractError>;

    /// Snapshot the disks named by `disks` at one instant.
    async fn snapshot(
        &self,
        instance: &LocalInstance,
        disks: &[DiskRequest],
        opts: &SnapshotOptions,
    ) -> Result<Box<dyn InstanceSnapshot>, ExtractError>;

    /// Undo what a snapshot that was neither committed nor aborted left
    /// (a stopped job, a killed worker).
    async fn recover(&self, instance: &LocalInstance) -> Result<(), ExtractError>;

    /// Whether a worker that starts must undo what backups left when the
    /// previous one died: [`Hypervisor::recover`] of each instance that
    /// has no job, then [`Hypervisor::sweep`]. Drivers that clean up at
    /// each snapshot anyway need nothing then.
    fn cleans_up_at_start(&self) -> bool {
        false
    }

    /// Remove what backups left for instances no longer on this host.
    async fn sweep(&self) -> Result<(), ExtractError> {
        Ok(())
    }
}

/// The driver `[backup]` configures.
pub fn from_config(config: &EkkoConfig) -> anyhow::Result<Arc<dyn Hypervisor>> {
    use crate::config::InstanceSource;
    Ok(match config.backup.instance_source {
        InstanceSource::Qmp => Arc::new(qmp::QmpHypervisor::from_config(config)?),
        InstanceSource::Libvirt => Arc::new(libvirt::LibvirtHypervisor::from_config(config)?),
    })
}

/// Instance ids and project ids become object and queue names: keep them
/// to what OpenStack ids look like.
pub(crate) fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
