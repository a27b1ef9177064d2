//! What a host's report must satisfy before it touches the catalog: every
//! number in range, every string within what its column holds, every id
//! in OpenStack's form, the host it claims to be the host that sent it.
//! Pure: [`super::record`] applies them and compares the report with the
//! job as planned.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::ids::{HostName, InstanceId, ProjectId};
use crate::status::{BackupKind, Consistency};
use crate::wire::{DiskCommit, Heartbeat, HostInventory, InventoryInstance};

/// Who sent a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// The in-process bus, or a deployment whose hosts share the
    /// controller's bus user: the report is checked against the catalog,
    /// but the host it names is taken at its word.
    Trusted,
    /// A compute host, as the bus authenticated it (its own bus user).
    Host(String),
}

/// Largest disk Ekko takes: 1 PiB.
pub const MAX_DISK_SIZE: u64 = 1 << 50;
/// Chunk sizes: powers of two from 4 KiB to 16 MiB (`[backup] chunk_size`).
pub const MIN_CHUNK: u64 = 4 << 10;
pub const MAX_CHUNK: u64 = 16 << 20;
/// One inventory message lists at most this many instances (a host sends
/// its inventory in pages of [`crate::wire::INVENTORY_PAGE`]), each with at
/// most this many disks.
pub const MAX_INSTANCES: usize = 2 * crate::wire::INVENTORY_PAGE;
pub const MAX_DISKS: usize = 64;
/// Largest segment object: 5 GiB (Swift's largest single object).
pub const MAX_SEGMENT: i64 = 5 << 30;
/// Longest error text kept from a host.
pub const MAX_ERROR: usize = 4096;
/// Longest checkpoint name (`backups.checkpoint_name`).
pub const MAX_CHECKPOINT_NAME: usize = 128;
/// Largest checkpoint XML kept: libvirt's for a domain of 64 disks is a
/// few KiB without the domain copy, which Ekko never keeps.
pub const MAX_CHECKPOINT_XML: usize = 32 << 10;

pub type Check = Result<(), String>;

/// The host a report claims must be the one that sent it.
pub fn host_claim(claimed: &str, sender: &Sender) -> Check {
    HostName::parse(claimed).map_err(|e| e.to_string())?;
    match sender {
        Sender::Host(h) if h != claimed => Err(format!(
            "a report from host {h} claims to come from host {claimed}"
        )),
        _ => Ok(()),
    }
}

pub fn heartbeat(hb: &Heartbeat, sender: &Sender) -> Check {
    host_claim(&hb.host, sender)?;
    if hb.version.len() > 64 || hb.capacity > 1024 {
        return Err(format!(
            "heartbeat of host {}: version or capacity out of range",
            hb.host
        ));
    }
    Ok(())
}

/// Why one inventory entry is refused (the others are still recorded).
pub fn inventory_entry(i: &InventoryInstance) -> Check {
    InstanceId::parse(&i.id).map_err(|e| e.to_string())?;
    ProjectId::parse(&i.project_id).map_err(|e| e.to_string())?;
    if i.name.len() > 255 {
        return Err(format!("instance {}: name longer than 255 bytes", i.id));
    }
    if i.disks.len() > MAX_DISKS {
        return Err(format!("instance {}: more than {MAX_DISKS} disks", i.id));
    }
    let mut devices = HashSet::new();
    for d in &i.disks {
        let plain = |s: &str, max: usize| {
            !s.is_empty()
                && s.len() <= max
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:#".contains(c))
        };
        if !plain(&d.device, 64) || !plain(&d.node_name, 128) {
            return Err(format!("instance {}: a disk name is not plain", i.id));
        }
        if d.virtual_size == 0 || d.virtual_size > MAX_DISK_SIZE {
            return Err(format!(
                "instance {}: disk {} size out of range",
                i.id, d.device
            ));
        }
        if !devices.insert(&d.device) {
            return Err(format!("instance {}: disk {} twice", i.id, d.device));
        }
    }
    Ok(())
}

pub fn inventory(inv: &HostInventory, sender: &Sender) -> Check {
    host_claim(&inv.host, sender)?;
    if inv.instances.len() > MAX_INSTANCES {
        return Err(format!(
            "inventory of host {} has {} instances (at most {MAX_INSTANCES})",
            inv.host,
            inv.instances.len()
        ));
    }
    Ok(())
}

