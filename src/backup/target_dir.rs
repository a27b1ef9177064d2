//! A directory restores create files in, held open: every name is resolved
//! against the handle (`openat`, `mkdirat`, `renameat`, `unlinkat`), never
//! as a path string. A restore runs as the worker's user (root on a
//! compute host) in a directory others may have written to, so:
//!
//! * a file is created with `O_CREAT|O_EXCL|O_NOFOLLOW`: any existing
//!   entry, a dangling link included, is refused, and of two restores to
//!   one name exactly one creates it;
//! * the directories below a restore directory are opened one by one with
//!   `O_NOFOLLOW|O_DIRECTORY`, so a link anywhere on the way is refused
//!   (the restore directory itself is the operator's path and is taken as
//!   configured, links included);
//! * a file is removed only while its name still holds the file this
//!   process created (device and inode compared just before `unlinkat`;
//!   the creator keeps the file open until then, so its inode number
//!   cannot be reused by another file): whoever lost a race, or replaced
//!   the file since, keeps theirs.
//!
//! Restored files are mode 0600: they hold a tenant's disk.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// A restored file is readable and writable by its owner only.
const FILE_MODE: libc::c_uint = 0o600;
/// Directories a restore creates below the restore directory.
const DIR_MODE: libc::mode_t = 0o750;

