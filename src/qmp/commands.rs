//! The QMP commands Ekko sends, as typed helpers over [`QmpClient`].
//!
//! Arguments use `qapi`'s generated types where they fit (bitmap actions,
//! transactions, backup jobs); queries are read as JSON into small structs
//! that ignore what they do not know, so a newer QEMU cannot break them.

use std::time::Duration;

use qapi::qmp;
use serde_json::{json, Value};

use super::client::{wait_for_event, QmpClient, QmpError};

/// A dirty bitmap as `query-named-block-nodes` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapInfo {
    /// Absent for anonymous bitmaps (a running job's successor): skip those.
    pub name: Option<String>,
    pub recording: bool,
    pub persistent: bool,
    pub busy: bool,
    pub inconsistent: bool,
    pub granularity: u64,
    pub count: u64,
}

/// One block node of `query-named-block-nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockNode {
    pub node_name: String,
    pub driver: String,
    /// The image file name QEMU reports for the node.
    pub filename: Option<String>,
    pub virtual_size: Option<u64>,
    pub bitmaps: Vec<BitmapInfo>,
}

fn b(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(false)
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// Parse the reply of `query-named-block-nodes` (flat).
pub fn parse_block_nodes(reply: &Value) -> Vec<BlockNode> {
    reply
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| {
                    Some(BlockNode {
                        node_name: n.get("node-name")?.as_str()?.to_string(),
                        driver: n
                            .get("drv")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        filename: n.get("file").and_then(Value::as_str).map(String::from),
                        virtual_size: n
                            .get("image")
                            .and_then(|i| i.get("virtual-size"))
                            .and_then(Value::as_u64),
                        bitmaps: n
                            .get("dirty-bitmaps")
                            .and_then(Value::as_array)
                            .map(|bs| {
                                bs.iter()
                                    .map(|bm| BitmapInfo {
                                        name: bm
                                            .get("name")
                                            .and_then(Value::as_str)
                                            .map(String::from),
                                        recording: b(bm, "recording"),
                                        persistent: b(bm, "persistent"),
                                        busy: b(bm, "busy"),
                                        inconsistent: b(bm, "inconsistent"),
                                        granularity: u(bm, "granularity"),
                                        count: u(bm, "count"),
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

pub async fn block_nodes(qmp: &QmpClient) -> Result<Vec<BlockNode>, QmpError> {
    let reply = qmp
        .execute("query-named-block-nodes", Some(json!({ "flat": true })))
        .await?;
    Ok(parse_block_nodes(&reply))
}

/// Ids of block exports.
pub async fn export_ids(qmp: &QmpClient) -> Result<Vec<String>, QmpError> {
    let reply = qmp.execute("query-block-exports", None).await?;
    Ok(reply
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.get("id")?.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// (id, status) of jobs.
pub async fn jobs(qmp: &QmpClient) -> Result<Vec<(String, String)>, QmpError> {
    let reply = qmp.execute("query-jobs", None).await?;
    Ok(reply
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|j| {
                    Some((
                        j.get("id")?.as_str()?.to_string(),
                        j.get("status")?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

// ---- transaction actions (qapi types) ----

pub fn bitmap_add(node: &str, name: &str, granularity: u32) -> qmp::TransactionAction {
    qmp::BlockDirtyBitmapAdd {
        node: node.to_string(),
        name: name.to_string(),
        granularity: Some(granularity),
        persistent: Some(true),
        disabled: None,
    }
    .into()
}

fn bitmap(node: &str, name: &str) -> qmp::BlockDirtyBitmap {
    qmp::BlockDirtyBitmap {
        node: node.to_string(),
        name: name.to_string(),
    }
}

pub fn bitmap_disable(node: &str, name: &str) -> qmp::TransactionAction {
    qmp::TransactionAction::block_dirty_bitmap_disable(qmp::BlockDirtyBitmapWrapper {
        data: bitmap(node, name),
    })
}

pub fn bitmap_enable(node: &str, name: &str) -> qmp::TransactionAction {
    qmp::TransactionAction::block_dirty_bitmap_enable(qmp::BlockDirtyBitmapWrapper {
        data: bitmap(node, name),
    })
}

pub fn bitmap_remove(node: &str, name: &str) -> qmp::TransactionAction {
    qmp::TransactionAction::block_dirty_bitmap_remove(qmp::BlockDirtyBitmapWrapper {
        data: bitmap(node, name),
    })
}

/// Merge `sources` into `target` (which is not cleared first).
pub fn bitmap_merge(node: &str, target: &str, sources: &[&str]) -> qmp::TransactionAction {
    qmp::TransactionAction::block_dirty_bitmap_merge(qmp::BlockDirtyBitmapMergeWrapper {
        data: qmp::BlockDirtyBitmapMerge {
            node: node.to_string(),
            target: target.to_string(),
            bitmaps: sources
                .iter()
                .map(|s| qmp::BlockDirtyBitmapOrStr::local(s.to_string()))
                .collect(),
        },
    })
}

/// A copy-before-write (`sync: none`) job from `device` into `target`: the
/// image-fleecing job of a pull-mode backup.
pub fn fleece_job(
    job_id: &str,
    device: &str,
    target: &str,
) -> Result<qmp::TransactionAction, QmpError> {
    let backup: qmp::BlockdevBackup = serde_json::from_value(json!({
        "job-id": job_id,
        "device": device,
        "target": target,
        "sync": "none",
        "auto-dismiss": false,
    }))
    .map_err(|e| QmpError::Protocol(format!("blockdev-backup arguments: {e}")))?;
    Ok(backup.into())
}

/// Run actions in one atomic `transaction`.
pub async fn transaction(
    qmp: &QmpClient,
    actions: Vec<qmp::TransactionAction>,
) -> Result<(), QmpError> {
    qmp.run(qmp::transaction {
        actions,
        properties: None,
    })
    .await?;
    Ok(())
}

// ---- jobs, nodes, exports ----

/// Wait until job `id` reaches `concluded` (subscribe before starting it).
pub async fn wait_job_concluded(
    events: &mut tokio::sync::broadcast::Receiver<super::Event>,
    id: &str,
    timeout: Duration,
) -> Result<(), QmpError> {
    wait_for_event(events, &format!("job {id} concluded"), timeout, |e| {
        e.name == "JOB_STATUS_CHANGE"
            && e.str("id") == Some(id)
            && e.str("status") == Some("concluded")
    })
    .await
    .map(|_| ())
}

/// The error a concluded job reports, if any.
pub async fn job_error(qmp: &QmpClient, id: &str) -> Result<Option<String>, QmpError> {
    let reply = qmp.execute("query-jobs", None).await?;
    Ok(reply.as_array().and_then(|a| {
        a.iter()
            .find(|j| j.get("id").and_then(Value::as_str) == Some(id))
            .and_then(|j| j.get("error").and_then(Value::as_str).map(String::from))
    }))
}

pub async fn job_dismiss(qmp: &QmpClient, id: &str) -> Result<(), QmpError> {
    qmp.execute("job-dismiss", Some(json!({ "id": id })))
        .await
        .map(|_| ())
}

/// Create a qcow2 overlay file of `size` bytes backed by node `backing`,
/// through QMP only, and add it as node `node` (its file node is
/// `<node>-file`).
pub async fn add_overlay(
    qmp: &QmpClient,
    node: &str,
    path: &str,
    size: u64,
    backing: &str,
    timeout: Duration,
) -> Result<(), QmpError> {
    let file_node = format!("{node}-file");
    for (job, options) in [
        (
            format!("{node}-mkfile"),
            json!({ "driver": "file", "filename": path, "size": 0 }),
        ),
        (
            format!("{node}-mkqcow2"),
            json!({ "driver": "qcow2", "file": file_node, "size": size }),
        ),
    ] {
        let mut events = qmp.subscribe();
        qmp.execute(
            "blockdev-create",
            Some(json!({ "job-id": job, "options": options })),
        )
        .await?;
        wait_job_concluded(&mut events, &job, timeout).await?;
        let err = job_error(qmp, &job).await?;
        job_dismiss(qmp, &job).await?;
        if let Some(e) = err {
            return Err(QmpError::Qemu {
                command: "blockdev-create".into(),
                class: "GenericError".into(),
                desc: e,
            });
        }
        if job.ends_with("-mkfile") {
            qmp.execute(
                "blockdev-add",
                Some(json!({ "driver": "file", "node-name": file_node, "filename": path })),
            )
            .await?;
        }
    }
    qmp.execute(
        "blockdev-add",
        Some(
            json!({ "driver": "qcow2", "node-name": node, "file": file_node, "backing": backing }),
        ),
    )
    .await?;
    Ok(())
}

pub async fn blockdev_del(qmp: &QmpClient, node: &str) -> Result<(), QmpError> {
    qmp.execute("blockdev-del", Some(json!({ "node-name": node })))
        .await
        .map(|_| ())
}

/// Start QEMU's NBD server on a unix socket. `Ok(false)` when a server is
/// already running (QEMU has one; it is someone else's to stop).
pub async fn nbd_server_start(qmp: &QmpClient, socket: &str) -> Result<bool, QmpError> {
    let args = json!({ "addr": { "type": "unix", "data": { "path": socket } } });
    match qmp.execute("nbd-server-start", Some(args)).await {
        Ok(_) => Ok(true),
        Err(e) if e.qemu_desc().is_some_and(|d| d.contains("already running")) => Ok(false),
        Err(e) => Err(e),
    }
}

pub async fn nbd_server_stop(qmp: &QmpClient) -> Result<(), QmpError> {
    qmp.execute("nbd-server-stop", None).await.map(|_| ())
}

/// Export `node` read-only over NBD as `name`, with `bitmap` (disabled) as
/// the `qemu:dirty-bitmap:<bitmap>` meta context.
pub async fn export_add(
    qmp: &QmpClient,
    id: &str,
    node: &str,
    name: &str,
    bitmap: Option<&str>,
) -> Result<(), QmpError> {
    let mut args =
        json!({ "type": "nbd", "id": id, "node-name": node, "name": name, "writable": false });
    if let Some(b) = bitmap {
        args["bitmaps"] = json!([b]);
    }
    qmp.execute("block-export-add", Some(args))
        .await
        .map(|_| ())
}

/// Remove an export and wait for it to be gone; `hard` drops connected
/// clients (error paths).
pub async fn export_del(
    qmp: &QmpClient,
    id: &str,
    hard: bool,
    timeout: Duration,
) -> Result<(), QmpError> {
    let mut events = qmp.subscribe();
    let mode = if hard { "hard" } else { "safe" };
    qmp.execute("block-export-del", Some(json!({ "id": id, "mode": mode })))
        .await?;
    wait_for_event(&mut events, &format!("export {id} deleted"), timeout, |e| {
        e.name == "BLOCK_EXPORT_DELETED" && e.str("id") == Some(id)
    })
    .await
    .map(|_| ())
}

/// Cancel a job, wait for it to conclude and dismiss it.
pub async fn job_cancel(qmp: &QmpClient, id: &str, timeout: Duration) -> Result<(), QmpError> {
    let mut events = qmp.subscribe();
    match qmp.execute("job-cancel", Some(json!({ "id": id }))).await {
        Ok(_) => wait_job_concluded(&mut events, id, timeout).await?,
        // Already concluded (e.g. it failed): only the dismiss is left.
        Err(e)
            if e.qemu_desc()
                .is_some_and(|d| d.contains("concluded") || d.contains("in state")) => {}
        Err(e) => return Err(e),
    }
    job_dismiss(qmp, id).await
}

pub async fn bitmap_remove_now(qmp: &QmpClient, node: &str, name: &str) -> Result<(), QmpError> {
    qmp.execute(
        "block-dirty-bitmap-remove",
        Some(json!({ "node": node, "name": name })),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_nodes_tolerate_what_they_do_not_know() {
        let reply = json!([
            {"node-name": "disk0", "drv": "qcow2", "image": {"virtual-size": 1073741824, "format-specific": {"new": true}},
             "dirty-bitmaps": [
                {"name": "ekko-a", "recording": true, "persistent": true, "busy": false, "granularity": 65536, "count": 131072},
                {"recording": true, "busy": true, "granularity": 65536, "count": 0},
                {"name": "ekko-b", "recording": false, "persistent": true, "busy": false, "granularity": 65536, "count": 0, "inconsistent": true, "future-field": 1}
             ]},
            {"node-name": "file0", "drv": "file", "image": {"virtual-size": 5}},
            {"no-name": true}
        ]);
        let nodes = parse_block_nodes(&reply);
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].virtual_size, Some(1 << 30));
        assert_eq!(nodes[0].bitmaps.len(), 3);
        assert!(nodes[0].bitmaps[1].name.is_none());
        assert!(nodes[0].bitmaps[2].inconsistent);
        assert!(nodes[1].bitmaps.is_empty());
    }

    #[test]
    fn actions_serialise_as_qemu_expects() {
        let v = serde_json::to_value(bitmap_add("disk0", "ekko-1", 65536)).unwrap();
        assert_eq!(v["type"], "block-dirty-bitmap-add");
        assert_eq!(v["data"]["granularity"], 65536);
        assert_eq!(v["data"]["persistent"], true);
        let v = serde_json::to_value(bitmap_merge("disk0", "ekko-0", &["ekko-1"])).unwrap();
        assert_eq!(v["type"], "block-dirty-bitmap-merge");
        assert_eq!(v["data"]["bitmaps"][0], "ekko-1");
        let v = serde_json::to_value(fleece_job("j", "disk0", "fleece").unwrap()).unwrap();
        assert_eq!(v["type"], "blockdev-backup");
        assert_eq!(v["data"]["sync"], "none");
        assert_eq!(v["data"]["auto-dismiss"], false);
        assert!(v["data"].get("bitmap").is_none_or(Value::is_null));
    }
}
