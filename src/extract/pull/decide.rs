//! Per disk, before a backup: can its bitmap be trusted for an
//! incremental, or must the disk be read in full, and which of Ekko's
//! bitmaps on it are useless now. Pure: the QMP side only applies it.

use super::PREFIX;
use crate::extract::{DiskRequest, FullReason};
use crate::qmp::commands::BitmapInfo;

/// What to do with one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Decision {
    /// `None` for an incremental; why otherwise.
    pub reason: Option<FullReason>,
    /// The bitmap the incremental exports (the one the catalog expects).
    pub base: Option<String>,
    /// Bitmaps of ours that cannot be trusted: removed before the backup.
    pub remove: Vec<String>,
}

/// An incremental needs exactly one bitmap of ours, recording,
/// persistent, consistent, named as the catalog expects, on a disk of the
/// size it had.
pub(super) fn decide(req: &DiskRequest, bitmaps: &[BitmapInfo], size: u64) -> Decision {
    let ours: Vec<&BitmapInfo> = bitmaps
        .iter()
        .filter(|b| b.name.as_deref().is_some_and(|n| n.starts_with(PREFIX)))
        .collect();
    let usable = ours.len() == 1
        && ours[0].recording
        && ours[0].persistent
        && !ours[0].inconsistent
        && ours[0].name == req.expected_bitmap;
    let reason = if ours.iter().any(|b| b.inconsistent) {
        Some(FullReason::BitmapInconsistent)
    } else if req.expected_bitmap.is_none() || ours.is_empty() {
        Some(FullReason::NoBitmap)
    } else if !usable {
        Some(FullReason::BitmapMismatch)
    } else if req.expected_size.is_some_and(|s| s != size) {
        Some(FullReason::Resized)
    } else if req.force_full {
        Some(FullReason::Requested)
    } else {
        None
    };
    // Bitmaps that cannot be trusted are useless: drop them now.
    let base = if usable {
        req.expected_bitmap.clone()
    } else {
        None
    };
    let remove = ours
        .iter()
        .filter_map(|b| b.name.clone())
        .filter(|n| Some(n) != base.as_ref())
        .collect();
    Decision {
        reason,
        base,
        remove,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(name: &str) -> BitmapInfo {
        BitmapInfo {
            name: Some(name.into()),
            recording: true,
            persistent: true,
            busy: false,
            inconsistent: false,
            granularity: 65536,
            count: 0,
        }
    }

    fn request(expected: Option<&str>) -> DiskRequest {
        DiskRequest {
            device: "vda".into(),
            node: "drive0".into(),
            expected_bitmap: expected.map(String::from),
            expected_size: Some(1 << 30),
            force_full: false,
        }
    }

    #[test]
    fn the_expected_bitmap_gives_an_incremental() {
        let d = decide(&request(Some("ekko-b1")), &[bitmap("ekko-b1")], 1 << 30);
        assert_eq!(d.reason, None);
        assert_eq!(d.base.as_deref(), Some("ekko-b1"));
        assert!(d.remove.is_empty());
    }

    #[test]
    fn every_doubt_is_a_full_read_and_untrusted_bitmaps_go() {
        let size = 1 << 30;
        // First backup: no bitmap expected.
        let d = decide(&request(None), &[], size);
        assert_eq!(d.reason, Some(FullReason::NoBitmap));
        // The bitmap is gone (QEMU restarted without it).
        let d = decide(&request(Some("ekko-b1")), &[], size);
        assert_eq!(d.reason, Some(FullReason::NoBitmap));
        // Another attempt's bitmap, not the catalog's.
        let d = decide(&request(Some("ekko-b1")), &[bitmap("ekko-b2")], size);
        assert_eq!(d.reason, Some(FullReason::BitmapMismatch));
        assert_eq!(d.remove, vec!["ekko-b2".to_string()]);
        assert_eq!(d.base, None);
        // QEMU stopped without flushing it.
        let mut broken = bitmap("ekko-b1");
        broken.inconsistent = true;
        let d = decide(&request(Some("ekko-b1")), &[broken], size);
        assert_eq!(d.reason, Some(FullReason::BitmapInconsistent));
        assert_eq!(d.remove, vec!["ekko-b1".to_string()]);
        // Disabled (a rotation was never finished nor undone).
        let mut off = bitmap("ekko-b1");
        off.recording = false;
        let d = decide(&request(Some("ekko-b1")), &[off], size);
        assert_eq!(d.reason, Some(FullReason::BitmapMismatch));
        // Resized: the bitmap is trusted but the map must be rebuilt.
        let d = decide(&request(Some("ekko-b1")), &[bitmap("ekko-b1")], size * 2);
        assert_eq!(d.reason, Some(FullReason::Resized));
        assert_eq!(d.base.as_deref(), Some("ekko-b1"));
        // Asked for.
        let mut full = request(Some("ekko-b1"));
        full.force_full = true;
        let d = decide(&full, &[bitmap("ekko-b1")], size);
        assert_eq!(d.reason, Some(FullReason::Requested));
        // Someone else's bitmaps are never touched.
        let d = decide(
            &request(Some("ekko-b1")),
            &[bitmap("ekko-b1"), bitmap("backup-tool")],
            size,
        );
        assert_eq!(d.reason, None);
        assert!(d.remove.is_empty());
    }
}
