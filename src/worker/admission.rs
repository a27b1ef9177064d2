//! Which jobs run, and how a running job is stopped: the checks before a
//! job starts (done already, past its deadline, cancelled, too many
//! attempts), its registration for cancels, its progress reports, and
//! cancels that arrive before, during or after it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{lock, Stop, Worker, MAX_ATTEMPTS, PROGRESS_EVERY};
use crate::backup::file_target::RestoredFiles;
use crate::backup::Progress;
use crate::queue::Delivery;
use crate::wire::{JobProgress, JobStarted, JOB_PROGRESS, JOB_STARTED};

/// Reported restores remembered for a cancel that crossed the report. A
/// cancel follows within seconds; each one holds two descriptors (its
/// directory and its file, so the file's identity is certain).
const FINISHED_RESTORES_KEPT: usize = 64;

/// What to do with a job before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Its outcome was handed on already: drop the redelivery.
    Drop,
    /// Report it failed, with why.
    Fail(String),
    /// Count an attempt and run it.
    Run,
}

/// The checks that need no side effect, in order.
pub(super) fn verdict(done: bool, past_deadline: bool, cancelled: bool, host: &str) -> Verdict {
    if done {
        Verdict::Drop
    } else if past_deadline {
        Verdict::Fail(format!("the job reached host {host} after its deadline"))
    } else if cancelled {
        Verdict::Fail(format!("cancelled before it started on host {host}"))
    } else {
        Verdict::Run
    }
}

/// A job that killed the worker too often fails instead of looping.
pub(super) fn too_many_attempts(attempt: u32, host: &str) -> Option<String> {
    (attempt > MAX_ATTEMPTS).then(|| {
        format!(
            "the worker on host {host} stopped {} times while running this job",
            attempt - 1
        )
    })
}

/// A job admitted to run on this worker.
pub(super) struct Admitted {
    pub attempt: u32,
    pub progress: Arc<Progress>,
    pub stop: watch::Receiver<Stop>,
    reporter: tokio::task::JoinHandle<()>,
}

impl Admitted {
    /// Stop reporting progress: the work is over, its outcome being settled.
    pub fn work_over(&self) {
        self.reporter.abort();
    }
}

impl Worker {
    pub(super) fn busy_instances(&self) -> Vec<String> {
        lock(&self.running)
            .values()
            .map(|(instance, _)| instance.clone())
            .collect()
    }

    pub(super) fn stop_all(&self, why: Stop) {
        for (_, (_, tx)) in lock(&self.running).iter() {
            let _ = tx.send(why);
        }
        self.stop_exports();
    }

    /// Stop a running job, or remember not to start it; a restore that
    /// finished here before the cancel came loses its file (the catalog
    /// ended it as cancelled). The `running` lock is held throughout, so
    /// a job being admitted sees either the stop or the mark.
    pub(super) fn cancel(&self, job_id: &str) -> bool {
        let running = lock(&self.running);
        let finished = {
            let mut done = lock(&self.finished_restores);
            let at = done.iter().position(|(id, _)| id == job_id);
            at.and_then(|i| done.remove(i))
        };
        if let Some((_, mut files)) = finished {
            tracing::warn!(
                job = job_id,
                "restore cancelled after it finished here: removing its file"
            );
            files.remove();
            return true;
        }
        if let Some((_, tx)) = running.get(job_id) {
            return tx.send(Stop::Cancelled).is_ok();
        }
        let mut cancelled = lock(&self.cancelled);
        // Bounded: cancels of jobs that never come are forgotten.
        if cancelled.len() > 10_000 {
            cancelled.clear();
        }
        cancelled.insert(job_id.to_string());
        false
    }

    /// Remember a reported restore for a cancel that may have crossed it.
    pub(super) fn restore_reported(&self, job_id: &str, files: RestoredFiles) {
        let mut done = lock(&self.finished_restores);
        if done.len() >= FINISHED_RESTORES_KEPT {
            done.pop_front();
        }
        done.push_back((job_id.to_string(), files));
    }

