//! Retention and garbage collection on the real MariaDB and Swift, with real
//! backups of a qemu-storage-daemon disk: expired backups disappear, their
//! space is reclaimed, and every backup that should exist restores bit-exact.

use ekko::backup::restore::TargetFormat;
use ekko::db::backups::{self, BackupStatus};
use ekko::db::policies::{self, Policy};
use ekko::db::segments;
use ekko::service::local::{backup_instance, restore_backup, BackupRequest};

use crate::helpers::{keystone_section, mariadb_db, service_env};
use crate::qsd::{identical, Qsd};

/// A change of the protection flag alone.
fn protected(on: bool) -> backups::DetailsUpdate {
    backups::DetailsUpdate {
        protected: Some(on),
        ..Default::default()
    }
}

const MIB: u64 = 1 << 20;

/// An Ekko on the real MariaDB and Swift (its own container prefix) with
/// a qemu-storage-daemon instance of `MIB`-sized disk `disk_mib`.
pub struct Setup {
    pub ekko: ekko::Ekko,
    pub dir: tempfile::TempDir,
    pub qsd: Qsd,
    pub req: BackupRequest,
    pub container: String,
    pub db: ekko::db::Db,
    /// The configuration file, for child processes.
    pub conf: std::path::PathBuf,
    _t: crate::helpers::TestDb,
}

/// Time passes for the claims and leases of killed retention passes: they
/// run out.
pub async fn expire_claims(db: &ekko::db::Db) {
    db.run(|c| {
        use diesel::prelude::*;
        use ekko::db::schema::{leases as l, segments as s};
        let past = chrono::Utc::now().naive_utc() - chrono::Duration::minutes(1);
        diesel::update(s::table.filter(s::status.eq("deleting")))
            .set(s::claim_until.eq(past))
            .execute(c)?;
        diesel::update(l::table)
            .set(l::expires_at.eq(past))
            .execute(c)?;
        Ok(())
    })
    .await
    .unwrap();
}

