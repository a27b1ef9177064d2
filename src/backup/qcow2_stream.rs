//! A qcow2 (version 3) image laid out to be written as one sequential
//! stream, with no seek and no scratch space: a restore into Glance sends
//! the image over HTTP as it is produced.
//!
//! A backup's map says which chunks hold data before any data is read, so
//! all metadata can be computed first and written at the start of the file,
//! followed by the data clusters of the allocated chunks in disk order:
//!
//! ```text
//! header | L1 table | refcount table | refcount blocks | L2 tables | data clusters
//! ```
//!
//! * A zero chunk is left unallocated (L2 entry 0, or no L2 table at all):
//!   with no backing file, version 3 reads it as zeros.
//! * Every cluster of the file has refcount 1 and every L1/L2 entry carries
//!   `QCOW_OFLAG_COPIED`, so `qemu-img check` finds neither error nor leak;
//!   the refcount blocks cover every cluster, themselves included.
//! * Nothing is held per chunk but the allocation bitset (1 bit a chunk):
//!   the metadata is generated one cluster at a time.

use thiserror::Error;

const MAGIC: &[u8; 4] = b"QFI\xfb";
const VERSION: u32 = 3;
/// The version 3 header with its compression type byte (0: zlib, unused)
/// and padding to a multiple of 8. The zeros after it read as the
/// end-of-extensions marker.
const HEADER_LENGTH: u32 = 112;
/// 16-bit refcounts, as QEMU creates by default.
const REFCOUNT_ORDER: u32 = 4;
const REFCOUNT_BYTES: u64 = 2;
/// An L1/L2 entry flag: the cluster's refcount is exactly 1.
const OFLAG_COPIED: u64 = 1 << 63;
/// The spec's smallest cluster.
const MIN_CLUSTER: u64 = 512;
/// QEMU opens no image with larger clusters.
const MAX_CLUSTER: u64 = 2 << 20;
/// QEMU refuses to open images with larger tables (block/qcow2.h).
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Host offsets in L1/L2 entries have bits 9-55.
const MAX_FILE_SIZE: u64 = 1 << 56;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("chunk size {0} is not a non-zero multiple of 512 bytes")]
    ChunkSize(u64),
    #[error("disk size {0} is not a multiple of 512 bytes (qcow2 would round it)")]
    DiskSize(u64),
    #[error("allocation has {positions} positions, the disk {chunks} chunks")]
    AllocationMismatch { positions: u64, chunks: u64 },
    #[error(
        "disk of {disk_size} bytes is too large for a qcow2 with {cluster_size}-byte clusters"
    )]
    TooLarge { disk_size: u64, cluster_size: u64 },
}

/// Which chunks hold data: a bitset, one bit per chunk position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    words: Vec<u64>,
    positions: u64,
    count: u64,
}

impl Allocation {
    /// All `positions` chunks zero.
    pub fn new(positions: u64) -> Allocation {
        Allocation {
            words: vec![0; positions.div_ceil(64) as usize],
            positions,
            count: 0,
        }
    }

    /// Mark chunk `pos` as holding data. Panics past the last position: the
    /// caller sized the allocation from the same map.
    pub fn set(&mut self, pos: u64) {
        assert!(pos < self.positions, "chunk {pos} past {}", self.positions);
        let word = &mut self.words[(pos / 64) as usize];
        let bit = 1 << (pos % 64);
        if *word & bit == 0 {
            *word |= bit;
            self.count += 1;
        }
    }

    pub fn is_set(&self, pos: u64) -> bool {
        pos < self.positions && self.words[(pos / 64) as usize] & (1 << (pos % 64)) != 0
    }

