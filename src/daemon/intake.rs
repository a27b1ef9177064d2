//! The conductor's intake: it takes a delivery from the status queue only
//! when a slot is free (at most [`super::conductor::CONCURRENCY`] reports
//! are recorded at once) and the message's bytes fit the memory budget,
//! and hands it to the conductor loop. It runs in its own task, so the
//! loop's housekeeping (stalled jobs, due policies) runs on time whether
//! messages come or not.
//!
//! It also measures whether the conductor keeps up ([`CatchUp`]): the
//! conductor has caught up whenever the intake, with a slot free, waits
//! for a message (nothing is queued for it). Measured on this process's
//! clock: neither a host's clock nor a report's `sent_at` plays a part,
//! so no host can make the conductor look idle or busy but by sending
//! messages.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::queue::{Consumer, Delivery, QueueResult};

/// When the conductor last had nothing queued for it.
#[derive(Debug)]
pub struct CatchUp {
    /// Whether the intake waits for a message now, and since when it last
    /// did (or the start).
    state: Mutex<(bool, Instant)>,
}

impl Default for CatchUp {
    fn default() -> CatchUp {
        CatchUp {
            state: Mutex::new((false, Instant::now())),
        }
    }
}

impl CatchUp {
    fn lock(&self) -> MutexGuard<'_, (bool, Instant)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The intake waits for a message: the conductor is caught up.
    pub fn waiting(&self) {
        *self.lock() = (true, Instant::now());
    }

    /// A message came: the conductor was caught up until now.
    pub fn took(&self) {
        *self.lock() = (false, Instant::now());
    }

    /// How long the conductor has had messages queued for it without a
    /// break (zero while it waits for one). A conductor that starts
    /// behind a backlog is behind until it drains it.
    pub fn behind(&self) -> Duration {
        match *self.lock() {
            (true, _) => Duration::ZERO,
            (false, since) => since.elapsed(),
        }
    }
}

/// What a delivery must get before it is recorded: a slot, and its bytes
/// from the budget (a report is held parsed while it is recorded: the
/// budget bounds how many large ones are at once).
#[derive(Clone)]
pub struct Gates {
    slots: Arc<Semaphore>,
    budget: Arc<Semaphore>,
    budget_kib: u32,
}

impl Gates {
    pub fn new(slots: usize, budget_bytes: u64) -> Gates {
        let budget_kib = u32::try_from(budget_bytes / 1024)
            .unwrap_or(u32::MAX / 2)
            .clamp(1, Semaphore::MAX_PERMITS as u32);
        Gates {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
        }
    }

    /// What a delivery of `bytes` takes from the budget (one larger than
    /// the whole budget takes all of it, and so runs alone).
    fn weight(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.budget_kib)
    }
}

/// A delivery let through, with what it holds until it is settled.
pub struct Taken {
    pub delivery: Delivery,
    pub held: Held,
}

/// The slot and the budget a delivery holds; dropped once it is settled.
pub struct Held {
    _slot: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// Take deliveries from `consumer` as the gates allow and send them `to`
/// the conductor loop, until the loop stops listening. A consumer error
/// is sent on and ends the intake.
pub async fn receive(
    mut consumer: Box<dyn Consumer>,
    gates: Gates,
    catch_up: Arc<CatchUp>,
    to: mpsc::Sender<QueueResult<Taken>>,
) {
    loop {
        let Ok(slot) = gates.slots.clone().acquire_owned().await else {
            return;
        };
        let mut next = consumer.next();
        let got = match futures::poll!(&mut next) {
            Poll::Ready(got) => got,
            Poll::Pending => {
                catch_up.waiting();
                let got = next.await;
                catch_up.took();
                got
            }
        };
        let delivery = match got {
            Ok(d) => d,
            Err(e) => {
                let _ = to.send(Err(e)).await;
                return;
            }
        };
        let bytes = match gates.weight(delivery.bytes) {
            0 => None,
            n => match gates.budget.clone().acquire_many_owned(n).await {
                Ok(p) => Some(p),
                Err(_) => return,
            },
        };
        let held = Held {
            _slot: slot,
            _bytes: bytes,
        };
        if to.send(Ok(Taken { delivery, held })).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::memory::MemoryQueue;
    use crate::queue::{Envelope, MessageQueue};

    async fn queue_with(n: usize) -> (MemoryQueue, Box<dyn Consumer>) {
        let q = MemoryQueue::new();
        q.declare_queue("s", &["s".to_string()]).await.unwrap();
        for i in 0..n {
            let m = Envelope::new("test", &serde_json::json!({ "i": i })).unwrap();
            q.publish("s", &m).await.unwrap();
        }
        let c = q.consume_bounded("s", 64, 1 << 20).await.unwrap();
        (q, c)
    }

    /// Behind while messages wait for a slot; caught up once the queue is
    /// drained, whatever is still being recorded.
    #[tokio::test]
    async fn behind_while_messages_wait_and_caught_up_once_drained() {
        let (_q, consumer) = queue_with(5).await;
        let gates = Gates::new(2, 1 << 20);
        let catch_up = Arc::new(CatchUp::default());
        let (tx, mut rx) = mpsc::channel(1);
        let intake = tokio::spawn(receive(consumer, gates, catch_up.clone(), tx));
        // Two taken, held (their slots are busy); three wait.
        let first = rx.recv().await.unwrap().unwrap();
        let second = rx.recv().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(catch_up.behind() >= Duration::from_millis(300));
        assert!(
            tokio::time::timeout(Duration::from_millis(100), rx.recv())
                .await
                .is_err(),
            "no third before a slot is free"
        );
        // Settled: their slots are free (an unsettled delivery dropped
        // would go back to the queue).
        for t in [first, second] {
            t.delivery.ack().await.unwrap();
        }
        let mut rest = Vec::new();
        for _ in 0..3 {
            let t = rx.recv().await.unwrap().unwrap();
            rest.push(t.delivery.envelope.body["i"].as_u64().unwrap());
            t.delivery.ack().await.unwrap();
        }
        assert_eq!(rest, vec![2, 3, 4]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(catch_up.behind(), Duration::ZERO, "nothing queued");
        intake.abort();
    }

    /// Large messages go one budget at a time; small ones are not held up.
    #[tokio::test]
    async fn the_budget_bounds_the_bytes_recorded_at_once() {
        let gates = Gates::new(16, 10 << 10);
        assert_eq!(gates.weight(0), 0);
        assert_eq!(gates.weight(1), 1);
        assert_eq!(gates.weight(6 << 10), 6);
        assert_eq!(gates.weight(1 << 30), 10, "never more than the budget");
        let q = MemoryQueue::new();
        q.declare_queue("s", &["s".to_string()]).await.unwrap();
        let big = Envelope::new("test", &"x".repeat(6 << 10)).unwrap();
        q.publish("s", &big).await.unwrap();
        q.publish("s", &big).await.unwrap();
        let consumer = q.consume_bounded("s", 64, 1 << 20).await.unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let intake = tokio::spawn(receive(consumer, gates, Arc::default(), tx));
        let one = rx.recv().await.unwrap().unwrap();
        assert!(one.delivery.bytes > 6 << 10);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err(),
            "the second waits for the first's bytes"
        );
        let Taken { delivery, held } = one;
        delivery.ack().await.unwrap();
        drop(held);
        assert!(rx.recv().await.unwrap().is_ok());
        intake.abort();
    }
}
