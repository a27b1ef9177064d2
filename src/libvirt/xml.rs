//! libvirt's XML, both ways, without libvirt: what Ekko reads from a domain
//! definition (Nova's metadata, the disks, the guest agent channel), from a
//! checkpoint and from a running backup job, and the backup and checkpoint
//! documents it hands to `virDomainBackupBegin`. Pure functions.
//!
//! The documents built here have the forms verified against libvirt 11.3
//! and QEMU 10 (`shared/libvirt/recipe.sh`):
//!
//! ```text
//! <domainbackup mode='pull'><incremental>ekko-1</incremental>
//!   <server transport='unix' socket='/…/nbd.sock'/>
//!   <disks><disk name='vda' backup='yes' type='file'><scratch file='/…/scratch-vda.qcow2'/></disk></disks>
//! </domainbackup>
//! <domaincheckpoint><name>ekko-2</name><disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>
//! ```
//!
//! libvirt exports each disk under its target name (`vda`) with the dirty
//! bitmap of an incremental job as meta context
//! `qemu:dirty-bitmap:backup-<target>` ([`dirty_bitmap_context`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use roxmltree::{Document, Node};

/// Nova's metadata namespaces are `…/nova/1.0`, `1.1`, `1.2`: matched by
/// this prefix and the local names.
pub const NOVA_NAMESPACE_PREFIX: &str = "http://openstack.org/xmlns/libvirt/nova/";

/// The virtio-serial channel name of the QEMU guest agent.
pub const GUEST_AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

/// A document libvirt gave (or should give) that Ekko cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {message}")]
pub struct XmlError {
    /// Which document: "domain XML", "checkpoint XML", "backup XML".
    pub what: &'static str,
    pub message: String,
}

fn xml_error(what: &'static str, message: impl Into<String>) -> XmlError {
    XmlError {
        what,
        message: message.into(),
    }
}

/// What Ekko takes from a domain's XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    /// Nova: the server id.
    pub uuid: String,
    /// Nova: `instance-XXXXXXXX`.
    pub name: String,
    /// `nova:instance` metadata; None for a domain Nova did not define.
    pub nova: Option<NovaInstance>,
    /// Disks with `device='disk'` (no cdrom, floppy or lun), in XML order.
    pub disks: Vec<DiskInfo>,
    /// An `org.qemu.guest_agent.0` channel is defined.
    pub guest_agent: bool,
    /// The channel's live `state` (running domains only): Some(true) when
    /// an agent in the guest is connected.
    pub guest_agent_connected: Option<bool>,
}

/// Nova's `nova:instance` metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NovaInstance {
    /// The namespace it was written in (`…/nova/1.1`).
    pub namespace: String,
    /// `nova:name`: the server's display name.
    pub name: Option<String>,
    /// `nova:flavor/@name`.
    pub flavor: Option<String>,
    /// `nova:owner/nova:user/@uuid` (Keystone user id) and its text (name).
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    /// `nova:owner/nova:project/@uuid` (Keystone project id) and its text.
    pub project_id: Option<String>,
    pub project_name: Option<String>,
}

/// Where a disk's data is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// `type='file'`: an image file (Nova's local disks).
    File(PathBuf),
    /// `type='block'`: a block device (e.g. an iSCSI Cinder volume).
    Block(PathBuf),
    /// `type='network'`: e.g. an RBD Cinder volume (`protocol='rbd'`).
    Network { protocol: String, name: String },
    /// `type='volume'`: a libvirt storage pool volume.
    Volume { pool: String, volume: String },
    /// No medium, or a type Ekko does not know (named).
    Other(String),
}

impl DiskSource {
    /// The host path of a file or block device.
    pub fn path(&self) -> Option<&Path> {
        match self {
            DiskSource::File(p) | DiskSource::Block(p) => Some(p),
            _ => None,
        }
    }
}

/// One `device='disk'` disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// `target/@dev`: `vda`, and the NBD export name of a backup.
    pub target: String,
    /// `target/@bus`: `virtio`, `scsi`, `sata`, …
    pub bus: Option<String>,
    pub source: DiskSource,
    /// `driver/@type`: `qcow2`, `raw`, …
    pub format: Option<String>,
    /// The backing chain below the image, nearest first (Nova: the base
    /// image in `_base/`). Only a running domain's XML lists it: empty in
    /// an inactive definition even when the image has a backing file.
    pub backing_chain: Vec<DiskSource>,
    pub readonly: bool,
}

impl DiskInfo {
    /// Dirty bitmaps (and so checkpoints and incrementals) need qcow2.
    pub fn is_qcow2(&self) -> bool {
        self.format.as_deref() == Some("qcow2")
    }

