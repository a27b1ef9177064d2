//! `LibvirtHypervisor` when libvirt does not answer, on the real libvirtd
//! and QEMU of tools/test-env.sh: a QEMU stopped with SIGSTOP (as one
//! whose image sits on a stalled NFS server) no longer answers its
//! monitor, so libvirt's calls that need it hang; Ekko's fail after
//! `[libvirt] job_timeout` and the caller carries on. And what backups
//! left for domains no longer on the host is swept, never that of a
//! domain libvirt knows.

use std::process::Command;
use std::time::{Duration, Instant};

use ekko::extract::ExtractError;
use ekko::hypervisor::libvirt::LibvirtHypervisor;
use ekko::hypervisor::Hypervisor;

use crate::helpers::service_env;
use crate::libvirt_backup::setup;
use crate::nova::NovaVm;

const PROJECT: &str = "9f8e7d6c5b4a43210f1e2d3c4b5a6978";

fn signal(pid: &str, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// Sends SIGCONT whatever happens to the test.
struct Stopped(String);

impl Stopped {
    fn stop(pid: String) -> Stopped {
        signal(&pid, "-STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_qemu_monitor_fails_calls_after_the_timeout_instead_of_hanging() {
    let Some(uri) = service_env("EKKO_LIBVIRT_URI") else {
        return;
    };
    let _libvirt = crate::helpers::libvirt_lock().await;
    let x = setup(&uri, "job_timeout = 2\n").await;
    let vm = NovaVm::start(&uri, &x.dir.path().join("vm"), PROJECT, true);
    let hyp = LibvirtHypervisor::from_config(&x.ekko.config).unwrap();
    let inst = vm.instance();
    assert_eq!(hyp.disks(&inst).await.unwrap().len(), 1, "vda");
    assert!(hyp.instances().await.unwrap().contains(&inst));

    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{}.pid", vm.name))
        .expect("QEMU's pid file")
        .trim()
        .to_string();
    let stopped = Stopped::stop(pid);
    // virDomainGetBlockInfo asks the monitor, which does not answer.
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(30), hyp.disks(&inst))
        .await
        .expect("disks() hung with QEMU's monitor");
    assert!(matches!(r, Err(ExtractError::TimedOut(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // That call is left behind: the next one for the domain fails at once
    // instead of leaving another thread behind.
    let t = Instant::now();
    let r = hyp.disks(&inst).await;
    assert!(matches!(r, Err(ExtractError::TimedOut(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let r = hyp.recover(&inst).await;
    assert!(matches!(r, Err(ExtractError::TimedOut(_))), "{r:?}");
    // The list goes on, with the domain as it was last seen.
    let t = Instant::now();
    assert!(hyp.instances().await.unwrap().contains(&inst));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // Once QEMU answers, so does the domain.
    drop(stopped);
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        match hyp.disks(&inst).await {
            Ok(d) => {
                assert_eq!(d.len(), 1);
                break;
            }
            Err(e) => assert!(Instant::now() < end, "still failing: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_domains_gone_from_the_host_are_swept_and_no_others() {
    let Some(uri) = service_env("EKKO_LIBVIRT_URI") else {
        return;
    };
    let _libvirt = crate::helpers::libvirt_lock().await;
    let x = setup(&uri, "").await;
    let vm = NovaVm::start(&uri, &x.dir.path().join("vm"), PROJECT, true);
    let hyp = LibvirtHypervisor::from_config(&x.ekko.config).unwrap();
    let scratch = x.dir.path().join("scratch").join("libvirt");
    let ledgers = x.dir.path().join("state").join("libvirt");
    let gone = uuid::Uuid::new_v4().hyphenated().to_string();
    let upper = gone.to_uppercase();
    for uuid in [&vm.uuid, &gone, &upper, &"not-a-uuid".to_string()] {
        std::fs::create_dir_all(scratch.join(uuid)).unwrap();
        std::fs::write(scratch.join(uuid).join("vda.qcow2"), b"x").unwrap();
        std::fs::create_dir_all(&ledgers).unwrap();
        std::fs::write(ledgers.join(format!("{uuid}.json")), b"{}").unwrap();
    }
    std::fs::write(ledgers.join(format!("{gone}.json.tmp")), b"{}").unwrap();

    hyp.sweep().await.unwrap();
    assert!(!scratch.join(&gone).exists(), "the gone domain's scratch");
    assert!(!ledgers.join(format!("{gone}.json")).exists(), "its ledger");
    assert!(scratch.join(&vm.uuid).join("vda.qcow2").exists());
    assert!(ledgers.join(format!("{}.json", vm.uuid)).exists());
    for other in [&upper, &"not-a-uuid".to_string()] {
        assert!(scratch.join(other).exists(), "{other}");
        assert!(ledgers.join(format!("{other}.json")).exists(), "{other}");
    }
    assert!(ledgers.join(format!("{gone}.json.tmp")).exists());
}
