//! `ekko demo`: the main job on the embedded default, end to end on this
//! machine. A qemu-storage-daemon plays the running instance (a generated
//! qcow2 disk, exported to the demo through FUSE so it can write like a
//! guest); Ekko takes a full backup through QMP/NBD into the local
//! directory store, the "guest" rewrites scattered blocks, Ekko takes an
//! incremental, restores it and compares it with the disk.

use std::fmt::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::backup::restore::TargetFormat;
use crate::config::{EkkoConfig, StorageBackend};
use crate::ekko::Catalog;
use crate::service::local::{backup_instance, restore_backup, BackupRequest};
use crate::Ekko;

const MIB: u64 = 1 << 20;

struct Daemon(Child, PathBuf);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.1)
            .stderr(Stdio::null())
            .status();
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Pseudo-random bytes (xorshift), reproducible.
fn noise(seed: &mut u64, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Run the demo in `dir` (created if needed); returns the report.
pub async fn run_demo(config: &EkkoConfig, dir: &Path, disk_mib: u64) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let mut out = String::new();
    let size = disk_mib * MIB;
    let (img, raw, guest, qmp_sock) = (
        dir.join("disk.qcow2"),
        dir.join("seed.raw"),
        dir.join("guest.raw"),
        dir.join("qmp.sock"),
    );
    for p in [&img, &raw, &qmp_sock] {
        let _ = std::fs::remove_file(p);
    }
    // A disk that looks used: half compressible text, a quarter random, the rest never written.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    {
        let f = std::fs::File::create(&raw)?;
        f.set_len(size)?;
        let text = b"Ekko backs up OpenStack instances block by block. ".repeat(20_000);
        let mut at = 0;
        while at < size / 2 {
            f.write_all_at(&text[..(text.len() as u64).min(size / 2 - at) as usize], at)?;
            at += text.len() as u64;
        }
        f.write_all_at(&noise(&mut seed, (size / 4) as usize), size / 2)?;
    }
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&img))?;
    std::fs::remove_file(&raw)?;
    std::fs::write(&guest, b"")?;
    let child = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={},discard=unmap",
            img.display()
        ))
        .arg("--blockdev")
        .arg("driver=qcow2,node-name=disk0,file=file0,discard=unmap")
        .arg("--export")
        .arg(format!(
            "type=fuse,id=guest,node-name=disk0,mountpoint={},writable=on",
            guest.display()
        ))
        .arg("--chardev")
        .arg(format!(
            "socket,path={},server=on,wait=off,id=qmp0",
            qmp_sock.display()
        ))
        .arg("--monitor")
        .arg("chardev=qmp0")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("cannot start qemu-storage-daemon (run tools/install-deps.sh): {e}")
        })?;
    let _daemon = Daemon(child, guest.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(qmp_sock.exists()
        && std::fs::metadata(&guest)
            .map(|m| m.len() == size)
            .unwrap_or(false))
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "qemu-storage-daemon did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ekko = demo_ekko(config, dir).await?;
    let _ = writeln!(
        out,
        "disk: {disk_mib} MiB qcow2 (half text, a quarter random, a quarter never written), chunk {} KiB; catalog and store in {}",
        ekko.config.backup.chunk_size.bytes() >> 10,
        dir.display()
    );
    let mut req = BackupRequest {
        qmp_socket: qmp_sock.clone(),
        instance_id: "demo-instance".into(),
        project_id: "demo".into(),
        name: String::new(),
        full: false,
        agent_socket: None,
        progress: None,
    };
    let mut last = None;
    for round in ["full", "incremental"] {
        if round == "incremental" {
            // The guest rewrites ~1% of the disk in scattered 4 KiB–256 KiB writes.
            let f = std::fs::OpenOptions::new().write(true).open(&guest)?;
            let mut written = 0;
            while written < size / 100 {
                let len = 4096 + (noise(&mut seed, 8)[0] as u64 * 1024);
                let off = (u64::from_le_bytes(noise(&mut seed, 8).try_into().unwrap_or([0; 8]))
                    % (size - len))
                    & !4095;
                f.write_all_at(&noise(&mut seed, len as usize), off)?;
                written += len;
            }
            f.sync_all()?;
            let _ = writeln!(
                out,
                "guest rewrote {:.1} MiB in scattered writes",
                written as f64 / MIB as f64
            );
        }
        req.name = format!("demo {round}");
        let t = Instant::now();
        let outcome = backup_instance(&ekko, &req).await?;
        out.push_str(&outcome.summary(t.elapsed()));
        last = Some(outcome.backup.id);
    }
    let last = last.unwrap_or_default();

    let t = Instant::now();
    let restored = dir.join("restored.raw");
    let stats = restore_backup(&ekko, &last, None, &restored, TargetFormat::Raw, None).await?;
    let secs = t.elapsed().as_secs_f64();
    let _ = writeln!(
        out,
        "restore      {secs:>8.2} s  wrote {:>7.1} MiB ({:.0} MiB/s of disk), {} zero chunks skipped (sparse)",
        stats.bytes_written as f64 / MIB as f64,
        size as f64 / MIB as f64 / secs.max(1e-9),
        stats.zero_chunks
    );
    let same = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(&restored)
        .arg(&guest)
        .status()?
        .success();
    anyhow::ensure!(same, "the restored disk differs from the guest's disk");
    let _ = writeln!(
        out,
        "qemu-img compare: the restored disk is identical to the guest's disk"
    );
    let _ = std::fs::remove_file(&restored);
    Ok(out)
}

/// The embedded default inside the demo directory: a fresh SQLite catalog,
/// a local store and the in-process queue, whatever else is configured.
async fn demo_ekko(config: &EkkoConfig, dir: &Path) -> anyhow::Result<Ekko> {
    for stale in ["ekko.sqlite", "ekko.sqlite-wal", "ekko.sqlite-shm"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let _ = std::fs::remove_dir_all(dir.join("store"));
    let mut config = config.clone();
    config.database.connection = format!("sqlite:///{}", dir.join("ekko.sqlite").display());
    config.storage.backend = StorageBackend::Local;
    config.local_store.path = dir.join("store").display().to_string();
    config.backup.scratch_dir = dir.join("scratch").display().to_string();
    config.default.transport_url = "memory://".into();
    let ekko = Ekko::connect(config, Catalog::Unchecked).await?;
    let db = ekko.db()?.clone();
    tokio::task::spawn_blocking(move || db.sync()).await??;
    Ok(ekko)
}
