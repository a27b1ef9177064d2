//! Compaction and scrub on the real MariaDB and Swift, with real backups of
//! a qemu-storage-daemon disk: a half-dead segment is rewritten and every
//! backup still restores bit-exact through the redirect (also a restore
//! that loaded its map before the move, and backups that build on maps
//! naming the old segment); damage found by scrub marks the backups that
//! use it and the next backup stores the data again.

use std::collections::HashSet;

use diesel::prelude::*;
use ekko::backup::restore::TargetFormat;
use ekko::backup::{relocation_object, segment_object};
use ekko::db::backups;
use ekko::db::schema::segments as s;
use ekko::service::local::{backup_instance, restore_backup, verify_backup};

use crate::qsd::identical;
use crate::retention::{expire_claims, setup, Setup};

const MIB: u64 = 1 << 20;

fn pattern(seed: u64, len: u64) -> Vec<u8> {
    (0..len)
        .map(|n| {
            (n.wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(7919))
                >> 11) as u8
        })
        .collect()
}

/// (id, status, relocated_to) of every segment row.
async fn rows(db: &ekko::db::Db) -> Vec<(i64, String, Option<i64>)> {
    db.run(|c| {
        Ok(s::table
            .select((s::id, s::status, s::relocated_to))
            .order(s::id)
            .load(c)?)
    })
    .await
    .unwrap()
}

/// The store holds an object for exactly the rows whose data is still
/// there (live, condemned, relocated), none for redirects (moved); every
/// relocation note belongs to a known segment.
async fn assert_store_matches_catalog(x: &Setup) {
    let rows = rows(&x.db).await;
    let names: HashSet<String> = x
        .ekko
        .store
        .list(&x.container, "")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    for (id, status, _) in &rows {
        let has = names.contains(&segment_object(*id as u64));
        let should = matches!(status.as_str(), "live" | "condemned" | "relocated");
        assert_eq!(has, should, "segment {id:016x} ({status})");
    }
    let known: HashSet<u64> = rows.iter().map(|r| r.0 as u64).collect();
    for n in names
        .iter()
        .filter(|n| n.starts_with("segments/") || n.starts_with("relocations/"))
    {
        let hex = n.rsplit('/').next().unwrap();
        let id = u64::from_str_radix(hex, 16).unwrap();
        assert!(known.contains(&id), "{n} is known to the catalog");
    }
}

