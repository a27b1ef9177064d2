//! A restore into a file on this host: raw written in place (sparse: zero
//! chunks are never written), or qcow2 converted with `qemu-img` from a raw
//! scratch image beside it.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::restore::{RestoreTarget, TargetFormat};
use super::EngineError;

/// A file being restored; see [`RestoreTarget`].
pub struct FileTarget {
    path: PathBuf,
    /// Where the data is written: `path` for raw, a scratch image for qcow2.
    raw_path: PathBuf,
    format: TargetFormat,
    file: std::fs::File,
}

/// Where a restore to `path` in `format` writes before its final file:
/// qcow2 is converted from a raw image beside it. Whoever abandons a
/// restore removes this too.
pub fn scratch_path(path: &Path, format: TargetFormat) -> Option<PathBuf> {
    match format {
        TargetFormat::Raw => None,
        TargetFormat::Qcow2 => Some(path.with_extension("ekko-restore.raw")),
    }
}

impl FileTarget {
    /// Create the file (or the qcow2's raw scratch image) for a disk of
    /// `size` bytes.
    pub fn create(path: &Path, format: TargetFormat, size: u64) -> Result<FileTarget, EngineError> {
        let raw_path = scratch_path(path, format).unwrap_or_else(|| path.to_path_buf());
        let failed = |source| EngineError::Target {
            path: raw_path.display().to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&raw_path)
            .map_err(failed)?;
        file.set_len(size).map_err(failed)?;
        Ok(FileTarget {
            path: path.to_path_buf(),
            raw_path,
            format,
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Remove what a restore to `path` in `format` wrote: the target and, for
/// qcow2, the raw image it converts from.
pub fn discard_files(path: &Path, format: TargetFormat) {
    let scratch = scratch_path(path, format);
    for p in std::iter::once(path).chain(scratch.as_deref()) {
        match std::fs::remove_file(p) {
            Ok(()) => tracing::info!(path = %p.display(), "removed an abandoned restore's file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove an abandoned restore's file")
            }
        }
    }
}

#[async_trait::async_trait]
impl RestoreTarget for FileTarget {
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    /// Start writing back what was just written (without waiting), so the
    /// disk works while later ranges are fetched and the final fsync finds
    /// little left to do.
    fn written(&self, mut written: Vec<(u64, u64)>) {
        use std::os::fd::AsRawFd;
        written.sort_unstable();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (off, len) in written {
            match runs.last_mut() {
                Some(r) if r.0 + r.1 == off => r.1 += len,
                _ => runs.push((off, len)),
            }
        }
        for (off, len) in runs {
            // SAFETY: a plain syscall on an open descriptor; a failure only
            // means the final fsync does the work.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    off as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
    }

    async fn finish(&self) -> Result<(), EngineError> {
        self.file.sync_all().map_err(|source| EngineError::Target {
            path: self.raw_path.display().to_string(),
            source,
        })?;
        if self.format == TargetFormat::Qcow2 {
            // Async and killed on drop: a cancelled restore stops converting.
            let out = tokio::process::Command::new("qemu-img")
                .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
                .arg(&self.raw_path)
                .arg(&self.path)
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|source| EngineError::Target {
                    path: self.path.display().to_string(),
                    source,
                })?;
            let _ = std::fs::remove_file(&self.raw_path);
            if !out.status.success() {
                return Err(EngineError::Other(format!(
                    "qemu-img convert: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        Ok(())
    }

    fn discard(&self) {
        discard_files(&self.path, self.format);
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Restore a record into a new file at `path` (see
/// [`super::restore::restore`]): a damaged record leaves the partial file
/// for inspection.
pub async fn restore_to_file(
    reader: &super::reader::RecordReader,
    record: &super::PreviousRecord,
    path: &Path,
    format: TargetFormat,
    progress: Option<&super::Progress>,
) -> Result<super::restore::RestoreStats, EngineError> {
    // Refused before the file exists, not half-way through it.
    super::restore::refuse_write_keys(reader)?;
    let target = std::sync::Arc::new(FileTarget::create(path, format, record.disk_size)?);
    super::restore::restore(reader, record, target, progress).await
}
