//! The binaries as an operator runs them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{mariadb_db, rabbit_lock, service_env};

fn bin(name: &str) -> Command {
    let path = match name {
        "ekko" => env!("CARGO_BIN_EXE_ekko"),
        "ekko-manage" => env!("CARGO_BIN_EXE_ekko-manage"),
        "ekko-api" => env!("CARGO_BIN_EXE_ekko-api"),
        "ekko-backup" => env!("CARGO_BIN_EXE_ekko-backup"),
        "ekko-retention" => env!("CARGO_BIN_EXE_ekko-retention"),
        "ekko-status" => env!("CARGO_BIN_EXE_ekko-status"),
        other => panic!("no binary {other}"),
    };
    let mut c = Command::new(path);
    // The test's own EKKO__* variables must not leak into the binaries.
    for (k, _) in std::env::vars() {
        if k.starts_with("EKKO__") {
            c.env_remove(k);
        }
    }
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_conf(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn sample_files_match_the_code() {
    for (what, file) in [
        ("config", "etc/ekko/ekko.conf.sample"),
        ("policy", "etc/ekko/policy.yaml.sample"),
    ] {
        let out = run(bin("ekko-manage").args([what, "sample"]));
        assert!(out.status.success(), "{}", text(&out));
        let committed =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout) == committed,
            "{file} is stale: run `ekko-manage {what} sample --output {file}`"
        );
    }
}

#[test]
fn embedded_default_initialises_and_services_check_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_conf(
        dir.path(),
        "ekko.conf",
        &format!("[DEFAULT]\nstate_path = {}\n", dir.path().display()),
    );
    let cf = conf.to_str().unwrap();

    // A service refuses a database that was never synced, and says why.
    let out = run(bin("ekko-retention").args(["--config-file", cf]));
    assert!(!out.status.success());
    assert!(text(&out).contains("ekko-manage db sync"), "{}", text(&out));

    let out = run(bin("ekko").args(["--config-file", cf, "init"]));
    assert!(out.status.success(), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    for line in ["catalog", "store", "queue", "applied"] {
        assert!(report.contains(line), "{report}");
    }
    assert!(dir.path().join("ekko.sqlite").is_file());
    assert!(dir.path().join("store").is_dir());
    let out = run(bin("ekko-manage").args(["--config-file", cf, "db", "version"]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("up to date"));
}

#[test]
fn configuration_errors_name_file_section_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_conf(
        dir.path(),
        "ekko.conf",
        "[DEFAULT]\ndebug = false\n\n[backup]\nchunk_sise = 1M\n",
    );
    let out =
        run(bin("ekko-manage").args(["--config-file", conf.to_str().unwrap(), "config", "check"]));
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains(&format!("{}:5", conf.display()))
            && msg.contains("[backup]")
            && msg.contains("chunk_sise"),
        "{msg}"
    );

    let conf = write_conf(dir.path(), "bad.conf", "[api]\nbind_port = eighty\n");
    let out =
        run(bin("ekko-manage").args(["--config-file", conf.to_str().unwrap(), "config", "check"]));
    let msg = text(&out);
    assert!(
        !out.status.success() && msg.contains("bind_port") && msg.contains("bad.conf"),
        "{msg}"
    );

    let out = run(bin("ekko-manage").args([
        "--config-file",
        "/nonexistent/ekko.conf",
        "config",
        "check",
    ]));
    assert!(!out.status.success() && text(&out).contains("/nonexistent/ekko.conf"));
}

fn terminate(child: &mut Child) -> bool {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    false
}

