//! One retention pass over a large synthetic catalog on the test
//! environment's MariaDB: `cargo bench --bench retention` (source the test
//! environment's env.sh first).
//!
//! 1,000 instances (one 100 GiB disk each, 50 projects with one policy
//! each, keep-daily 60) with 61 daily backups each: catalog rows only
//! (61,000 backups and disk records, 122,000 segments and reference
//! intervals, shaped as incremental chains: each backup writes two
//! segments, one shared by the next nine records). The pass expires the
//! oldest backup of every instance (1,000), condemns and deletes the
//! segments only those held, and keeps the rest. Prints the pass's wall
//! time and the process's peak RSS. EKKO_BENCH_INSTANCES changes the size.

use std::time::Instant;

use diesel::connection::SimpleConnection;
use diesel::{Connection, MysqlConnection};

const BACKUPS_PER_INSTANCE: i64 = 61;
const PROJECTS: usize = 50;

fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

/// Insert `rows` (already SQL literals) into `table` in batches.
fn bulk(c: &mut MysqlConnection, table: &str, columns: &str, rows: &[String]) {
    for batch in rows.chunks(2000) {
        c.batch_execute(&format!(
            "INSERT INTO {table} ({columns}) VALUES {}",
            batch.join(",")
        ))
        .unwrap_or_else(|e| panic!("insert into {table}: {e}"));
    }
}

