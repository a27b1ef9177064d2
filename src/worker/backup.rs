//! A backup job on this host: find the instance, run the job through the
//! hypervisor and the engine ([`crate::execution`]), stop it when told,
//! and hand the outcome on. The snapshot is committed (the new bitmaps
//! take over) only once the outcome is on the bus, and aborted otherwise.

use std::sync::Arc;

use chrono::Utc;

use super::admission::{stopped, Admitted};
use super::{Stop, Worker};
use crate::execution::{self, Executed};
use crate::hypervisor::LocalInstance;
use crate::queue::Delivery;
use crate::wire::{BackupFinished, BackupJob, BACKUP_FINISHED, BACKUP_RUN};

impl Worker {
    pub(super) async fn handle_backup(self: Arc<Self>, delivery: Delivery) {
        let job: BackupJob = match delivery.envelope.body_as(BACKUP_RUN) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(id = %delivery.envelope.id, error = %e, "rejecting a job this worker cannot read");
                let _ = delivery.nack(false).await;
                return;
            }
        };
        // Finished here before (the worker died handing it on): hand the
        // same outcome on again; never run the job a second time.
        if let Some(kept) = self.journal.outcome(&job.job_id) {
            return self.hand_on_again(delivery, &job, &kept).await;
        }
        let instance = match self.hypervisor.find(&job.instance_id).await {
            Ok(Some(i)) if i.project_id == job.project_id => i,
            Ok(Some(_)) => {
                let why = format!(
                    "instance {} on host {} belongs to another project",
                    job.instance_id, self.host
                );
                return self.fail(delivery, &job.job_id, why).await;
            }
            Ok(None) => {
                let why = format!(
                    "instance {} is not served by host {}",
                    job.instance_id, self.host
                );
                return self.fail(delivery, &job.job_id, why).await;
            }
            Err(e) => {
                let why = format!("instance lookup: {e:#}");
                return self.fail(delivery, &job.job_id, why).await;
            }
        };
        let Some((delivery, mut admitted)) = self
            .admit(delivery, &job.job_id, Some(&job.instance_id), job.deadline)
            .await
        else {
            return;
        };
        tracing::info!(backup = %job.backup_id, instance = %job.instance_id, attempt = admitted.attempt, "backup started");
        let started = std::time::Instant::now();
        let outcome = self.run_job(&job, &instance, &mut admitted).await;
        admitted.work_over();
        count_backup(&outcome, started.elapsed());
        // Still "running" here until settled: a redelivered copy waits
        // for that (see admit), so it never starts while this hands on.
        match outcome {
            Ok(executed) => self.hand_on(delivery, &job, executed).await,
            Err(Stop::Shutdown) => {
                tracing::warn!(backup = %job.backup_id, "rolled back for shutdown; the job runs again after restart");
                self.journal.undo(&job.job_id, admitted.attempt);
                let _ = delivery.nack(true).await;
            }
            Err(_) => {
                let why = format!("cancelled on host {}", self.host);
                self.fail(delivery, &job.job_id, why).await
            }
        }
        self.release(&job.job_id, &admitted);
    }

    /// Execute until done, failed, stopped or past the deadline. A failure
    /// is reported here; `Err` says why the job was stopped.
    async fn run_job(
        &self,
        job: &BackupJob,
        instance: &LocalInstance,
        admitted: &mut Admitted,
    ) -> Result<Result<Executed, String>, Stop> {
        let tag = format!("{}-{}", job.backup_id, admitted.attempt);
        let left = (job.deadline - Utc::now()).to_std().unwrap_or_default();
        let work = async {
            self.wait_for_recovery(&instance.id).await;
            execution::back_up(
                &self.ekko,
                self.hypervisor.as_ref(),
                instance,
                job,
                &tag,
                Some(admitted.progress.clone()),
            )
            .await
        };
        // `None`: the deadline passed.
        let stop = tokio::select! {
            r = work => return Ok(r.map_err(|e| format!("{e:#}"))),
            s = stopped(&mut admitted.stop) => Some(s),
            _ = tokio::time::sleep(left) => None,
        };
        // The work future was dropped mid-way (and with it its monitor
        // connection): put the instance back as it was.
        self.recover(instance).await;
        match stop {
            Some(why) => Err(why),
            None => Ok(Err(format!(
                "timed out after [backup] job_timeout on host {}",
                self.host
            ))),
        }
    }

    /// Undo what an interrupted snapshot left (bitmaps back as before).
    async fn recover(&self, instance: &LocalInstance) {
        if let Err(e) = self.hypervisor.recover(instance).await {
            tracing::error!(error = %e, "cleaning up after a stopped backup failed; the next backup cleans up");
        }
    }

    /// Report the outcome; rotate the bitmaps only once it is on the bus.
    async fn hand_on(
        &self,
        delivery: Delivery,
        job: &BackupJob,
        executed: Result<Executed, String>,
    ) {
        let executed = match executed {
            Ok(e) => e,
            Err(why) => return self.fail(delivery, &job.job_id, why).await,
        };
        crate::failpoint::hit("worker.before-report");
        let kept = serde_json::to_vec(&executed.finished)
            .map_err(std::io::Error::other)
            .and_then(|bytes| self.journal.record_outcome(&job.job_id, &bytes));
        if let Err(e) = kept {
            tracing::error!(error = %e, "cannot keep the outcome; rolling back for a later retry");
            if let Err(e) = executed.snapshot.abort().await {
                tracing::error!(error = %e, "bitmap rollback failed; the next backup re-reads the disk");
            }
            let _ = delivery.nack(true).await;
            return;
        }
        match self
            .publish_patiently(BACKUP_FINISHED, &executed.finished)
            .await
        {
            Ok(()) => {
                if let Err(e) = executed.snapshot.commit().await {
                    tracing::error!(error = %e, "outcome sent, but the bitmap rotation did not finish; the next backup re-reads the disk");
                }
                crate::failpoint::hit("worker.after-report");
                self.journal.done(&job.job_id);
                let _ = delivery.ack().await;
                tracing::info!(backup = %job.backup_id, "backup stored and reported");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot report the backup; rolling back for a later retry");
                if let Err(e) = executed.snapshot.abort().await {
                    tracing::error!(error = %e, "bitmap rollback failed; the next backup re-reads the disk");
                }
                let _ = delivery.nack(true).await;
            }
        }
    }

    /// Hand on an outcome kept from an earlier attempt on this host.
    async fn hand_on_again(&self, delivery: Delivery, job: &BackupJob, kept: &[u8]) {
        let finished: BackupFinished = match serde_json::from_slice(kept) {
            Ok(f) => f,
            Err(e) => {
                let why = format!("the outcome kept for this job is unreadable: {e}");
                return self.fail(delivery, &job.job_id, why).await;
            }
        };
        tracing::warn!(backup = %job.backup_id, "job delivered again after its outcome was kept: handing the same outcome on");
        match self.publish_patiently(BACKUP_FINISHED, &finished).await {
            Ok(()) => {
                self.journal.done(&job.job_id);
                let _ = delivery.ack().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot report the kept outcome; leaving the job for redelivery");
                let _ = delivery.nack(true).await;
            }
        }
    }
}

/// A backup run in this host's metrics: its duration by outcome, and its
/// bytes once stored.
fn count_backup(outcome: &Result<Result<Executed, String>, Stop>, took: std::time::Duration) {
    let m = crate::metrics::metrics();
    let result = match outcome {
        Ok(Ok(executed)) => {
            let disks = &executed.finished.disks;
            let sum = |f: fn(&crate::wire::DiskCommit) -> i64| disks.iter().map(f).sum::<i64>();
            m.add_backup_bytes(
                sum(|d| d.virtual_size),
                sum(|d| d.read_bytes),
                sum(|d| d.new_bytes),
                sum(|d| d.stored_bytes),
            );
            "stored"
        }
        Ok(Err(_)) => "failed",
        Err(Stop::Shutdown) => "shutdown",
        Err(_) => "cancelled",
    };
    m.job_ended("backup", result, took);
}