/// ekko-backup (no database credentials) heartbeats over RabbitMQ; the
/// conductor in ekko-api records it in MariaDB; both stop on SIGTERM.
#[test]
fn host_heartbeats_reach_the_catalog_through_rabbitmq() {
    let _guard = rabbit_lock();
    let Some(amqp) = service_env("EKKO_AMQP_URL") else {
        return;
    };
    let Some(t) = mariadb_db() else { return };
    t.db.sync().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = format!(
        "compute-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let exchange = format!("ekko-test-{host}");
    let common = format!(
        "[DEFAULT]\ntransport_url = {amqp}\ncontrol_exchange = {exchange}\nstate_path = {}\n",
        dir.path().display()
    );
    let api_conf = write_conf(
        dir.path(),
        "api.conf",
        &format!(
            "{common}[database]\nconnection = {}\n[api]\nauth_strategy = noauth\nbind_host = 127.0.0.1\nbind_port = {}\n",
            t.url,
            crate::helpers::free_port()
        ),
    );
    let host_conf = write_conf(
        dir.path(),
        "host.conf",
        &format!("{common}host = {host}\n[backup]\nheartbeat_interval = 1\n"),
    );
    let mut api = bin("ekko-api")
        .args(["--config-file", api_conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut worker = bin("ekko-backup")
        .args(["--config-file", host_conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = false;
    while Instant::now() < deadline && !seen {
        let mut c = t.db.conn().unwrap();
        seen = ekko::db::hosts::list(&mut c)
            .unwrap()
            .iter()
            .any(|h| h.name == host);
        std::thread::sleep(Duration::from_millis(250));
    }
    let worker_ok = terminate(&mut worker);
    let api_ok = terminate(&mut api);
    assert!(seen, "heartbeat of {host} never reached the catalog");
    assert!(worker_ok && api_ok, "services must exit cleanly on SIGTERM");
}

/// The README's first command: the main job on the embedded default.
#[test]
fn demo_backs_up_incrementally_and_restores_identically() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("demo");
    let out = run(bin("ekko")
        .args(["demo", "--size-mib", "64", "--dir"])
        .arg(&work)
        .env("EKKO__DEFAULT__STATE_PATH", dir.path()));
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    for needle in ["full", "incremental", "restore", "identical"] {
        assert!(report.contains(needle), "{report}");
    }
}

/// An operator with the `ekko` command line on the embedded default
/// (SQLite, local store) and one live instance with a 64 MiB disk.
struct Operator {
    dir: tempfile::TempDir,
    q: crate::qsd::Qsd,
    conf: PathBuf,
    rng: crate::extract::Rng,
}

impl Operator {
    fn start(seed: u64) -> Operator {
        let dir = tempfile::tempdir().unwrap();
        let q = crate::qsd::Qsd::start(dir.path(), &[64 << 20]);
        let state = dir.path().join("state");
        let conf = write_conf(
            dir.path(),
            "ekko.conf",
            &format!("[DEFAULT]\nstate_path = {}\n", state.display()),
        );
        let op = Operator {
            dir,
            q,
            conf,
            rng: crate::extract::Rng::new(seed),
        };
        let (ok, msg) = op.ekko(&["init"]);
        assert!(ok, "{msg}");
        op
    }

    fn run(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
        let mut cmd = bin(name);
        cmd.arg("--config-file").arg(&self.conf).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = run(&mut cmd);
        (out.status.success(), text(&out))
    }

    fn ekko(&self, args: &[&str]) -> (bool, String) {
        self.run("ekko", args, &[])
    }

    /// Run `f` on an [`ekko::Ekko`] of the operator's configuration.
    fn with_ekko<F, Fut>(&self, f: F)
    where
        F: FnOnce(ekko::Ekko) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let config =
            ekko::config::EkkoConfig::load(std::slice::from_ref(&self.conf), std::iter::empty())
                .unwrap();
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let ekko = ekko::Ekko::connect(config, ekko::ekko::Catalog::Required)
                .await
                .unwrap();
            f(ekko).await
        });
    }

    /// The local store's objects.
    fn objects(&self) -> usize {
        walkdir_count(&self.dir.path().join("state/store"))
    }

    /// The database is lost. Before any rebuild, the orphan sweep (even
    /// with no grace) leaves alone the projects the empty catalog never
    /// recorded. Then a rebuild is killed after its first backup: the
    /// catalog knows part of the store, and until it is redone nothing
    /// deletes objects (the sweep would take every other backup), a second
    /// rebuild and `ekko-status` say what to do; the caller redoes it.
    fn interrupted_rebuild_deletes_nothing(&self) {
        std::fs::remove_file(self.dir.path().join("state/ekko.sqlite")).unwrap();
        let (ok, msg) = self.run("ekko-manage", &["db", "sync"], &[]);
        assert!(ok, "{msg}");
        let before = self.objects();
        self.with_ekko(|ekko| async move {
            let swept = ekko::retention::sweep_orphans(&ekko, Duration::ZERO).await;
            assert_eq!(swept.unwrap(), (0, 0), "an unknown project is not swept");
        });
        assert_eq!(self.objects(), before, "nothing was deleted");

        let killed = [("EKKO_FAILPOINT", "rebuild.after-backup")];
        let (ok, msg) = self.run("ekko-manage", &["catalog", "rebuild"], &killed);
        assert!(!ok, "the failpoint kills the rebuild: {msg}");
        let (ok, msg) = self.run("ekko-manage", &["catalog", "rebuild"], &[]);
        assert!(!ok && msg.contains("has not finished"), "{msg}");
        let out = run(bin("ekko-status")
            .arg("--config-file")
            .arg(&self.conf)
            .args(["upgrade", "check"]));
        let report = text(&out);
        assert_eq!(out.status.code(), Some(2), "{report}");
        assert!(
            report.contains("Check: Catalog rebuild") && report.contains("has not finished"),
            "{report}"
        );
        self.with_ekko(|ekko| async move {
            let swept = ekko::retention::sweep_orphans(&ekko, Duration::ZERO).await;
            assert!(
                swept.unwrap_err().to_string().contains("has not finished"),
                "the sweep refuses"
            );
            let refused = |r: anyhow::Result<ekko::retention::PassReport>| {
                r.is_err_and(|e| e.to_string().contains("has not finished"))
            };
            let pass = ekko::retention::run_pass(&ekko, false).await;
            assert!(refused(pass), "retention refuses");
            let gc = ekko::retention::collect_garbage(&ekko, Duration::ZERO).await;
            assert!(refused(gc), "garbage collection refuses");
        });
        assert_eq!(self.objects(), before, "nothing was deleted");
    }

    /// A rebuild that died while reading the store (it committed nothing)
    /// left its mark: the next one takes over.
    fn rebuild_died_reading(&self) {
        self.with_ekko(|ekko| async move {
            ekko.db()
                .unwrap()
                .run(|c| ekko::db::catalog_rebuilds::begin(c, "primary", "gone:1"))
                .await
                .unwrap();
        });
    }

    fn backup_args(&self) -> Vec<String> {
        backup_args(&self.q.qmp_socket, "inst-1", "proj-a")
    }

    /// Back up the instance; returns the new backup's id.
    fn backup(&self) -> String {
        self.backup_of(&self.q.qmp_socket, "inst-1", "proj-a")
    }

    /// Back up the instance behind `qmp` as `instance` of `project`.
    fn backup_of(&self, qmp: &Path, instance: &str, project: &str) -> String {
        let args = backup_args(qmp, instance, project);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, msg) = self.ekko(&args);
        assert!(ok, "{msg}");
        msg.split_whitespace().nth(1).unwrap().to_string()
    }

    /// Bytes a backup stored (the last column of `list`).
    fn stored_bytes(&self, id: &str) -> u64 {
        let line = self.listed(id).unwrap();
        line.split_whitespace().last().unwrap().parse().unwrap()
    }

    /// Write `len` random bytes at `offset` of the live disk.
    fn write(&mut self, offset: u64, len: usize) {
        let data = self.rng.bytes(len);
        self.q.write(0, offset, &data);
    }

    /// The disk as it is now, saved as `name`.
    fn snapshot(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        self.q.snapshot_to(0, &p);
        p
    }

    fn assert_restores(&self, id: &str, reference: &Path) {
        let out = self.dir.path().join(format!("{id}.raw"));
        let (ok, msg) = self.ekko(&["restore", id, "--output", out.to_str().unwrap()]);
        assert!(ok, "{msg}");
        assert!(
            crate::qsd::identical(&out, reference),
            "backup {id} restores bit-exact"
        );
        let (ok, msg) = self.ekko(&["verify", id]);
        assert!(ok && msg.contains("0 damaged"), "{msg}");
        std::fs::remove_file(out).unwrap();
    }

    /// The `list` line of a backup.
    fn listed(&self, id: &str) -> Option<String> {
        let (ok, list) = self.ekko(&["list"]);
        assert!(ok, "{list}");
        list.lines().find(|l| l.contains(id)).map(String::from)
    }
}

