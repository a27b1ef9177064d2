//! What the `ekko` command line runs in its own process, on the catalog
//! and the store directly: back up an instance through its QMP socket,
//! restore and verify backups. The API and the workers reach the same
//! engine through the message bus.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::backups::{NewBackup, PlanOptions};
use crate::backup::disk::DiskBackupResult;
use crate::backup::file_target::restore_to_file;
use crate::backup::restore::{verify, RestoreStats, TargetFormat};
use crate::backup::Progress;
use crate::db::backups::{self, Backup, BackupStatus};
use crate::db::instances::{self, DiskReport};
use crate::hypervisor::qmp::{QmpHypervisor, QmpInstance};
use crate::hypervisor::{Hypervisor, LocalInstance};
use crate::wire::JobStarted;
use crate::Ekko;

/// A backup request from the command line.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub qmp_socket: std::path::PathBuf,
    pub instance_id: String,
    pub project_id: String,
    pub name: String,
    pub full: bool,
    pub agent_socket: Option<std::path::PathBuf>,
    /// Advanced by the bytes read, for a progress display.
    pub progress: Option<Arc<Progress>>,
}

/// The outcome, per disk.
pub struct BackupOutcome {
    pub backup: Backup,
    pub disks: Vec<(String, DiskBackupResult)>,
}

impl BackupOutcome {
    /// The figures an operator reads after a backup: what was scanned,
    /// read, new and stored, the dedup and compression ratios, throughput.
    pub fn summary(&self, took: Duration) -> String {
        use std::fmt::Write;
        let b = &self.backup;
        let secs = took.as_secs_f64().max(1e-9);
        let mib = |v: u64| v as f64 / (1 << 20) as f64;
        let mut out = format!(
            "backup {} {} ({}, {}-consistent) in {secs:.2} s\n",
            b.id,
            b.status,
            b.kind.as_deref().unwrap_or("?"),
            b.consistency.as_deref().unwrap_or("?"),
        );
        let (mut scanned, mut read, mut new, mut stored) = (0, 0, 0, 0);
        for (dev, r) in &self.disks {
            let _ = writeln!(
                out,
                "  {dev}: {:.1} MiB scanned, {:.1} MiB read, {:.1} MiB new, {:.1} MiB stored; {} chunks new, {} reused, {} zero, {} index pages",
                mib(r.size), mib(r.read_bytes), mib(r.new_bytes), mib(r.stored_bytes),
                r.new_chunks, r.reused_chunks, r.zero_chunks, r.pages_written
            );
            scanned += r.size;
            read += r.read_bytes;
            new += r.new_bytes;
            stored += r.stored_bytes;
        }
        let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        let _ = writeln!(
            out,
            "  total: {:.1} MiB scanned, {:.1} MiB read ({:.0} MiB/s), dedup {:.2}x (read/new), compression {:.2}x (new/stored)",
            mib(scanned),
            mib(read),
            mib(read) / secs,
            ratio(read, new),
            ratio(new, stored)
        );
        out
    }
}

/// Back up every qcow2 disk of the instance behind `qmp_socket`, in this
/// process: the same plan, execution and commit as a job sent to a host.
pub async fn backup_instance(ekko: &Ekko, req: &BackupRequest) -> anyhow::Result<BackupOutcome> {
    let instance = LocalInstance {
        id: req.instance_id.clone(),
        project_id: req.project_id.clone(),
        name: req.instance_id.clone(),
    };
    let hypervisor = QmpHypervisor::single(QmpInstance {
        instance: instance.clone(),
        qmp_socket: req.qmp_socket.clone(),
        agent_socket: req.agent_socket.clone(),
    });
    back_up_with(ekko, &hypervisor, &instance, req).await
}

