//! No libvirt call stops its caller for ever. A hung libvirtd, or a QEMU
//! whose monitor no longer answers (its image on a stalled NFS server),
//! would otherwise hold the worker: libvirt's calls cannot be interrupted
//! and a connection without an event loop has no keepalive.
//!
//! * Each call waits at most `[libvirt] job_timeout`
//!   ([`Shared::job_timeout`]); then the caller gets
//!   [`ExtractError::TimedOut`] and carries on, and the thread of the call
//!   is left behind (it ends whenever libvirt answers).
//! * While a call for a key (a domain's UUID, or [`LISTING`]) is left
//!   behind, later calls for that key fail at once: a domain whose monitor
//!   hangs costs one thread, not one per heartbeat.
//! * A backup job's beginning and end, and the cleanup of one instance,
//!   make several calls and may wait for a job to end: they get
//!   [`Shared::step_timeout`]. A beginning that finishes after its caller
//!   gave up (timed out, or the job was stopped) is ended at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::snapshot::LibvirtSnapshot;
use super::Shared;
use crate::extract::{DiskRequest, DiskSnapshot, ExtractError, InstanceSnapshot, SavedCheckpoint};
use crate::hypervisor::SnapshotOptions;

/// The key of calls that list the domains.
pub(super) const LISTING: &str = "the domain list";

/// Calls left behind, by key: how many have not returned yet.
pub(super) type Stuck = Mutex<HashMap<String, usize>>;

fn lock(m: &Stuck) -> MutexGuard<'_, HashMap<String, usize>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// How long a step of several calls may take (see the module docs).
    pub fn step_timeout(&self) -> Duration {
        3 * self.job_timeout() + Duration::from_secs(self.opts.quiesce_timeout)
    }

    /// Fail at once while a call for `key` is left behind.
    pub(super) fn refuse_if_stuck(&self, key: &str, what: &str) -> Result<(), ExtractError> {
        if lock(&self.stuck).contains_key(key) {
            return Err(ExtractError::TimedOut(format!(
                "{what}: an earlier libvirt call for {key} has still not returned"
            )));
        }
        Ok(())
    }
}

fn timed_out(what: &str, limit: Duration) -> ExtractError {
    ExtractError::TimedOut(format!(
        "{what}: libvirt did not answer within {} s ([libvirt] job_timeout); the call was left behind",
        limit.as_secs()
    ))
}

/// Run blocking libvirt work `f` on tokio's blocking pool for `key`,
/// waiting at most `limit` for it.
pub(super) async fn call<T: Send + 'static>(
    shared: &Arc<Shared>,
    key: &str,
    what: &str,
    limit: Duration,
    f: impl FnOnce(&Shared) -> Result<T, ExtractError> + Send + 'static,
) -> Result<T, ExtractError> {
    shared.refuse_if_stuck(key, what)?;
    // Both flags change under the `stuck` lock, so a call that returns
    // just as its caller gives up is counted once or not at all.
    let done = Arc::new(AtomicBool::new(false));
    let left_behind = Arc::new(AtomicBool::new(false));
    let task = {
        let (shared, key) = (shared.clone(), key.to_string());
        let (done, left_behind) = (done.clone(), left_behind.clone());
        tokio::task::spawn_blocking(move || {
            let r = f(shared.as_ref());
            let mut stuck = lock(&shared.stuck);
            done.store(true, Ordering::Relaxed);
            if left_behind.load(Ordering::Relaxed) {
                tracing::info!(key = %key, "a libvirt call left behind returned");
                if let Some(n) = stuck.get_mut(&key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        stuck.remove(&key);
                    }
                }
            }
            r
        })
    };
    match tokio::time::timeout(limit, task).await {
        Ok(joined) => joined.map_err(|e| ExtractError::Other(format!("libvirt task: {e}")))?,
        Err(_) => {
            {
                let mut stuck = lock(&shared.stuck);
                if !done.load(Ordering::Relaxed) {
                    left_behind.store(true, Ordering::Relaxed);
                    *stuck.entry(key.to_string()).or_default() += 1;
                }
            }
            tracing::warn!(
                key,
                what,
                "libvirt did not answer in time; carrying on without it"
            );
            Err(timed_out(what, limit))
        }
    }
}

/// Begin a backup job of instance `uuid`, within [`Shared::step_timeout`].
pub(super) async fn begin(
    shared: Arc<Shared>,
    uuid: &str,
    requests: Vec<DiskRequest>,
    opts: SnapshotOptions,
) -> Result<Box<dyn InstanceSnapshot>, ExtractError> {
    shared.refuse_if_stuck(uuid, "beginning the backup")?;
    let limit = shared.step_timeout();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let id = uuid.to_string();
    let s = shared.clone();
    // Its own task, so that a beginning nobody waits for any more still
    // ends here: its job is ended instead of being left to run.
    tokio::spawn(async move {
        let begun = LibvirtSnapshot::begin(s, &id, requests, opts).await;
        if let Err(Ok(late)) = tx.send(begun) {
            tracing::warn!(instance = %id, "a backup job began after its caller gave up; ending it");
            if let Err(e) = Box::new(late).abort().await {
                tracing::warn!(instance = %id, error = %e, "ending a backup job that began late; the next backup cleans up");
            }
        }
    });
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(begun)) => Ok(Box::new(Bounded {
            inner: Box::new(begun?),
            limit,
        })),
        Ok(Err(_)) => Err(ExtractError::Other(format!(
            "instance {uuid}: the task beginning the backup ended abnormally"
        ))),
        Err(_) => Err(timed_out(
            &format!("instance {uuid}: beginning the backup"),
            limit,
        )),
    }
}

/// A backup job whose end is bounded.
struct Bounded {
    inner: Box<dyn InstanceSnapshot>,
    limit: Duration,
}

impl Bounded {
    async fn ending(
        limit: Duration,
        what: &str,
        end: impl std::future::Future<Output = Result<(), ExtractError>>,
    ) -> Result<(), ExtractError> {
        // On time-out the libvirt part goes on in its thread and ends the
        // job whenever libvirt answers.
        tokio::time::timeout(limit, end)
            .await
            .unwrap_or_else(|_| Err(timed_out(what, limit)))
    }
}

#[async_trait]
impl InstanceSnapshot for Bounded {
    fn disks(&self) -> Vec<&dyn DiskSnapshot> {
        self.inner.disks()
    }
    fn consistency(&self) -> crate::status::Consistency {
        self.inner.consistency()
    }
    fn checkpoint(&self) -> Option<SavedCheckpoint> {
        self.inner.checkpoint()
    }
    async fn commit(self: Box<Self>) -> Result<(), ExtractError> {
        let this = *self;
        Self::ending(this.limit, "ending the backup job", this.inner.commit()).await
    }
    async fn abort(self: Box<Self>) -> Result<(), ExtractError> {
        let this = *self;
        Self::ending(this.limit, "ending the backup job", this.inner.abort()).await
    }
}
