//! A restore into a file on this host: raw written in place (sparse: zero
//! chunks are never written), or qcow2 converted with `qemu-img` from a raw
//! scratch image beside it.
//!
//! Files are created through a [`TargetDir`] (see there): exclusively,
//! never through a link, mode 0600. A qcow2 restore first claims the final
//! name with an empty file, writes a raw scratch image
//! `.<name>.<restore id>.ekko-restore.raw`, converts it into
//! `.<name>.<restore id>.ekko-restore.qcow2` and renames that over its
//! claim: restores to `vm.qcow2` and `vm.img`, or two restores of one name,
//! never share a file. Discarding removes only the files this restore
//! created, and only while their names still hold them.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use super::restore::{RestoreTarget, TargetFormat};
use super::target_dir::{fd_path, FileId, TargetDir};
use super::EngineError;

/// A file being restored; see [`RestoreTarget`].
pub struct FileTarget {
    dir: Arc<TargetDir>,
    name: OsString,
    /// Where the data is written: the file itself (raw), or the raw
    /// scratch image a qcow2 is converted from.
    file: Arc<File>,
    /// The qcow2 scratch names; `None` for raw.
    scratch: Option<Scratch>,
    /// What [`discard`](RestoreTarget::discard) may remove.
    created: Mutex<RestoredFiles>,
}

/// The names a qcow2 restore works under before its file takes its name.
struct Scratch {
    raw: OsString,
    converted: OsString,
}

impl Scratch {
    /// Named from the whole target name and the restore's id: unique per
    /// target and per restore, and hidden from a plain `ls`.
    fn of(name: &OsStr, restore_id: &str) -> Scratch {
        let named = |ext: &str| {
            let mut s = OsString::from(".");
            s.push(name);
            s.push(format!(".{restore_id}.ekko-restore.{ext}"));
            s
        };
        Scratch {
            raw: named("raw"),
            converted: named("qcow2"),
        }
    }
}

/// The files a restore created and still owns, each with the file its name
/// held when created: all that abandoning the restore may remove. Kept by
/// the worker after a restore is reported, for a cancel that crossed the
/// report. Each file is held open (so its inode number is not reused
/// while it may be compared).
#[derive(Clone)]
pub struct RestoredFiles {
    dir: Arc<TargetDir>,
    entries: Vec<Created>,
}

#[derive(Clone)]
struct Created {
    name: OsString,
    id: FileId,
    _open: Arc<File>,
}

impl RestoredFiles {
    /// Remove every entry that still holds the file this restore created;
    /// a name that holds another file by now is left alone.
    pub fn remove(&mut self) {
        for Created { name, id, .. } in self.entries.drain(..) {
            let shown = self.dir.path().join(&name);
            match self.dir.remove_if(&name, id) {
                Ok(true) => {
                    tracing::info!(path = %shown.display(), "removed an abandoned restore's file")
                }
                Ok(false) => {
                    tracing::warn!(path = %shown.display(), "not removed: no longer the file this restore created")
                }
                Err(e) => {
                    tracing::warn!(path = %shown.display(), error = %e, "cannot remove an abandoned restore's file")
                }
            }
        }
        let _ = self.dir.sync();
    }

    fn add(&mut self, name: &OsStr, id: FileId, file: &Arc<File>) {
        self.entries.push(Created {
            name: name.to_os_string(),
            id,
            _open: file.clone(),
        });
    }

    fn forget(&mut self, name: &OsStr) {
        self.entries.retain(|c| c.name != name);
    }

    fn id(&self, name: &OsStr) -> Option<FileId> {
        self.entries.iter().find(|c| c.name == name).map(|c| c.id)
    }
}

/// Where a restore to `rel` below `restore_dir` goes: the directories on
/// the way opened without following a link (created when missing).
pub fn open_beneath(restore_dir: &Path, rel: &Path) -> Result<(TargetDir, OsString), EngineError> {
    let failed = |path: &Path| {
        let path = path.display().to_string();
        move |source| EngineError::Target { path, source }
    };
    let name = rel
        .file_name()
        .filter(|_| !rel.has_root())
        .ok_or_else(|| EngineError::Other(format!("{} names no file", rel.display())))?;
    std::fs::create_dir_all(restore_dir).map_err(failed(restore_dir))?;
    let root = TargetDir::open(restore_dir).map_err(failed(restore_dir))?;
    let parent = rel.parent().unwrap_or(Path::new(""));
    let dir = root.descend(parent).map_err(|source| {
        if super::target_dir::is_link_error(&source) {
            EngineError::TargetLink {
                path: restore_dir.join(parent).display().to_string(),
            }
        } else {
            failed(&restore_dir.join(parent))(source)
        }
    })?;
    Ok((dir, name.to_os_string()))
}