    /// The checks and bookkeeping before a job runs: not done already, not
    /// past its deadline, not cancelled, attempts counted, start reported,
    /// registered for cancels, progress reported. `None` when the delivery
    /// was settled here.
    pub(super) async fn admit(
        self: &Arc<Self>,
        delivery: Delivery,
        job_id: &str,
        instance_id: Option<&str>,
        deadline: DateTime<Utc>,
    ) -> Option<(Delivery, Admitted)> {
        if lock(&self.running).contains_key(job_id) {
            // The broker redelivered a job that still runs here (its
            // channel dropped): a second attempt would fail on the busy
            // disks and end the job under the first. The copy waits for
            // the attempt to end, then goes back to be settled (dropped
            // once done, run again if it stopped short).
            tracing::info!(
                job = job_id,
                "job redelivered while it runs here: holding the copy"
            );
            let (this, job_id) = (self.clone(), job_id.to_string());
            tokio::spawn(async move {
                while lock(&this.running).contains_key(&job_id) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let _ = delivery.nack(true).await;
            });
            return None;
        }
        let cancelled = lock(&self.cancelled).remove(job_id);
        match verdict(
            self.journal.is_done(job_id),
            Utc::now() > deadline,
            cancelled,
            &self.host,
        ) {
            Verdict::Drop => {
                tracing::info!(job = job_id, "job already handled; dropping the redelivery");
                let _ = delivery.ack().await;
                return None;
            }
            Verdict::Fail(why) => {
                self.fail(delivery, job_id, why).await;
                return None;
            }
            Verdict::Run => {}
        }
        let attempt = match self.journal.begin(job_id) {
            Ok(n) => n,
            Err(e) => {
                self.fail(delivery, job_id, format!("job journal: {e}"))
                    .await;
                return None;
            }
        };
        if let Some(why) = too_many_attempts(attempt, &self.host) {
            self.fail(delivery, job_id, why).await;
            return None;
        }
        let started = JobStarted {
            job_id: job_id.to_string(),
            host: self.host.clone(),
            attempt,
        };
        if let Err(e) = self.publish(JOB_STARTED, &started).await {
            tracing::warn!(error = %e, "cannot report the start; leaving the job for later");
            self.journal.undo(job_id, attempt);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery.nack(true).await;
            return None;
        }
        let (stop_tx, stop) = watch::channel(Stop::Run);
        let cancelled_meanwhile = {
            // cancel() marks under this lock: a cancel that came while the
            // start was being reported is seen here, a later one is sent
            // to the stop channel.
            let mut running = lock(&self.running);
            let marked = lock(&self.cancelled).remove(job_id);
            if !marked {
                running.insert(
                    job_id.to_string(),
                    (instance_id.unwrap_or_default().to_string(), stop_tx),
                );
            }
            marked
        };
        if cancelled_meanwhile {
            let why = format!("cancelled before it started on host {}", self.host);
            self.fail(delivery, job_id, why).await;
            return None;
        }
        let progress = Arc::new(Progress::default());
        let reporter = {
            let this = self.clone();
            let (progress, job_id) = (progress.clone(), job_id.to_string());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PROGRESS_EVERY);
                loop {
                    tick.tick().await;
                    let (done, total) = progress.get();
                    let p = JobProgress {
                        job_id: job_id.clone(),
                        done_bytes: done,
                        total_bytes: total,
                    };
                    if let Err(e) = this.publish(JOB_PROGRESS, &p).await {
                        tracing::debug!(error = %e, "progress not sent");
                    }
                }
            })
        };
        Some((
            delivery,
            Admitted {
                attempt,
                progress,
                stop,
                reporter,
            },
        ))
    }

    /// The job stopped running here (whatever its outcome).
    pub(super) fn release(&self, job_id: &str, admitted: &Admitted) {
        admitted.reporter.abort();
        lock(&self.running).remove(job_id);
    }
}

/// Resolves when the job is told to stop, with why.
pub(super) async fn stopped(stop: &mut watch::Receiver<Stop>) -> Stop {
    loop {
        if stop.changed().await.is_err() {
            return Stop::Shutdown;
        }
        let s = *stop.borrow();
        if s != Stop::Run {
            return s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_before_a_job_runs() {
        assert_eq!(verdict(true, true, true, "h"), Verdict::Drop, "done wins");
        assert!(
            matches!(verdict(false, true, true, "h"), Verdict::Fail(w) if w.contains("deadline"))
        );
        assert!(
            matches!(verdict(false, false, true, "h"), Verdict::Fail(w) if w.contains("cancelled"))
        );
        assert_eq!(verdict(false, false, false, "h"), Verdict::Run);
        assert_eq!(too_many_attempts(MAX_ATTEMPTS, "h"), None);
        let why = too_many_attempts(MAX_ATTEMPTS + 1, "h").unwrap();
        assert!(
            why.contains(&format!("stopped {MAX_ATTEMPTS} times")),
            "{why}"
        );
    }

    #[tokio::test]
    async fn a_stop_signal_says_why() {
        let (tx, mut rx) = watch::channel(Stop::Run);
        tx.send(Stop::Cancelled).unwrap();
        assert_eq!(stopped(&mut rx).await, Stop::Cancelled);
        drop(tx);
        assert_eq!(
            stopped(&mut rx).await,
            Stop::Shutdown,
            "a dropped sender is a shutdown"
        );
    }
}
