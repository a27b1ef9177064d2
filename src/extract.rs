//! Where the changed blocks of an instance's disks come from.
//!
//! The seam between extraction and the data format is [`InstanceSnapshot`]:
//! all disks of one instance at one instant, each a [`DiskSnapshot`] that
//! says which ranges changed since the previous backup (everything, for a
//! full read), which of them read as zeros, and reads the rest. Once the
//! backup is committed the snapshot is committed (the new bitmaps track
//! writes from its instant on); on any failure it is aborted (the bitmaps
//! are as before, so no guest write is missed). [`pull`] implements it for
//! QEMU over QMP and NBD (pull-mode backup with persistent dirty bitmaps);
//! the hypervisor drivers (`crate::hypervisor`) choose the implementation.

pub mod agent;
pub mod pull;
pub mod scratch;
pub mod throttle;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

/// Why a disk is read in full instead of incrementally.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullReason {
    /// Asked for (`mode: full`) or the disk has no committed backup.
    Requested,
    NoBitmap,
    /// QEMU stopped without closing the image: the bitmap cannot be trusted.
    BitmapInconsistent,
    /// The bitmap is not the one the catalog says tracks the last backup.
    BitmapMismatch,
    Resized,
    /// libvirt: the catalog keeps no checkpoint that every disk's last
    /// backup shares (the first backup through libvirt, or after a QMP one).
    NoCheckpoint,
    /// libvirt refused to define the catalog's checkpoint again: a bitmap
    /// is missing or broken (QEMU killed, disk replaced, bitmap removed).
    CheckpointInvalid,
    /// libvirt: the checkpoint was made on another host (the instance
    /// moved): its bitmaps cannot be trusted here.
    MovedHost,
    /// Not a qcow2 image (a raw file, a block device, a network volume):
    /// no bitmap can track its writes, so it is read whole every time.
    NotQcow2,
}

impl FullReason {
    /// The name the catalog and the logs use (`no_checkpoint`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            FullReason::Requested => "requested",
            FullReason::NoBitmap => "no_bitmap",
            FullReason::BitmapInconsistent => "bitmap_inconsistent",
            FullReason::BitmapMismatch => "bitmap_mismatch",
            FullReason::Resized => "resized",
            FullReason::NoCheckpoint => "no_checkpoint",
            FullReason::CheckpointInvalid => "checkpoint_invalid",
            FullReason::MovedHost => "moved_host",
            FullReason::NotQcow2 => "not_qcow2",
        }
    }

    /// Every name [`FullReason::as_str`] gives.
    pub const NAMES: &'static [&'static str] = &[
        "requested",
        "no_bitmap",
        "bitmap_inconsistent",
        "bitmap_mismatch",
        "resized",
        "no_checkpoint",
        "checkpoint_invalid",
        "moved_host",
        "not_qcow2",
    ];
}

/// A libvirt checkpoint as the catalog keeps it between backups: libvirt
/// itself keeps a checkpoint's metadata only while a backup runs (Nova's
/// undefine fails on a domain with checkpoints), the bitmaps stay in the
/// qcow2 images, and the next backup defines it again from this XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedCheckpoint {
    pub name: String,
    /// `virDomainCheckpointGetXMLDesc` without the domain and without
    /// `<parent>`: redefinable on its own.
    pub xml: String,
}

/// One disk to back up, with what the catalog knows about it.
#[derive(Debug, Clone)]
pub struct DiskRequest {
    /// Ekko's name for the disk (e.g. `vda`).
    pub device: String,
    /// QEMU's format node of the disk.
    pub node: String,
    /// The bitmap that tracks writes since the disk's last committed backup.
    pub expected_bitmap: Option<String>,
    /// Virtual size at the last committed backup.
    pub expected_size: Option<u64>,
    /// Read everything even if the bitmap could be trusted.
    pub force_full: bool,
}

