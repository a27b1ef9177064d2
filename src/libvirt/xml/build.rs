//! The documents Ekko hands libvirt (backup, checkpoint), and what it reads
//! back from a checkpoint and a running backup job.

use std::fmt::Write as _;
use std::path::PathBuf;

use roxmltree::Document;

use super::*;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The meta context of a disk's dirty blocks in an incremental pull
/// backup's NBD export (the export itself is named after the target).
pub fn dirty_bitmap_context(target: &str) -> String {
    format!("qemu:dirty-bitmap:backup-{target}")
}

/// One disk of a backup job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupDisk {
    /// Target name (`vda`).
    pub target: String,
    /// Where QEMU keeps the old data of blocks the guest writes during the
    /// job (libvirt creates it, and removes it when the job ends).
    pub scratch: PathBuf,
    /// Full read of this disk even in an incremental job (raw disks, block
    /// devices, a disk with no usable bitmap): `backupmode='full'`.
    pub full: bool,
}

/// A pull-mode backup job: libvirt's NBD server on a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSpec {
    /// The NBD server's socket; its directory must be writable by the user
    /// QEMU runs as (`libvirt-qemu`).
    pub socket: PathBuf,
    /// Export only what changed since this checkpoint (None: full).
    pub incremental: Option<String>,
    pub disks: Vec<BackupDisk>,
    /// Targets left out of the job (`backup='no'`).
    pub excluded: Vec<String>,
}

impl BackupSpec {
    /// The `<domainbackup>` document for `virDomainBackupBegin`.
    pub fn to_xml(&self) -> String {
        let mut x = String::from("<domainbackup mode='pull'>");
        if let Some(ck) = &self.incremental {
            let _ = write!(x, "<incremental>{}</incremental>", esc(ck));
        }
        let _ = write!(
            x,
            "<server transport='unix' socket='{}'/><disks>",
            esc(&self.socket.to_string_lossy())
        );
        for d in &self.disks {
            let mode = if d.full { " backupmode='full'" } else { "" };
            let _ = write!(
                x,
                "<disk name='{}' backup='yes' type='file'{mode}><scratch file='{}'/></disk>",
                esc(&d.target),
                esc(&d.scratch.to_string_lossy())
            );
        }
        for t in &self.excluded {
            let _ = write!(x, "<disk name='{}' backup='no'/>", esc(t));
        }
        x.push_str("</disks></domainbackup>");
        x
    }
}

/// A checkpoint: one persistent dirty bitmap per qcow2 disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointSpec {
    pub name: String,
    /// Free text libvirt keeps with the checkpoint (Ekko: the host that
    /// made it, so a checkpoint that followed its instance to another host
    /// is recognised).
    pub description: Option<String>,
    /// Targets that get a bitmap (named like the checkpoint).
    pub bitmap_disks: Vec<String>,
    /// Targets without one (`checkpoint='no'`: raw disks, block devices).
    pub excluded: Vec<String>,
}

impl CheckpointSpec {
    /// The `<domaincheckpoint>` document for `virDomainBackupBegin`.
    pub fn to_xml(&self) -> String {
        let mut x = String::new();
        let _ = write!(x, "<domaincheckpoint><name>{}</name>", esc(&self.name));
        if let Some(d) = &self.description {
            let _ = write!(x, "<description>{}</description>", esc(d));
        }
        x.push_str("<disks>");
        for t in &self.bitmap_disks {
            let _ = write!(x, "<disk name='{}' checkpoint='bitmap'/>", esc(t));
        }
        for t in &self.excluded {
            let _ = write!(x, "<disk name='{}' checkpoint='no'/>", esc(t));
        }
        x.push_str("</disks></domaincheckpoint>");
        x
    }
}

/// One disk of a checkpoint as libvirt describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointDisk {
    pub name: String,
    /// Has a bitmap (`checkpoint='bitmap'`).
    pub bitmap: Option<String>,
}

/// What a checkpoint's XML (`virDomainCheckpointGetXMLDesc`) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub name: String,
    pub description: Option<String>,
    pub parent: Option<String>,
    /// Seconds since the epoch.
    pub creation_time: Option<i64>,
    pub disks: Vec<CheckpointDisk>,
}

/// What Ekko writes into a checkpoint's description: the host that made
/// it (the controller checks it names the host that reported it).
pub fn made_on_host(host: &str) -> String {
    format!("ekko: made on host {host}")
}

/// The host a checkpoint's description names, if Ekko wrote it (libvirt
/// trims the text it keeps).
pub fn made_on(description: Option<&str>) -> Option<&str> {
    Some(
        description?
            .trim()
            .strip_prefix("ekko: made on host")?
            .trim(),
    )
}

