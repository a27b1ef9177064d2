//! ekko-retention's engine: retention rules turn old backups into deleted
//! ones, and garbage collection turns deleted backups into reclaimed space.
//!
//! * [`rules`]: which backups a policy keeps, and why (pure).
//! * [`plan_policy`] / [`run_pass`]: apply the rules of every policy to the
//!   available backups of its instances (protected backups and backups
//!   younger than the minimum age always stay); an expired backup becomes
//!   `deleted` at once, in one conditional UPDATE, as a tenant's delete.
//! * [`collect_garbage`]: segments that no counting record references are
//!   condemned; once condemned for `[retention] gc_grace_period` and older
//!   than the oldest job still queued or running, each is claimed (status
//!   `deleting`, re-checked unreferenced in the same transaction), deleted
//!   from the store, then forgotten. A crash leaves `deleting` rows that the
//!   next pass finishes. docs/design.md §4 states the invariants.
//! * [`compaction`]: segments whose live share fell under `[retention]
//!   compaction_threshold` are rewritten; the old ones become redirects.
//! * [`scrub`]: a share of the segments is re-read and checked each pass;
//!   damage marks the backups that use it and is never deduplicated against.
//! * [`sweep_orphans`]: objects the catalog does not know (segments of
//!   backups that failed or whose process died before committing,
//!   manifests of backups that failed or were deleted) are deleted once
//!   older than the grace period and than the oldest running job.

pub mod compaction;
pub mod rules;
pub mod scrub;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use crate::backup::{relocation_object, segment_object};
use crate::db::backups::{self, BackupFilter, BackupStatus};
use crate::db::{jobs, policies, segments, DbError};
use crate::store::project_container as container;
use crate::store::{ObjectStore, StoreError};
use crate::Ekko;
use rules::{Candidate, Decision, Rules};

/// The largest segment object compaction and scrub load whole: twice the
/// configured segment size (a writer seals a segment past its target by
/// at most one record), at least 64 MiB. A bigger object was not written
/// by Ekko and is not read into memory.
fn max_segment_object(ekko: &Ekko) -> u64 {
    (2 * ekko.config.backup.segment_size.bytes()).max(64 << 20)
}

/// Segments handled per catalog query.
const BATCH: i64 = 1000;

/// Slack for the difference between the catalog's and the store's clocks
/// measured a moment apart (the measurement itself takes a request).
const CLOCK_MARGIN: chrono::Duration = chrono::Duration::seconds(60);

/// One instance's verdicts under a policy.
#[derive(Debug, Clone, Serialize)]
pub struct InstancePlan {
    pub instance_id: String,
    pub backups: Vec<Decision>,
}

/// What one pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    pub policies: usize,
    pub backups_kept: usize,
    pub backups_expired: usize,
    pub segments_condemned: usize,
    pub segments_deleted: usize,
    pub bytes_reclaimed: i64,
    pub orphans_deleted: usize,
    /// Segments whose live share was measured for compaction, and their
    /// stored and still-used bytes.
    pub segments_measured: usize,
    pub measured_bytes: i64,
    pub measured_live_bytes: i64,
    /// Segments rewritten (live records only), and the bytes written.
    pub segments_compacted: usize,
    pub bytes_rewritten: i64,
    /// Segments scrub re-read; damaged records found; backups marked.
    pub segments_scrubbed: usize,
    pub damaged_records: usize,
    pub backups_damaged: usize,
    /// Disks retired: their live host stopped reporting them.
    pub disks_retired: usize,
    pub live_segments: i64,
    pub live_bytes: i64,
}