/// Back up `instance` of `hypervisor` in this process (`req` gives the
/// name, the mode and the progress; its socket fields are not used):
/// its disks as the hypervisor sees them now are recorded, then the same
/// plan, execution and commit as a job sent to a host.
pub async fn back_up_with(
    ekko: &Ekko,
    hypervisor: &dyn Hypervisor,
    instance: &LocalInstance,
    req: &BackupRequest,
) -> anyhow::Result<BackupOutcome> {
    let db = ekko.db()?.clone();
    let reports: Vec<DiskReport> = hypervisor
        .disks(instance)
        .await?
        .iter()
        .map(|d| DiskReport {
            device: d.device.clone(),
            node_name: d.node_name.clone(),
            virtual_size: i64::try_from(d.virtual_size).unwrap_or(i64::MAX),
        })
        .collect();
    anyhow::ensure!(
        !reports.is_empty(),
        "instance {} has no disk to back up",
        instance.id
    );
    let host = ekko.config.default.host.clone();
    let new = NewBackup {
        instance_id: instance.id.clone(),
        user_id: "operator".into(),
        name: req.name.clone(),
        description: String::new(),
        mode: if req.full { "full" } else { "auto" }.into(),
        metadata: "{}".into(),
        policy_id: None,
    };
    let (id, project, h2, name) = (
        instance.id.clone(),
        instance.project_id.clone(),
        host.clone(),
        instance.name.clone(),
    );
    let plan = PlanOptions::of(ekko);
    // This process runs the job itself, with its own master key.
    let keys = crate::keyring::JobKeys {
        project_key: ekko
            .keyring
            .ensure_project_key(&instance.project_id)
            .await?,
        ..Default::default()
    };
    let (interrupted, (backup, job, message)) = db
        .run(move |c| {
            instances::upsert(
                c,
                &id,
                &project,
                &h2,
                &name,
                &reports,
                instances::MOVE_ALWAYS,
            )?;
            // QEMU serves one QMP client at a time and this process is about
            // to hold it: a backup of this instance still `running` belongs
            // to a process that died (its snapshot is recovered below).
            let interrupted =
                backups::interrupt_running(c, &id, "interrupted: the process running it stopped")?;
            let planned = super::backups::plan(c, &plan, &new, &keys)?;
            let started = JobStarted {
                job_id: planned.1.id.clone(),
                host: h2.clone(),
                attempt: 1,
            };
            super::jobs::job_started(c, &started)?;
            Ok((interrupted, planned))
        })
        .await?;
    // Their manifests may have reached the store: a catalog rebuild must
    // not bring them back. Their segments are left to the orphan sweep.
    for stale in &interrupted {
        tracing::warn!(backup = %stale, "marked an interrupted backup as failed");
        ekko.remove_manifest(&instance.project_id, stale).await;
    }
    let fail = |why: String| {
        let jid = job.id.clone();
        db.run(move |c| super::jobs::fail_job(c, &jid, &why))
    };
    let executed = match crate::execution::back_up(
        ekko,
        hypervisor,
        instance,
        &message,
        &backup.id,
        req.progress.clone(),
    )
    .await
    {
        Ok(e) => e,
        Err(e) => {
            fail(format!("{e:#}")).await?;
            return Err(e);
        }
    };
    crate::failpoint::hit("backup.before-commit");
    let finished = executed.finished.clone();
    match db
        .run(move |c| super::reports::job_finished(c, &finished))
        .await
    {
        Ok(b) => {
            // Only now may the old bitmaps go.
            crate::failpoint::hit("backup.after-commit");
            if let Err(e) = executed.snapshot.commit().await {
                tracing::error!(error = %e, "backup committed, but the bitmap rotation did not finish; the next backup re-reads the disk");
            }
            Ok(BackupOutcome {
                backup: b,
                disks: executed
                    .outcome
                    .disks
                    .into_iter()
                    .map(|d| (d.device, d.result))
                    .collect(),
            })
        }
        Err(e) => {
            // The commit's outcome may be unknown (connection lost after
            // COMMIT): keep the manifest unless the catalog says the backup
            // is not available.
            let id = backup.id.clone();
            let committed = match db.run(move |c| backups::get(c, &id)).await {
                Ok(b) => b.status == BackupStatus::Available,
                Err(_) => true,
            };
            if !committed {
                ekko.remove_manifest(&backup.project_id, &backup.id).await;
                let _ = fail(format!("{e}")).await;
            }
            if let Err(abort) = executed.snapshot.abort().await {
                tracing::error!(error = %abort, "rolling back the bitmaps failed; the next backup re-reads the disk");
            }
            Err(e.into())
        }
    }
}

/// Restore disk `device` (or the only disk) of a backup to `path`.
pub async fn restore_backup(
    ekko: &Ekko,
    backup_id: &str,
    device: Option<&str>,
    path: &Path,
    format: TargetFormat,
    progress: Option<&Progress>,
) -> anyhow::Result<RestoreStats> {
    restore_backup_from(ekko, backup_id, device, path, format, progress, false).await
}