#[tokio::main]
async fn main() {
    let Ok(server) = std::env::var("EKKO_DATABASE_URL") else {
        eprintln!("EKKO_DATABASE_URL is not set: source the test environment's env.sh");
        return;
    };
    let instances: usize = std::env::var("EKKO_BENCH_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let name = format!("ekko_bench_ret_{}", std::process::id());
    let mut admin = MysqlConnection::establish(&server).expect("MariaDB");
    admin
        .batch_execute(&format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ))
        .unwrap();
    let mut url = url::Url::parse(&server).unwrap();
    url.set_path(&format!("/{name}"));
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("ekko.conf");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nstate_path = {}\n[database]\nconnection = mysql+pymysql{}\n[backup]\njob_timeout = 0\njob_stall_timeout = 0\n[retention]\ngc_grace_period = 0\nscrub_percentage = 0\n",
            dir.path().display(),
            &url.as_str()["mysql".len()..]
        ),
    )
    .unwrap();
    let config = ekko::config::EkkoConfig::load(&[conf], std::iter::empty()).unwrap();
    let ekko = ekko::Ekko::connect(config, ekko::ekko::Catalog::Unchecked)
        .await
        .unwrap();
    ekko.db().unwrap().sync().unwrap();

    let t = Instant::now();
    let mut c = MysqlConnection::establish(url.as_str()).unwrap();
    let day = 86_400i64;
    let now = chrono::Utc::now().timestamp();
    let ts = |secs: i64| format!("FROM_UNIXTIME({secs})");
    let (mut insts, mut disks, mut pis, mut backups, mut bdisks, mut segs, mut refs) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let policies: Vec<String> = (0..PROJECTS)
        .map(|p| {
            format!(
                "('pol-{p}', 'proj-{p}', 'daily', '', NULL, 'UTC', NULL, NULL, 60, NULL, NULL, NULL, 0, 1, NULL, {n}, {n})",
                n = ts(now)
            )
        })
        .collect();
    for i in 0..instances {
        let p = i % PROJECTS;
        insts.push(format!(
            "('inst-{i}', 'proj-{p}', 'compute-{}', 'vm-{i}', 'active', {n}, {n})",
            i % 100,
            n = ts(now)
        ));
        disks.push(format!(
            "('disk-{i}', 'inst-{i}', 'proj-{p}', 'vda', 'vda', {}, {BACKUPS_PER_INSTANCE}, 'ekko-x', 0, NULL, {})",
            100i64 << 30,
            ts(now)
        ));
        pis.push(format!("('inst-{i}', 'pol-{p}', {})", ts(now)));
        for s in 1..=BACKUPS_PER_INSTANCE {
            // One a day, the newest an hour ago.
            let at = ts(now - 3600 - (BACKUPS_PER_INSTANCE - s) * day);
            let seg = (i as i64) * 1000 + s * 2;
            backups.push(format!(
                "('b-{i}-{s}', 'proj-{p}', 'scheduler', 'inst-{i}', 'pol-{p}', '', '', 'available', 'auto', 'incremental', 'crash', 100, {}, 1, 1, 1, NULL, 0, '{{}}', {at}, {at}, {at}, {at}, NULL)",
                100i64 << 30
            ));
            bdisks.push(format!(
                "('b-{i}-{s}', 'disk-{i}', {s}, {}, 262144, UNHEX(SHA2('{i}-{s}', 256)), {seg}, NULL, 0, 1, 1, 1, {at})",
                100i64 << 30
            ));
            for (k, to) in [
                (
                    0,
                    if s + 9 >= BACKUPS_PER_INSTANCE {
                        None
                    } else {
                        Some(s + 9)
                    },
                ),
                (
                    1,
                    if s == BACKUPS_PER_INSTANCE {
                        None
                    } else {
                        Some(s)
                    },
                ),
            ] {
                segs.push(format!(
                    "({}, 'proj-{p}', 'live', 33554432, 128, NULL, {at}, NULL, NULL, NULL, NULL, 33554432, {at})",
                    seg + k
                ));
                refs.push(format!(
                    "('disk-{i}', {}, {s}, {}, 64)",
                    seg + k,
                    to.map_or("NULL".into(), |v: i64| v.to_string())
                ));
            }
        }
    }
    bulk(&mut c, "policies", "id, project_id, name, description, schedule, timezone, keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, min_age_seconds, enabled, next_run_at, created_at, updated_at", &policies);
    bulk(
        &mut c,
        "instances",
        "id, project_id, host, name, status, created_at, updated_at",
        &insts,
    );
    bulk(&mut c, "disks", "id, instance_id, project_id, device, node_name, virtual_size, head_seq, bitmap_name, needs_full_read, retired_at, created_at", &disks);
    bulk(
        &mut c,
        "policy_instances",
        "instance_id, policy_id, created_at",
        &pis,
    );
    bulk(&mut c, "backups", "id, project_id, user_id, instance_id, policy_id, name, description, status, mode, kind, consistency, progress, logical_bytes, read_bytes, new_bytes, stored_bytes, error, protected, metadata, created_at, updated_at, started_at, completed_at, deleted_at", &backups);
    bulk(&mut c, "backup_disks", "backup_id, disk_id, seq, virtual_size, chunk_size, root_digest, root_segment, bitmap_name, full_read, read_bytes, new_bytes, stored_bytes, created_at", &bdisks);
    bulk(&mut c, "segments", "id, project_id, status, size, chunk_count, relocated_to, created_at, condemned_at, verified_at, claimed_by, claim_until, live_bytes, live_checked_at", &segs);
    bulk(
        &mut c,
        "segment_refs",
        "disk_id, segment_id, from_seq, to_seq, refs",
        &refs,
    );
    c.batch_execute("ANALYZE TABLE backups, backup_disks, segments, segment_refs")
        .unwrap();
    println!(
        "catalog: {instances} instances, {} backups, {} segments, {} reference intervals (built in {:.1} s)",
        backups.len(),
        segs.len(),
        refs.len(),
        t.elapsed().as_secs_f64()
    );
    drop((insts, disks, pis, backups, bdisks, segs, refs));
    let rss_before = peak_rss_mib();

    for (label, dry) in [("dry run", true), ("pass", false), ("second pass", false)] {
        let t = Instant::now();
        let r = ekko::retention::run_pass(&ekko, dry).await.unwrap();
        println!("{label:<12} {:>7.2} s: {r}", t.elapsed().as_secs_f64());
    }
    println!(
        "peak RSS: {:.0} MiB (catalog generation included; {:.0} MiB before the passes)",
        peak_rss_mib(),
        rss_before
    );
    admin
        .batch_execute(&format!("DROP DATABASE `{name}`"))
        .unwrap();
}
