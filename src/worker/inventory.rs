//! What a host tells the conductor every `[backup] heartbeat_interval`:
//! that it is alive (heartbeat) and which instances and disks it serves
//! (inventory). A busy instance is not probed again (its last known disks
//! are reported), so a running backup never competes for its monitor.

use super::{lock, Worker};
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

impl Worker {
    /// Heartbeat and inventory.
    pub(super) async fn report(&self) {
        let beat = Heartbeat {
            host: self.host.clone(),
            version: crate::VERSION.to_string(),
            capacity: self.ekko.config.backup.max_concurrent_backups,
        };
        if let Err(e) = self.publish(HEARTBEAT_KIND, &beat).await {
            tracing::warn!(error = %e, "heartbeat not sent");
            return;
        }
        let instances = match self.hypervisor.instances().await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list this host's instances");
                return;
            }
        };
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
