//! A restore job on this host: one disk of a backup written to a file under
//! `[backup] restore_dir` ([`FileTarget`]). A partial restore is no
//! restore: whatever stops it (failure, cancel, deadline, shutdown)
//! removes what it wrote.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;

use super::admission::stopped;
use super::{Stop, Worker};
use crate::backup::file_target::FileTarget;
use crate::backup::reader::{ReadLimits, RecordReader};
use crate::backup::restore::{restore, RestoreTarget, TargetFormat};
use crate::execution::previous;
use crate::queue::Delivery;
use crate::wire::{Relocation, RestoreFinished, RestoreJob, RESTORE_FINISHED, RESTORE_RUN};

impl Worker {
    /// Where a restore job may write: a plain file name (or relative path
    /// without `..`) under `[backup] restore_dir`, not existing yet.
    fn restore_target(&self, path: &str) -> Result<PathBuf, String> {
        let rel = std::path::Path::new(path);
        let plain = !path.is_empty()
            && rel.is_relative()
            && rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(format!(
                "restore path {path:?} must be relative to [backup] restore_dir, without '..'"
            ));
        }
        let full = PathBuf::from(&self.ekko.config.backup.restore_dir).join(rel);
        // Errors name the path as the tenant gave it: the host's layout is
        // the operator's business (details go to the log).
        if full.exists() {
            return Err(format!(
                "{path} exists in the restore directory of host {}: a restore never overwrites",
                self.host
            ));
        }
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                tracing::error!(dir = %parent.display(), error = %e, "restore directory not created");
                format!("cannot create the directory of {path} on host {}: {}", self.host, e.kind())
            })?;
        }
        Ok(full)
    }

    pub(super) async fn handle_restore(self: Arc<Self>, delivery: Delivery) {
        let job: RestoreJob = match delivery.envelope.body_as(RESTORE_RUN) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(id = %delivery.envelope.id, error = %e, "rejecting a job this worker cannot read");
                let _ = delivery.nack(false).await;
                return;
            }
        };
        let (path, record, format) = match (
            self.restore_target(&job.path),
            previous(&job.record),
            TargetFormat::parse(&job.format),
        ) {
            (Ok(t), Some(r), Some(f)) => (t, r, f),
            (Err(why), _, _) => return self.fail(delivery, &job.job_id, why).await,
            (_, None, _) => {
                let why = "the backup's record is corrupt".to_string();
                return self.fail(delivery, &job.job_id, why).await;
            }
            (_, _, None) => {
                let why = format!("unknown restore format {:?}", job.format);
                return self.fail(delivery, &job.job_id, why).await;
            }
        };
        // Only the restore side (the master key) opens a public-key
        // project's chunks: a host with write keys fails here, before the
        // target is touched.
        let keys = match self
            .ekko
            .keyring
            .open_job(&job.project_id, job.project_key.as_ref(), None)
        {
            Ok(k) => k,
            Err(e) => return self.fail(delivery, &job.job_id, e.to_string()).await,
        };
        let Some((delivery, mut admitted)) =
            self.admit(delivery, &job.job_id, None, job.deadline).await
        else {
            return;
        };
        tracing::info!(restore = %job.restore_id, backup = %job.backup_id, target = %path.display(), "restore started");
        let target: Arc<dyn RestoreTarget> =
            match FileTarget::create(&path, format, record.disk_size) {
                Ok(t) => Arc::new(t),
                Err(e) => {
                    self.release(&job.job_id, &admitted);
                    return self.fail(delivery, &job.job_id, e.to_string()).await;
                }
            };
        let reader = RecordReader::new(
            self.ekko.store.clone(),
            &self.ekko.container(&job.project_id),
        )
        .with_relocations(Relocation::map(&job.relocations))
        .with_keys(keys)
        .with_limits(ReadLimits::from_config(&self.ekko.config.backup));
        let left = (job.deadline - Utc::now()).to_std().unwrap_or_default();
        let progress = admitted.progress.clone();
        let work = restore(&reader, &record, target.clone(), Some(&progress));
        let outcome = tokio::select! {
            r = work => Ok(r),
            s = stopped(&mut admitted.stop) => Err(Some(s)),
            _ = tokio::time::sleep(left) => Err(None),
        };
        self.release(&job.job_id, &admitted);
        let result = match outcome {
            Ok(Ok(stats)) => Ok(stats),
            Ok(Err(e)) => Err(format!("{e}")),
            Err(Some(Stop::Shutdown)) => {
                target.discard();
                self.journal.undo(&job.job_id, admitted.attempt);
                let _ = delivery.nack(true).await;
                return;
            }
            Err(Some(_)) => Err(format!("cancelled on host {}", self.host)),
            Err(None) => Err(format!("timed out on host {}", self.host)),
        };
        match result {
            Ok(stats) => {
                let done = RestoreFinished {
                    job_id: job.job_id.clone(),
                    host: self.host.clone(),
                    bytes_written: stats.bytes_written,
                };
                match self.publish_patiently(RESTORE_FINISHED, &done).await {
                    Ok(()) => {
                        self.journal.done(&job.job_id);
                        self.restore_reported(&job.job_id, &path, format);
                        let _ = delivery.ack().await;
                        tracing::info!(restore = %job.restore_id, "restore written and reported");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot report the restore; it runs again");
                        target.discard();
                        let _ = delivery.nack(true).await;
                    }
                }
            }
            Err(why) => {
                // A partial restore is no restore.
                target.discard();
                self.fail(delivery, &job.job_id, why).await
            }
        }
    }
}
