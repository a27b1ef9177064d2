//! Backups of a Nova-like instance through `LibvirtHypervisor` (the real
//! libvirtd and QEMU of tools/test-env.sh, TCG), in this process with the
//! same plan, execution and commit as a job from the bus
//! (`service::local::back_up_with`): full and incremental backups with
//! host-side writes between and during them, each restored and compared
//! bit-exact with the disk at its instant; Nova's hard reboot and
//! undefine; a removed bitmap; no guest agent; the domain deleted; a
//! worker that died mid-backup and a libvirtd restarted mid-backup.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ekko::backup::restore::TargetFormat;
use ekko::db::backups;
use ekko::hypervisor::libvirt::LibvirtHypervisor;
use ekko::hypervisor::{Hypervisor, SnapshotOptions};
use ekko::libvirt::Connection;
use ekko::service::local::{back_up_with, restore_backup, BackupRequest};

use crate::helpers::service_env;
use crate::nova::{NovaVm, MIB};
use crate::qsd::identical;

/// Project of the test instances (`nova:owner/nova:project`).
const PROJECT: &str = "9f8e7d6c5b4a43210f1e2d3c4b5a6978";

pub struct Setup {
    pub ekko: ekko::Ekko,
    pub dir: tempfile::TempDir,
    pub conf: String,
}

/// An Ekko on SQLite and a local store in a fresh directory, its
/// instances from libvirt; `extra` goes at the end of ekko.conf.
pub async fn setup(uri: &str, extra: &str) -> Setup {
    ekko::cli::install_crypto_provider();
    if std::env::var_os("EKKO_TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("ekko=info")
            .with_test_writer()
            .try_init();
    }
    let dir = tempfile::Builder::new()
        .prefix("ekko-lv")
        .tempdir()
        .unwrap();
    let conf = format!(
        "[DEFAULT]\nstate_path = {d}/state\nhost = lv-test-host\n[database]\nconnection = sqlite:///{d}/ekko.sqlite\n\
         [backup]\ninstance_source = libvirt\nscratch_dir = {d}/scratch\n[libvirt]\nconnection_uri = {uri}\nquiesce_timeout = 30\n{extra}",
        d = dir.path().display()
    );
    let ekko = connect(dir.path(), &conf).await;
    ekko.db().unwrap().sync().unwrap();
    Setup { ekko, dir, conf }
}