/// One disk of a finished backup: every figure in range.
pub fn disk_commit(dc: &DiskCommit) -> Check {
    let bad = |what: &str| Err(format!("disk {}: {what}", dc.disk_id));
    let size = dc.virtual_size;
    let chunk = u64::try_from(dc.chunk_size).unwrap_or(0);
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk) || !chunk.is_power_of_two() {
        return bad("chunk size is not a power of two from 4 KiB to 16 MiB");
    }
    if size <= 0 || size as u64 > MAX_DISK_SIZE || size % 512 != 0 {
        return bad("disk size out of range");
    }
    if dc.root_digest.len() != 32 || dc.root_segment <= 0 {
        return bad("root reference malformed");
    }
    let most = size.saturating_mul(2);
    for v in [dc.read_bytes, dc.new_bytes, dc.stored_bytes] {
        if !(0..=most).contains(&v) {
            return bad("byte counts out of range");
        }
    }
    // What it stored is what its new segments hold (sizes the store is
    // asked for before the commit); new data is data it read. A host
    // cannot charge its projects' quota more than it really wrote.
    let written: i64 = dc
        .new_segments
        .iter()
        .map(|s| s.1.max(0))
        .fold(0, i64::saturating_add);
    if dc.stored_bytes > written || dc.new_bytes > dc.read_bytes {
        return bad("byte counts do not add up");
    }
    if dc.base_seq < 0 {
        return bad("base sequence out of range");
    }
    if dc.bitmap_name.as_ref().is_some_and(|b| b.len() > 128) {
        return bad("bitmap name longer than 128 bytes");
    }
    if dc
        .full_reason
        .as_deref()
        .is_some_and(|r| !crate::extract::FullReason::NAMES.contains(&r))
    {
        return bad("unknown full-read reason");
    }
    // Enough for a full read at the smallest chunk size, never unbounded.
    let most_segments = (size as u64 / MIN_CHUNK).max(1) as usize + 64;
    if dc.new_segments.len() > most_segments || dc.ref_deltas.len() > most_segments * 2 {
        return bad("too many segments");
    }
    let mut ids = HashSet::new();
    for &(id, bytes, records) in &dc.new_segments {
        if id <= 0 || !(1..=MAX_SEGMENT).contains(&bytes) || records < 1 || !ids.insert(id) {
            return bad("a new segment is malformed or named twice");
        }
    }
    let mut named = HashSet::new();
    for &(segment, _) in &dc.ref_deltas {
        if segment <= 0 || !named.insert(segment) {
            return bad("a reference delta is malformed or named twice");
        }
    }
    Ok(())
}

/// A libvirt checkpoint a host reports for the catalog to keep: a plain
/// name, and XML that libvirt can define again as that checkpoint (the
/// next job hands it back to a host, which gives it to libvirt).
/// A reported checkpoint: a plain name, small XML that parses as that
/// checkpoint, made by `host` (the job's, checked against its bus user) as
/// its description says, each disk's bitmap the checkpoint's own. Another
/// host trusts a checkpoint only if its description names it, so a host
/// cannot pass a forged base to the host an instance moves to, nor name a
/// bitmap another tool owns.
pub fn checkpoint(name: &str, xml: &str, host: &str) -> Check {
    let plain = !name.is_empty()
        && name.len() <= MAX_CHECKPOINT_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !plain {
        return Err(format!(
            "checkpoint name {name:?} is not plain or longer than {MAX_CHECKPOINT_NAME} bytes"
        ));
    }
    if xml.len() > MAX_CHECKPOINT_XML {
        return Err(format!(
            "checkpoint {name}: XML of {} bytes (at most {MAX_CHECKPOINT_XML})",
            xml.len()
        ));
    }
    let parsed =
        crate::libvirt::parse_checkpoint(xml).map_err(|e| format!("checkpoint {name}: {e}"))?;
    if parsed.name != name {
        return Err(format!(
            "checkpoint {name}: its XML names checkpoint {:?}",
            parsed.name
        ));
    }
    if crate::libvirt::made_on(parsed.description.as_deref()) != Some(host.trim()) {
        return Err(format!(
            "checkpoint {name}: its description {:?} does not name host {host}, which made it",
            parsed.description
        ));
    }
    if let Some(d) = parsed.disks.iter().find(|d| {
        d.bitmap
            .as_deref()
            .is_some_and(|b| !b.is_empty() && b != name)
    }) {
        return Err(format!(
            "checkpoint {name}: disk {} names bitmap {:?}, not the checkpoint's own",
            d.name, d.bitmap
        ));
    }
    Ok(())
}

/// What a backup job was planned on, kept with the job (`jobs.payload`)
/// so its outcome can be checked against it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedBackup {
    pub disks: Vec<PlannedDisk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedDisk {
    pub disk_id: String,
    pub base_seq: i64,
    /// The disk's size as its host last reported it (0: planned before
    /// sizes were kept, not checked).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub virtual_size: i64,
    /// Its size in the catalog when the outcome arrives (a resize
    /// reported meanwhile): filled in by the caller, never stored.
    #[serde(skip)]
    pub inventoried_size: Option<i64>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl PlannedDisk {
    fn takes_size(&self, size: i64) -> bool {
        self.virtual_size == 0 || size == self.virtual_size || Some(size) == self.inventoried_size
    }
}

/// What a restore job was planned on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedRestore {
    /// The restored disk's size: no restore writes more.
    pub disk_size: u64,
}

