//! `ekko export`: a backup served read-only over NBD, read with QEMU's and
//! libnbd's own tools. On the embedded default (SQLite, local store) with
//! a real qemu-storage-daemon disk backed up fully and incrementally,
//! plain and encrypted: the export compares identical to the disk at
//! backup time, its map shows the zero chunks as holes, four clients copy
//! it at once, a damaged segment fails only the reads that need it, a
//! lifetime ends it and removes its socket, and a qcow2 overlay boots from
//! it without changing the backup.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::extract::Rng;
use crate::qsd::{identical, Qsd};

const MIB: u64 = 1 << 20;

fn ekko_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ekko"));
    for (k, _) in std::env::vars() {
        if k.starts_with("EKKO__") {
            c.env_remove(k);
        }
    }
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn url(socket: &Path) -> String {
    format!("nbd+unix:///?socket={}", socket.display())
}

/// An instance with one 64 MiB disk, backed up with the `ekko` command.
struct Site {
    dir: tempfile::TempDir,
    q: Qsd,
    conf: PathBuf,
    rng: Rng,
}

impl Site {
    fn start(seed: u64, encrypted: bool) -> Site {
        Site::start_with(seed, encrypted, None)
    }

    /// With `image` (a 64 MiB raw file) as the disk's contents.
    fn start_with(seed: u64, encrypted: bool, image: Option<&Path>) -> Site {
        Site::start_full(seed, encrypted, image, false)
    }

