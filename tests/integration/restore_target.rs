//! Restore files on this host (`ekko restore --output`, the engine's file
//! target): created exclusively, never through a link, readable by their
//! owner only; two restores to one name never mix, two to names sharing a
//! stem never share a scratch file. Records come from an in-memory disk
//! into a local store: no service, no QEMU (qemu-img only, for qcow2).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;

use ekko::backup::disk::{back_up_disk, DiskBackupOptions};
use ekko::backup::file_target::restore_to_file;
use ekko::backup::reader::RecordReader;
use ekko::backup::restore::TargetFormat;
use ekko::backup::PreviousRecord;
use ekko::extract::{DiskSnapshot, ExtractError, FullReason};
use ekko::store::local::LocalStore;
use ekko::store::ObjectStore;

use crate::qsd::identical;

const CHUNK: u64 = 64 << 10;
const DISK: u64 = 4 << 20;
const CONTAINER: &str = "ekko-project-r";

/// A disk held in memory, read in full.
struct MemDisk {
    data: Vec<u8>,
    everything: [(u64, u64); 1],
}

impl MemDisk {
    fn new(data: Vec<u8>) -> MemDisk {
        let len = data.len() as u64;
        MemDisk {
            data,
            everything: [(0, len)],
        }
    }
}

impl DiskSnapshot for MemDisk {
    fn device(&self) -> &str {
        "vda"
    }
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn full_reason(&self) -> Option<&FullReason> {
        Some(&FullReason::Requested)
    }
    fn changed(&self) -> &[(u64, u64)] {
        &self.everything
    }
    fn zeros(&self) -> &[(u64, u64)] {
        &[]
    }
    fn new_bitmap(&self) -> Option<&str> {
        None
    }
    fn read_ranges<'a>(
        &'a self,
        ranges: Vec<(u64, u64)>,
    ) -> BoxStream<'a, Result<(u64, Bytes), ExtractError>> {
        Box::pin(futures::stream::iter(ranges.into_iter().map(|(o, l)| {
            Ok((
                o,
                Bytes::copy_from_slice(&self.data[o as usize..(o + l) as usize]),
            ))
        })))
    }
}

/// Disk contents that differ in every chunk from any other seed's, with a
/// zero range (left sparse by a restore).
fn disk_bytes(seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(seed);
    let mut data: Vec<u8> = (0..DISK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    data[(DISK / 2) as usize..(DISK / 2 + 4 * CHUNK) as usize].fill(0);
    data
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    reader: Arc<RecordReader>,
    /// Per backed-up disk: its record and a raw file of its contents.
    disks: Vec<(PreviousRecord, PathBuf)>,
}

async fn setup(seeds: &[u8]) -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("ekko-restore-target")
        .tempdir()
        .unwrap();
    let root = dir.path().to_path_buf();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(root.join("store"), false).unwrap());
    let reader = Arc::new(RecordReader::new(store, CONTAINER));
    let opts = DiskBackupOptions {
        chunk_size: CHUNK,
        compression_level: 1,
        segment_size: 1 << 20,
        dedup_memory: 64 << 20,
        progress: None,
    };
    let mut disks = Vec::new();
    for &seed in seeds {
        let data = disk_bytes(seed);
        let source = root.join(format!("source-{seed}.raw"));
        std::fs::write(&source, &data).unwrap();
        let res = back_up_disk(
            &MemDisk::new(data),
            None,
            Default::default(),
            &reader,
            &opts,
        )
        .await
        .unwrap();
        let record = PreviousRecord {
            root: res.root,
            disk_size: DISK,
            chunk_size: CHUNK,
        };
        disks.push((record, source));
    }
    Setup {
        _dir: dir,
        root,
        reader,
        disks,
    }
}

