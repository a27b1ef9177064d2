//! The distributed flow for a Nova instance: ekko-api (and its conductor)
//! on MariaDB and Keystone, one ekko-backup with `[backup] instance_source
//! = libvirt` on its own bus user, RabbitMQ between them, Swift for the
//! data, and a Nova-like domain on the test environment's libvirtd owned by
//! the demo project. `POST /v1/backups` for the server id → the host's
//! queue → a libvirt backup job → Swift → `available` → restored through
//! the API and compared bit-exact with the disk at the backup's instant;
//! then ekko-backup is killed mid-backup (kill -9): at its start it ends
//! the job it left, forgets the checkpoints, empties the scratch
//! directory, runs the redelivered job, and the backup is exact.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::{host_bus_user, token, BusUsers, Client, Service};
use crate::helpers::{free_port, keystone_section, mariadb_db, service_env};
use crate::nova::{NovaVm, MIB};
use crate::qsd::identical;
use ekko::libvirt::Connection;

/// Restore `backup` (disk vda) through the API to a file on the host and
/// compare it with `expected`.
async fn assert_api_restores(
    admin: &Client,
    state: &std::path::Path,
    backup: &str,
    expected: &std::path::Path,
    tag: &str,
) {
    let (s, v) = admin
        .call(
            "POST",
            "/v1/restores",
            Some(json!({"restore": {"backup_id": backup, "disk": "vda", "target": {"type": "file", "path": format!("{tag}.raw")}}})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["restore"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, v) = admin.call("GET", &format!("/v1/restores/{id}"), None).await;
        match v["restore"]["status"].as_str().unwrap_or("") {
            "completed" => break,
            "error" => panic!("restore {id}: {v}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "restore {id}: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let written = state.join(format!("restores/{tag}.raw"));
    assert!(
        identical(&written, expected),
        "{tag}: the API's restore of {backup} differs from the disk at its instant"
    );
    std::fs::remove_file(&written).unwrap();
    std::fs::remove_file(expected).unwrap();
}

fn job_active(uri: &str, uuid: &str) -> bool {
    let conn = Connection::open(uri).unwrap();
    let dom = conn.lookup_by_uuid(uuid).unwrap().unwrap();
    dom.job_stats().map(|s| s.is_backup()).unwrap_or(false)
}

fn checkpoints(uri: &str, uuid: &str) -> usize {
    let conn = Connection::open(uri).unwrap();
    let dom = conn.lookup_by_uuid(uuid).unwrap().unwrap();
    dom.list_checkpoints(0).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nova_instance_through_the_api_the_bus_libvirt_and_swift() {
    let Some(uri) = service_env("EKKO_LIBVIRT_URI") else {
        return;
    };
    let _libvirt = crate::helpers::libvirt_lock().await;
    let (Some(amqp), Some(keystone), Some(project)) = (
        service_env("EKKO_AMQP_URL"),
        keystone_section(),
        service_env("EKKO_DEMO_PROJECT_ID"),
    ) else {
        return;
    };
    let Some(t) = mariadb_db() else { return };
    t.db.sync().unwrap();
    ekko::cli::install_crypto_provider();
    let t0 = Instant::now();
    let lap = |what: &str| {
        eprintln!(
            "libvirt cluster: {what} at {:.1}s",
            t0.elapsed().as_secs_f64()
        )
    };
    let dir = tempfile::Builder::new()
        .prefix("ekko-lvc")
        .tempdir()
        .unwrap();
    let dir = dir.path();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let exchange = format!("ekko-test-{tag}");
    let host = format!("host-lv-{tag}");
    let (user, host_url) = host_bus_user(&amqp, &exchange, &host);
    let _users = BusUsers::new(vec![user]);
    let common = |state: &str, url: &str| {
        format!(
            "[DEFAULT]\ntransport_url = {url}\ncontrol_exchange = {exchange}\nstate_path = {}\n\
             [storage]\nbackend = swift\n[swift]\ncontainer_prefix = ekko-{tag}-\n{keystone}",
            dir.join(state).display()
        )
    };
    let api_port = free_port();
    let api_conf = dir.join("api.conf");
    std::fs::write(
        &api_conf,
        format!(
            "{}[database]\nconnection = {}\n[api]\nbind_host = 127.0.0.1\nbind_port = {api_port}\n\
             [backup]\njob_stall_timeout = 20\nhost_bus_users = true\n",
            common("api", &amqp),
            t.url
        ),
    )
    .unwrap();
    let _api = Service::start("ekko-api", &api_conf, dir.join("api.log"), &[]);
    let vm = NovaVm::start(&uri, &dir.join("vm"), &project, true);
    let host_conf = dir.join("host.conf");
    std::fs::write(
        &host_conf,
        format!(
            "{}[backup]\nheartbeat_interval = 1\nshutdown_timeout = 3\ninstance_source = libvirt\nread_rate_limit = 2M\n\
             [libvirt]\nconnection_uri = {uri}\n",
            common("state-lv", &host_url).replace("[DEFAULT]\n", &format!("[DEFAULT]\nhost = {host}\n"))
        ),
    )
    .unwrap();
    let state = dir.join("state-lv");
    let mut worker = Service::start("ekko-backup", &host_conf, dir.join("worker.log"), &[]);
    let base = format!("http://127.0.0.1:{api_port}");
    let member = Client::new(
        &base,
        token("EKKO_DEMO_USERNAME", "EKKO_DEMO_PASSWORD", "demo").await,
    );
    let admin = Client::new(&base, token("OS_USERNAME", "OS_PASSWORD", "admin").await);

    // --- the host reports the Nova instance (server id, project, name)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = member
            .call("GET", &format!("/v1/instances/{}", vm.uuid), None)
            .await;
        if s == 200 {
            assert_eq!(v["instance"]["name"], "ekko-nova-test", "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "instance never reported ({s} {v}); worker: {}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    lap("instance reported");

    // --- full, then incremental, each restored through the API
    let expected = vm.expected("1").remove(0);
    let b1 = member
        .backup(&vm.uuid, "auto", Duration::from_secs(120))
        .await;
    assert_eq!(b1["status"], "available", "{b1}\nworker: {}", worker.log());
    assert_eq!(
        (b1["kind"].as_str(), b1["consistency"].as_str()),
        (Some("full"), Some("crash"))
    );
    assert_api_restores(&admin, &state, b1["id"].as_str().unwrap(), &expected, "b1").await;
    lap("full backup restored");
    vm.write(0, 3 * MIB, 256 << 10, 0xa1);
    vm.write(0, 25 * MIB, 64 << 10, 0xa2);
    let expected = vm.expected("2").remove(0);
    let b2 = member
        .backup(&vm.uuid, "auto", Duration::from_secs(120))
        .await;
    assert_eq!(b2["status"], "available", "{b2}");
    assert_eq!(b2["kind"], "incremental", "{b2}");
    assert!(b2["read_bytes"].as_u64().unwrap() <= MIB, "{b2}");
    assert_api_restores(&admin, &state, b2["id"].as_str().unwrap(), &expected, "b2").await;
    assert_eq!(
        checkpoints(&uri, &vm.uuid),
        0,
        "no checkpoint metadata between backups"
    );
    lap("incremental backup restored");

    // --- ekko-backup killed mid-backup: its next start cleans up, and the
    // job (redelivered) runs again
    vm.write(0, 16 * MIB, 12 * MIB, 0xa3);
    let expected = vm.expected("3").remove(0);
    let id3 = member.start_backup(&vm.uuid, "auto").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !job_active(&uri, &vm.uuid) {
        assert!(
            Instant::now() < deadline,
            "no backup job began: {}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Once the job runs libvirt holds no checkpoint of ours (Nova's
    // undefine is never refused); the worker dies then.
    let deadline = Instant::now() + Duration::from_secs(10);
    while checkpoints(&uri, &vm.uuid) != 0 {
        assert!(
            Instant::now() < deadline,
            "checkpoint metadata kept while the job runs"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.kill9();
    assert!(
        job_active(&uri, &vm.uuid),
        "the killed worker's job still runs"
    );
    worker.restart_with(&[]);
    let b3 = member
        .wait_for(&id3, &["available", "error"], Duration::from_secs(120))
        .await;
    assert_eq!(b3["status"], "available", "{b3}\nworker: {}", worker.log());
    assert!(
        worker
            .log()
            .contains("ending the backup job an interrupted backup left"),
        "the restarted worker ended the job it left"
    );
    assert_eq!(b3["kind"], "incremental", "{b3}");
    assert_api_restores(&admin, &state, &id3, &expected, "b3").await;
    assert!(!job_active(&uri, &vm.uuid));
    assert_eq!(checkpoints(&uri, &vm.uuid), 0);
    let left: Vec<_> = std::fs::read_dir(state.join("scratch/libvirt"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch left: {left:?}");
    lap("worker killed mid-backup");
    drop(t);
}