    pub fn has_backing(&self) -> bool {
        !self.backing_chain.is_empty()
    }
}

fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| {
        c.is_element() && c.tag_name().name() == name && c.tag_name().namespace().is_none()
    })
}

fn children<'a, 'i: 'a>(n: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    n.children().filter(move |c| {
        c.is_element() && c.tag_name().name() == name && c.tag_name().namespace().is_none()
    })
}

fn text(n: Node<'_, '_>) -> Option<String> {
    let t = n.text()?.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn attr(n: Node<'_, '_>, name: &str) -> Option<String> {
    n.attribute(name).map(str::to_string)
}

fn is_nova(n: Node<'_, '_>, local: &str) -> bool {
    n.is_element()
        && n.tag_name().name() == local
        && n.tag_name()
            .namespace()
            .is_some_and(|ns| ns.starts_with(NOVA_NAMESPACE_PREFIX))
}

fn nova_child<'a, 'i>(n: Node<'a, 'i>, local: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| is_nova(*c, local))
}

fn parse_nova(instance: Node<'_, '_>) -> NovaInstance {
    let mut nova = NovaInstance {
        namespace: instance
            .tag_name()
            .namespace()
            .unwrap_or_default()
            .to_string(),
        name: nova_child(instance, "name").and_then(text),
        flavor: nova_child(instance, "flavor").and_then(|f| attr(f, "name")),
        ..NovaInstance::default()
    };
    if let Some(owner) = nova_child(instance, "owner") {
        if let Some(u) = nova_child(owner, "user") {
            nova.user_id = attr(u, "uuid");
            nova.user_name = text(u);
        }
        if let Some(p) = nova_child(owner, "project") {
            nova.project_id = attr(p, "uuid");
            nova.project_name = text(p);
        }
    }
    nova
}

/// The source of a `<disk>` or `<backingStore>` of storage type `kind`.
fn parse_source(kind: Option<&str>, src: Option<Node<'_, '_>>) -> DiskSource {
    let Some(src) = src else {
        return DiskSource::Other(kind.unwrap_or("none").to_string());
    };
    let get = |a: &str| src.attribute(a);
    match kind {
        Some("file") | None if get("file").is_some() => {
            DiskSource::File(PathBuf::from(get("file").unwrap_or_default()))
        }
        Some("block") | None if get("dev").is_some() => {
            DiskSource::Block(PathBuf::from(get("dev").unwrap_or_default()))
        }
        Some("network") => DiskSource::Network {
            protocol: get("protocol").unwrap_or_default().to_string(),
            name: get("name").unwrap_or_default().to_string(),
        },
        Some("volume") => DiskSource::Volume {
            pool: get("pool").unwrap_or_default().to_string(),
            volume: get("volume").unwrap_or_default().to_string(),
        },
        other => DiskSource::Other(other.unwrap_or("none").to_string()),
    }
}

fn parse_disk(disk: Node<'_, '_>) -> Result<DiskInfo, XmlError> {
    let target =
        child(disk, "target").ok_or_else(|| xml_error("domain XML", "a disk has no <target>"))?;
    let dev = target
        .attribute("dev")
        .ok_or_else(|| xml_error("domain XML", "a disk's <target> has no dev"))?;
    let mut backing_chain = Vec::new();
    let mut cur = child(disk, "backingStore");
    // An empty <backingStore/> ends the chain.
    while let Some(bs) = cur {
        if bs.attribute("type").is_none() && child(bs, "source").is_none() {
            break;
        }
        backing_chain.push(parse_source(bs.attribute("type"), child(bs, "source")));
        cur = child(bs, "backingStore");
    }
    Ok(DiskInfo {
        target: dev.to_string(),
        bus: attr(target, "bus"),
        source: parse_source(disk.attribute("type"), child(disk, "source")),
        format: child(disk, "driver").and_then(|d| attr(d, "type")),
        backing_chain,
        readonly: child(disk, "readonly").is_some(),
    })
}

