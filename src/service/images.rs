//! The Glance images restores create: made in the backup's project with
//! the tenant's token ([`create_image`]), checked before a restore is
//! completed ([`check_image`]), and settled afterwards: handed over, or
//! deleted when the restore failed ([`settle_pending_images`]), now or at
//! a later pass. See README, "Restore into a Glance image".

use diesel::Connection;

use super::jobs::fail_job;
use super::reports::PlannedRestore;
use super::ServiceError;
use crate::db::images::{self, PendingImage};
use crate::db::jobs;
use crate::db::restores;
use crate::db::DbError;
use crate::glance::{GlanceError, NewImage};
use crate::status::{ImageFormat, JobStatus, RestoreStatus};
use crate::wire::ImageJob;
use crate::Ekko;

/// What an image needs from the backup to boot as the instance did.
pub struct ImageFacts {
    pub disk_size: u64,
    pub device: String,
    pub instance_id: String,
    pub backup_id: String,
    pub backup_created_at: chrono::NaiveDateTime,
}

/// Create the image record in Glance, with the id the catalog holds.
pub async fn create_image(
    ekko: &Ekko,
    project_id: &str,
    i: &ImageJob,
    name: &str,
    visibility: &str,
    format: ImageFormat,
    facts: &ImageFacts,
) -> Result<(), GlanceError> {
    let glance = ekko.glance().await?;
    let mut properties = std::collections::BTreeMap::new();
    properties.insert("id".to_string(), i.image_id.clone());
    properties.insert("ekko_backup_id".to_string(), facts.backup_id.clone());
    properties.insert("ekko_instance_id".to_string(), facts.instance_id.clone());
    properties.insert("ekko_disk".to_string(), facts.device.clone());
    properties.insert(
        "ekko_backup_created_at".to_string(),
        facts.backup_created_at.and_utc().to_rfc3339(),
    );
    if let Some(bus) = disk_bus(&facts.device) {
        properties.insert("hw_disk_bus".to_string(), bus.to_string());
    }
    let image = NewImage {
        name: name.to_string(),
        disk_format: format.as_str().to_string(),
        visibility: visibility.to_string(),
        min_disk: facts.disk_size.div_ceil(1 << 30),
        properties,
    };
    let made = glance.create(&i.glance_url, &i.user_token, &image).await?;
    tracing::info!(image = %made.id, status = %made.status, "image created for a restore");
    // The token's project owns it: it must be the backup's.
    if made.owner.as_deref() != Some(project_id) || made.id != i.image_id {
        glance
            .delete(&i.glance_url, &i.user_token, &made.id)
            .await?;
        return Err(GlanceError::Refused {
            status: 400,
            message: format!(
                "the image was made in project {:?}, not the backup's project {project_id}: use a \
                 token scoped to it",
                made.owner.unwrap_or_default()
            ),
        });
    }
    Ok(())
}

/// The bus a libvirt target device name implies: `vd*` is virtio (Nova's
/// default). `sd*` may be scsi or sata and `hd*` ide or sata: no guess
/// that could make the image unbootable.
fn disk_bus(device: &str) -> Option<&'static str> {
    match device.strip_prefix("vd") {
        Some(rest) if !rest.is_empty() && rest.chars().all(|c| c.is_ascii_lowercase()) => {
            Some("virtio")
        }
        _ => None,
    }
}

/// Glance's answer as the caller sees it.
pub(super) fn glance_error(e: GlanceError) -> ServiceError {
    match e {
        GlanceError::Refused { status: 413, .. } => ServiceError::LimitExceeded(e.to_string()),
        GlanceError::Refused { status: 409, .. } => ServiceError::Conflict(e.to_string()),
        GlanceError::Refused { .. } => ServiceError::Invalid(e.to_string()),
        GlanceError::Unavailable(_) | GlanceError::NotConfigured(_) => {
            ServiceError::Unavailable(e.to_string())
        }
    }
}

/// Why an image is not handed over (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageCheck {
    /// It is not what was planned: the restore fails.
    Wrong(String),
    /// Glance cannot say now: ask again later (the report is retried).
    Unknown(String),
}

impl std::fmt::Display for ImageCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageCheck::Wrong(why) | ImageCheck::Unknown(why) => f.write_str(why),
        }
    }
}