impl FileTarget {
    /// Create the file `name` in `dir` (or, for qcow2, claim it and create
    /// the raw scratch image) for a disk of `size` bytes. Of two restores
    /// to one name, the second fails here having created nothing.
    pub fn create(
        dir: Arc<TargetDir>,
        name: &OsStr,
        format: TargetFormat,
        size: u64,
        restore_id: &str,
    ) -> Result<FileTarget, EngineError> {
        let shown = |n: &OsStr| dir.path().join(n).display().to_string();
        let (file, id) = dir.create_new(name).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                EngineError::TargetExists { path: shown(name) }
            } else {
                EngineError::Target {
                    path: shown(name),
                    source,
                }
            }
        })?;
        let file = Arc::new(file);
        let mut claimed = RestoredFiles {
            dir: dir.clone(),
            entries: Vec::new(),
        };
        claimed.add(name, id, &file);
        let mut target = FileTarget {
            dir: dir.clone(),
            name: name.to_os_string(),
            file,
            scratch: None,
            created: Mutex::new(claimed),
        };
        let mut prepared = Ok(());
        if format == TargetFormat::Qcow2 {
            let scratch = Scratch::of(name, restore_id);
            prepared = match dir.create_new(&scratch.raw) {
                Ok((file, id)) => {
                    let file = Arc::new(file);
                    target.created().add(&scratch.raw, id, &file);
                    target.file = file;
                    target.scratch = Some(scratch);
                    Ok(())
                }
                Err(source) => Err(EngineError::Target {
                    path: shown(&scratch.raw),
                    source,
                }),
            };
        }
        prepared = prepared.and_then(|()| {
            target
                .file
                .set_len(size)
                .map_err(|source| EngineError::Target {
                    path: target.describe(),
                    source,
                })
        });
        match prepared {
            Ok(()) => Ok(target),
            Err(e) => {
                target.discard();
                Err(e)
            }
        }
    }

    /// Create the file at `path` (its directory as the caller names it,
    /// links included; the file itself new and not a link): the command
    /// line's `ekko restore --output`.
    pub fn create_at(
        path: &Path,
        format: TargetFormat,
        size: u64,
    ) -> Result<FileTarget, EngineError> {
        let name = path
            .file_name()
            .ok_or_else(|| EngineError::Other(format!("{} names no file", path.display())))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = TargetDir::open(parent).map_err(|source| EngineError::Target {
            path: parent.display().to_string(),
            source,
        })?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        FileTarget::create(Arc::new(dir), name, format, size, &id)
    }

    /// What this restore created, to remove later (see [`RestoredFiles`]).
    pub fn files(&self) -> RestoredFiles {
        self.created().clone()
    }

    fn created(&self) -> std::sync::MutexGuard<'_, RestoredFiles> {
        self.created.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn io_error(&self, name: &OsStr) -> impl FnOnce(std::io::Error) -> EngineError {
        let path = self.dir.path().join(name).display().to_string();
        move |source| EngineError::Target { path, source }
    }

    /// Convert the raw scratch image into a qcow2 and give it the file's
    /// name, in place of this restore's claim (and of nothing else).
    async fn convert(&self, scratch: &Scratch) -> Result<(), EngineError> {
        let (out, out_id) = self
            .dir
            .create_new(&scratch.converted)
            .map_err(self.io_error(&scratch.converted))?;
        let out = Arc::new(out);
        self.created().add(&scratch.converted, out_id, &out);
        // qemu-img opens both files through this process's descriptors:
        // exactly the files created here, whatever their names hold now.
        // Async and killed on drop: a cancelled restore stops converting.
        let ran = tokio::process::Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(fd_path(&self.file))
            .arg(fd_path(&out))
            .kill_on_drop(true)
            .output()
            .await;
        // The raw image has served, whatever the outcome.
        let raw_id = self.created().id(&scratch.raw);
        if let Some(id) = raw_id {
            if self.dir.remove_if(&scratch.raw, id).unwrap_or(false) {
                self.created().forget(&scratch.raw);
            }
        }
        let ran = ran.map_err(|source| EngineError::Target {
            path: self.describe(),
            source,
        })?;
        if !ran.status.success() {
            return Err(EngineError::Other(format!(
                "qemu-img convert: {}",
                String::from_utf8_lossy(&ran.stderr)
            )));
        }
        out.sync_all().map_err(self.io_error(&scratch.converted))?;
        let claim = self.created().id(&self.name);
        let now = self
            .dir
            .id_of(&self.name)
            .map_err(self.io_error(&self.name))?;
        if claim.is_none() || now != claim {
            return Err(EngineError::Other(format!(
                "{} was removed or replaced during the restore",
                self.describe()
            )));
        }
        self.dir
            .rename(&scratch.converted, &self.name)
            .map_err(self.io_error(&self.name))?;
        let mut created = self.created();
        created.forget(&scratch.converted);
        created.forget(&self.name);
        created.add(&self.name, out_id, &out);
        Ok(())
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
        let data = self
            .scratch
            .as_ref()
            .map_or(self.name.as_os_str(), |s| s.raw.as_os_str());
        self.file.sync_all().map_err(self.io_error(data))?;
        if let Some(scratch) = &self.scratch {
            self.convert(scratch).await?;
        }
        self.dir.sync().map_err(|source| EngineError::Target {
            path: self.dir.path().display().to_string(),
            source,
        })
    }

    fn discard(&self) {
        self.created().remove();
    }

    fn describe(&self) -> String {
        self.dir.path().join(&self.name).display().to_string()
    }
}

