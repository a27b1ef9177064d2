//! Replication to a second store (issue 22) on the real MariaDB and Swift,
//! with real backups of a qemu-storage-daemon disk. The second store is S3:
//! Swift's s3api signed with the EC2 credentials of another project
//! (`ekko_replica`), so its buckets live in another Swift account than the
//! first store's containers, as an off-site store's would.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use ekko::backup::restore::TargetFormat;
use ekko::db::backups::{self, BackupStatus};
use ekko::db::segments;
use ekko::service::local::{backup_instance, restore_backup, restore_backup_from};

use crate::cluster::Service;
use crate::distributed::{api_restore, request_restore};
use crate::helpers::{mariadb_db, service_env};
use crate::qsd::identical;
use crate::retention::{setup, Setup};

const MIB: u64 = 1 << 20;

/// `[replication]` to the second S3 account.
fn replica_section() -> Option<String> {
    Some(format!(
        "[replication]\nbackend = s3\nname = offsite\ninterval = 1\n[replica_s3]\nendpoint = {}\n\
         region = {}\naccess_key = {}\nsecret_key = {}\n",
        service_env("EKKO_S3_ENDPOINT")?,
        std::env::var("EKKO_S3_REGION").unwrap_or_else(|_| "us-east-1".into()),
        service_env("EKKO_S3_REPLICA_ACCESS_KEY")?,
        service_env("EKKO_S3_REPLICA_SECRET_KEY")?,
    ))
}

fn pattern(seed: u64, len: u64) -> Vec<u8> {
    (0..len)
        .map(|n| {
            (n.wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(7919))
                >> 11) as u8
        })
        .collect()
}

/// Bytes of every live segment in the catalog.
async fn live_bytes(db: &ekko::db::Db) -> i64 {
    db.run(segments::totals)
        .await
        .unwrap()
        .into_iter()
        .filter(|(s, _, _)| *s == ekko::status::SegmentStatus::Live)
        .map(|(_, _, b)| b)
        .sum()
}

async fn manifest_size(x: &Setup, backup: &str) -> u64 {
    x.ekko
        .store
        .head(&x.container, &ekko::manifest::object_name(backup))
        .await
        .unwrap()
        .size
}

async fn restored_matches(ekko: &ekko::Ekko, dir: &Path, backup: &str, snap: &Path, second: bool) {
    let out = dir.join(format!("restore-{backup}-{second}.raw"));
    restore_backup_from(ekko, backup, None, &out, TargetFormat::Raw, None, second)
        .await
        .unwrap_or_else(|e| panic!("restore of {backup} (second copy: {second}): {e:#}"));
    assert!(
        identical(&out, snap),
        "{backup} (second copy: {second}) differs"
    );
    std::fs::remove_file(&out).unwrap();
}