/// A finished backup's disks are exactly the planned ones, each on the
/// head it was planned on, and its kind and consistency are known words.
pub fn finished(
    kind: &str,
    consistency: &str,
    disks: &[DiskCommit],
    planned: &PlannedBackup,
) -> Check {
    if BackupKind::parse(kind).is_none() || Consistency::parse(consistency).is_none() {
        return Err(format!(
            "unknown kind {kind:?} or consistency {consistency:?}"
        ));
    }
    let mut got: Vec<(&str, i64)> = disks
        .iter()
        .map(|d| (d.disk_id.as_str(), d.base_seq))
        .collect();
    let mut want: Vec<(&str, i64)> = planned
        .disks
        .iter()
        .map(|d| (d.disk_id.as_str(), d.base_seq))
        .collect();
    got.sort_unstable();
    want.sort_unstable();
    if got.is_empty() || got != want {
        return Err("the finished backup's disks are not the ones its job was planned on".into());
    }
    for d in disks {
        let plan = planned.disks.iter().find(|p| p.disk_id == d.disk_id);
        if !plan.is_some_and(|p| p.takes_size(d.virtual_size)) {
            return Err(format!(
                "disk {}: {} bytes is not the size its host reported",
                d.disk_id, d.virtual_size
            ));
        }
    }
    disks.iter().try_for_each(disk_commit)
}

