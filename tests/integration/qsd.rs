//! A qemu-storage-daemon playing the running instance: qcow2 disks with a
//! QMP monitor, each disk also exported to the test through FUSE as a plain
//! file (`guest_path`), so the test writes like a guest while the worker
//! starts its own NBD server exactly as in production.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Qsd {
    pub dir: PathBuf,
    pub qmp_socket: PathBuf,
    pub disks: Vec<(String, u64)>,
    child: Option<Child>,
}

pub fn image_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("disk{i}.qcow2"))
}

impl Qsd {
    /// Create the images (if missing) and start the daemon.
    pub fn start(dir: &Path, sizes: &[u64]) -> Qsd {
        let disks: Vec<(String, u64)> = sizes
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("disk{i}"), *s))
            .collect();
        for (i, (_, size)) in disks.iter().enumerate() {
            let img = image_path(dir, i);
            if !img.exists() {
                let st = Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&img)
                    .arg(size.to_string())
                    .status()
                    .expect("qemu-img");
                assert!(st.success());
            }
        }
        let mut q = Qsd {
            dir: dir.to_path_buf(),
            qmp_socket: dir.join("qmp.sock"),
            disks,
            child: None,
        };
        q.spawn();
        q
    }

    pub fn guest_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("guest{i}.raw"))
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.qmp_socket);
        let mut cmd = Command::new("qemu-storage-daemon");
        for (i, _) in self.disks.iter().enumerate() {
            let guest = self.guest_path(i);
            std::fs::write(&guest, b"").unwrap();
            cmd.arg("--blockdev").arg(format!(
                "driver=file,node-name=file{i},filename={},cache.direct=off,aio=threads,discard=unmap",
                image_path(&self.dir, i).display()
            ));
            cmd.arg("--blockdev").arg(format!(
                "driver=qcow2,node-name=disk{i},file=file{i},discard=unmap"
            ));
            cmd.arg("--export").arg(format!(
                "type=fuse,id=fuse{i},node-name=disk{i},mountpoint={},writable=on",
                guest.display()
            ));
        }
        cmd.arg("--chardev")
            .arg(format!(
                "socket,path={},server=on,wait=off,id=qmp0",
                self.qmp_socket.display()
            ))
            .arg("--monitor")
            .arg("chardev=qmp0")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.child = Some(cmd.spawn().expect("qemu-storage-daemon starts"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(self.qmp_socket.exists() && self.fuse_ready()) {
            assert!(
                Instant::now() < deadline,
                "qemu-storage-daemon did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn fuse_ready(&self) -> bool {
        self.disks.iter().enumerate().all(|(i, (_, size))| {
            std::fs::metadata(self.guest_path(i))
                .map(|m| m.len() == *size)
                .unwrap_or(false)
        })
    }

    /// Stop cleanly (SIGTERM: persistent bitmaps are written to the images).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// Die like a crashed QEMU: bitmaps are not written back.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The FUSE mounts of a killed daemon stay behind until unmounted.
        for i in 0..self.disks.len() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.guest_path(i))
                .status();
        }
    }

    pub fn restart(&mut self) {
        self.spawn();
    }

    // ---- the guest's writes, through the FUSE export ----

    pub fn write(&self, disk: usize, offset: u64, data: &[u8]) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.guest_path(disk))
            .unwrap();
        f.write_all_at(data, offset).unwrap();
        f.sync_data().unwrap();
    }

    fn fallocate(&self, disk: usize, mode: i32, offset: u64, len: u64) {
        use std::os::unix::io::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.guest_path(disk))
            .unwrap();
        // SAFETY: a valid open file descriptor and plain integer arguments.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) };
        assert_eq!(
            rc,
            0,
            "fallocate(mode {mode:#x}, {offset}, {len}): {}",
            std::io::Error::last_os_error()
        );
    }

    pub fn write_zeroes(&self, disk: usize, offset: u64, len: u64) {
        self.fallocate(disk, libc::FALLOC_FL_ZERO_RANGE, offset, len);
    }

    pub fn discard(&self, disk: usize, offset: u64, len: u64) {
        self.fallocate(
            disk,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        );
    }

    /// The guest-visible disk now, as a raw file (for comparisons).
    pub fn snapshot_to(&self, disk: usize, out: &Path) {
        std::fs::copy(self.guest_path(disk), out).unwrap();
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `qemu-img compare` of two raw images.
pub fn identical(a: &Path, b: &Path) -> bool {
    let out = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .output()
        .expect("qemu-img compare");
    out.status.success()
}