fn replica(x: &Setup) -> &ekko::store::Replica {
    x.ekko.replica.as_ref().expect("[replication] configured")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_copies_only_missing_objects_and_a_lost_first_store_is_survived() {
    let Some(section) = replica_section() else {
        return;
    };
    let Some(x) = setup(
        "proj-repl",
        32,
        &format!(
            "[retention]\ngc_grace_period = 0\nscrub_percentage = 0\ncompaction_threshold = 0\n\
             [backup]\njob_timeout = 0\njob_stall_timeout = 0\nsegment_size = 2M\n{section}"
        ),
    )
    .await
    else {
        return;
    };
    let snap = |n: &str| x.dir.path().join(format!("snap-{n}.raw"));

    // A full backup: everything is copied, once.
    x.qsd.write(0, 0, &pattern(1, 6 * MIB));
    let a = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
    x.qsd.snapshot_to(0, &snap("a"));
    let status = ekko::service::backups::replication(&x.ekko, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (status.store.as_str(), status.status),
        ("offsite", "pending")
    );
    let after_a = live_bytes(&x.db).await;
    let pass = ekko::replication::run_pass(&x.ekko).await.unwrap();
    assert_eq!(pass.backups_replicated, 1, "{pass:?}");
    assert_eq!(pass.backups_failed, 0, "{pass:?}");
    assert_eq!(
        pass.bytes_copied,
        after_a as u64 + manifest_size(&x, &a.id).await,
        "the full backup's segments and manifest: {pass:?}"
    );

    // An incremental: only its new segments and its manifest.
    x.qsd.write(0, 12 * MIB, &pattern(2, MIB));
    let b = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
    assert_eq!(b.kind.as_deref(), Some("incremental"));
    x.qsd.snapshot_to(0, &snap("b"));
    let new = live_bytes(&x.db).await - after_a;
    let pass = ekko::replication::run_pass(&x.ekko).await.unwrap();
    assert_eq!(pass.backups_replicated, 1, "{pass:?}");
    assert_eq!(
        pass.bytes_copied,
        new as u64 + manifest_size(&x, &b.id).await,
        "copied = the incremental's new bytes: {pass:?}"
    );
    assert!(pass.bytes_copied < 2 * MIB, "{pass:?}");
    // Nothing new: nothing copied.
    let pass = ekko::replication::run_pass(&x.ekko).await.unwrap();
    assert_eq!(
        (pass.backups_replicated, pass.bytes_copied),
        (0, 0),
        "{pass:?}"
    );
    let status = ekko::service::backups::replication(&x.ekko, &b)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.status, "replicated");
    assert!(status.copied_at.is_some());

    // The second copy restores while the first store is intact, and once
    // the first store's container is gone.
    restored_matches(&x.ekko, x.dir.path(), &b.id, &snap("b"), true).await;
    let first = x.ekko.store.list(&x.container, "").await.unwrap();
    assert!(!first.is_empty());
    for o in &first {
        x.ekko.store.delete(&x.container, &o.name).await.unwrap();
    }
    assert!(
        restore_backup(
            &x.ekko,
            &a.id,
            None,
            &x.dir.path().join("gone.raw"),
            TargetFormat::Raw,
            None
        )
        .await
        .is_err(),
        "the first store really lost the data"
    );
    for (id, s) in [(&a.id, "a"), (&b.id, "b")] {
        restored_matches(&x.ekko, x.dir.path(), id, &snap(s), true).await;
    }
    // `ekko export --from-replica` serves the second copy over NBD.
    let socket = x.dir.path().join("second.sock");
    let mut export = std::process::Command::new(env!("CARGO_BIN_EXE_ekko"))
        .arg("--config-file")
        .arg(&x.conf)
        .args([
            "export",
            &b.id,
            "--from-replica",
            "--lifetime",
            "120",
            "--socket",
        ])
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "no export socket");
        assert!(export.try_wait().unwrap().is_none(), "ekko export ended");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let compared = std::process::Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(format!("nbd+unix:///?socket={}", socket.display()))
        .arg(snap("b"))
        .output()
        .unwrap();
    let _ = export.kill();
    let _ = export.wait();
    assert!(
        compared.status.success(),
        "the second copy's export differs: {compared:?}"
    );

    // The catalog lost too: a rebuild from the second store alone brings
    // both backups back, held there.
    let t = mariadb_db().unwrap();
    t.db.sync().unwrap();
    let text = std::fs::read_to_string(&x.conf).unwrap();
    let conf = x.dir.path().join("rebuild.conf");
    let text: Vec<String> = text
        .lines()
        .map(|l| match l.starts_with("connection = ") {
            true => format!("connection = {}", t.url),
            false => l.to_string(),
        })
        .collect();
    std::fs::write(&conf, text.join("\n")).unwrap();
    let config = ekko::config::EkkoConfig::load(&[conf], std::iter::empty()).unwrap();
    let rebuilt = ekko::Ekko::connect(config, ekko::ekko::Catalog::Required)
        .await
        .unwrap();
    let report = ekko::rebuild::rebuild_from_replica(&rebuilt).await.unwrap();
    assert_eq!(report.backups, 2, "{report:?}");
    for (id, s) in [(&a.id, "a"), (&b.id, "b")] {
        let found = {
            let id = id.to_string();
            t.db.run(move |c| backups::get(c, &id)).await.unwrap()
        };
        assert_eq!(found.status, BackupStatus::Available);
        let status = ekko::service::backups::replication(&rebuilt, &found)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.status, "replicated");
        restored_matches(&rebuilt, x.dir.path(), id, &snap(s), true).await;
    }
}

