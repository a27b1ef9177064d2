//! File-level restore without trusting the tenant's filesystem: list and
//! copy files out of an ext2/3/4 disk of a backup.
//!
//! A tenant's filesystem is hostile input, so it never reaches the host's
//! kernel: nothing is mounted. The disk is exported over NBD on a private
//! socket ([`super::local::export_backup`]), shown as one plain file by
//! `nbdfuse` (libnbd's userspace client behind FUSE, read-only), and read
//! by `debugfs -c` (e2fsprogs' userspace ext2/3/4 reader, catastrophic mode:
//! read-only, bitmaps not trusted). A crafted image can at worst upset
//! `debugfs`, a process of this user, never the kernel. libguestfs would
//! also read xfs and partitions but boots an appliance VM per call; the
//! disk here is one ext filesystem without a partition table.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::Command;

use super::local::{export_backup, ExportRequest};
use crate::nbd::server::Endpoint;
use crate::Ekko;

/// Decoded chunks the short-lived export keeps.
const CACHE_BYTES: u64 = 64 << 20;
/// How long `nbdfuse` has to show the disk.
const FUSE_START: Duration = Duration::from_secs(20);

/// What to do with the backup's filesystem.
#[derive(Debug, Clone)]
pub enum FilesCommand {
    /// `ls -l` of a directory.
    List(String),
    /// Copy a file out to a new host file.
    Get { path: String, out: PathBuf },
}

/// Run `cmd` on disk `device` (or the only disk) of a backup; returns what
/// `debugfs` printed (the listing).
pub async fn files(
    ekko: &Ekko,
    backup_id: &str,
    device: Option<&str>,
    cmd: &FilesCommand,
    second_copy: bool,
) -> anyhow::Result<String> {
    // debugfs dumps into this process's private directory; the copy to
    // OUT is created here, exclusively (never through a link), mode 0600.
    let work = WorkDir::create()?;
    let dumped = work.0.join("dumped");
    let request = match cmd {
        FilesCommand::List(path) => format!("ls -l {}", quoted(path)?),
        FilesCommand::Get { path, out } => {
            anyhow::ensure!(
                std::fs::symlink_metadata(out).is_err(),
                "{} exists (never overwritten)",
                out.display()
            );
            let to = dumped
                .to_str()
                .ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", dumped.display()))?;
            format!("dump {} {}", quoted(path)?, quoted(to)?)
        }
    };
    let socket = work.0.join("export.sock");
    let mnt = work.0.join("disk");
    std::fs::create_dir(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
    let req = ExportRequest {
        backup_id: backup_id.to_string(),
        device: device.map(String::from),
        endpoint: Endpoint::Unix(socket.clone()),
        lifetime: None,
        cache_bytes: CACHE_BYTES,
        tls: None,
        second_copy,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready) = tokio::sync::oneshot::channel::<String>();
    let serving = export_backup(
        ekko,
        &req,
        async {
            let _ = stopped.await;
        },
        move |url| {
            let _ = ready_tx.send(url.to_string());
        },
    );
    let reading = async move {
        let url = ready
            .await
            .map_err(|_| anyhow::anyhow!("the export did not start"))?;
        let done = read_through_fuse(&url, &mnt, &request).await;
        let _ = stop.send(());
        done
    };
    let (served, read) = tokio::join!(serving, reading);
    // The export's own error says more than "did not start".
    served?;
    let printed = read?;
    if let FilesCommand::Get { out, .. } = cmd {
        anyhow::ensure!(dumped.exists(), "debugfs wrote nothing: {printed}");
        copy_out(&dumped, out)?;
    }
    Ok(printed)
}

/// A private (0700) directory for the socket and the mount point,
/// removed afterwards.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> anyhow::Result<WorkDir> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("ekko-files-{}", uuid::Uuid::new_v4()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "work directory not removed");
        }
    }
}

/// A debugfs argument in double quotes (its own quoting; a path holding a
/// quote or a line break cannot be given).
fn quoted(arg: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !arg.contains(['"', '\n', '\r']),
        "{arg:?}: quotes and line breaks are not supported"
    );
    Ok(format!("\"{arg}\""))
}

/// Show the export as `mnt/disk` with nbdfuse, run one debugfs request on
/// it, unmount.
async fn read_through_fuse(url: &str, mnt: &Path, request: &str) -> anyhow::Result<String> {
    let mut fuse = Command::new("nbdfuse")
        .arg("-r")
        .arg(mnt.join("disk"))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting nbdfuse (libnbd-bin)")?;
    let image = mnt.join("disk");
    let deadline = Instant::now() + FUSE_START;
    while !std::fs::metadata(&image).is_ok_and(|m| m.len() > 0) {
        if let Some(status) = fuse.try_wait()? {
            let err = match fuse.stderr.take() {
                Some(mut e) => {
                    let mut s = String::new();
                    let _ = tokio::io::AsyncReadExt::read_to_string(&mut e, &mut s).await;
                    s
                }
                None => String::new(),
            };
            anyhow::bail!("nbdfuse ended ({status}): {}", err.trim());
        }
        anyhow::ensure!(Instant::now() < deadline, "nbdfuse did not show the disk");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = Command::new("debugfs")
        .args(["-c", "-R", request])
        .arg(&image)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running debugfs (e2fsprogs)");
    unmount(mnt, &mut fuse).await;
    let out = out?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // debugfs exits 0 whatever happens; its complaints are on stderr,
    // after its banner and the catastrophic-mode notice.
    let complaints: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with("debugfs ") && !l.contains("catastrophic mode"))
        .map(String::from)
        .collect();
    anyhow::ensure!(
        out.status.success() && complaints.is_empty(),
        "debugfs {request:?}: {}",
        complaints.join("; ")
    );
    Ok(stdout)
}

/// Unmount (fusermount3 where installed, else umount, which needs root)
/// and let nbdfuse end; killed if it will not.
async fn unmount(mnt: &Path, fuse: &mut tokio::process::Child) {
    let fusermount = Command::new("fusermount3")
        .arg("-u")
        .arg(mnt)
        .status()
        .await;
    if !fusermount.is_ok_and(|s| s.success()) {
        let _ = Command::new("umount").arg(mnt).status().await;
    }
    if tokio::time::timeout(Duration::from_secs(10), fuse.wait())
        .await
        .is_err()
    {
        tracing::warn!(mount = %mnt.display(), "nbdfuse did not end; killed");
        let _ = fuse.kill().await;
        let _ = Command::new("umount").arg("-l").arg(mnt).status().await;
    }
}

/// Copy the dumped file to `out`: created exclusively (an existing name, a
/// link included, fails), mode 0600, synced; removed again on failure.
fn copy_out(from: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    let copied = std::fs::File::open(from)
        .and_then(|mut src| std::io::copy(&mut src, &mut dst))
        .and_then(|_| dst.sync_all());
    if let Err(e) = copied {
        let _ = std::fs::remove_file(out);
        return Err(e).with_context(|| format!("writing {}", out.display()));
    }
    Ok(())
}
