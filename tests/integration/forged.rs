//! A compute host is not trusted (issue 17, docs/design.md §8): reports a
//! hostile or buggy host can send — for another host's job, another
//! project's disk, with numbers out of range, for a job that succeeded,
//! moving another host's instance, oversized or unreadable — are refused
//! and change nothing in the catalog or the store; the conductor keeps
//! recording the others (heartbeats flow) while it dead-letters them.
//! MariaDB (its column limits) and Swift, real backups of a
//! qemu-storage-daemon disk.

use std::time::{Duration, Instant};

use ekko::db::{backups, instances, jobs};
use ekko::queue::Envelope;
use ekko::service::reports::{record, Sender};
use ekko::service::ServiceError;
use ekko::status::{BackupStatus, JobStatus};
use ekko::wire::{self, BackupFinished, DiskCommit};

use crate::retention::{setup, Setup};

const MIB: u64 = 1 << 20;

fn env<T: serde::Serialize>(kind: &str, body: &T) -> Envelope {
    Envelope::new(kind, body).unwrap()
}

fn host(h: &str) -> Sender {
    Sender::Host(h.to_string())
}

async fn refused(x: &Setup, kind: &str, body: serde_json::Value, sender: &Sender, what: &str) {
    let out = record(&x.ekko, &env(kind, &body), sender).await;
    assert!(
        matches!(out, Err(ServiceError::Refused(_))),
        "{what}: {out:?}"
    );
}

/// A victim: an instance of another project on host-a with a running
/// backup job (planned, started by host-a).
async fn victim(x: &Setup) -> (String, String, String) {
    let disk = vec![instances::DiskReport {
        device: "vda".into(),
        node_name: "drive0".into(),
        virtual_size: (8 * MIB) as i64,
    }];
    let opts = ekko::service::backups::PlanOptions::of(&x.ekko);
    let new = ekko::service::backups::NewBackup {
        instance_id: "inst-victim".into(),
        user_id: "victim".into(),
        name: "v".into(),
        description: String::new(),
        mode: "auto".into(),
        metadata: "{}".into(),
        policy_id: None,
    };
    x.db.run(move |c| {
        instances::upsert(
            c,
            "inst-victim",
            "proj-victim",
            "host-a",
            "v",
            &disk,
            instances::MOVE_ALWAYS,
        )?;
        let (b, job, _) = ekko::service::backups::plan(c, &opts, &new, &Default::default())?;
        ekko::service::jobs::job_started(
            c,
            &wire::JobStarted {
                job_id: job.id.clone(),
                host: "host-a".into(),
                attempt: 1,
            },
        )?;
        let disk = instances::disks_of(c, "inst-victim")?.remove(0);
        Ok((b.id, job.id, disk.id))
    })
    .await
    .unwrap()
}

