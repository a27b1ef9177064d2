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
fn sample_file_matches_the_code() {
    let out = run(bin("ekko-manage").args(["config", "sample"]));
    assert!(out.status.success(), "{}", text(&out));
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/etc/ekko/ekko.conf.sample"
    ))
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == committed,
        "etc/ekko/ekko.conf.sample is stale: run `ekko-manage config sample --output etc/ekko/ekko.conf.sample`"
    );
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
        &format!("{common}[database]\nconnection = {}\n", t.url),
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

/// An operator's session on the embedded default (SQLite, local store):
/// full then incremental backup of a live instance, list, restore each
/// bit-exact, verify, delete.
#[test]
fn operator_backs_up_restores_verifies_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let q = crate::qsd::Qsd::start(dir.path(), &[64 << 20]);
    let state = dir.path().join("state");
    let conf = write_conf(
        dir.path(),
        "ekko.conf",
        &format!("[DEFAULT]\nstate_path = {}\n", state.display()),
    );
    let cf = conf.to_str().unwrap();
    let ekko = |args: &[&str]| {
        let out = run(bin("ekko").arg("--config-file").arg(cf).args(args));
        (out.status.success(), text(&out))
    };
    let (ok, msg) = ekko(&["init"]);
    assert!(ok, "{msg}");
    let mut rng = crate::extract::Rng::new(5);
    q.write(0, 0, &rng.bytes(8 << 20));
    let sock = q.qmp_socket.to_str().unwrap().to_string();
    let backup = |extra: &[&str]| {
        let mut args = vec![
            "backup",
            "--qmp-socket",
            &sock,
            "--instance",
            "inst-1",
            "--project",
            "proj-a",
        ];
        args.extend_from_slice(extra);
        let (ok, msg) = ekko(&args);
        assert!(ok, "{msg}");
        msg.split_whitespace().nth(1).unwrap().to_string()
    };
    let first = backup(&[]);
    let ref1 = dir.path().join("ref1.raw");
    q.snapshot_to(0, &ref1);
    q.write(0, 30 << 20, &rng.bytes(1 << 20));
    let second = backup(&[]);
    let ref2 = dir.path().join("ref2.raw");
    q.snapshot_to(0, &ref2);

    let (ok, list) = ekko(&["list"]);
    assert!(
        ok && list.contains(&first) && list.contains(&second),
        "{list}"
    );
    assert!(
        list.contains("full") && list.contains("incremental"),
        "{list}"
    );
    for (id, reference) in [(&second, &ref2), (&first, &ref1)] {
        let out = dir.path().join(format!("{id}.raw"));
        let (ok, msg) = ekko(&["restore", id, "--output", out.to_str().unwrap()]);
        assert!(ok, "{msg}");
        assert!(
            crate::qsd::identical(&out, reference),
            "backup {id} restores bit-exact"
        );
        let (ok, msg) = ekko(&["verify", id]);
        assert!(ok && msg.contains("0 damaged"), "{msg}");
    }
    // Delete the full backup: the incremental still restores on its own.
    let (ok, msg) = ekko(&["delete", &first]);
    assert!(ok, "{msg}");
    let out = dir.path().join("again.raw");
    let (ok, msg) = ekko(&["restore", &second, "--output", out.to_str().unwrap()]);
    assert!(ok, "{msg}");
    assert!(crate::qsd::identical(&out, &ref2));
    let (ok, msg) = ekko(&["restore", &first, "--output", out.to_str().unwrap()]);
    assert!(
        !ok && msg.contains("deleted"),
        "a deleted backup is not restored: {msg}"
    );
    // A third backup still builds on the (pinned) head.
    q.write(0, 50 << 20, &rng.bytes(4096));
    let third = backup(&[]);
    let (ok, list) = ekko(&["list"]);
    assert!(ok && list.contains(&third), "{list}");
}
