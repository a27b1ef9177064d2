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
    /// The targets of the other disk devices (cdrom, floppy, lun): a
    /// backup or checkpoint names them to leave them out.
    pub other_targets: Vec<String>,
    /// An `org.qemu.guest_agent.0` channel is defined.
    pub guest_agent: bool,
    /// The channel's live `state` (running domains only): Some(true) when
    /// an agent in the guest is connected.
    pub guest_agent_connected: Option<bool>,
    /// The user and group QEMU runs as (`<seclabel model='dac'>`'s label,
    /// in a running domain's XML): what must be able to create the backup
    /// job's NBD socket.
    pub dac_owner: Option<(u32, u32)>,
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
    let mut other_targets = Vec::new();
    let mut guest_agent = false;
    let mut guest_agent_connected = None;
    if let Some(devices) = child(root, "devices") {
        for disk in children(devices, "disk") {
            if disk.attribute("device").unwrap_or("disk") == "disk" {
                disks.push(parse_disk(disk)?);
            } else if let Some(t) = child(disk, "target").and_then(|t| attr(t, "dev")) {
                other_targets.push(t);
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
    let dac_owner = children(root, "seclabel")
        .find(|s| s.attribute("model") == Some("dac"))
        .and_then(|s| child(s, "label"))
        .and_then(text)
        .and_then(|l| parse_dac_label(&l));
    Ok(DomainInfo {
        uuid,
        name,
        nova,
        disks,
        other_targets,
        guest_agent,
        guest_agent_connected,
        dac_owner,
    })
}

/// `+64055:+994` (numeric, as libvirt writes a running domain's label).
fn parse_dac_label(label: &str) -> Option<(u32, u32)> {
    let (u, g) = label.split_once(':')?;
    let num = |s: &str| s.trim().trim_start_matches('+').parse().ok();
    Some((num(u)?, num(g)?))
}

/// Escape for an attribute value in single quotes, or for text.
mod build;
pub use build::*;

#[cfg(test)]
mod tests;