fn commit(disk_id: &str, base_seq: i64) -> DiskCommit {
    DiskCommit {
        disk_id: disk_id.into(),
        base_seq,
        virtual_size: (8 * MIB) as i64,
        chunk_size: 1 << 18,
        root_digest: vec![0xab; 32],
        root_segment: 0x7fff_0000,
        bitmap_name: None,
        full_read: true,
        read_bytes: 0,
        new_bytes: 0,
        stored_bytes: 0,
        new_segments: vec![],
        ref_deltas: vec![],
        fresh_map: true,
        full_reason: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_reports_are_refused_and_change_nothing() {
    let Some(x) = setup("proj-forge", 8, "").await else {
        return;
    };
    // An honest, committed backup of this project (its host is ours).
    x.qsd.write(0, 0, &vec![0x11; MIB as usize]);
    let mine = ekko::service::local::backup_instance(&x.ekko, &x.req)
        .await
        .unwrap()
        .backup;
    let me = x.ekko.config.default.host.clone();
    let (my_job, my_disk) = {
        let id = mine.id.clone();
        x.db.run(move |c| {
            let job = jobs::active_for(c, jobs::Subject::Backup(&id))?;
            assert!(job.is_none(), "the honest job ended");
            let rec = backups::disks_of(c, &id)?.remove(0);
            use diesel::prelude::*;
            use ekko::db::schema::jobs as j;
            let job: String = j::table
                .filter(j::backup_id.eq(&id))
                .select(j::id)
                .first(c)?;
            Ok((job, rec.disk_id))
        })
        .await
        .unwrap()
    };
    let manifest = ekko::manifest::object_name(&mine.id);
    let (vb, vjob, vdisk) = victim(&x).await;
    let b = host("host-b");

    // Host b reports on host a's job: start, progress, failure, outcome.
    refused(
        &x,
        wire::JOB_STARTED,
        serde_json::json!({"job_id": vjob, "host": "host-b", "attempt": 1}),
        &b,
        "start of another host's job",
    )
    .await;
    refused(
        &x,
        wire::JOB_STARTED,
        serde_json::json!({"job_id": vjob, "host": "host-a", "attempt": 1}),
        &b,
        "claiming another host",
    )
    .await;
    refused(
        &x,
        wire::JOB_PROGRESS,
        serde_json::json!({"job_id": vjob, "done_bytes": 1, "total_bytes": 2}),
        &b,
        "progress of another host's job",
    )
    .await;
    refused(&x, wire::JOB_FAILED, serde_json::json!({"job_id": vjob, "host": "host-b", "error": "x", "manifest_written": true}), &b, "failing another host's job").await;
    let f = BackupFinished {
        job_id: vjob.clone(),
        backup_id: vb.clone(),
        project_id: "proj-victim".into(),
        host: "host-b".into(),
        kind: "full".into(),
        consistency: "crash".into(),
        disks: vec![commit(&vdisk, 0)],
        checkpoint: None,
    };
    refused(
        &x,
        wire::BACKUP_FINISHED,
        serde_json::to_value(&f).unwrap(),
        &b,
        "committing another host's backup",
    )
    .await;

    // Host a itself, on its own job: another project's disk, a number out
    // of range, a job of another backup.
    let a = host("host-a");
    let mut other_disk = f.clone();
    other_disk.host = "host-a".into();
    other_disk.disks = vec![commit(&my_disk, 1)];
    refused(
        &x,
        wire::BACKUP_FINISHED,
        serde_json::to_value(&other_disk).unwrap(),
        &a,
        "another project's disk",
    )
    .await;
    let mut zero = other_disk.clone();
    zero.disks = vec![DiskCommit {
        chunk_size: 0,
        ..commit(&vdisk, 0)
    }];
    refused(
        &x,
        wire::BACKUP_FINISHED,
        serde_json::to_value(&zero).unwrap(),
        &a,
        "chunk_size 0",
    )
    .await;
    // Sizes its host never reported, bytes it never stored: each would
    // charge the victim project's quota (review finding 9).
    let mut huge = other_disk.clone();
    huge.disks = vec![DiskCommit {
        virtual_size: 1 << 49,
        ..commit(&vdisk, 0)
    }];
    refused(
        &x,
        wire::BACKUP_FINISHED,
        serde_json::to_value(&huge).unwrap(),
        &a,
        "a disk size its host never reported",
    )
    .await;
    let mut inflated = other_disk.clone();
    inflated.disks = vec![DiskCommit {
        read_bytes: (8 * MIB) as i64,
        stored_bytes: (16 * MIB) as i64,
        ..commit(&vdisk, 0)
    }];
    refused(
        &x,
        wire::BACKUP_FINISHED,
        serde_json::to_value(&inflated).unwrap(),
        &a,
        "stored bytes no segment holds",
    )
    .await;
    let mut wrong_backup = other_disk.clone();
    wrong_backup.backup_id = mine.id.clone();
    wrong_backup.disks = vec![commit(&vdisk, 0)];
    refused(
        &x,
        wire::BACKUP_FINISHED,
        serde_json::to_value(&wrong_backup).unwrap(),
        &a,
        "a job of another backup",
    )
    .await;

    // Our own host, on a job that succeeded: a late failure or an empty
    // outcome must not remove the committed backup's manifest.
    let ours = host(&me);
    let late = record(
        &x.ekko,
        &env(wire::JOB_FAILED, &serde_json::json!({"job_id": my_job, "host": me, "error": "late", "manifest_written": true})),
        &ours,
    )
    .await;
    assert!(late.is_ok(), "{late:?}");
    let empty = BackupFinished {
        job_id: my_job.clone(),
        backup_id: mine.id.clone(),
        project_id: "proj-forge".into(),
        host: me.clone(),
        kind: "full".into(),
        consistency: "crash".into(),
        disks: vec![],
        checkpoint: None,
    };
    refused(
        &x,
        wire::BACKUP_FINISHED,
        serde_json::to_value(&empty).unwrap(),
        &ours,
        "an empty outcome of a committed backup",
    )
    .await;

    // Host b takes over host a's instance, or claims to be host a.
    let inventory = serde_json::json!({"host": "host-b", "instances": [{"id": "inst-victim", "project_id": "proj-victim", "name": "v", "disks": [{"device": "vda", "node_name": "drive0", "virtual_size": 8 * MIB}]}]});
    record(&x.ekko, &env(wire::HOST_INVENTORY, &inventory), &b)
        .await
        .unwrap();
    refused(
        &x,
        wire::HEARTBEAT_KIND,
        serde_json::json!({"host": "host-a", "version": "0", "capacity": 1}),
        &b,
        "a heartbeat for another host",
    )
    .await;
    refused(
        &x,
        wire::HOST_INVENTORY,
        serde_json::json!({"host": "host-a", "instances": []}),
        &b,
        "an inventory for another host",
    )
    .await;
    // Oversized entries are refused one by one (the column holds 36).
    let long = serde_json::json!({"host": "host-b", "instances": [
        {"id": "x".repeat(40), "project_id": "p", "name": "n", "disks": []},
        {"id": "inst-b-ok", "project_id": "proj-b", "name": "ok", "disks": [{"device": "vda", "node_name": "n0", "virtual_size": MIB}]}
    ]});
    record(&x.ekko, &env(wire::HOST_INVENTORY, &long), &b)
        .await
        .unwrap();
    let unreadable =
        Envelope::new(wire::BACKUP_FINISHED, &serde_json::json!({"job_id": 7})).unwrap();
    let out = record(&x.ekko, &unreadable, &b).await;
    assert!(matches!(out, Err(ServiceError::BadMessage(_))), "{out:?}");

    // Nothing changed.
    let (victim_backup, victim_job, victim_instance, my_backup, my_head, ok) = {
        let (vb, vjob, my_id, my_disk) =
            (vb.clone(), vjob.clone(), mine.id.clone(), my_disk.clone());
        x.db.run(move |c| {
            let my_instance = mine_instance(c, &my_id)?;
            Ok((
                backups::get(c, &vb)?,
                jobs::get(c, &vjob)?,
                instances::get(c, "inst-victim")?,
                backups::get(c, &my_id)?,
                instances::disks_of(c, &my_instance)?
                    .into_iter()
                    .find(|d| d.id == my_disk)
                    .map(|d| d.head_seq),
                instances::get(c, "inst-b-ok").is_ok(),
            ))
        })
        .await
        .unwrap()
    };
    assert_eq!(victim_backup.status, BackupStatus::Running);
    assert_eq!(victim_job.status, JobStatus::Running);
    assert_eq!(victim_job.host.as_deref(), Some("host-a"));
    assert_eq!(
        victim_instance.host, "host-a",
        "the instance stays on host a"
    );
    assert_eq!(
        victim_instance.contender(),
        Some("host-b"),
        "host b's claim is recorded: the instance is not backed up while both report it"
    );
    assert_eq!(my_backup.status, BackupStatus::Available);
    assert_eq!(my_head, Some(1), "our disk's head did not move");
    assert!(
        ok,
        "the valid entry of an inventory with a bad one is recorded"
    );
    x.ekko
        .store
        .head(&x.container, &manifest)
        .await
        .expect("the committed backup's manifest is still there");
    let restored = x.dir.path().join("mine.raw");
    ekko::service::local::restore_backup(
        &x.ekko,
        &mine.id,
        None,
        &restored,
        ekko::backup::restore::TargetFormat::Raw,
        None,
    )
    .await
    .unwrap();
}

fn mine_instance(c: &mut ekko::db::DbConnection, backup: &str) -> ekko::db::DbResult<String> {
    Ok(backups::get(c, backup)?.instance_id)
}

/// Poison messages do not stall the conductor: an inventory the catalog's
/// columns cannot hold and an outcome of an unknown backup are set aside
/// (dead-lettered, with the reason), while heartbeats keep reaching the
/// catalog and no job is reaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_heartbeats_keep_flowing() {
    let Some(x) = setup("proj-poison", 8, "[backup]\njob_stall_timeout = 10").await else {
        return;
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let conductor = tokio::spawn(ekko::daemon::run_conductor(x.ekko.clone(), async {
        let _ = stopped.await;
    }));
    let topology = x.ekko.topology();
    // Until the conductor declared its queues, nothing is routed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut dead = x
        .ekko
        .queue
        .consume(&topology.dead_letter_queue(), 8)
        .await
        .unwrap();
    let (_, vjob, _) = victim(&x).await;
    let q = x.ekko.queue.clone();
    let publish = |kind: &'static str, body: serde_json::Value| {
        let q = q.clone();
        async move {
            q.publish(
                &wire::report_routing_key(kind),
                &Envelope::new(kind, &body).unwrap(),
            )
            .await
            .unwrap()
        }
    };
    // Poison: a 40-character id (MariaDB would refuse the row: the entry
    // is dropped before), an unknown backup's outcome, garbage.
    publish(wire::HOST_INVENTORY, serde_json::json!({"host": "host-x", "instances": [{"id": "y".repeat(40), "project_id": "p", "name": "n", "disks": []}]})).await;
    publish(wire::BACKUP_FINISHED, serde_json::json!({"job_id": uuid::Uuid::new_v4().to_string(), "backup_id": uuid::Uuid::new_v4().to_string(), "project_id": "p", "host": "host-x", "kind": "full", "consistency": "crash", "disks": []})).await;
    publish(wire::BACKUP_FINISHED, serde_json::json!({"nonsense": true})).await;
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(6) {
        publish(
            wire::HEARTBEAT_KIND,
            serde_json::json!({"host": "host-y", "version": "1", "capacity": 1}),
        )
        .await;
        publish(
            wire::JOB_PROGRESS,
            serde_json::json!({"job_id": vjob, "done_bytes": 1, "total_bytes": 2}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let beat =
            x.db.run(|c| {
                Ok(ekko::db::hosts::list(c)?
                    .into_iter()
                    .find(|h| h.name == "host-y")
                    .map(|h| h.heartbeat_at))
            })
            .await
            .unwrap();
        if let Some(at) = beat {
            let age = (chrono::Utc::now().naive_utc() - at)
                .to_std()
                .unwrap_or_default();
            worst = worst.max(age);
        } else if start.elapsed() > Duration::from_secs(2) {
            panic!("no heartbeat of host-y recorded after 2 s");
        }
    }
    assert!(
        worst < Duration::from_secs(3),
        "a heartbeat waited {worst:?}"
    );
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        let d = tokio::time::timeout(Duration::from_secs(10), dead.next())
            .await
            .expect("two dead letters")
            .unwrap();
        let letter: ekko::daemon::conductor::DeadLetter = d
            .envelope
            .body_as(ekko::daemon::conductor::DEAD_LETTER_KIND)
            .unwrap();
        reasons.push(letter.reason);
        d.ack().await.unwrap();
    }
    assert!(
        reasons.iter().any(|r| r.contains("unreadable")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().filter(|r| r.contains("refused")).count() >= 1,
        "{reasons:?}"
    );
    let (job, reaped) = {
        let v = vjob.clone();
        x.db.run(move |c| {
            Ok((
                jobs::get(c, &v)?,
                instances::get(c, &"y".repeat(40)).is_ok(),
            ))
        })
        .await
        .unwrap()
    };
    assert_eq!(
        job.status,
        JobStatus::Running,
        "the running job kept its progress and was not reaped"
    );
    assert!(!reaped);
    let _ = stop.send(());
    conductor.await.unwrap().unwrap();
}

/// Review finding 5: a restore's start report overtaken by its own
/// outcome (reports are recorded concurrently), or an outcome delivered
/// twice, is not answered with a cancel: the host would delete the
/// restored disk the catalog calls completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_start_report_does_not_cancel_a_completed_restore() {
    let Some(x) = setup("proj-late-start", 8, "").await else {
        return;
    };
    x.qsd.write(0, 0, &vec![0x21; MIB as usize]);
    let b = ekko::service::local::backup_instance(&x.ekko, &x.req)
        .await
        .unwrap()
        .backup;
    let me = x.ekko.config.default.host.clone();
    let topology = x.ekko.topology();
    topology
        .declare_host(x.ekko.queue.as_ref(), &me)
        .await
        .unwrap();
    let mut control = x
        .ekko
        .queue
        .consume(&topology.control_queue(&me), 4)
        .await
        .unwrap();
    let ours = host(&me);
    let beat = serde_json::json!({"host": me, "version": "1", "capacity": 1});
    record(&x.ekko, &env(wire::HEARTBEAT_KIND, &beat), &ours)
        .await
        .unwrap();
    let restore = ekko::service::restores::submit(
        &x.ekko,
        ekko::service::restores::NewRestore {
            backup_id: b.id.clone(),
            user_id: "u".into(),
            device: None,
            host: Some(me.clone()),
            target: ekko::service::restores::NewTarget::File {
                path: x.dir.path().join("late.raw").display().to_string(),
            },
            format: ekko::status::ImageFormat::Raw,
            source: Default::default(),
        },
    )
    .await
    .unwrap();
    let rid = restore.id.clone();
    let job =
        x.db.run(move |c| Ok(jobs::active_for(c, jobs::Subject::Restore(&rid))?.unwrap()))
            .await
            .unwrap();
    let finished = serde_json::json!({"job_id": job.id, "host": me, "bytes_written": MIB});
    let started = serde_json::json!({"job_id": job.id, "host": me, "attempt": 1});
    record(&x.ekko, &env(wire::RESTORE_FINISHED, &finished), &ours)
        .await
        .unwrap();
    record(&x.ekko, &env(wire::JOB_STARTED, &started), &ours)
        .await
        .unwrap();
    record(&x.ekko, &env(wire::RESTORE_FINISHED, &finished), &ours)
        .await
        .unwrap();
    let cancel = tokio::time::timeout(Duration::from_millis(500), control.next()).await;
    assert!(cancel.is_err(), "a cancel was sent for a completed restore");
    let rid = restore.id.clone();
    let r =
        x.db.run(move |c| ekko::db::restores::get(c, &rid))
            .await
            .unwrap();
    assert_eq!(r.status, ekko::status::RestoreStatus::Completed);
}

/// Export reports (issue 20): only the export's own host may say where it
/// listens or that it ended, with an address that is one; a heartbeat
/// cannot list exports without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_export_reports_are_refused_and_change_nothing() {
    use ekko::db::exports::{self, Export};
    let Some(x) = setup("proj-forge-export", 8, "").await else {
        return;
    };
    let e = Export::starting("proj-forge-export", "u", "b-1", "vda", "host-a", 600);
    let row = e.clone();
    x.db.run(move |c| exports::insert(c, &row)).await.unwrap();
    let ready = |host: &str, address: &str| serde_json::json!({"export_id": e.id, "host": host, "address": address, "tls": false});
    let cases = [
        (
            ready("host-b", "127.0.0.1:4000"),
            host("host-b"),
            "another host's export",
        ),
        (
            ready("host-a", "127.0.0.1:4000"),
            host("host-b"),
            "a host speaking as another",
        ),
        (ready("host-a", "127.0.0.1:0"), host("host-a"), "port 0"),
        (
            ready("host-a", "evil/../x:1"),
            host("host-a"),
            "not an address",
        ),
        (ready("host-a", "127.0.0.1"), host("host-a"), "no port"),
    ];
    for (body, sender, what) in cases {
        refused(&x, wire::EXPORT_READY, body, &sender, what).await;
    }
    let ended = serde_json::json!({"export_id": e.id, "host": "host-b", "error": "x"});
    refused(
        &x,
        wire::EXPORT_ENDED,
        ended,
        &host("host-b"),
        "ended by another host",
    )
    .await;
    let listed: Vec<String> = (0..5000).map(|i| format!("e-{i}")).collect();
    let beat =
        serde_json::json!({"host": "host-a", "version": "1", "capacity": 1, "exports": listed});
    refused(
        &x,
        wire::HEARTBEAT_KIND,
        beat,
        &host("host-a"),
        "5000 exports listed",
    )
    .await;
    let id = e.id.clone();
    let now = x.db.run(move |c| exports::get(c, &id)).await.unwrap();
    assert_eq!(now.status, ekko::status::ExportStatus::Starting);
    assert_eq!(now.url, None);

    // Its own host: active at the address it reports, under the export's
    // own name; a second report changes nothing.
    let ok = record(
        &x.ekko,
        &env(wire::EXPORT_READY, &ready("host-a", "192.0.2.7:10809")),
        &host("host-a"),
    )
    .await;
    assert!(ok.is_ok(), "{ok:?}");
    let again = record(
        &x.ekko,
        &env(wire::EXPORT_READY, &ready("host-a", "192.0.2.9:1")),
        &host("host-a"),
    )
    .await;
    assert!(again.is_ok(), "{again:?}");
    let id = e.id.clone();
    let now = x.db.run(move |c| exports::get(c, &id)).await.unwrap();
    assert_eq!(now.status, ekko::status::ExportStatus::Active);
    let url = format!("nbd://192.0.2.7:10809/{}", e.nbd_name);
    assert_eq!(now.url.as_deref(), Some(url.as_str()));
    assert_eq!(e.nbd_name.len(), 64, "a secret, not the id");
}