fn backup_args(qmp: &Path, instance: &str, project: &str) -> Vec<String> {
    [
        "backup",
        "--qmp-socket",
        qmp.to_str().unwrap(),
        "--instance",
        instance,
        "--project",
        project,
    ]
    .map(String::from)
    .to_vec()
}

/// Instances booted from one image: the second instance's first (full)
/// backup reuses the first's chunks, in the same project only.
#[test]
fn instances_from_one_image_dedup_within_a_project_only() {
    let mut op = Operator::start(8);
    op.write(0, 12 << 20);
    let first = op.backup();
    let image = std::fs::read(op.snapshot("image.raw")).unwrap();
    let dir2 = op.dir.path().join("inst2");
    std::fs::create_dir_all(&dir2).unwrap();
    let q2 = crate::qsd::Qsd::start(&dir2, &[64 << 20]);
    q2.write(0, 0, &image[..16 << 20]);
    q2.write(0, 40 << 20, &op.rng.bytes(256 << 10)); // its own change
    let ref2 = dir2.join("ref.raw");
    q2.snapshot_to(0, &ref2);

    let same_project = op.backup_of(&q2.qmp_socket, "inst-2", "proj-a");
    let other_project = op.backup_of(&q2.qmp_socket, "inst-2b", "proj-b");
    let (full, shared, foreign) = (
        op.stored_bytes(&first),
        op.stored_bytes(&same_project),
        op.stored_bytes(&other_project),
    );
    assert!(full > 8 << 20, "{full}");
    assert!(
        shared < (1 << 20),
        "the same image in the same project stores only what differs: {shared} of {full}"
    );
    assert!(
        foreign >= full,
        "no dedup across projects: {foreign} vs {full}"
    );
    op.assert_restores(&same_project, &ref2);
    op.assert_restores(&other_project, &ref2);
}