impl std::fmt::Display for PassReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: i64| b as f64 / (1 << 20) as f64;
        write!(
            f,
            "{} policies: {} backups kept, {} expired; {} segments condemned, {} deleted, \
             {:.1} MiB reclaimed; {} measured for compaction",
            self.policies,
            self.backups_kept,
            self.backups_expired,
            self.segments_condemned,
            self.segments_deleted,
            mib(self.bytes_reclaimed),
            self.segments_measured,
        )?;
        if self.measured_bytes > 0 {
            write!(
                f,
                " ({:.0}% live)",
                100.0 * self.measured_live_bytes as f64 / self.measured_bytes as f64
            )?;
        }
        write!(
            f,
            ", {} compacted ({:.1} MiB rewritten); {} scrubbed, {} damaged records, {} backups marked; \
             {} orphans deleted; {} live segments, {:.1} MiB",
            self.segments_compacted,
            mib(self.bytes_rewritten),
            self.segments_scrubbed,
            self.damaged_records,
            self.backups_damaged,
            self.orphans_deleted,
            self.live_segments,
            mib(self.live_bytes),
        )?;
        if self.disks_retired > 0 {
            write!(f, "; {} disks retired", self.disks_retired)?;
        }
        Ok(())
    }
}

/// The verdicts of a policy's rules on the available backups of each of
/// its instances (a dry run: nothing changes).
pub async fn plan_policy(ekko: &Ekko, policy_id: &str) -> anyhow::Result<Vec<InstancePlan>> {
    let id = policy_id.to_string();
    let (policy, per_instance) = ekko
        .db()?
        .run(move |c| {
            let p = policies::get(c, &id)?;
            let mut out = Vec::new();
            for instance in policies::instances_of(c, &id)? {
                let filter = BackupFilter {
                    instance_id: Some(instance.clone()),
                    status: Some(BackupStatus::Available),
                    ..BackupFilter::default()
                };
                // Every available backup of the instance, page by page.
                let mut all = Vec::new();
                let mut marker: Option<String> = None;
                loop {
                    let page = backups::list(c, &filter, 1000, marker.as_deref())?;
                    marker = page.last().map(|b| b.id.clone());
                    let n = page.len();
                    all.extend(page);
                    if n < 1000 {
                        break;
                    }
                }
                out.push((instance, all));
            }
            Ok((p, out))
        })
        .await?;
    let zone = crate::schedule::Zone::new(&policy.timezone)
        .map_err(|e| anyhow::anyhow!("policy {policy_id}: {e}"))?;
    let rules = Rules::of(&policy);
    let now = Utc::now();
    Ok(per_instance
        .into_iter()
        .map(|(instance_id, list)| {
            let candidates: Vec<Candidate> = list
                .iter()
                .map(|b| Candidate {
                    id: b.id.clone(),
                    created_at: b.created_at.and_utc(),
                    protected: b.protected,
                })
                .collect();
            InstancePlan {
                instance_id,
                backups: rules::decide(&rules, &candidates, now, |t| {
                    zone.local_time(t).unwrap_or_else(|| t.naive_utc())
                }),
            }
        })
        .collect())
}

/// Retire the disks their hosts stopped reporting for `[retention]
/// retire_after` (instance deleted, disk detached), on hosts that still
/// report: see `db::instances::retire_gone`. Returns how many.
pub async fn retire_gone(ekko: &Ekko) -> anyhow::Result<usize> {
    let now = Utc::now();
    // A host that missed three heartbeats may be down, not rid of its
    // instances: its disks wait.
    let alive = ekko
        .config
        .backup
        .heartbeat_interval
        .max(1)
        .saturating_mul(3);
    let host_alive_after = (now - chrono::Duration::seconds(alive as i64)).naive_utc();
    let retire_after = i64::try_from(ekko.config.retention.retire_after).unwrap_or(i64::MAX / 2);
    let gone_before = (now - chrono::Duration::seconds(retire_after)).naive_utc();
    let retired = ekko
        .db()?
        .run(move |c| crate::db::instances::retire_gone(c, host_alive_after, gone_before))
        .await?;
    for d in &retired {
        tracing::info!(disk = %d.id, instance = %d.instance_id, device = %d.device, "disk retired: its host no longer reports it");
    }
    Ok(retired.len())
}