/// A restore into an image reported finished: the image is the one
/// planned, active and of the disk's size (a host's word is not enough to
/// hand an image to a tenant).
pub async fn check_image(
    ekko: &Ekko,
    p: &PendingImage,
    disk_size: u64,
    format: ImageFormat,
) -> Result<(), ImageCheck> {
    let unknown = |e: GlanceError| {
        let why = format!("cannot check image {}: {e}", p.image_id);
        match e {
            GlanceError::Refused { .. } => ImageCheck::Wrong(why),
            _ => ImageCheck::Unknown(why),
        }
    };
    let wrong = |why: String| Err(ImageCheck::Wrong(why));
    let glance = ekko.glance().await.map_err(unknown)?;
    let Some(info) = glance
        .get(&p.glance_url, &p.user_token, &p.image_id)
        .await
        .map_err(unknown)?
    else {
        return wrong(format!("image {} is gone", p.image_id));
    };
    if info.status != "active" {
        return wrong(format!(
            "image {} is {}, not active",
            p.image_id, info.status
        ));
    }
    if info.owner.as_deref() != Some(p.project_id.as_str()) {
        return wrong(format!(
            "image {} is not owned by project {}",
            p.image_id, p.project_id
        ));
    }
    let size_ok = match format {
        ImageFormat::Raw => info.size == Some(disk_size),
        ImageFormat::Qcow2 => info.size.is_some_and(|s| s > 0),
    };
    let virtual_ok = info.virtual_size.is_none_or(|v| v == disk_size);
    if !size_ok || !virtual_ok {
        return wrong(format!(
            "image {} holds {:?} bytes (virtual {:?}) for a disk of {disk_size}",
            p.image_id, info.size, info.virtual_size
        ));
    }
    Ok(())
}

/// [`settle_pending_images`] off the caller's path (Glance may be slow or
/// down: a report, a cancel or the conductor's tick never waits for it).
/// A pass over every row starts only when none runs.
pub fn settle_in_background(ekko: &Ekko, restore_id: Option<String>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static SWEEPING: AtomicBool = AtomicBool::new(false);
    /// Lets the next sweep start however this one ends (a panic included).
    struct Sweep;
    impl Drop for Sweep {
        fn drop(&mut self) {
            SWEEPING.store(false, Ordering::SeqCst);
        }
    }
    let sweep = match restore_id {
        None if SWEEPING.swap(true, Ordering::SeqCst) => return,
        None => Some(Sweep),
        Some(_) => None,
    };
    let ekko = ekko.clone();
    tokio::spawn(async move {
        let _sweep = sweep;
        settle_pending_images(&ekko, restore_id.as_deref()).await;
    });
}

/// What becomes of one pending image.
enum Settle {
    /// Its restore runs and the host has not reported: nothing yet.
    Wait,
    /// The host reported the upload: check the image, then complete.
    Check {
        job_id: String,
        disk_size: u64,
        format: ImageFormat,
    },
    /// The restore completed: the image is the tenant's.
    HandOver,
    /// The restore failed (or is gone): the image goes.
    Delete,
}

/// A Glance image created this long ago may still appear after a delete
/// answered 404 (a create that timed out on our side): keep trying.
const CREATE_GRACE_MINUTES: i64 = 10;

