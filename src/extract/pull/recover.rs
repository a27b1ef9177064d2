//! Cleaning up after a worker that died mid-backup: exports, jobs and
//! fleece nodes of ours are removed, and a half-done bitmap rotation (the
//! new bitmap enabled, the old one disabled) is undone, so the next backup
//! misses no guest write.

use std::time::Duration;

use super::PREFIX;
use crate::extract::ExtractError;
use crate::qmp::commands::{self as cmd, BitmapInfo};
use crate::qmp::QmpClient;

/// The (new, old) bitmap pair of a rotation that did not finish: exactly
/// two consistent bitmaps of ours on the node, one recording and one not.
pub(super) fn interrupted_rotation(bitmaps: &[BitmapInfo]) -> Option<(String, String)> {
    let ours: Vec<_> = bitmaps
        .iter()
        .filter(|b| b.name.as_deref().is_some_and(|n| n.starts_with(PREFIX)))
        .collect();
    let named = |recording: bool| -> Vec<String> {
        ours.iter()
            .filter(|b| b.recording == recording && !b.inconsistent)
            .filter_map(|b| b.name.clone())
            .collect()
    };
    let (enabled, disabled) = (named(true), named(false));
    (ours.len() == 2 && enabled.len() == 1 && disabled.len() == 1)
        .then(|| (enabled[0].clone(), disabled[0].clone()))
}

/// Remove what a previous, interrupted backup left on this QEMU, and put
/// its bitmaps back to the state before it started.
pub(super) async fn recover(qmp: &QmpClient, timeout: Duration) -> Result<(), ExtractError> {
    for id in cmd::export_ids(qmp)
        .await?
        .into_iter()
        .filter(|i| i.starts_with(PREFIX))
    {
        tracing::warn!(export = %id, "removing export left by an interrupted backup");
        cmd::export_del(qmp, &id, true, timeout).await?;
    }
    for (id, _) in cmd::jobs(qmp)
        .await?
        .into_iter()
        .filter(|(i, _)| i.starts_with(PREFIX))
    {
        tracing::warn!(job = %id, "cancelling job left by an interrupted backup");
        cmd::job_cancel(qmp, &id, timeout).await?;
    }
    let nodes = cmd::block_nodes(qmp).await?;
    let fleece: Vec<&str> = nodes
        .iter()
        .map(|n| n.node_name.as_str())
        .filter(|n| n.starts_with("ekko-fl") && !n.ends_with("-file"))
        .collect();
    for node in fleece {
        let file_node = format!("{node}-file");
        let file = nodes.iter().find(|n| n.node_name == file_node);
        cmd::blockdev_del(qmp, node).await?;
        if let Some(file) = file {
            cmd::blockdev_del(qmp, &file_node).await?;
            if let Some(path) = file
                .filename
                .as_deref()
                .filter(|p| p.contains("ekko-fleece-"))
            {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    // A bitmap pair (new enabled, old disabled) means the worker died
    // between the transaction and the end: undo the rotation.
    for node in cmd::block_nodes(qmp).await? {
        let pair = interrupted_rotation(&node.bitmaps);
        if let Some((new, old)) = pair {
            tracing::warn!(node = %node.node_name, %old, %new, "restoring bitmaps of an interrupted backup");
            cmd::transaction(
                qmp,
                vec![
                    cmd::bitmap_merge(&node.node_name, &old, &[&new]),
                    cmd::bitmap_enable(&node.node_name, &old),
                    cmd::bitmap_remove(&node.node_name, &new),
                ],
            )
            .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(name: &str, recording: bool, inconsistent: bool) -> BitmapInfo {
        BitmapInfo {
            name: Some(name.into()),
            recording,
            persistent: true,
            busy: false,
            inconsistent,
            granularity: 65536,
            count: 0,
        }
    }

    #[test]
    fn a_half_rotation_is_found_and_nothing_else() {
        let pair = [
            bitmap("ekko-new", true, false),
            bitmap("ekko-old", false, false),
        ];
        assert_eq!(
            interrupted_rotation(&pair),
            Some(("ekko-new".into(), "ekko-old".into()))
        );
        // The steady state: one enabled bitmap.
        assert_eq!(interrupted_rotation(&pair[..1]), None);
        // Two enabled (never made by Ekko), or an inconsistent one: not a
        // rotation to undo; the next backup's decision handles them.
        let both = [bitmap("ekko-a", true, false), bitmap("ekko-b", true, false)];
        assert_eq!(interrupted_rotation(&both), None);
        let broken = [
            bitmap("ekko-new", true, false),
            bitmap("ekko-old", false, true),
        ];
        assert_eq!(interrupted_rotation(&broken), None);
        // Other tools' bitmaps are not ours.
        let foreign = [
            bitmap("other", true, false),
            bitmap("ekko-old", false, false),
        ];
        assert_eq!(interrupted_rotation(&foreign), None);
    }
}
