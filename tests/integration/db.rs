//! One catalog suite, run against SQLite and against the real MariaDB.

use ekko::db::backups::{self, Backup, BackupFilter, BackupStatus, NewBackupDisk};
use ekko::db::instances::{self, DiskReport};
use ekko::db::segments::{self, Segment};
use ekko::db::{hosts, jobs, now, Db, DbConnection, DbError};

use crate::helpers::{mariadb_db, sqlite_db};

fn suite(db: &Db) {
    fresh_database_needs_sync(db);
    let mut c = db.conn().expect("connection");
    a_rebuild_mark_has_one_holder(&mut c);
    hosts_register_on_first_heartbeat(&mut c);
    instances_keep_disk_ids_across_reports(&mut c);
    backup_state_machine(&mut c);
    listing_pages_with_marker(&mut c);
    reference_intervals_track_liveness(&mut c);
    jobs_end_once(&mut c);
    a_host_cannot_take_an_instance_its_host_still_reports(&mut c);
    a_disk_is_not_retired_under_a_backup(&mut c);
    a_lease_has_one_holder_until_it_runs_out(&mut c);
    a_rebuild_needs_an_empty_catalog(&mut c);
    drop(c);
    rows_from_before_last_seen_count_as_seen(db);
}

#[test]
fn catalog_on_sqlite() {
    let t = sqlite_db();
    suite(&t.db);
}

#[test]
fn catalog_on_mariadb() {
    let Some(t) = mariadb_db() else { return };
    suite(&t.db);
}

fn fresh_database_needs_sync(db: &Db) {
    let err = db.check_schema().expect_err("empty database is outdated");
    assert!(matches!(err, DbError::SchemaOutdated(_)));
    assert!(err.to_string().contains("ekko-manage db sync"), "{err}");
    let applied = db.sync().expect("migrations apply");
    assert!(!applied.is_empty());
    assert!(db.sync().expect("idempotent").is_empty());
    db.check_schema().expect("up to date after sync");
}

fn hosts_register_on_first_heartbeat(c: &mut DbConnection) {
    hosts::heartbeat(c, "compute-1", "0.1.0", 2).unwrap();
    let first = hosts::list(c).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    hosts::heartbeat(c, "compute-1", "0.1.1", 4).unwrap();
    let h = hosts::list(c).unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!((h[0].version.as_str(), h[0].capacity), ("0.1.1", 4));
    assert_eq!(h[0].created_at, first[0].created_at);
    assert!(h[0].heartbeat_at > first[0].heartbeat_at);
}

fn disks(sizes: &[(&str, i64)]) -> Vec<DiskReport> {
    sizes
        .iter()
        .map(|(d, s)| DiskReport {
            device: d.to_string(),
            node_name: format!("{d}-format"),
            virtual_size: *s,
        })
        .collect()
}

fn instances_keep_disk_ids_across_reports(c: &mut DbConnection) {
    instances::upsert(
        c,
        "inst-1",
        "proj-a",
        "compute-1",
        "web",
        &disks(&[("vda", 1 << 30)]),
        instances::MOVE_ALWAYS,
    )
    .unwrap();
    let before = instances::disks_of(c, "inst-1").unwrap();
    instances::upsert(
        c,
        "inst-1",
        "proj-a",
        "compute-2",
        "web",
        &disks(&[("vda", 2 << 30), ("vdb", 1 << 20)]),
        instances::MOVE_ALWAYS,
    )
    .unwrap();
    let after = instances::disks_of(c, "inst-1").unwrap();
    assert_eq!(after.len(), 2);
    assert_eq!(
        after[0].id, before[0].id,
        "a disk keeps its id (and history)"
    );
    assert_eq!(after[0].virtual_size, 2 << 30);
    assert_eq!(instances::get(c, "inst-1").unwrap().host, "compute-2");
    let err = instances::upsert(
        c,
        "inst-1",
        "proj-b",
        "compute-2",
        "web",
        &[],
        instances::MOVE_ALWAYS,
    )
    .unwrap_err();
    assert!(matches!(err, DbError::Conflict(_)), "{err}");
    assert_eq!(
        instances::list(c, Some("proj-b"), 100, None, true)
            .unwrap()
            .len(),
        0
    );
    assert!(matches!(
        instances::get(c, "nope"),
        Err(DbError::NotFound(_))
    ));
}