/// One retention pass over every enabled policy, then garbage collection.
/// With `dry_run`, only counts what would expire.
pub async fn run_pass(ekko: &Ekko, dry_run: bool) -> anyhow::Result<PassReport> {
    let started = std::time::Instant::now();
    if !dry_run {
        ekko.db()?
            .run(crate::db::catalog_rebuilds::ensure_none)
            .await?;
    }
    let mut report = PassReport::default();
    let all = ekko.db()?.run(|c| policies::list(c, None)).await?;
    for p in all.into_iter().filter(|p| p.enabled) {
        report.policies += 1;
        let plans = match plan_policy(ekko, &p.id).await {
            Ok(plans) => plans,
            Err(e) => {
                tracing::error!(policy = %p.id, error = %e, "retention rules not applied");
                continue;
            }
        };
        for d in plans.iter().flat_map(|i| &i.backups) {
            if d.keep {
                report.backups_kept += 1;
                continue;
            }
            if dry_run {
                report.backups_expired += 1;
                continue;
            }
            let id = d.id.clone();
            match ekko
                .db()?
                .run(move |c| backups::delete_if_allowed(c, &id))
                .await
            {
                Ok(b) => {
                    // A catalog rebuild must not bring it back.
                    ekko.remove_manifest(&b.project_id, &b.id).await;
                    report.backups_expired += 1;
                    tracing::info!(policy = %p.id, backup = %d.id, "backup expired");
                }
                // Protected or changed meanwhile: the conditional delete
                // refused, and that is the verdict.
                Err(DbError::Conflict(why)) => {
                    tracing::info!(backup = %d.id, %why, "backup not expired");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if !dry_run {
        report.disks_retired = retire_gone(ekko).await?;
        let grace = Duration::from_secs(ekko.config.retention.gc_grace_period);
        compaction::compact(ekko, &mut report).await?;
        let gc = collect_garbage(ekko, grace).await?;
        report.segments_condemned = gc.segments_condemned;
        report.segments_deleted = gc.segments_deleted;
        report.bytes_reclaimed = gc.bytes_reclaimed;
        scrub::scrub(ekko, ekko.config.retention.scrub_percentage, &mut report).await?;
        let (orphans, bytes) = sweep_orphans(ekko, grace).await?;
        report.orphans_deleted = orphans;
        report.bytes_reclaimed += bytes;
    }
    let totals = ekko.db()?.run(segments::totals).await?;
    for (status, n, bytes) in totals {
        if status == crate::status::SegmentStatus::Live {
            report.live_segments = n;
            report.live_bytes = bytes;
        }
    }
    tracing::info!(?report, "retention pass");
    if !dry_run {
        count_pass(&report, started.elapsed());
    }
    Ok(report)
}

/// A pass in this process's metrics.
fn count_pass(report: &PassReport, took: std::time::Duration) {
    let m = crate::metrics::metrics();
    m.retention_pass_seconds.observe(took.as_secs_f64());
    for (outcome, n) in [
        ("condemned", report.segments_condemned),
        ("deleted", report.segments_deleted),
        ("compacted", report.segments_compacted),
    ] {
        m.retention_segments
            .get_or_create(&crate::metrics::labels(&[("outcome", outcome)]))
            .inc_by(n as u64);
    }
    m.retention_bytes_reclaimed
        .inc_by(report.bytes_reclaimed.max(0) as u64);
}

/// Condemn unreferenced segments; delete those condemned long enough.
pub async fn collect_garbage(ekko: &Ekko, grace: Duration) -> anyhow::Result<PassReport> {
    ekko.db()?
        .run(crate::db::catalog_rebuilds::ensure_none)
        .await?;
    let mut report = PassReport::default();
    let db = ekko.db()?.clone();
    let grace = chrono::Duration::from_std(grace)?;
    let worker = format!("{}:{}", ekko.config.default.host, std::process::id());
    // 1. Condemn. A segment is only a candidate once older than the grace
    //    period: a backup that wrote it may not have committed yet.
    loop {
        let before = (Utc::now() - grace).naive_utc();
        let n = db
            .run(move |c| {
                let ids = segments::unreferenced(c, before, BATCH)?;
                let mut n = 0;
                for id in &ids {
                    if segments::condemn(c, *id)? {
                        n += 1;
                    }
                }
                Ok((ids.len(), n))
            })
            .await?;
        report.segments_condemned += n.1;
        if (n.0 as i64) < BATCH {
            break;
        }
    }
    // 2. Claim what was condemned before the grace period and before the
    //    oldest writer started, then delete it (and finish what a crashed
    //    pass left `deleting`).
    let mut cutoff = (Utc::now() - grace).naive_utc();
    if let Some(oldest) = db.run(jobs::oldest_active_start).await? {
        cutoff = cutoff.min(oldest);
    }
    let mut to_delete = db.run(|c| segments::deleting(c, BATCH)).await?;
    let w = worker.clone();
    let condemned = db
        .run(move |c| {
            let mut claimed = Vec::new();
            for s in segments::condemned_before(c, cutoff, BATCH)? {
                if segments::claim_for_deletion(c, s.id, &w)? {
                    claimed.push(s);
                }
            }
            Ok(claimed)
        })
        .await?;
    to_delete.extend(condemned);
    crate::failpoint::hit("gc.after-claim");
    let prefix = ekko.config.swift.container_prefix.clone();
    // A segment leaves the second store with the first (no backup that
    // lives there needs it either: the catalog is one).
    let both = stores(ekko);
    for s in to_delete {
        let cont = container(&prefix, &s.project_id);
        let id = s.id as u64;
        if !delete_objects(&both, &cont, &[segment_object(id), relocation_object(id)]).await {
            continue;
        }
        crate::failpoint::hit("gc.after-delete");
        db.run(move |c| segments::forget(c, id as i64)).await?;
        report.segments_deleted += 1;
        report.bytes_reclaimed += s.size;
    }
    // 3. Compacted segments: once the grace period (and every job that
    //    may have planned on them) is over, their old objects go; the rows
    //    stay as redirects until no counting record names them.
    let relocated = db
        .run(move |c| segments::relocated_before(c, cutoff, BATCH))
        .await?;
    //    The second store keeps segments under their own ids: it gets a
    //    copy first if it lacks one (a backup that uses the segment may not
    //    be replicated yet), and keeps it while a record names the id.
    for s in relocated {
        let cont = container(&prefix, &s.project_id);
        if let Some(replica) = &ekko.replica {
            if let Err(e) =
                crate::replication::ensure_copied(ekko, replica, &s.project_id, s.id).await
            {
                tracing::warn!(segment = %format!("{:016x}", s.id), error = %format!("{e:#}"), "compacted segment kept: not in the second store yet");
                continue;
            }
        }
        if !delete_objects(&both[..1], &cont, &[segment_object(s.id as u64)]).await {
            continue;
        }
        crate::failpoint::hit("gc.after-relocated-delete");
        let id = s.id;
        db.run(move |c| segments::mark_moved(c, id)).await?;
        report.segments_deleted += 1;
        report.bytes_reclaimed += s.size;
    }
    let unused = db.run(|c| segments::unused_redirects(c, BATCH)).await?;
    for s in unused {
        let cont = container(&prefix, &s.project_id);
        let id = s.id as u64;
        if !delete_objects(&both[..1], &cont, &[relocation_object(id)]).await
            || !delete_objects(
                &both[1..],
                &cont,
                &[segment_object(id), relocation_object(id)],
            )
            .await
        {
            continue;
        }
        let id = s.id;
        db.run(move |c| segments::forget(c, id)).await?;
    }
    Ok(report)
}

/// The first store, then the second if one is configured.
fn stores(ekko: &Ekko) -> Vec<Arc<dyn ObjectStore>> {
    std::iter::once(ekko.store.clone())
        .chain(ekko.replica.as_ref().map(|r| r.store.clone()))
        .collect()
}

/// Delete objects from each store (already gone is fine); false if one
/// could not be deleted now (the next pass retries).
async fn delete_objects(
    stores: &[Arc<dyn ObjectStore>],
    container: &str,
    names: &[String],
) -> bool {
    for store in stores {
        for name in names {
            match store.delete(container, name).await {
                Ok(()) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(object = %name, error = %e, "object not deleted yet; the next pass retries");
                    return false;
                }
            }
        }
    }
    true
}

/// Delete the objects of the stores' project containers (the first
/// store's, then the second's) that the catalog does not know, once older
/// than `grace` and than the oldest queued or running job (which may still
/// commit them). Returns (objects, bytes).
pub async fn sweep_orphans(ekko: &Ekko, grace: Duration) -> anyhow::Result<(usize, i64)> {
    ekko.db()?
        .run(crate::db::catalog_rebuilds::ensure_none)
        .await?;
    let (mut deleted, mut bytes) = sweep_store(ekko, ekko.store.as_ref(), grace).await?;
    if let Some(replica) = &ekko.replica {
        // The second store being away must not fail the pass (the first
        // store's work is done and counted); its sweep waits.
        match sweep_store(ekko, replica.store.as_ref(), grace).await {
            Ok((n, b)) => {
                deleted += n;
                bytes += b;
            }
            Err(e) => {
                tracing::warn!(store = %replica.name, error = %format!("{e:#}"), "second store not swept this pass")
            }
        }
    }
    Ok((deleted, bytes))
}

/// [`sweep_orphans`] of one store.
async fn sweep_store(
    ekko: &Ekko,
    store: &dyn ObjectStore,
    grace: Duration,
) -> anyhow::Result<(usize, i64)> {
    use std::collections::HashSet;
    let db = ekko.db()?.clone();
    let grace = chrono::Duration::from_std(grace)?;
    let oldest_job = db.run(jobs::oldest_active_start).await?;
    let prefix = ekko.config.swift.container_prefix.clone();
    let (mut deleted, mut bytes) = (0, 0i64);
    for cont in store.containers(&prefix).await? {
        let project = cont[prefix.len()..].to_string();
        let p = project.clone();
        let known = db
            .run(move |c| {
                // A rebuild may have started since the pass began.
                crate::db::catalog_rebuilds::ensure_none(c)?;
                if !backups::project_known(c, &p)? {
                    return Ok(None);
                }
                let segs = segments::ids_of_project(c, &p)?;
                let ids = backups::ids_that_may_count(c, &p)?;
                Ok(Some((
                    segs.into_iter().collect(),
                    ids.into_iter().collect(),
                )))
            })
            .await?;
        // A project the catalog never recorded a backup of is not Ekko's
        // to judge: a lost catalog not rebuilt yet, or another deployment
        // sharing the prefix. Its objects are left alone.
        let Some((known_segments, live_backups)): Option<(HashSet<i64>, HashSet<String>)> = known
        else {
            tracing::info!(container = %cont, "not swept: the catalog records no backup of this project");
            continue;
        };
        // Objects carry the store's clock: the cutoff is taken on it. The
        // oldest job's start (the catalog's clock) is moved onto it by the
        // difference between the two clocks now.
        //
        // Jobs are stamped by the API host's clock, not this one: an API
        // host far ahead weakens only this term. The grace term (store
        // clock only) still covers every job, since gc_grace_period is at
        // least the longest a job may run (checked with the config).
        let before = Utc::now();
        let store_now = match store.now(&cont).await {
            Ok(t) => t,
            Err(e) => {
                // This container waits for the next pass; the others go on.
                tracing::warn!(container = %cont, error = %e, "cannot read the store's clock; not sweeping this container");
                continue;
            }
        };
        let skew = store_now - before;
        let mut cutoff = store_now - grace;
        if let Some(oldest) = oldest_job {
            cutoff = cutoff.min(oldest.and_utc() + skew - CLOCK_MARGIN);
        }
        for obj in store.list(&cont, "").await? {
            if obj.last_modified >= cutoff {
                continue;
            }
            let segment_named = obj
                .name
                .strip_prefix("segments/")
                .or_else(|| obj.name.strip_prefix("relocations/"));
            let known = if let Some(hex) = segment_named {
                u64::from_str_radix(hex, 16)
                    .map(|id| known_segments.contains(&(id as i64)))
                    .unwrap_or(true)
            } else if let Some(m) = obj.name.strip_prefix("manifests/") {
                m.strip_suffix(".json")
                    .is_none_or(|id| live_backups.contains(id))
            } else {
                // Not an object Ekko writes: never touched.
                true
            };
            if known {
                continue;
            }
            match store.delete(&cont, &obj.name).await {
                Ok(()) => {
                    tracing::info!(container = %cont, object = %obj.name, "orphan deleted");
                    deleted += 1;
                    bytes += obj.size as i64;
                }
                // Another pass got there first.
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(object = %obj.name, error = %e, "orphan not deleted yet"),
            }
        }
    }
    Ok((deleted, bytes))
}
