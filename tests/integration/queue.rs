//! One queue suite, run against the in-process broker and the real
//! RabbitMQ; plus a broker restart on RabbitMQ.

use std::sync::Arc;
use std::time::Duration;

use ekko::queue::memory::MemoryQueue;
use ekko::queue::rabbitmq::RabbitQueue;
use ekko::queue::{Envelope, MessageQueue, TransportUrl};

use crate::helpers::{rabbit_lock, service_env};

const WAIT: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_millis(500);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn msg(n: u32) -> Envelope {
    Envelope::new("test.job", &serde_json::json!({ "n": n })).unwrap()
}

fn n_of(e: &Envelope) -> u64 {
    e.body["n"].as_u64().unwrap()
}

async fn rabbit() -> Option<Arc<dyn MessageQueue>> {
    let url = service_env("EKKO_AMQP_URL")?;
    let TransportUrl::Rabbit(uris) = TransportUrl::parse(&url).unwrap() else {
        panic!("EKKO_AMQP_URL is not an AMQP URL");
    };
    Some(Arc::new(
        RabbitQueue::connect(uris, &unique("ekko-test"), ekko::queue::BusRole::Controller)
            .await
            .unwrap(),
    ))
}

async fn suite(q: Arc<dyn MessageQueue>) {
    routes_by_topic_and_acks(&q).await;
    unacked_message_goes_to_another_consumer(&q).await;
    nack_requeues(&q).await;
    prefetch_limits_unacked(&q).await;
}

async fn routes_by_topic_and_acks(q: &Arc<dyn MessageQueue>) {
    let name = unique("routes");
    q.declare_queue(
        &name,
        &[format!("{name}.backup.host1"), format!("{name}.status.#")],
    )
    .await
    .unwrap();
    q.publish(&format!("{name}.backup.host2"), &msg(0))
        .await
        .unwrap(); // not bound
    q.publish(&format!("{name}.backup.host1"), &msg(1))
        .await
        .unwrap();
    q.publish(&format!("{name}.status.a.b"), &msg(2))
        .await
        .unwrap();
    // Depth (metrics): what waits; nothing for a queue that does not exist.
    let deadline = std::time::Instant::now() + WAIT;
    while q.depth(&name).await.unwrap() != Some(2) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            q.depth(&name).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(q.depth(&unique("never-declared")).await.unwrap(), None);
    let mut c = q.consume(&name, 10).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
        assert!(!d.redelivered);
        got.push(n_of(&d.envelope));
        d.ack().await.unwrap();
    }
    got.sort();
    assert_eq!(got, vec![1, 2]);
    assert!(
        tokio::time::timeout(QUIET, c.next()).await.is_err(),
        "host2's job must not arrive"
    );
    drop(c);
    q.delete_queue(&name).await.unwrap();
}

async fn unacked_message_goes_to_another_consumer(q: &Arc<dyn MessageQueue>) {
    let name = unique("redeliver");
    q.declare_queue(&name, std::slice::from_ref(&name))
        .await
        .unwrap();
    let sent = msg(7);
    q.publish(&name, &sent).await.unwrap();
    let mut first = q.consume(&name, 1).await.unwrap();
    let d = tokio::time::timeout(WAIT, first.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope, sent);
    // The worker dies holding the message: no ack.
    drop(d);
    drop(first);
    let mut second = q.consume(&name, 1).await.unwrap();
    let again = tokio::time::timeout(WAIT, second.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.envelope, sent, "same message, same id");
    assert!(again.redelivered);
    again.ack().await.unwrap();
    assert!(tokio::time::timeout(QUIET, second.next()).await.is_err());
    drop(second);
    q.delete_queue(&name).await.unwrap();
}

async fn nack_requeues(q: &Arc<dyn MessageQueue>) {
    let name = unique("nack");
    q.declare_queue(&name, std::slice::from_ref(&name))
        .await
        .unwrap();
    q.publish(&name, &msg(3)).await.unwrap();
    let mut c = q.consume(&name, 1).await.unwrap();
    let d = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
    d.nack(true).await.unwrap();
    let d = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
    assert!(d.redelivered);
    d.nack(false).await.unwrap(); // rejected for good
    assert!(tokio::time::timeout(QUIET, c.next()).await.is_err());
    drop(c);
    q.delete_queue(&name).await.unwrap();
}

async fn prefetch_limits_unacked(q: &Arc<dyn MessageQueue>) {
    let name = unique("prefetch");
    q.declare_queue(&name, std::slice::from_ref(&name))
        .await
        .unwrap();
    for n in 0..2 {
        q.publish(&name, &msg(n)).await.unwrap();
    }
    let mut c = q.consume(&name, 1).await.unwrap();
    let first = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
    assert!(
        tokio::time::timeout(QUIET, c.next()).await.is_err(),
        "prefetch 1: nothing more until ack"
    );
    let first_n = n_of(&first.envelope);
    first.ack().await.unwrap();
    let second = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
    assert_ne!(n_of(&second.envelope), first_n);
    second.ack().await.unwrap();
    drop(c);
    q.delete_queue(&name).await.unwrap();
}

#[tokio::test]
async fn in_process_queue() {
    suite(Arc::new(MemoryQueue::new())).await;
}

#[test]
fn rabbitmq_queue() {
    let _guard = rabbit_lock();
    block_on(async {
        let Some(q) = rabbit().await else { return };
        suite(q).await;
    });
}

/// Run a test body on its own runtime while the caller holds a sync lock.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn rabbitmq_restart_loses_nothing() {
    let _guard = rabbit_lock();
    block_on(restart_scenario());
}

async fn restart_scenario() {
    let Some(q) = rabbit().await else { return };
    let name = unique("restart");
    q.declare_queue(&name, std::slice::from_ref(&name))
        .await
        .unwrap();
    let mut c = q.consume(&name, 10).await.unwrap();
    q.publish(&name, &msg(1)).await.unwrap();
    let d = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
    d.ack().await.unwrap();
    // A message that waits in the queue through the restart.
    q.publish(&name, &msg(2)).await.unwrap();
    tokio::task::spawn_blocking(|| {
        crate::helpers::rabbitmqctl(&["stop_app"]);
        crate::helpers::rabbitmqctl(&["start_app"]);
    })
    .await
    .unwrap();
    // Publishing reconnects through the outage.
    q.publish(&name, &msg(3)).await.unwrap();
    // At least once: a message the consumer held when the broker went away
    // may come again (flagged redelivered); nothing may be lost.
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 2 {
        let d = tokio::time::timeout(Duration::from_secs(60), c.next())
            .await
            .expect("consumer came back")
            .unwrap();
        let n = n_of(&d.envelope);
        assert!(n == 2 || n == 3, "unexpected message {n}");
        assert!(
            got.insert(n) || d.redelivered,
            "duplicate {n} without the redelivered flag"
        );
        let _ = d.ack().await; // an ack on the dead link is lost; the message comes again
    }
    drop(c);
    q.delete_queue(&name).await.unwrap();
}