fn backup_state_machine(c: &mut DbConnection) {
    let b = Backup::queued("proj-a", "user-1", "inst-1", "nightly", "auto");
    backups::insert(c, &b).unwrap();
    let run = backups::transition(c, &b.id, BackupStatus::Running, None).unwrap();
    assert!(run.started_at.is_some());
    // A second worker cannot start the same backup.
    let err = backups::transition(c, &b.id, BackupStatus::Running, None).unwrap_err();
    assert!(
        err.to_string()
            .contains("is running, it cannot become running"),
        "{err}"
    );
    assert!(backups::transition(c, &b.id, BackupStatus::Deleted, None).is_err());
    let done = backups::transition(c, &b.id, BackupStatus::Available, None).unwrap();
    assert_eq!(done.status, BackupStatus::Available);
    assert!(done.completed_at.is_some());
    backups::transition(c, &b.id, BackupStatus::Deleting, None).unwrap();
    let gone = backups::transition(c, &b.id, BackupStatus::Deleted, None).unwrap();
    assert!(gone.deleted_at.is_some());

    let e = Backup::queued("proj-a", "user-1", "inst-1", "failing", "full");
    backups::insert(c, &e).unwrap();
    backups::transition(c, &e.id, BackupStatus::Running, None).unwrap();
    let failed =
        backups::transition(c, &e.id, BackupStatus::Error, Some("NBD connection lost")).unwrap();
    assert_eq!(failed.error.as_deref(), Some("NBD connection lost"));
    backups::transition(c, &e.id, BackupStatus::Queued, None).expect("error can be retried");

    // Per-disk records: one row per disk, unique per (disk, seq).
    let disk = &instances::disks_of(c, "inst-1").unwrap()[0];
    let rec = NewBackupDisk {
        backup_id: e.id.clone(),
        disk_id: disk.id.clone(),
        seq: 1,
        virtual_size: disk.virtual_size,
        chunk_size: 256 << 10,
        root_digest: vec![7u8; 32],
        root_segment: 42,
        bitmap_name: Some("ekko-1".into()),
        full_read: true,
        read_bytes: 10,
        new_bytes: 5,
        stored_bytes: 3,
        created_at: now(),
        full_reason: Some("no_checkpoint".into()),
    };
    backups::insert_disk_record(c, &rec).unwrap();
    let err = backups::insert_disk_record(c, &rec).unwrap_err();
    assert!(err.is_unique_violation(), "{err}");
    let recs = backups::disks_of(c, &e.id).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].root_digest, vec![7u8; 32]);
}

fn listing_pages_with_marker(c: &mut DbConnection) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let b = Backup::queued("proj-list", "u", "inst-9", &format!("b{i}"), "auto");
        backups::insert(c, &b).unwrap();
        ids.push(b.id);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let other = Backup::queued("proj-other", "u", "inst-8", "x", "auto");
    backups::insert(c, &other).unwrap();
    let f = BackupFilter {
        project_id: Some("proj-list".into()),
        ..Default::default()
    };
    let page1 = backups::list(c, &f, 2, None).unwrap();
    let page2 = backups::list(c, &f, 2, Some(&page1[1].id)).unwrap();
    let page3 = backups::list(c, &f, 2, Some(&page2[1].id)).unwrap();
    let seen: Vec<String> = page1
        .iter()
        .chain(&page2)
        .chain(&page3)
        .map(|b| b.id.clone())
        .collect();
    ids.reverse();
    assert_eq!(
        seen, ids,
        "newest first, every backup once, no other project"
    );
    assert!(matches!(
        backups::list(c, &f, 2, Some("missing")),
        Err(DbError::NotFound(_))
    ));
}

