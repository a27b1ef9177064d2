//! Scratch space for point-in-time snapshots (the fleece overlays QEMU
//! writes the old data of blocks the guest overwrites during a backup):
//! what the filesystem has left, and a watchdog that cancels the backup
//! before the overlays outgrow `[backup] scratch_limit` or the filesystem.
//! A copy-before-write that fails would fail the guest's write; a
//! cancelled backup fails only the backup.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Leave this much free on the scratch filesystem, whatever the limit says.
pub const SCRATCH_MARGIN: u64 = 64 << 20;
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// The free bytes of the filesystem holding `path`.
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Bytes a (sparse) file really occupies.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// Whether `used` bytes of scratch files are too many.
pub fn exceeded(used: u64, free: u64, limit: u64) -> bool {
    (limit > 0 && used > limit) || free < SCRATCH_MARGIN
}

/// Watches scratch files; stops when dropped or stopped.
pub struct Watchdog(tokio::task::JoinHandle<()>);

impl Watchdog {
    /// Every 200 ms, sum what `files` occupy; when it passes `limit` (0: no
    /// limit) or `dir`'s filesystem runs low, raise `flags` and run
    /// `cancel` once.
    pub fn spawn(
        files: Vec<PathBuf>,
        dir: PathBuf,
        limit: u64,
        flags: Vec<Arc<AtomicBool>>,
        cancel: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Watchdog {
        Watchdog(tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                let used: u64 = files.iter().map(|f| allocated(f)).sum();
                let free = free_space(&dir).unwrap_or(0);
                if exceeded(used, free, limit) {
                    tracing::error!(
                        used,
                        free,
                        limit,
                        "scratch space exhausted: cancelling the backup"
                    );
                    for f in &flags {
                        f.store(true, Ordering::Relaxed);
                    }
                    cancel.await;
                    return;
                }
            }
        }))
    }

    pub fn stop(self) {
        self.0.abort();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        let plenty = 10 << 30;
        assert!(
            !exceeded(100 << 20, plenty, 0),
            "no limit: only free space counts"
        );
        assert!(exceeded(100 << 20, plenty, 50 << 20));
        assert!(!exceeded(40 << 20, plenty, 50 << 20));
        assert!(
            exceeded(0, SCRATCH_MARGIN - 1, 0),
            "the filesystem runs low"
        );
    }
}
