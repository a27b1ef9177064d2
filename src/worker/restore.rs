//! A restore job on this host: one disk of a backup written to a new file
//! under `[backup] restore_dir` ([`FileTarget`]; never over an existing
//! file, never through a link), or streamed into a Glance image the
//! controller created ([`ImageTarget`]). A partial restore is no restore: whatever
//! stops it (failure, cancel, deadline, shutdown) removes what it created,
//! and nothing else.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;

use super::admission::stopped;
use super::{Stop, Worker};
use crate::backup::file_target::{open_beneath, FileTarget};
use crate::backup::reader::{ReadLimits, RecordReader};
use crate::backup::restore::{restore, RestoreTarget, TargetFormat};
use crate::backup::EngineError;
use crate::execution::previous;
use crate::queue::Delivery;
use crate::wire::{Relocation, RestoreFinished, RestoreJob, RESTORE_FINISHED, RESTORE_RUN};

impl Worker {
    /// Where a restore job may write: a plain file name (or relative path
    /// without `..`) under `[backup] restore_dir`.
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
        Ok(rel.to_path_buf())
    }

    /// Create the restore's file `rel` under `[backup] restore_dir`: new
    /// (a restore never overwrites), never through a link (see
    /// [`crate::backup::target_dir`]).
    fn create_target(
        &self,
        rel: &std::path::Path,
        format: TargetFormat,
        size: u64,
        restore_id: &str,
    ) -> Result<FileTarget, String> {
        let root = std::path::Path::new(&self.ekko.config.backup.restore_dir);
        let created = open_beneath(root, rel).and_then(|(dir, name)| {
            FileTarget::create(Arc::new(dir), &name, format, size, restore_id)
        });
        // Errors name the path as the tenant gave it: the host's layout is
        // the operator's business (details go to the log).
        created.map_err(|e| {
            let (path, host) = (rel.display(), &self.host);
            match e {
                EngineError::TargetExists { .. } => format!(
                    "{path} exists in the restore directory of host {host}: a restore never overwrites"
                ),
                EngineError::TargetLink { .. } => format!(
                    "the directory of {path} in the restore directory of host {host} is a link or \
                     not a directory: a restore never follows links"
                ),
                EngineError::Target { path: at, source } => {
                    tracing::error!(path = %at, error = %source, "restore file not created");
                    format!("cannot create {path} on host {host}: {}", source.kind())
                }
                other => other.to_string(),
            }
        })
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
        // An image restore writes no file: its path stays empty.
        let path = match &job.image {
            Some(_) if job.path.is_empty() => Ok(PathBuf::new()),
            Some(_) => Err("an image restore names no file".to_string()),
            None => self.restore_target(&job.path),
        };
        let (path, record, format) = match (
            path,
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
        // The second copy, if the job names one this host's `[replication]`
        // store holds (same key).
        let second = job.second_copy.as_ref().and_then(|copy| {
            let replica = self.ekko.replica.as_ref().filter(|r| r.key == copy.store)?;
            Some((replica.store.clone(), copy))
        });
        if job.second_copy.as_ref().is_some_and(|c| c.only) && second.is_none() {
            let why = format!(
                "host {} does not reach the second store that holds this backup ([replication])",
                self.ekko.config.default.host
            );
            return self.fail(delivery, &job.job_id, why).await;
        }
        let Some((delivery, mut admitted)) =
            self.admit(delivery, &job.job_id, None, job.deadline).await
        else {
            return;
        };
        let container = self.ekko.container(&job.project_id);
        let limits = ReadLimits::from_config(&self.ekko.config.backup);
        let first = RecordReader::new(self.ekko.store.clone(), &container)
            .with_relocations(Relocation::map(&job.relocations))
            .with_keys(keys.clone())
            .with_limits(limits);
        // The second store keeps segments under their own ids: no redirects.
        let second = second.map(|(store, copy)| {
            let reader = RecordReader::new(store, &container)
                .with_keys(keys)
                .with_limits(limits);
            (reader, copy.first)
        });
        // Read the second copy first (only it when asked for), or keep it
        // for a fallback; and the other way round.
        let only = job.second_copy.as_ref().is_some_and(|c| c.only);
        let (reader, fallback, other) = match second {
            Some((second, true)) if only => (second, None, ""),
            Some((second, true)) => (second, Some(first), "the first store's copy"),
            Some((second, false)) => (first, Some(second), "the second copy"),
            None => (first, None, ""),
        };
        let created = match &job.image {
            Some(image) => {
                tracing::info!(restore = %job.restore_id, backup = %job.backup_id, image = %image.image_id, "restore into an image started");
                crate::execution::image_target(&self.ekko, &reader, &record, format, image)
                    .await
                    .map(|t| (Arc::new(t) as Arc<dyn RestoreTarget>, None))
                    .map_err(|e| format!("{e:#}"))
            }
            None => {
                tracing::info!(restore = %job.restore_id, backup = %job.backup_id, target = %path.display(), "restore started");
                self.create_target(&path, format, record.disk_size, &job.restore_id)
                    .map(|t| {
                        let t = Arc::new(t);
                        (t.clone() as Arc<dyn RestoreTarget>, Some(t))
                    })
            }
        };
        let (target, file) = match created {
            Ok(t) => t,
            Err(why) => {
                // Nothing was created: another restore may own the name.
                self.release(&job.job_id, &admitted);
                return self.fail(delivery, &job.job_id, why).await;
            }
        };
        let left = (job.deadline - Utc::now()).to_std().unwrap_or_default();
        let progress = admitted.progress.clone();
        // A file is written again whole from the second copy when the first
        // store fails it (same map, same blocks); an image upload cannot
        // start over.
        let fallback = fallback.filter(|_| file.is_some());
        let work = async {
            match restore(&reader, &record, target.clone(), Some(&progress)).await {
                Err(e) if fallback.is_some() && !is_target_error(&e) => {
                    tracing::warn!(restore = %job.restore_id, error = %e, "a store failed the restore; reading {other}");
                    let Some(second) = &fallback else {
                        return Err(e);
                    };
                    restore(second, &record, target.clone(), Some(&progress)).await
                }
                other => other,
            }
        };
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            r = work => Ok(r),
            s = stopped(&mut admitted.stop) => Err(Some(s)),
            _ = tokio::time::sleep(left) => Err(None),
        };
        admitted.work_over();
        let how = match &outcome {
            Ok(Ok(_)) => "written",
            Ok(Err(_)) => "failed",
            Err(Some(Stop::Shutdown)) => "shutdown",
            Err(Some(_)) => "cancelled",
            Err(None) => "timed_out",
        };
        crate::metrics::metrics().job_ended("restore", how, started.elapsed());
        let result = match outcome {
            Ok(Ok(stats)) => Ok(stats),
            Ok(Err(e)) => Err(format!("{e}")),
            Err(Some(Stop::Shutdown)) => {
                target.discard();
                self.journal.undo(&job.job_id, admitted.attempt);
                self.release(&job.job_id, &admitted);
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
                        if let Some(file) = &file {
                            self.restore_reported(&job.job_id, file.files());
                        }
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
        // Settled: a redelivered copy waiting for it now finds it done.
        self.release(&job.job_id, &admitted);
    }
}

/// An error of the restore's target (the file), not of the data read.
fn is_target_error(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::Target { .. }
            | EngineError::TargetExists { .. }
            | EngineError::TargetLink { .. }
    )
}
