//! The parsers and builders on fixtures: the recipe's domain and a live
//! Nova domain.
use super::*;

const NOVA_TEMPLATE: &str = include_str!("../testdata/nova-domain.xml.in");
const NOVA_LIVE: &str = include_str!("../testdata/nova-live.xml");

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
    assert_eq!(d.dac_owner, None, "an inactive definition has no label");
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
    assert_eq!(d.other_targets, ["sda"], "left out of backups by name");
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
    assert_eq!(d.dac_owner, Some((64055, 994)), "QEMU's user and group");
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
    assert!(x.starts_with("<domainbackup mode='pull'><incremental>ekko-1</incremental><server "));
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
        description: None,
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
    let spec = CheckpointSpec {
        description: Some("ekko backup on host <h1>".into()),
        ..spec
    };
    let described = parse_checkpoint(&spec.to_xml()).expect("parse");
    assert_eq!(
        described.description.as_deref(),
        Some("ekko backup on host <h1>")
    );

    let dumped = "<domaincheckpoint>\n  <name>ekko-2</name>\n  <parent>\n    <name>ekko-1</name>\n  </parent>\n  \
                  <creationTime>1796334000</creationTime>\n  <disks>\n    \
                  <disk name='vda' checkpoint='bitmap' bitmap='ekko-2'/>\n    <disk name='vdb' checkpoint='no'/>\n  \
                  </disks>\n  <domain type='qemu'><name>instance-00000001</name></domain>\n</domaincheckpoint>\n";
    let c = parse_checkpoint(dumped).expect("parse");
    assert_eq!(c.name, "ekko-2");
    assert_eq!(c.parent.as_deref(), Some("ekko-1"));
    assert_eq!(c.description, None);
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
    let one = parse_checkpoint(&c.redefinition_of_one("vda").expect("vda has a bitmap")).unwrap();
    assert_eq!(
        (one.name.as_str(), one.creation_time),
        ("ekko-2", Some(1_796_334_000))
    );
    assert_eq!(
        one.disks,
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
    assert_eq!(c.redefinition_of_one("vdb"), None, "no bitmap there");
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
