//! What a host tells the conductor every `[backup] heartbeat_interval`:
//! that it is alive (heartbeat) and which instances and disks it serves
//! (inventory). A busy instance is not probed again (its last known disks
//! are reported), so a running backup never competes for its monitor.
//!
//! Neither stops the worker's loop: each tick sends the heartbeat from a
//! task of its own, and that task starts the inventory in another (then
//! the cleanup after an earlier worker, see [`super::recovery`]). A
//! heartbeat or inventory still under way when the next tick comes is not
//! started again, so a hypervisor that hangs holds one inventory and never
//! the heartbeats. An instance the hypervisor did not answer for in time
//! keeps its last known disks: dropped, the conductor would think them
//! detached.

use std::sync::Arc;

use super::{lock, Worker};
use crate::extract::ExtractError;
use crate::hypervisor::DiskInfo;
use crate::wire::{
    Heartbeat, HostInventory, InventoryDisk, InventoryInstance, HEARTBEAT_KIND, HOST_INVENTORY,
};

fn wire_disk(d: &DiskInfo) -> InventoryDisk {
    InventoryDisk {
        device: d.device.clone(),
        node_name: d.node_name.clone(),
        virtual_size: d.virtual_size,
    }
}

/// Whether a task slot holds a task that has not finished.
fn under_way(slot: &Option<tokio::task::JoinHandle<()>>) -> bool {
    slot.as_ref().is_some_and(|t| !t.is_finished())
}

impl Worker {
    /// One tick: the heartbeat, then the inventory (see the module docs).
    pub(super) fn tick(self: &Arc<Self>) {
        let mut slot = lock(&self.heartbeat_task);
        if under_way(&slot) {
            tracing::warn!("the previous heartbeat is still being sent; skipping this one");
            return;
        }
        let this = self.clone();
        *slot = Some(tokio::spawn(async move {
            if this.heartbeat().await {
                this.start_inventory();
            }
        }));
    }

    fn start_inventory(self: &Arc<Self>) {
        let mut slot = lock(&self.inventory_task);
        if under_way(&slot) {
            tracing::debug!("the previous inventory is still under way; skipping this one");
            return;
        }
        let this = self.clone();
        *slot = Some(tokio::spawn(async move {
            this.inventory().await;
            this.recover_leftovers().await;
        }));
    }

    /// End the heartbeat and inventory tasks (the worker stops).
    pub(super) fn stop_reports(&self) {
        for slot in [&self.heartbeat_task, &self.inventory_task] {
            if let Some(t) = lock(slot).take() {
                t.abort();
            }
        }
    }

    /// Whether the heartbeat went out.
    async fn heartbeat(&self) -> bool {
        let beat = Heartbeat {
            host: self.host.clone(),
            version: crate::VERSION.to_string(),
            capacity: self.ekko.config.backup.max_concurrent_backups,
        };
        match self.publish(HEARTBEAT_KIND, &beat).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat not sent");
                false
            }
        }
    }

    async fn inventory(&self) {
        let instances = match self.hypervisor.instances().await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list this host's instances");
                return;
            }
        };
        lock(&self.known_disks).retain(|id, _| instances.iter().any(|i| &i.id == id));
        let busy = self.busy_instances();
        let mut report = HostInventory {
            host: self.host.clone(),
            instances: Vec::new(),
        };
        for inst in instances {
            let disks = if busy.contains(&inst.id) {
                lock(&self.known_disks).get(&inst.id).cloned()
            } else {
                match self.hypervisor.disks(&inst).await {
                    Ok(d) => Some(d.iter().map(wire_disk).collect::<Vec<_>>()),
                    Err(e @ ExtractError::TimedOut(_)) => {
                        tracing::warn!(instance = %inst.id, error = %e, "instance not answering; reporting its last known disks");
                        lock(&self.known_disks).get(&inst.id).cloned()
                    }
                    Err(e) => {
                        tracing::warn!(instance = %inst.id, error = %e, "instance not reachable");
                        None
                    }
                }
            };
            let Some(disks) = disks else { continue };
            lock(&self.known_disks).insert(inst.id.clone(), disks.clone());
            report.instances.push(InventoryInstance {
                id: inst.id,
                project_id: inst.project_id,
                name: inst.name,
                disks,
            });
        }
        if let Err(e) = self.publish(HOST_INVENTORY, &report).await {
            tracing::warn!(error = %e, "inventory not sent");
        }
    }
}
