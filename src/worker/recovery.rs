//! Cleaning up after a worker that died mid-backup: its backup jobs,
//! scratch files and checkpoint metadata, and what backups left for
//! instances no longer on this host ([`Hypervisor::sweep`]). It runs after
//! each inventory until it has succeeded once, so a hypervisor that could
//! not be reached when the worker started (libvirtd starting after it) is
//! cleaned up as soon as it answers, and never holds the worker's loop.
//!
//! Jobs run meanwhile. An instance with a job is left alone (its backup
//! cleans it up before it starts); one being cleaned up is claimed under
//! the lock of the running jobs, and a job admitted for it meanwhile waits
//! for the cleanup to end before it starts.
//!
//! [`Hypervisor::sweep`]: crate::hypervisor::Hypervisor::sweep

use std::collections::HashSet;
use std::time::Duration;

use super::{lock, Worker};

/// How far the cleanup got.
#[derive(Debug, Default)]
pub(super) struct Recovery {
    /// Instances still to clean up; `None` until they were first listed.
    pending: Option<HashSet<String>>,
    swept: bool,
    done: bool,
}

impl Worker {
    /// One attempt at what is left of the cleanup.
    pub(super) async fn recover_leftovers(&self) {
        if !self.hypervisor.cleans_up_at_start() {
            return;
        }
        let (pending, swept) = {
            let r = lock(&self.recovery);
            if r.done {
                return;
            }
            (r.pending.clone(), r.swept)
        };
        let instances = match self.hypervisor.instances().await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot clean up after earlier backups yet; trying again after the next inventory");
                return;
            }
        };
        let mut failed = HashSet::new();
        for inst in instances
            .iter()
            .filter(|i| pending.as_ref().is_none_or(|p| p.contains(&i.id)))
        {
            if !self.claim_for_recovery(&inst.id) {
                continue;
            }
            let r = self.hypervisor.recover(inst).await;
            lock(&self.recovering).remove(&inst.id);
            if let Err(e) = r {
                tracing::warn!(instance = %inst.id, error = %e, "cleaning up after an earlier backup failed; trying again later");
                failed.insert(inst.id.clone());
            }
        }
        let swept = swept
            || match self.hypervisor.sweep().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot remove what backups left for instances gone from this host; trying again later");
                    false
                }
            };
        let mut r = lock(&self.recovery);
        r.done = failed.is_empty() && swept;
        r.pending = Some(failed);
        r.swept = swept;
        if r.done {
            tracing::info!("cleaned up after earlier backups");
        }
    }

    /// Claim an instance for its cleanup, unless a job has it.
    fn claim_for_recovery(&self, instance: &str) -> bool {
        let running = lock(&self.running);
        if running.values().any(|(i, _)| i == instance) {
            return false;
        }
        lock(&self.recovering).insert(instance.to_string());
        true
    }

    /// Wait until instance `instance` is not being cleaned up (a job for
    /// it was admitted while it was).
    pub(super) async fn wait_for_recovery(&self, instance: &str) {
        while lock(&self.recovering).contains(instance) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