/// Settle the images Ekko created and still holds (one restore's, or
/// every one): a restore whose host reported the upload is completed once
/// Glance shows the image right (or failed if it is wrong); a completed
/// restore's image is the tenant's (its row goes); a failed restore's image
/// is deleted, and its row goes once Glance confirms. Failures are logged
/// and retried by later passes (after 2^attempts seconds, at most five
/// minutes). Returns how many rows were settled.
pub async fn settle_pending_images(ekko: &Ekko, restore_id: Option<&str>) -> usize {
    let Ok(db) = ekko.db().cloned() else { return 0 };
    let rid = restore_id.map(str::to_string);
    let rows = db
        .run(move |c| {
            let rows = match &rid {
                Some(r) => images::of_restore(c, r)?.into_iter().collect(),
                None => images::list(c, 100)?,
            };
            let mut out = Vec::new();
            for p in rows {
                let settle = match restores::get(c, &p.restore_id) {
                    Ok(r) if r.status.is_active() => match (
                        p.finished_bytes,
                        jobs::active_for(c, jobs::Subject::Restore(&r.id))?,
                    ) {
                        (Some(_), Some(job)) => {
                            let planned: PlannedRestore =
                                serde_json::from_str(&job.payload).unwrap_or_default();
                            Settle::Check {
                                job_id: job.id,
                                disk_size: planned.disk_size,
                                format: r.format,
                            }
                        }
                        _ => Settle::Wait,
                    },
                    Ok(r) if r.status == RestoreStatus::Completed => Settle::HandOver,
                    Ok(_) | Err(DbError::NotFound(_)) => Settle::Delete,
                    // The catalog cannot say: nothing is deleted on a guess.
                    Err(e) => return Err(e),
                };
                out.push((p, settle));
            }
            Ok(out)
        })
        .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "pending images not read");
            return 0;
        }
    };
    let now = crate::db::now();
    let mut settled = 0;
    for (p, settle) in rows {
        let backoff = chrono::Duration::seconds(1i64 << p.attempts.clamp(0, 8))
            .min(chrono::Duration::minutes(5));
        if restore_id.is_none() && p.attempts > 0 && p.updated_at + backoff > now {
            continue;
        }
        let image_id = p.image_id.clone();
        let retry = |why: String| {
            let (db, id) = (db.clone(), image_id.clone());
            async move {
                let _ = db.run(move |c| images::attempt_failed(c, &id, &why)).await;
            }
        };
        match settle {
            Settle::Wait => continue,
            Settle::HandOver => {}
            Settle::Check {
                job_id,
                disk_size,
                format,
            } => {
                let written = p.finished_bytes.unwrap_or(0);
                match check_image(ekko, &p, disk_size, format).await {
                    Ok(()) => {
                        let (r, id, j) = (p.restore_id.clone(), image_id.clone(), job_id);
                        let done = db
                            .run(move |c| {
                                c.transaction(|c| {
                                    restores::transition(
                                        c,
                                        &r,
                                        RestoreStatus::Completed,
                                        None,
                                        Some(written),
                                    )?;
                                    images::remove(c, &id)?;
                                    jobs::finish(c, &j, JobStatus::Succeeded, None)
                                })
                            })
                            .await;
                        match done {
                            Ok(_) => {
                                tracing::info!(image = %p.image_id, restore = %p.restore_id, "image checked: restore completed");
                                settled += 1;
                            }
                            // Cancelled meanwhile: the next pass deletes it.
                            Err(e) => {
                                tracing::info!(image = %p.image_id, error = %e, "image checked, restore not completed")
                            }
                        }
                        continue;
                    }
                    Err(ImageCheck::Unknown(why)) => {
                        // Glance cannot say now: the job stays alive and
                        // the check is retried.
                        tracing::warn!(image = %p.image_id, %why, "image not checked yet");
                        let j = job_id.clone();
                        let _ = db.run(move |c| jobs::heartbeat(c, &j)).await;
                        retry(why).await;
                        continue;
                    }
                    Err(ImageCheck::Wrong(why)) => {
                        tracing::warn!(image = %p.image_id, restore = %p.restore_id, %why, "image refused");
                        let j = job_id.clone();
                        if db.run(move |c| fail_job(c, &j, &why)).await.is_err() {
                            continue;
                        }
                        if !delete_image(ekko, &p, now).await {
                            retry("not deleted yet".into()).await;
                            continue;
                        }
                    }
                }
            }
            Settle::Delete => {
                if !delete_image(ekko, &p, now).await {
                    retry("not deleted yet".into()).await;
                    continue;
                }
            }
        }
        if db.run(move |c| images::remove(c, &image_id)).await.is_ok() {
            settled += 1;
        }
    }
    settled
}

/// Delete a failed restore's image; `true` once it is gone for good (or
/// can never be deleted with its token, which is logged for the operator).
async fn delete_image(ekko: &Ekko, p: &PendingImage, now: chrono::NaiveDateTime) -> bool {
    let deleted = match ekko.glance().await {
        Ok(g) => {
            g.delete_or_absent(&p.glance_url, &p.user_token, &p.image_id)
                .await
        }
        Err(e) => Err(e),
    };
    match deleted {
        Ok(true) => {
            tracing::info!(image = %p.image_id, restore = %p.restore_id, "image of a failed restore deleted");
            true
        }
        // Not there: maybe not yet (a create that timed out on our side).
        Ok(false) => p.created_at + chrono::Duration::minutes(CREATE_GRACE_MINUTES) < now,
        Err(e) => {
            // Past Keystone's allow-expired window the token opens nothing:
            // say so once and stop.
            let hopeless = matches!(e.status(), Some(401 | 403))
                && p.created_at < now - chrono::Duration::days(2);
            if hopeless {
                tracing::error!(image = %p.image_id, restore = %p.restore_id, project = %p.project_id, error = %e, "image of a failed restore cannot be deleted with its token any more: delete it by hand");
            } else {
                tracing::warn!(image = %p.image_id, restore = %p.restore_id, error = %e, "image of a failed restore not deleted yet");
            }
            hopeless
        }
    }
}
