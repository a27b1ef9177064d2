//! The distributed flow: tenants' API requests become jobs on the host that
//! runs the instance; worker crashes neither lose nor duplicate a backup.
//! It runs in public-key mode: host b holds only the host key, so every
//! backup it takes is one it cannot read; restores run on host a, the
//! restore side.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::{start_cluster, swift_segments, MIB};
use crate::helpers::rabbit_lock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The broker lock is held for the whole test on purpose: no broker restart
// may happen under it.
#[allow(clippy::await_holding_lock)]
async fn api_jobs_reach_the_right_host_and_survive_worker_crashes() {
    let _guard = rabbit_lock();
    let dir = tempfile::tempdir().unwrap();
    let Some(mut c) = start_cluster(dir.path(), None, true).await else {
        return;
    };
    let wait = Duration::from_secs(120);

    // A full backup of each instance, each run by its own host.
    for (i, h) in c.hosts.iter().enumerate() {
        h.qsd.write(0, 0, &vec![0x10 + i as u8; 3 * MIB as usize]);
        h.qsd
            .write(0, 40 * MIB, &vec![0x20 + i as u8; MIB as usize]);
    }
    let mut last = Vec::new();
    for h in &c.hosts {
        let b = c.member.backup(&h.instance, "auto", wait).await;
        assert_eq!(b["status"], "available", "{b}\n{}", h.worker.log());
        assert_eq!(b["kind"], "full", "{b}");
        assert!(b["stored_bytes"].as_i64().unwrap() > 0, "{b}");
        assert!(
            h.worker.log().contains(b["id"].as_str().unwrap()),
            "the job ran on {}",
            h.name
        );
        c.assert_restores(h, b["id"].as_str().unwrap(), &format!("full-{}", h.name));
        last.push(b["id"].as_str().unwrap().to_string());
    }
    assert!(swift_segments(&c.operator_conf).await >= 2);
    let other = &c.hosts[1];
    assert!(
        !other.worker.log().contains(&last[0]),
        "host b never saw host a's job"
    );

    // Each host is on the bus as its own user, held to its own keys.
    crate::cluster::assert_bus_refuses_host_a(&c).await;

    // Restores through the API: an operator (admin) action on the host;
    // a member may not write files on hosts.
    c.assert_api_restores(0, &last[0], "api-restore-a").await;
    let (s, v) = c
        .member
        .call(
            "POST",
            "/v1/restores",
            Some(json!({"restore": {"backup_id": last[0], "target": {"type": "file", "path": "x.raw"}}})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = c
        .admin
        .call(
            "POST",
            "/v1/restores",
            Some(json!({"restore": {"backup_id": last[0], "target": {"type": "file", "path": "../etc/passwd"}}})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = c
        .admin
        .call(
            "POST",
            "/v1/restores",
            Some(json!({"restore": {"backup_id": last[0], "target": {"type": "file", "path": "x.raw", "host": "nowhere"}}})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("nowhere"), "{v}");
    // A restore sent to host b, which has no master key, fails with the
    // reason and writes nothing.
    let (s, v) = c
        .admin
        .call(
            "POST",
            "/v1/restores",
            Some(json!({"restore": {"backup_id": last[1], "target": {"type": "file", "path": "on-b.raw", "host": c.hosts[1].name}}})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let rid = v["restore"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + wait;
    let failed = loop {
        let (_, v) = c
            .admin
            .call("GET", &format!("/v1/restores/{rid}"), None)
            .await;
        if v["restore"]["status"] == "error" || v["restore"]["status"] == "completed" {
            break v["restore"].clone();
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(failed["status"], "error", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or("")
            .contains("no master key"),
        "{failed}"
    );
    assert!(!dir.path().join("state-b/restores/on-b.raw").exists());

    // Restore files on a host are created exclusively and never through
    // a link: two restores to one path, one wins (its disk, bit-exact;
    // the loser removes nothing); a dangling link or a linked directory
    // under restore_dir is refused and nothing appears outside it.
    let restores = dir.path().join("state-a/restores");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&restores).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(outside.join("x.raw"), restores.join("x.raw")).unwrap();
    std::os::unix::fs::symlink(&outside, restores.join("d")).unwrap();
    for path in ["x.raw", "d/y.raw", "d/sub/z.qcow2"] {
        let v = api_restore(&c, &last[0], path, None, wait).await;
        assert_eq!(v["status"], "error", "{path}: {v}");
    }
    let escaped: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
    assert!(
        escaped.is_empty(),
        "written outside restore_dir: {escaped:?}"
    );
    let (first, second) = tokio::join!(
        api_restore(&c, &last[0], "both.raw", None, wait),
        api_restore(&c, &last[1], "both.raw", None, wait)
    );
    let done = [&first, &second];
    let won: Vec<usize> = (0..2)
        .filter(|&i| done[i]["status"] == "completed")
        .collect();
    assert_eq!(won.len(), 1, "exactly one restore wins: {first} {second}");
    let lost = done[1 - won[0]];
    assert_eq!(lost["status"], "error", "{lost}");
    let why = lost["error"].as_str().unwrap_or("");
    assert!(
        why.contains("exists") && why.contains("never overwrites"),
        "{lost}"
    );
    let reference = dir.path().join("both-ref.raw");
    c.hosts[won[0]].qsd.snapshot_to(0, &reference);
    let written = restores.join("both.raw");
    assert!(
        crate::qsd::identical(&reference, &written),
        "the file is the winner's disk"
    );
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    };
    assert_eq!(mode(&written), 0o600, "a restored disk is root's only");
    let a = &c.hosts[0];
    a.qsd.write(0, 8 * MIB, &vec![0x33; 512 * 1024]);
    let b = c.member.backup(&a.instance, "auto", wait).await;
    assert_eq!(b["status"], "available", "{b}");
    assert_eq!(b["kind"], "incremental", "{b}");
    assert!(b["read_bytes"].as_i64().unwrap() <= 2 * MIB as i64, "{b}");
    c.assert_restores(a, b["id"].as_str().unwrap(), "incr-a");

    // kill -9 of host a's worker after the data is stored, before it
    // reports: the broker redelivers the job to the restarted worker,
    // which runs it again; one backup, correct, bitmaps consistent.
    let a = &mut c.hosts[0];
    a.qsd.write(0, 20 * MIB, &vec![0x44; MIB as usize]);
    a.crash_before_next_report().await;
    let crashy = c.member.start_backup(&a.instance, "auto").await;
    let deadline = Instant::now() + wait;
    while !a.worker.exited() {
        assert!(Instant::now() < deadline, "the failpoint never fired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.worker.restart_with(&[]);
    let b = c
        .member
        .wait_for(&crashy, &["available", "error"], wait)
        .await;
    assert_eq!(b["status"], "available", "{b}\n{}", a.worker.log());
    let a = &c.hosts[0];
    c.assert_restores(a, &crashy, "redelivered-a");
    let listed = c.member.backups_of(&a.instance).await;
    assert_eq!(
        listed.len(),
        3,
        "exactly one backup per request: {listed:?}"
    );
    // The next incremental after the redelivery is still correct.
    a.qsd.write(0, 30 * MIB, &vec![0x55; MIB as usize]);
    let b = c.member.backup(&a.instance, "auto", wait).await;
    assert_eq!(b["status"], "available", "{b}");
    c.assert_restores(a, b["id"].as_str().unwrap(), "after-redelivery-a");

    // Host a's worker is killed after its outcome is on the bus, before
    // it records the job as done: the backup commits; the redelivered job
    // is not run a second time (its data and manifest would differ from
    // what the catalog committed): the kept outcome is handed on again.
    let ah = &mut c.hosts[0];
    ah.qsd.write(0, 12 * MIB, &vec![0x77; MIB as usize]);
    ah.worker
        .restart_with(&[("EKKO_FAILPOINT", "worker.after-report")]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = c.member.start_backup(&ah.instance, "auto").await;
    let b = c.member.wait_for(&kept, &["available"], wait).await;
    assert_eq!(b["status"], "available", "{b}");
    let deadline = Instant::now() + wait;
    while !ah.worker.exited() {
        assert!(
            Instant::now() < deadline,
            "the worker died at the failpoint"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let runs = |log: &str| log.matches("backup started").count();
    let started = runs(&ah.worker.log());
    ah.worker.restart_with(&[]);
    let ah = &c.hosts[0];
    while !ah.worker.log().contains("handing the same outcome on") {
        assert!(Instant::now() < deadline, "{}", ah.worker.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(runs(&ah.worker.log()), started, "the job did not run again");
    c.assert_restores(ah, &kept, "kept-outcome-a");

    // Host b's worker dies mid-job and stays down: the conductor fails the
    // job with a reason instead of leaving it running for ever.
    let bh = &mut c.hosts[1];
    bh.qsd.write(0, 10 * MIB, &vec![0x66; MIB as usize]);
    bh.crash_before_next_report().await;
    let lost = c.member.start_backup(&bh.instance, "auto").await;
    let b = c.member.wait_for(&lost, &["error"], wait).await;
    assert!(
        b["error"].as_str().unwrap().contains("stopped reporting"),
        "{b}"
    );
    // Back up: the redelivered job starts; the conductor, which failed it,
    // cancels it again: it is stopped, or its outcome is refused (the
    // backup already failed) and its manifest removed; the next backup of
    // host b is complete and correct.
    // (The log keeps earlier runs' lines: count the new ones.)
    let outcomes = |log: &str| {
        log.matches("backup stored and reported").count() + log.matches("cancel received").count()
    };
    let seen = outcomes(&bh.worker.log());
    bh.worker.restart_with(&[]);
    let bh = &c.hosts[1];
    let deadline = Instant::now() + wait;
    while outcomes(&bh.worker.log()) <= seen {
        assert!(Instant::now() < deadline, "{}", bh.worker.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    while !c.api.log().contains("work reported on an ended job") {
        assert!(
            Instant::now() < deadline,
            "the conductor cancels a failed job's redelivery: {}",
            c.api.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Cancel: a backup queued while host b's worker is down is cancelled
    // at once; the worker, back, does not run it (or stops it).
    let bh = &mut c.hosts[1];
    bh.worker.kill9();
    let b_cancels = bh.worker.log().matches("cancel received").count();
    let doomed = c.member.start_backup(&bh.instance, "auto").await;
    let (s, v) = c
        .member
        .call(
            "POST",
            &format!("/v1/backups/{doomed}/action"),
            Some(json!({"cancel": {}})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["backup"]["status"], "error", "{v}");
    assert!(
        v["backup"]["error"].as_str().unwrap().contains("cancelled"),
        "{v}"
    );
    let (s, _) = c
        .member
        .call(
            "POST",
            &format!("/v1/backups/{doomed}/action"),
            Some(json!({"cancel": {}})),
        )
        .await;
    assert_eq!(s, 409, "a finished backup cannot be cancelled");
    // A restore queued for host a (the restore side) while it is down: a
    // member may not cancel it (an operator action), the admin may, once.
    // Back up, host a drops it, stops it, or removes what it wrote.
    c.hosts[0].worker.kill9();
    let a_cancels = c.hosts[0].worker.log().matches("cancel received").count();
    let (s, v) = c
        .admin
        .call(
            "POST",
            "/v1/restores",
            Some(json!({"restore": {"backup_id": last[1], "format": "qcow2",
                                    "target": {"type": "file", "path": "never.qcow2", "host": c.hosts[0].name}}})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let stopped = v["restore"]["id"].as_str().unwrap().to_string();
    let cancel_restore = format!("/v1/restores/{stopped}/action");
    let (s, v) = c
        .member
        .call("POST", &cancel_restore, Some(json!({"cancel": {}})))
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = c
        .admin
        .call("POST", &cancel_restore, Some(json!({"nope": {}})))
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = c
        .admin
        .call("POST", &cancel_restore, Some(json!({"cancel": {}})))
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["restore"]["status"], "error", "{v}");
    assert!(
        v["restore"]["error"]
            .as_str()
            .unwrap()
            .contains("cancelled by user"),
        "{v}"
    );
    let (s, _) = c
        .admin
        .call("POST", &cancel_restore, Some(json!({"cancel": {}})))
        .await;
    assert_eq!(s, 409, "an ended restore cannot be cancelled");
    c.hosts[0].worker.restart_with(&[]);
    c.hosts[1].worker.restart_with(&[]);
    let deadline = Instant::now() + wait;
    for (h, at_least) in [(&c.hosts[0], a_cancels + 1), (&c.hosts[1], b_cancels + 1)] {
        while h.worker.log().matches("cancel received").count() < at_least {
            assert!(Instant::now() < deadline, "{}", h.worker.log());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // Whatever the host did with it, the restore stays cancelled and
    // left no file.
    let (_, v) = c
        .admin
        .call("GET", &format!("/v1/restores/{stopped}"), None)
        .await;
    assert_eq!(v["restore"]["status"], "error", "{v}");
    // (A job stopped mid-way removes its files just after the cancel.)
    let left = || {
        std::fs::read_dir(dir.path().join("state-a/restores"))
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().contains("never"))
    };
    while left() {
        assert!(
            Instant::now() < deadline,
            "a cancelled restore left files behind"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let bh = &c.hosts[1];
    bh.qsd.write(0, 50 * MIB, &vec![0x77; MIB as usize]);
    let b = c.member.backup(&bh.instance, "auto", wait).await;
    assert_eq!(b["status"], "available", "{b}\n{}", c.api.log());
    c.assert_restores(bh, b["id"].as_str().unwrap(), "after-lost-b");
    c.assert_api_restores(1, b["id"].as_str().unwrap(), "api-after-lost-b")
        .await;

    // Restores are listed in pages: following `next` links with limit=2
    // yields the whole list, newest first, once each; oldest first with
    // sort; a bad marker is a 400.
    let (s, v) = c.member.call("GET", "/v1/restores", None).await;
    assert_eq!(s, 200, "{v}");
    let all: Vec<String> = v["restores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(all.len() >= 3, "{v}");
    assert!(v.get("restores_links").is_none(), "{v}");
    let mut paged = Vec::new();
    let mut path = "/v1/restores?limit=2".to_string();
    loop {
        let (s, v) = c.member.call("GET", &path, None).await;
        assert_eq!(s, 200, "{v}");
        let page = v["restores"].as_array().unwrap();
        assert!(page.len() <= 2, "{v}");
        paged.extend(page.iter().map(|r| r["id"].as_str().unwrap().to_string()));
        match v["restores_links"][0]["href"].as_str() {
            Some(next) => path = next.trim_start_matches(&c.member.base).to_string(),
            None => break,
        }
        assert!(paged.len() <= all.len() + 2, "pages never end: {paged:?}");
    }
    assert_eq!(paged, all, "pages cover the list once, in order");
    let (_, v) = c
        .member
        .call("GET", "/v1/restores?sort=created_at:asc", None)
        .await;
    let asc: Vec<String> = v["restores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .rev()
        .collect();
    assert_eq!(asc, all, "{v}");
    let (s, v) = c.member.call("GET", "/v1/restores?marker=nope", None).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = c.member.call("GET", "/v1/restores?limit=0", None).await;
    assert_eq!(s, 400, "{v}");

    // A policy with a schedule: the conductor starts its backups on time,
    // on the instance's host, marked with the policy.
    let (s, v) = c
        .member
        .call(
            "POST",
            "/v1/policies",
            Some(json!({"policy": {"name": "every-minute", "schedule": "* * * * *", "timezone": "UTC"}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let policy = v["policy"]["id"].as_str().unwrap().to_string();
    let a = &c.hosts[0];
    let (s, v) = c
        .member
        .call(
            "POST",
            &format!("/v1/policies/{policy}/instances"),
            Some(json!({"instance_id": a.instance})),
        )
        .await;
    assert_eq!(s, 204, "{v}");
    let deadline = Instant::now() + Duration::from_secs(150);
    let scheduled = loop {
        let listed = c.member.backups_of(&a.instance).await;
        let found = listed
            .iter()
            .find(|b| b["policy_id"] == policy.as_str() && b["status"] == "available")
            .cloned();
        if let Some(b) = found {
            break b;
        }
        assert!(Instant::now() < deadline, "no scheduled backup: {listed:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(scheduled["user_id"], "scheduler", "{scheduled}");

    // SIGTERM while a backup runs: the worker waits shutdown_timeout (3 s),
    // then rolls the backup back and exits cleanly; the job waits in the
    // broker and the restarted worker completes it, correctly.
    let bh = &mut c.hosts[1];
    let data: Vec<u8> = (0..40 * MIB).map(|n| ((n * 7919) >> 11) as u8).collect();
    bh.qsd.write(0, 8 * MIB, &data);
    let id = c.member.start_backup(&bh.instance, "auto").await;
    c.member.wait_for(&id, &["running"], wait).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        bh.worker.terminate(),
        "ekko-backup exits cleanly on SIGTERM"
    );
    assert!(
        bh.worker.log().contains("rolled back for shutdown"),
        "{}",
        bh.worker.log()
    );
    let (_, v) = c
        .member
        .call("GET", &format!("/v1/backups/{id}"), None)
        .await;
    assert_eq!(v["backup"]["status"], "running", "{v}");
    bh.worker.restart_with(&[]);
    let b = c.member.wait_for(&id, &["available", "error"], wait).await;
    assert_eq!(b["status"], "available", "{b}");
    let bh = &c.hosts[1];
    c.assert_restores(bh, &id, "after-sigterm-b");
}

/// Ask for a restore of `backup` to `path` on the restore side (host a),
/// reading `source` (the API's default when `None`): the API's answer.
pub(crate) async fn request_restore(
    c: &crate::cluster::Cluster,
    backup: &str,
    path: &str,
    source: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut restore = json!({"backup_id": backup,
        "target": {"type": "file", "path": path, "host": c.hosts[0].name}});
    if let Some(source) = source {
        restore["source"] = json!(source);
    }
    c.admin
        .call("POST", "/v1/restores", Some(json!({ "restore": restore })))
        .await
}

/// [`request_restore`], accepted, and waited for until it ends.
pub(crate) async fn api_restore(
    c: &crate::cluster::Cluster,
    backup: &str,
    path: &str,
    source: Option<&str>,
    wait: Duration,
) -> serde_json::Value {
    let (s, v) = request_restore(c, backup, path, source).await;
    assert_eq!(s, 202, "{v}");
    let id = v["restore"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + wait;
    loop {
        let (_, v) = c
            .admin
            .call("GET", &format!("/v1/restores/{id}"), None)
            .await;
        if v["restore"]["status"] == "error" || v["restore"]["status"] == "completed" {
            return v["restore"].clone();
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
