//! Second copies (`[replication]`): ekko-retention copies every available
//! backup into the second store, only the objects that store lacks.
//!
//! * The second store keeps every segment under its own id, as written:
//!   its readers follow no redirects. Before garbage collection deletes a
//!   compacted segment's object from the first store, it copies it to the
//!   second if that lacks it (`retention`), so a backup's segments are
//!   always somewhere to copy from, and a copy stays valid whatever later
//!   compactions do. The second store does not gain compaction's savings:
//!   an old segment leaves it when no backup uses it any more.
//! * [`run_pass`] copies each backup the store does not hold yet, oldest
//!   first: the segments its records use, the project's wrapped key if it
//!   is encrypted, and its manifest last, so a rebuild from the second store
//!   never finds a manifest without its data.
//! * Each object is read from the first store, written to the second, read
//!   back and compared (SHA-256) before the catalog records it. A backup is
//!   recorded once the catalog says every object it needs is held, checked
//!   again in one transaction (a compaction meanwhile adds objects).
//! * Deletion stays with garbage collection (`retention`): a segment leaves
//!   both stores when no backup needs it, the orphan sweep runs on both.
//! * A crash between an upload and its catalog row leaves an object the
//!   next pass uploads again (same bytes) or the second store's sweep
//!   deletes. Encrypted data is copied as it is: no keys are needed.
//! * A backup whose records compaction moved before replication was turned
//!   on (the old segment's object already gone) cannot be copied as
//!   written, nor can the later incrementals of its disk whose maps still
//!   name that segment: they stay `pending` and say why in the log, until a
//!   full backup of the disk (mode `full`) writes maps that do not.

use std::collections::HashSet;

use bytes::Bytes;
use diesel::Connection;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::backup::segment_object;
use crate::db::backups::{self, BackupStatus};
use crate::db::replicas::{self, UsedSegment};
use crate::db::{keys, leases, DbConnection, DbError, DbResult};
use crate::keyring::KEY_OBJECT;
use crate::store::{get_capped, ObjectStore, Replica, SMALL_OBJECT_MAX};
use crate::Ekko;

/// Backups (and moved copies) handled per catalog query.
const BATCH: i64 = 200;

/// Rounds of copy-then-check per backup before the pass gives up on it (a
/// committed record's segments never change: a second round only follows
/// objects another pass or garbage collection forgot meanwhile).
const ROUNDS: usize = 4;

/// What one pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicationReport {
    pub backups_replicated: usize,
    /// Backups not replicated this pass (the next one retries).
    pub backups_failed: usize,
    pub objects_copied: usize,
    pub bytes_copied: u64,
    /// Another process was running this store's pass: this one did nothing.
    pub busy: bool,
}

impl std::fmt::Display for ReplicationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.busy {
            return write!(f, "another process is running this store's pass");
        }
        write!(
            f,
            "{} backups replicated ({} to retry), {} objects copied ({:.1} MiB)",
            self.backups_replicated,
            self.backups_failed,
            self.objects_copied,
            self.bytes_copied as f64 / (1 << 20) as f64,
        )
    }
}

/// One object to copy: its name, and the segment it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Wanted {
    name: String,
    segment: Option<i64>,
}

/// The segment objects a backup's records are read from, under their own
/// ids; an error if one of them is gone from the first store (compacted
/// before replication was turned on) and the second lacks it.
fn wanted_for(used: &[UsedSegment]) -> Vec<Wanted> {
    used.iter()
        .map(|u| Wanted {
            name: segment_object(u.id as u64),
            segment: Some(u.id),
        })
        .collect()
}

/// The largest object copied: as compaction and scrub read whole segments.
fn max_object(ekko: &Ekko) -> u64 {
    (2 * ekko.config.backup.segment_size.bytes()).max(64 << 20)
}

/// How long a pass's lease lasts unless renewed, and how often it is.
const LEASE_TTL: chrono::Duration = chrono::Duration::minutes(5);
const LEASE_RENEWAL: std::time::Duration = std::time::Duration::from_secs(60);

