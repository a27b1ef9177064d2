//! Tests that stop and restart shared services (RabbitMQ, MariaDB) under a
//! running Ekko. Cargo runs test binaries one after the other, so nothing
//! else uses the services while these run. Shares the integration tests'
//! helpers.

#[allow(dead_code)]
#[path = "../integration/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "../integration/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "../integration/qsd.rs"]
mod qsd;

use std::time::Duration;

use crate::cluster::{start_cluster, MIB};

/// Swift answering 503 to one request in four for host b; RabbitMQ
/// restarted while a backup runs; MariaDB restarted while a backup runs:
/// every backup completes once, correctly, and the services carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swift_faults_and_broker_and_database_restarts_lose_nothing() {
    let Some(swift) = helpers::service_env("EKKO_SWIFT_URL") else {
        return;
    };
    let Some(service_project) = helpers::service_env("EKKO_SERVICE_PROJECT_ID") else {
        return;
    };
    let upstream = swift
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let (proxy, requests) = helpers::faulty_proxy(upstream, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let proxied = format!("http://{proxy}/v1/AUTH_{service_project}");
    let Some(c) = start_cluster(dir.path(), Some(proxied), false).await else {
        return;
    };
    let wait = Duration::from_secs(180);

    // Host b stores through the faulty proxy.
    let b = &c.hosts[1];
    b.qsd.write(0, 0, &vec![0x5a; 6 * MIB as usize]);
    let before = requests.load(std::sync::atomic::Ordering::SeqCst);
    let done = c.member.backup(&b.instance, "auto", wait).await;
    assert_eq!(done["status"], "available", "{done}\n{}", b.worker.log());
    assert!(
        requests.load(std::sync::atomic::Ordering::SeqCst) - before >= 4,
        "host b's data went through the proxy"
    );
    c.assert_restores(b, done["id"].as_str().unwrap(), "swift-faults-b");

    // RabbitMQ restarted mid-flow.
    let a = &c.hosts[0];
    a.qsd.write(0, 0, &vec![0x11; 16 * MIB as usize]);
    let id = c.member.start_backup(&a.instance, "auto").await;
    tokio::task::spawn_blocking(|| {
        helpers::rabbitmqctl(&["stop_app"]);
        std::thread::sleep(Duration::from_secs(2));
        helpers::rabbitmqctl(&["start_app"]);
    })
    .await
    .unwrap();
    let done = c.member.wait_for(&id, &["available", "error"], wait).await;
    assert_eq!(
        done["status"],
        "available",
        "{done}\nworker: {}\napi: {}",
        a.worker.log(),
        c.api.log()
    );
    c.assert_restores(a, &id, "rabbit-restart-a");
    let listed = c.member.backups_of(&a.instance).await;
    assert_eq!(
        listed.len(),
        1,
        "no lost and no duplicated backup: {listed:?}"
    );

    // MariaDB restarted mid-flow: the worker finishes meanwhile, the
    // conductor records its report once the database is back.
    a.qsd.write(0, 32 * MIB, &vec![0x22; 4 * MIB as usize]);
    let id = c.member.start_backup(&a.instance, "auto").await;
    tokio::task::spawn_blocking(|| {
        helpers::mariadb_stop();
        std::thread::sleep(Duration::from_secs(3));
        helpers::services_start();
    })
    .await
    .unwrap();
    let done = c.member.wait_for(&id, &["available", "error"], wait).await;
    assert_eq!(done["status"], "available", "{done}\napi: {}", c.api.log());
    c.assert_restores(a, &id, "mariadb-restart-a");
    // And the services go on as before.
    a.qsd.write(0, 48 * MIB, &vec![0x33; MIB as usize]);
    let done = c.member.backup(&a.instance, "auto", wait).await;
    assert_eq!(done["status"], "available", "{done}");
    assert_eq!(done["kind"], "incremental", "{done}");
    c.assert_restores(a, done["id"].as_str().unwrap(), "after-restarts-a");
    let listed = c.member.backups_of(&a.instance).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
}
