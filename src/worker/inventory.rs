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
//! The inventory goes in pages ([`pages`]), each small enough for the
//! conductor to read.

use std::sync::Arc;

use super::{lock, Worker};
use crate::extract::ExtractError;
use crate::hypervisor::DiskInfo;
use crate::wire::{
    Heartbeat, HostInventory, InventoryDisk, InventoryInstance, HEARTBEAT_KIND, HOST_INVENTORY,
    INVENTORY_PAGE,
};

/// What a page's message carries besides its instances (the envelope,
/// the host's name): a generous allowance.
const PAGE_OVERHEAD: usize = 1024;

/// `instances` in pages of at most [`INVENTORY_PAGE`] instances and,
/// serialized, at most `max_bytes` (an instance larger than that alone
/// goes in a page of its own); always at least one page, so an empty
/// inventory is still sent. Each page is a whole `host.inventory`: the
/// conductor records each instance on its own, whatever page it is in.
pub(super) fn pages(
    host: &str,
    instances: Vec<InventoryInstance>,
    max_bytes: usize,
) -> Vec<HostInventory> {
    let budget = max_bytes.saturating_sub(PAGE_OVERHEAD + 2 * host.len());
    let page = || HostInventory {
        host: host.to_string(),
        instances: Vec::new(),
    };
    let mut out = vec![page()];
    let mut bytes: usize = 0;
    for i in instances {
        // As serialized, with its comma (escaping can only be measured).
        let size = serde_json::to_vec(&i).map_or(usize::MAX, |v| v.len()) + 1;
        let current = out.len() - 1;
        let full =
            out[current].instances.len() >= INVENTORY_PAGE || bytes.saturating_add(size) > budget;
        if full && !out[current].instances.is_empty() {
            out.push(page());
            bytes = 0;
        }
        bytes = bytes.saturating_add(size);
        let last = out.len() - 1;
        out[last].instances.push(i);
    }
    out
}

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
            exports: Some(self.served_exports()),
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
        let mut listed = Vec::new();
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
            listed.push(InventoryInstance {
                id: inst.id,
                project_id: inst.project_id,
                name: inst.name,
                disks,
            });
        }
        // A quarter of what the conductor reads at most: well within it
        // whatever the envelope adds.
        let max_report = crate::wire::max_report_size(&self.ekko.config) / 4;
        let max_bytes = usize::try_from(max_report).unwrap_or(usize::MAX);
        for page in pages(&self.host, listed, max_bytes) {
            if let Err(e) = self.publish(HOST_INVENTORY, &page).await {
                tracing::warn!(error = %e, "inventory not sent");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(n: usize, disks: usize) -> InventoryInstance {
        InventoryInstance {
            id: format!("{n:08}-0000-0000-0000-000000000000"),
            project_id: "p".repeat(32),
            name: format!("vm-{n}"),
            disks: (0..disks)
                .map(|d| InventoryDisk {
                    device: format!("vd{d}"),
                    node_name: format!("drive-{d}"),
                    virtual_size: 1 << 30,
                })
                .collect(),
        }
    }

    #[test]
    fn an_inventory_goes_in_pages_within_the_bounds() {
        let max = 64 << 10;
        let all: Vec<_> = (0..2000).map(|n| instance(n, 4)).collect();
        let paged = pages("compute-1", all.clone(), max);
        assert!(paged.len() > 4, "{} pages", paged.len());
        for p in &paged {
            assert_eq!(p.host, "compute-1");
            assert!(!p.instances.is_empty() && p.instances.len() <= INVENTORY_PAGE);
            let env = crate::queue::Envelope::new(HOST_INVENTORY, p).unwrap();
            assert!(
                env.to_bytes().unwrap().len() <= max,
                "a page over the bound"
            );
        }
        let again: Vec<_> = paged.into_iter().flat_map(|p| p.instances).collect();
        assert_eq!(again, all, "every instance once, in order");
        // Small instances: the count bounds the page.
        let small: Vec<_> = (0..1200).map(|n| instance(n, 0)).collect();
        let counts: Vec<_> = pages("h", small, usize::MAX)
            .iter()
            .map(|p| p.instances.len())
            .collect();
        assert_eq!(counts, vec![INVENTORY_PAGE, INVENTORY_PAGE, 200]);
    }

    #[test]
    fn an_empty_inventory_is_one_empty_page_and_a_huge_instance_goes_alone() {
        let empty = pages("h", Vec::new(), 1 << 20);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].instances.is_empty());
        let paged = pages(
            "h",
            vec![instance(0, 1), instance(1, 64), instance(2, 1)],
            2048,
        );
        let counts: Vec<_> = paged.iter().map(|p| p.instances.len()).collect();
        assert_eq!(counts, vec![1, 1, 1]);
    }
}
