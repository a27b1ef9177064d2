//! The libvirt path against the direct QMP path, on the same disk and the
//! same writes: one QEMU started by hand (its QMP socket given to
//! `QmpHypervisor`, as on a host without libvirt) and one libvirt domain
//! defined like Nova's (`LibvirtHypervisor`), each on its own copy of one
//! qcow2 image, both TCG guests that boot nothing. Each run is a whole
//! extraction: snapshot, read every changed extent that is not zero,
//! commit. Full runs read everything; incremental runs follow the same 1%
//! of the disk written into both guests (64 KiB extents at seeded
//! offsets). Runs alternate between the paths, so drift hits both.
//!
//!   source $EKKO_OS_STATE/env.sh; cargo bench --bench libvirt
//!
//! EKKO_BENCH_DATA_MIB (default 256) sets the data written into a disk of
//! twice that size. Needs EKKO_LIBVIRT_URI (tools/test-env.sh); run as root.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ekko::extract::{subtract, DiskRequest, InstanceSnapshot, SavedCheckpoint};
use ekko::hypervisor::libvirt::LibvirtHypervisor;
use ekko::hypervisor::qmp::{QmpHypervisor, QmpInstance};
use ekko::hypervisor::{Hypervisor, LocalInstance, SnapshotOptions};
use ekko::service::local::{back_up_with, BackupRequest};
use futures::StreamExt;

const MIB: u64 = 1 << 20;
const RUNS: usize = 5;
/// Whole backups take longer: fewer runs.
const WHOLE_RUNS: usize = 3;
const EXTENT: u64 = 64 << 10;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Read what the snapshot says changed and is not zero; the bytes read.
async fn read_all(snap: &dyn InstanceSnapshot) -> u64 {
    let mut n = 0;
    for d in snap.disks() {
        let ranges = subtract(d.changed(), d.zeros());
        let mut s = d.read_ranges(ranges);
        while let Some(piece) = s.next().await {
            n += piece.expect("read").1.len() as u64;
        }
    }
    n
}

/// One path under test: how to snapshot, and how to write into its guest.
struct Path_ {
    name: &'static str,
    hyp: Box<dyn Hypervisor>,
    instance: LocalInstance,
    node: String,
    /// Incremental base: the last bitmap (QMP) or checkpoint (libvirt).
    bitmap: Option<String>,
    checkpoint: Option<SavedCheckpoint>,
    size: u64,
}

impl Path_ {
    async fn backup(&mut self, dir: &Path, full: bool, tag: &str) -> (f64, u64) {
        let req = DiskRequest {
            device: "vda".into(),
            node: self.node.clone(),
            expected_bitmap: if full { None } else { self.bitmap.clone() },
            expected_size: Some(self.size),
            force_full: full,
        };
        let config = ekko::config::EkkoConfig::default();
        let mut opts = SnapshotOptions::of(&config, tag);
        opts.scratch_dir = dir.join("scratch");
        opts.checkpoint = if full { None } else { self.checkpoint.clone() };
        let t = Instant::now();
        let snap = self
            .hyp
            .snapshot(&self.instance, &[req], &opts)
            .await
            .expect("snapshot");
        let bytes = read_all(snap.as_ref()).await;
        self.bitmap = snap.disks()[0].new_bitmap().map(String::from);
        self.checkpoint = snap.checkpoint();
        let reason = snap.disks()[0].full_reason().cloned();
        assert_eq!(
            reason.is_some(),
            full,
            "{}: full or not as asked ({reason:?})",
            self.name
        );
        snap.commit().await.expect("commit");
        (t.elapsed().as_secs_f64(), bytes)
    }
}