    /// How many chunks hold data.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn positions(&self) -> u64 {
        self.positions
    }

    /// The positions holding data, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ones_in(0, self.positions)
    }

    /// The words covering `[from, to)`, bits outside it cleared, with the
    /// position of their bit 0.
    fn range_words(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let to = to.min(self.positions);
        let words = if from < to {
            from / 64..(to - 1) / 64 + 1
        } else {
            0..0
        };
        words.map(move |w| {
            let mut word = self.words[w as usize];
            if w == from / 64 {
                word &= !0u64 << (from % 64);
            }
            if w == (to - 1) / 64 {
                word &= !0u64 >> (63 - (to - 1) % 64);
            }
            (w * 64, word)
        })
    }

    fn count_in(&self, from: u64, to: u64) -> u64 {
        self.range_words(from, to)
            .map(|(_, w)| u64::from(w.count_ones()))
            .sum()
    }

    fn any_in(&self, from: u64, to: u64) -> bool {
        self.range_words(from, to).any(|(_, w)| w != 0)
    }

    fn ones_in(&self, from: u64, to: u64) -> impl Iterator<Item = u64> + '_ {
        self.range_words(from, to).flat_map(|(base, mut word)| {
            std::iter::from_fn(move || {
                if word == 0 {
                    return None;
                }
                let bit = u64::from(word.trailing_zeros());
                word &= word - 1;
                Some(base + bit)
            })
        })
    }
}

/// Where everything goes in a qcow2 streamed from a backup's map.
#[derive(Debug, Clone)]
pub struct Qcow2Layout {
    disk_size: u64,
    chunk_size: u64,
    cluster_size: u64,
    cluster_bits: u32,
    clusters_per_chunk: u64,
    /// Guest clusters of the disk (the last one may be partial).
    guest_clusters: u64,
    allocation: Allocation,
    l1_entries: u64,
    l1_clusters: u64,
    reftable_clusters: u64,
    refblocks: u64,
    l2_tables: u64,
    data_clusters: u64,
}

impl Qcow2Layout {
    /// The cluster is the largest power of two dividing `chunk_size`, at
    /// most 2 MiB (QEMU's limit): every chunk is then a whole number of
    /// clusters (the last one padded), so a chunk's bytes go to the stream
    /// as they are. 256 KiB chunks give 256 KiB clusters.
    pub fn new(
        disk_size: u64,
        chunk_size: u64,
        allocation: Allocation,
    ) -> Result<Qcow2Layout, LayoutError> {
        let power = chunk_size & chunk_size.wrapping_neg();
        if power < MIN_CLUSTER {
            return Err(LayoutError::ChunkSize(chunk_size));
        }
        if disk_size % 512 != 0 {
            return Err(LayoutError::DiskSize(disk_size));
        }
        let chunks = disk_size.div_ceil(chunk_size);
        if allocation.positions() != chunks {
            return Err(LayoutError::AllocationMismatch {
                positions: allocation.positions(),
                chunks,
            });
        }
        let cluster_size = power.min(MAX_CLUSTER);
        let too_large = LayoutError::TooLarge {
            disk_size,
            cluster_size,
        };
        let guest_clusters = disk_size.div_ceil(cluster_size);
        let l1_entries = guest_clusters.div_ceil(cluster_size / 8);
        if l1_entries * 8 > MAX_L1_BYTES {
            return Err(too_large);
        }
        let mut layout = Qcow2Layout {
            disk_size,
            chunk_size,
            cluster_size,
            cluster_bits: cluster_size.trailing_zeros(),
            clusters_per_chunk: chunk_size / cluster_size,
            guest_clusters,
            allocation,
            l1_entries,
            l1_clusters: (l1_entries * 8).div_ceil(cluster_size),
            reftable_clusters: 0,
            refblocks: 0,
            l2_tables: 0,
            data_clusters: 0,
        };
        layout.l2_tables = (0..l1_entries).filter(|&i| layout.l2_used(i)).count() as u64;
        // Every allocated chunk is whole but perhaps the last.
        let last = chunks.saturating_sub(1);
        let last_set = u64::from(layout.allocation.is_set(last));
        layout.data_clusters = (layout.allocation.count() - last_set) * layout.clusters_per_chunk
            + last_set * layout.chunk_clusters(last);

        // The refcount blocks count themselves and the refcount table: grow
        // both until they cover the whole file (monotone, so it settles).
        let fixed = 1 + layout.l1_clusters + layout.l2_tables + layout.data_clusters;
        let per_block = cluster_size / REFCOUNT_BYTES;
        let (mut blocks, mut table) = (0, 0);
        loop {
            let next_blocks = (fixed + table + blocks).div_ceil(per_block);
            let next_table = (next_blocks * 8).div_ceil(cluster_size).max(1);
            if (next_blocks, next_table) == (blocks, table) {
                break;
            }
            (blocks, table) = (next_blocks, next_table);
        }
        layout.refblocks = blocks;
        layout.reftable_clusters = table;
        if table * cluster_size > MAX_REFTABLE_BYTES
            || (fixed + table + blocks)
                .checked_mul(cluster_size)
                .is_none_or(|size| size > MAX_FILE_SIZE)
        {
            return Err(too_large);
        }
        Ok(layout)
    }

    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    pub fn disk_size(&self) -> u64 {
        self.disk_size
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    pub fn allocation(&self) -> &Allocation {
        &self.allocation
    }

    /// Bytes before the first data cluster (all metadata).
    pub fn data_start(&self) -> u64 {
        self.l2_offset() + self.l2_tables * self.cluster_size
    }

    /// The whole file's length.
    pub fn file_size(&self) -> u64 {
        self.data_start() + self.data_clusters * self.cluster_size
    }

    /// Bytes of the disk chunk `pos` covers: `chunk_size` but for a short
    /// last chunk; 0 past the disk.
    pub fn chunk_len(&self, pos: u64) -> u64 {
        let start = pos.saturating_mul(self.chunk_size);
        self.chunk_size.min(self.disk_size.saturating_sub(start))
    }

    /// Bytes chunk `pos` takes in the stream: its data, then zeros up to a
    /// whole cluster (only a short last chunk needs them); 0 for a zero
    /// chunk.
    pub fn stream_len(&self, pos: u64) -> u64 {
        if self.allocation.is_set(pos) {
            self.chunk_clusters(pos) * self.cluster_size
        } else {
            0
        }
    }

    /// The metadata, in file order, one cluster per block, generated as it
    /// is consumed; the blocks' total length is [`data_start`](Self::data_start).
    pub fn metadata(&self) -> Metadata<'_> {
        Metadata {
            layout: self,
            next: 0,
            l2_ordinal: 0,
            l1_cursor: 0,
            rank_pos: 0,
            rank: 0,
        }
    }

