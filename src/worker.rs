//! ekko-backup: the worker on each compute host. It runs the jobs routed
//! to its host and reports to the conductor over the bus; it never reads
//! the catalog (a job carries what it needs).
//!
//! The worker consumes, admits, runs, reports and journals; the work
//! itself is elsewhere ([`crate::execution`], the backup engine, the
//! hypervisor driver):
//!
//! * [`run`]: the daemon loop: heartbeats and inventory ([`inventory`],
//!   in tasks of their own), jobs from the host's durable queue (at most
//!   `max_concurrent_backups` at once), cancels from its control queue,
//!   graceful shutdown. Nothing it waits for depends on the hypervisor.
//! * [`recovery`]: cleaning up after a worker that died mid-backup.
//! * [`admission`]: the checks before a job runs and how it is stopped.
//! * [`backup`], [`restore`]: one job of each kind.
//! * [`journal`]: attempts and finished jobs, on local disk.
//!
//! Redelivery: a job is acknowledged only once its outcome is published,
//! so a worker killed mid-job gets it again from the broker; its journal
//! counts attempts (a job that kills the worker three times fails instead
//! of looping) and remembers finished jobs (a redelivery after the outcome
//! was sent is dropped). It runs on any [`MessageQueue`], so tests drive
//! it over the in-process queue.

mod admission;
mod backup;
mod export;
mod inventory;
mod journal;
mod recovery;
mod restore;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::backup::file_target::RestoredFiles;
use crate::hypervisor::Hypervisor;
use crate::queue::{Delivery, MessageQueue, QueueError};
use crate::wire::{
    CancelJob, InventoryDisk, JobFailed, StopExport, BACKUP_RUN, EXPORT_START, EXPORT_STOP,
    JOB_CANCEL, JOB_FAILED, RESTORE_RUN,
};
use crate::Ekko;
use journal::Journal;

/// Why the worker cannot run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("configuration: {0}")]
    Config(String),
}

/// Attempts of one job on one host before it fails instead of running again.
const MAX_ATTEMPTS: u32 = 3;
/// Seconds between progress reports of a running job.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// How long a finished job's outcome is retried on the bus before the job
/// is rolled back and left for redelivery.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(120);

/// Why a running job stops early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Run,
    /// The worker shuts down: roll back, leave the job for redelivery.
    Shutdown,
    /// A tenant or operator cancelled the job.
    Cancelled,
}

/// A lock whose holder panicked still guards consistent data here (every
/// critical section is a single insert or remove).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Worker {
    ekko: Ekko,
    host: String,
    hypervisor: Arc<dyn Hypervisor>,
    journal: Journal,
    /// Running jobs by job id: their instance and their stop signal.
    running: Mutex<HashMap<String, (String, watch::Sender<Stop>)>>,
    /// Jobs cancelled before they reached this worker.
    cancelled: Mutex<HashSet<String>>,
    /// Restores written and reported lately, by job id: a cancel that
    /// crossed the report (the restore ended in `error`) removes the file.
    finished_restores: Mutex<VecDeque<(String, RestoredFiles)>>,
    /// Disks last seen per instance (a busy instance is not probed).
    known_disks: Mutex<HashMap<String, Vec<InventoryDisk>>>,
    /// The heartbeat and inventory under way ([`inventory`]).
    heartbeat_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    inventory_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Cleanup after an earlier worker ([`recovery`]): how far it got, and
    /// the instances being cleaned up now.
    recovery: Mutex<recovery::Recovery>,
    recovering: Mutex<HashSet<String>>,
    /// Exports served here ([`export`]).
    exports: Mutex<export::Exports>,
}

impl Worker {
    fn queue(&self) -> &dyn MessageQueue {
        self.ekko.queue.as_ref()
    }

    async fn publish<T: serde::Serialize>(&self, kind: &str, body: &T) -> Result<(), QueueError> {
        crate::wire::publish_report(self.queue(), kind, body).await
    }

