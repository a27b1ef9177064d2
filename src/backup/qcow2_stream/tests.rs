use super::*;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

fn allocation(positions: u64, set: impl IntoIterator<Item = u64>) -> Allocation {
    let mut a = Allocation::new(positions);
    for p in set {
        a.set(p);
    }
    a
}

fn layout(disk_size: u64, chunk_size: u64, set: &[u64]) -> Qcow2Layout {
    let chunks = disk_size.div_ceil(chunk_size);
    Qcow2Layout::new(
        disk_size,
        chunk_size,
        allocation(chunks, set.iter().copied()),
    )
    .unwrap()
}

/// Distinct non-zero bytes for each chunk.
fn pattern(pos: u64, len: u64) -> Vec<u8> {
    (0..len.div_ceil(8))
        .flat_map(|w| (pos.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (w + 1)).to_le_bytes())
        .take(len as usize)
        .collect()
}

fn qemu_img(args: &[&str], files: &[&Path]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .args(files)
        .output()
        .expect("qemu-img must be installed for these tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-img {args:?}: {text}");
    text
}

/// Stream the image into a file, its data into a sparse raw file, and
/// have QEMU check the one and compare it with the other.
fn stream_and_check(layout: &Qcow2Layout) {
    let dir = tempfile::tempdir().unwrap();
    let qcow = dir.path().join("disk.qcow2");
    let raw_path = dir.path().join("disk.raw");
    let raw = File::create(&raw_path).unwrap();
    raw.set_len(layout.disk_size()).unwrap();
    let mut out = BufWriter::new(File::create(&qcow).unwrap());
    let mut written = 0;
    for block in layout.metadata() {
        assert_eq!(block.len() as u64, layout.cluster_size());
        out.write_all(&block).unwrap();
        written += block.len() as u64;
    }
    assert_eq!(written, layout.data_start());
    for pos in 0..layout.allocation().positions() {
        let len = layout.stream_len(pos);
        assert_eq!(len != 0, layout.allocation().is_set(pos));
        if len == 0 {
            continue;
        }
        let data = pattern(pos, layout.chunk_len(pos));
        out.write_all(&data).unwrap();
        out.write_all(&vec![0; (len - data.len() as u64) as usize])
            .unwrap();
        raw.write_all_at(&data, pos * layout.chunk_size()).unwrap();
        written += len;
    }
    out.flush().unwrap();
    assert_eq!(written, layout.file_size());
    assert_eq!(std::fs::metadata(&qcow).unwrap().len(), layout.file_size());

    qemu_img(&["check", "-q", "-f", "qcow2"], &[&qcow]);
    qemu_img(
        &["compare", "-q", "-f", "raw", "-F", "qcow2"],
        &[&raw_path, &qcow],
    );
    let info = qemu_img(&["info", "--output=json", "-f", "qcow2"], &[&qcow]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["virtual-size"], layout.disk_size());
    assert_eq!(info["cluster-size"], layout.cluster_size());
}

#[test]
fn the_cluster_is_the_chunks_largest_power_of_two_up_to_2_mib() {
    let cluster = |chunk: u64| layout(16 * chunk, chunk, &[]).cluster_size();
    assert_eq!(cluster(256 * KIB), 256 * KIB);
    assert_eq!(cluster(64 * KIB), 64 * KIB);
    assert_eq!(cluster(4 * MIB), 2 * MIB);
    assert_eq!(cluster(192 * KIB), 64 * KIB);
    assert_eq!(cluster(12 * KIB), 4 * KIB);
    assert_eq!(cluster(4 * KIB), 4 * KIB);
    assert_eq!(cluster(512), 512);
}

#[test]
fn bad_shapes_are_refused() {
    let new = |disk, chunk, positions| Qcow2Layout::new(disk, chunk, Allocation::new(positions));
    assert_eq!(new(MIB, 0, 0).unwrap_err(), LayoutError::ChunkSize(0));
    assert_eq!(
        new(MIB, 1000, 1049).unwrap_err(),
        LayoutError::ChunkSize(1000)
    );
    assert_eq!(
        new(MIB + 1, 4096, 257).unwrap_err(),
        LayoutError::DiskSize(MIB + 1)
    );
    assert_eq!(
        new(MIB, 256 * KIB, 5).unwrap_err(),
        LayoutError::AllocationMismatch {
            positions: 5,
            chunks: 4
        }
    );
    // 512-byte clusters: an L1 of 32 MiB maps 128 GiB.
    assert!(matches!(
        new(256 * GIB, 512, 256 * GIB / 512),
        Err(LayoutError::TooLarge { .. })
    ));
}

#[test]
fn the_bitset_counts_and_finds_across_words() {
    let set = [0, 1, 63, 64, 65, 127, 128, 200, 255, 299];
    let a = allocation(300, set);
    assert_eq!(a.count(), set.len() as u64);
    assert_eq!(a.iter().collect::<Vec<_>>(), set);
    for from in 0..302 {
        for to in from..302 {
            let naive: Vec<u64> = (from..to).filter(|&p| a.is_set(p)).collect();
            assert_eq!(a.count_in(from, to), naive.len() as u64);
            assert_eq!(a.any_in(from, to), !naive.is_empty());
            assert_eq!(a.ones_in(from, to).collect::<Vec<_>>(), naive);
        }
    }
    let mut b = a.clone();
    b.set(0);
    assert_eq!(b.count(), a.count());
}