async fn connect(dir: &std::path::Path, conf: &str) -> ekko::Ekko {
    let path = dir.join(format!("ekko-{}.conf", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, conf).unwrap();
    let config = ekko::config::EkkoConfig::load(&[path], std::iter::empty()).unwrap();
    ekko::Ekko::connect(config, ekko::ekko::Catalog::Unchecked)
        .await
        .unwrap()
}

fn request() -> BackupRequest {
    BackupRequest {
        qmp_socket: "/nonexistent".into(),
        instance_id: String::new(),
        project_id: String::new(),
        name: "nightly".into(),
        full: false,
        agent_socket: None,
        progress: None,
    }
}

/// Each disk's full-read reason in the catalog, in the VM's disk order.
async fn reasons(ekko: &ekko::Ekko, vm: &NovaVm, backup: &str) -> Vec<Option<String>> {
    let id = backup.to_string();
    let recs = ekko
        .db()
        .unwrap()
        .run(move |c| backups::disks_of(c, &id))
        .await
        .unwrap();
    let uuid = vm.uuid.clone();
    let disks = ekko
        .db()
        .unwrap()
        .run(move |c| ekko::db::instances::disks_of(c, &uuid))
        .await
        .unwrap();
    vm.disks
        .iter()
        .map(|d| {
            let disk = disks
                .iter()
                .find(|x| x.device == d.target)
                .expect("disk in the catalog");
            recs.iter()
                .find(|r| r.disk_id == disk.id)
                .expect("record")
                .full_reason
                .clone()
        })
        .collect()
}

/// Restore every disk of `backup` and compare it with `expected`.
async fn assert_restores(
    ekko: &ekko::Ekko,
    vm: &NovaVm,
    backup: &str,
    expected: &[std::path::PathBuf],
    what: &str,
) {
    for (d, want) in vm.disks.iter().zip(expected) {
        let out = vm.dir.join(format!("restored-{}.raw", d.target));
        restore_backup(ekko, backup, Some(d.target), &out, TargetFormat::Raw, None)
            .await
            .unwrap_or_else(|e| panic!("{what}: restore {}: {e:#}", d.target));
        assert!(
            identical(&out, want),
            "{what}: {} restored differs from the disk at the backup's instant",
            d.target
        );
        std::fs::remove_file(&out).unwrap();
        std::fs::remove_file(want).unwrap();
    }
}

/// Nothing of a backup is left in libvirt or in the scratch directory.
fn assert_clean(conn: &Connection, vm: &NovaVm, scratch: &std::path::Path, what: &str) {
    let dom = conn.lookup_by_uuid(&vm.uuid).unwrap().expect("domain");
    if dom.is_active().unwrap() {
        assert!(
            !dom.job_stats().unwrap().is_active(),
            "{what}: a job is left"
        );
    }
    let cks: Vec<String> = dom
        .list_checkpoints(0)
        .unwrap()
        .iter()
        .map(|c| c.name().unwrap())
        .collect();
    assert!(cks.is_empty(), "{what}: checkpoint metadata left: {cks:?}");
    let left: Vec<_> = std::fs::read_dir(scratch.join("libvirt"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{what}: scratch left: {left:?}");
}

/// Wait until the domain runs a backup job.
async fn job_started(uri: &str, uuid: &str) {
    let (uri, uuid) = (uri.to_string(), uuid.to_string());
    tokio::task::spawn_blocking(move || {
        let conn = Connection::open(&uri).unwrap();
        let dom = conn.lookup_by_uuid(&uuid).unwrap().unwrap();
        let end = Instant::now() + Duration::from_secs(60);
        while !dom.job_stats().map(|s| s.is_backup()).unwrap_or(false) {
            assert!(Instant::now() < end, "no backup job began");
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .unwrap();
}

/// Wait until libvirt holds no checkpoint of the domain while its backup
/// job still runs (Ekko forgets them once the job began, so Nova's
/// undefine is never refused); false if that never happens.
async fn checkpoints_forgotten_while_job_runs(uri: &str, uuid: &str) -> bool {
    let (uri, uuid) = (uri.to_string(), uuid.to_string());
    tokio::task::spawn_blocking(move || {
        let conn = Connection::open(&uri).unwrap();
        let dom = conn.lookup_by_uuid(&uuid).unwrap().unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            let none = dom.list_checkpoints(0).unwrap().is_empty();
            let running = dom.job_stats().map(|s| s.is_backup()).unwrap_or(false);
            if none && running {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    })
    .await
    .unwrap()
}

fn job_active(conn: &Connection, uuid: &str) -> bool {
    let dom = conn.lookup_by_uuid(uuid).unwrap().unwrap();
    dom.job_stats().map(|s| s.is_active()).unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nova_instance_backups_are_exact_through_reboots_and_lost_bitmaps() {
    let Some(uri) = service_env("EKKO_LIBVIRT_URI") else {
        return;
    };
    let _libvirt = crate::helpers::libvirt_lock().await;
    let t0 = Instant::now();
    let lap = |what: &str| {
        eprintln!(
            "libvirt backups: {what} at {:.1}s",
            t0.elapsed().as_secs_f64()
        )
    };
    let x = setup(&uri, "").await;
    let scratch = x.dir.path().join("scratch");
    let mut vm = NovaVm::start(&uri, &x.dir.path().join("vm"), PROJECT, false);
    let hyp = LibvirtHypervisor::from_config(&x.ekko.config).unwrap();
    let conn = Connection::open(&uri).unwrap();
    let inst = vm.instance();

    // --- the instance and its disks, as the inventory reports them
    let listed = hyp.nova_domains().await.unwrap();
    let me = listed
        .iter()
        .find(|d| d.instance.id == vm.uuid)
        .expect("the domain is an instance");
    assert_eq!(me.instance.project_id, PROJECT);
    assert_eq!(me.instance.name, "ekko-nova-test");
    assert_eq!(me.flavor.as_deref(), Some("m1.tiny"));
    assert_eq!(
        me.user_id.as_deref(),
        Some("0b1c2d3e4f5a46b7c8d9e0f1a2b3c4d5")
    );
    let disks = hyp.disks(&inst).await.unwrap();
    let seen: Vec<(&str, u64)> = disks
        .iter()
        .map(|d| (d.device.as_str(), d.virtual_size))
        .collect();
    assert_eq!(
        seen,
        [("vda", 32 * MIB), ("vdb", 16 * MIB), ("vdc", 8 * MIB)]
    );
    vm.write(1, 0, 2 * MIB, 0x42);
    lap("domain running");

    // --- 1: full; no agent in the guest: crash-consistent
    let expected = vm.expected("1");
    let b1 = back_up_with(&x.ekko, &hyp, &inst, &request())
        .await
        .expect("backup 1");
    assert_eq!(b1.backup.status.as_str(), "available");
    assert_eq!(b1.backup.consistency.as_deref(), Some("crash"));
    let ck1 = b1
        .backup
        .checkpoint_name
        .clone()
        .expect("a checkpoint kept in the catalog");
    assert!(ck1.starts_with("ekko-"));
    assert_eq!(
        reasons(&x.ekko, &vm, &b1.backup.id).await,
        [
            Some("no_checkpoint".into()),
            Some("no_checkpoint".into()),
            Some("not_qcow2".into())
        ]
    );
    assert_clean(&conn, &vm, &scratch, "after backup 1");
    assert_restores(&x.ekko, &vm, &b1.backup.id, &expected, "backup 1").await;
    lap("full backup");

    // --- 2: incremental after host-side writes (the raw disk is read whole)
    vm.write(0, 4 * MIB, 64 << 10, 0xab);
    vm.write(0, 20 * MIB, MIB, 0xcd);
    vm.write(1, MIB, 128 << 10, 0xef);
    vm.write(2, 2 * MIB, 64 << 10, 0x11);
    let expected = vm.expected("2");
    let b2 = back_up_with(&x.ekko, &hyp, &inst, &request())
        .await
        .expect("backup 2");
    assert_eq!(
        reasons(&x.ekko, &vm, &b2.backup.id).await,
        [None, None, Some("not_qcow2".into())]
    );
    let read: Vec<u64> = b2.disks.iter().map(|(_, r)| r.read_bytes).collect();
    assert!(
        read[0] <= 2 * MIB && read[1] <= MIB,
        "incremental reads only what changed: {read:?}"
    );
    assert_clean(&conn, &vm, &scratch, "after backup 2");
    assert_restores(&x.ekko, &vm, &b2.backup.id, &expected, "backup 2").await;
    lap("incremental");

    // --- 3: writes during the backup are not in it (point in time)
    let slow = connect(
        x.dir.path(),
        &x.conf
            .replace("[backup]\n", "[backup]\nread_rate_limit = 1M\n"),
    )
    .await;
    vm.write(2, 5 * MIB, MIB, 0x22);
    let expected = vm.expected("3");
    let (slow, hyp3, inst3) = (
        Arc::new(slow),
        Arc::new(LibvirtHypervisor::from_config(&x.ekko.config).unwrap()),
        inst.clone(),
    );
    let task = {
        let (slow, hyp3) = (slow.clone(), hyp3.clone());
        tokio::spawn(async move { back_up_with(&slow, hyp3.as_ref(), &inst3, &request()).await })
    };
    job_started(&uri, &vm.uuid).await;
    vm.write(0, 4 * MIB, 4096, 0x77);
    vm.write(1, 3 * MIB, 64 << 10, 0x78);
    vm.write(2, MIB, 64 << 10, 0x79);
    assert!(
        job_active(&conn, &vm.uuid),
        "the writes came while the backup ran"
    );
    assert!(
        checkpoints_forgotten_while_job_runs(&uri, &vm.uuid).await,
        "checkpoint metadata stays while the backup job runs: Nova's undefine would fail"
    );
    let b3 = task.await.unwrap().expect("backup 3");
    assert_eq!(
        reasons(&x.ekko, &vm, &b3.backup.id).await,
        [None, None, Some("not_qcow2".into())]
    );
    assert_restores(
        &x.ekko,
        &vm,
        &b3.backup.id,
        &expected,
        "backup 3 (writes during it)",
    )
    .await;
    lap("incremental with writes during it");

    // --- Nova's hard reboot: a plain undefine works; the next backup is
    // incremental (the checkpoint redefined, the bitmaps from the qcow2)
    vm.hard_reboot();
    vm.write(0, 30 * MIB, 64 << 10, 0x33);
    let expected = vm.expected("4");
    let b4 = back_up_with(&x.ekko, &hyp, &inst, &request())
        .await
        .expect("backup 4");
    assert_eq!(
        reasons(&x.ekko, &vm, &b4.backup.id).await,
        [None, None, Some("not_qcow2".into())]
    );
    assert_restores(
        &x.ekko,
        &vm,
        &b4.backup.id,
        &expected,
        "backup 4 (after hard reboot)",
    )
    .await;
    lap("hard reboot");

    // --- Nova's hard reboot during a backup: the plain undefine works
    // (no checkpoint metadata while the job runs), the backup fails and
    // leaves nothing, the next one is incremental and exact
    vm.write(0, 8 * MIB, 8 * MIB, 0x34);
    let task = {
        let (slow, hyp3, inst) = (slow.clone(), hyp3.clone(), inst.clone());
        tokio::spawn(async move { back_up_with(&slow, hyp3.as_ref(), &inst, &request()).await })
    };
    job_started(&uri, &vm.uuid).await;
    assert!(checkpoints_forgotten_while_job_runs(&uri, &vm.uuid).await);
    vm.hard_reboot();
    assert!(
        task.await.unwrap().is_err(),
        "a backup whose domain was destroyed under it cannot succeed"
    );
    assert_clean(&conn, &vm, &scratch, "after a hard reboot during a backup");
    vm.write(1, 11 * MIB, 64 << 10, 0x35);
    let expected = vm.expected("4b");
    let b4b = back_up_with(&x.ekko, &hyp, &inst, &request())
        .await
        .expect("backup after a hard reboot during one");
    assert_eq!(
        reasons(&x.ekko, &vm, &b4b.backup.id).await,
        [None, None, Some("not_qcow2".into())]
    );
    assert_restores(
        &x.ekko,
        &vm,
        &b4b.backup.id,
        &expected,
        "backup after a hard reboot during one",
    )
    .await;
    lap("hard reboot during a backup");

    // --- a bitmap removed (offline, as an operator might): a full read,
    // and the checkpoint's other bitmaps go too
    let ck4 = b4b.backup.checkpoint_name.clone().unwrap();
    vm.write(1, 7 * MIB, 64 << 10, 0x44);
    vm.stop();
    assert_eq!(
        vm.bitmaps(1),
        std::slice::from_ref(&ck4),
        "only the catalog's bitmap is left"
    );
    crate::nova::run_ok(
        std::process::Command::new("qemu-img")
            .args(["bitmap", "--remove"])
            .arg(&vm.disks[1].path)
            .arg(&ck4),
    );
    vm.start_again();
    let expected = vm.expected("5");
    let b5 = back_up_with(&x.ekko, &hyp, &inst, &request())
        .await
        .expect("backup 5");
    assert_eq!(
        reasons(&x.ekko, &vm, &b5.backup.id).await,
        [
            Some("checkpoint_invalid".into()),
            Some("checkpoint_invalid".into()),
            Some("not_qcow2".into())
        ]
    );
    assert_restores(
        &x.ekko,
        &vm,
        &b5.backup.id,
        &expected,
        "backup 5 (bitmap removed)",
    )
    .await;
    assert_clean(&conn, &vm, &scratch, "after backup 5");
    lap("bitmap removed");

    // --- no guest agent: crash-consistent at once, or refused when required
    vm.write(0, 12 * MIB, 64 << 10, 0x55);
    let expected = vm.expected("6");
    let b6 = back_up_with(&x.ekko, &hyp, &inst, &request())
        .await
        .expect("backup 6");
    assert_eq!(
        reasons(&x.ekko, &vm, &b6.backup.id).await,
        [None, None, Some("not_qcow2".into())]
    );
    assert_restores(&x.ekko, &vm, &b6.backup.id, &expected, "backup 6").await;
    let strict = connect(
        x.dir.path(),
        &x.conf.replace(
            "quiesce_timeout = 30",
            "quiesce_timeout = 30\nrequire_quiesce = true",
        ),
    )
    .await;
    let strict_hyp = LibvirtHypervisor::from_config(&strict.config).unwrap();
    let requests: Vec<ekko::extract::DiskRequest> = ["vda"]
        .iter()
        .map(|t| ekko::extract::DiskRequest {
            device: t.to_string(),
            node: t.to_string(),
            expected_bitmap: None,
            expected_size: None,
            force_full: false,
        })
        .collect();
    // As a job would: based on the catalog's checkpoint.
    let mut opts = SnapshotOptions::of(&x.ekko.config, "agent-probe");
    opts.checkpoint = Some(ekko::extract::SavedCheckpoint {
        name: b6.backup.checkpoint_name.clone().unwrap(),
        xml: b6.backup.checkpoint_xml.clone().unwrap(),
    });
    let t = Instant::now();
    let snap = hyp
        .snapshot(&inst, &requests, &opts)
        .await
        .expect("a crash-consistent snapshot");
    let took = t.elapsed();
    assert_eq!(snap.consistency().as_str(), "crash");
    snap.abort().await.unwrap();
    let t = Instant::now();
    let refused = strict_hyp
        .snapshot(&inst, &requests, &opts)
        .await
        .err()
        .expect("quiesce required");
    let took_strict = t.elapsed();
    assert!(refused.to_string().contains("require_quiesce"), "{refused}");
    eprintln!("libvirt backups: no agent: snapshot in {took:?}, refused in {took_strict:?}");
    assert!(
        took < Duration::from_secs(3) && took_strict < Duration::from_secs(1),
        "no wait on an absent agent"
    );
    assert_clean(&conn, &vm, &scratch, "after the agent probes");
    lap("agent");

    // --- at the end: only the last checkpoint's bitmaps are in the images,
    // the models were the real disks, and a deleted domain is gone
    let last = b6.backup.checkpoint_name.clone().unwrap();
    vm.stop();
    assert_eq!(vm.bitmaps(0), std::slice::from_ref(&last));
    assert_eq!(vm.bitmaps(1), [last]);
    vm.assert_models_match_images();
    vm.delete();
    let ids: Vec<String> = hyp
        .instances()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert!(!ids.contains(&vm.uuid), "a deleted domain is no instance");
    let _ = ck1;
    lap("done");
}

/// Restart the test environment's libvirtd (domains keep running, as on a
/// compute host whose libvirt is upgraded): SIGTERM, wait, start it again
/// the way tools/test-env.sh does.
fn restart_libvirtd() {
    let pid: i32 = std::fs::read_to_string("/run/libvirtd.pid")
        .expect("libvirtd's pid file")
        .trim()
        .parse()
        .expect("a pid");
    // SAFETY: sending a signal has no memory-safety effect.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGTERM) },
        0,
        "kill libvirtd"
    );
    let end = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < end, "libvirtd did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    crate::helpers::services_start();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_or_libvirtd_dying_mid_backup_leaves_nothing_and_the_next_backup_is_right() {
    let Some(uri) = service_env("EKKO_LIBVIRT_URI") else {
        return;
    };
    let _libvirt = crate::helpers::libvirt_lock().await;
    let t0 = Instant::now();
    let lap = |what: &str| {
        eprintln!(
            "libvirt faults: {what} at {:.1}s",
            t0.elapsed().as_secs_f64()
        )
    };
    let x = setup(&uri, "").await;
    let scratch = x.dir.path().join("scratch");
    let vm = NovaVm::start(&uri, &x.dir.path().join("vm"), PROJECT, true);
    let inst = vm.instance();
    let conn = Connection::open(&uri).unwrap();
    let slow = Arc::new(
        connect(
            x.dir.path(),
            &x.conf
                .replace("[backup]\n", "[backup]\nread_rate_limit = 1M\n"),
        )
        .await,
    );
    let hyp = LibvirtHypervisor::from_config(&x.ekko.config).unwrap();
    let expected = vm.expected("1");
    let b1 = back_up_with(&x.ekko, &hyp, &inst, &request())
        .await
        .expect("backup 1");
    assert_restores(&x.ekko, &vm, &b1.backup.id, &expected, "backup 1").await;

    // --- the worker dies mid-backup (its task dropped: nothing ends the
    // job); a new worker's start cleans up
    vm.write(0, 2 * MIB, 4 * MIB, 0x61);
    let task = {
        let (slow, inst) = (slow.clone(), inst.clone());
        let dying = LibvirtHypervisor::from_config(&slow.config).unwrap();
        tokio::spawn(async move { back_up_with(&slow, &dying, &inst, &request()).await })
    };
    job_started(&uri, &vm.uuid).await;
    assert!(
        checkpoints_forgotten_while_job_runs(&uri, &vm.uuid).await,
        "base and new checkpoint forgotten while the job runs"
    );
    // The start is over (a start whose caller is gone ends its own job);
    // the worker dies while it reads (4 MiB at 1 MiB/s).
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();
    let _ = task.await;
    assert!(
        job_active(&conn, &vm.uuid),
        "the dead worker's job still runs"
    );
    assert!(scratch.join("libvirt").join(&vm.uuid).exists());
    let restarted = LibvirtHypervisor::from_config(&x.ekko.config).unwrap();
    restarted.recover_all().await.unwrap();
    assert_clean(&conn, &vm, &scratch, "after a new worker's start");
    vm.write(0, 9 * MIB, 64 << 10, 0x62);
    let expected = vm.expected("2");
    let b2 = back_up_with(&x.ekko, &restarted, &inst, &request())
        .await
        .expect("backup 2");
    assert_eq!(
        reasons(&x.ekko, &vm, &b2.backup.id).await,
        [None],
        "still incremental from backup 1"
    );
    assert_restores(
        &x.ekko,
        &vm,
        &b2.backup.id,
        &expected,
        "backup 2 (after a dead worker)",
    )
    .await;
    lap("worker killed mid-backup");

    // --- libvirtd restarts mid-backup
    vm.write(0, 3 * MIB, MIB, 0x63);
    let task = {
        let (slow, inst) = (slow.clone(), inst.clone());
        let hyp = LibvirtHypervisor::from_config(&slow.config).unwrap();
        tokio::spawn(async move { back_up_with(&slow, &hyp, &inst, &request()).await })
    };
    job_started(&uri, &vm.uuid).await;
    tokio::task::spawn_blocking(restart_libvirtd).await.unwrap();
    // libvirt 11 keeps the job across its restart (QEMU serves the export
    // on): the backup may end well; or it fails. Either way nothing is
    // left and the next backup is right.
    let outcome = task.await.unwrap();
    eprintln!(
        "libvirt faults: the backup during the restart: {:?}",
        outcome
            .as_ref()
            .map(|b| b.backup.status)
            .map_err(|e| format!("{e:#}"))
    );
    let conn = Connection::open(&uri).unwrap();
    assert_clean(&conn, &vm, &scratch, "after libvirtd restarted");
    lap("libvirtd restarted");

    // --- the job ends under the reader (what a libvirt that drops jobs
    // on restart would do): the backup fails, and leaves nothing
    // More than the reads in flight (8 of 1 MiB), so some come after the abort.
    vm.write(0, 16 * MIB, 12 * MIB, 0x65);
    let task = {
        let (slow, inst) = (slow.clone(), inst.clone());
        let hyp = LibvirtHypervisor::from_config(&slow.config).unwrap();
        tokio::spawn(async move { back_up_with(&slow, &hyp, &inst, &request()).await })
    };
    job_started(&uri, &vm.uuid).await;
    crate::nova::virsh_ok(&uri, &["domjobabort", &vm.name]);
    let failed = task
        .await
        .unwrap()
        .err()
        .expect("the backup fails without its job");
    eprintln!("libvirt faults: job ended under the reader: {failed:#}");
    assert_clean(&conn, &vm, &scratch, "after the job ended under the reader");
    lap("job lost");
    vm.write(0, 10 * MIB, 64 << 10, 0x64);
    let expected = vm.expected("3");
    let b3 = back_up_with(&x.ekko, &hyp, &inst, &request())
        .await
        .expect("backup after the restart");
    eprintln!(
        "libvirt faults: after the restart: {:?}",
        reasons(&x.ekko, &vm, &b3.backup.id).await
    );
    assert_restores(
        &x.ekko,
        &vm,
        &b3.backup.id,
        &expected,
        "backup after libvirtd restarted",
    )
    .await;
    vm.stop();
    vm.assert_models_match_images();
    lap("done");
}
