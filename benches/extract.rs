//! Extraction throughput: Ekko's NBD client reading every data extent of a
//! pull-mode export, against `qemu-img convert` of the same export to a
//! null target, side by side. Run with `cargo bench --bench extract`.
//! Prints MiB/s and the Ekko/qemu-img ratio (medians of several runs; the
//! image is in the page cache for both, so this measures the clients).
//!
//! EKKO_BENCH_DATA_MIB (default 768) sets the data written into a disk of
//! data + 256 MiB (the unallocated tail costs no read).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ekko::extract::pull::{DiskRequest, PullBackup, PullOptions};
use ekko::extract::{subtract, DiskSnapshot};
use ekko::qmp::QmpClient;
use futures::StreamExt;

const MIB: u64 = 1 << 20;
const RUNS: usize = 7;

fn run(cmd: &mut Command) {
    let st = cmd.status().expect("command runs");
    assert!(st.success(), "{cmd:?} failed");
}

/// CPU seconds (user + system) of this process or of its waited-for children.
fn cpu_seconds(who: i32) -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn make_image(dir: &Path, data_mib: u64) -> (std::path::PathBuf, u64) {
    let raw = dir.join("src.raw");
    let img = dir.join("disk.qcow2");
    let size = (data_mib + 256) * MIB;
    run(Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "status=none", "iflag=fullblock"])
        .arg(format!("of={}", raw.display()))
        .arg(format!("count={data_mib}")));
    run(Command::new("truncate")
        .arg("-s")
        .arg(size.to_string())
        .arg(&raw));
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&img));
    let _ = std::fs::remove_file(&raw);
    (img, size)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --all-targets` runs bench binaries too; measure only
    // under `cargo bench` (which passes --bench).
    if !std::env::args().any(|a| a == "--bench") {
        println!("extract benchmark: run it with `cargo bench --bench extract`");
        return;
    }
    let data_mib: u64 = std::env::var("EKKO_BENCH_DATA_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(768);
    let dir = tempfile::Builder::new()
        .prefix("ekko-bench")
        .tempdir()
        .unwrap();
    let (img, size) = make_image(dir.path(), data_mib);
    let qmp_sock = dir.path().join("qmp.sock");
    let mut qsd = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={},cache.direct=off,aio=threads",
            img.display()
        ))
        .arg("--blockdev")
        .arg("driver=qcow2,node-name=disk0,file=file0")
        .arg("--chardev")
        .arg(format!(
            "socket,path={},server=on,wait=off,id=qmp0",
            qmp_sock.display()
        ))
        .arg("--monitor")
        .arg("chardev=qmp0")
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-storage-daemon");
    while !qmp_sock.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let qmp = Arc::new(
        QmpClient::connect(&qmp_sock, Duration::from_secs(10))
            .await
            .unwrap(),
    );
    let opts = PullOptions {
        backup_id: "bench".into(),
        scratch_dir: dir.path().join("scratch"),
        scratch_limit: 0,
        granularity: 65536,
        requests_in_flight: std::env::var("EKKO_BENCH_DEPTH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(ekko::config::BackupOptions::default().nbd_requests_in_flight as usize),
        read_rate_limit: 0,
        qmp_timeout: Duration::from_secs(30),
        agent_socket: None,
        agent_timeout: Duration::from_secs(5),
        existing_nbd_socket: None,
        instance_key: "test".into(),
    };
    let req = DiskRequest {
        device: "vda".into(),
        node: "disk0".into(),
        expected_bitmap: None,
        expected_size: None,
        force_full: true,
    };
    let backup = PullBackup::begin(qmp.clone(), &[req], opts).await.unwrap();
    let disk = &backup.disks[0];
    let data = subtract(disk.changed(), disk.zeros());
    let data_bytes: u64 = data.iter().map(|r| r.1).sum();
    println!(
        "image: {} MiB virtual, {} MiB of data to read ({} extents)",
        size / MIB,
        data_bytes / MIB,
        data.len()
    );

    // Warm the page cache once so both readers see the same conditions.
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw"])
        .arg(backup.nbd_uri(0))
        .arg("--target-image-opts")
        .arg(format!("driver=null-co,size={size}")));

    let mut ekko = Vec::new();
    let mut qemu = Vec::new();
    let (mut ekko_cpu, mut qemu_cpu) = (0.0, 0.0);
    for _ in 0..RUNS {
        let cpu0 = cpu_seconds(libc::RUSAGE_SELF);
        let t = Instant::now();
        let mut n = 0u64;
        let mut s = disk.read_ranges(data.clone());
        while let Some(piece) = s.next().await {
            n += piece.unwrap().1.len() as u64;
        }
        assert_eq!(n, data_bytes);
        ekko.push(n as f64 / MIB as f64 / t.elapsed().as_secs_f64());
        ekko_cpu += cpu_seconds(libc::RUSAGE_SELF) - cpu0;

        let cpu0 = cpu_seconds(libc::RUSAGE_CHILDREN);
        let t = Instant::now();
        run(Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw"])
            .arg(backup.nbd_uri(0))
            .arg("--target-image-opts")
            .arg(format!("driver=null-co,size={size}")));
        qemu.push(data_bytes as f64 / MIB as f64 / t.elapsed().as_secs_f64());
        qemu_cpu += cpu_seconds(libc::RUSAGE_CHILDREN) - cpu0;
    }
    let gib = (data_bytes * RUNS as u64) as f64 / (1u64 << 30) as f64;
    let (e, q) = (median(ekko.clone()), median(qemu.clone()));
    println!(
        "{:<34} {:>10} {:>10}",
        "reader (median of 7)", "MiB/s", "runs"
    );
    println!(
        "{:<34} {:>10.0} {:>10?}",
        "ekko NBD client (1 MiB x depth)",
        e,
        ekko.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    println!(
        "{:<34} {:>10.0} {:>10?}",
        "qemu-img convert -> null-co",
        q,
        qemu.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    println!("ratio ekko / qemu-img (throughput): {:.2}", e / q);
    println!(
        "client CPU per GiB read: ekko {:.2} s, qemu-img {:.2} s (the server side is qemu-storage-daemon for both)",
        ekko_cpu / gib,
        qemu_cpu / gib
    );
    backup.abort().await.unwrap();
    drop(qmp);
    let _ = qsd.kill();
    let _ = qsd.wait();
}