async fn restore_matches(x: &Setup, backup: &str, snap: &std::path::Path, what: &str) {
    let out = x.dir.path().join(format!("restore-{backup}.raw"));
    restore_backup(&x.ekko, backup, None, &out, TargetFormat::Raw, None)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert!(identical(&out, snap), "{what}: restored image differs");
    std::fs::remove_file(&out).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_moves_live_records_and_scrub_finds_and_repairs_damage() {
    let Some(x) = setup(
        "proj-cmp",
        16,
        "[retention]\ngc_grace_period = 0\ncompaction_threshold = 0.9\nscrub_percentage = 0\n\
         [backup]\njob_timeout = 0\njob_stall_timeout = 0\nchunk_size = 64K\nsegment_size = 4M",
    )
    .await
    else {
        return;
    };
    let snap = |n: &str| x.dir.path().join(format!("snap-{n}.raw"));

    // A: 8 MiB of data. B: the first half of it rewritten. Deleting A
    // leaves A's segments half used (by B): candidates for compaction.
    x.qsd.write(0, 0, &pattern(1, 8 * MIB));
    let a = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
    x.qsd.write(0, 0, &pattern(2, 4 * MIB));
    let b = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
    x.qsd.snapshot_to(0, &snap("b"));
    assert_eq!(b.kind.as_deref(), Some("incremental"));
    // A reader that loads its relocations now, before anything moves.
    let stale = x.ekko.project_reader("proj-cmp").await.unwrap();
    let b_rec =
        x.db.run({
            let id = b.id.clone();
            move |c| backups::disks_of(c, &id)
        })
        .await
        .unwrap()
        .remove(0);

    // A job queued meanwhile (the oldest writer) holds the old objects.
    let job = ekko::db::jobs::Job::queued(ekko::status::JobKind::Backup, "proj-cmp");
    let job_id = job.id.clone();
    x.db.run(move |c| ekko::db::jobs::insert(c, &job))
        .await
        .unwrap();
    ekko::service::backups::delete_backup(&x.ekko, &a.id)
        .await
        .unwrap();
    let pass = ekko::retention::run_pass(&x.ekko, false).await.unwrap();
    assert!(pass.segments_compacted >= 1, "{pass:?}");
    assert!(pass.measured_live_bytes < pass.measured_bytes, "{pass:?}");
    let moved: Vec<_> = rows(&x.db)
        .await
        .into_iter()
        .filter(|r| r.1 == "relocated")
        .collect();
    assert_eq!(moved.len(), pass.segments_compacted, "{moved:?}");
    for (id, _, to) in &moved {
        let to = to.expect("a relocated segment names its new home") as u64;
        assert!(
            x.ekko
                .store
                .head(&x.container, &segment_object(*id as u64))
                .await
                .is_ok(),
            "the old object waits for the queued job"
        );
        let note = x
            .ekko
            .store
            .get(&x.container, &relocation_object(to))
            .await
            .unwrap();
        let note: serde_json::Value = serde_json::from_slice(&note).unwrap();
        assert!(note["replaces"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(format!("{id:016x}"))));
    }
    restore_matches(&x, &b.id, &snap("b"), "B while relocated").await;

    // The job ends: the next pass deletes the old objects; rows stay as
    // redirects, and B restores through them, as does the stale reader.
    x.db.run(move |c| ekko::db::jobs::finish(c, &job_id, ekko::status::JobStatus::Succeeded, None))
        .await
        .unwrap();
    let pass = ekko::retention::run_pass(&x.ekko, false).await.unwrap();
    assert!(pass.segments_deleted >= moved.len(), "{pass:?}");
    for (id, _, _) in &moved {
        let now =
            x.db.run({
                let id = *id;
                move |c| ekko::db::segments::get(c, id)
            })
            .await
            .unwrap();
        assert_eq!(now.status, ekko::status::SegmentStatus::Moved);
    }
    assert_store_matches_catalog(&x).await;
    restore_matches(&x, &b.id, &snap("b"), "B after the old objects went").await;
    let root = ekko::chunk::ChunkRef {
        digest: ekko::chunk::ChunkDigest::from_slice(&b_rec.root_digest).unwrap(),
        segment: b_rec.root_segment as u64,
    };
    let out = x.dir.path().join("stale.raw");
    ekko::backup::file_target::restore_to_file(
        &stale,
        &ekko::backup::PreviousRecord {
            root,
            disk_size: b_rec.virtual_size as u64,
            chunk_size: b_rec.chunk_size as u64,
        },
        &out,
        TargetFormat::Raw,
        None,
    )
    .await
    .unwrap();
    assert!(
        identical(&out, &snap("b")),
        "a reader from before the move re-resolves"
    );

    // C builds on B's map, which names moved segments: it commits (reuse
    // follows the redirect) and restores.
    x.qsd.write(0, 12 * MIB, &pattern(3, MIB));
    let c = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
    x.qsd.snapshot_to(0, &snap("c"));
    assert_eq!(c.kind.as_deref(), Some("incremental"));
    restore_matches(&x, &c.id, &snap("c"), "C on a compacted base").await;
    restore_matches(&x, &b.id, &snap("b"), "B after C").await;

    // The catalog is lost: a rebuild from the store alone follows the
    // relocation notes, and B and C restore from the rebuilt catalog.
    let t2 = crate::helpers::mariadb_db().unwrap();
    t2.db.sync().unwrap();
    let mut config = x.ekko.config.as_ref().clone();
    config.database.connection = t2.url.clone();
    let rebuilt = ekko::Ekko::connect(config, ekko::ekko::Catalog::Required)
        .await
        .unwrap();
    let report = ekko::rebuild::rebuild(&rebuilt).await.unwrap();
    assert!(report.skipped.is_empty(), "{report:?}");
    assert_eq!(report.backups, 2, "{report:?}");
    for (id, name) in [(&b.id, "b"), (&c.id, "c")] {
        let out = x.dir.path().join(format!("rebuilt-{name}.raw"));
        restore_backup(&rebuilt, id, None, &out, TargetFormat::Raw, None)
            .await
            .unwrap();
        assert!(
            identical(&out, &snap(name)),
            "{name} from the rebuilt catalog"
        );
        std::fs::remove_file(&out).unwrap();
    }
    drop(rebuilt);

    // Scrub: damage one byte of a segment only C uses: its new data (not
    // its map pages, which C's commit stored in segments of their own).
    let newest: Vec<i64> =
        x.db.run(|c| {
            Ok(s::table
                .filter(s::status.eq("live"))
                .order(s::created_at.desc())
                .select(s::id)
                .limit(4)
                .load(c)?)
        })
        .await
        .unwrap();
    let mut c_only = None;
    for id in newest {
        let body = x
            .ekko
            .store
            .get(&x.container, &segment_object(id as u64))
            .await
            .unwrap();
        let entries = ekko::segment::read_whole(id as u64, &body).unwrap();
        if entries.iter().all(|e| e.kind == ekko::format::RECORD_CHUNK) {
            c_only = Some(id);
            break;
        }
    }
    let c_only = c_only.expect("C stored a data segment");
    let name = segment_object(c_only as u64);
    let mut body = x
        .ekko
        .store
        .get(&x.container, &name)
        .await
        .unwrap()
        .to_vec();
    body[32 + 64 + 100] ^= 0x5a;
    x.ekko
        .store
        .put(&x.container, &name, body.into())
        .await
        .unwrap();
    let mut report = ekko::retention::PassReport::default();
    ekko::retention::scrub::scrub(&x.ekko, 100.0, &mut report)
        .await
        .unwrap();
    assert!(report.segments_scrubbed >= 1, "{report:?}");
    assert!(report.damaged_records >= 1, "{report:?}");
    assert_eq!(report.backups_damaged, 1, "{report:?}");
    let c_now =
        x.db.run({
            let id = c.id.clone();
            move |conn| backups::get(conn, &id)
        })
        .await
        .unwrap();
    let why = c_now.error.clone().unwrap_or_default();
    assert!(
        why.contains("damaged") && why.contains(&format!("{c_only:016x}")),
        "{why}"
    );
    let b_now =
        x.db.run({
            let id = b.id.clone();
            move |conn| backups::get(conn, &id)
        })
        .await
        .unwrap();
    assert_eq!(b_now.error, None, "B does not use the damaged segment");
    let verified = verify_backup(&x.ekko, &c.id, None).await.unwrap();
    assert!(!verified[0].1.bad.is_empty(), "verify sees the damage too");

    // The next backup (no new writes) reads everything, stores the
    // damaged data afresh and restores bit-exact; later ones are clean.
    let d = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
    assert_eq!(d.kind.as_deref(), Some("full"));
    restore_matches(&x, &d.id, &snap("c"), "D after the damage").await;
    let verified = verify_backup(&x.ekko, &d.id, None).await.unwrap();
    assert!(verified[0].1.bad.is_empty(), "{:?}", verified[0].1.bad);
    x.qsd.write(0, 3 * MIB, &pattern(4, MIB));
    let e = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
    x.qsd.snapshot_to(0, &snap("e"));
    assert_eq!(e.kind.as_deref(), Some("incremental"));
    restore_matches(&x, &e.id, &snap("e"), "E").await;

    // Deleting the damaged backup lets its segment go; everything left
    // is consistent and nothing unreferenced stays behind.
    ekko::service::backups::delete_backup(&x.ekko, &c.id)
        .await
        .unwrap();
    for _ in 0..2 {
        ekko::retention::run_pass(&x.ekko, false).await.unwrap();
    }
    assert_store_matches_catalog(&x).await;
    let unreferenced =
        x.db.run(|c| ekko::db::segments::unreferenced(c, chrono::Utc::now().naive_utc(), 10))
            .await
            .unwrap();
    assert!(unreferenced.is_empty(), "{unreferenced:?}");
    for (id, snap_name) in [(&b.id, "b"), (&d.id, "c"), (&e.id, "e")] {
        restore_matches(&x, id, &snap(snap_name), "after the last passes").await;
    }
}

/// A small deterministic generator (xorshift64*): the seed is printed, and
/// `EKKO_TEST_SEED` replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Run `ekko <args>` with a failpoint: it either finishes (the point was
/// not reached) or dies by SIGKILL exactly there.
fn run_with_failpoint(x: &Setup, failpoint: &str, args: &[&str]) -> &'static str {
    use std::os::unix::process::ExitStatusExt;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ekko"))
        .arg("--config-file")
        .arg(&x.conf)
        .args(args)
        .env("EKKO_FAILPOINT", failpoint)
        .output()
        .unwrap();
    match (out.status.code(), out.status.signal()) {
        (Some(0), _) => "finished",
        (_, Some(9)) => "killed",
        _ => panic!(
            "ekko {args:?} with {failpoint} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Seeds of the randomised crash story: a fixed list in CI, so a failure
/// reproduces; `EKKO_TEST_SEED=<n>` replays one, `EKKO_TEST_SEED=random`
/// explores (`EKKO_TEST_SEEDS=<n>` stories of random seeds).
fn story_seeds() -> Vec<u64> {
    match std::env::var("EKKO_TEST_SEED").ok().as_deref() {
        Some("random") => {
            let n = std::env::var("EKKO_TEST_SEEDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            (0..n).map(|i| (t ^ (i * 0x9e37_79b9)) | 1).collect()
        }
        Some(s) => vec![s.parse().expect("EKKO_TEST_SEED: a number or `random`")],
        None => vec![
            0x5eed_2026_1126_0007,
            0x5eed_2026_1203_0017,
            0x5eed_2026_1203_0029,
            0x5eed_2026_1203_0031,
        ],
    }
}

/// Crash points of a backup run by the command line (plan, snapshot,
/// data and manifest stored, commit, bitmap rotation) and of retention.
const BACKUP_POINTS: [&str; 4] = [
    "backup.after-snapshot",
    "backup.after-manifest",
    "backup.before-commit",
    "backup.after-commit",
];
const RETENTION_POINTS: [&str; 5] = [
    "gc.after-claim",
    "gc.after-delete",
    "gc.after-relocated-delete",
    "compaction.before-switch",
    "compaction.after-switch",
];

/// Issue 17: backups of two instances of one project that share data
/// (cross-disk dedup on full reads), deletes, retention passes with
/// compaction, and kill -9 at every crash point of a backup and of a
/// pass, in a random order: after each step a backup the catalog calls
/// available restores bit-exact; at the end all of them do, the store
/// matches the catalog, and a catalog rebuilt from the store alone brings
/// every one of them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomised_backups_deletes_passes_and_crashes_lose_nothing() {
    for (n, seed) in story_seeds().into_iter().enumerate() {
        if !crash_story(n, seed).await {
            return;
        }
    }
}

async fn crash_story(n: usize, seed: u64) -> bool {
    let project = format!("proj-rnd{n}");
    let Some(x) = setup(
        &project,
        16,
        "[retention]\ngc_grace_period = 0\ncompaction_threshold = 0.8\nscrub_percentage = 0\n\
         [backup]\njob_timeout = 0\njob_stall_timeout = 0\nchunk_size = 64K\nsegment_size = 1M",
    )
    .await
    else {
        return false;
    };
    eprintln!("randomised retention: EKKO_TEST_SEED={seed}");
    let mut rng = Rng(seed);
    // A second instance of the project: what it shares with the first is
    // reused by its full reads.
    let ydir = x.dir.path().join("qsd-y");
    std::fs::create_dir_all(&ydir).unwrap();
    let yq = crate::qsd::Qsd::start(&ydir, &[16 * MIB]);
    let mut yreq = x.req.clone();
    yreq.qmp_socket = yq.qmp_socket.clone();
    yreq.instance_id = format!("{}-y", x.req.instance_id);
    let disks = [&x.qsd, &yq];
    let reqs = [&x.req, &yreq];
    let sockets: Vec<String> = disks
        .iter()
        .map(|q| q.qmp_socket.display().to_string())
        .collect();
    let backup_args = |i: usize| -> Vec<String> {
        let mut a: Vec<String> = ["backup", "--qmp-socket", &sockets[i], "--instance"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend([
            reqs[i].instance_id.clone(),
            "--project".into(),
            project.clone(),
        ]);
        if rng_full(i) {
            a.push("--full".into());
        }
        a
    };
    // Backups that must restore, with the image each must give back.
    let mut kept: Vec<(String, std::path::PathBuf)> = Vec::new();
    let mut log = Vec::new();
    let mut writes = 0u64;
    for step in 0..20 {
        let op = if kept.is_empty() { 0 } else { rng.below(11) };
        let i = rng.below(2) as usize;
        match op {
            0..=3 => {
                for _ in 0..=rng.below(3) {
                    writes += 1;
                    let at = rng.below(16 * 16) * 64 * 1024;
                    let len = (1 + rng.below(32)).min(256 - at / (64 * 1024)) * 64 * 1024;
                    // Often both instances get the same data.
                    let both = rng.below(2) == 0;
                    for (j, q) in disks.iter().enumerate() {
                        if j != i && !both {
                            continue;
                        }
                        if rng.below(5) == 0 {
                            q.write_zeroes(0, at, len);
                        } else {
                            q.write(0, at, &pattern(seed ^ writes, len));
                        }
                    }
                }
                let mut req = reqs[i].clone();
                req.full = rng.below(3) == 0;
                let b = backup_instance(&x.ekko, &req).await.unwrap().backup;
                let snap = x.dir.path().join(format!("rnd-{step}.raw"));
                disks[i].snapshot_to(0, &snap);
                log.push(format!("{step}: backup {i} {} ({:?})", b.id, b.kind));
                kept.push((b.id, snap));
            }
            4 | 5 => {
                disks[i].write(0, rng.below(15) * MIB, &pattern(seed ^ 0xbad ^ step, MIB));
                let point = BACKUP_POINTS[rng.below(BACKUP_POINTS.len() as u64) as usize];
                let args = backup_args(i);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let how = run_with_failpoint(&x, point, &args);
                assert_eq!(how, "killed", "a backup reaches {point}");
                log.push(format!("{step}: backup {i} killed at {point}"));
            }
            6 | 7 => {
                let (id, _) = kept.remove(rng.below(kept.len() as u64) as usize);
                ekko::service::backups::delete_backup(&x.ekko, &id)
                    .await
                    .unwrap();
                log.push(format!("{step}: delete {id}"));
            }
            8 => {
                let r = ekko::retention::run_pass(&x.ekko, false).await.unwrap();
                log.push(format!("{step}: pass {r:?}"));
            }
            _ => {
                let point = RETENTION_POINTS[rng.below(RETENTION_POINTS.len() as u64) as usize];
                let how = run_with_failpoint(&x, point, &["retention"]);
                log.push(format!("{step}: pass with {point}: {how}"));
            }
        }
        // After every step, one backup that must exist restores bit-exact.
        if !kept.is_empty() {
            let (id, snap) = &kept[rng.below(kept.len() as u64) as usize];
            let what = format!("seed {seed}, after {}", log.join("; "));
            restore_matches(&x, id, snap, &what).await;
        }
    }
    // The end of the story: a last backup of each instance (it also fails
    // the job of a backup killed last), claims of killed passes run out,
    // two clean passes.
    for i in 0..2 {
        disks[i].write(0, 0, &pattern(seed ^ 0xe4d ^ i as u64, MIB));
        let b = backup_instance(&x.ekko, reqs[i]).await.unwrap().backup;
        let snap = x.dir.path().join(format!("rnd-last-{i}.raw"));
        disks[i].snapshot_to(0, &snap);
        kept.push((b.id, snap));
    }
    expire_claims(&x.db).await;
    for _ in 0..2 {
        ekko::retention::run_pass(&x.ekko, false).await.unwrap();
    }
    let what = format!("seed {seed}: {}", log.join("; "));
    eprintln!("{}", log.join("\n"));
    for (id, snap) in &kept {
        restore_matches(&x, id, snap, &what).await;
    }
    assert_store_matches_catalog(&x).await;
    let statuses: HashSet<String> = rows(&x.db).await.into_iter().map(|r| r.1).collect();
    assert!(
        !statuses.contains("deleting") && !statuses.contains("condemned"),
        "{statuses:?} {what}"
    );
    let unreferenced =
        x.db.run(|c| ekko::db::segments::unreferenced(c, chrono::Utc::now().naive_utc(), 10))
            .await
            .unwrap();
    assert!(unreferenced.is_empty(), "{unreferenced:?} {what}");
    // Manifests: exactly those of the backups that exist.
    let manifests: HashSet<String> = x
        .ekko
        .store
        .list(&x.container, "manifests/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    let available: HashSet<String> =
        x.db.run(|c| {
            use ekko::db::schema::backups as b;
            Ok(b::table
                .filter(b::status.eq("available"))
                .select(b::id)
                .load::<String>(c)?)
        })
        .await
        .unwrap()
        .iter()
        .map(|id| ekko::manifest::object_name(id))
        .collect();
    assert_eq!(manifests, available, "{what}");
    // The catalog is lost: one rebuilt from the store alone knows every
    // backup that was available, and they restore.
    let fresh = crate::helpers::mariadb_db().expect("MariaDB");
    fresh.db.sync().unwrap();
    let mut config = (*x.ekko.config).clone();
    config.database.connection = fresh.url.clone();
    let rebuilt = ekko::Ekko::connect(config, ekko::ekko::Catalog::Required)
        .await
        .unwrap();
    let report = ekko::rebuild::rebuild(&rebuilt).await.unwrap();
    assert!(report.skipped.is_empty(), "{:?} {what}", report.skipped);
    assert_eq!(report.backups, available.len(), "{what}");
    for (id, snap) in &kept {
        let out = x.dir.path().join(format!("rebuilt-{id}.raw"));
        restore_backup(&rebuilt, id, None, &out, TargetFormat::Raw, None)
            .await
            .unwrap_or_else(|e| panic!("rebuilt {id}: {e:#} {what}"));
        assert!(identical(&out, snap), "rebuilt {id}: {what}");
        std::fs::remove_file(&out).unwrap();
    }
    true
}

/// Whether a killed command-line backup of instance `i` asks for a full read.
fn rng_full(i: usize) -> bool {
    i == 1
}

/// Issue 17 #1: a backup that reuses chunks of another disk's head (a full
/// read's cross-disk dedup) keeps them alive while it runs: compaction of
/// that head's segments, after the head stopped counting, must not drop
/// them, or the backup commits on chunks that are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_backup_keeps_the_chunks_it_reuses_through_compaction() {
    use ekko::db::instances;
    use ekko::hypervisor::qmp::{QmpHypervisor, QmpInstance};
    use ekko::hypervisor::{Hypervisor, LocalInstance};
    let Some(x) = setup(
        "proj-pin",
        8,
        "[retention]\ngc_grace_period = 0\ncompaction_threshold = 0.9\nscrub_percentage = 0\n\
         [backup]\njob_timeout = 0\njob_stall_timeout = 0\nchunk_size = 64K\nsegment_size = 4M",
    )
    .await
    else {
        return;
    };
    // X: A then B. Y (another instance of the project): A then C.
    x.qsd.write(0, 0, &pattern(1, 4 * MIB));
    x.qsd.write(0, 4 * MIB, &pattern(2, 4 * MIB));
    let b1 = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
    let ydir = x.dir.path().join("qsd-y");
    std::fs::create_dir_all(&ydir).unwrap();
    let yq = crate::qsd::Qsd::start(&ydir, &[8 * MIB]);
    yq.write(0, 0, &pattern(1, 4 * MIB));
    yq.write(0, 4 * MIB, &pattern(3, 4 * MIB));
    let y_snap = x.dir.path().join("y.raw");
    yq.snapshot_to(0, &y_snap);

    // Y's first backup is planned now: a full read that may reuse X's head.
    let host = x.ekko.config.default.host.clone();
    let y = LocalInstance {
        id: "inst-y".into(),
        project_id: "proj-pin".into(),
        name: "y".into(),
    };
    let hv = QmpHypervisor::single(QmpInstance {
        instance: y.clone(),
        qmp_socket: yq.qmp_socket.clone(),
        agent_socket: None,
    });
    let disks: Vec<instances::DiskReport> = hv
        .disks(&y)
        .await
        .unwrap()
        .iter()
        .map(|d| instances::DiskReport {
            device: d.device.clone(),
            node_name: d.node_name.clone(),
            virtual_size: d.virtual_size as i64,
        })
        .collect();
    let opts = ekko::service::backups::PlanOptions::of(&x.ekko);
    let new = ekko::service::backups::NewBackup {
        instance_id: y.id.clone(),
        user_id: "u".into(),
        name: "y".into(),
        description: String::new(),
        mode: "auto".into(),
        metadata: "{}".into(),
        policy_id: None,
    };
    let h = host.clone();
    let (yb, job, message) =
        x.db.run(move |c| {
            instances::upsert(
                c,
                "inst-y",
                "proj-pin",
                &h,
                "y",
                &disks,
                instances::MOVE_ALWAYS,
            )?;
            let planned = ekko::service::backups::plan(c, &opts, &new, &Default::default())?;
            ekko::service::jobs::job_started(
                c,
                &ekko::wire::JobStarted {
                    job_id: planned.1.id.clone(),
                    host: h.clone(),
                    attempt: 1,
                },
            )?;
            Ok(planned)
        })
        .await
        .unwrap();
    assert!(
        !message.dedup_sources.is_empty(),
        "X's head is a dedup source"
    );

    // Meanwhile X's A is rewritten and backed up; B1 is deleted: its
    // segments are half dead (B stays used by B2) and get compacted.
    x.qsd.write(0, 0, &pattern(4, 4 * MIB));
    let b2 = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
    assert_eq!(b2.kind.as_deref(), Some("incremental"));
    ekko::service::backups::delete_backup(&x.ekko, &b1.id)
        .await
        .unwrap();
    let pass = ekko::retention::run_pass(&x.ekko, false).await.unwrap();
    let _ = pass;

    // Y's job runs and commits now, reusing A from B1's segments.
    let executed = ekko::execution::back_up(&x.ekko, &hv, &y, &message, &yb.id, None)
        .await
        .unwrap();
    let finished = executed.finished.clone();
    let committed =
        x.db.run(move |c| ekko::service::reports::job_finished(c, &finished))
            .await;
    let _ = executed.snapshot.commit().await;
    let yb = committed.unwrap_or_else(|e| panic!("job {}: {e}", job.id));
    assert_eq!(yb.status, ekko::status::BackupStatus::Available);
    // Another pass after the job ended: nothing Y uses may go now either.
    expire_claims(&x.db).await;
    ekko::retention::run_pass(&x.ekko, false).await.unwrap();
    restore_matches(&x, &yb.id, &y_snap, "Y's backup").await;
    let report = verify_backup(&x.ekko, &yb.id, None).await.unwrap();
    assert!(report.iter().all(|(_, s)| s.bad.is_empty()), "Y verifies");
}

/// Issue 17 #6, defence in depth: a record of impossible shape in the
/// catalog (chunk size 0; the conductor refuses such reports) leaves the
/// segments it uses uncompacted (never compacted on a guess) — no
/// division by zero, no panic of ekko-retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_impossible_shape_is_not_compacted_and_nothing_panics() {
    let Some(x) = setup(
        "proj-shape",
        8,
        "[retention]\ngc_grace_period = 0\ncompaction_threshold = 0.9\nscrub_percentage = 0\n\
         [backup]\njob_timeout = 0\njob_stall_timeout = 0\nchunk_size = 64K\nsegment_size = 4M",
    )
    .await
    else {
        return;
    };
    x.qsd.write(0, 0, &pattern(7, 2 * MIB));
    let b = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
    let id = b.id.clone();
    x.db.run(move |c| {
        use ekko::db::schema::backup_disks as bd;
        diesel::update(bd::table.filter(bd::backup_id.eq(&id)))
            .set(bd::chunk_size.eq(0))
            .execute(c)?;
        ekko::db::segments::lost_a_user(c, &id)
    })
    .await
    .unwrap();
    let e = x.ekko.clone();
    let pass = tokio::spawn(async move { ekko::retention::run_pass(&e, false).await })
        .await
        .expect("no panic");
    let report = pass.expect("the pass goes on: the segments are not compacted on a guess");
    assert_eq!(report.segments_compacted, 0, "{report:?}");
}