/// Retention, garbage collection and compaction on both stores while
/// ekko-retention (retention and replication passes every second) is
/// killed with SIGKILL at random moments: afterwards every available backup
/// restores bit-exact from the first store, every backup the catalog says
/// the second store holds restores bit-exact from there, and each store
/// holds every object those backups need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_both_stores_with_replication_killed_at_random_loses_nothing() {
    let Some(section) = replica_section() else {
        return;
    };
    let Some(x) = setup(
        "proj-repl-kill",
        32,
        &format!(
            "[retention]\ninterval = 1\ngc_grace_period = 0\nscrub_percentage = 0\n\
             compaction_threshold = 0.9\n\
             [backup]\njob_timeout = 0\njob_stall_timeout = 0\nchunk_size = 64K\nsegment_size = 1M\n\
             {section}"
        ),
    )
    .await
    else {
        return;
    };
    let mut snaps: HashMap<String, PathBuf> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    // EKKO_TEST_SEED replays a run's choices (not its kill timings' effects).
    let seed = std::env::var("EKKO_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    eprintln!("seed {seed}");
    let log = x.dir.path().join("retention.log");
    for round in 0..8u64 {
        // New data over a random quarter, a backup, and sometimes the
        // oldest kept backup deleted (its segments become garbage or
        // half-dead: compaction's work).
        let at = (next() % 4) * 8 * MIB;
        x.qsd.write(0, at, &pattern(round + 10, 3 * MIB));
        let b = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
        let snap = x.dir.path().join(format!("snap-{round}.raw"));
        x.qsd.snapshot_to(0, &snap);
        snaps.insert(b.id.clone(), snap);
        order.push(b.id.clone());
        if order.len() > 3 && (round % 2 == 1 || next() % 2 == 0) {
            let victim = order.remove((next() % 2) as usize);
            ekko::service::backups::delete_backup(&x.ekko, &victim)
                .await
                .unwrap();
            snaps.remove(&victim);
        }
        // ekko-retention runs a while, then dies without warning.
        let mut worker = Service::start("ekko-retention", &x.conf, log.clone(), &[]);
        let ms = 300 + next() % 2500;
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        worker.kill9();
        // Time passes for what it held (its pass's lease, its claims).
        crate::retention::expire_claims(&x.db).await;
    }
    // Lagging or not, what is there must be whole: check now, then let a
    // last retention and replication pass finish the work and check again.
    check_both_stores(&x, &snaps, seed).await;
    crate::retention::expire_claims(&x.db).await;
    ekko::retention::run_pass(&x.ekko, false).await.unwrap();
    let pass = ekko::replication::run_pass(&x.ekko).await.unwrap();
    assert_eq!(pass.backups_failed, 0, "seed {seed}: {pass:?}");
    let held = check_both_stores(&x, &snaps, seed).await;
    assert_eq!(
        held,
        snaps.len(),
        "seed {seed}: every backup has its second copy"
    );
    // The workers had work: backups expired, data reclaimed and compacted
    // (redirects in the catalog), and the second store was swept with the
    // first (it holds no more segments than the catalog knows).
    let rows = x.db.run(segments::totals).await.unwrap();
    eprintln!("seed {seed}: segments by status {rows:?}");
    assert!(
        rows.iter().any(|(s, _, _)| matches!(
            s,
            ekko::status::SegmentStatus::Moved | ekko::status::SegmentStatus::Relocated
        )),
        "seed {seed}: compaction ran: {rows:?}"
    );
    // The second store holds nothing the catalog does not know: every
    // segment there is a catalog segment, every manifest an available
    // backup's (deleted backups' data left it with the first store's).
    let known: HashSet<i64> =
        x.db.run(|c| {
            use diesel::prelude::*;
            use ekko::db::schema::segments as s;
            Ok(s::table.select(s::id).load::<i64>(c)?)
        })
        .await
        .unwrap()
        .into_iter()
        .collect();
    for o in replica(&x).store.list(&x.container, "").await.unwrap() {
        if let Some(hex) = o.name.strip_prefix("segments/") {
            let id = u64::from_str_radix(hex, 16).unwrap() as i64;
            assert!(
                known.contains(&id),
                "seed {seed}: {} is not in the catalog",
                o.name
            );
        } else if let Some(m) = o.name.strip_prefix("manifests/") {
            let id = m.trim_end_matches(".json");
            assert!(
                snaps.contains_key(id),
                "seed {seed}: {} is not an available backup's",
                o.name
            );
        }
    }
    // Compacted segments whose object left the first store are in the
    // second (garbage collection copied them first), as the backups that
    // still name them need.
    let moved: Vec<i64> =
        x.db.run(|c| {
            use diesel::prelude::*;
            use ekko::db::schema::segments as s;
            Ok(s::table
                .filter(s::status.eq("moved"))
                .select(s::id)
                .load::<i64>(c)?)
        })
        .await
        .unwrap();
    for id in moved {
        let name = ekko::backup::segment_object(id as u64);
        assert!(
            x.ekko.store.head(&x.container, &name).await.is_err(),
            "seed {seed}: {name} moved"
        );
        assert!(
            replica(&x).store.head(&x.container, &name).await.is_ok(),
            "seed {seed}: {name} is in the second store"
        );
    }
}