/// Parse a checkpoint's XML.
pub fn parse_checkpoint(xml: &str) -> Result<CheckpointInfo, XmlError> {
    const WHAT: &str = "checkpoint XML";
    let doc = Document::parse(xml).map_err(|e| xml_error(WHAT, format!("not well-formed: {e}")))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domaincheckpoint" {
        return Err(xml_error(
            WHAT,
            format!("root element is <{}>", root.tag_name().name()),
        ));
    }
    let name = child(root, "name")
        .and_then(text)
        .ok_or_else(|| xml_error(WHAT, "no <name>"))?;
    let description = child(root, "description").and_then(text);
    let parent = child(root, "parent")
        .and_then(|p| child(p, "name"))
        .and_then(text);
    let creation_time = child(root, "creationTime")
        .and_then(text)
        .and_then(|t| t.parse().ok());
    let disks = child(root, "disks")
        .map(|d| {
            children(d, "disk")
                .filter_map(|disk| {
                    let name = attr(disk, "name")?;
                    let bitmap = (disk.attribute("checkpoint") == Some("bitmap"))
                        .then(|| attr(disk, "bitmap").unwrap_or_default());
                    Some(CheckpointDisk { name, bitmap })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CheckpointInfo {
        name,
        description,
        parent,
        creation_time,
        disks,
    })
}

impl CheckpointInfo {
    /// A document that defines this checkpoint again (`REDEFINE`) with the
    /// bitmap of disk `only` and no other: deleting it then removes that
    /// one bitmap, whatever became of the others. None without a creation
    /// time (libvirt requires one to redefine) or a bitmap on `only`.
    pub fn redefinition_of_one(&self, only: &str) -> Option<String> {
        let created = self.creation_time?;
        // libvirt names a bitmap after its checkpoint unless it says otherwise.
        let bitmap = match self
            .disks
            .iter()
            .find(|d| d.name == only)?
            .bitmap
            .as_deref()?
        {
            "" => self.name.clone(),
            b => b.to_string(),
        };
        let mut x = format!(
            "<domaincheckpoint><name>{}</name><creationTime>{created}</creationTime><disks>",
            esc(&self.name)
        );
        for d in &self.disks {
            if d.name == only {
                let _ = write!(
                    x,
                    "<disk name='{}' checkpoint='bitmap' bitmap='{}'/>",
                    esc(&d.name),
                    esc(&bitmap)
                );
            } else {
                let _ = write!(x, "<disk name='{}' checkpoint='no'/>", esc(&d.name));
            }
        }
        x.push_str("</disks></domaincheckpoint>");
        Some(x)
    }
}

/// The checkpoint XML without its `<parent>`: redefining it then needs no
/// parent defined first.
pub fn checkpoint_without_parent(xml: &str) -> Result<String, XmlError> {
    const WHAT: &str = "checkpoint XML";
    let doc = Document::parse(xml).map_err(|e| xml_error(WHAT, format!("not well-formed: {e}")))?;
    let root = doc.root_element();
    match child(root, "parent") {
        None => Ok(xml.to_string()),
        Some(p) => {
            let r = p.range();
            let mut out = String::with_capacity(xml.len());
            out.push_str(&xml[..r.start]);
            out.push_str(&xml[r.end..]);
            Ok(out)
        }
    }
}

/// One disk of a running backup job as libvirt describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupJobDisk {
    pub name: String,
    pub backup: bool,
    /// `full` or `incremental`, when libvirt says.
    pub mode: Option<String>,
    pub scratch: Option<PathBuf>,
    /// NBD export name (default: the target).
    pub export_name: Option<String>,
    /// Bitmap exported as `qemu:dirty-bitmap:<this>` (incremental disks).
    pub export_bitmap: Option<String>,
}

/// What a running backup job's XML (`virDomainBackupGetXMLDesc`) says:
/// enough to find and clean up a job Ekko lost track of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupJobInfo {
    pub mode: String,
    pub incremental: Option<String>,
    pub socket: Option<PathBuf>,
    pub disks: Vec<BackupJobDisk>,
}

/// Parse a backup job's XML.
pub fn parse_backup(xml: &str) -> Result<BackupJobInfo, XmlError> {
    const WHAT: &str = "backup XML";
    let doc = Document::parse(xml).map_err(|e| xml_error(WHAT, format!("not well-formed: {e}")))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domainbackup" {
        return Err(xml_error(
            WHAT,
            format!("root element is <{}>", root.tag_name().name()),
        ));
    }
    let disks = child(root, "disks")
        .map(|d| {
            children(d, "disk")
                .filter_map(|disk| {
                    Some(BackupJobDisk {
                        name: attr(disk, "name")?,
                        backup: disk.attribute("backup") != Some("no"),
                        mode: attr(disk, "backupmode"),
                        scratch: child(disk, "scratch")
                            .and_then(|s| s.attribute("file").or_else(|| s.attribute("dev")))
                            .map(PathBuf::from),
                        export_name: attr(disk, "exportname"),
                        export_bitmap: attr(disk, "exportbitmap"),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(BackupJobInfo {
        mode: attr(root, "mode").unwrap_or_else(|| "push".to_string()),
        incremental: child(root, "incremental").and_then(text),
        socket: child(root, "server")
            .and_then(|s| s.attribute("socket"))
            .map(PathBuf::from),
        disks,
    })
}
