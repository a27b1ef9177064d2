//! The conductor and the hosts on the real RabbitMQ (review of issues 16
//! and 17, findings 4, 6 and 13):
//!
//! * a host's report whose recording fails once is recorded on retry with
//!   `[backup] host_bus_users` on (the retry keeps the host's bus user);
//! * a status message over `[backup] max_report_size` is dead-lettered
//!   unparsed, as a summary, and one that is not an Ekko message is
//!   dead-lettered rather than dropped; the dead-letter queue is bounded;
//! * a report no queue takes is not counted as sent (mandatory publish).

use std::time::{Duration, Instant};

use ekko::daemon::conductor::{DeadLetter, DEAD_LETTER_KIND};
use ekko::queue::memory::MemoryQueue;
use ekko::queue::{MessageQueue, QueueError};
use ekko::wire::{self, Heartbeat, HostInventory, InventoryDisk, InventoryInstance};

use crate::cluster::start_cluster;
use crate::helpers::{mariadb_db, rabbit_lock, rabbitmqctl_output, service_env};

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn heartbeat(host: &str) -> Heartbeat {
    Heartbeat {
        host: host.into(),
        version: "1".into(),
        capacity: 1,
        exports: None,
    }
}

/// A conductor's Ekko on the real broker (exchange `exchange`) and the
/// catalog at `db_url`.
async fn rabbit_conductor(
    dir: &std::path::Path,
    amqp: &str,
    exchange: &str,
    db_url: &str,
    extra: &str,
) -> ekko::Ekko {
    let conf = dir.join("conductor.conf");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\ntransport_url = {amqp}\ncontrol_exchange = {exchange}\nstate_path = {}\n\
             [database]\nconnection = {db_url}\n{extra}",
            dir.join("state").display()
        ),
    )
    .unwrap();
    let config = ekko::config::EkkoConfig::load(&[conf], std::iter::empty()).unwrap();
    ekko::Ekko::connect(config, ekko::ekko::Catalog::Required)
        .await
        .unwrap()
}

/// With host bus users, a host's finished backup whose first recording
/// fails as a deadlock would (error point `conductor.record`) is recorded
/// on the retry. Before, the retry republished the report under the
/// conductor's own bus user, the copy was refused as not a host's and
/// dead-lettered, and the finished backup was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The broker lock is held for the whole test on purpose: no broker restart
// may happen under it.
#[allow(clippy::await_holding_lock)]
async fn a_host_report_that_fails_once_is_recorded_on_retry_under_its_bus_user() {
    let _guard = rabbit_lock();
    let dir = tempfile::tempdir().unwrap();
    let Some(mut c) = start_cluster(dir.path(), None, false).await else {
        return;
    };
    c.api
        .restart_with(&[("EKKO_FAIL_ONCE", "conductor.record:backup.finished")]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, _) = c.member.call("GET", "/v1/instances", None).await;
        if s == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "ekko-api did not come back");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let h = &c.hosts[0];
    h.qsd.write(0, 0, &vec![0x5a; 1 << 20]);
    let b = c
        .member
        .backup(&h.instance, "auto", Duration::from_secs(120))
        .await;
    let log = c.api.log();
    assert!(
        log.contains("error point reached"),
        "the first recording did not fail: {log}"
    );
    assert_eq!(b["status"], "available", "{b}\n{log}");
    assert!(
        log.contains("cannot record the report yet"),
        "no retry logged: {log}"
    );
    assert!(!log.contains("dead-lettered"), "{log}");
    c.assert_restores(h, b["id"].as_str().unwrap(), "retried");
}