    fn l1_offset(&self) -> u64 {
        self.cluster_size
    }

    fn reftable_offset(&self) -> u64 {
        self.l1_offset() + self.l1_clusters * self.cluster_size
    }

    fn refblocks_offset(&self) -> u64 {
        self.reftable_offset() + self.reftable_clusters * self.cluster_size
    }

    fn l2_offset(&self) -> u64 {
        self.refblocks_offset() + self.refblocks * self.cluster_size
    }

    fn total_clusters(&self) -> u64 {
        self.file_size() / self.cluster_size
    }

    fn chunk_clusters(&self, pos: u64) -> u64 {
        self.chunk_len(pos).div_ceil(self.cluster_size)
    }

    /// The guest clusters L2 table `index` maps.
    fn l2_range(&self, index: u64) -> (u64, u64) {
        let entries = self.cluster_size / 8;
        let first = index * entries;
        (first, (first + entries).min(self.guest_clusters))
    }

    /// The chunks holding some guest cluster of `[first, end)` (not empty).
    fn chunks_of(&self, (first, end): (u64, u64)) -> (u64, u64) {
        (
            first / self.clusters_per_chunk,
            (end - 1) / self.clusters_per_chunk + 1,
        )
    }

    /// An L2 table is written only if it maps some data.
    fn l2_used(&self, index: u64) -> bool {
        let (from, to) = self.chunks_of(self.l2_range(index));
        self.allocation.any_in(from, to)
    }

    fn header(&self) -> Vec<u8> {
        let mut h = vec![0u8; self.cluster_size as usize];
        let mut put = |at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, MAGIC);
        put(4, &VERSION.to_be_bytes());
        // 8: no backing file; 32: no encryption.
        put(20, &self.cluster_bits.to_be_bytes());
        put(24, &self.disk_size.to_be_bytes());
        put(36, &(self.l1_entries as u32).to_be_bytes());
        put(40, &self.l1_offset().to_be_bytes());
        put(48, &self.reftable_offset().to_be_bytes());
        put(56, &(self.reftable_clusters as u32).to_be_bytes());
        // 60: no snapshots; 72-95: no feature bits (not dirty, no lazy
        // refcounts); 104: zlib compression type.
        put(96, &REFCOUNT_ORDER.to_be_bytes());
        put(100, &HEADER_LENGTH.to_be_bytes());
        h
    }
}