/// Which file a name held when this process created it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub fn of(file: &File) -> io::Result<FileId> {
        let m = file.metadata()?;
        Ok(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// An open directory; see the module documentation.
#[derive(Debug)]
pub struct TargetDir {
    fd: OwnedFd,
    /// Where it was when opened: for messages and logs only.
    path: PathBuf,
}

/// `true` for the errors a link (or a file) in place of a directory gives
/// under `O_NOFOLLOW|O_DIRECTORY`.
pub fn is_link_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR))
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') || bytes == b"." || bytes == b".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    CString::new(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// `openat(2)`, the result owned.
fn open_at(dir: libc::c_int, name: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the mode is read only with O_CREAT.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, FILE_MODE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl TargetDir {
    /// The directory at `path` as the operator configured or named it.
    pub fn open(path: &Path) -> io::Result<TargetDir> {
        let fd = open_at(
            libc::AT_FDCWD,
            &c_path(path)?,
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?;
        Ok(TargetDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The directory `rel` below this one: each component created (0750)
    /// when missing and opened without following a link. `rel` holds
    /// plain names only (no `..`, not absolute); empty is this directory.
    pub fn descend(&self, rel: &Path) -> io::Result<TargetDir> {
        let mut at = TargetDir {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        };
        for c in rel.components() {
            let Component::Normal(name) = c else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a relative path of plain names", rel.display()),
                ));
            };
            let c = c_name(name)?;
            // SAFETY: `c` is NUL-terminated and `at.fd` an open directory.
            if unsafe { libc::mkdirat(at.fd.as_raw_fd(), c.as_ptr(), DIR_MODE) } != 0 {
                let e = io::Error::last_os_error();
                // An existing name (a link included) is checked by the open.
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
            }
            let fd = open_at(
                at.fd.as_raw_fd(),
                &c,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            )?;
            at = TargetDir {
                fd,
                path: at.path.join(name),
            };
        }
        Ok(at)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Create `name` here, exclusively (an existing entry, a dangling link
    /// included, fails with `AlreadyExists`) and without following a link,
    /// mode 0600, open for writing.
    pub fn create_new(&self, name: &OsStr) -> io::Result<(File, FileId)> {
        let fd = open_at(
            self.fd.as_raw_fd(),
            &c_name(name)?,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
        )?;
        let file = File::from(fd);
        let id = FileId::of(&file)?;
        Ok((file, id))
    }

    /// The file `name` holds now (the entry itself: a link is not
    /// followed); `None` when there is no such entry.
    pub fn id_of(&self, name: &OsStr) -> io::Result<Option<FileId>> {
        let c = c_name(name)?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `c` is NUL-terminated and `st` a valid out-pointer.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::NotFound => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: fstatat succeeded, so it filled `st`.
        let st = unsafe { st.assume_init() };
        Ok(Some(FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        }))
    }

    /// Give `from`'s file the name `to`, replacing what `to` held (both in
    /// this directory; `renameat` acts on the entries, never on a link's
    /// target).
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let (f, t) = (c_name(from)?, c_name(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: both names are NUL-terminated; `fd` is an open directory.
        if unsafe { libc::renameat(fd, f.as_ptr(), fd, t.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Remove `name` if it still holds the file `id`; whatever else is
    /// there now is left alone. `Ok(false)` when it was not removed.
    pub fn remove_if(&self, name: &OsStr, id: FileId) -> io::Result<bool> {
        if self.id_of(name)? != Some(id) {
            return Ok(false);
        }
        let c = c_name(name)?;
        // SAFETY: `c` is NUL-terminated; `fd` is an open directory.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::NotFound => Ok(false),
                _ => Err(e),
            };
        }
        Ok(true)
    }

    /// Make the entries created, renamed and removed here durable.
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: a plain syscall on an open descriptor.
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A path by which another process (qemu-img) opens exactly `file`,
/// whatever name it has by then: this process's descriptor in `/proc`.
/// Valid while `file` stays open.
pub fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        file.as_raw_fd()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn files_are_new_private_and_never_reached_through_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let dir = TargetDir::open(&root).unwrap();

        let below = dir.descend(Path::new("a/b")).unwrap();
        assert_eq!(mode(&root.join("a")), 0o750);
        assert_eq!(below.path(), root.join("a/b"));
        // Held open, as a restore does: its inode cannot be reused.
        let (_held, id) = below.create_new(OsStr::new("f")).unwrap();
        assert_eq!(mode(&root.join("a/b/f")), 0o600);
        let again = below.create_new(OsStr::new("f")).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);

        // A dangling link is an existing entry.
        std::os::unix::fs::symlink(outside.join("x"), root.join("x")).unwrap();
        let e = dir.create_new(OsStr::new("x")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        // A linked directory, or a file, on the way is refused.
        std::os::unix::fs::symlink(&outside, root.join("d")).unwrap();
        for rel in ["d", "d/y", "a/b/f/z"] {
            let e = dir.descend(Path::new(rel)).unwrap_err();
            assert!(is_link_error(&e), "{rel}: {e}");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        for bad in ["../up", "/abs"] {
            assert!(dir.descend(Path::new(bad)).is_err(), "{bad}");
        }
        for bad in ["", ".", "..", "a/b"] {
            assert!(dir.create_new(OsStr::new(bad)).is_err(), "{bad:?}");
        }

        // Removal checks the file is still the one created.
        assert_eq!(below.id_of(OsStr::new("f")).unwrap(), Some(id));
        std::fs::remove_file(root.join("a/b/f")).unwrap();
        std::fs::write(root.join("a/b/f"), b"someone else's").unwrap();
        assert!(!below.remove_if(OsStr::new("f"), id).unwrap());
        assert_eq!(
            std::fs::read(root.join("a/b/f")).unwrap(),
            b"someone else's"
        );
        let (_, g) = below.create_new(OsStr::new("g")).unwrap();
        assert!(below.remove_if(OsStr::new("g"), g).unwrap());
        assert_eq!(below.id_of(OsStr::new("g")).unwrap(), None);
        assert!(!below.remove_if(OsStr::new("g"), g).unwrap());
    }

    #[test]
    fn a_rename_moves_the_entry_and_fd_paths_reach_the_file() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let dir = TargetDir::open(tmp.path()).unwrap();
        let (mut f, id) = dir.create_new(OsStr::new("scratch")).unwrap();
        f.write_all(b"data").unwrap();
        assert_eq!(std::fs::read(fd_path(&f)).unwrap(), b"data");
        dir.create_new(OsStr::new("final")).unwrap();
        dir.rename(OsStr::new("scratch"), OsStr::new("final"))
            .unwrap();
        assert_eq!(dir.id_of(OsStr::new("final")).unwrap(), Some(id));
        assert_eq!(dir.id_of(OsStr::new("scratch")).unwrap(), None);
        dir.sync().unwrap();
    }
}