fn record(c: &mut DbConnection, disk_id: &str, seq: i64) -> String {
    let b = Backup::queued("proj-gc", "u", "inst-gc", &format!("s{seq}"), "auto");
    backups::insert(c, &b).unwrap();
    backups::insert_disk_record(
        c,
        &NewBackupDisk {
            backup_id: b.id.clone(),
            disk_id: disk_id.into(),
            seq,
            virtual_size: 1 << 30,
            chunk_size: 1 << 18,
            root_digest: vec![0; 32],
            root_segment: 1,
            bitmap_name: None,
            full_read: false,
            read_bytes: 0,
            new_bytes: 0,
            stored_bytes: 0,
            created_at: now(),
            full_reason: None,
        },
    )
    .unwrap();
    b.id
}

fn delete(c: &mut DbConnection, backup_id: &str) {
    backups::transition(c, backup_id, BackupStatus::Deleting, None).unwrap();
    backups::transition(c, backup_id, BackupStatus::Deleted, None).unwrap();
}

fn reference_intervals_track_liveness(c: &mut DbConnection) {
    let (s1, s2) = (0x1111_i64, 0x2222_i64);
    segments::insert(c, &Segment::live(s1, "proj-gc", 32 << 20, 100)).unwrap();
    segments::insert(c, &Segment::live(s2, "proj-gc", 32 << 20, 100)).unwrap();
    assert_eq!(
        segments::get(c, s1).unwrap().status,
        ekko::status::SegmentStatus::Live
    );
    // Backup 1 writes into s1; backup 2 stops using s1 and writes s2.
    let b1 = record(c, "disk-gc", 1);
    segments::set_ref_count(c, "disk-gc", 1, s1, 10).unwrap();
    let b2 = record(c, "disk-gc", 2);
    segments::set_ref_count(c, "disk-gc", 2, s1, 0).unwrap();
    segments::set_ref_count(c, "disk-gc", 2, s2, 7).unwrap();
    // Backup 3 changes nothing for either segment: no rows at all.
    let rows_before = segments::refs_of_segment(c, s1).unwrap().len()
        + segments::refs_of_segment(c, s2).unwrap().len();
    let b3 = record(c, "disk-gc", 3);
    let rows_after = segments::refs_of_segment(c, s1).unwrap().len()
        + segments::refs_of_segment(c, s2).unwrap().len();
    assert_eq!(rows_before, rows_after, "rows grow with what changed");
    let r1 = segments::refs_of_segment(c, s1).unwrap();
    assert_eq!((r1[0].from_seq, r1[0].to_seq, r1[0].refs), (1, Some(1), 10));
    assert!(
        segments::is_referenced(c, s1).unwrap(),
        "backup 1 still uses s1"
    );
    delete(c, &b1);
    assert!(
        !segments::is_referenced(c, s1).unwrap(),
        "nothing live uses s1 any more"
    );
    // s2's interval is open (the disk's head): deleting every record keeps it.
    delete(c, &b2);
    delete(c, &b3);
    assert!(
        segments::is_referenced(c, s2).unwrap(),
        "the head's segments stay pinned"
    );
}

fn jobs_end_once(c: &mut DbConnection) {
    let job = jobs::Job::queued(ekko::status::JobKind::Backup, "proj-a");
    let at = job.created_at;
    jobs::insert(c, &job).unwrap();
    assert_eq!(jobs::oldest_active_start(c).unwrap(), Some(at));
    assert_eq!(jobs::start(c, &job.id, "compute-1").unwrap().attempts, 1);
    // A redelivery restarts the attempt instead of running a second copy.
    assert_eq!(jobs::start(c, &job.id, "compute-1").unwrap().attempts, 2);
    assert!(jobs::finish(c, &job.id, ekko::status::JobStatus::Succeeded, None).unwrap());
    assert!(
        !jobs::finish(c, &job.id, ekko::status::JobStatus::Failed, Some("late")).unwrap(),
        "a job ends once"
    );
    let err = jobs::start(c, &job.id, "compute-2").unwrap_err();
    assert!(err.to_string().contains("already succeeded"), "{err}");
    assert_eq!(jobs::oldest_active_start(c).unwrap(), None);
}