/// `extra` is appended to ekko.conf (options of `[retention]` and
/// `[backup]` go in those sections: name them).
pub async fn setup(project: &str, disk_mib: u64, extra: &str) -> Option<Setup> {
    let keystone = keystone_section()?;
    service_env("EKKO_SWIFT_URL")?;
    let t = mariadb_db()?;
    t.db.sync().unwrap();
    ekko::cli::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let conf = dir.path().join("ekko.conf");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nstate_path = {}\n[database]\nconnection = {}\n[storage]\nbackend = swift\n\
             [swift]\ncontainer_prefix = ekko-ret-{tag}-\n{keystone}\n{extra}\n",
            dir.path().join("state").display(),
            t.url
        ),
    )
    .unwrap();
    let config =
        ekko::config::EkkoConfig::load(std::slice::from_ref(&conf), std::iter::empty()).unwrap();
    let ekko = ekko::Ekko::connect(config, ekko::ekko::Catalog::Required)
        .await
        .unwrap();
    let qdir = dir.path().join("qsd");
    std::fs::create_dir_all(&qdir).unwrap();
    let qsd = Qsd::start(&qdir, &[disk_mib * MIB]);
    let req = BackupRequest {
        qmp_socket: qsd.qmp_socket.clone(),
        instance_id: format!("inst-{project}"),
        project_id: project.into(),
        name: String::new(),
        full: false,
        agent_socket: None,
        progress: None,
    };
    let db = ekko.db().unwrap().clone();
    Some(Setup {
        container: format!("ekko-ret-{tag}-{project}"),
        ekko,
        dir,
        qsd,
        req,
        db,
        conf,
        _t: t,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_expires_collects_and_keeps_every_kept_backup_restorable() {
    // Compaction and scrub have tests of their own (compaction.rs).
    let Some(Setup {
        ekko,
        dir,
        qsd,
        req,
        container,
        db,
        _t: _database,
        ..
    }) = setup(
        "proj-ret",
        32,
        "[retention]\ngc_grace_period = 0\ncompaction_threshold = 0\nscrub_percentage = 0\n\
         [backup]\njob_timeout = 0\njob_stall_timeout = 0\nsegment_size = 1M",
    )
    .await
    else {
        return;
    };
    // Five backups, each after rewriting a different quarter of the disk,
    // so old backups hold data no later one shares.
    let mut ids: Vec<String> = Vec::new();
    let mut snaps = Vec::new();
    for i in 0..5u64 {
        let fill: Vec<u8> = (0..6 * MIB)
            .map(|n| (n.wrapping_mul(2654435761).wrapping_add(i * 77) >> 13) as u8)
            .collect();
        qsd.write(0, (i % 4) * 8 * MIB, &fill);
        let out = backup_instance(&ekko, &req).await.unwrap();
        let snap = dir.path().join(format!("snap-{i}.raw"));
        qsd.snapshot_to(0, &snap);
        ids.push(out.backup.id.clone());
        snaps.push(snap);
    }
    let mut policy = Policy::new("proj-ret", "keep-two");
    policy.keep_last = Some(2);
    let (p2, protect, inst) = (policy.clone(), ids[1].clone(), req.instance_id.clone());
    db.run(move |c| {
        policies::insert(c, &p2)?;
        policies::attach(c, &p2.id, &inst)?;
        backups::update_details(c, &protect, &protected(true)).map(|_| ())
    })
    .await
    .unwrap();

    // Dry run: the two newest and the protected one stay, with reasons.
    let plan = ekko::retention::plan_policy(&ekko, &policy.id)
        .await
        .unwrap();
    assert_eq!(plan.len(), 1);
    let verdict = |id: &str| plan[0].backups.iter().find(|d| d.id == id).unwrap().clone();
    assert!(verdict(&ids[4]).keep && verdict(&ids[3]).keep);
    assert!(verdict(&ids[1]).keep);
    assert_eq!(verdict(&ids[1]).reasons, vec!["protected"]);
    assert!(!verdict(&ids[0]).keep && !verdict(&ids[2]).keep);
    let dry = ekko::retention::run_pass(&ekko, true).await.unwrap();
    assert_eq!(dry.backups_expired, 2);
    assert_eq!(dry.segments_deleted, 0);
    let before = db.run(segments::totals).await.unwrap();

    // Orphans: a segment and a manifest the catalog never knew (a backup
    // whose process died before committing) are swept; objects Ekko does
    // not write are left alone.
    for name in [
        "segments/00000000deadbeef",
        "manifests/never-committed.json",
        "notes/operator.txt",
    ] {
        ekko.store
            .put(&container, name, bytes::Bytes::from_static(b"orphan"))
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    // Two retention workers at once: two backups expire (once), their own
    // data is reclaimed (each segment once).
    let config2 = ekko.config.as_ref().clone();
    let ekko2 = ekko::Ekko::connect(config2, ekko::ekko::Catalog::Required)
        .await
        .unwrap();
    let (r1, r2) = tokio::join!(
        ekko::retention::run_pass(&ekko, false),
        ekko::retention::run_pass(&ekko2, false)
    );
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert_eq!(r1.backups_expired + r2.backups_expired, 2, "{r1:?} {r2:?}");
    let deleted = r1.segments_deleted + r2.segments_deleted;
    assert!(deleted > 0, "{r1:?} {r2:?}");
    assert!(r1.bytes_reclaimed + r2.bytes_reclaimed > 0);
    let report = r2.clone();
    for gone in [&ids[0], &ids[2]] {
        let id = gone.clone();
        let b = db.run(move |c| backups::get(c, &id)).await.unwrap();
        assert_eq!(b.status, BackupStatus::Deleted);
    }
    let live_before: i64 = before
        .iter()
        .filter(|r| r.0 == ekko::status::SegmentStatus::Live)
        .map(|r| r.1)
        .sum();
    assert!(report.live_segments < live_before, "{before:?} {report:?}");
    // Every kept backup restores bit-exact.
    for i in [1usize, 3, 4] {
        let out = dir.path().join(format!("restored-{i}.raw"));
        restore_backup(&ekko, &ids[i], None, &out, TargetFormat::Raw, None)
            .await
            .unwrap();
        assert!(identical(&out, &snaps[i]), "backup {i} after GC");
        std::fs::remove_file(&out).unwrap();
    }
    // The two planted orphans go; so may the manifest of a backup the other
    // worker expired between its UPDATE and its own manifest delete (the
    // sweep sees a manifest of a deleted backup): both are correct.
    let orphans = r1.orphans_deleted + r2.orphans_deleted;
    assert!((2..=4).contains(&orphans), "{r1:?} {r2:?}");
    for planted in [
        "segments/00000000deadbeef",
        "manifests/never-committed.json",
    ] {
        assert!(
            ekko.store.head(&container, planted).await.is_err(),
            "{planted}"
        );
    }
    assert!(ekko
        .store
        .head(&container, "notes/operator.txt")
        .await
        .is_ok());
    for (i, id) in ids.iter().enumerate() {
        let kept = [1usize, 3, 4].contains(&i);
        let present = ekko
            .store
            .head(&container, &ekko::manifest::object_name(id))
            .await
            .is_ok();
        assert_eq!(present, kept, "manifest of backup {i}");
    }
    // The store holds exactly the catalog's segments: nothing unreferenced
    // is left beyond the grace period (0 here), nothing referenced is gone.
    let mut stored: Vec<String> = ekko
        .store
        .list(&container, "segments/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    stored.sort();
    let mut known: Vec<String> = db
        .run(|c| {
            use diesel::prelude::*;
            use ekko::db::schema::segments as s;
            Ok(s::table.select(s::id).load::<i64>(c)?)
        })
        .await
        .unwrap()
        .into_iter()
        .map(|id| ekko::backup::segment_object(id as u64))
        .collect();
    known.sort();
    assert_eq!(stored, known);
    let unreferenced = db
        .run(|c| segments::unreferenced(c, chrono::Utc::now().naive_utc(), 10))
        .await
        .unwrap();
    assert!(unreferenced.is_empty(), "{unreferenced:?}");
    // A second pass finds nothing more to do.
    let again = ekko::retention::run_pass(&ekko, false).await.unwrap();
    assert_eq!((again.backups_expired, again.segments_deleted), (0, 0));

    // kill -9 of a retention worker between claiming segments and deleting
    // them: a live pass leaves its claims alone; once a claim runs out,
    // the next pass finishes the deletion. Nothing referenced is touched.
    let unprotect = ids[1].clone();
    db.run(move |c| backups::update_details(c, &unprotect, &protected(false)).map(|_| ()))
        .await
        .unwrap();
    ekko::service::backups::delete_backup(&ekko, &ids[1])
        .await
        .unwrap();
    let claimed = db
        .run(|c| {
            let mut claimed = Vec::new();
            for id in segments::unreferenced(c, chrono::Utc::now().naive_utc(), 100)? {
                segments::condemn(c, id)?;
                if segments::claim_for_deletion(c, id, "crashed-worker")? {
                    claimed.push(id);
                }
            }
            Ok(claimed)
        })
        .await
        .unwrap();
    assert!(!claimed.is_empty(), "backup 1 held segments of its own");
    let held = ekko::retention::run_pass(&ekko, false).await.unwrap();
    assert_eq!(
        held.segments_deleted, 0,
        "claims of a running pass are left alone"
    );
    let object = ekko::backup::segment_object(claimed[0] as u64);
    assert!(ekko.store.head(&container, &object).await.is_ok());
    expire_claims(&db).await;
    let resumed = ekko::retention::run_pass(&ekko, false).await.unwrap();
    assert_eq!(resumed.segments_deleted, claimed.len(), "{resumed:?}");
    assert!(ekko.store.head(&container, &object).await.is_err());
    for i in [3usize, 4] {
        let out = dir.path().join(format!("after-crash-{i}.raw"));
        restore_backup(&ekko, &ids[i], None, &out, TargetFormat::Raw, None)
            .await
            .unwrap();
        assert!(identical(&out, &snaps[i]), "backup {i} after a crashed GC");
        std::fs::remove_file(&out).unwrap();
    }

    // Backups go on: an incremental on the head, restorable.
    qsd.write(0, 30 * MIB, &vec![0xee; MIB as usize]);
    let out = backup_instance(&ekko, &req).await.unwrap();
    assert_eq!(out.backup.kind.as_deref(), Some("incremental"));
    let snap = dir.path().join("snap-last.raw");
    qsd.snapshot_to(0, &snap);
    let restored = dir.path().join("restored-last.raw");
    restore_backup(
        &ekko,
        &out.backup.id,
        None,
        &restored,
        TargetFormat::Raw,
        None,
    )
    .await
    .unwrap();
    assert!(identical(&restored, &snap));

    // GC against a committing backup, step by step: a condemned segment
    // that a commit reuses becomes live and cannot be claimed; one claimed
    // for deletion cannot be reused (the backup fails and is retried); a
    // referenced segment condemned by mistake is never claimed.
    let (seg, project) = db
        .run(|c| {
            use diesel::prelude::*;
            use ekko::db::schema::segments as s;
            Ok(s::table
                .filter(s::status.eq("live"))
                .select((s::id, s::project_id))
                .first::<(i64, String)>(c)?)
        })
        .await
        .unwrap();
    let p = project.clone();
    db.run(move |c| {
        assert!(segments::condemn(c, seg)?);
        segments::reuse(c, seg, &p)?;
        assert!(
            !segments::claim_for_deletion(c, seg, "test")?,
            "reused: live again"
        );
        assert!(segments::condemn(c, seg)?);
        assert!(
            !segments::claim_for_deletion(c, seg, "test")?,
            "still referenced: never claimed"
        );
        assert_eq!(
            segments::get(c, seg)?.status,
            ekko::status::SegmentStatus::Live
        );
        Ok(())
    })
    .await
    .unwrap();
}

/// Issue 17 #4: a disk its live host stops reporting (instance deleted) is
/// retired after `[retention] retire_after`: its deleted head no longer
/// pins its data, which retention reclaims; if the disk comes back, its
/// next backup starts afresh (full read) and restores bit-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_of_deleted_instances_are_retired_and_their_data_reclaimed() {
    let Some(x) = setup(
        "proj-retire",
        8,
        "[retention]\ngc_grace_period = 0\nretire_after = 0\nscrub_percentage = 0\n\
         [backup]\njob_timeout = 0\njob_stall_timeout = 0\nheartbeat_interval = 0",
    )
    .await
    else {
        return;
    };
    x.qsd.write(0, 0, &vec![0x42; 4 * MIB as usize]);
    let b1 = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
    ekko::service::backups::delete_backup(&x.ekko, &b1.id)
        .await
        .unwrap();
    let segments_in_store = |x: &Setup| {
        let (store, container) = (x.ekko.store.clone(), x.container.clone());
        async move { store.list(&container, "segments/").await.unwrap().len() }
    };
    // The deleted head still pins its data while the disk is in service.
    ekko::retention::run_pass(&x.ekko, false).await.unwrap();
    assert!(segments_in_store(&x).await > 0);

    // The host keeps reporting (heartbeats) but no longer this instance.
    let host = x.ekko.config.default.host.clone();
    x.db.run(move |c| ekko::db::hosts::heartbeat(c, &host, "1", 1))
        .await
        .unwrap();
    let first = ekko::retention::run_pass(&x.ekko, false).await.unwrap();
    assert_eq!(first.disks_retired, 1, "{first:?}");
    ekko::retention::run_pass(&x.ekko, false).await.unwrap();
    assert_eq!(
        segments_in_store(&x).await,
        0,
        "the retired disk's data is reclaimed"
    );
    let id = x.req.instance_id.clone();
    let (disk, instance) =
        x.db.run(move |c| {
            Ok((
                ekko::db::instances::disks_of(c, &id)?.remove(0),
                ekko::db::instances::get(c, &id)?,
            ))
        })
        .await
        .unwrap();
    assert!(disk.retired_at.is_some() && disk.bitmap_name.is_none());
    assert_eq!(instance.status, ekko::status::InstanceStatus::Gone);

    // It comes back: backed up afresh, complete.
    x.qsd.write(0, MIB, &vec![0x43; MIB as usize]);
    let b2 = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
    assert_eq!(b2.kind.as_deref(), Some("full"));
    let snap = x.dir.path().join("back.raw");
    x.qsd.snapshot_to(0, &snap);
    let out = x.dir.path().join("back-restored.raw");
    restore_backup(&x.ekko, &b2.id, None, &out, TargetFormat::Raw, None)
        .await
        .unwrap();
    assert!(identical(&out, &snap));
    let id = x.req.instance_id.clone();
    let disk =
        x.db.run(move |c| Ok(ekko::db::instances::disks_of(c, &id)?.remove(0)))
            .await
            .unwrap();
    assert!(disk.retired_at.is_none(), "in service again");
}

/// An object store whose clock is an hour behind the catalog's.
struct BehindClock(std::sync::Arc<dyn ekko::store::ObjectStore>);

const BEHIND: chrono::Duration = chrono::Duration::hours(1);

#[async_trait::async_trait]
impl ekko::store::ObjectStore for BehindClock {
    async fn put(&self, c: &str, n: &str, b: bytes::Bytes) -> ekko::store::StoreResult<()> {
        self.0.put(c, n, b).await
    }
    async fn put_stream(
        &self,
        c: &str,
        n: &str,
        b: ekko::store::ByteStream,
    ) -> ekko::store::StoreResult<u64> {
        self.0.put_stream(c, n, b).await
    }
    async fn get(&self, c: &str, n: &str) -> ekko::store::StoreResult<bytes::Bytes> {
        self.0.get(c, n).await
    }
    async fn get_range(
        &self,
        c: &str,
        n: &str,
        o: u64,
        l: u64,
    ) -> ekko::store::StoreResult<bytes::Bytes> {
        self.0.get_range(c, n, o, l).await
    }
    async fn get_stream(
        &self,
        c: &str,
        n: &str,
    ) -> ekko::store::StoreResult<ekko::store::ByteStream> {
        self.0.get_stream(c, n).await
    }
    async fn head(&self, c: &str, n: &str) -> ekko::store::StoreResult<ekko::store::ObjectMeta> {
        let mut m = self.0.head(c, n).await?;
        m.last_modified -= BEHIND;
        Ok(m)
    }
    async fn list(
        &self,
        c: &str,
        p: &str,
    ) -> ekko::store::StoreResult<Vec<ekko::store::ObjectMeta>> {
        let mut all = self.0.list(c, p).await?;
        for m in &mut all {
            m.last_modified -= BEHIND;
        }
        Ok(all)
    }
    async fn delete(&self, c: &str, n: &str) -> ekko::store::StoreResult<()> {
        self.0.delete(c, n).await
    }
    async fn containers(&self, p: &str) -> ekko::store::StoreResult<Vec<String>> {
        self.0.containers(p).await
    }
}

/// Issue 17 #3: the orphan sweep measures an object's age on the store's
/// clock: a store an hour behind the catalog does not make a running
/// job's new segments look old enough to sweep, and the commit checks they
/// are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orphan_sweep_spares_a_running_jobs_segments_whatever_the_clocks() {
    use ekko::hypervisor::qmp::{QmpHypervisor, QmpInstance};
    use ekko::hypervisor::{Hypervisor, LocalInstance};
    let Some(mut x) = setup("proj-clock", 8, "").await else {
        return;
    };
    x.qsd.write(0, 0, &vec![0x5a; 2 * MIB as usize]);
    // A job planned and run, not yet committed (its outcome on the bus).
    let me = x.ekko.config.default.host.clone();
    let inst = LocalInstance {
        id: x.req.instance_id.clone(),
        project_id: "proj-clock".into(),
        name: "c".into(),
    };
    let hv = QmpHypervisor::single(QmpInstance {
        instance: inst.clone(),
        qmp_socket: x.req.qmp_socket.clone(),
        agent_socket: None,
    });
    let reports: Vec<ekko::db::instances::DiskReport> = hv
        .disks(&inst)
        .await
        .unwrap()
        .iter()
        .map(|d| ekko::db::instances::DiskReport {
            device: d.device.clone(),
            node_name: d.node_name.clone(),
            virtual_size: d.virtual_size as i64,
        })
        .collect();
    let opts = ekko::service::backups::PlanOptions::of(&x.ekko);
    let new = ekko::service::backups::NewBackup {
        instance_id: inst.id.clone(),
        user_id: "u".into(),
        name: String::new(),
        description: String::new(),
        mode: "auto".into(),
        metadata: "{}".into(),
        policy_id: None,
    };
    let (id, h) = (inst.id.clone(), me.clone());
    let (backup, _job, message) =
        x.db.run(move |c| {
            ekko::db::instances::upsert(
                c,
                &id,
                "proj-clock",
                &h,
                "c",
                &reports,
                ekko::db::instances::MOVE_ALWAYS,
            )?;
            ekko::service::backups::plan(c, &opts, &new, &Default::default())
        })
        .await
        .unwrap();
    let executed = ekko::execution::back_up(&x.ekko, &hv, &inst, &message, &backup.id, None)
        .await
        .unwrap();
    let _ = executed.snapshot.commit().await;

    // The sweep runs against a store an hour behind.
    x.ekko.store = std::sync::Arc::new(BehindClock(x.ekko.store.clone()));
    ekko::retention::sweep_orphans(&x.ekko, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    for d in &executed.finished.disks {
        for (id, _, _) in &d.new_segments {
            x.ekko
                .store
                .head(&x.container, &ekko::backup::segment_object(*id as u64))
                .await
                .expect("a running job's segment survives the sweep");
        }
    }
    // The outcome arrives: committed, and it restores.
    let outcome =
        ekko::queue::Envelope::new(ekko::wire::BACKUP_FINISHED, &executed.finished).unwrap();
    ekko::service::reports::record(&x.ekko, &outcome, &ekko::service::reports::Sender::Trusted)
        .await
        .unwrap();
    let snap = x.dir.path().join("clock.raw");
    x.qsd.snapshot_to(0, &snap);
    let out = x.dir.path().join("clock-restored.raw");
    restore_backup(&x.ekko, &backup.id, None, &out, TargetFormat::Raw, None)
        .await
        .unwrap();
    assert!(identical(&out, &snap));
}