#[test]
fn an_empty_disk_is_metadata_only() {
    let l = layout(16 * MIB, 256 * KIB, &[]);
    assert_eq!(l.l2_tables, 0);
    assert_eq!(l.file_size(), l.data_start());
    stream_and_check(&l);
}

#[test]
fn a_zero_sized_disk() {
    let l = layout(0, 256 * KIB, &[]);
    assert_eq!(l.l1_entries, 0);
    stream_and_check(&l);
}

#[test]
fn a_fully_allocated_disk() {
    let l = layout(8 * MIB, 256 * KIB, &(0..32).collect::<Vec<_>>());
    assert_eq!(l.file_size(), l.data_start() + 8 * MIB);
    stream_and_check(&l);
}

#[test]
fn a_sparse_disk() {
    let set: Vec<u64> = (0..160)
        .filter(|p| p % 3 == 0 || (40..50).contains(p))
        .collect();
    stream_and_check(&layout(40 * MIB, 256 * KIB, &set));
}

#[test]
fn a_short_last_chunk_is_padded_to_a_cluster() {
    let disk = 5 * MIB + 12 * KIB;
    let l = layout(disk, 256 * KIB, &[0, 7, 20]);
    assert_eq!(l.chunk_len(20), 12 * KIB);
    assert_eq!(l.stream_len(20), 256 * KIB);
    assert_eq!(l.stream_len(19), 0);
    stream_and_check(&l);
    // A short last chunk left zero.
    stream_and_check(&layout(disk, 256 * KIB, &[0, 19]));
}

#[test]
fn a_chunk_straddling_two_l2_tables() {
    // 192 KiB chunks: 3 clusters of 64 KiB, and an L2 table maps 512
    // MiB, which chunk 2730 crosses.
    let disk = 600 * MIB + 4 * KIB;
    let last = disk.div_ceil(192 * KIB) - 1;
    let l = layout(disk, 192 * KIB, &[0, 2729, 2730, 2731, last]);
    assert_eq!(l.cluster_size(), 64 * KIB);
    assert_eq!(l.l2_tables, 2);
    stream_and_check(&l);
}

#[test]
fn a_large_disk_with_far_apart_chunks() {
    let l = layout(64 * GIB, 64 * KIB, &[0, 1, 8191, 8192, 400_000, 1_048_575]);
    // An L2 table maps 512 MiB: 8192 chunks.
    assert_eq!(l.l2_tables, 4);
    stream_and_check(&l);
}

#[test]
fn several_refcount_blocks_and_l2_tables() {
    // 4 KiB clusters: a refcount block counts 8 MiB, an L2 table maps 2 MiB.
    let chunks = 64 * GIB / (4 * KIB);
    let set: Vec<u64> = (0..chunks).step_by(5003).collect();
    let l = layout(64 * GIB, 4 * KIB, &set);
    assert!(l.refblocks > 1, "{}", l.refblocks);
    assert_eq!(l.l2_tables, set.len() as u64);
    stream_and_check(&l);
}

#[test]
fn a_refcount_table_of_several_clusters() {
    // 512-byte clusters: a refcount table cluster lists 64 blocks of 256
    // clusters each, so a 10 MiB file needs two.
    let chunks = 64 * MIB / 512;
    let set: Vec<u64> = (0..chunks).step_by(7).collect();
    let l = layout(64 * MIB, 512, &set);
    assert!(l.reftable_clusters > 1, "{}", l.reftable_clusters);
    stream_and_check(&l);
}

#[test]
fn four_mib_chunks_use_2_mib_clusters() {
    let disk = 100 * MIB + 512;
    let last = disk.div_ceil(4 * MIB) - 1;
    let l = layout(disk, 4 * MIB, &[0, 5, last]);
    assert_eq!(l.cluster_size(), 2 * MIB);
    assert_eq!(l.stream_len(0), 4 * MIB);
    assert_eq!(l.stream_len(last), 2 * MIB);
    stream_and_check(&l);
}

#[test]
fn metadata_of_a_4_tib_disk_comes_a_cluster_at_a_time() {
    let disk = 4 * 1024 * GIB;
    let chunk = 256 * KIB;
    let chunks = disk / chunk;
    let l = Qcow2Layout::new(disk, chunk, allocation(chunks, 0..chunks)).unwrap();
    let mut total = 0;
    let mut blocks = 0;
    for block in l.metadata() {
        assert!(block.len() as u64 <= l.cluster_size());
        total += block.len() as u64;
        blocks += 1;
    }
    assert_eq!(total, l.data_start());
    assert_eq!(blocks, l.data_start() / l.cluster_size());
    assert_eq!(l.file_size(), l.data_start() + disk);
    // The file's every cluster is counted.
    assert!(l.refblocks * l.cluster_size() / 2 >= l.total_clusters());
}