/// Stops the hand-started QEMU and removes the domain, also on a panic.
struct Cleanup {
    qemu: std::process::Child,
    uri: String,
    domain: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(name) = &self.domain {
            for args in [
                vec!["destroy", name],
                vec!["undefine", name, "--checkpoints-metadata"],
            ] {
                let _ = Command::new("virsh")
                    .arg("-c")
                    .arg(&self.uri)
                    .args(&args)
                    .output();
            }
        }
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// A whole backup of `path`'s instance; its time and the bytes read.
async fn whole(ekko: &ekko::Ekko, path: &Path_, full: bool) -> (f64, u64) {
    let req = BackupRequest {
        qmp_socket: "/unused".into(),
        instance_id: String::new(),
        project_id: String::new(),
        name: "bench".into(),
        full,
        agent_socket: None,
        progress: None,
    };
    let t = Instant::now();
    let out = back_up_with(ekko, path.hyp.as_ref(), &path.instance, &req)
        .await
        .expect("backup");
    let read: u64 = out.disks.iter().map(|(_, r)| r.read_bytes).sum();
    (t.elapsed().as_secs_f64(), read)
}

/// Print one table: each path's median time and throughput per kind of
/// backup, and the ratios.
fn report(what: &str, times: &[(&str, bool, Vec<f64>, u64)]) {
    println!("-- {what}");
    println!(
        "{:<10} {:<12} {:>10} {:>10} {:>10}",
        "path", "backup", "MiB read", "median s", "MiB/s"
    );
    for (path, full, t, bytes) in times {
        let m = median(t.clone());
        println!(
            "{path:<10} {:<12} {:>10.1} {:>10.3} {:>10.0}",
            if *full { "full" } else { "incr. 1%" },
            *bytes as f64 / MIB as f64,
            m,
            *bytes as f64 / MIB as f64 / m
        );
    }
    for full in [true, false] {
        let m = |p: &str| {
            median(
                times
                    .iter()
                    .find(|t| t.0 == p && t.1 == full)
                    .unwrap()
                    .2
                    .clone(),
            )
        };
        println!(
            "ratio libvirt / qmp ({}): {:.2}x (throughput; > 1 is faster)",
            if full { "full" } else { "incremental 1%" },
            m("qmp") / m("libvirt")
        );
    }
}

fn qemu_io(cmd: &str) -> String {
    format!(
        "qemu-io -d {} \"{cmd}\"",
        "/machine/peripheral/vdisk0/virtio-backend"
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("libvirt benchmark: run it with `cargo bench --bench libvirt`");
        return;
    }
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let Ok(uri) = std::env::var("EKKO_LIBVIRT_URI") else {
        println!("libvirt benchmark: EKKO_LIBVIRT_URI is not set (tools/test-env.sh): skipped");
        return;
    };
    let data_mib: u64 = std::env::var("EKKO_BENCH_DATA_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let size = 2 * data_mib * MIB;
    let dir = tempfile::Builder::new()
        .prefix("ekko-bench-lv")
        .tempdir()
        .unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let raw = d.join("src.raw");
    run(Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "status=none", "iflag=fullblock"])
        .arg(format!("of={}", raw.display()))
        .arg(format!("count={data_mib}")));
    run(Command::new("truncate")
        .arg("-s")
        .arg(size.to_string())
        .arg(&raw));
    let (img_q, img_l) = (d.join("qmp.qcow2"), d.join("libvirt.qcow2"));
    for img in [&img_q, &img_l] {
        run(Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(img));
    }
    std::fs::remove_file(&raw).unwrap();