/// A second store that is the first one under another name (here a link to
/// the first store's directory; in a cloud, Swift's s3api on the first
/// store's account) is refused before anything is copied, or deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_that_is_the_first_is_refused() {
    let t = crate::helpers::sqlite_db();
    t.db.sync().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("store");
    std::fs::create_dir_all(&first).unwrap();
    std::os::unix::fs::symlink(&first, dir.path().join("alias")).unwrap();
    let conf = dir.path().join("ekko.conf");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nstate_path = {0}\n[database]\nconnection = {1}\n[local_store]\npath = {0}/store\n\
             [replication]\nbackend = local\n[replica_local_store]\npath = {0}/alias\n",
            dir.path().display(),
            t.url
        ),
    )
    .unwrap();
    let config = ekko::config::EkkoConfig::load(&[conf], std::iter::empty()).unwrap();
    let ekko = ekko::Ekko::connect(config, ekko::ekko::Catalog::Required)
        .await
        .unwrap();
    let err = ekko::replication::run_pass(&ekko).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("is the first store under another name"),
        "{err:#}"
    );
    let replica = ekko.replica.clone().unwrap();
    let err = ekko::replication::ensure_copied(&ekko, &replica, "p", 7)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("another name"), "{err:#}");
}

/// The second store stops answering in the middle of a pass: the pass ends
/// at the first backup that fails (not every pending backup through its
/// retries), and the next pass, with the store back, copies them all. One
/// process at a time runs a store's pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_ends_when_a_store_stops_answering_and_one_process_runs_it() {
    let outside = tempfile::tempdir().unwrap();
    let second = outside.path().join("second");
    let Some(x) = setup(
        "proj-down",
        16,
        &format!(
            "[retention]\nscrub_percentage = 0\n[replication]\nbackend = local\n\
             [replica_local_store]\npath = {}\n",
            second.display()
        ),
    )
    .await
    else {
        return;
    };
    x.qsd.write(0, 0, &pattern(11, 2 * MIB));
    backup_instance(&x.ekko, &x.req).await.unwrap();
    let pass = ekko::replication::run_pass(&x.ekko).await.unwrap();
    assert_eq!(pass.backups_replicated, 1, "{pass:?}");
    for seed in [12, 13, 14] {
        x.qsd.write(0, seed * MIB, &pattern(seed, MIB));
        backup_instance(&x.ekko, &x.req).await.unwrap();
    }
    // The second store's directory becomes a file: every request fails.
    std::fs::remove_dir_all(&second).unwrap();
    std::fs::write(&second, b"not a store").unwrap();
    let err = ekko::replication::run_pass(&x.ekko).await.unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("replication pass stopped")
            && err.contains("the second store does not answer"),
        "{err}"
    );
    std::fs::remove_file(&second).unwrap();
    std::fs::create_dir(&second).unwrap();
    let pass = ekko::replication::run_pass(&x.ekko).await.unwrap();
    assert_eq!(
        (pass.backups_replicated, pass.backups_failed),
        (3, 0),
        "{pass:?}"
    );

    // Another process is running this store's pass (its lease in the
    // catalog): this one copies nothing, then takes over once it is given
    // up.
    x.qsd.write(0, 3 * MIB, &pattern(15, MIB));
    backup_instance(&x.ekko, &x.req).await.unwrap();
    let lease = format!("replication:{}", replica(&x).key);
    let other = |take: bool| {
        let lease = lease.clone();
        x.db.run(move |c| {
            if take {
                ekko::db::leases::take(c, &lease, "other", chrono::Duration::minutes(5))
            } else {
                ekko::db::leases::release(c, &lease, "other").map(|()| true)
            }
        })
    };
    assert!(other(true).await.unwrap());
    let pass = ekko::replication::run_pass(&x.ekko).await.unwrap();
    assert!(pass.busy && pass.backups_replicated == 0, "{pass:?}");
    other(false).await.unwrap();
    let pass = ekko::replication::run_pass(&x.ekko).await.unwrap();
    assert_eq!(pass.backups_replicated, 1, "{pass:?}");
    let lease_left =
        x.db.run(move |c| ekko::db::leases::holder(c, &lease))
            .await
            .unwrap();
    assert_eq!(lease_left, None, "the pass gave its lease up");
}