/// A host's error text, cut to what is kept.
pub fn error_text(e: &str) -> String {
    if e.len() <= MAX_ERROR {
        return e.to_string();
    }
    let mut end = MAX_ERROR;
    while !e.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &e[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::InventoryDisk;

    fn commit() -> DiskCommit {
        DiskCommit {
            disk_id: "d-1".into(),
            base_seq: 3,
            virtual_size: 1 << 30,
            chunk_size: 1 << 18,
            root_digest: vec![0xab; 32],
            root_segment: 43,
            bitmap_name: Some("ekko-b-1".into()),
            full_read: false,
            read_bytes: 10,
            new_bytes: 9,
            stored_bytes: 5,
            new_segments: vec![(43, 1000, 4)],
            ref_deltas: vec![(42, -1), (43, 4)],
            fresh_map: false,
            full_reason: None,
        }
    }

    #[test]
    fn a_host_speaks_only_for_itself() {
        let a = Sender::Host("host-a".into());
        assert!(host_claim("host-a", &a).is_ok());
        assert!(host_claim("host-b", &a).is_err());
        assert!(host_claim("host-b", &Sender::Trusted).is_ok());
        assert!(host_claim("../etc", &Sender::Trusted).is_err());
    }

    #[test]
    fn every_number_of_a_finished_disk_is_in_range() {
        assert_eq!(disk_commit(&commit()), Ok(()));
        type Spoil = Box<dyn Fn(&mut DiskCommit)>;
        let cases: Vec<(&str, Spoil)> = vec![
            ("chunk 0", Box::new(|d| d.chunk_size = 0)),
            (
                "chunk not a power of two",
                Box::new(|d| d.chunk_size = 3 << 16),
            ),
            ("chunk too big", Box::new(|d| d.chunk_size = 1 << 30)),
            ("negative size", Box::new(|d| d.virtual_size = -512)),
            ("huge size", Box::new(|d| d.virtual_size = i64::MAX)),
            ("odd size", Box::new(|d| d.virtual_size = 1000)),
            ("short digest", Box::new(|d| d.root_digest = vec![1; 3])),
            ("root segment 0", Box::new(|d| d.root_segment = 0)),
            ("negative bytes", Box::new(|d| d.read_bytes = -1)),
            (
                "more stored than written",
                Box::new(|d| d.stored_bytes = 1001),
            ),
            ("more new than read", Box::new(|d| d.new_bytes = 11)),
            (
                "long bitmap",
                Box::new(|d| d.bitmap_name = Some("b".repeat(200))),
            ),
            (
                "segment twice",
                Box::new(|d| d.new_segments = vec![(7, 10, 1), (7, 10, 1)]),
            ),
            (
                "empty segment",
                Box::new(|d| d.new_segments = vec![(7, 0, 1)]),
            ),
            (
                "delta twice",
                Box::new(|d| d.ref_deltas = vec![(7, 1), (7, -1)]),
            ),
            (
                "unknown reason",
                Box::new(|d| d.full_reason = Some("because".into())),
            ),
        ];
        for (what, spoil) in cases {
            let mut d = commit();
            spoil(&mut d);
            assert!(disk_commit(&d).is_err(), "{what} passed");
        }
    }

    #[test]
    fn checkpoints_are_plain_small_and_what_they_say() {
        let xml = |n: &str| {
            format!(
                "<domaincheckpoint><name>{n}</name><description>ekko: made on host h1</description>\
                 <creationTime>1</creationTime>\
                 <disks><disk name='vda' checkpoint='bitmap' bitmap='{n}'/></disks></domaincheckpoint>"
            )
        };
        assert_eq!(checkpoint("ekko-b-1-1", &xml("ekko-b-1-1"), "h1"), Ok(()));
        assert!(
            checkpoint("ekko-b-1-1", &xml("ekko-other"), "h1").is_err(),
            "another name"
        );
        assert!(
            checkpoint("ekko b", &xml("ekko b"), "h1").is_err(),
            "not plain"
        );
        assert!(checkpoint(&"e".repeat(129), &xml(&"e".repeat(129)), "h1").is_err());
        assert!(
            checkpoint("ekko-1", "<domain/>", "h1").is_err(),
            "not a checkpoint"
        );
        assert!(
            checkpoint("ekko-1", "<domaincheckpoint>", "h1").is_err(),
            "not XML"
        );
        let huge = xml("ekko-1").replace(
            "<disks>",
            &format!("<description>{}</description><disks>", "x".repeat(40 << 10)),
        );
        assert!(checkpoint("ekko-1", &huge, "h1").is_err(), "too big");
        assert!(
            checkpoint("ekko-1", &xml("ekko-1"), "h2").is_err(),
            "made on another host than the one reporting it"
        );
        assert!(
            checkpoint(
                "ekko-1",
                &xml("ekko-1").replace("<description>ekko: made on host h1</description>", ""),
                "h1"
            )
            .is_err(),
            "no description"
        );
        assert!(
            checkpoint(
                "ekko-1",
                &xml("ekko-1").replace("bitmap='ekko-1'", "bitmap='other-tool'"),
                "h1"
            )
            .is_err(),
            "another tool's bitmap"
        );
        let mut d = commit();
        d.full_reason = Some("not_qcow2".into());
        assert_eq!(disk_commit(&d), Ok(()));
    }

    #[test]
    fn a_finished_backup_matches_its_plan() {
        let plan = PlannedBackup {
            disks: vec![PlannedDisk {
                disk_id: "d-1".into(),
                base_seq: 3,
                virtual_size: 1 << 30,
                inventoried_size: None,
            }],
        };
        assert_eq!(finished("incremental", "crash", &[commit()], &plan), Ok(()));
        let mut huge = commit();
        huge.virtual_size = 1 << 49;
        assert!(
            finished("incremental", "crash", &[huge.clone()], &plan).is_err(),
            "a size nobody reported"
        );
        let mut resized = plan.clone();
        resized.disks[0].inventoried_size = Some(1 << 49);
        assert_eq!(finished("incremental", "crash", &[huge], &resized), Ok(()));
        assert!(
            finished("incremental", "crash", &[], &plan).is_err(),
            "no disk"
        );
        let mut other = commit();
        other.disk_id = "d-victim".into();
        assert!(
            finished("full", "crash", &[other], &plan).is_err(),
            "another disk"
        );
        let mut moved = commit();
        moved.base_seq = 2;
        assert!(
            finished("full", "crash", &[moved], &plan).is_err(),
            "another base"
        );
        assert!(finished("weekly", "crash", &[commit()], &plan).is_err());
        // Plans stored before this check (whole job messages) still read.
        let old: PlannedBackup = serde_json::from_str(
            r#"{"job_id":"j","disks":[{"disk_id":"d-1","device":"vda","base_seq":3,"head":null}]}"#,
        )
        .unwrap();
        assert_eq!(old.disks[0].virtual_size, 0, "not kept then: not checked");
        assert!(old.disks[0].takes_size(1 << 40));
    }

    #[test]
    fn inventory_entries_hold_what_the_catalog_can() {
        let ok = InventoryInstance {
            id: "0f6a1c2e-11aa-4bb0-9c1d-0123456789ab".into(),
            project_id: "p1".into(),
            name: "web".into(),
            disks: vec![InventoryDisk {
                device: "vda".into(),
                node_name: "libvirt-1-format".into(),
                virtual_size: 1 << 30,
            }],
        };
        assert_eq!(inventory_entry(&ok), Ok(()));
        let mut long = ok.clone();
        long.id = "a".repeat(40);
        assert!(inventory_entry(&long).is_err(), "the column holds 36");
        let mut twice = ok.clone();
        twice.disks.push(twice.disks[0].clone());
        assert!(inventory_entry(&twice).is_err());
        let mut odd = ok;
        odd.disks[0].device = "vda'; DROP".into();
        assert!(inventory_entry(&odd).is_err());
        assert!(error_text(&"é".repeat(5000)).len() <= MAX_ERROR + 4);
    }
}