/// Issue 17 #8: a long-lived project's history (thousands of compaction
/// redirects, hundreds of damaged records) is not stored with every job
/// (MariaDB's `TEXT` holds 64 KiB): backups and restores of such a
/// project are planned as any other.
#[test]
fn jobs_of_a_long_lived_project_fit_the_catalog_on_mariadb() {
    let Some(t) = mariadb_db() else { return };
    t.db.sync().unwrap();
    let mut conn = t.db.conn().unwrap();
    let c = &mut *conn;
    let project = "proj-old";
    instances::upsert(
        c,
        "inst-old",
        project,
        "compute-1",
        "old",
        &disks(&[("vda", 1 << 30)]),
        instances::MOVE_ALWAYS,
    )
    .unwrap();
    for i in 0..2000i64 {
        segments::insert_redirect(c, 1_000_000 + i, project, 2_000_000 + i).unwrap();
    }
    for i in 0..1000i64 {
        let digest = ekko::chunk::ChunkDigest::of(&i.to_le_bytes());
        segments::mark_bad(c, project, &digest.0, 3_000_000 + i).unwrap();
    }
    let opts = ekko::service::backups::PlanOptions {
        quota: ekko::config::QuotaOptions::default(),
        dedup_heads: 8,
        job_timeout: std::time::Duration::from_secs(3600),
        detached_after: std::time::Duration::from_secs(60),
    };
    let new = ekko::service::backups::NewBackup {
        instance_id: "inst-old".into(),
        user_id: "u".into(),
        name: String::new(),
        description: String::new(),
        mode: "auto".into(),
        metadata: "{}".into(),
        policy_id: None,
    };
    let (_, job, message) =
        ekko::service::backups::plan(c, &opts, &new, &Default::default()).unwrap();
    assert_eq!(message.relocations.len(), 2000);
    assert_eq!(message.bad_records.len(), 1000);
    assert!(serde_json::to_string(&message).unwrap().len() > 64 << 10);
    assert!(job.payload.len() < 1024, "the job keeps only its plan");
}

fn claim(
    c: &mut DbConnection,
    host: &str,
    moved_before: chrono::NaiveDateTime,
) -> instances::Upserted {
    instances::upsert(
        c,
        "inst-claim",
        "proj-claim",
        host,
        "db",
        &disks(&[("vda", 1 << 30)]),
        moved_before,
    )
    .unwrap()
}

/// Review finding 3: a second host's report never moves an instance its
/// host still reports; the claim is recorded and the instance is not
/// backed up until one of them stops (a capture in a moment of silence
/// becomes a contest when the real host reports again).
fn a_host_cannot_take_an_instance_its_host_still_reports(c: &mut DbConnection) {
    use instances::Upserted;
    let recent = now() - chrono::Duration::seconds(30);
    // "Anything seen before a second from now is old": the holder is silent.
    let silent = now() + chrono::Duration::seconds(1);
    assert!(matches!(
        claim(c, "host-a", recent),
        Upserted::Recorded {
            moved_from: None,
            ..
        }
    ));
    assert_eq!(
        claim(c, "host-b", recent),
        Upserted::Contested {
            holder: "host-a".into()
        }
    );
    let i = instances::get(c, "inst-claim").unwrap();
    assert_eq!((i.host.as_str(), i.contender()), ("host-a", Some("host-b")));
    let opts = ekko::service::backups::PlanOptions {
        quota: Default::default(),
        dedup_heads: 4,
        job_timeout: std::time::Duration::from_secs(3600),
        detached_after: std::time::Duration::from_secs(60),
    };
    let new = ekko::service::backups::NewBackup {
        instance_id: "inst-claim".into(),
        user_id: "u".into(),
        name: "n".into(),
        description: String::new(),
        mode: "auto".into(),
        metadata: "{}".into(),
        policy_id: None,
    };
    let err = ekko::service::backups::plan(c, &opts, &new, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("two hosts"), "{err}");
    // The holder keeps reporting; the claim stands while renewed.
    claim(c, "host-a", recent);
    assert_eq!(
        instances::get(c, "inst-claim").unwrap().contender(),
        Some("host-b")
    );
    // The contender stopped long enough ago: the holder's report ends it.
    claim(c, "host-a", silent);
    assert_eq!(instances::get(c, "inst-claim").unwrap().contender(), None);
    // The holder went silent (migrated away, or host down): it moves.
    assert!(matches!(
        claim(c, "host-b", silent),
        Upserted::Recorded { moved_from: Some(ref from), .. } if from == "host-a"
    ));
    // The old holder reports it again: a contest, not a silent move back.
    assert_eq!(
        claim(c, "host-a", recent),
        Upserted::Contested {
            holder: "host-b".into()
        }
    );
    // A row never seen (from before the column) counts as seen now.
    use diesel::prelude::*;
    use ekko::db::schema::instances as i;
    diesel::update(i::table.find("inst-claim"))
        .set((
            i::last_seen_at.eq(None::<chrono::NaiveDateTime>),
            i::contested_by.eq(None::<String>),
        ))
        .execute(c)
        .unwrap();
    assert!(matches!(
        claim(c, "host-a", recent),
        Upserted::Contested { .. }
    ));
    // An operator (or a catalog rebuild) may always move it.
    assert!(matches!(
        claim(c, "host-a", instances::MOVE_ALWAYS),
        Upserted::Recorded {
            moved_from: Some(_),
            ..
        }
    ));
    assert_eq!(instances::get(c, "inst-claim").unwrap().contender(), None);
}