/// The metadata clusters of a [`Qcow2Layout`], in file order; see
/// [`Qcow2Layout::metadata`].
#[derive(Debug)]
pub struct Metadata<'a> {
    layout: &'a Qcow2Layout,
    /// The next cluster of the file.
    next: u64,
    /// The L2 tables the L1 entries written so far point at.
    l2_ordinal: u64,
    /// The next L1 index whose L2 table is yet to be written.
    l1_cursor: u64,
    /// Allocated chunks before chunk `rank_pos`: where its data lands.
    rank_pos: u64,
    rank: u64,
}

impl Metadata<'_> {
    fn l1_cluster(&mut self, k: u64) -> Vec<u8> {
        let l = self.layout;
        let per = l.cluster_size / 8;
        let mut out = vec![0u8; l.cluster_size as usize];
        for i in k * per..((k + 1) * per).min(l.l1_entries) {
            if l.l2_used(i) {
                let entry = (l.l2_offset() + self.l2_ordinal * l.cluster_size) | OFLAG_COPIED;
                put_u64(&mut out, i - k * per, entry);
                self.l2_ordinal += 1;
            }
        }
        out
    }

    fn reftable_cluster(&self, k: u64) -> Vec<u8> {
        let l = self.layout;
        let per = l.cluster_size / 8;
        let mut out = vec![0u8; l.cluster_size as usize];
        for j in k * per..((k + 1) * per).min(l.refblocks) {
            put_u64(
                &mut out,
                j - k * per,
                l.refblocks_offset() + j * l.cluster_size,
            );
        }
        out
    }

    fn refblock(&self, j: u64) -> Vec<u8> {
        let l = self.layout;
        let per = l.cluster_size / REFCOUNT_BYTES;
        let used = l.total_clusters().saturating_sub(j * per).min(per);
        let mut out = vec![0u8; l.cluster_size as usize];
        for entry in out.chunks_exact_mut(2).take(used as usize) {
            entry.copy_from_slice(&1u16.to_be_bytes());
        }
        out
    }

    fn l2_table(&mut self) -> Vec<u8> {
        let l = self.layout;
        while !l.l2_used(self.l1_cursor) {
            debug_assert!(self.l1_cursor < l.l1_entries, "more L2 tables than counted");
            self.l1_cursor += 1;
        }
        let index = self.l1_cursor;
        self.l1_cursor += 1;
        let (first, end) = l.l2_range(index);
        let (from, to) = l.chunks_of((first, end));
        let mut out = vec![0u8; l.cluster_size as usize];
        for chunk in l.allocation.ones_in(from, to) {
            // A chunk straddling two tables is seen twice: rank_pos <= chunk.
            self.rank += l.allocation.count_in(self.rank_pos, chunk);
            self.rank_pos = chunk;
            let chunk_first = chunk * l.clusters_per_chunk;
            let chunk_end = chunk_first + l.chunk_clusters(chunk);
            for g in chunk_first.max(first)..chunk_end.min(end) {
                let data = self.rank * l.clusters_per_chunk + (g - chunk_first);
                let host = l.data_start() + data * l.cluster_size;
                put_u64(&mut out, g - first, host | OFLAG_COPIED);
            }
        }
        out
    }
}

impl Iterator for Metadata<'_> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let l = self.layout;
        let at = self.next * l.cluster_size;
        if at >= l.data_start() {
            return None;
        }
        self.next += 1;
        let cluster = |offset: u64| (at - offset) / l.cluster_size;
        Some(if at < l.l1_offset() {
            l.header()
        } else if at < l.reftable_offset() {
            self.l1_cluster(cluster(l.l1_offset()))
        } else if at < l.refblocks_offset() {
            self.reftable_cluster(cluster(l.reftable_offset()))
        } else if at < l.l2_offset() {
            self.refblock(cluster(l.refblocks_offset()))
        } else {
            self.l2_table()
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.layout.data_start() / self.layout.cluster_size - self.next) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Metadata<'_> {}

fn put_u64(out: &mut [u8], index: u64, value: u64) {
    let at = index as usize * 8;
    out[at..at + 8].copy_from_slice(&value.to_be_bytes());
}

#[cfg(test)]
mod tests;
