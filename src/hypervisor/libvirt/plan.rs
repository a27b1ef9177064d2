//! Per backup, before libvirt is asked anything that changes state: which
//! disks are read incrementally from the catalog's checkpoint and which in
//! full (with why), and how the backup job and its new checkpoint name
//! every disk of the domain. Pure: `snapshot.rs` applies it.

use crate::extract::{DiskRequest, ExtractError, FullReason};
use crate::libvirt::{BackupDisk, BackupSpec, CheckpointSpec};

/// What the catalog's checkpoint turned out to be on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Base {
    /// The job names none.
    None,
    /// It was made on another host (the instance moved), or not by Ekko.
    Moved,
    /// libvirt refused to define it again (a bitmap missing or broken).
    Invalid,
    /// Defined again: its name and the targets it has a bitmap on.
    Defined { name: String, bitmaps: Vec<String> },
}

/// One `device='disk'` disk of the domain now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DomainDisk {
    pub target: String,
    /// Only qcow2 images hold bitmaps.
    pub qcow2: bool,
    pub size: u64,
}

/// One disk of the backup, in the order the job asked for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PlannedDisk {
    pub target: String,
    pub size: u64,
    pub qcow2: bool,
    /// `None`: read what changed since the base checkpoint.
    pub full: Option<FullReason>,
}

/// The whole backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JobPlan {
    pub disks: Vec<PlannedDisk>,
    /// The base checkpoint, when at least one disk is read incrementally.
    pub incremental: Option<String>,
    /// Targets of the domain left out of the job and of the checkpoint.
    pub excluded: Vec<String>,
}

/// Decide every disk. A requested target the domain lacks fails the
/// backup (the catalog's view of the instance is behind; the next
/// inventory brings it up to date).
pub(super) fn plan(
    requests: &[DiskRequest],
    domain: &[DomainDisk],
    other_targets: &[String],
    base: &Base,
) -> Result<JobPlan, ExtractError> {
    let mut disks = Vec::with_capacity(requests.len());
    for r in requests {
        let d = domain
            .iter()
            .find(|d| d.target == r.device)
            .ok_or_else(|| ExtractError::NoSuchDisk(format!("{} (no such target)", r.device)))?;
        let full = if !d.qcow2 {
            Some(FullReason::NotQcow2)
        } else {
            match base {
                Base::None => Some(FullReason::NoCheckpoint),
                Base::Moved => Some(FullReason::MovedHost),
                Base::Invalid => Some(FullReason::CheckpointInvalid),
                Base::Defined { bitmaps, .. } if !bitmaps.contains(&d.target) => {
                    Some(FullReason::NoBitmap)
                }
                Base::Defined { .. } => match r.expected_size {
                    None => Some(FullReason::NoCheckpoint),
                    Some(s) if s != d.size => Some(FullReason::Resized),
                    Some(_) if r.force_full => Some(FullReason::Requested),
                    Some(_) => None,
                },
            }
        };
        disks.push(PlannedDisk {
            target: d.target.clone(),
            size: d.size,
            qcow2: d.qcow2,
            full,
        });
    }
    let incremental = match base {
        Base::Defined { name, .. } if disks.iter().any(|d| d.full.is_none()) => Some(name.clone()),
        _ => None,
    };
    let excluded = domain
        .iter()
        .map(|d| &d.target)
        .chain(other_targets)
        .filter(|t| !disks.iter().any(|d| &d.target == *t))
        .cloned()
        .collect();
    Ok(JobPlan {
        disks,
        incremental,
        excluded,
    })
}

impl JobPlan {
    /// The backup job: each planned disk with its scratch file (`scratch`
    /// maps a target to it); a full disk in an incremental job says so.
    pub fn backup_spec(
        &self,
        socket: std::path::PathBuf,
        scratch: impl Fn(&str) -> std::path::PathBuf,
    ) -> BackupSpec {
        BackupSpec {
            socket,
            incremental: self.incremental.clone(),
            disks: self
                .disks
                .iter()
                .map(|d| BackupDisk {
                    target: d.target.clone(),
                    scratch: scratch(&d.target),
                    full: self.incremental.is_some() && d.full.is_some(),
                })
                .collect(),
            excluded: self.excluded.clone(),
        }
    }