/// Review finding 1: a disk with a backup queued or running is not
/// retired, and a backup built on a head whose disk was retired meanwhile
/// does not commit (its deltas would leave its record uncounted).
fn a_disk_is_not_retired_under_a_backup(c: &mut DbConnection) {
    use diesel::prelude::*;
    use ekko::db::schema::disks as d;
    instances::upsert(
        c,
        "inst-ret",
        "proj-ret",
        "host-r",
        "r",
        &disks(&[("vda", 1 << 30)]),
        instances::MOVE_ALWAYS,
    )
    .unwrap();
    hosts::heartbeat(c, "host-r", "1", 1).unwrap();
    let disk = instances::disks_of(c, "inst-ret").unwrap().remove(0);
    let b = Backup::queued("proj-ret", "u", "inst-ret", "n", "auto");
    backups::insert(c, &b).unwrap();
    let (alive, gone) = (
        now() - chrono::Duration::seconds(60),
        now() + chrono::Duration::seconds(1),
    );
    assert!(
        instances::retire_gone(c, alive, gone).unwrap().is_empty(),
        "its instance's backup is queued"
    );
    backups::transition(c, &b.id, BackupStatus::Running, None).unwrap();
    assert!(
        instances::retire_gone(c, alive, gone).unwrap().is_empty(),
        "running"
    );
    // Retired anyway (an old ekko-retention during an upgrade).
    diesel::update(d::table.find(&disk.id))
        .set(d::retired_at.eq(Some(now())))
        .execute(c)
        .unwrap();
    let dc = |fresh_map| backups::DiskCommit {
        disk_id: disk.id.clone(),
        base_seq: 0,
        virtual_size: 1 << 30,
        chunk_size: 1 << 18,
        root_digest: vec![1; 32],
        root_segment: 1,
        bitmap_name: None,
        full_read: true,
        read_bytes: 0,
        new_bytes: 0,
        stored_bytes: 0,
        new_segments: vec![],
        ref_deltas: vec![],
        fresh_map,
        full_reason: None,
    };
    let err = backups::commit(c, &b.id, "full", "crash", &[dc(false)], None).unwrap_err();
    assert!(
        err.to_string().contains("retired while the backup ran"),
        "{err}"
    );
    // A fresh map stands on its own: it commits, and the disk is back.
    backups::commit(c, &b.id, "full", "crash", &[dc(true)], None).unwrap();
    let disk = instances::disks_of(c, "inst-ret").unwrap().remove(0);
    assert_eq!((disk.head_seq, disk.retired_at), (1, None));
    // Nothing running any more: now it retires.
    assert_eq!(instances::retire_gone(c, alive, gone).unwrap().len(), 1);
}