/// A reader of `backup`'s records: the first store's, or its copy in the
/// second store (`[replication]`).
async fn reader_of(
    ekko: &Ekko,
    backup: &Backup,
    second_copy: bool,
) -> anyhow::Result<crate::backup::reader::RecordReader> {
    if !second_copy {
        return Ok(ekko.project_reader(&backup.project_id).await?);
    }
    ekko.second_copy_reader(&backup.project_id, &backup.id)
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "backup {} has no copy in a second store ([replication]) yet",
                backup.id
            )
        })
}

/// [`restore_backup`], from the backup's copy in the second store
/// (`[replication]`) when `second_copy` is set.
pub async fn restore_backup_from(
    ekko: &Ekko,
    backup_id: &str,
    device: Option<&str>,
    path: &Path,
    format: TargetFormat,
    progress: Option<&Progress>,
    second_copy: bool,
) -> anyhow::Result<RestoreStats> {
    let (backup, rec) = record_of(ekko, backup_id, device).await?;
    anyhow::ensure!(
        backup.status == BackupStatus::Available,
        "backup {backup_id} is {}, not available",
        backup.status
    );
    let reader = reader_of(ekko, &backup, second_copy).await?;
    let record = record(&rec)?;
    Ok(restore_to_file(&reader, &record, path, format, progress).await?)
}

/// A restore from this machine into a new Glance image in the backup's
/// project: the same stream and checks as the API's (see
/// [`super::restores`]), acting with `user_token` (a token scoped to the
/// backup's project) and the service user's token. The image is deleted
/// if the restore fails. Returns the image's id.
pub async fn restore_backup_to_image(
    ekko: &Ekko,
    backup_id: &str,
    device: Option<&str>,
    name: &str,
    format: TargetFormat,
    user_token: &str,
    progress: Option<&Progress>,
) -> anyhow::Result<(String, RestoreStats)> {
    use crate::backup::restore::{refuse_write_keys, restore, RestoreTarget};
    let (backup, rec) = record_of(ekko, backup_id, device).await?;
    anyhow::ensure!(
        backup.status == BackupStatus::Available,
        "backup {backup_id} is {}, not available",
        backup.status
    );
    let reader = ekko.project_reader(&backup.project_id).await?;
    refuse_write_keys(&reader)?;
    let record = record(&rec)?;
    let glance = ekko.glance().await?;
    let image = crate::wire::ImageJob {
        glance_url: glance.url().await?,
        image_id: uuid::Uuid::new_v4().to_string(),
        user_token: user_token.to_string(),
    };
    let did = rec.disk_id.clone();
    let device = ekko
        .db()?
        .run(move |c| Ok(instances::disk(c, &did)?.map(|d| d.device)))
        .await?
        .unwrap_or_default();
    let facts = super::images::ImageFacts {
        disk_size: record.disk_size,
        device,
        instance_id: backup.instance_id.clone(),
        backup_id: backup.id.clone(),
        backup_created_at: backup.created_at,
    };
    super::images::create_image(
        ekko,
        &backup.project_id,
        &image,
        name,
        "private",
        format,
        &facts,
    )
    .await?;
    let pending = crate::db::images::PendingImage::new(
        &image.image_id,
        "",
        &backup.project_id,
        &image.glance_url,
        user_token,
    );
    let delete = || async {
        if let Err(e) = glance
            .delete(&image.glance_url, user_token, &image.image_id)
            .await
        {
            tracing::error!(image = %image.image_id, error = %e, "image of a failed restore not deleted");
        }
    };
    let written = async {
        let target =
            Arc::new(crate::execution::image_target(ekko, &reader, &record, format, &image).await?);
        let stats = restore(&reader, &record, target.clone(), progress).await;
        if stats.is_err() {
            target.discard();
        }
        let stats = stats?;
        super::images::check_image(ekko, &pending, record.disk_size, format)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::Ok(stats)
    }
    .await;
    match written {
        Ok(stats) => Ok((image.image_id.clone(), stats)),
        Err(e) => {
            delete().await;
            Err(e)
        }
    }
}

/// How `ekko export` serves a disk of a backup.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub backup_id: String,
    pub device: Option<String>,
    pub endpoint: crate::nbd::server::Endpoint,
    /// Ends by itself after this long.
    pub lifetime: Option<Duration>,
    /// Bytes of decoded chunks kept cached.
    pub cache_bytes: u64,
    /// Clients must upgrade to TLS first.
    pub tls: Option<crate::tls::ServerTls>,
    /// Serve the backup's copy in the second store (`[replication]`).
    pub second_copy: bool,
}