/// Parse a domain's XML (`virDomainGetXMLDesc`).
pub fn parse_domain(xml: &str) -> Result<DomainInfo, XmlError> {
    const WHAT: &str = "domain XML";
    let doc = Document::parse(xml).map_err(|e| xml_error(WHAT, format!("not well-formed: {e}")))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(xml_error(
            WHAT,
            format!("root element is <{}>, not <domain>", root.tag_name().name()),
        ));
    }
    let uuid = child(root, "uuid")
        .and_then(text)
        .ok_or_else(|| xml_error(WHAT, "no <uuid>"))?;
    let name = child(root, "name")
        .and_then(text)
        .ok_or_else(|| xml_error(WHAT, "no <name>"))?;
    let nova = child(root, "metadata")
        .and_then(|m| nova_child(m, "instance"))
        .map(parse_nova);
    let mut disks = Vec::new();
    let mut guest_agent = false;
    let mut guest_agent_connected = None;
    if let Some(devices) = child(root, "devices") {
        for disk in children(devices, "disk") {
            if disk.attribute("device").unwrap_or("disk") == "disk" {
                disks.push(parse_disk(disk)?);
            }
        }
        for ch in children(devices, "channel") {
            if let Some(t) = child(ch, "target") {
                if t.attribute("name") == Some(GUEST_AGENT_CHANNEL) {
                    guest_agent = true;
                    guest_agent_connected = t.attribute("state").map(|s| s == "connected");
                }
            }
        }
    }
    Ok(DomainInfo {
        uuid,
        name,
        nova,
        disks,
        guest_agent,
        guest_agent_connected,
    })
}

/// Escape for an attribute value in single quotes, or for text.
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
    /// Targets that get a bitmap (named like the checkpoint).
    pub bitmap_disks: Vec<String>,
    /// Targets without one (`checkpoint='no'`: raw disks, block devices).
    pub excluded: Vec<String>,
}

