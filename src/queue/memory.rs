//! In-process broker for the single-machine default: topic routing, manual
//! ack, prefetch, redelivery of unacknowledged messages, mandatory publish,
//! queue length bounds and consumer size bounds, like RabbitMQ but within
//! one process (messages do not survive a restart; the database state they
//! describe does, and is re-driven from there). Of [`QueueBounds`] only the
//! length is kept: in-process messages are the process's own.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::{
    topic_matches, Acker, Consumer, Delivery, Envelope, MessageQueue, QueueBounds, QueueError,
    QueueResult,
};

#[derive(Default)]
struct Queue {
    ready: VecDeque<(Envelope, bool)>,
    bindings: Vec<String>,
    notify: Arc<Notify>,
    max_length: Option<usize>,
}

#[derive(Default)]
struct Broker {
    queues: HashMap<String, Queue>,
}

#[derive(Clone, Default)]
pub struct MemoryQueue {
    broker: Arc<Mutex<Broker>>,
}

impl MemoryQueue {
    pub fn new() -> MemoryQueue {
        MemoryQueue::default()
    }

    /// Messages waiting in a queue (not counting unacknowledged ones).
    pub fn ready_count(&self, queue: &str) -> usize {
        lock(&self.broker)
            .queues
            .get(queue)
            .map_or(0, |q| q.ready.len())
    }
}

impl MemoryQueue {
    /// Put `message` on every queue bound to `routing_key`; how many.
    fn route(&self, routing_key: &str, message: &Envelope) -> usize {
        let mut b = lock(&self.broker);
        let mut routed = 0;
        for q in b.queues.values_mut() {
            if q.bindings.iter().any(|p| topic_matches(p, routing_key)) {
                if q.max_length.is_some_and(|max| q.ready.len() >= max) {
                    q.ready.pop_front();
                }
                q.ready.push_back((message.clone(), false));
                q.notify.notify_one();
                routed += 1;
            }
        }
        routed
    }
}

fn lock(b: &Mutex<Broker>) -> MutexGuard<'_, Broker> {
    // A panic while holding the lock cannot leave the maps inconsistent
    // (every critical section is a single push or pop), so carry on.
    b.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl MessageQueue for MemoryQueue {
    async fn declare_bounded_queue(
        &self,
        queue: &str,
        bindings: &[String],
        bounds: QueueBounds,
    ) -> QueueResult<()> {
        let mut b = lock(&self.broker);
        let q = b.queues.entry(queue.to_string()).or_default();
        q.max_length = bounds.max_length.map(|n| n as usize);
        for key in bindings {
            if !q.bindings.contains(key) {
                q.bindings.push(key.clone());
            }
        }
        Ok(())
    }

    async fn publish(&self, routing_key: &str, message: &Envelope) -> QueueResult<()> {
        self.route(routing_key, message);
        Ok(())
    }

    async fn publish_mandatory(&self, routing_key: &str, message: &Envelope) -> QueueResult<()> {
        if self.route(routing_key, message) == 0 {
            return Err(QueueError::Unroutable(routing_key.to_string()));
        }
        Ok(())
    }

    async fn consume_bounded(
        &self,
        queue: &str,
        prefetch: u16,
        max_bytes: usize,
    ) -> QueueResult<Box<dyn Consumer>> {
        if !lock(&self.broker).queues.contains_key(queue) {
            return Err(QueueError::Unavailable(format!("no queue named {queue}")));
        }
        Ok(Box::new(MemoryConsumer {
            broker: self.broker.clone(),
            queue: queue.to_string(),
            window: Arc::new(Semaphore::new(prefetch.max(1) as usize)),
            max_bytes,
        }))
    }

    async fn depth(&self, queue: &str) -> QueueResult<Option<u64>> {
        Ok(lock(&self.broker)
            .queues
            .get(queue)
            .map(|q| q.ready.len() as u64))
    }

    async fn delete_queue(&self, queue: &str) -> QueueResult<()> {
        lock(&self.broker).queues.remove(queue);
        Ok(())
    }
}

struct MemoryConsumer {
    broker: Arc<Mutex<Broker>>,
    queue: String,
    window: Arc<Semaphore>,
    max_bytes: usize,
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> QueueResult<Delivery> {
        let permit = self
            .window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| QueueError::Closed)?;
        let (envelope, redelivered) = loop {
            let notify = {
                let mut b = lock(&self.broker);
                let q = b.queues.get_mut(&self.queue).ok_or(QueueError::Closed)?;
                if let Some(next) = q.ready.pop_front() {
                    break next;
                }
                q.notify.clone()
            };
            notify.notified().await;
        };
        let acker = MemoryAcker {
            broker: self.broker.clone(),
            queue: self.queue.clone(),
            message: Some(envelope.clone()),
            _permit: permit,
        };
        // Measured as RabbitMQ would carry it, when bounded.
        let bytes = match self.max_bytes {
            usize::MAX => 0,
            _ => envelope.to_bytes().map_or(usize::MAX, |b| b.len()),
        };
        let envelope = if bytes > self.max_bytes {
            let why = format!(
                "{bytes} bytes, over this consumer's bound of {}",
                self.max_bytes
            );
            Envelope::unreadable(why, bytes)
        } else {
            envelope
        };
        Ok(Delivery::new(envelope, redelivered, Box::new(acker)).with_bytes(bytes))
    }
}

/// Holds the message until it is acknowledged; a drop without ack requeues
/// it at the front, flagged redelivered, as a broker does on channel close.
struct MemoryAcker {
    broker: Arc<Mutex<Broker>>,
    queue: String,
    message: Option<Envelope>,
    _permit: OwnedSemaphorePermit,
}

impl MemoryAcker {
    fn requeue(&mut self) {
        if let Some(m) = self.message.take() {
            let mut b = lock(&self.broker);
            if let Some(q) = b.queues.get_mut(&self.queue) {
                q.ready.push_front((m, true));
                q.notify.notify_one();
            }
        }
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        self.requeue();
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(mut self: Box<Self>) -> QueueResult<()> {
        self.message = None;
        Ok(())
    }

    async fn nack(mut self: Box<Self>, requeue: bool) -> QueueResult<()> {
        if requeue {
            self.requeue();
        } else {
            self.message = None;
        }
        Ok(())
    }
}