/// A consistent view of one disk at the backup instant.
#[async_trait]
pub trait DiskSnapshot: Send + Sync {
    fn device(&self) -> &str;
    fn size(&self) -> u64;
    /// `None` for an incremental; why otherwise.
    fn full_reason(&self) -> Option<&FullReason>;
    /// Byte ranges written since the previous backup (sorted, disjoint);
    /// the whole disk for a full read.
    fn changed(&self) -> &[(u64, u64)];
    /// Ranges of the disk that read as zeros (holes, zero clusters): cost
    /// no read and no storage.
    fn zeros(&self) -> &[(u64, u64)];
    /// The bitmap (or checkpoint) that tracks writes after this instant,
    /// for the next incremental; `None` when the disk cannot track them
    /// (its next backup reads it in full).
    fn new_bitmap(&self) -> Option<&str>;
    /// Read `ranges` (inside the disk) in order, many requests in flight.
    fn read_ranges<'a>(
        &'a self,
        ranges: Vec<(u64, u64)>,
    ) -> BoxStream<'a, Result<(u64, Bytes), ExtractError>>;
}

/// All disks of one instance at one instant. End it with `commit` once
/// the backup is committed, or `abort` on any failure.
#[async_trait]
pub trait InstanceSnapshot: Send + Sync {
    /// The disks, in the order they were asked for.
    fn disks(&self) -> Vec<&dyn DiskSnapshot>;
    fn consistency(&self) -> crate::status::Consistency;
    /// Drop what the previous backup needed: the new bitmaps now track
    /// writes since this snapshot.
    async fn commit(self: Box<Self>) -> Result<(), ExtractError>;
    /// Put everything back as before the snapshot.
    async fn abort(self: Box<Self>) -> Result<(), ExtractError>;
    /// The checkpoint made at this snapshot's instant, for the catalog to
    /// keep with the backup (libvirt); `None` for drivers without
    /// checkpoints.
    fn checkpoint(&self) -> Option<SavedCheckpoint> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(transparent)]
    Qmp(#[from] crate::qmp::QmpError),
    #[error(transparent)]
    Nbd(#[from] crate::nbd::NbdError),
    #[error("disk {0}: no such block node")]
    NoSuchDisk(String),
    #[error("scratch space: {0}")]
    Scratch(String),
    #[error("guest agent: {0}")]
    Agent(String),
    #[error(transparent)]
    Libvirt(#[from] crate::libvirt::LibvirtError),
    /// The hypervisor did not answer in time (the call may still be
    /// pending; its outcome is unknown).
    #[error("{0}")]
    TimedOut(String),
    #[error("{0}")]
    Other(String),
}

/// Intersect two sorted lists of disjoint ranges.
pub fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let (a0, a1) = (a[i].0, a[i].0 + a[i].1);
        let (b0, b1) = (b[j].0, b[j].0 + b[j].1);
        let (lo, hi) = (a0.max(b0), a1.min(b1));
        if lo < hi {
            out.push((lo, hi - lo));
        }
        if a1 < b1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// `a` minus `b`, both sorted lists of disjoint ranges.
pub fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(off, len) in a {
        let (mut start, end) = (off, off + len);
        while j < b.len() && b[j].0 + b[j].1 <= start {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].0 < end {
            if b[k].0 > start {
                out.push((start, b[k].0 - start));
            }
            start = start.max(b[k].0 + b[k].1);
            k += 1;
        }
        if start < end {
            out.push((start, end - start));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_algebra() {
        let a = [(0, 10), (20, 10), (40, 5)];
        let b = [(5, 20), (44, 10)];
        assert_eq!(intersect(&a, &b), vec![(5, 5), (20, 5), (44, 1)]);
        assert_eq!(subtract(&a, &b), vec![(0, 5), (25, 5), (40, 4)]);
        assert_eq!(subtract(&a, &[]), a.to_vec());
        assert_eq!(intersect(&a, &[]), vec![]);
        assert_eq!(subtract(&[(0, 100)], &[(0, 100)]), vec![]);
    }
}