impl CheckpointSpec {
    /// The `<domaincheckpoint>` document for `virDomainBackupBegin`.
    pub fn to_xml(&self) -> String {
        let mut x = String::new();
        let _ = write!(
            x,
            "<domaincheckpoint><name>{}</name><disks>",
            esc(&self.name)
        );
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
    pub parent: Option<String>,
    /// Seconds since the epoch.
    pub creation_time: Option<i64>,
    pub disks: Vec<CheckpointDisk>,
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
        parent,
        creation_time,
        disks,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    const NOVA_TEMPLATE: &str = include_str!("testdata/nova-domain.xml.in");
    const NOVA_LIVE: &str = include_str!("testdata/nova-live.xml");

    #[test]
    fn recipe_domain() {
        let xml = NOVA_TEMPLATE.replace("@DISK@", "/var/tmp/w/vda.qcow2");
        let d = parse_domain(&xml).expect("parse");
        assert_eq!(d.uuid, "3f1c9a52-7d2e-4b8a-9c1e-0a1b2c3d4e01");
        assert_eq!(d.name, "instance-00000001");
        let nova = d.nova.expect("nova metadata");
        assert_eq!(
            nova.namespace,
            "http://openstack.org/xmlns/libvirt/nova/1.1"
        );
        assert_eq!(nova.name.as_deref(), Some("vm1"));
        assert_eq!(nova.flavor, None);
        assert_eq!(nova.user_id.as_deref(), Some("u1"));
        assert_eq!(nova.user_name.as_deref(), Some("demo"));
        assert_eq!(nova.project_id.as_deref(), Some("p1"));
        assert_eq!(nova.project_name.as_deref(), Some("demo"));
        assert_eq!(
            d.disks,
            vec![DiskInfo {
                target: "vda".into(),
                bus: Some("virtio".into()),
                source: DiskSource::File("/var/tmp/w/vda.qcow2".into()),
                format: Some("qcow2".into()),
                backing_chain: vec![],
                readonly: false,
            }]
        );
        assert!(d.disks[0].is_qcow2() && !d.disks[0].has_backing());
        assert!(d.guest_agent);
        assert_eq!(d.guest_agent_connected, None);
    }

    #[test]
    fn live_nova_domain_with_chains_volumes_and_cdrom() {
        let d = parse_domain(NOVA_LIVE).expect("parse");
        assert_eq!(d.uuid, "8c3f5a2e-1b7d-4e2a-9f10-3c4d5e6f7a8b");
        assert_eq!(d.name, "instance-0000002a");
        let nova = d.nova.as_ref().expect("nova");
        assert_eq!(nova.name.as_deref(), Some("web-01 & friends"));
        assert_eq!(nova.flavor.as_deref(), Some("m1.small"));
        assert_eq!(
            nova.user_id.as_deref(),
            Some("2f6b1c1e8a0b4f5e9d3c7a6b5e4d3c2b")
        );
        assert_eq!(
            nova.project_id.as_deref(),
            Some("9a8b7c6d5e4f40312a1b0c9d8e7f6a5b")
        );
        assert_eq!(nova.project_name.as_deref(), Some("web"));
        // the config drive (cdrom) is not a disk to back up
        let targets: Vec<&str> = d.disks.iter().map(|x| x.target.as_str()).collect();
        assert_eq!(targets, ["vda", "vdb", "vdc", "vdd"]);
        let vda = &d.disks[0];
        assert!(vda.is_qcow2());
        assert_eq!(
            vda.source.path(),
            Some(Path::new(
                "/var/lib/nova/instances/8c3f5a2e-1b7d-4e2a-9f10-3c4d5e6f7a8b/disk"
            ))
        );
        assert_eq!(
            vda.backing_chain,
            vec![DiskSource::File(
                "/var/lib/nova/instances/_base/3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f506".into()
            )]
        );
        assert_eq!(d.disks[1].backing_chain.len(), 2);
        let vdc = &d.disks[2];
        assert_eq!(vdc.format.as_deref(), Some("raw"));
        assert_eq!(
            vdc.source,
            DiskSource::Block("/dev/disk/by-id/wwn-0x6001405abcdef0123456789".into())
        );
        assert!(!vdc.has_backing(), "an empty <backingStore/> is no chain");
        assert_eq!(
            d.disks[3].source,
            DiskSource::Network {
                protocol: "rbd".into(),
                name: "volumes/volume-1a2b3c4d".into()
            }
        );
        assert_eq!(d.disks[3].source.path(), None);
        assert!(d.guest_agent);
        assert_eq!(d.guest_agent_connected, Some(false));
    }

    #[test]
    fn nova_namespace_versions_and_foreign_metadata() {
        for v in ["1.0", "1.2"] {
            let xml = NOVA_TEMPLATE
                .replace("@DISK@", "/d")
                .replace("libvirt/nova/1.1", &format!("libvirt/nova/{v}"));
            let nova = parse_domain(&xml).expect("parse").nova.expect("nova");
            assert_eq!(nova.name.as_deref(), Some("vm1"), "{v}");
            assert!(nova.namespace.ends_with(v));
        }
        // another prefix, other metadata, no metadata at all: not Nova's
        let xml = NOVA_TEMPLATE.replace("@DISK@", "/d").replace(
            "xmlns:nova=\"http://openstack.org/xmlns/libvirt/nova/1.1\"",
            "xmlns:nova=\"http://example.org/not-nova/1.1\"",
        );
        assert_eq!(parse_domain(&xml).expect("parse").nova, None);
        let xml = "<domain type='kvm'><name>plain</name><uuid>u</uuid><metadata>\
                   <x:instance xmlns:x='http://openstack.org/xmlns/libvirt/nova/1.1/../x'/></metadata></domain>";
        let d = parse_domain(xml).expect("parse");
        assert!(d.nova.is_some(), "prefix match, as documented");
        let d = parse_domain("<domain><name>n</name><uuid>u</uuid></domain>").expect("parse");
        assert!(d.nova.is_none() && d.disks.is_empty() && !d.guest_agent);
        // a different prefix for the same namespace works too
        let xml = NOVA_TEMPLATE
            .replace("@DISK@", "/d")
            .replace("nova:", "n:")
            .replace("xmlns:nova", "xmlns:n");
        assert_eq!(
            parse_domain(&xml)
                .expect("parse")
                .nova
                .and_then(|n| n.project_id)
                .as_deref(),
            Some("p1")
        );
    }

    #[test]
    fn broken_domain_xml() {
        assert!(parse_domain("<domain>").is_err());
        let e = parse_domain("<domain><name>n</name></domain>").expect_err("no uuid");
        assert_eq!(e.to_string(), "domain XML: no <uuid>");
        let e = parse_domain("<network/>").expect_err("not a domain");
        assert!(e.message.contains("<network>"));
        let e = parse_domain(
            "<domain><name>n</name><uuid>u</uuid><devices><disk device='disk'><source file='/x'/></disk></devices></domain>",
        )
        .expect_err("no target");
        assert!(e.message.contains("<target>"));
    }

    #[test]
    fn backup_xml_full_and_incremental() {
        let full = BackupSpec {
            socket: "/w/sock/nbd.sock".into(),
            incremental: None,
            disks: vec![BackupDisk {
                target: "vda".into(),
                scratch: "/w/scratch-vda.qcow2".into(),
                full: false,
            }],
            excluded: vec![],
        };
        // exactly the recipe's document
        assert_eq!(
            full.to_xml(),
            "<domainbackup mode='pull'><server transport='unix' socket='/w/sock/nbd.sock'/>\
             <disks><disk name='vda' backup='yes' type='file'><scratch file='/w/scratch-vda.qcow2'/></disk></disks>\
             </domainbackup>"
        );
        let inc = BackupSpec {
            incremental: Some("ekko-1".into()),
            disks: vec![
                full.disks[0].clone(),
                BackupDisk {
                    target: "vdb".into(),
                    scratch: "/w/it's.qcow2".into(),
                    full: true,
                },
            ],
            excluded: vec!["vdc".into()],
            ..full.clone()
        };
        let x = inc.to_xml();
        assert!(
            x.starts_with("<domainbackup mode='pull'><incremental>ekko-1</incremental><server ")
        );
        assert!(x.contains("<disk name='vdb' backup='yes' type='file' backupmode='full'><scratch file='/w/it&apos;s.qcow2'/></disk>"));
        assert!(x.contains("<disk name='vdc' backup='no'/>"));
        // what we build, our parser reads back
        let back = parse_backup(&x).expect("parse");
        assert_eq!(back.mode, "pull");
        assert_eq!(back.incremental.as_deref(), Some("ekko-1"));
        assert_eq!(back.socket.as_deref(), Some(Path::new("/w/sock/nbd.sock")));
        assert_eq!(back.disks.len(), 3);
        assert_eq!(
            back.disks[1].scratch.as_deref(),
            Some(Path::new("/w/it's.qcow2"))
        );
        assert_eq!(back.disks[1].mode.as_deref(), Some("full"));
        assert!(!back.disks[2].backup);
        assert_eq!(dirty_bitmap_context("vda"), "qemu:dirty-bitmap:backup-vda");
    }

    #[test]
    fn backup_job_xml_as_libvirt_reports_it() {
        let xml = "<domainbackup mode='pull'>\n  <incremental>ekko-1</incremental>\n  \
                   <server transport='unix' socket='/w/sock/nbd.sock'/>\n  <disks>\n    \
                   <disk name='vda' backup='yes' type='file' backupmode='incremental' incremental='ekko-1' \
                   exportname='vda' exportbitmap='backup-vda'>\n      <driver type='qcow2'/>\n      \
                   <scratch file='/w/scratch-vda.qcow2'/>\n    </disk>\n  </disks>\n</domainbackup>\n";
        let b = parse_backup(xml).expect("parse");
        assert_eq!(b.disks[0].export_name.as_deref(), Some("vda"));
        assert_eq!(b.disks[0].export_bitmap.as_deref(), Some("backup-vda"));
        assert_eq!(b.disks[0].mode.as_deref(), Some("incremental"));
        assert!(parse_backup("<domaincheckpoint/>").is_err());
    }

    #[test]
    fn checkpoint_xml_both_ways() {
        let spec = CheckpointSpec {
            name: "ekko-1".into(),
            bitmap_disks: vec!["vda".into()],
            excluded: vec![],
        };
        // exactly the recipe's document
        assert_eq!(
            spec.to_xml(),
            "<domaincheckpoint><name>ekko-1</name><disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>"
        );
        let spec = CheckpointSpec {
            excluded: vec!["vdb".into()],
            ..spec
        };
        assert!(spec.to_xml().contains("<disk name='vdb' checkpoint='no'/>"));

        let dumped = "<domaincheckpoint>\n  <name>ekko-2</name>\n  <parent>\n    <name>ekko-1</name>\n  </parent>\n  \
                      <creationTime>1796334000</creationTime>\n  <disks>\n    \
                      <disk name='vda' checkpoint='bitmap' bitmap='ekko-2'/>\n    <disk name='vdb' checkpoint='no'/>\n  \
                      </disks>\n  <domain type='qemu'><name>instance-00000001</name></domain>\n</domaincheckpoint>\n";
        let c = parse_checkpoint(dumped).expect("parse");
        assert_eq!(c.name, "ekko-2");
        assert_eq!(c.parent.as_deref(), Some("ekko-1"));
        assert_eq!(c.creation_time, Some(1_796_334_000));
        assert_eq!(
            c.disks,
            vec![
                CheckpointDisk {
                    name: "vda".into(),
                    bitmap: Some("ekko-2".into())
                },
                CheckpointDisk {
                    name: "vdb".into(),
                    bitmap: None
                },
            ]
        );
        let orphan = checkpoint_without_parent(dumped).expect("strip");
        assert!(!orphan.contains("<parent>"));
        let c2 = parse_checkpoint(&orphan).expect("parse");
        assert_eq!(c2.parent, None);
        assert_eq!(c2.disks, c.disks);
        assert!(orphan.contains("<domain type='qemu'>"), "the rest is kept");
        let no_parent = checkpoint_without_parent(&orphan).expect("strip");
        assert_eq!(no_parent, orphan);
        assert!(parse_checkpoint("<domaincheckpoint/>").is_err());
    }
}