    // --- QEMU by hand, as the QMP driver finds it (cache=none like Nova's)
    let qmp_sock = d.join("qmp.sock");
    let qemu = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "pc,accel=tcg",
            "-m",
            "128",
            "-nodefaults",
            "-display",
            "none",
            "-blockdev",
        ])
        .arg(format!(
            "driver=file,node-name=file0,filename={},cache.direct=on,aio=threads",
            img_q.display()
        ))
        .args([
            "-blockdev",
            "driver=qcow2,node-name=disk0,file=file0,cache.direct=on",
        ])
        .args(["-device", "virtio-blk-pci,drive=disk0,id=vdisk0", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", qmp_sock.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    let mut cleanup = Cleanup {
        qemu,
        uri: uri.clone(),
        domain: None,
    };
    while !qmp_sock.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let project = "9f8e7d6c5b4a43210f1e2d3c4b5a6978";
    let q_inst = LocalInstance {
        id: "bench-qmp".into(),
        project_id: project.into(),
        name: "q".into(),
    };
    let mut qmp_path = Path_ {
        name: "qmp",
        hyp: Box::new(QmpHypervisor::single(QmpInstance {
            instance: q_inst.clone(),
            qmp_socket: qmp_sock.clone(),
            agent_socket: None,
        })),
        instance: q_inst,
        node: "disk0".into(),
        bitmap: None,
        checkpoint: None,
        size,
    };

    // --- the same image in a libvirt domain defined like Nova's
    let uuid = uuid::Uuid::new_v4().to_string();
    let name = format!("instance-bench{}", &uuid[..6]);
    let xml = d.join("domain.xml");
    std::fs::write(
        &xml,
        format!(
            "<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid><metadata>\
             <nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'><nova:name>bench</nova:name>\
             <nova:owner><nova:project uuid='{project}'>p</nova:project></nova:owner></nova:instance></metadata>\
             <memory unit='MiB'>128</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>\
             <devices><emulator>/usr/bin/qemu-system-x86_64</emulator><disk type='file' device='disk'>\
             <driver name='qemu' type='qcow2' cache='none' io='threads'/><source file='{}'/><target dev='vda' bus='virtio'/>\
             <alias name='ua-vdisk0'/></disk></devices></domain>",
            img_l.display()
        ),
    )
    .unwrap();
    let virsh = |args: &[&str]| run(Command::new("virsh").arg("-c").arg(&uri).args(args));
    virsh(&["define", &xml.to_string_lossy()]);
    cleanup.domain = Some(name.clone());
    virsh(&["start", &name]);
    let mut config = ekko::config::EkkoConfig::default();
    config.libvirt.connection_uri = uri.clone();
    config.default.host = "bench-host".into();
    config.default.state_path = d.join("state").display().to_string();
    config.backup.scratch_dir = d.join("scratch").display().to_string();
    let l_hyp = LibvirtHypervisor::from_config(&config).expect("libvirt");
    let l_inst = l_hyp
        .instances()
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.id == uuid)
        .expect("the domain");
    let mut libvirt_path = Path_ {
        name: "libvirt",
        hyp: Box::new(l_hyp),
        instance: l_inst,
        node: "vda".into(),
        bitmap: None,
        checkpoint: None,
        size,
    };
    let libvirt_dev = "/machine/peripheral/ua-vdisk0/virtio-backend";

    // The same writes into both guests: 1% of the disk in 64 KiB extents.
    let write_both = |round: u64| {
        let (uri, name, qmp_sock) = (uri.clone(), name.clone(), qmp_sock.clone());
        async move {
            let extents = size / 100 / EXTENT;
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ round;
            let mut cmds = Vec::new();
            for i in 0..extents {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let off = (seed % (size / EXTENT)) * EXTENT;
                cmds.push(format!("write -P {} {off} {EXTENT}", (i % 250) + 1));
            }
            let qmp = ekko::qmp::QmpClient::connect(&qmp_sock, Duration::from_secs(10))
                .await
                .unwrap();
            for c in &cmds {
                let line = qemu_io(c);
                qmp.execute(
                    "human-monitor-command",
                    Some(serde_json::json!({"command-line": line})),
                )
                .await
                .unwrap();
                let l = format!("qemu-io -d {libvirt_dev} \"{c}\"");
                run(Command::new("virsh").arg("-c").arg(&uri).args([
                    "qemu-monitor-command",
                    "--hmp",
                    &name,
                    &l,
                ]));
            }
        }
    };

    let mut times: Vec<(&str, bool, Vec<f64>, u64)> = Vec::new();
    for full in [true, false] {
        let (mut tq, mut tl, mut bytes) = (Vec::new(), Vec::new(), 0);
        // An untimed first full backup of each gives the incrementals a base.
        if !full {
            qmp_path.backup(d, true, "base-q").await;
            libvirt_path.backup(d, true, "base-l").await;
        }
        for r in 0..RUNS {
            if !full {
                write_both(r as u64).await;
            }
            let tag = format!("{}{r}", if full { "f" } else { "i" });
            let (t, b) = qmp_path.backup(d, full, &format!("q{tag}")).await;
            tq.push(t);
            let (t2, b2) = libvirt_path.backup(d, full, &format!("l{tag}")).await;
            tl.push(t2);
            assert_eq!(b, b2, "both paths read the same bytes");
            bytes = b;
        }
        times.push(("qmp", full, tq, bytes));
        times.push(("libvirt", full, tl, bytes));
    }
    println!(
        "disk: {} MiB virtual, {data_mib} MiB of data; runs alternate between the paths",
        size / MIB
    );
    report("extraction (snapshot, read, commit)", &times);

    // --- whole backups (`ekko backup`'s path: plan, engine, local store,
    // catalog commit) on one catalog, both instances side by side
    let state = d.join("whole");
    let conf = d.join("whole.conf");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nstate_path = {s}\nhost = bench-host\n[database]\nconnection = sqlite:///{s}/ekko.sqlite\n\
             [backup]\nscratch_dir = {}\n[libvirt]\nconnection_uri = {uri}\n",
            d.join("scratch").display(),
            s = state.display()
        ),
    )
    .unwrap();
    let config = ekko::config::EkkoConfig::load(&[conf], std::iter::empty()).unwrap();
    let ekko = ekko::Ekko::connect(config, ekko::ekko::Catalog::Unchecked)
        .await
        .unwrap();
    ekko.db().unwrap().sync().unwrap();
    let mut times: Vec<(&str, bool, Vec<f64>, u64)> = Vec::new();
    for full in [true, false] {
        let (mut tq, mut tl, mut bytes) = (Vec::new(), Vec::new(), 0);
        for r in 0..WHOLE_RUNS {
            if !full {
                write_both(100 + r as u64).await;
            }
            let (t, b) = whole(&ekko, &qmp_path, full).await;
            tq.push(t);
            let (t2, b2) = whole(&ekko, &libvirt_path, full).await;
            tl.push(t2);
            assert_eq!(b, b2, "both paths read the same bytes");
            bytes = b;
        }
        times.push(("qmp", full, tq, bytes));
        times.push(("libvirt", full, tl, bytes));
    }
    report("whole backup (engine, local store, catalog)", &times);
    drop(cleanup);
}
