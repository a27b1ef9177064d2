//! Ekko against restic and borg on the same disk image and the same
//! changes, side by side in one run: `cargo bench --bench peers`.
//!
//! The disk is a 2 GiB ext4 image filled with real files (`/usr/share`)
//! plus free space. Ekko backs it up live from a qemu-storage-daemon over
//! QMP/NBD (incrementals read only what the dirty bitmap says); restic and
//! borg (fixed 4 MiB chunker, as borg recommends for images) back up the
//! same bytes as a file. Then 1% and 10% of the disk are rewritten in
//! scattered writes of 4 KiB–1 MiB, each tool backs up again, and each
//! restores the last backup. Printed: wall and CPU seconds, MiB/s, bytes
//! stored, peak RSS, and Ekko/peer ratios.
//!
//! Setup notes: restic repositories are always encrypted (AES-256, its
//! default zstd compression); borg runs with `-e none` and its default lz4;
//! Ekko stores zstd level 1, unencrypted. EKKO_BENCH_IMAGE_MIB sets the size;
//! EKKO_BENCH_PEERS (default `restic,borg`; empty for Ekko alone) picks the
//! peers, and `EKKO__BACKUP__*` variables reach Ekko (e.g. a chunk-size
//! sweep: `EKKO__BACKUP__CHUNK_SIZE=1M EKKO_BENCH_PEERS= cargo bench --bench peers`).
//! EKKO_BENCH_SWIFT=1 adds a Swift vs local store comparison,
//! EKKO_BENCH_ENCRYPT=1 encryption (symmetric, then public-key mode) vs off (same image,
//! full backup and restore, median of 3).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    wall: f64,
    cpu: f64,
    rss_mib: f64,
}

/// Run a command to completion; wall time, CPU (user+sys) and peak RSS of
/// the child, from wait4 (which is why clippy cannot see the wait).
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
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Cost {
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        rss_mib: ru.ru_maxrss as f64 / 1024.0,
    }
}

/// A restore is finished when its data is on disk: the command's time plus
/// a `sync` (Ekko fsyncs its target before it reports success; restic and
/// borg leave theirs in the page cache). Dirty data from earlier steps is
/// flushed first, untimed.
fn measure_durable(cmd: &mut Command) -> Cost {
    let sync = || assert!(Command::new("sync").status().unwrap().success());
    sync();
    let mut cost = measure(cmd);
    let t = Instant::now();
    sync();
    cost.wall += t.elapsed().as_secs_f64();
    cost
}

