//! Peak memory of one backup and one restore job, by disk size:
//! `cargo bench --bench memory`.
//!
//! A qcow2 disk served by qemu-storage-daemon (as a running instance's
//! would be) gets chunk-sized writes at scattered offsets; `ekko backup`
//! (a full read, then an incremental after more scattered writes) and
//! `ekko restore` run as child processes, and the peak RSS of each (its
//! VmHWM, from wait4) is printed with its wall time and throughput. Two
//! disks: 10 GiB and 1 TiB (sparse). Issue 17's target is ≤ 256 MiB per
//! job whatever the disk size.
//!
//! EKKO_BENCH_BASELINE=/path/to/ekko runs the same steps with another
//! build first (e.g. one of main) and prints the ratios.
//! EKKO_BENCH_WRITTEN_MIB sets the data written to each disk (default
//! 3072: the disk and the restored file each hold that much and the store
//! half of it, so mind the free space), EKKO_BENCH_DISKS the disk sizes in GiB
//! (default `10,1024`), EKKO_BENCH_ROUNDS the rounds (default 3; the builds
//! alternate within each; medians of wall time, the highest peak RSS are
//! printed: this machine is shared and noisy). Temporary files go under
//! /var/tmp and are removed.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Writes are one default chunk each, aligned: each costs one chunk.
const PIECE: u64 = 256 << 10;
/// The per-job target of issue 17.
const TARGET_MIB: f64 = 256.0;

#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    wall: f64,
    rss_mib: f64,
}

