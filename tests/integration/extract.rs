//! Incremental extraction from a live qemu-storage-daemon: full backup then
//! incrementals while the "guest" writes, write-zeroes and discards (also
//! during the backup); two disks in one transaction; faults; QEMU crashes.
//! Every backup is checked by rebuilding the disk from the extracted extents
//! and comparing it with `qemu-img compare` against the point-in-time export
//! read by QEMU's own NBD client.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ekko::extract::pull::{DiskRequest, PullBackup, PullOptions};
use ekko::extract::{intersect, subtract, DiskSnapshot, ExtractError, FullReason};
use ekko::qmp::commands as cmd;
use ekko::qmp::QmpClient;
use futures::StreamExt;

use crate::qsd::{identical, Qsd};

const MIB: u64 = 1 << 20;
const DISK: u64 = 64 * MIB;

/// A small deterministic PRNG (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

pub fn options(dir: &Path, backup_id: &str) -> PullOptions {
    PullOptions {
        backup_id: backup_id.to_string(),
        scratch_dir: dir.join("scratch"),
        scratch_limit: 0,
        granularity: 65536,
        requests_in_flight: 8,
        read_rate_limit: 0,
        qmp_timeout: Duration::from_secs(30),
        agent_socket: None,
        agent_timeout: Duration::from_secs(5),
        existing_nbd_socket: None,
        instance_key: "test".into(),
    }
}

pub async fn connect(q: &Qsd) -> Arc<QmpClient> {
    Arc::new(
        QmpClient::connect(&q.qmp_socket, Duration::from_secs(10))
            .await
            .expect("QMP"),
    )
}

/// What the catalog would remember about a disk after a committed backup.
#[derive(Clone, Default)]
pub struct Committed {
    pub bitmap: Option<String>,
    pub size: Option<u64>,
}

pub fn request(i: usize, c: &Committed) -> DiskRequest {
    DiskRequest {
        device: format!("vd{}", (b'a' + i as u8) as char),
        node: format!("disk{i}"),
        expected_bitmap: c.bitmap.clone(),
        expected_size: c.size,
        force_full: false,
    }
}

/// Apply what the snapshot says changed onto `recon` (a raw file).
async fn apply(snap: &dyn DiskSnapshot, recon: &Path) -> Result<u64, ExtractError> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(recon)
        .unwrap();
    f.set_len(snap.size()).unwrap();
    let zero = intersect(snap.changed(), snap.zeros());
    for (off, len) in &zero {
        f.write_all_at(&vec![0u8; *len as usize], *off).unwrap();
    }
    let data = subtract(snap.changed(), &zero);
    let mut read = 0;
    let mut stream = snap.read_ranges(data);
    while let Some(piece) = stream.next().await {
        let (off, bytes) = piece?;
        f.write_all_at(&bytes, off).unwrap();
        read += bytes.len() as u64;
    }
    Ok(read)
}

/// The point-in-time view as QEMU's own NBD client reads it.
fn reference(backup: &PullBackup, i: usize, out: &Path) {
    let st = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "raw"])
        .arg(backup.nbd_uri(i))
        .arg(out)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img convert from the export");
}

fn guest_ops(q: &Qsd, disk: usize, rng: &mut Rng, n: usize) {
    for _ in 0..n {
        let len = (4096 + rng.below(MIB)) & !4095;
        let off = rng.below(DISK - len) & !4095;
        match rng.below(10) {
            0 => q.write_zeroes(disk, off, len),
            // Guests discard whole clusters (fstrim follows the discard granularity).
            1 if len >= 65536 => q.discard(disk, off & !65535, len & !65535),
            1 => q.write_zeroes(disk, off, len),
            _ => q.write(disk, off, &rng.bytes(len as usize)),
        }
    }
}