/// Serve one disk of a backup read-only over NBD, here, where the store
/// and the project's keys are, until the lifetime runs out or `shutdown`
/// resolves. `ready` gets the export's URL once clients can connect. The
/// socket file (a unix endpoint) is removed when the export ends.
pub async fn export_backup(
    ekko: &Ekko,
    req: &ExportRequest,
    shutdown: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(&str),
) -> anyhow::Result<()> {
    use crate::backup::export::BackupExport;
    use crate::nbd::server::{serve, Endpoint, Export, Listener};
    use anyhow::Context;

    let id = &req.backup_id;
    let (backup, rec) = record_of(ekko, id, req.device.as_deref()).await?;
    anyhow::ensure!(
        backup.status == BackupStatus::Available,
        "backup {id} is {}, not available",
        backup.status
    );
    let reader = Arc::new(reader_of(ekko, &backup, req.second_copy).await?);
    tracing::info!(backup = %id, disk = %rec.disk_id, "loading the backup's map");
    let source = BackupExport::open(reader, &record(&rec)?, req.cache_bytes)
        .await
        .with_context(|| format!("map of backup {id}, disk {}", rec.disk_id))?;
    let listener = Listener::bind(&req.endpoint, req.tls.is_some()).await?;
    let url = match (&req.endpoint, listener.local_addr()) {
        (Endpoint::Tcp(_), Some(addr)) => format!("nbd://{addr}/"),
        (at, _) => at.to_string(),
    };
    tracing::info!(backup = %id, %url, lifetime = ?req.lifetime, "export ready");
    ready(&url);
    let lifetime = req.lifetime;
    let ended = async move {
        match lifetime {
            Some(t) => tokio::select! {
                _ = shutdown => {}
                _ = tokio::time::sleep(t) => tracing::info!(backup = %id, "export lifetime over"),
            },
            None => shutdown.await,
        }
    };
    let export = Arc::new(Export::new(id, Arc::new(source)).with_tls(req.tls.clone()));
    serve(export, listener, ended)
        .await
        .with_context(|| format!("export of backup {id}"))?;
    Ok(())
}

/// Re-read every chunk of every disk of a backup and check its digest.
pub async fn verify_backup(
    ekko: &Ekko,
    backup_id: &str,
    progress: Option<&Progress>,
) -> anyhow::Result<Vec<(String, RestoreStats)>> {
    let id = backup_id.to_string();
    let (backup, recs) = ekko
        .db()?
        .run(move |c| Ok((backups::get(c, &id)?, backups::disks_of(c, &id)?)))
        .await?;
    let reader = ekko.project_reader(&backup.project_id).await?;
    let mut out = Vec::new();
    for rec in recs {
        let stats = verify(
            &reader,
            record(&rec)?.root,
            rec.virtual_size as u64,
            rec.chunk_size as u64,
            progress,
        )
        .await?;
        out.push((rec.disk_id.clone(), stats));
    }
    Ok(out)
}

async fn record_of(
    ekko: &Ekko,
    backup_id: &str,
    device: Option<&str>,
) -> anyhow::Result<(Backup, backups::BackupDisk)> {
    let (id, dev) = (backup_id.to_string(), device.map(String::from));
    let (backup, recs, disks) = ekko
        .db()?
        .run(move |c| {
            let b = backups::get(c, &id)?;
            let recs = backups::disks_of(c, &id)?;
            let disks = instances::disks_of(c, &b.instance_id)?;
            Ok((b, recs, disks))
        })
        .await?;
    let rec = match dev {
        Some(dev) => {
            let disk = disks
                .iter()
                .find(|d| d.device == dev)
                .ok_or_else(|| anyhow::anyhow!("backup {backup_id} has no disk {dev}"))?;
            recs.into_iter().find(|r| r.disk_id == disk.id)
        }
        None if recs.len() == 1 => recs.into_iter().next(),
        None => anyhow::bail!(
            "backup {backup_id} has {} disks: name one with --disk",
            recs.len()
        ),
    };
    Ok((
        backup,
        rec.ok_or_else(|| anyhow::anyhow!("backup {backup_id} has no record for that disk"))?,
    ))
}

fn record(rec: &backups::BackupDisk) -> anyhow::Result<crate::backup::PreviousRecord> {
    super::convert::previous_record(rec)
        .ok_or_else(|| anyhow::anyhow!("corrupt record of backup {} in the catalog", rec.backup_id))
}
