//! The libvirt adapter (`ekko::libvirt`) against the real libvirtd and QEMU
//! of tools/test-env.sh (`EKKO_LIBVIRT_URI`): a domain defined the way Nova
//! defines one (TCG, `nova:instance` metadata, a qcow2 overlay on a raw base
//! image in `_base/`, a raw second disk, a guest agent channel with no agent
//! behind it), listed and parsed through the adapter; a full pull backup
//! with a checkpoint read through Ekko's own NBD client; a host-side write;
//! the checkpoint forgotten (metadata only) and redefined from its saved
//! XML; an incremental whose dirty bitmap names exactly that write; and the
//! domain undefined the way Nova does it, with no flag.
//!
//! `virsh` only sets up (define, start, a write through the monitor: tests
//! only, it taints the domain) and tears down.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ekko::libvirt::{
    checkpoint_create, checkpoint_delete, code, dirty_bitmap_context, domain_xml, list_checkpoints,
    parse_backup, parse_checkpoint, parse_domain, BackupDisk, BackupSpec, CheckpointSpec,
    Connection, DiskSource, JobType,
};
use ekko::nbd::NbdClient;

use crate::helpers::service_env;

const MIB: u64 = 1 << 20;
const VDA: u64 = 32 * MIB;
const VDB: u64 = 8 * MIB;
/// How long an aborted backup job may take to end (tens of ms when idle).
const JOB_END: Duration = Duration::from_secs(10);

fn virsh(uri: &str, args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .expect("run virsh")
}

