//! The backup engine end to end on a live qemu-storage-daemon: full and
//! incremental records into a local store (and S3), each restored bit-exact, in any
//! order; damage found by verify and named by restore.

use std::sync::Arc;

use ekko::backup::disk::{back_up_disk, DiskBackupOptions, DiskBackupResult, PreviousRecord};
use ekko::backup::reader::RecordReader;
use ekko::backup::restore::{verify, TargetFormat};
use ekko::backup::segment_object;
use ekko::extract::pull::PullBackup;
use ekko::extract::DiskSnapshot;
use ekko::store::local::LocalStore;
use ekko::store::ObjectStore;

use crate::extract::{connect, options, request, Committed, Rng};
use crate::qsd::{identical, Qsd};

const MIB: u64 = 1 << 20;
const DISK: u64 = 64 * MIB;

fn engine_opts() -> DiskBackupOptions {
    DiskBackupOptions {
        chunk_size: 256 << 10,
        compression_level: 1,
        segment_size: 8 << 20,
        dedup_memory: 64 << 20,
        progress: None,
    }
}

/// Three backups of a live disk into `store` (full, then two incrementals
/// after scattered writes; each reads and writes only what changed), each
/// restored bit-exact, in any order. Returns the records and their
/// reference images.
async fn back_up_three_and_restore(
    dir: &std::path::Path,
    store: Arc<dyn ObjectStore>,
    container: &str,
) -> Vec<(DiskBackupResult, std::path::PathBuf)> {
    let q = Qsd::start(dir, &[DISK]);
    let qmp = connect(&q).await;
    let mut rng = Rng::new(11);
    // Compressible and incompressible data, and a zero tail.
    q.write(0, 0, &b"ekko compressible text ".repeat(600_000));
    q.write(0, 20 * MIB, &rng.bytes(12 * MIB as usize));

    let mut committed = Committed::default();
    let mut prev: Option<PreviousRecord> = None;
    let mut records: Vec<(DiskBackupResult, std::path::PathBuf)> = Vec::new();
    for round in 0..3 {
        if round > 0 {
            for _ in 0..6 {
                let off = rng.below(DISK - MIB) & !4095;
                let len = 4096 + rng.below(256 << 10) as usize;
                q.write(0, off, &rng.bytes(len));
            }
        }
        let b = PullBackup::begin(
            qmp.clone(),
            &[request(0, &committed)],
            options(dir, &uuid::Uuid::new_v4().to_string()),
        )
        .await
        .unwrap();
        let reference = dir.join(format!("ref{round}.raw"));
        let st = std::process::Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "raw"])
            .arg(b.nbd_uri(0))
            .arg(&reference)
            .status()
            .unwrap();
        assert!(st.success());
        let snap: &dyn DiskSnapshot = &b.disks[0];
        let res = back_up_disk(
            snap,
            prev.as_ref(),
            Default::default(),
            &RecordReader::new(store.clone(), container),
            &engine_opts(),
        )
        .await
        .unwrap();
        let new_bitmap = b.disks[0].new_bitmap.clone();
        b.commit().await.unwrap();
        committed = Committed {
            bitmap: Some(new_bitmap),
            size: Some(DISK),
        };
        prev = Some(PreviousRecord {
            root: res.root,
            disk_size: DISK,
            chunk_size: 256 << 10,
        });
        if round == 0 {
            assert!(res.full_read);
            assert!(res.zero_chunks > 0, "the unwritten tail is not stored");
            assert!(
                res.stored_bytes < 20 * MIB,
                "text compresses, zeros cost nothing ({})",
                res.stored_bytes
            );
        } else {
            assert!(!res.full_read);
            assert!(
                res.read_bytes <= 6 * 2 * (256 << 10) + (1 << 20),
                "reads only the changed chunks ({})",
                res.read_bytes
            );
            assert!(
                res.pages_written <= 6 * 2 + 2,
                "writes only the changed pages ({})",
                res.pages_written
            );
        }
        records.push((res, reference));
    }

    // Restore in any order, each bit-exact.
    let reader = RecordReader::new(store.clone(), container);
    for i in [2usize, 0, 1] {
        let (rec, reference) = &records[i];
        let out = dir.join(format!("restored{i}.raw"));
        let stats = ekko::backup::file_target::restore_to_file(
            &reader,
            &ekko::backup::PreviousRecord {
                root: rec.root,
                disk_size: DISK,
                chunk_size: 256 << 10,
            },
            &out,
            TargetFormat::Raw,
            None,
        )
        .await
        .unwrap();
        assert!(stats.bad.is_empty());
        assert!(identical(&out, reference), "record {i} restores bit-exact");
        let v = verify(&reader, rec.root, DISK, 256 << 10, None)
            .await
            .unwrap();
        assert!(v.bad.is_empty());
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_restore_bit_exact_and_damage_is_named() {
    let dir = tempfile::Builder::new()
        .prefix("ekko-engine")
        .tempdir()
        .unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalStore::new(dir.path().join("store"), false).unwrap());
    let container = "ekko-project-a";
    let records = back_up_three_and_restore(dir.path(), store.clone(), container).await;
    let reader = RecordReader::new(store.clone(), container);
    let q2 = dir.path().join("restored.qcow2");
    ekko::backup::file_target::restore_to_file(
        &reader,
        &ekko::backup::PreviousRecord {
            root: records[2].0.root,
            disk_size: DISK,
            chunk_size: 256 << 10,
        },
        &q2,
        TargetFormat::Qcow2,
        None,
    )
    .await
    .unwrap();
    let st = std::process::Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
        .arg(&q2)
        .arg(&records[2].1)
        .status()
        .unwrap();
    assert!(st.success(), "qcow2 restore matches");

    // Damage one data segment of the full backup: verify and restore name it.
    let seg = records[0]
        .0
        .segments
        .iter()
        .find(|s| s.records > 1)
        .unwrap()
        .id;
    let path = dir
        .path()
        .join("store")
        .join(container)
        .join(segment_object(seg));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[200] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let fresh = RecordReader::new(store.clone(), container);
    let v = verify(&fresh, records[0].0.root, DISK, 256 << 10, None)
        .await
        .unwrap();
    assert!(
        !v.bad.is_empty(),
        "verify finds the damage: {v:?} segments {:?} damaged {seg:016x}",
        records[0].0.segments
    );
    let err = ekko::backup::file_target::restore_to_file(
        &fresh,
        &ekko::backup::PreviousRecord {
            root: records[0].0.root,
            disk_size: DISK,
            chunk_size: 256 << 10,
        },
        &dir.path().join("bad.raw"),
        TargetFormat::Raw,
        None,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("damaged ranges"), "{err}");
    // A missing segment is reported too.
    std::fs::remove_file(&path).unwrap();
    let fresh = RecordReader::new(store.clone(), container);
    let v = verify(&fresh, records[0].0.root, DISK, 256 << 10, None)
        .await
        .unwrap();
    assert!(!v.bad.is_empty(), "verify reports the missing segment");
}

/// The same backups into S3 (Swift's s3api; 8 MiB segments go up as
/// multipart uploads of 5 MiB parts), restored bit-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_records_restore_bit_exact() {
    let dir = tempfile::Builder::new()
        .prefix("ekko-engine-s3")
        .tempdir()
        .unwrap();
    let extra = "multipart_threshold = 5M\nmultipart_part_size = 5M\n";
    let Some(config) = crate::helpers::s3_config(dir.path(), None, extra) else {
        return;
    };
    let store: Arc<dyn ObjectStore> = Arc::new(ekko::store::s3::S3Store::new(&config.s3).unwrap());
    let container = format!(
        "ekko-engine-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let records = back_up_three_and_restore(dir.path(), store.clone(), &container).await;
    assert!(
        records[0].0.segments.len() >= 2,
        "{:?}",
        records[0].0.segments
    );
    for m in store.list(&container, "").await.unwrap() {
        store.delete(&container, &m.name).await.unwrap();
    }
}