/// Review finding 2: rows from before `last_seen_at` are seen at the
/// upgrade, not at their creation (no mass retirement, no takeover).
fn rows_from_before_last_seen_count_as_seen(db: &Db) {
    use diesel::prelude::*;
    use ekko::db::schema::{disks as d, instances as i};
    // Back to before 2026-12-04-000006_instance_claims (and any later).
    for _ in 0..10 {
        if db.revert_last().unwrap() == "20261204000006" {
            break;
        }
    }
    assert!(db.check_schema().is_err());
    let mut c = db.conn().unwrap();
    diesel::update(i::table)
        .set(i::last_seen_at.eq(None::<chrono::NaiveDateTime>))
        .execute(&mut c)
        .unwrap();
    diesel::update(d::table)
        .set(d::last_seen_at.eq(None::<chrono::NaiveDateTime>))
        .execute(&mut c)
        .unwrap();
    drop(c);
    let before = now() - chrono::Duration::seconds(5);
    db.sync().unwrap();
    let mut c = db.conn().unwrap();
    let seen: Vec<Option<chrono::NaiveDateTime>> =
        d::table.select(d::last_seen_at).load(&mut c).unwrap();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|s| s.is_some_and(|s| s > before && s < now() + chrono::Duration::seconds(5))),
        "seen at the upgrade (UTC): {seen:?}"
    );
}

fn a_lease_has_one_holder_until_it_runs_out(c: &mut DbConnection) {
    use chrono::Duration;
    use ekko::db::leases;
    let name = "replication:test";
    let minute = Duration::minutes(1);
    assert!(leases::take(c, name, "a", minute).unwrap());
    assert!(!leases::take(c, name, "b", minute).unwrap(), "a has it");
    assert!(leases::take(c, name, "a", minute).unwrap(), "a renews");
    assert_eq!(leases::holder(c, name).unwrap().as_deref(), Some("a"));
    // b's release does not free a's lease; a's does.
    leases::release(c, name, "b").unwrap();
    assert!(!leases::take(c, name, "b", minute).unwrap());
    leases::release(c, name, "a").unwrap();
    assert_eq!(leases::holder(c, name).unwrap(), None);
    assert!(leases::take(c, name, "b", minute).unwrap());
    // A holder that died: its lease runs out and another takes it.
    leases::release(c, name, "b").unwrap();
    assert!(leases::take(c, name, "dead", -minute).unwrap());
    assert_eq!(leases::holder(c, name).unwrap(), None, "run out");
    assert!(leases::take(c, name, "c", minute).unwrap());
    assert!(!leases::take(c, name, "dead", minute).unwrap());
}

/// A catalog rebuild's mark (empty catalog): a second rebuild takes over a
/// mark whose rebuild committed nothing, and the first then no longer
/// holds it (its commits stop) nor can clear it.
fn a_rebuild_mark_has_one_holder(c: &mut DbConnection) {
    use ekko::db::catalog_rebuilds as rebuilds;
    rebuilds::begin(c, "primary", "a").unwrap();
    assert!(rebuilds::holds(c, "a").unwrap());
    assert!(rebuilds::ensure_none(c).is_err());
    rebuilds::begin(c, "replica", "b").unwrap();
    assert!(!rebuilds::holds(c, "a").unwrap(), "taken over");
    assert!(rebuilds::holds(c, "b").unwrap());
    rebuilds::finish(c, "a").unwrap();
    let left = rebuilds::unfinished(c).unwrap().unwrap();
    assert_eq!(
        (left.source.as_str(), left.holder.as_str()),
        ("replica", "b")
    );
    assert!(rebuilds::interrupted(&left).contains("--from-replica"));
    rebuilds::finish(c, "b").unwrap();
    assert!(rebuilds::unfinished(c).unwrap().is_none());
    rebuilds::ensure_none(c).unwrap();
}

/// Once the catalog records backups, no rebuild starts.
fn a_rebuild_needs_an_empty_catalog(c: &mut DbConnection) {
    use ekko::db::catalog_rebuilds as rebuilds;
    let err = rebuilds::begin(c, "primary", "late").unwrap_err();
    assert!(err.to_string().contains("already records backups"), "{err}");
    assert!(rebuilds::unfinished(c).unwrap().is_none());
}
