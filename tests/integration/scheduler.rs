//! The policy scheduler on the real MariaDB: several conductors racing over
//! the same due policy start each run exactly once, and skip instances
//! whose previous backup is still in flight.

use ekko::db::backups::{self, BackupFilter};
use ekko::db::instances::{self, DiskReport};
use ekko::db::policies::{self, Policy};

use crate::helpers::mariadb_db;

async fn conductor(dir: &std::path::Path, db_url: &str, n: usize) -> ekko::Ekko {
    let conf = dir.join(format!("conductor-{n}.conf"));
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\ntransport_url = memory://\nstate_path = {}\n[database]\nconnection = {db_url}\n",
            dir.join(format!("state-{n}")).display()
        ),
    )
    .unwrap();
    let config = ekko::config::EkkoConfig::load(&[conf], std::iter::empty()).unwrap();
    ekko::Ekko::connect(config, ekko::ekko::Catalog::Required)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_policies_run_exactly_once_across_conductors() {
    let Some(t) = mariadb_db() else { return };
    t.db.sync().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut conn = t.db.conn().unwrap();
    let disk = [DiskReport {
        device: "vda".into(),
        node_name: "vda".into(),
        virtual_size: 1 << 30,
    }];
    let mut policy = Policy::new("proj", "nightly");
    policy.schedule = Some("0 3 * * *".into());
    policy.timezone = "Europe/Paris".into();
    let due_at = chrono::Utc::now().naive_utc() - chrono::Duration::minutes(5);
    policy.next_run_at = Some(due_at);
    policies::insert(&mut conn, &policy).unwrap();
    for i in 0..3 {
        let id = format!("inst-{i}");
        instances::upsert(
            &mut conn,
            &id,
            "proj",
            "compute-1",
            &id,
            &disk,
            instances::MOVE_ALWAYS,
        )
        .unwrap();
        policies::attach(&mut conn, &policy.id, &id).unwrap();
    }
    // An unscheduled policy and a disabled one start nothing.
    let mut idle = Policy::new("proj", "manual");
    idle.next_run_at = Some(due_at);
    policies::insert(&mut conn, &idle).unwrap();
    let mut off = Policy::new("proj", "off");
    off.schedule = Some("* * * * *".into());
    off.enabled = false;
    off.next_run_at = Some(due_at);
    policies::insert(&mut conn, &off).unwrap();

    let a = conductor(dir.path(), &t.url, 1).await;
    let b = conductor(dir.path(), &t.url, 2).await;
    let (ra, rb) = tokio::join!(
        ekko::service::housekeeping::run_due_policies(&a),
        ekko::service::housekeeping::run_due_policies(&b)
    );
    assert_eq!(
        ra.unwrap() + rb.unwrap(),
        3,
        "one backup per instance in all"
    );
    let all = |conn: &mut ekko::db::DbConnection| {
        backups::list(conn, &BackupFilter::default(), 100, None).unwrap()
    };
    let made = all(&mut conn);
    assert_eq!(made.len(), 3);
    assert!(made
        .iter()
        .all(|b| b.policy_id.as_deref() == Some(policy.id.as_str())
            && b.status == ekko::status::BackupStatus::Queued));
    // The next run is the next 03:00 in Paris, after now.
    let p = policies::get(&mut conn, &policy.id).unwrap();
    let next = p.next_run_at.unwrap();
    assert!(next > chrono::Utc::now().naive_utc());
    assert!(
        next.format("%H:%M").to_string() == "02:00" || next.format("%H:%M").to_string() == "01:00",
        "03:00 in Paris is 02:00 or 01:00 UTC, not {next}"
    );

    // The same instant again (a stale conductor): already claimed.
    policies::set_next_run(&mut conn, &policy.id, Some(next), Some(due_at)).unwrap();
    assert_eq!(
        ekko::service::housekeeping::run_due_policies(&a)
            .await
            .unwrap(),
        0
    );
    assert_eq!(all(&mut conn).len(), 3);
    // A later run while the previous backups are still queued: skipped.
    let later = due_at + chrono::Duration::minutes(1);
    let p = policies::get(&mut conn, &policy.id).unwrap();
    policies::set_next_run(&mut conn, &policy.id, p.next_run_at, Some(later)).unwrap();
    assert_eq!(
        ekko::service::housekeeping::run_due_policies(&b)
            .await
            .unwrap(),
        0
    );
    assert_eq!(all(&mut conn).len(), 3);
    // A policy without a computed next run gets one, and starts nothing yet.
    let mut fresh = Policy::new("proj", "fresh");
    fresh.schedule = Some("*/5 * * * *".into());
    policies::insert(&mut conn, &fresh).unwrap();
    assert_eq!(
        ekko::service::housekeeping::run_due_policies(&a)
            .await
            .unwrap(),
        0
    );
    assert!(policies::get(&mut conn, &fresh.id)
        .unwrap()
        .next_run_at
        .is_some());
}