fn du(path: &Path) -> u64 {
    let out = Command::new("du")
        .arg("-sb")
        .arg(path)
        .output()
        .expect("du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test environment's variable `k` (source its env.sh).
fn env_var(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k}: source the test environment's env.sh"))
}

/// The same full backup and restore under two configurations (`variants`:
/// label and extra ekko.conf text, `{tag}` replaced by a per-round tag),
/// each into an empty store, three rounds alternating; prints medians and
/// the second / first ratio against `target`.
fn compare(
    d: &Path,
    qmp: &Path,
    raw: &Path,
    size: u64,
    variants: [(&str, String); 2],
    target: &str,
) {
    let ekko = env!("CARGO_BIN_EXE_ekko");
    let mut times: Vec<(&str, &str, Vec<f64>, Vec<f64>)> = variants
        .iter()
        .map(|(label, extra)| (*label, extra.as_str(), vec![], vec![]))
        .collect();
    for round in 0..3 {
        for (label, extra, backups, restores) in times.iter_mut() {
            let state = d.join(format!("cmp-{label}-{round}"));
            let conf = d.join(format!("cmp-{label}-{round}.conf"));
            let tag = format!("{:08x}", std::process::id() ^ (round << 16));
            std::fs::write(
                &conf,
                format!(
                    "[DEFAULT]\nstate_path = {}\n{}",
                    state.display(),
                    extra.replace("{tag}", &tag)
                ),
            )
            .unwrap();
            sh(Command::new(ekko)
                .arg("--config-file")
                .arg(&conf)
                .arg("init"));
            let instance = format!("cmp-{label}-{round}");
            let cost = measure(
                Command::new(ekko)
                    .arg("--config-file")
                    .arg(&conf)
                    .args(["backup", "--full", "--instance", &instance, "--qmp-socket"])
                    .arg(qmp),
            );
            backups.push(cost.wall);
            let id = newest_backup(&conf);
            let target = d.join(format!("cmp-{label}.raw"));
            let cost = measure_durable(
                Command::new(ekko)
                    .arg("--config-file")
                    .arg(&conf)
                    .args(["restore", &id, "--output"])
                    .arg(&target),
            );
            restores.push(cost.wall);
            assert!(
                Command::new("cmp")
                    .arg("-s")
                    .arg(&target)
                    .arg(raw)
                    .status()
                    .unwrap()
                    .success(),
                "{label} restore differs"
            );
            let _ = std::fs::remove_file(&target);
            let _ = std::fs::remove_dir_all(&state);
            if extra.contains("backend = swift") {
                // Free the loopback Swift's space for the next round.
                let _ = Command::new("swift")
                    .args(["--auth-version", "3", "--os-auth-url"])
                    .arg(env_var("EKKO_KEYSTONE_AUTH_URL"))
                    .args(["--os-username"])
                    .arg(env_var("EKKO_SERVICE_USERNAME"))
                    .args(["--os-password"])
                    .arg(env_var("EKKO_SERVICE_PASSWORD"))
                    .args(["--os-project-name"])
                    .arg(env_var("EKKO_SERVICE_PROJECT"))
                    .args([
                        "--os-user-domain-name",
                        "Default",
                        "--os-project-domain-name",
                        "Default",
                        "delete",
                        &format!("ekko-bench-{tag}-default"),
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
    println!(
        "\n{} vs {} (full backup and restore of {} MiB, median of 3, empty store each time)",
        times[1].0,
        times[0].0,
        size / MIB
    );
    let m = |v: &Vec<f64>| median(v.clone());
    for (label, _, b, r) in &times {
        println!(
            "{label:<10} backup {:>6.2} s   restore {:>6.2} s",
            m(b),
            m(r)
        );
    }
    println!(
        "{} / {}: backup {:.2}x, restore {:.2}x (target: {target})",
        times[1].0,
        times[0].0,
        m(&times[1].2) / m(&times[0].2),
        m(&times[1].3) / m(&times[0].3)
    );
}

/// Swift (the test environment's, on loopback) against the local store.
fn store_comparison(d: &Path, qmp: &Path, raw: &Path, size: u64) {
    let swift = format!(
        "[storage]\nbackend = swift\n[swift]\ncontainer_prefix = ekko-bench-{{tag}}-\n\
         [keystone_authtoken]\nauth_url = {}\nusername = {}\npassword = {}\nproject_name = {}\n",
        env_var("EKKO_KEYSTONE_AUTH_URL"),
        env_var("EKKO_SERVICE_USERNAME"),
        env_var("EKKO_SERVICE_PASSWORD"),
        env_var("EKKO_SERVICE_PROJECT")
    );
    compare(
        d,
        qmp,
        raw,
        size,
        [("local", String::new()), ("swift", swift)],
        "within 1.5x",
    );
}

/// Encryption on against off, local store (the cost of sealing, keyed
/// identities and opening).
fn encryption_comparison(d: &Path, qmp: &Path, raw: &Path, size: u64) {
    let key = d.join("bench-master.key");
    let hex: String = (0..32)
        .map(|i| format!("{:02x}", (i * 37 + 11) as u8))
        .collect();
    std::fs::write(&key, hex).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    for mode in ["symmetric", "public_key"] {
        let encrypted = format!(
            "[encryption]\nenabled = true\nmode = {mode}\nmaster_key_file = {}\n",
            key.display()
        );
        compare(
            d,
            qmp,
            raw,
            size,
            [("plain", String::new()), (mode, encrypted)],
            "under 1.10x for the backup",
        );
    }
}

/// The id of the newest backup in the catalog of `conf` (`ekko list`).
fn newest_backup(conf: &Path) -> String {
    let list = Command::new(env!("CARGO_BIN_EXE_ekko"))
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Apply deterministic scattered writes of 4 KiB–1 MiB covering `share`
/// of the disk to every file in `targets`, generating them one at a time
/// (so this process stays small: forked children inherit its RSS).
fn apply_changes(seed: &mut u64, size: u64, share: f64, targets: &[&Path]) -> u64 {
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let files: Vec<std::fs::File> = targets
        .iter()
        .map(|p| std::fs::OpenOptions::new().write(true).open(p).unwrap())
        .collect();
    let target = (size as f64 * share) as u64;
    let mut total = 0;
    let mut data = Vec::with_capacity(MIB as usize + 8);
    while total < target {
        let len = (4096 + next() % MIB) & !4095;
        let off = (next() % (size - len)) & !4095;
        data.clear();
        while (data.len() as u64) < len {
            data.extend_from_slice(&next().to_le_bytes());
        }
        for f in &files {
            f.write_all_at(&data, off).unwrap();
        }
        total += len;
    }
    for f in &files {
        f.sync_all().unwrap();
    }
    total
}

struct Row {
    tool: &'static str,
    step: &'static str,
    cost: Cost,
    scanned: u64,
    stored: u64,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("peers benchmark: run it with `cargo bench --bench peers`");
        return;
    }
    let image_mib: u64 = std::env::var("EKKO_BENCH_IMAGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let size = image_mib * MIB;
    let dir = tempfile::Builder::new()
        .prefix("ekko-peers")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d", "/usr/share"])
        .arg(&raw)
        .arg(format!("{image_mib}M")));
    let qcow = d.join("disk.qcow2");
    sh(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow));
    println!(
        "image: {image_mib} MiB ext4 with /usr/share ({} MiB allocated)",
        du(&raw) / MIB
    );

    // The live instance for Ekko, its disk writable through FUSE.
    let guest = d.join("guest.raw");
    std::fs::write(&guest, b"").unwrap();
    let qmp = d.join("qmp.sock");
    let mut qsd = Command::new("qemu-storage-daemon")
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

    let ekko_state = d.join("ekko");
    let conf = d.join("ekko.conf");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nstate_path = {}\n[local_store]\nfsync = false\n",
            ekko_state.display()
        ),
    )
    .unwrap();
    let ekko = env!("CARGO_BIN_EXE_ekko");
    sh(Command::new(ekko)
        .arg("--config-file")
        .arg(&conf)
        .arg("init"));
    let restic_repo = d.join("restic");
    let borg_repo = d.join("borg");
    let peers = std::env::var("EKKO_BENCH_PEERS").unwrap_or_else(|_| "restic,borg".into());
    let with = |tool: &str| peers.split(',').any(|p| p.trim() == tool);
    if with("restic") {
        sh(Command::new("restic")
            .args(["init", "-q", "--repo"])
            .arg(&restic_repo)
            .env("RESTIC_PASSWORD", "bench"));
    }
    if with("borg") {
        sh(Command::new("borg")
            .args(["init", "-e", "none"])
            .arg(&borg_repo));
    }

    let mut rows: Vec<Row> = Vec::new();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut last_archive = String::new();
    let mut rewritten: Vec<(&str, u64)> = Vec::new();
    for (step, share) in [("full", 0.0), ("incr 1%", 0.01), ("incr 10%", 0.10)] {
        if share > 0.0 {
            let bytes = apply_changes(&mut seed, size, share, &[&guest, &raw]);
            rewritten.push((step, bytes));
        }
        let sizes = (du(&ekko_state), du(&restic_repo), du(&borg_repo));
        let cost = measure(
            Command::new(ekko)
                .arg("--config-file")
                .arg(&conf)
                .args(["backup", "--instance", "bench", "--qmp-socket"])
                .arg(&qmp),
        );
        rows.push(Row {
            tool: "ekko",
            step,
            cost,
            scanned: size,
            stored: du(&ekko_state) - sizes.0,
        });
        if with("restic") {
            let cost = measure(
                Command::new("restic")
                    .args(["backup", "-q", "--repo"])
                    .arg(&restic_repo)
                    .arg(&raw)
                    .env("RESTIC_PASSWORD", "bench"),
            );
            rows.push(Row {
                tool: "restic",
                step,
                cost,
                scanned: size,
                stored: du(&restic_repo) - sizes.1,
            });
        }
        if !with("borg") {
            continue;
        }
        let archive = format!("{}::b{}", borg_repo.display(), rows.len());
        last_archive = archive.clone();
        let cost = measure(
            Command::new("borg")
                .args(["create", "--chunker-params", "fixed,4194304"])
                .arg(&archive)
                .arg(&raw)
                .current_dir(d),
        );
        rows.push(Row {
            tool: "borg",
            step,
            cost,
            scanned: size,
            stored: du(&borg_repo) - sizes.2,
        });
    }

    // Restore the last backup with each tool.
    let out = d.join("restore");
    std::fs::create_dir_all(&out).unwrap();
    let last = newest_backup(&conf);
    let target = out.join("ekko.raw");
    let cost = measure_durable(
        Command::new(ekko)
            .arg("--config-file")
            .arg(&conf)
            .args(["restore", &last, "--output"])
            .arg(&target),
    );
    assert!(
        Command::new("cmp")
            .arg("-s")
            .arg(&target)
            .arg(&raw)
            .status()
            .unwrap()
            .success(),
        "ekko restore differs"
    );
    rows.push(Row {
        tool: "ekko",
        step: "restore",
        cost,
        scanned: size,
        stored: 0,
    });
    let _ = std::fs::remove_file(&target);
    if with("restic") {
        let cost = measure_durable(
            Command::new("restic")
                .args(["restore", "latest", "-q", "--repo"])
                .arg(&restic_repo)
                .arg("--target")
                .arg(out.join("restic"))
                .env("RESTIC_PASSWORD", "bench"),
        );
        rows.push(Row {
            tool: "restic",
            step: "restore",
            cost,
            scanned: size,
            stored: 0,
        });
        let _ = std::fs::remove_dir_all(out.join("restic"));
    }
    if with("borg") {
        let borg_out = out.join("borg");
        std::fs::create_dir_all(&borg_out).unwrap();
        let cost = measure_durable(
            Command::new("borg")
                .arg("extract")
                .arg(&last_archive)
                .current_dir(&borg_out),
        );
        rows.push(Row {
            tool: "borg",
            step: "restore",
            cost,
            scanned: size,
            stored: 0,
        });
    }
    if std::env::var("EKKO_BENCH_SWIFT").is_ok_and(|v| v == "1") {
        store_comparison(d, &qmp, &raw, size);
    }
    if std::env::var("EKKO_BENCH_ENCRYPT").is_ok_and(|v| v == "1") {
        encryption_comparison(d, &qmp, &raw, size);
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(qsd.id().to_string())
        .status();
    let _ = qsd.wait();
    let _ = Command::new("umount").arg("-l").arg(&guest).status();

    println!(
        "{:<8} {:<9} {:>8} {:>8} {:>9} {:>11} {:>9}",
        "tool", "step", "wall s", "cpu s", "MiB/s", "stored MiB", "RSS MiB"
    );
    for r in &rows {
        println!(
            "{:<8} {:<9} {:>8.2} {:>8.2} {:>9.0} {:>11.1} {:>9.0}",
            r.tool,
            r.step,
            r.cost.wall,
            r.cost.cpu,
            r.scanned as f64 / MIB as f64 / r.cost.wall,
            r.stored as f64 / MIB as f64,
            r.cost.rss_mib
        );
    }
    println!("\nratios (peer / ekko; above 1 means Ekko is better)");
    for step in ["full", "incr 1%", "incr 10%", "restore"] {
        let get = |tool: &str| rows.iter().find(|r| r.tool == tool && r.step == step);
        if let (Some(e), Some(r), Some(b)) = (get("ekko"), get("restic"), get("borg")) {
            let stored = |x: &Row| {
                if e.stored > 0 {
                    format!("{:>6.2}", x.stored as f64 / e.stored as f64)
                } else {
                    "     -".into()
                }
            };
            println!(
                "{step:<9} wall: restic {:>6.2} borg {:>6.2}   stored: restic {} borg {}",
                r.cost.wall / e.cost.wall,
                b.cost.wall / e.cost.wall,
                stored(r),
                stored(b)
            );
        }
    }
    if let (Some(f), Some(i)) = (
        rows.iter().find(|r| r.tool == "ekko" && r.step == "full"),
        rows.iter()
            .find(|r| r.tool == "ekko" && r.step == "incr 1%"),
    ) {
        println!(
            "ekko incremental at 1% takes {:.1}% of the full backup's time",
            100.0 * i.cost.wall / f.cost.wall
        );
    }
    // The rewrites are random bytes: their compressed size is their size.
    for (step, bytes) in rewritten {
        if let Some(e) = rows.iter().find(|r| r.tool == "ekko" && r.step == step) {
            println!(
                "ekko {step}: stored {:.1} MiB for {:.1} MiB rewritten (ratio {:.2})",
                e.stored as f64 / MIB as f64,
                bytes as f64 / MIB as f64,
                e.stored as f64 / bytes as f64
            );
        }
    }
}