/// An oversized inventory is dead-lettered without being parsed (only a
/// summary kept; none of its instances recorded), a message that is not
/// JSON is dead-lettered rather than dropped, and heartbeats keep being
/// recorded; the dead-letter queue carries its bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn oversized_and_unreadable_reports_are_dead_lettered_unparsed() {
    let _guard = rabbit_lock();
    let Some(amqp) = service_env("EKKO_AMQP_URL") else {
        return;
    };
    let Some(t) = mariadb_db() else { return };
    t.db.sync().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("ekko-test-dl");
    let ekko = rabbit_conductor(
        dir.path(),
        &amqp,
        &exchange,
        &t.url,
        "[backup]\nmax_report_size = 64K\n",
    )
    .await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(ekko::daemon::run_conductor(ekko.clone(), async {
        let _ = stopped.await;
    }));
    let q = ekko.queue.clone();
    // Once the conductor declared the status queue, reports are taken.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match wire::publish_report(q.as_ref(), wire::HEARTBEAT_KIND, &heartbeat("host-first")).await
        {
            Ok(()) => break,
            Err(QueueError::Unroutable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    let topology = ekko.topology();
    let mut dead = q.consume(&topology.dead_letter_queue(), 8).await.unwrap();

    // A valid inventory, but over the bound: 600 instances.
    let instances: Vec<InventoryInstance> = (0..600)
        .map(|n| InventoryInstance {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: "0123456789abcdef0123456789abcdef".into(),
            name: format!("vm-{n}"),
            disks: vec![InventoryDisk {
                device: "vda".into(),
                node_name: "drive0".into(),
                virtual_size: 1 << 30,
            }],
        })
        .collect();
    let first = instances[0].id.clone();
    let big = HostInventory {
        host: "host-big".into(),
        instances,
    };
    wire::publish_report(q.as_ref(), wire::HOST_INVENTORY, &big)
        .await
        .unwrap();
    // Not an Ekko message at all.
    publish_raw(&amqp, &exchange, "status.host.heartbeat", b"\x00 not json").await;
    wire::publish_report(q.as_ref(), wire::HEARTBEAT_KIND, &heartbeat("host-after"))
        .await
        .unwrap();

    let mut letters = Vec::new();
    while letters.len() < 2 {
        let d = tokio::time::timeout(Duration::from_secs(20), dead.next())
            .await
            .expect("two dead letters")
            .unwrap();
        assert!(d.bytes < 64 << 10, "a dead letter of {} bytes", d.bytes);
        let letter: DeadLetter = d.envelope.body_as(DEAD_LETTER_KIND).unwrap();
        letters.push(letter);
        d.ack().await.unwrap();
    }
    let oversized = letters
        .iter()
        .find(|l| l.reason.contains("over this consumer's bound"))
        .unwrap_or_else(|| panic!("no oversized letter: {letters:?}"));
    let omitted = oversized.message.body["omitted_bytes"].as_u64().unwrap();
    assert!(omitted > 64 << 10, "{oversized:?}");
    assert!(
        letters.iter().any(
            |l| l.reason.starts_with("unreadable") && l.message.body["omitted_bytes"].is_null()
        ),
        "the garbage was not dead-lettered: {letters:?}"
    );

    // Heartbeats after them were recorded; the inventory was not.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hosts = t.db.run(ekko::db::hosts::list).await.unwrap();
        if hosts.iter().any(|h| h.name == "host-after") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "host-after's heartbeat not recorded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recorded =
        t.db.run(move |c| Ok(ekko::db::instances::get(c, &first).is_ok()))
            .await
            .unwrap();
    assert!(
        !recorded,
        "an instance of the oversized inventory was recorded"
    );

    // The dead letters are bounded by the broker.
    let queues = rabbitmqctl_output(&["list_queues", "-q", "name", "arguments"]);
    let line = queues
        .lines()
        .find(|l| l.starts_with(&topology.dead_letter_queue()))
        .unwrap_or_else(|| panic!("no dead-letter queue: {queues}"));
    for arg in ["x-max-length", "x-max-length-bytes", "x-message-ttl"] {
        assert!(line.contains(arg), "{arg} missing: {line}");
    }

    let _ = stop.send(());
    running.await.unwrap().unwrap();
    drop(dead);
    for queue in [topology.status_queue(), topology.dead_letter_queue()] {
        let _ = q.delete_queue(&queue).await;
    }
}

/// Publish `body` as is (not an Ekko envelope), confirmed.
async fn publish_raw(amqp: &str, exchange: &str, key: &str, body: &[u8]) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let conn = Connection::connect(amqp, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let _ = conn.close(0, "done".into()).await;
}

/// A report no status queue takes (the queue deleted, or lost with its
/// node) fails to publish, on RabbitMQ and in process, so the host keeps
/// it; once the queue is there, it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn a_report_no_queue_takes_is_not_counted_as_sent() {
    let memory: std::sync::Arc<dyn MessageQueue> = std::sync::Arc::new(MemoryQueue::new());
    let topology = wire::Topology::new("ekko");
    unroutable_then_routed(memory, &topology).await;

    let _guard = rabbit_lock();
    let Some(amqp) = service_env("EKKO_AMQP_URL") else {
        return;
    };
    let ekko::queue::TransportUrl::Rabbit(uris) = ekko::queue::TransportUrl::parse(&amqp).unwrap()
    else {
        panic!("EKKO_AMQP_URL is not an AMQP URL");
    };
    let exchange = unique("ekko-test-mandatory");
    let rabbit: std::sync::Arc<dyn MessageQueue> = std::sync::Arc::new(
        ekko::queue::rabbitmq::RabbitQueue::connect(
            uris,
            &exchange,
            ekko::queue::BusRole::Controller,
        )
        .await
        .unwrap(),
    );
    let topology = wire::Topology::new(&exchange);
    unroutable_then_routed(rabbit.clone(), &topology).await;
    for queue in [topology.status_queue(), topology.dead_letter_queue()] {
        let _ = rabbit.delete_queue(&queue).await;
    }
}

async fn unroutable_then_routed(q: std::sync::Arc<dyn MessageQueue>, topology: &wire::Topology) {
    let sent = wire::publish_report(q.as_ref(), wire::HEARTBEAT_KIND, &heartbeat("h1")).await;
    assert!(matches!(sent, Err(QueueError::Unroutable(_))), "{sent:?}");
    topology.declare_status(q.as_ref()).await.unwrap();
    wire::publish_report(q.as_ref(), wire::HEARTBEAT_KIND, &heartbeat("h1"))
        .await
        .unwrap();
    let mut status = q.consume(&topology.status_queue(), 1).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), status.next())
        .await
        .expect("the report")
        .unwrap();
    assert_eq!(d.envelope.kind, wire::HEARTBEAT_KIND);
    d.ack().await.unwrap();
}