/// One replication pass (nothing without `[replication]`), by one process
/// at a time per second store (a lease in the catalog, renewed while the
/// pass runs; a holder that dies loses it after [`LEASE_TTL`]).
pub async fn run_pass(ekko: &Ekko) -> anyhow::Result<ReplicationReport> {
    let mut report = ReplicationReport::default();
    let Some(replica) = ekko.replica.clone() else {
        return Ok(report);
    };
    let db = ekko.db()?.clone();
    db.run(crate::db::catalog_rebuilds::ensure_none).await?;
    let lease = format!("replication:{}", replica.key);
    let holder = format!(
        "{}:{}:{}",
        ekko.config.default.host,
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let (l, h) = (lease.clone(), holder.clone());
    if !db.run(move |c| leases::take(c, &l, &h, LEASE_TTL)).await? {
        tracing::info!(store = %replica.name, "another process is running this store's replication pass");
        report.busy = true;
        return Ok(report);
    }
    // Renewed in the background (one backup's copy may outlast the TTL);
    // a lease lost to another process ends this pass.
    let pass = copy_pending(ekko, &replica, &mut report);
    let renewal = async {
        let mut renewed = std::time::Instant::now();
        loop {
            tokio::time::sleep(LEASE_RENEWAL).await;
            let (l, h) = (lease.clone(), holder.clone());
            match db.run(move |c| leases::renew(c, &l, &h, LEASE_TTL)).await {
                Ok(true) => renewed = std::time::Instant::now(),
                Ok(false) => return anyhow::anyhow!("another process took over the pass"),
                // A few failed renewals are survived; not past the point
                // where the lease may run out and another pass start.
                Err(e) => {
                    let left = LEASE_TTL
                        .to_std()
                        .unwrap_or_default()
                        .saturating_sub(2 * LEASE_RENEWAL);
                    if renewed.elapsed() >= left {
                        return anyhow::Error::from(e)
                            .context("the pass's lease could not be renewed");
                    }
                    tracing::warn!(error = %e, "replication lease not renewed yet");
                }
            }
        }
    };
    let outcome = tokio::select! {
        r = pass => r,
        lost = renewal => Err(lost),
    };
    if let Err(e) = db.run(move |c| leases::release(c, &lease, &holder)).await {
        tracing::warn!(error = %e, "replication lease not released: it runs out by itself");
    }
    outcome.map(|()| report)
}

/// The pass proper: every backup the second store does not hold yet.
async fn copy_pending(
    ekko: &Ekko,
    replica: &Replica,
    report: &mut ReplicationReport,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    replica
        .check_distinct(ekko.store.as_ref(), &ekko.config.swift.container_prefix)
        .await?;
    sync_project_keys(ekko, replica, report).await?;
    let db = ekko.db()?.clone();
    let mut failed: HashSet<String> = HashSet::new();
    loop {
        let key = replica.key.clone();
        let limit = BATCH + failed.len() as i64;
        let pending = db
            .run(move |c| replicas::pending_backups(c, &key, limit))
            .await?;
        let todo: Vec<_> = pending
            .iter()
            .filter(|(id, _)| !failed.contains(id))
            .cloned()
            .collect();
        if todo.is_empty() {
            break;
        }
        for (id, project) in todo {
            match replicate_backup(ekko, replica, &id, &project, report).await {
                Ok(true) => report.backups_replicated += 1,
                // Deleted meanwhile: nothing to hold.
                Ok(false) => {
                    failed.insert(id);
                }
                Err(e) => {
                    tracing::warn!(backup = %id, store = %replica.name, error = %format!("{e:#}"), "backup not replicated yet; the next pass retries");
                    report.backups_failed += 1;
                    failed.insert(id);
                    // A store that stopped answering fails every backup
                    // after this one, each through its retries: the pass
                    // ends and the next one starts over.
                    if let Err(down) = reachable(ekko, replica).await {
                        count_pass(report, started.elapsed());
                        return Err(down.context("replication pass stopped"));
                    }
                }
            }
        }
        if (pending.len() as i64) < limit {
            break;
        }
    }
    count_pass(report, started.elapsed());
    tracing::info!(store = %replica.name, %report, "replication pass");
    Ok(())
}

/// Whether both stores answer: a HEAD of an object that does not exist
/// (not found is an answer).
async fn reachable(ekko: &Ekko, replica: &Replica) -> anyhow::Result<()> {
    use anyhow::Context;
    let container = format!("{}replica-probe", ekko.config.swift.container_prefix);
    for (store, which) in [
        (ekko.store.as_ref(), "the first store"),
        (replica.store.as_ref(), "the second store"),
    ] {
        match store.head(&container, "probe/reachable").await {
            Ok(_) | Err(crate::store::StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("{which} does not answer")),
        }
    }
    Ok(())
}

fn count_pass(report: &ReplicationReport, took: std::time::Duration) {
    let m = crate::metrics::metrics();
    m.replication_pass_seconds.observe(took.as_secs_f64());
    m.replication_bytes.inc_by(report.bytes_copied);
    m.replication_backups
        .inc_by(report.backups_replicated as u64);
}

/// Copy one backup's missing objects; true once the catalog records the
/// second store holding it, false if the backup stopped being available.
async fn replicate_backup(
    ekko: &Ekko,
    replica: &Replica,
    backup_id: &str,
    project: &str,
    report: &mut ReplicationReport,
) -> anyhow::Result<bool> {
    let db = ekko.db()?.clone();
    let container = ekko.container(project);
    let manifest = Wanted {
        name: crate::manifest::object_name(backup_id),
        segment: None,
    };
    let mut copied = 0u64;
    for _ in 0..ROUNDS {
        let (store, id, p) = (
            replica.key.clone(),
            backup_id.to_string(),
            project.to_string(),
        );
        let missing = db
            .run(move |c| {
                let wanted = wanted_of(c, &id, &p)?;
                missing_of(c, &store, &p, wanted)
            })
            .await?;
        copied += copy_all(ekko, replica, &container, project, missing, report).await?;
        // The manifest last: a rebuild from the second store never finds a
        // manifest whose data it lacks.
        let held = {
            let (store, p, n) = (
                replica.key.clone(),
                project.to_string(),
                manifest.name.clone(),
            );
            db.run(move |c| replicas::held(c, &store, &p, &[n])).await?
        };
        if held.is_empty() {
            copied += copy_all(
                ekko,
                replica,
                &container,
                project,
                vec![manifest.clone()],
                report,
            )
            .await?;
        }
        let (store, id, p) = (
            replica.key.clone(),
            backup_id.to_string(),
            project.to_string(),
        );
        let manifest_name = manifest.name.clone();
        let outcome = db
            .run(move |c| {
                c.transaction(|c| {
                    if backups::get(c, &id)?.status != BackupStatus::Available {
                        return Ok(Some(false));
                    }
                    let mut wanted = wanted_of(c, &id, &p)?;
                    wanted.push(Wanted {
                        name: manifest_name,
                        segment: None,
                    });
                    if !missing_of(c, &store, &p, wanted)?.is_empty() {
                        return Ok(None);
                    }
                    replicas::mark_backup(c, &store, &id, copied as i64)?;
                    Ok(Some(true))
                })
            })
            .await?;
        if let Some(done) = outcome {
            if done {
                tracing::info!(backup = %backup_id, store = %replica.name, bytes = copied, "backup replicated");
            }
            return Ok(done);
        }
    }
    anyhow::bail!("its segments kept moving (compaction) through {ROUNDS} rounds")
}

/// What a backup needs in the second store but its manifest: the objects
/// of its segments, and an encrypted project's wrapped key (a rebuild from
/// that store opens the project with it).
fn wanted_of(c: &mut DbConnection, backup_id: &str, project: &str) -> DbResult<Vec<Wanted>> {
    let mut wanted = wanted_for(&replicas::segments_of_backup(c, backup_id)?);
    if keys::get(c, project)?.is_some() {
        wanted.push(Wanted {
            name: KEY_OBJECT.to_string(),
            segment: None,
        });
    }
    Ok(wanted)
}

/// What of `wanted` the store does not hold; refused if scrub found one of
/// those segments damaged (the copy would carry the damage off site).
fn missing_of(
    c: &mut DbConnection,
    store: &str,
    project: &str,
    wanted: Vec<Wanted>,
) -> DbResult<Vec<Wanted>> {
    let names: Vec<String> = wanted.iter().map(|w| w.name.clone()).collect();
    let held = replicas::held(c, store, project, &names)?;
    let missing: Vec<Wanted> = wanted
        .into_iter()
        .filter(|w| !held.contains(&w.name))
        .collect();
    let ids: Vec<i64> = missing.iter().filter_map(|w| w.segment).collect();
    if let Some(bad) = replicas::damaged(c, &ids)?.first() {
        return Err(DbError::Conflict(format!(
            "segment {bad:016x} is damaged in the first store (scrub): not copied"
        )));
    }
    Ok(missing)
}

/// Copy objects, `[replication] concurrency` at a time, recording each in
/// the catalog; the bytes copied.
async fn copy_all(
    ekko: &Ekko,
    replica: &Replica,
    container: &str,
    project: &str,
    objects: Vec<Wanted>,
    report: &mut ReplicationReport,
) -> anyhow::Result<u64> {
    let db = ekko.db()?.clone();
    let concurrency = ekko.config.replication.concurrency.max(1) as usize;
    let max = max_object(ekko);
    let sizes: Vec<u64> = futures::stream::iter(objects)
        .map(|w| {
            let (db, first, second) = (db.clone(), ekko.store.clone(), replica.store.clone());
            let (container, project, store) = (
                container.to_string(),
                project.to_string(),
                replica.key.clone(),
            );
            async move {
                let size =
                    copy_object(first.as_ref(), second.as_ref(), &container, &w.name, max).await?;
                db.run(move |c| {
                    replicas::record_object(c, &store, &project, &w.name, w.segment, size as i64)
                })
                .await?;
                anyhow::Ok(size)
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    report.objects_copied += sizes.len();
    let bytes: u64 = sizes.iter().sum();
    report.bytes_copied += bytes;
    Ok(bytes)
}

/// Copy one object and check the copy: read back, same SHA-256.
async fn copy_object(
    first: &dyn ObjectStore,
    second: &dyn ObjectStore,
    container: &str,
    name: &str,
    max: u64,
) -> anyhow::Result<u64> {
    use anyhow::Context;
    let data: Bytes = match get_capped(first, container, name, max).await {
        Err(crate::store::StoreError::NotFound { .. }) if name.starts_with("segments/") => {
            anyhow::bail!(
                "{container}/{name} is gone from the first store and the second lacks it: \
                 compacted before replication was turned on? A full backup of the disk \
                 (mode full) writes maps that no longer name it"
            )
        }
        r => r.with_context(|| format!("reading {container}/{name} from the first store"))?,
    };
    let digest = Sha256::digest(&data);
    let size = data.len() as u64;
    second
        .put(container, name, data)
        .await
        .with_context(|| format!("writing {container}/{name} to the second store"))?;
    // The size is known: one ranged GET, no HEAD (each S3 request may cost
    // the store a credential check).
    let back = match size {
        0 => Bytes::new(),
        n => second
            .get_range(container, name, 0, n)
            .await
            .with_context(|| format!("reading back {container}/{name} from the second store"))?,
    };
    anyhow::ensure!(
        Sha256::digest(&back) == digest,
        "{container}/{name}: the second store's copy differs from the first store's"
    );
    Ok(size)
}

/// Copy segment `id` of `project` to the second store unless it holds it
/// (garbage collection, before the first store deletes a compacted
/// segment's object).
pub async fn ensure_copied(
    ekko: &Ekko,
    replica: &Replica,
    project: &str,
    id: i64,
) -> anyhow::Result<()> {
    let wanted = vec![Wanted {
        name: segment_object(id as u64),
        segment: Some(id),
    }];
    let (key, p) = (replica.key.clone(), project.to_string());
    let missing = ekko
        .db()?
        .run(move |c| missing_of(c, &key, &p, wanted))
        .await?;
    if !missing.is_empty() {
        replica
            .check_distinct(ekko.store.as_ref(), &ekko.config.swift.container_prefix)
            .await?;
        let mut report = ReplicationReport::default();
        let container = ekko.container(project);
        copy_all(ekko, replica, &container, project, missing, &mut report).await?;
    }
    Ok(())
}

/// An encrypted project's wrapped key goes with its data (a rebuild from
/// the second store opens it with the master key), written from the
/// catalog's row (not copied from the first store, whose object a host with
/// write access there could have replaced), again whenever it differs (a
/// master key rotation rewraps it). One project's failure waits for the
/// next pass; the others go on.
async fn sync_project_keys(
    ekko: &Ekko,
    replica: &Replica,
    report: &mut ReplicationReport,
) -> anyhow::Result<()> {
    let rows = ekko.db()?.run(keys::all).await?;
    for row in rows {
        let project = row.project_id.clone();
        let container = ekko.container(&project);
        let wrapped = match row.wrapped_key() {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(%project, error = %e, "project key not copied to the second store");
                continue;
            }
        };
        let body = Bytes::from(serde_json::to_vec(&wrapped)?);
        let second = get_capped(
            replica.store.as_ref(),
            &container,
            KEY_OBJECT,
            SMALL_OBJECT_MAX,
        )
        .await
        .ok();
        if second.as_ref() == Some(&body) {
            continue;
        }
        let size = body.len() as i64;
        if let Err(e) = replica.store.put(&container, KEY_OBJECT, body).await {
            tracing::warn!(%project, error = %e, "project key not copied to the second store yet");
            continue;
        }
        let (key, p) = (replica.key.clone(), project.clone());
        ekko.db()?
            .run(move |c| replicas::record_object(c, &key, &p, KEY_OBJECT, None, size))
            .await?;
        report.objects_copied += 1;
        report.bytes_copied += size as u64;
    }
    Ok(())
}

/// Where one backup's second copy stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupReplication {
    /// The second store's name (`[replication] name`).
    pub store: String,
    /// `replicated`, or `pending` until the next passes copy it.
    pub status: &'static str,
    pub copied_at: Option<chrono::NaiveDateTime>,
    /// Seconds from the backup's completion to its copy, or, while
    /// pending, until now.
    pub lag_seconds: Option<i64>,
}

/// Where backup `b`'s second copy stands; `None` without `[replication]`
/// or for a backup that is not available (nothing is copied then).
pub fn backup_status(
    c: &mut DbConnection,
    replica: Option<&Replica>,
    b: &backups::Backup,
) -> DbResult<Option<BackupReplication>> {
    let Some(replica) = replica else {
        return Ok(None);
    };
    let copied_at = replicas::stores_of_backup(c, &b.id)?
        .into_iter()
        .find(|(s, _)| *s == replica.key)
        .map(|(_, at)| at);
    // Nothing is copied of a backup that is not available, and a deleted
    // one's copy is on its way out.
    if b.status != BackupStatus::Available {
        return Ok(None);
    }
    let done = b.completed_at.unwrap_or(b.created_at);
    let until = copied_at.unwrap_or_else(crate::db::now);
    Ok(Some(BackupReplication {
        store: replica.name.clone(),
        status: if copied_at.is_some() {
            "replicated"
        } else {
            "pending"
        },
        copied_at,
        lag_seconds: Some((until - done).num_seconds().max(0)),
    }))
}

/// The second store as a whole (`ekko-manage replication status`).
#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    pub name: String,
    pub key: String,
    /// Available backups it holds, and those still to copy.
    pub backups_replicated: i64,
    pub backups_pending: i64,
    /// Seconds since the oldest pending backup completed (0: caught up).
    pub lag_seconds: i64,
    pub objects: i64,
    pub bytes: i64,
}

/// Where the second store stands; `None` without `[replication]`.
pub async fn store_status(ekko: &Ekko) -> anyhow::Result<Option<StoreStatus>> {
    let Some(replica) = ekko.replica.clone() else {
        return Ok(None);
    };
    let key = replica.key.clone();
    let (counts, oldest, totals) = ekko
        .db()?
        .run(move |c| {
            Ok((
                replicas::counts(c, &key)?,
                replicas::oldest_pending(c, &key)?,
                replicas::totals(c, &key)?,
            ))
        })
        .await?;
    Ok(Some(StoreStatus {
        name: replica.name,
        key: replica.key,
        backups_replicated: counts.0,
        backups_pending: counts.1,
        lag_seconds: oldest.map_or(0, |t| (crate::db::now() - t).num_seconds().max(0)),
        objects: totals.0,
        bytes: totals.1,
    }))
}

/// A rebuild from the second store: the catalog it made records that
/// store holding every object it found and every backup it imported.
pub async fn record_rebuilt(ekko: &Ekko, replica: &Replica) -> anyhow::Result<()> {
    let db = ekko.db()?.clone();
    let prefix = ekko.config.swift.container_prefix.clone();
    for container in replica.store.containers(&prefix).await? {
        let project = container[prefix.len()..].to_string();
        let objects = replica.store.list(&container, "").await?;
        let key = replica.key.clone();
        db.run(move |c| {
            c.transaction(|c| {
                for o in &objects {
                    let segment = o
                        .name
                        .strip_prefix("segments/")
                        .or_else(|| o.name.strip_prefix("relocations/"))
                        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                        .map(|id| id as i64);
                    replicas::record_object(c, &key, &project, &o.name, segment, o.size as i64)?;
                }
                for id in backups::ids_that_may_count(c, &project)? {
                    replicas::mark_backup(c, &key, &id, 0)?;
                }
                Ok::<_, DbError>(())
            })
        })
        .await?;
    }
    Ok(())
}