    /// The new checkpoint: a bitmap on every qcow2 disk backed up (read in
    /// full this time or not: the next backup can be incremental).
    pub fn checkpoint_spec(&self, name: &str, host: &str) -> CheckpointSpec {
        CheckpointSpec {
            name: name.to_string(),
            description: Some(crate::libvirt::made_on_host(host)),
            bitmap_disks: self
                .disks
                .iter()
                .filter(|d| d.qcow2)
                .map(|d| d.target.clone())
                .collect(),
            excluded: self
                .disks
                .iter()
                .filter(|d| !d.qcow2)
                .map(|d| d.target.clone())
                .chain(self.excluded.iter().cloned())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn req(t: &str, size: Option<u64>) -> DiskRequest {
        DiskRequest {
            device: t.into(),
            node: t.into(),
            expected_bitmap: None,
            expected_size: size,
            force_full: false,
        }
    }

    fn disk(t: &str, qcow2: bool) -> DomainDisk {
        DomainDisk {
            target: t.into(),
            qcow2,
            size: GIB,
        }
    }

    fn defined(bitmaps: &[&str]) -> Base {
        Base::Defined {
            name: "ekko-b1".into(),
            bitmaps: bitmaps.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn reasons(p: &JobPlan) -> Vec<Option<FullReason>> {
        p.disks.iter().map(|d| d.full.clone()).collect()
    }

    #[test]
    fn a_defined_checkpoint_gives_incrementals_and_raw_disks_are_read_whole() {
        let domain = [disk("vda", true), disk("vdb", false), disk("vdc", true)];
        let others = ["sda".to_string()];
        let p = plan(
            &[req("vda", Some(GIB)), req("vdb", Some(GIB))],
            &domain,
            &others,
            &defined(&["vda"]),
        )
        .unwrap();
        assert_eq!(reasons(&p), [None, Some(FullReason::NotQcow2)]);
        assert_eq!(p.incremental.as_deref(), Some("ekko-b1"));
        assert_eq!(p.excluded, ["vdc", "sda"], "not asked for: left out");
        let b = p.backup_spec("/s/nbd.sock".into(), |t| format!("/s/{t}.qcow2").into());
        assert_eq!(
            b.to_xml(),
            "<domainbackup mode='pull'><incremental>ekko-b1</incremental>\
             <server transport='unix' socket='/s/nbd.sock'/><disks>\
             <disk name='vda' backup='yes' type='file'><scratch file='/s/vda.qcow2'/></disk>\
             <disk name='vdb' backup='yes' type='file' backupmode='full'><scratch file='/s/vdb.qcow2'/></disk>\
             <disk name='vdc' backup='no'/><disk name='sda' backup='no'/></disks></domainbackup>"
        );
        let c = p.checkpoint_spec("ekko-b2", "compute-1");
        assert_eq!(c.bitmap_disks, ["vda"]);
        assert_eq!(c.excluded, ["vdb", "vdc", "sda"]);
        assert_eq!(
            crate::libvirt::made_on(c.description.as_deref()),
            Some("compute-1")
        );
        assert_eq!(crate::libvirt::made_on(Some("someone else's")), None);
    }

    #[test]
    fn every_doubt_is_a_full_read_with_its_reason() {
        let domain = [disk("vda", true)];
        let one = |r: DiskRequest, base: &Base| reasons(&plan(&[r], &domain, &[], base).unwrap());
        let at = |size| req("vda", Some(size));
        assert_eq!(one(at(GIB), &Base::None), [Some(FullReason::NoCheckpoint)]);
        assert_eq!(one(at(GIB), &Base::Moved), [Some(FullReason::MovedHost)]);
        assert_eq!(
            one(at(GIB), &Base::Invalid),
            [Some(FullReason::CheckpointInvalid)]
        );
        assert_eq!(one(at(GIB), &defined(&[])), [Some(FullReason::NoBitmap)]);
        assert_eq!(
            one(at(2 * GIB), &defined(&["vda"])),
            [Some(FullReason::Resized)]
        );
        assert_eq!(
            one(req("vda", None), &defined(&["vda"])),
            [Some(FullReason::NoCheckpoint)]
        );
        let mut forced = at(GIB);
        forced.force_full = true;
        assert_eq!(
            one(forced, &defined(&["vda"])),
            [Some(FullReason::Requested)]
        );
        // No disk incremental: a full job (no <incremental>, no backupmode).
        let p = plan(&[at(GIB)], &domain, &[], &Base::Invalid).unwrap();
        assert_eq!(p.incremental, None);
        let b = p.backup_spec("/s".into(), |_| "/x".into());
        assert!(!b.to_xml().contains("backupmode") && !b.to_xml().contains("incremental"));
        // A target the domain no longer has fails the backup.
        assert!(matches!(
            plan(&[req("vdz", Some(GIB))], &domain, &[], &Base::None),
            Err(ExtractError::NoSuchDisk(_))
        ));
    }
}