/// An operator's session: full then incremental backup of a live instance,
/// list, restore each bit-exact, verify, delete.
#[test]
fn operator_backs_up_restores_verifies_and_deletes() {
    let mut op = Operator::start(5);
    op.write(0, 8 << 20);
    let first = op.backup();
    let ref1 = op.snapshot("ref1.raw");
    op.write(30 << 20, 1 << 20);
    let second = op.backup();
    let ref2 = op.snapshot("ref2.raw");

    assert!(op.listed(&first).unwrap().contains("full"));
    assert!(op.listed(&second).unwrap().contains("incremental"));
    // The timeline: one row per backup, the incremental's bar mostly
    // unchanged data.
    let (ok, chart) = op.ekko(&["timeline", "--instance", "inst-1", "--width", "30"]);
    assert!(ok, "{chart}");
    let rows: Vec<&str> = chart
        .lines()
        .filter(|l| l.starts_with("20") && l.contains("MiB"))
        .collect();
    assert_eq!(rows.len(), 2, "{chart}");
    assert!(
        rows[0].contains("full") && rows[1].contains("incremental"),
        "{chart}"
    );
    assert!(
        rows[1].contains('░') && rows[1].matches('█').count() < 5,
        "{chart}"
    );
    op.assert_restores(&second, &ref2);
    op.assert_restores(&first, &ref1);
    // Delete the full backup: the incremental still restores on its own.
    let (ok, msg) = op.ekko(&["delete", &first]);
    assert!(ok, "{msg}");
    op.assert_restores(&second, &ref2);
    let out = op.dir.path().join("again.raw");
    let (ok, msg) = op.ekko(&["restore", &first, "--output", out.to_str().unwrap()]);
    assert!(
        !ok && msg.contains("deleted"),
        "a deleted backup is not restored: {msg}"
    );
    // A third backup still builds on the (pinned) head.
    op.write(50 << 20, 4096);
    let third = op.backup();
    assert!(op.listed(&third).unwrap().contains("incremental"));
}