    /// Publish an outcome, retrying while the bus is down (the work it
    /// reports is done and stored).
    async fn publish_patiently<T: serde::Serialize>(
        &self,
        kind: &str,
        body: &T,
    ) -> Result<(), QueueError> {
        let start = std::time::Instant::now();
        let mut wait = Duration::from_millis(500);
        loop {
            match self.publish(kind, body).await {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() > PUBLISH_PATIENCE => return Err(e),
                Err(e) => {
                    tracing::warn!(kind, error = %e, "cannot report yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Tell the conductor a job failed, then drop its message.
    async fn fail(&self, delivery: Delivery, job_id: &str, error: String) {
        tracing::error!(job = job_id, %error, "job failed");
        let failed = JobFailed {
            job_id: job_id.to_string(),
            host: self.host.clone(),
            error,
            manifest_written: false,
        };
        match self.publish_patiently(JOB_FAILED, &failed).await {
            Ok(()) => {
                self.journal.done(job_id);
                let _ = delivery.ack().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot report the failure; leaving the job for redelivery");
                let _ = delivery.nack(true).await;
            }
        }
    }

    async fn handle(self: Arc<Self>, delivery: Delivery) {
        // The job runs, logs and reports under the API request that asked
        // for it.
        let request_id = delivery.envelope.request_id.clone();
        let span = tracing::info_span!(
            "job",
            request_id = request_id.as_deref().unwrap_or("-"),
            kind = ?delivery.envelope.kind,
            host = %self.host,
        );
        let work = self.handle_kind(delivery);
        crate::telemetry::with_request_id(request_id, tracing::Instrument::instrument(work, span))
            .await
    }

    async fn handle_kind(self: Arc<Self>, delivery: Delivery) {
        match delivery.envelope.kind.as_str() {
            BACKUP_RUN => self.handle_backup(delivery).await,
            RESTORE_RUN => self.handle_restore(delivery).await,
            other => {
                tracing::error!(id = %delivery.envelope.id, kind = other, "rejecting a job of unknown kind");
                let _ = delivery.nack(false).await;
            }
        }
    }
}

/// Ends the heartbeat and inventory tasks when dropped.
struct StopReports(Arc<Worker>);

impl Drop for StopReports {
    fn drop(&mut self) {
        self.0.stop_reports();
    }
}

/// The ekko-backup daemon (see the module documentation).
pub async fn run(
    ekko: Ekko,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), WorkerError> {
    let hypervisor = crate::hypervisor::from_config(&ekko.config)
        .map_err(|e| WorkerError::Config(format!("{e:#}")))?;
    run_with(ekko, hypervisor, shutdown).await
}

/// [`run`] on a given hypervisor driver.
pub(crate) async fn run_with(
    ekko: Ekko,
    hypervisor: Arc<dyn Hypervisor>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), WorkerError> {
    let host = ekko.config.default.host.clone();
    // The status queue is the conductors' to declare: a host's bus user
    // may touch only its own queues.
    let topology = ekko.topology();
    // Until the controller made the exchange, the host's queues cannot be
    // bound: wait for it (a host may boot first).
    let mut wait = Duration::from_millis(500);
    tokio::pin!(shutdown);
    loop {
        match topology.declare_host(ekko.queue.as_ref(), &host).await {
            Ok(()) => break,
            Err(QueueError::Unavailable(why)) => {
                tracing::warn!(%why, "cannot declare this host's queues yet; retrying");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let queue = topology.host_queue(&host);
    let capacity = ekko.config.backup.max_concurrent_backups.clamp(1, 64);
    // What a worker that died mid-backup left behind is cleaned up after
    // the inventory, not here: a hypervisor that hangs must not keep the
    // worker from starting ([`recovery`]).
    let journal = Journal::open(PathBuf::from(&ekko.config.default.state_path).join("jobs"))
        .map_err(|e| WorkerError::Config(format!("job journal: {e}")))?;
    let worker = Arc::new(Worker {
        host: host.clone(),
        hypervisor,
        journal,
        running: Mutex::new(HashMap::new()),
        cancelled: Mutex::new(Default::default()),
        finished_restores: Mutex::new(Default::default()),
        known_disks: Mutex::new(HashMap::new()),
        heartbeat_task: Mutex::new(None),
        inventory_task: Mutex::new(None),
        recovery: Mutex::new(Default::default()),
        recovering: Mutex::new(HashSet::new()),
        exports: Mutex::new(Default::default()),
        ekko: ekko.clone(),
    });
    // However the loop ends, the report tasks end with it.
    let _reports = StopReports(worker.clone());
    let mut jobs = ekko.queue.consume(&queue, capacity as u16).await?;
    let mut control = ekko
        .queue
        .consume(&topology.control_queue(&host), 16)
        .await?;
    let mut ticker = tokio::time::interval(Duration::from_secs(
        ekko.config.backup.heartbeat_interval.max(1),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    tracing::info!(%host, %queue, capacity, "ekko-backup ready");
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => worker.tick(),
            d = jobs.next() => {
                tasks.spawn(worker.clone().handle(d?));
            }
            c = control.next() => {
                let c = c?;
                if c.envelope.kind == EXPORT_START {
                    tasks.spawn(worker.clone().handle_export(c));
                    continue;
                }
                if c.envelope.kind == EXPORT_STOP {
                    match c.envelope.body_as::<StopExport>(EXPORT_STOP) {
                        Ok(stop) => {
                            let found = worker.stop_export(&stop.export_id);
                            tracing::info!(export = %stop.export_id, served_here = found, "export stop received");
                            c.ack().await?;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "rejecting a control message");
                            c.nack(false).await?;
                        }
                    }
                    continue;
                }
                match c.envelope.body_as::<CancelJob>(JOB_CANCEL) {
                    Ok(cancel) => {
                        let found = worker.cancel(&cancel.job_id);
                        tracing::info!(job = %cancel.job_id, running_here = found, "cancel received");
                        c.ack().await?;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "rejecting a control message");
                        c.nack(false).await?;
                    }
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Graceful shutdown: no new jobs; give running ones the grace period
    // to finish, then roll them back (they are redelivered after restart).
    let grace = Duration::from_secs(ekko.config.backup.shutdown_timeout);
    tracing::info!(
        running = tasks.len(),
        grace_s = grace.as_secs(),
        "shutting down"
    );
    // Exports end now (their clients reconnect to another one); running
    // backups get the grace period.
    worker.stop_exports();
    // Heartbeats and inventory go on meanwhile: a host that goes quiet
    // looks gone, and its instances could be claimed by another.
    let finished = tokio::time::timeout(grace, async {
        loop {
            tokio::select! {
                _ = ticker.tick() => worker.tick(),
                next = tasks.join_next() => if next.is_none() { break },
            }
        }
    })
    .await;
    if finished.is_err() {
        worker.stop_all(Stop::Shutdown);
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}