/// Run a command to completion: wall time and the child's peak RSS (from
/// wait4, which is why clippy cannot see the wait).
#[allow(clippy::zombie_processes)]
fn measure(cmd: &mut Command) -> Cost {
    let t = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: waiting on our own child; rusage is a plain out-struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(rc, pid, "wait4");
    let wall = t.elapsed().as_secs_f64();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let mut err = String::new();
        if let Some(mut e) = child.stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        panic!("{cmd:?} failed: {err}");
    }
    Cost {
        wall,
        rss_mib: ru.ru_maxrss as f64 / 1024.0,
    }
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bytes` of chunk-sized pieces at scattered, aligned offsets of the disk
/// (half random, half text: about 2:1 for zstd), through the FUSE export.
fn scatter(guest: &Path, size: u64, bytes: u64, seed: &mut u64) {
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let f = std::fs::OpenOptions::new().write(true).open(guest).unwrap();
    let mut data = vec![0u8; PIECE as usize];
    let text = b"ekko memory benchmark, scattered writes ".repeat(4096);
    for _ in 0..bytes / PIECE {
        let off = (next() % (size / PIECE)) * PIECE;
        let (rand, rest) = data.split_at_mut(PIECE as usize / 2);
        for w in rand.chunks_exact_mut(8) {
            w.copy_from_slice(&next().to_le_bytes());
        }
        rest.copy_from_slice(&text[..rest.len()]);
        f.write_all_at(&data, off).unwrap();
    }
    f.sync_all().unwrap();
}

struct Disk {
    qsd: std::process::Child,
    guest: std::path::PathBuf,
    qmp: std::path::PathBuf,
    qcow: std::path::PathBuf,
}

impl Disk {
    fn start(d: &Path, size: u64) -> Disk {
        let qcow = d.join("disk.qcow2");
        sh(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&qcow)
            .arg(size.to_string()));
        let guest = d.join("guest.raw");
        std::fs::write(&guest, b"").unwrap();
        let qmp = d.join("qmp.sock");
        let qsd = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file0,filename={}",
                qcow.display()
            ))
            .arg("--blockdev")
            .arg("driver=qcow2,node-name=disk0,file=file0")
            .arg("--export")
            .arg(format!(
                "type=fuse,id=g,node-name=disk0,mountpoint={},writable=on",
                guest.display()
            ))
            .arg("--chardev")
            .arg(format!(
                "socket,path={},server=on,wait=off,id=m",
                qmp.display()
            ))
            .arg("--monitor")
            .arg("chardev=m")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        while !(qmp.exists()
            && std::fs::metadata(&guest)
                .map(|m| m.len() == size)
                .unwrap_or(false))
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Disk {
            qsd,
            guest,
            qmp,
            qcow,
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.qsd.id().to_string())
            .status();
        let _ = self.qsd.wait();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.guest)
            .stderr(Stdio::null())
            .status();
    }
}

/// The id of the newest backup in the catalog of `conf`.
fn newest_backup(ekko: &str, conf: &Path) -> String {
    let list = Command::new(ekko)
        .arg("--config-file")
        .arg(conf)
        .arg("list")
        .output()
        .unwrap();
    String::from_utf8_lossy(&list.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

struct Row {
    build: String,
    disk_gib: u64,
    step: &'static str,
    cost: Cost,
    /// Bytes of data the step moved (written to the disk before it).
    data: u64,
}

/// Full backup, restore (checked against the disk), incremental, with one
/// build of `ekko`, into a fresh state directory that is removed after.
#[allow(clippy::too_many_arguments)]
fn run_build(
    build: &str,
    ekko: &str,
    d: &Path,
    disk: &Disk,
    size: u64,
    written: u64,
    seed: &mut u64,
    rows: &mut Vec<Row>,
) {
    let state = d.join(format!("state-{build}"));
    let conf = d.join(format!("{build}.conf"));
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nstate_path = {}\n[local_store]\nfsync = false\n",
            state.display()
        ),
    )
    .unwrap();
    sh(Command::new(ekko)
        .arg("--config-file")
        .arg(&conf)
        .arg("init"));
    let backup = |full: bool| {
        let mut cmd = Command::new(ekko);
        cmd.arg("--config-file").arg(&conf).args([
            "backup",
            "--instance",
            &format!("mem-{build}"),
            "--qmp-socket",
        ]);
        cmd.arg(&disk.qmp);
        if full {
            cmd.arg("--full");
        }
        measure(&mut cmd)
    };
    let gib = size / GIB;
    let cost = backup(true);
    rows.push(Row {
        build: build.into(),
        disk_gib: gib,
        step: "backup (full)",
        cost,
        data: written,
    });
    let id = newest_backup(ekko, &conf);
    let target = d.join("restored.raw");
    let cost = measure(
        Command::new(ekko)
            .arg("--config-file")
            .arg(&conf)
            .args(["restore", &id, "--output"])
            .arg(&target),
    );
    rows.push(Row {
        build: build.into(),
        disk_gib: gib,
        step: "restore",
        cost,
        data: written,
    });
    sh(Command::new("qemu-img")
        .args(["compare", "-q", "-U", "-f", "raw", "-F", "qcow2"])
        .arg(&target)
        .arg(&disk.qcow));
    let _ = std::fs::remove_file(&target);
    let more = (written / 16).max(PIECE);
    scatter(&disk.guest, size, more, seed);
    let cost = backup(false);
    rows.push(Row {
        build: build.into(),
        disk_gib: gib,
        step: "backup (incr)",
        cost,
        data: more,
    });
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&conf);
}

/// One row per (build, disk, step): the median wall time, the highest
/// peak RSS, in the order first seen.
fn summarise(rows: Vec<Row>) -> Vec<Row> {
    let mut out: Vec<(Row, Vec<f64>)> = Vec::new();
    for r in rows {
        match out
            .iter_mut()
            .find(|(o, _)| o.build == r.build && o.disk_gib == r.disk_gib && o.step == r.step)
        {
            Some((o, walls)) => {
                walls.push(r.cost.wall);
                o.cost.rss_mib = o.cost.rss_mib.max(r.cost.rss_mib);
            }
            None => {
                let wall = r.cost.wall;
                out.push((r, vec![wall]));
            }
        }
    }
    out.into_iter()
        .map(|(mut r, mut walls)| {
            walls.sort_by(|a, b| a.total_cmp(b));
            r.cost.wall = walls[walls.len() / 2];
            r
        })
        .collect()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("memory benchmark: run it with `cargo bench --bench memory`");
        return;
    }
    let written = std::env::var("EKKO_BENCH_WRITTEN_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(3072)
        * MIB;
    let disks: Vec<u64> = std::env::var("EKKO_BENCH_DISKS")
        .unwrap_or_else(|_| "10,1024".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let mut builds: Vec<(String, String)> = Vec::new();
    if let Ok(base) = std::env::var("EKKO_BENCH_BASELINE") {
        builds.push(("baseline".into(), base));
    }
    builds.push(("this".into(), env!("CARGO_BIN_EXE_ekko").into()));
    let rounds: usize = std::env::var("EKKO_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let mut rows = Vec::new();
    for &gib in &disks {
        let size = gib * GIB;
        let dir = tempfile::Builder::new()
            .prefix("ekko-memory")
            .tempdir_in("/var/tmp")
            .unwrap();
        let disk = Disk::start(dir.path(), size);
        let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ gib;
        let t = Instant::now();
        scatter(&disk.guest, size, written, &mut seed);
        println!(
            "{gib} GiB disk: {} MiB written at scattered offsets in {:.1} s",
            written / MIB,
            t.elapsed().as_secs_f64()
        );
        for _ in 0..rounds {
            for (build, ekko) in &builds {
                let d = dir.path();
                run_build(build, ekko, d, &disk, size, written, &mut seed, &mut rows);
            }
        }
        disk.stop();
    }
    let rows = summarise(rows);
    println!("\n{rounds} round(s): median wall time, highest peak RSS");
    println!(
        "{:<9} {:>9} {:<14} {:>8} {:>9} {:>13}",
        "build", "disk GiB", "step", "wall s", "MiB/s", "peak RSS MiB"
    );
    for r in &rows {
        println!(
            "{:<9} {:>9} {:<14} {:>8.2} {:>9.0} {:>13.0}",
            r.build,
            r.disk_gib,
            r.step,
            r.cost.wall,
            r.data as f64 / MIB as f64 / r.cost.wall,
            r.cost.rss_mib
        );
    }
    let worst = rows
        .iter()
        .filter(|r| r.build == "this")
        .map(|r| r.cost.rss_mib)
        .fold(0.0, f64::max);
    println!(
        "\npeak RSS of any job of this build: {worst:.0} MiB (target: at most {TARGET_MIB} MiB per job, whatever the disk size): {}",
        if worst <= TARGET_MIB { "met" } else { "NOT met" }
    );
    for r in rows.iter().filter(|r| r.build == "baseline") {
        if let Some(t) = rows
            .iter()
            .find(|x| x.build == "this" && x.disk_gib == r.disk_gib && x.step == r.step)
        {
            println!(
                "{:>5} GiB {:<14} this / baseline: peak RSS {:.2}x, wall time {:.2}x",
                r.disk_gib,
                r.step,
                t.cost.rss_mib / r.cost.rss_mib,
                t.cost.wall / r.cost.wall
            );
        }
    }
}