fn virsh_ok(uri: &str, args: &[&str]) -> String {
    let o = virsh(uri, args);
    assert!(
        o.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn run_ok(cmd: &mut Command) {
    let o = cmd.output().expect("run command");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Removes the domain whatever happens to the test (disarmed once the test
/// undefined it itself).
struct DomainGuard {
    uri: String,
    name: String,
    armed: bool,
}

impl Drop for DomainGuard {
    fn drop(&mut self) {
        if self.armed {
            for args in [
                vec!["domjobabort", self.name.as_str()],
                vec!["destroy", self.name.as_str()],
                vec!["undefine", self.name.as_str(), "--checkpoints-metadata"],
            ] {
                let _ = virsh(&self.uri, &args);
            }
        }
    }
}

/// As Nova writes it (nova-domain.xml.in of the recipe, with a flavor, a
/// backing file and a second disk).
fn nova_domain_xml(name: &str, uuid: &str, dir: &Path) -> String {
    format!(
        r#"<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="29.0.1"/>
      <nova:name>ekko-libvirt-test</nova:name>
      <nova:flavor name="m1.tiny"><nova:memory>128</nova:memory><nova:vcpus>1</nova:vcpus></nova:flavor>
      <nova:owner>
        <nova:user uuid="0b1c2d3e4f5a46b7c8d9e0f1a2b3c4d5">demo</nova:user>
        <nova:project uuid="9f8e7d6c5b4a43210f1e2d3c4b5a6978">demo</nova:project>
      </nova:owner>
    </nova:instance>
  </metadata>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='{dir}/disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='{dir}/disk.eph0'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='virtio'/>
  </devices>
</domain>
"#,
        dir = dir.display()
    )
}

/// Wait until `path` is gone (libvirt cleans up right after an abort).
fn gone(path: &Path) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while path.exists() {
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nova_domain_pull_backup_checkpoint_redefine_undefine() {
    let Some(uri) = service_env("EKKO_LIBVIRT_URI") else {
        return;
    };
    let _libvirt = crate::helpers::libvirt_lock().await;
    let t0 = Instant::now();
    let lap = |what: &str| eprintln!("libvirt test: {what} at {:.2}s", t0.elapsed().as_secs_f64());

    // Disks as on a Nova host: QEMU runs as libvirt-qemu, so every directory
    // above the disks must be traversable, and the socket's writable by it.
    let tmp = tempfile::Builder::new()
        .prefix("ekko-libvirt")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(dir.join("_base")).unwrap();
    std::fs::set_permissions(dir.join("_base"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = dir.join("_base/base.raw");
    let mut base_data = vec![0x5au8; MIB as usize];
    base_data.resize(VDA as usize, 0);
    std::fs::write(&base, &base_data).unwrap();
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base)
            .arg(dir.join("disk"))
            .arg(VDA.to_string()),
    );
    std::fs::File::create(dir.join("disk.eph0"))
        .unwrap()
        .set_len(VDB)
        .unwrap();
    let sock_dir = dir.join("sock");
    run_ok(
        Command::new("install")
            .args(["-d", "-o", "libvirt-qemu", "-g", "kvm", "-m", "0750"])
            .arg(&sock_dir),
    );
    let socket = sock_dir.join("nbd.sock");

    let uuid = uuid::Uuid::new_v4().to_string();
    let name = format!("instance-{}", &uuid.replace('-', "")[..8]);
    let xml_path = dir.join("domain.xml");
    std::fs::write(&xml_path, nova_domain_xml(&name, &uuid, dir)).unwrap();
    let mut guard = DomainGuard {
        uri: uri.clone(),
        name: name.clone(),
        armed: true,
    };
    virsh_ok(&uri, &["define", &xml_path.to_string_lossy()]);
    virsh_ok(&uri, &["start", &name]);
    lap("domain running");

    // --- list and parse through the adapter
    let conn = Connection::open(&uri).expect("connect to libvirtd");
    assert!(conn.is_alive());
    let listed: Vec<String> = conn
        .list_all_domains(0)
        .expect("list domains")
        .iter()
        .map(|d| d.uuid().expect("uuid"))
        .collect();
    assert!(listed.contains(&uuid), "{uuid} not in {listed:?}");
    let dom = conn
        .lookup_by_uuid(&uuid)
        .expect("lookup")
        .expect("our domain");
    assert_eq!(dom.name().unwrap(), name);
    assert!(dom.is_active().unwrap());
    let info = parse_domain(&dom.xml_desc(0).unwrap()).expect("parse live XML");
    assert_eq!(info.uuid, uuid);
    assert_eq!(info.name, name);
    let nova = info.nova.as_ref().expect("nova metadata");
    assert_eq!(nova.name.as_deref(), Some("ekko-libvirt-test"));
    assert_eq!(nova.flavor.as_deref(), Some("m1.tiny"));
    assert_eq!(
        nova.user_id.as_deref(),
        Some("0b1c2d3e4f5a46b7c8d9e0f1a2b3c4d5")
    );
    assert_eq!(
        nova.project_id.as_deref(),
        Some("9f8e7d6c5b4a43210f1e2d3c4b5a6978")
    );
    assert_eq!(info.disks.len(), 2);
    let (vda, vdb) = (&info.disks[0], &info.disks[1]);
    assert_eq!(
        (vda.target.as_str(), vda.bus.as_deref()),
        ("vda", Some("virtio"))
    );
    assert!(vda.is_qcow2());
    assert_eq!(vda.source, DiskSource::File(dir.join("disk")));
    assert_eq!(
        vda.backing_chain,
        vec![DiskSource::File(base.clone())],
        "live XML shows the chain"
    );
    assert_eq!(vdb.format.as_deref(), Some("raw"));
    assert!(!vdb.has_backing());
    assert!(info.guest_agent);
    assert_eq!(info.guest_agent_connected, Some(false));
    let inactive = parse_domain(&dom.xml_desc(domain_xml::INACTIVE).unwrap()).unwrap();
    assert_eq!(inactive.disks.len(), 2);
    assert!(conn
        .lookup_by_uuid(&uuid::Uuid::new_v4().to_string())
        .expect("lookup")
        .is_none());

    // --- no guest agent: freeze fails at once with code 86
    let t = Instant::now();
    let e = dom.fs_freeze().expect_err("no agent in this guest");
    assert_eq!(e.code, code::AGENT_UNRESPONSIVE, "{e}");
    assert!(e.is_agent_unavailable());
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "freeze took {:?}",
        t.elapsed()
    );
    eprintln!(
        "libvirt test: freeze without agent failed in {:?}: {e}",
        t.elapsed()
    );

    // --- full pull backup + checkpoint ekko-1 (bitmap on the qcow2 disk only)
    let scratch = |t: &str| dir.join(format!("scratch-{t}.qcow2"));
    let full = BackupSpec {
        socket: socket.clone(),
        incremental: None,
        disks: vec![
            BackupDisk {
                target: "vda".into(),
                scratch: scratch("vda"),
                full: false,
            },
            BackupDisk {
                target: "vdb".into(),
                scratch: scratch("vdb"),
                full: false,
            },
        ],
        excluded: vec![],
    };
    let ck = |n: &str| CheckpointSpec {
        name: n.into(),
        description: None,
        bitmap_disks: vec!["vda".into()],
        excluded: vec!["vdb".into()],
    };
    let t = Instant::now();
    dom.backup_begin(&full.to_xml(), Some(&ck("ekko-1").to_xml()), 0)
        .expect("full backup begins");
    eprintln!("libvirt test: full backup-begin {:?}", t.elapsed());
    let stats = dom.job_stats().expect("job stats");
    assert_eq!(stats.job_type, JobType::Unbounded);
    assert!(stats.is_backup(), "{stats:?}");
    let job = parse_backup(&dom.backup_xml_desc().expect("backup XML")).expect("parse backup XML");
    assert_eq!(job.mode, "pull");
    assert_eq!(job.socket.as_deref(), Some(socket.as_path()));
    assert_eq!(job.disks.iter().filter(|d| d.backup).count(), 2);
    assert!(socket.exists(), "NBD socket {} missing", socket.display());

    let nbd = NbdClient::connect_unix(&socket, "vda", &[])
        .await
        .expect("NBD vda");
    assert_eq!(nbd.size(), VDA);
    let head = nbd.read(0, 4096).await.expect("read vda");
    assert!(
        head.iter().all(|b| *b == 0x5a),
        "the export reads through the backing file"
    );
    nbd.disconnect().await.expect("disconnect");

    let took = dom.abort_job_and_wait(JOB_END).expect("abort");
    eprintln!("libvirt test: abort until the job ended {took:?}");
    assert!(!dom.job_stats().unwrap().is_active());
    assert!(gone(&socket), "socket left after abort");
    assert!(gone(&scratch("vda")), "scratch file left after abort");
    let e = dom.backup_xml_desc().expect_err("no backup job any more");
    assert!(e.is_no_backup(), "{e}");
    lap("full backup done");

    // --- a write from the host side (test only: taints the domain)
    virsh_ok(
        &uri,
        &[
            "qemu-monitor-command",
            "--hmp",
            &name,
            "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"write -P 0xab 4M 64k\"",
        ],
    );

    // --- checkpoint: save its XML, forget it (metadata only), redefine it
    let c1 = dom
        .checkpoint_lookup("ekko-1")
        .unwrap()
        .expect("checkpoint ekko-1");
    let saved = c1.xml_desc(0).expect("checkpoint XML");
    let parsed = parse_checkpoint(&saved).expect("parse checkpoint XML");
    assert_eq!(parsed.name, "ekko-1");
    assert_eq!(parsed.parent, None);
    assert_eq!(parsed.disks.len(), 2);
    assert_eq!(parsed.disks[0].bitmap.as_deref(), Some("ekko-1"));
    assert_eq!(parsed.disks[1].bitmap, None);
    c1.delete(checkpoint_delete::METADATA_ONLY)
        .expect("delete metadata");
    drop(c1);
    assert!(dom.checkpoint_lookup("ekko-1").unwrap().is_none());
    assert!(dom.list_checkpoints(0).unwrap().is_empty());
    dom.checkpoint_create(
        &saved,
        checkpoint_create::REDEFINE | checkpoint_create::REDEFINE_VALIDATE,
    )
    .expect("redefine ekko-1 from its saved XML");
    assert!(dom.checkpoint_lookup("ekko-1").unwrap().is_some());
    lap("checkpoint redefined");

    // --- incremental since ekko-1 (vdb, raw, read whole) + checkpoint ekko-2
    let inc = BackupSpec {
        incremental: Some("ekko-1".into()),
        disks: vec![
            full.disks[0].clone(),
            BackupDisk {
                full: true,
                ..full.disks[1].clone()
            },
        ],
        ..full.clone()
    };
    let t = Instant::now();
    dom.backup_begin(&inc.to_xml(), Some(&ck("ekko-2").to_xml()), 0)
        .expect("incremental backup begins");
    eprintln!("libvirt test: incremental backup-begin {:?}", t.elapsed());
    let ctx = dirty_bitmap_context("vda");
    let nbd = NbdClient::connect_unix(&socket, "vda", std::slice::from_ref(&ctx))
        .await
        .expect("NBD vda with dirty bitmap");
    let dirty: Vec<(u64, u64)> = nbd
        .block_status(&ctx, 0, VDA)
        .await
        .expect("dirty map")
        .iter()
        .filter(|e| e.flags & 1 != 0)
        .map(|e| (e.offset, e.length))
        .collect();
    assert_eq!(
        dirty,
        vec![(4 * MIB, 64 << 10)],
        "exactly the host-side write"
    );
    let written = nbd.read(4 * MIB, 64 << 10).await.unwrap();
    assert!(written.iter().all(|b| *b == 0xab));
    nbd.disconnect().await.unwrap();
    let nbd_b = NbdClient::connect_unix(&socket, "vdb", &[])
        .await
        .expect("NBD vdb (full)");
    assert_eq!(nbd_b.size(), VDB);
    nbd_b.disconnect().await.unwrap();
    dom.abort_job_and_wait(JOB_END).expect("abort incremental");
    assert!(gone(&socket));
    let c2 = parse_checkpoint(
        &dom.checkpoint_lookup("ekko-2")
            .unwrap()
            .expect("ekko-2")
            .xml_desc(0)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(c2.parent.as_deref(), Some("ekko-1"));
    lap("incremental done");

    // --- Nova's view: forget the checkpoints (metadata only), then a plain
    // undefine of the stopped domain works; the bitmaps stay in the qcow2.
    let mut cks = dom.list_checkpoints(list_checkpoints::TOPOLOGICAL).unwrap();
    assert_eq!(cks.len(), 2);
    cks.reverse(); // children first
    for c in &cks {
        c.delete(checkpoint_delete::METADATA_ONLY)
            .expect("delete checkpoint metadata");
    }
    drop(cks);
    virsh_ok(&uri, &["destroy", &name]);
    assert!(!dom.is_active().unwrap());
    virsh_ok(&uri, &["undefine", &name]);
    guard.armed = false;
    drop(dom);
    assert!(conn.lookup_by_uuid(&uuid).unwrap().is_none());
    let img = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(dir.join("disk"))
        .output()
        .expect("qemu-img info");
    let img = String::from_utf8_lossy(&img.stdout);
    assert!(
        img.contains("\"ekko-1\"") && img.contains("\"ekko-2\""),
        "bitmaps kept in the qcow2: {img}"
    );
    lap("undefined");
}