    /// [`Site::start_with`], and with `second_copy` a second store
    /// (`[replication] backend = local`, a directory of its own).
    fn start_full(seed: u64, encrypted: bool, image: Option<&Path>, second_copy: bool) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let qdir = dir.path().join("qsd");
        std::fs::create_dir_all(&qdir).unwrap();
        if let Some(image) = image {
            let (ok, msg) = run(Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(image)
                .arg(crate::qsd::image_path(&qdir, 0)));
            assert!(ok, "{msg}");
        }
        let q = Qsd::start(&qdir, &[64 * MIB]);
        let mut body = format!(
            "[DEFAULT]\nstate_path = {}\n",
            dir.path().join("state").display()
        );
        if second_copy {
            body.push_str(&format!(
                "[replication]\nbackend = local\n[replica_local_store]\npath = {}\n",
                dir.path().join("second").display()
            ));
        }
        if encrypted {
            let key = dir.path().join("master.key");
            std::fs::write(&key, ekko::crypto::MasterKey::generate_hex().unwrap()).unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            body.push_str(&format!(
                "[encryption]\nenabled = true\nmaster_key_file = {}\n",
                key.display()
            ));
        }
        let conf = dir.path().join("ekko.conf");
        std::fs::write(&conf, body).unwrap();
        let site = Site {
            dir,
            q,
            conf,
            rng: Rng::new(seed),
        };
        let (ok, msg) = site.ekko(&["init"]);
        assert!(ok, "{msg}");
        site
    }

    fn ekko(&self, args: &[&str]) -> (bool, String) {
        let out = ekko_bin()
            .arg("--config-file")
            .arg(&self.conf)
            .args(args)
            .output()
            .expect("ekko runs");
        (out.status.success(), text(&out))
    }

    fn write(&mut self, offset: u64, len: u64) {
        let data = self.rng.bytes(len as usize);
        self.q.write(0, offset, &data);
    }

    /// Back up; the new backup's id and the disk as it was, saved.
    fn backup(&self, name: &str) -> (String, PathBuf) {
        let qmp = self.q.qmp_socket.to_str().unwrap().to_string();
        let (ok, msg) = self.ekko(&[
            "backup",
            "--qmp-socket",
            &qmp,
            "--instance",
            "inst-1",
            "--project",
            "proj-a",
        ]);
        assert!(ok, "{msg}");
        let id = msg.split_whitespace().nth(1).unwrap().to_string();
        let reference = self.dir.path().join(format!("{name}.raw"));
        self.q.snapshot_to(0, &reference);
        (id, reference)
    }

    /// Start `ekko export` on a unix socket; returns once it serves.
    fn export(&self, id: &str, extra: &[&str]) -> Exporting {
        let socket = self.dir.path().join(format!("export-{id}.sock"));
        let child = ekko_bin()
            .arg("--config-file")
            .arg(&self.conf)
            .args(["export", id, "--socket", socket.to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut e = Exporting { child, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !e.socket.exists() {
            if let Ok(Some(status)) = e.child.try_wait() {
                panic!("ekko export ended: {status}: {}", e.output());
            }
            assert!(Instant::now() < deadline, "ekko export did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

struct Exporting {
    child: Child,
    socket: PathBuf,
}

impl Exporting {
    fn url(&self) -> String {
        url(&self.socket)
    }

    fn output(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_string(&mut s);
        }
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// SIGTERM; the export ends cleanly and its socket is gone.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = self.wait(Duration::from_secs(20));
        assert!(
            status.success(),
            "ekko export on SIGTERM: {}",
            self.output()
        );
        assert!(!self.socket.exists(), "socket removed on SIGTERM");
    }

    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("ekko export did not end: {}", self.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Exporting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("tool runs");
    (out.status.success(), text(&out))
}

/// `qemu-img compare` of the export against a raw file.
fn compares_identical(e: &Exporting, reference: &Path) -> bool {
    let (ok, msg) = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", &e.url()])
        .arg(reference));
    assert!(ok || msg.contains("differ"), "{msg}");
    ok
}

/// `qemu-img map` of the export: (start, length, data, zero) per range.
fn map(e: &Exporting) -> Vec<(u64, u64, bool, bool)> {
    let (ok, out) =
        run(Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", &e.url()]));
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{out}"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["start"].as_u64().unwrap(),
                r["length"].as_u64().unwrap(),
                r["data"].as_bool().unwrap(),
                r["zero"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// The ranges the map reports as data, coalesced.
fn data_ranges(m: &[(u64, u64, bool, bool)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(start, len, data, _) in m.iter().filter(|r| r.2) {
        let _ = data;
        match out.last_mut() {
            Some((s, l)) if *s + *l == start => *l += len,
            _ => out.push((start, len)),
        }
    }
    out
}

/// Full then incremental, each exported and compared; the map matches
/// what was written; for the plain one, four clients copy at once.
fn exports_bit_exact(encrypted: bool) {
    let mut s = Site::start(if encrypted { 21 } else { 20 }, encrypted);
    s.write(0, 8 * MIB);
    s.write(40 * MIB, MIB);
    let (full, ref1) = s.backup("full");
    s.write(20 * MIB, MIB);
    s.write(2 * MIB, 256 << 10);
    let (incr, ref2) = s.backup("incr");
    for (id, reference, data) in [
        (&full, &ref1, vec![(0, 8 * MIB), (40 * MIB, MIB)]),
        (
            &incr,
            &ref2,
            vec![(0, 8 * MIB), (20 * MIB, MIB), (40 * MIB, MIB)],
        ),
    ] {
        let e = s.export(id, &[]);
        assert!(
            compares_identical(&e, reference),
            "export of {id} is the disk"
        );
        assert_eq!(data_ranges(&map(&e)), data, "data exactly where written");
        let m = map(&e);
        assert!(
            m.iter().filter(|r| !r.2).all(|r| r.3),
            "every hole reads as zeroes: {m:?}"
        );
        e.stop();
    }
    if encrypted {
        return;
    }
    // Four clients at once: two qemu-img convert, two nbdcopy.
    let e = s.export(&incr, &["--cache", "4M"]);
    let outs: Vec<PathBuf> = (0..4).map(|i| s.path(&format!("copy{i}.raw"))).collect();
    let children: Vec<(String, Child)> = outs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            let mut cmd = if i % 2 == 0 {
                let mut c = Command::new("qemu-img");
                c.args(["convert", "-f", "raw", "-O", "raw", &e.url()])
                    .arg(out);
                c
            } else {
                let mut c = Command::new("nbdcopy");
                c.arg(e.url()).arg(out);
                c
            };
            let what = format!("{cmd:?}");
            (what, cmd.stderr(Stdio::piped()).spawn().unwrap())
        })
        .collect();
    for (what, c) in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{what}: {}", text(&out));
    }
    for out in &outs {
        assert!(identical(out, &ref2), "{} is the disk", out.display());
    }
    e.stop();
}

#[test]
fn export_of_full_and_incremental_backups_is_bit_exact() {
    exports_bit_exact(false);
}

#[test]
fn export_of_encrypted_backups_is_bit_exact() {
    exports_bit_exact(true);
}

/// Segment objects of the local store, oldest first.
fn segments(state: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.parent().is_some_and(|d| d.ends_with("segments")) {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(state, &mut out);
    out.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    out
}

/// A damaged then a deleted segment: the reads that need it fail (an
/// NBD error, never other bytes), reads elsewhere and other clients go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_segment_fails_only_the_reads_that_need_it() {
    let mut s = Site::start(22, false);
    s.write(0, 8 * MIB);
    let (_, _) = s.backup("full");
    let before = segments(&s.path("state"));
    s.write(20 * MIB, MIB);
    let (incr, reference) = s.backup("incr");
    let after = segments(&s.path("state"));
    // The largest new segment holds the new chunks (pages go apart).
    let segment = after
        .iter()
        .filter(|p| !before.contains(p))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("the incremental wrote a segment")
        .clone();
    assert!(
        std::fs::metadata(&segment).unwrap().len() >= MIB,
        "{segment:?}"
    );
    let disk = std::fs::read(&reference).unwrap();

    let e = s.export(&incr, &["--cache", "0"]);
    let c = ekko::nbd::NbdClient::connect_unix(&e.socket, "", &[])
        .await
        .unwrap();
    let good = c.read(0, 4 * MIB).await.unwrap();
    assert!(good[..] == disk[..(4 * MIB) as usize]);

    // Garbage over the middle of the segment: the chunks of 20 MiB.
    let mut bytes = std::fs::read(&segment).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 4096].fill(0xAA);
    std::fs::write(&segment, &bytes).unwrap();
    let failed = c.read(20 * MIB, MIB).await;
    assert!(
        matches!(failed, Err(ekko::nbd::NbdError::Server { errno: 5, .. })),
        "a damaged chunk is an EIO, never other bytes: {:?}",
        failed.map(|b| b.len())
    );
    let (ok, msg) = run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &e.url()])
        .arg(s.path("copy.raw")));
    assert!(!ok, "a whole copy fails: {msg}");
    // The same client and a new one still read elsewhere.
    let again = c.read(4 * MIB, 4 * MIB).await.unwrap();
    assert!(again[..] == disk[(4 * MIB) as usize..(8 * MIB) as usize]);
    let (ok, msg) =
        run(Command::new("qemu-io").args(["-r", "-f", "raw", "-c", "read 0 8M", &e.url()]));
    assert!(ok && !msg.contains("failed"), "{msg}");
    // `ekko verify` names the damage, and its exit status says so (4).
    let out = ekko_bin()
        .arg("--config-file")
        .arg(&s.conf)
        .args(["verify", &incr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));

    // The segment gone altogether: the same.
    std::fs::remove_file(&segment).unwrap();
    assert!(c.read(20 * MIB, 4096).await.is_err());
    let (ok, msg) =
        run(Command::new("qemu-io").args(["-r", "-f", "raw", "-c", "read 20M 64k", &e.url()]));
    assert!(!ok || msg.contains("failed"), "{msg}");
    let good = c.read(MIB, MIB).await.unwrap();
    assert!(good[..] == disk[MIB as usize..(2 * MIB) as usize]);
    c.disconnect().await.unwrap();
    e.stop();
}

#[test]
fn an_expired_export_ends_and_removes_its_socket() {
    let mut s = Site::start(23, false);
    s.write(0, MIB);
    let (id, reference) = s.backup("full");
    let mut e = s.export(&id, &["--lifetime", "3"]);
    assert!(compares_identical(&e, &reference));
    let status = e.wait(Duration::from_secs(30));
    assert!(status.success(), "{}", e.output());
    assert!(!e.socket.exists(), "the expired export's socket is gone");
    let (ok, _) = run(Command::new("qemu-img").args(["info", &e.url()]));
    assert!(!ok, "nothing serves there any more");

    // Over TCP on a port of its choosing, named in its first line.
    let mut child = ekko_bin()
        .arg("--config-file")
        .arg(&s.conf)
        .args(["export", &id, "--bind", "127.0.0.1:0", "--lifetime", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("nbd://127.0.0.1:"))
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let (ok, msg) = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", &url])
        .arg(&reference));
    assert!(ok, "{msg}");
    assert!(child.wait().unwrap().success());
    drop(stdout);

    // No TLS yet: an address other machines reach is refused.
    let o = ekko_bin()
        .arg("--config-file")
        .arg(&s.conf)
        .args(["export", &id, "--bind", "0.0.0.0:0", "--lifetime", "3"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("loopback"), "{err}");
}

/// Boot from a backup: a qcow2 overlay on the export takes the writes,
/// reads fall through, and the backup is unchanged.
#[test]
fn a_qcow2_overlay_boots_from_the_backup_and_leaves_it_unchanged() {
    let mut s = Site::start(24, false);
    s.write(0, 4 * MIB);
    let (id, reference) = s.backup("full");
    let e = s.export(&id, &[]);
    let overlay = s.path("overlay.qcow2");
    let (ok, msg) = run(Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-F", "raw", "-b", &e.url()])
        .arg(&overlay));
    assert!(ok, "{msg}");
    let ov = overlay.to_str().unwrap();
    let (ok, msg) = run(Command::new("qemu-io").args([
        "-f",
        "qcow2",
        "-c",
        "write -P 0x5a 1M 64k",
        "-c",
        "write -P 0x33 30M 4k",
        "-c",
        "read -P 0x5a 1M 64k",
        "-c",
        "read -P 0 50M 1M",
        ov,
    ]));
    assert!(
        ok && !msg.contains("failed") && !msg.contains("Pattern verification"),
        "{msg}"
    );
    // What the guest sees: the backup with its own writes on top.
    let seen = s.path("seen.raw");
    let (ok, msg) = run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw", ov])
        .arg(&seen));
    assert!(ok, "{msg}");
    let mut expected = std::fs::read(&reference).unwrap();
    expected[MIB as usize..(MIB + (64 << 10)) as usize].fill(0x5a);
    expected[(30 * MIB) as usize..(30 * MIB + 4096) as usize].fill(0x33);
    assert!(
        std::fs::read(&seen).unwrap() == expected,
        "overlay = backup + writes"
    );
    // The export (the backup) is unchanged.
    assert!(compares_identical(&e, &reference));
    e.stop();
    let (ok, msg) = s.ekko(&["verify", &id]);
    assert!(ok && msg.contains("0 damaged"), "{msg}");
}

/// File-level restore: a directory listing and a file's bytes come back
/// from a backup of a real ext4 filesystem, nothing mounted; and from its
/// second copy once the first store's data is gone.
#[test]
fn files_of_an_ext4_backup_are_listed_and_copied_out() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("root");
    std::fs::create_dir_all(root.join("data/sub")).unwrap();
    std::fs::write(root.join("hostname"), b"ekko-test\n").unwrap();
    let blob = Rng::new(25).bytes(300 << 10);
    std::fs::write(root.join("data/blob.bin"), &blob).unwrap();
    let fs = src.path().join("fs.raw");
    let (ok, msg) = run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&fs)
        .arg("64M"));
    assert!(ok, "{msg}");
    let s = Site::start_full(25, false, Some(&fs), true);
    let (id, _) = s.backup("ext4");

    let (ok, listing) = s.ekko(&["files", &id, "ls", "/data"]);
    assert!(ok, "{listing}");
    assert!(
        listing.contains("blob.bin") && listing.contains("sub") && listing.contains("307200"),
        "{listing}"
    );
    let out = s.path("blob.out");
    let (ok, msg) = s.ekko(&["files", &id, "get", "/data/blob.bin", out.to_str().unwrap()]);
    assert!(ok, "{msg}");
    assert!(std::fs::read(&out).unwrap() == blob, "the file's bytes");
    let host = s.path("hostname.out");
    let (ok, msg) = s.ekko(&["files", &id, "get", "/hostname", host.to_str().unwrap()]);
    assert!(ok, "{msg}");
    assert_eq!(std::fs::read(&host).unwrap(), b"ekko-test\n");

    // A missing file, an existing output: refused, nothing left behind.
    let none = s.path("none.out");
    let (ok, msg) = s.ekko(&["files", &id, "get", "/nope", none.to_str().unwrap()]);
    assert!(!ok && !none.exists(), "{msg}");
    let (ok, msg) = s.ekko(&["files", &id, "get", "/hostname", out.to_str().unwrap()]);
    assert!(!ok && msg.contains("never overwritten"), "{msg}");
    assert!(std::fs::read(&out).unwrap() == blob);

    // The second copy: replicated, then the first store's segments lost;
    // `--from-replica` lists and copies out the same files.
    let out = Command::new(env!("CARGO_BIN_EXE_ekko-manage"))
        .arg("--config-file")
        .arg(&s.conf)
        .args(["replication", "run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for segment in segments(&s.dir.path().join("state")) {
        std::fs::remove_file(segment).unwrap();
    }
    let lost = s.path("lost.out");
    let (ok, msg) = s.ekko(&[
        "files",
        &id,
        "get",
        "/data/blob.bin",
        lost.to_str().unwrap(),
    ]);
    assert!(
        !ok && !lost.exists(),
        "the first store's data is gone: {msg}"
    );
    let (ok, listing) = s.ekko(&["files", &id, "--from-replica", "ls", "/data"]);
    assert!(ok && listing.contains("blob.bin"), "{listing}");
    let second = s.path("second.out");
    let (ok, msg) = s.ekko(&[
        "files",
        &id,
        "--from-replica",
        "get",
        "/data/blob.bin",
        second.to_str().unwrap(),
    ]);
    assert!(ok, "{msg}");
    assert!(
        std::fs::read(&second).unwrap() == blob,
        "the second copy's bytes"
    );
}