/// Restore a record into a new file at `path` (see
/// [`super::restore::restore`]; never over an existing file, never through
/// a link, mode 0600): a damaged record leaves the partial file for
/// inspection.
pub async fn restore_to_file(
    reader: &super::reader::RecordReader,
    record: &super::PreviousRecord,
    path: &Path,
    format: TargetFormat,
    progress: Option<&super::Progress>,
) -> Result<super::restore::RestoreStats, EngineError> {
    // Refused before the file exists, not half-way through it.
    super::restore::refuse_write_keys(reader)?;
    let target = Arc::new(FileTarget::create_at(path, format, record.disk_size)?);
    super::restore::restore(reader, record, target, progress).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    #[tokio::test]
    async fn one_name_one_restore_and_discard_removes_only_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("restores");
        let (dir, name) = open_beneath(&root, Path::new("a/vm.img")).unwrap();
        let dir = Arc::new(dir);
        let raw = TargetFormat::Raw;
        let first = FileTarget::create(dir.clone(), &name, raw, 1 << 20, "r1").unwrap();
        let second = FileTarget::create(dir.clone(), &name, raw, 1 << 20, "r2");
        assert!(matches!(second, Err(EngineError::TargetExists { .. })));
        first.write_at(4096, b"first").unwrap();
        first.finish().await.unwrap();
        let file = root.join("a/vm.img");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 1 << 20);

        // A file put in its place is not the restore's to remove.
        let mut files = first.files();
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, b"someone else's").unwrap();
        files.remove();
        first.discard();
        assert_eq!(std::fs::read(&file).unwrap(), b"someone else's");
        std::fs::remove_file(&file).unwrap();

        // Its own file is removed, by either handle.
        let t = FileTarget::create(dir.clone(), &name, raw, 1 << 20, "r3").unwrap();
        t.files().remove();
        assert!(names(&root.join("a")).is_empty());
    }

    #[test]
    fn qcow2_scratch_names_hold_the_whole_name_and_the_restore() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Arc::new(TargetDir::open(tmp.path()).unwrap());
        let q = TargetFormat::Qcow2;
        let a = FileTarget::create(dir.clone(), OsStr::new("vm.qcow2"), q, 4096, "r1").unwrap();
        let b = FileTarget::create(dir.clone(), OsStr::new("vm.img"), q, 4096, "r2").unwrap();
        assert_eq!(
            names(tmp.path()),
            [
                ".vm.img.r2.ekko-restore.raw",
                ".vm.qcow2.r1.ekko-restore.raw",
                "vm.img",
                "vm.qcow2"
            ]
        );
        a.discard();
        assert_eq!(names(tmp.path()), [".vm.img.r2.ekko-restore.raw", "vm.img"]);
        b.discard();
        assert!(names(tmp.path()).is_empty());
        // A claimed name whose scratch cannot be created leaves nothing.
        std::fs::write(tmp.path().join(".c.r3.ekko-restore.raw"), b"").unwrap();
        let c = FileTarget::create(dir, OsStr::new("c"), q, 4096, "r3");
        assert!(c.is_err());
        assert_eq!(names(tmp.path()), [".c.r3.ekko-restore.raw"]);
    }

    #[test]
    fn links_under_the_restore_directory_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("restores"), tmp.path().join("outside"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(outside.join("x"), root.join("x")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("d")).unwrap();
        let (dir, name) = open_beneath(&root, Path::new("x")).unwrap();
        let x = FileTarget::create(Arc::new(dir), &name, TargetFormat::Raw, 4096, "r1");
        assert!(matches!(x, Err(EngineError::TargetExists { .. })));
        for rel in ["d/y", "d/sub/z"] {
            let refused = open_beneath(&root, Path::new(rel));
            assert!(
                matches!(refused, Err(EngineError::TargetLink { .. })),
                "{rel}"
            );
        }
        assert!(names(&outside).is_empty());
    }
}