impl Setup {
    /// Restore disk `i` to `path`, in a task of its own.
    fn spawn_restore(
        &self,
        i: usize,
        path: &Path,
        format: TargetFormat,
    ) -> tokio::task::JoinHandle<Result<(), String>> {
        let (reader, record, path) = (self.reader.clone(), self.disks[i].0, path.to_owned());
        tokio::spawn(async move {
            restore_to_file(&reader, &record, &path, format, None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    async fn restore(&self, i: usize, path: &Path, format: TargetFormat) -> Result<(), String> {
        self.spawn_restore(i, path, format).await.unwrap()
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn same_qcow2(qcow2: &Path, raw: &Path) -> bool {
    std::process::Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
        .arg(qcow2)
        .arg(raw)
        .status()
        .unwrap()
        .success()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_restores_to_one_path_one_wins_and_nothing_is_mixed() {
    let x = setup(&[1, 2]).await;
    let out = x.root.join("out");
    std::fs::create_dir(&out).unwrap();
    let target = out.join("vm.img");
    for _ in 0..3 {
        let first = x.spawn_restore(0, &target, TargetFormat::Raw);
        let second = x.spawn_restore(1, &target, TargetFormat::Raw);
        let outcomes = [first.await.unwrap(), second.await.unwrap()];
        let winners: Vec<usize> = (0..2).filter(|&i| outcomes[i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "exactly one restore wins: {outcomes:?}");
        let loser = &outcomes[1 - winners[0]];
        let why = loser.as_ref().unwrap_err();
        assert!(why.contains("exists"), "{why}");
        assert!(
            why.contains("never overwrites"),
            "the loser says why: {why}"
        );
        assert!(
            identical(&target, &x.disks[winners[0]].1),
            "the file is the winner's disk, bit-exact"
        );
        assert_eq!(mode(&target), 0o600, "a restored disk is its owner's only");
        assert_eq!(names_in(&out), ["vm.img"], "no scratch file is left");
        std::fs::remove_file(&target).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_restores_to_names_sharing_a_stem_use_their_own_scratch() {
    let x = setup(&[3, 4]).await;
    let out = x.root.join("out");
    std::fs::create_dir(&out).unwrap();
    let (a, b) = (out.join("vm.qcow2"), out.join("vm.img"));
    let first = x.spawn_restore(0, &a, TargetFormat::Qcow2);
    let second = x.spawn_restore(1, &b, TargetFormat::Qcow2);
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert!(first.is_ok() && second.is_ok(), "{first:?} {second:?}");
    assert!(same_qcow2(&a, &x.disks[0].1), "vm.qcow2 is disk 0");
    assert!(same_qcow2(&b, &x.disks[1].1), "vm.img is disk 1");
    assert_eq!(mode(&a), 0o600);
    assert_eq!(mode(&b), 0o600);
    assert_eq!(
        names_in(&out),
        ["vm.img", "vm.qcow2"],
        "the scratch images are gone"
    );
    // A qcow2 restore never overwrites either.
    let why = x.restore(1, &a, TargetFormat::Qcow2).await.unwrap_err();
    assert!(why.contains("exists"), "{why}");
    assert!(same_qcow2(&a, &x.disks[0].1), "vm.qcow2 is untouched");
    assert_eq!(names_in(&out), ["vm.img", "vm.qcow2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_never_overwrites_nor_follows_a_link() {
    let x = setup(&[5]).await;
    let (out, outside) = (x.root.join("out"), x.root.join("outside"));
    std::fs::create_dir(&out).unwrap();
    std::fs::create_dir(&outside).unwrap();

    // An existing file stays as it is.
    let kept = out.join("kept.raw");
    std::fs::write(&kept, b"someone else's").unwrap();
    let why = x.restore(0, &kept, TargetFormat::Raw).await.unwrap_err();
    assert!(why.contains("exists"), "{why}");
    assert_eq!(std::fs::read(&kept).unwrap(), b"someone else's");

    // A dangling link is not followed, whatever the format.
    for (name, format) in [
        ("x.raw", TargetFormat::Raw),
        ("x.qcow2", TargetFormat::Qcow2),
    ] {
        let link = out.join(name);
        std::os::unix::fs::symlink(outside.join(name), &link).unwrap();
        let why = x.restore(0, &link, format).await.unwrap_err();
        assert!(why.contains("exists"), "{why}");
        assert!(
            !outside.join(name).exists(),
            "{name}: nothing is written through the link"
        );
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    }
    assert!(names_in(&outside).is_empty(), "{:?}", names_in(&outside));
    assert_eq!(names_in(&out), ["kept.raw", "x.qcow2", "x.raw"]);

    // A new file is created, its owner's only.
    let fresh = out.join("fresh.raw");
    x.restore(0, &fresh, TargetFormat::Raw).await.unwrap();
    assert!(identical(&fresh, &x.disks[0].1));
    assert_eq!(mode(&fresh), 0o600);
}
