//! The conductor's housekeeping on the real MariaDB (review of issues 16
//! and 17, findings 6 and 10): stalled jobs are failed and due policies
//! started on the conductor's own tick, with no status message in sight;
//! and no job is failed as stalled while the conductor is behind the
//! status queue (its progress may be waiting there).

use std::time::{Duration, Instant};

use ekko::daemon::conductor::{Housekeeping, Retries};
use ekko::daemon::intake::CatchUp;
use ekko::db::backups::{self, BackupFilter};
use ekko::db::instances::{self, DiskReport};
use ekko::db::jobs;
use ekko::db::policies::{self, Policy};
use ekko::status::JobStatus;

use crate::helpers::mariadb_db;

/// A conductor on the in-process bus and the catalog at `db_url`.
async fn conductor(dir: &std::path::Path, db_url: &str, extra: &str) -> ekko::Ekko {
    let conf = dir.join("conductor.conf");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\ntransport_url = memory://\nstate_path = {}\n[database]\nconnection = {db_url}\n{extra}",
            dir.join("state").display()
        ),
    )
    .unwrap();
    let config = ekko::config::EkkoConfig::load(&[conf], std::iter::empty()).unwrap();
    ekko::Ekko::connect(config, ekko::ekko::Catalog::Required)
        .await
        .unwrap()
}

fn disk() -> Vec<DiskReport> {
    vec![DiskReport {
        device: "vda".into(),
        node_name: "drive0".into(),
        virtual_size: 1 << 30,
    }]
}

/// A backup job of a new instance on `host`, started there; its id.
async fn running_job(ekko: &ekko::Ekko, instance: &str) -> String {
    let opts = ekko::service::backups::PlanOptions::of(ekko);
    let new = ekko::service::backups::NewBackup {
        instance_id: instance.into(),
        user_id: "u".into(),
        name: "b".into(),
        description: String::new(),
        mode: "auto".into(),
        metadata: "{}".into(),
        policy_id: None,
    };
    let instance = instance.to_string();
    ekko.db()
        .unwrap()
        .run(move |c| {
            instances::upsert(
                c,
                &instance,
                "proj",
                "host-a",
                "vm",
                &disk(),
                instances::MOVE_ALWAYS,
            )?;
            let (_, job, _) = ekko::service::backups::plan(c, &opts, &new, &Default::default())?;
            ekko::service::jobs::job_started(
                c,
                &ekko::wire::JobStarted {
                    job_id: job.id.clone(),
                    host: "host-a".into(),
                    attempt: 1,
                },
            )?;
            Ok(job.id)
        })
        .await
        .unwrap()
}

/// The job's host last reported progress an hour ago.
async fn stall(ekko: &ekko::Ekko, job_id: &str) {
    use diesel::prelude::*;
    use ekko::db::schema::jobs as j;
    let id = job_id.to_string();
    ekko.db()
        .unwrap()
        .run(move |c| {
            diesel::update(j::table.find(&id))
                .set(
                    j::heartbeat_at.eq(chrono::Utc::now().naive_utc() - chrono::Duration::hours(1)),
                )
                .execute(c)?;
            Ok(())
        })
        .await
        .unwrap();
}

async fn status_of(ekko: &ekko::Ekko, job_id: &str) -> JobStatus {
    let id = job_id.to_string();
    ekko.db()
        .unwrap()
        .run(move |c| jobs::get(c, &id))
        .await
        .unwrap()
        .status
}

/// With no status message at all (every host down, or none yet), the
/// conductor still fails a job that stopped reporting and starts a policy
/// that fell due, on its own tick. Before, the loop waited for a message
/// once it held a slot, and housekeeping never ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_runs_with_an_empty_status_queue() {
    let Some(t) = mariadb_db() else { return };
    t.db.sync().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ekko = conductor(dir.path(), &t.url, "[backup]\njob_stall_timeout = 10\n").await;
    let job = running_job(&ekko, "inst-stalled").await;
    // A policy on another instance, due tomorrow.
    let mut conn = t.db.conn().unwrap();
    instances::upsert(
        &mut conn,
        "inst-policy",
        "proj",
        "host-a",
        "vm",
        &disk(),
        instances::MOVE_ALWAYS,
    )
    .unwrap();
    let mut policy = Policy::new("proj", "hourly");
    policy.schedule = Some("0 * * * *".into());
    let tomorrow = chrono::Utc::now().naive_utc() + chrono::Duration::days(1);
    policy.next_run_at = Some(tomorrow);
    policies::insert(&mut conn, &policy).unwrap();
    policies::attach(&mut conn, &policy.id, "inst-policy").unwrap();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(ekko::daemon::run_conductor(ekko.clone(), async {
        let _ = stopped.await;
    }));
    // The conductor is in its loop, its status queue empty; only then does
    // the job stall and the policy fall due.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(status_of(&ekko, &job).await, JobStatus::Running);
    stall(&ekko, &job).await;
    let due = chrono::Utc::now().naive_utc() - chrono::Duration::minutes(1);
    assert!(policies::set_next_run(&mut conn, &policy.id, Some(tomorrow), Some(due)).unwrap());

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reaped = status_of(&ekko, &job).await == JobStatus::Failed;
        let started = backups::list(&mut conn, &BackupFilter::default(), 100, None)
            .unwrap()
            .iter()
            .any(|b| b.policy_id.as_deref() == Some(policy.id.as_str()));
        if reaped && started {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no housekeeping without messages: stalled job reaped {reaped}, due policy started {started}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

/// While the conductor has had messages queued for it for more than half
/// the stall timeout, a job whose progress stopped reaching the catalog is
/// not failed (its progress may be in the queue); once the conductor has
/// caught up it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_is_reaped_while_the_conductor_is_behind() {
    let Some(t) = mariadb_db() else { return };
    t.db.sync().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ekko = conductor(dir.path(), &t.url, "").await;
    let job = running_job(&ekko, "inst-behind").await;
    stall(&ekko, &job).await;
    let stall_timeout = Duration::from_secs(2);
    // Behind from the start (as a conductor that starts behind a backlog).
    let catch_up = CatchUp::default();
    let retries = Retries::default();
    let mut housekeeping = Housekeeping::default();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(catch_up.behind() > stall_timeout / 2);
    housekeeping
        .tick(&ekko, stall_timeout, &catch_up, &retries)
        .await;
    assert_eq!(
        status_of(&ekko, &job).await,
        JobStatus::Running,
        "reaped while the conductor was behind"
    );
    // Caught up: the intake waits for a message.
    catch_up.waiting();
    housekeeping
        .tick(&ekko, stall_timeout, &catch_up, &retries)
        .await;
    assert_eq!(status_of(&ekko, &job).await, JobStatus::Failed);
}