/// The process dies (SIGKILL) after every segment and the manifest are in
/// the store but before the catalog commit: no backup becomes visible, the
/// bitmaps roll back, and the next backup is complete and correct.
#[test]
fn crash_between_upload_and_commit_leaves_no_backup() {
    let mut op = Operator::start(6);
    op.write(0, 4 << 20);
    let first = op.backup();
    let ref1 = op.snapshot("ref1.raw");
    op.write(20 << 20, 2 << 20);
    let args = op.backup_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, msg) = op.run("ekko", &args, &[("EKKO_FAILPOINT", "backup.before-commit")]);
    assert!(!ok, "the failpoint kills the backup: {msg}");
    let (ok, list) = op.ekko(&["list"]);
    assert!(ok, "{list}");
    let visible: Vec<&str> = list.lines().filter(|l| l.contains("available")).collect();
    assert_eq!(visible.len(), 1, "only the first backup is visible: {list}");
    assert!(visible[0].contains(&first), "{list}");

    // More writes, then the next backup: it must hold every write since
    // the first backup (the crashed one's bitmap state was rolled back).
    op.write(40 << 20, 64 << 10);
    let next = op.backup();
    let ref_next = op.snapshot("next.raw");
    assert!(op.listed(&next).unwrap().contains("available"));
    op.assert_restores(&next, &ref_next);
    op.assert_restores(&first, &ref1);
    // The crashed backup is reported as failed, and its manifest is gone
    // from the store, so a catalog rebuild will not bring it back.
    let (ok, list) = op.ekko(&["list"]);
    assert!(ok && list.contains("error"), "{list}");
    let manifests = op.dir.path().join("state/store/ekko-proj-a/manifests");
    let count = std::fs::read_dir(&manifests)
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("{}: {e}", manifests.display()));
    assert_eq!(count, 2, "manifests of the two committed backups only");

    // For programs: JSON output and exit statuses that say what happened.
    let status = |args: &[&str]| {
        let out = run(bin("ekko").arg("--config-file").arg(&op.conf).args(args));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            text(&out),
        )
    };
    let (code, json, all) = status(&["list", "-f", "json"]);
    assert_eq!(code, Some(0), "{all}");
    let rows: serde_json::Value = serde_json::from_str(&json).expect("list -f json is JSON");
    let ids: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert!(
        ids.contains(&first.as_str()) && ids.contains(&next.as_str()),
        "{json}"
    );
    let (_, json, _) = status(&["list", "-f", "json", "--limit", "1"]);
    let one: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(one.as_array().unwrap().len(), 1, "{json}");
    let (code, json, all) = status(&["verify", &next, "-f", "json"]);
    assert_eq!(code, Some(0), "{all}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ok"], true, "{json}");
    let (code, json, _) = status(&["hosts", "-f", "json"]);
    assert_eq!(code, Some(0));
    assert!(serde_json::from_str::<serde_json::Value>(&json)
        .unwrap()
        .is_array());
    let missing = "00000000-0000-4000-8000-000000000000";
    assert_eq!(status(&["verify", missing]).0, Some(3), "not found");
    assert_eq!(status(&["delete", missing]).0, Some(3), "not found");
    assert_eq!(status(&["list", "--no-such-flag"]).0, Some(2), "usage");
}

/// The database is lost: `ekko-manage catalog rebuild` recreates the
/// catalog from the store alone; every backup restores bit-exact, a
/// deleted one stays deleted, and the next backup reads the whole disk.
#[test]
fn catalog_rebuilt_from_the_store_restores_bit_exact() {
    let mut op = Operator::start(7);
    op.write(0, 6 << 20);
    let first = op.backup();
    let ref1 = op.snapshot("ref1.raw");
    op.write(10 << 20, 1 << 20);
    let second = op.backup();
    op.write(33 << 20, 256 << 10);
    op.write(2 << 20, 4096);
    let third = op.backup();
    let ref3 = op.snapshot("ref3.raw");
    let (ok, msg) = op.ekko(&["delete", &second]);
    assert!(ok, "{msg}");

    // Lose the database; a rebuild is killed after its first backup.
    op.interrupted_rebuild_deletes_nothing();

    // Lose the database, create an empty one, rebuild.
    std::fs::remove_file(op.dir.path().join("state/ekko.sqlite")).unwrap();
    let (ok, msg) = op.run("ekko-manage", &["db", "sync"], &[]);
    assert!(ok, "{msg}");
    op.rebuild_died_reading();
    let (ok, msg) = op.run("ekko-manage", &["catalog", "rebuild"], &[]);
    assert!(
        ok && msg.contains("rebuilt 2 backup(s) of 1 project(s)"),
        "{msg}"
    );
    assert!(!msg.contains("skipped"), "{msg}");

    assert!(
        op.listed(&second).is_none(),
        "a deleted backup stays deleted"
    );
    assert!(op.listed(&first).unwrap().contains("full"));
    assert!(op.listed(&third).unwrap().contains("incremental"));
    op.assert_restores(&third, &ref3);
    op.assert_restores(&first, &ref1);

    // QEMU's bitmaps cannot be trusted against a rebuilt catalog: the next
    // backup is a full read, and correct.
    op.write(50 << 20, 128 << 10);
    let fourth = op.backup();
    let ref4 = op.snapshot("ref4.raw");
    assert!(op.listed(&fourth).unwrap().contains("full"));
    op.assert_restores(&fourth, &ref4);
    // Then incrementals resume on the rebuilt history.
    op.write(60 << 20, 64 << 10);
    let fifth = op.backup();
    let ref5 = op.snapshot("ref5.raw");
    assert!(op.listed(&fifth).unwrap().contains("incremental"));
    op.assert_restores(&fifth, &ref5);
    // A second rebuild into a non-empty catalog is refused.
    let (ok, msg) = op.run("ekko-manage", &["catalog", "rebuild"], &[]);
    assert!(!ok && msg.contains("empty catalog"), "{msg}");
}

/// Files under `dir` (a local store's objects).
fn walkdir_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walkdir_count(&e.path())
            } else {
                1
            }
        })
        .sum()
}