fn bitmaps(nodes: &[cmd::BlockNode], node: &str) -> Vec<cmd::BitmapInfo> {
    nodes
        .iter()
        .find(|n| n.node_name == node)
        .map(|n| {
            n.bitmaps
                .iter()
                .filter(|b| b.name.is_some())
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn temp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ekko-extract")
        .tempdir()
        .unwrap()
}

/// Run one backup of disk 0 into `recon`, check it, commit it.
async fn backup_and_check(
    q: &Qsd,
    qmp: &Arc<QmpClient>,
    dir: &Path,
    c: &mut Committed,
    recon: &Path,
) -> (Option<FullReason>, u64) {
    let id = uuid::Uuid::new_v4().to_string();
    let b = PullBackup::begin(qmp.clone(), &[request(0, c)], options(dir, &id))
        .await
        .expect("begin");
    let reason = b.disks[0].full_reason().cloned();
    let read = apply(&b.disks[0], recon).await.expect("read");
    let reference_path = dir.join("ref.raw");
    reference(&b, 0, &reference_path);
    assert!(
        identical(recon, &reference_path),
        "rebuilt disk differs from the backup instant"
    );
    let new = b.disks[0].new_bitmap.clone();
    b.commit().await.expect("commit");
    *c = Committed {
        bitmap: Some(new),
        size: Some(q.disks[0].1),
    };
    (reason, read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_then_incrementals_rebuild_every_backup_point() {
    let dir = temp();
    let q = Qsd::start(dir.path(), &[DISK]);
    let qmp = connect(&q).await;
    let mut rng = Rng::new(1);
    q.write(0, 0, &rng.bytes(40 * MIB as usize));
    let recon = dir.path().join("recon.raw");
    let mut c = Committed::default();

    let (reason, read) = backup_and_check(&q, &qmp, dir.path(), &mut c, &recon).await;
    assert_eq!(reason, Some(FullReason::NoBitmap));
    assert!(
        read <= 41 * MIB,
        "the unallocated tail costs no read ({read})"
    );

    for round in 0..3 {
        guest_ops(&q, 0, &mut rng, 25);
        let (reason, read) = backup_and_check(&q, &qmp, dir.path(), &mut c, &recon).await;
        assert_eq!(reason, None, "round {round} is incremental");
        assert!(
            read < DISK / 2,
            "incremental reads only what changed ({read})"
        );
        let now = dir.path().join("guest-now.raw");
        q.snapshot_to(0, &now);
        assert!(
            identical(&recon, &now),
            "quiescent guest equals the rebuilt disk"
        );
    }

    // Writes during the backup go to the next one, not this one.
    let id = uuid::Uuid::new_v4().to_string();
    let b = PullBackup::begin(qmp.clone(), &[request(0, &c)], options(dir.path(), &id))
        .await
        .unwrap();
    let before = dir.path().join("before.raw");
    q.snapshot_to(0, &before);
    let late = rng.bytes(3 * MIB as usize);
    q.write(0, 10 * MIB, &late);
    q.write_zeroes(0, 20 * MIB, 2 * MIB);
    apply(&b.disks[0], &recon).await.unwrap();
    assert!(
        identical(&recon, &before),
        "the backup is the disk at its instant"
    );
    let new = b.disks[0].new_bitmap.clone();
    b.commit().await.unwrap();
    c = Committed {
        bitmap: Some(new),
        size: Some(DISK),
    };
    let (reason, _) = backup_and_check(&q, &qmp, dir.path(), &mut c, &recon).await;
    assert_eq!(reason, None);
    let now = dir.path().join("guest-now.raw");
    q.snapshot_to(0, &now);
    assert!(
        identical(&recon, &now),
        "the writes made during the backup are in the next one"
    );
    let nodes = cmd::block_nodes(&qmp).await.unwrap();
    assert_eq!(
        bitmaps(&nodes, "disk0").len(),
        1,
        "one bitmap per disk between backups"
    );
    assert!(
        !nodes.iter().any(|n| n.node_name.starts_with("ekko-fl")),
        "no fleece node left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_disks_are_backed_up_at_one_instant() {
    let dir = temp();
    let q = Arc::new(Qsd::start(dir.path(), &[DISK, DISK]));
    let qmp = connect(&q).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Write counter k to disk 0, then to disk 1, as fast as possible.
    let writer = {
        let (q, stop) = (q.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut k: u64 = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let block = [k.to_le_bytes().to_vec(), vec![0u8; 4088]].concat();
                q.write(0, 0, &block);
                q.write(1, 0, &block);
                k += 1;
            }
            k
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let reqs = [
        request(0, &Committed::default()),
        request(1, &Committed::default()),
    ];
    let b = PullBackup::begin(
        qmp.clone(),
        &reqs,
        options(dir.path(), &uuid::Uuid::new_v4().to_string()),
    )
    .await
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last = writer.join().unwrap();
    let mut seen = Vec::new();
    for d in &b.disks {
        let mut s = d.read_ranges(vec![(0, 4096)]);
        let (_, bytes) = s.next().await.unwrap().unwrap();
        seen.push(u64::from_le_bytes(bytes[..8].try_into().unwrap()));
    }
    b.commit().await.unwrap();
    assert!(
        seen[0] >= 1 && last > seen[0] + 1,
        "the guest kept writing during the backup: {seen:?} last {last}"
    );
    assert!(
        seen[0] == seen[1] || seen[0] == seen[1] + 1,
        "disks are consistent with each other: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_leave_bitmaps_as_they_were() {
    let dir = temp();
    let mut q = Qsd::start(dir.path(), &[DISK]);
    let mut rng = Rng::new(7);
    q.write(0, 0, &rng.bytes(16 * MIB as usize));
    let recon = dir.path().join("recon.raw");
    let mut c = Committed::default();
    let qmp = connect(&q).await;
    backup_and_check(&q, &qmp, dir.path(), &mut c, &recon).await;

    // 1. A QMP command fails (the transaction): nothing changes.
    guest_ops(&q, 0, &mut rng, 10);
    let mut bad = options(dir.path(), &uuid::Uuid::new_v4().to_string());
    bad.granularity = 1000;
    let err = PullBackup::begin(qmp.clone(), &[request(0, &c)], bad)
        .await
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("ranularity"), "{err}");
    let (reason, _) = backup_and_check(&q, &qmp, dir.path(), &mut c, &recon).await;
    assert_eq!(reason, None, "still incremental after a failed transaction");

    // 2. The NBD connection drops in the middle of the reads.
    guest_ops(&q, 0, &mut rng, 10);
    let b = PullBackup::begin(
        qmp.clone(),
        &[request(0, &c)],
        options(dir.path(), &uuid::Uuid::new_v4().to_string()),
    )
    .await
    .unwrap();
    let exports = cmd::export_ids(&qmp).await.unwrap();
    cmd::export_del(&qmp, &exports[0], true, Duration::from_secs(10))
        .await
        .unwrap();
    let scratch = dir.path().join("partial.raw");
    assert!(
        apply(&b.disks[0], &scratch).await.is_err(),
        "reads fail once the export is gone"
    );
    b.abort().await.unwrap();
    let nodes = cmd::block_nodes(&qmp).await.unwrap();
    let bms = bitmaps(&nodes, "disk0");
    assert_eq!(bms.len(), 1);
    assert_eq!(bms[0].name, c.bitmap, "the previous bitmap is back");
    assert!(bms[0].recording);
    let (reason, _) = backup_and_check(&q, &qmp, dir.path(), &mut c, &recon).await;
    assert_eq!(reason, None, "the next incremental is complete");

    // 3. The worker dies mid-backup (no teardown, connection gone).
    guest_ops(&q, 0, &mut rng, 10);
    let b = PullBackup::begin(
        qmp.clone(),
        &[request(0, &c)],
        options(dir.path(), &uuid::Uuid::new_v4().to_string()),
    )
    .await
    .unwrap();
    drop(b);
    drop(qmp);
    let qmp = connect(&q).await;
    let (reason, _) = backup_and_check(&q, &qmp, dir.path(), &mut c, &recon).await;
    assert_eq!(
        reason, None,
        "recovery restored the bitmap: still incremental"
    );

    // 4. A clean restart keeps the bitmap; SIGKILL makes it inconsistent.
    drop(qmp);
    q.stop();
    q.restart();
    let qmp = connect(&q).await;
    guest_ops(&q, 0, &mut rng, 5);
    let (reason, _) = backup_and_check(&q, &qmp, dir.path(), &mut c, &recon).await;
    assert_eq!(reason, None, "persistent bitmap survived a clean restart");
    drop(qmp);
    q.stop();
    q.restart(); // the bitmap is now loaded from the image (in use)
    guest_ops(&q, 0, &mut rng, 5);
    q.kill9();
    q.restart();
    let qmp = connect(&q).await;
    let (reason, _) = backup_and_check(&q, &qmp, dir.path(), &mut c, &recon).await;
    assert_eq!(reason, Some(FullReason::BitmapInconsistent));
    let now = dir.path().join("guest-now.raw");
    q.snapshot_to(0, &now);
    assert!(identical(&recon, &now));
    let nodes = cmd::block_nodes(&qmp).await.unwrap();
    let bms = bitmaps(&nodes, "disk0");
    assert_eq!(bms.len(), 1);
    assert!(!bms[0].inconsistent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_scratch_fails_the_backup_not_the_guest() {
    let dir = temp();
    let q = Qsd::start(dir.path(), &[DISK]);
    let mut rng = Rng::new(3);
    q.write(0, 0, &rng.bytes(48 * MIB as usize));
    let recon = dir.path().join("recon.raw");
    let mut c = Committed::default();
    let qmp = connect(&q).await;
    backup_and_check(&q, &qmp, dir.path(), &mut c, &recon).await;

    q.write(0, 40 * MIB, &rng.bytes(4 * MIB as usize)); // something to back up
    let mut opts = options(dir.path(), &uuid::Uuid::new_v4().to_string());
    opts.scratch_limit = 4 * MIB;
    let b = PullBackup::begin(qmp.clone(), &[request(0, &c)], opts)
        .await
        .unwrap();
    // The guest overwrites 32 MiB of old data: the copies outgrow the limit.
    q.write(0, 0, &rng.bytes(32 * MIB as usize));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(b.scratch_exceeded(), "the watchdog noticed");
    let err = apply(&b.disks[0], &dir.path().join("x.raw"))
        .await
        .expect_err("backup fails");
    assert!(matches!(err, ExtractError::Scratch(_)), "{err}");
    let err = b
        .commit()
        .await
        .expect_err("a broken snapshot cannot be committed");
    assert!(matches!(err, ExtractError::Scratch(_)), "{err}");
    // Nothing was lost: the next incremental catches up.
    let (reason, _) = backup_and_check(&q, &qmp, dir.path(), &mut c, &recon).await;
    assert_eq!(reason, None);
    let now = dir.path().join("guest-now.raw");
    q.snapshot_to(0, &now);
    assert!(identical(&recon, &now));
}