/// Every available backup restores from the first store; every one the
/// catalog says the second store holds restores from there and has every
/// object it needs there. Returns how many the second store holds.
async fn check_both_stores(x: &Setup, snaps: &HashMap<String, PathBuf>, seed: u64) -> usize {
    let names: HashSet<String> = replica(x)
        .store
        .list(&x.container, "")
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|o| o.name)
        .collect();
    let mut held = 0;
    for (id, snap) in snaps {
        let b = {
            let id = id.clone();
            x.db.run(move |c| backups::get(c, &id)).await.unwrap()
        };
        assert_eq!(b.status, BackupStatus::Available, "seed {seed}");
        restored_matches(&x.ekko, x.dir.path(), id, snap, false).await;
        let status = ekko::service::backups::replication(&x.ekko, &b)
            .await
            .unwrap()
            .unwrap();
        if status.status != "replicated" {
            continue;
        }
        held += 1;
        assert!(
            names.contains(&ekko::manifest::object_name(id)),
            "seed {seed}: {id}'s manifest is in the second store"
        );
        restored_matches(&x.ekko, x.dir.path(), id, snap, true).await;
    }
    held
}

/// The API shows where a backup's second copy stands, restores read it when
/// asked to, and a restore that finds the first store's data gone is
/// written again from the second copy by the compute host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The broker lock is held for the whole test on purpose.
#[allow(clippy::await_holding_lock)]
async fn api_restores_read_the_second_copy_when_asked_or_when_the_first_fails() {
    let Some(section) = replica_section() else {
        return;
    };
    let _guard = crate::helpers::rabbit_lock();
    let dir = tempfile::tempdir().unwrap();
    let Some(c) =
        crate::cluster::start_cluster_full(dir.path(), None, false, ["", ""], &section).await
    else {
        return;
    };
    let wait = std::time::Duration::from_secs(120);
    let a = &c.hosts[0];
    a.qsd.write(0, 0, &pattern(5, 4 * MIB));
    let b = c.member.backup(&a.instance, "auto", wait).await;
    assert_eq!(b["status"], "available", "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    let reference = dir.path().join("reference.raw");
    a.qsd.snapshot_to(0, &reference);
    let shown = |v: serde_json::Value| v["backup"]["replication"].clone();
    let (_, v) = c
        .member
        .call("GET", &format!("/v1/backups/{id}"), None)
        .await;
    assert_eq!(shown(v.clone())["status"], "pending", "{v}");
    assert_eq!(shown(v.clone())["store"], "offsite", "{v}");
    // Asked for the second copy before it exists: refused, nothing queued.
    let (s, v) = request_restore(&c, &id, "early.raw", Some("replica")).await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = request_restore(&c, &id, "bad.raw", Some("elsewhere")).await;
    assert_eq!(s, 400, "{v}");

    // ekko-retention's pass (here the operator's), then the API says so.
    let config =
        ekko::config::EkkoConfig::load(std::slice::from_ref(&c.operator_conf), std::iter::empty())
            .unwrap();
    let operator = ekko::Ekko::connect(config, ekko::ekko::Catalog::Required)
        .await
        .unwrap();
    let pass = ekko::replication::run_pass(&operator).await.unwrap();
    assert!(pass.backups_replicated >= 1, "{pass:?}");
    let (_, v) = c
        .member
        .call("GET", &format!("/v1/backups/{id}"), None)
        .await;
    assert_eq!(shown(v.clone())["status"], "replicated", "{v}");
    assert!(shown(v.clone())["copied_at"].is_string(), "{v}");
    let (_, list) = c.member.call("GET", "/v1/backups", None).await;
    assert!(
        list["backups"][0].get("replication").is_none(),
        "lists leave it out: {list}"
    );

    let written = |p: &str| dir.path().join(format!("state-a/restores/{p}"));
    let done = api_restore(&c, &id, "second.raw", Some("replica"), wait).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(identical(&written("second.raw"), &reference));

    // The first store loses the backup's data: `auto` (the default) writes
    // the file again from the second copy; `primary` fails.
    let project = b["project_id"].as_str().unwrap();
    let container = operator.container(project);
    for o in operator.store.list(&container, "segments/").await.unwrap() {
        operator.store.delete(&container, &o.name).await.unwrap();
    }
    let failed = api_restore(&c, &id, "first.raw", Some("primary"), wait).await;
    assert_eq!(failed["status"], "error", "{failed}");
    let done = api_restore(&c, &id, "auto.raw", Some("auto"), wait).await;
    assert_eq!(done["status"], "completed", "{done}\n{}", a.worker.log());
    assert!(identical(&written("auto.raw"), &reference));
    assert!(
        a.worker.log().contains("reading the second copy"),
        "the host fell back"
    );

    // An export of the second copy serves the disk as it was.
    let (s, v) = c
        .admin
        .call(
            "POST",
            &format!("/v1/backups/{id}/exports"),
            Some(serde_json::json!({"export": {"source": "replica", "lifetime": 300}})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let eid = v["export"]["id"].as_str().unwrap().to_string();
    let e = crate::export_api::wait_export(&c.admin, &eid, &["active", "error"], wait).await;
    assert_eq!(e["status"], "active", "{e}\n{}", a.worker.log());
    let (same, out) = crate::export_api::compare(e["url"].as_str().unwrap(), None, &reference);
    assert!(same, "the second copy's export differs: {out}");
    let (s, _) = c
        .admin
        .call("DELETE", &format!("/v1/exports/{eid}"), None)
        .await;
    assert!(s == 202 || s == 204, "{s}");

    // The tenant restores the second copy into a Glance image by itself,
    // the first store's data still gone: the image is the disk as it was.
    if crate::image_restore::glance_url().is_some() {
        image_from_second_copy(&c, &id, &reference, dir.path()).await;
    }
}

/// A member's restore of `backup` into a raw Glance image from the second
/// copy (`source: replica`), downloaded and compared with `reference`.
async fn image_from_second_copy(
    c: &crate::cluster::Cluster,
    backup: &str,
    reference: &Path,
    dir: &Path,
) {
    use crate::image_restore::{download, glance, wait_restore};
    let (s, v) = c
        .member
        .call(
            "POST",
            "/v1/restores",
            Some(
                serde_json::json!({"restore": {"backup_id": backup, "source": "replica",
                "target": {"type": "image", "name": "ekko-test-second-copy",
                           "disk_format": "raw", "visibility": "private"}}}),
            ),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let rid = v["restore"]["id"].as_str().unwrap().to_string();
    let image = v["restore"]["target"]["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = wait_restore(&c.member, &rid, &["completed", "error"]).await;
    assert_eq!(r["status"], "completed", "{r}\n{}", c.hosts[0].worker.log());
    let tok = crate::cluster::token("EKKO_DEMO_USERNAME", "EKKO_DEMO_PASSWORD", "demo").await;
    let out = dir.join("second-copy-image.raw");
    download(&tok, &image, &out).await;
    assert!(
        identical(&out, reference),
        "the image restored from the second copy differs from the disk"
    );
    glance(&tok, "DELETE", &format!("/v2/images/{image}")).await;
}
