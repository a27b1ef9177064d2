//! The message bus seam: jobs from the API to the workers, results back.
//!
//! One trait ([`MessageQueue`]) with two implementations: RabbitMQ through
//! lapin ([`rabbitmq::RabbitQueue`]: durable topic exchange, durable queues,
//! persistent messages, publisher confirms, manual ack, prefetch, reconnect
//! with back-off) and an in-process broker ([`memory::MemoryQueue`]) for the
//! single-machine default, with the same semantics: topic routing, manual
//! ack, and redelivery of what a consumer took but did not acknowledge.
//!
//! Delivery is at least once: consumers must treat a redelivered message as
//! possibly already handled (every job carries an id to check).

pub mod memory;
pub mod message;
pub mod rabbitmq;

use std::sync::Arc;

use async_trait::async_trait;

pub use message::{
    valid_request_id, Envelope, Unreadable, BASE_VERSION, MESSAGE_VERSION, UNREADABLE_KIND,
    WRITE_KEYS_VERSION,
};

pub use crate::config::urls::TransportUrl;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("invalid transport_url: {0}")]
    Url(String),
    #[error("message bus unreachable: {0}")]
    Unavailable(String),
    #[error("the broker refused the message (publisher confirm was a nack)")]
    Nacked,
    #[error("no queue takes messages with routing key {0} (returned by the broker)")]
    Unroutable(String),
    #[error("bad message: {0}")]
    BadMessage(String),
    #[error("the queue was closed")]
    Closed,
}

pub type QueueResult<T> = Result<T, QueueError>;

/// Bounds of a queue that must not grow without end (the dead letters):
/// past either, the oldest messages are dropped (RabbitMQ's `x-max-length`,
/// `x-max-length-bytes` and `x-message-ttl`, overflow `drop-head`).
/// RabbitMQ refuses to declare an existing queue with other arguments, so a
/// queue's bounds never change under its name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueBounds {
    pub max_length: Option<u32>,
    pub max_bytes: Option<u64>,
    pub message_ttl: Option<std::time::Duration>,
}

#[async_trait]
pub trait MessageQueue: Send + Sync {
    /// Declare (idempotently) a durable queue that receives the messages
    /// whose routing key matches one of `bindings` (AMQP topic patterns).
    async fn declare_queue(&self, queue: &str, bindings: &[String]) -> QueueResult<()> {
        self.declare_bounded_queue(queue, bindings, QueueBounds::default())
            .await
    }

    /// [`MessageQueue::declare_queue`], dropping its oldest messages past
    /// `bounds`.
    async fn declare_bounded_queue(
        &self,
        queue: &str,
        bindings: &[String],
        bounds: QueueBounds,
    ) -> QueueResult<()>;

    /// Publish durably; returns once the broker has taken responsibility.
    /// A message no queue is bound to take is dropped.
    async fn publish(&self, routing_key: &str, message: &Envelope) -> QueueResult<()>;

    /// Publish durably, failing with [`QueueError::Unroutable`] when no
    /// queue takes the message (AMQP `mandatory`: the broker returns it),
    /// so that the sender keeps what it could not hand on.
    async fn publish_mandatory(&self, routing_key: &str, message: &Envelope) -> QueueResult<()>;

    /// Consume with manual acknowledgement, at most `prefetch` unacked.
    async fn consume(&self, queue: &str, prefetch: u16) -> QueueResult<Box<dyn Consumer>> {
        self.consume_bounded(queue, prefetch, usize::MAX).await
    }

    /// [`MessageQueue::consume`], handing a message over `max_bytes` on
    /// the wire over unparsed, as an [`UNREADABLE_KIND`] stand-in (so is
    /// any message that is not an Ekko message, whatever the bound).
    async fn consume_bounded(
        &self,
        queue: &str,
        prefetch: u16,
        max_bytes: usize,
    ) -> QueueResult<Box<dyn Consumer>>;

    /// Delete a queue (tests and decommissioned hosts).
    async fn delete_queue(&self, queue: &str) -> QueueResult<()>;

    /// One round trip to the broker, reconnecting if the link is down
    /// (health checks). Needs no permission on any queue or routing key.
    async fn ping(&self) -> QueueResult<()> {
        Ok(())
    }

    /// Messages waiting in `queue` (not counting unacknowledged ones), for
    /// metrics; `None` if the queue does not exist.
    async fn depth(&self, queue: &str) -> QueueResult<Option<u64>>;
}

#[async_trait]
pub trait Consumer: Send {
    /// The next message; waits (reconnecting if need be) until one comes.
    async fn next(&mut self) -> QueueResult<Delivery>;
}

/// A message taken from a queue. Acknowledge it once handled; dropping it
/// unacknowledged, or `nack(true)`, puts it back for another consumer.
pub struct Delivery {
    /// The message, or an [`UNREADABLE_KIND`] stand-in for one that could
    /// not be read.
    pub envelope: Envelope,
    pub redelivered: bool,
    /// The bus user that published it, as the broker checked it
    /// (RabbitMQ's validated `user_id`); `None` in process.
    pub user_id: Option<String>,
    /// Its size on the wire (in process: as serialized, 0 if unbounded).
    pub bytes: usize,
    acker: Box<dyn Acker>,
}

impl Delivery {
    pub(crate) fn new(envelope: Envelope, redelivered: bool, acker: Box<dyn Acker>) -> Delivery {
        Delivery {
            envelope,
            redelivered,
            user_id: None,
            bytes: 0,
            acker,
        }
    }

    pub(crate) fn with_user_id(mut self, user_id: Option<String>) -> Delivery {
        self.user_id = user_id;
        self
    }

    pub(crate) fn with_bytes(mut self, bytes: usize) -> Delivery {
        self.bytes = bytes;
        self
    }

    pub async fn ack(self) -> QueueResult<()> {
        self.acker.ack().await
    }

    pub async fn nack(self, requeue: bool) -> QueueResult<()> {
        self.acker.nack(requeue).await
    }
}

#[async_trait]
pub(crate) trait Acker: Send {
    async fn ack(self: Box<Self>) -> QueueResult<()>;
    async fn nack(self: Box<Self>, requeue: bool) -> QueueResult<()>;
}

/// Who a process is on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusRole {
    /// The controller side: declares the exchange and the shared queues.
    Controller,
    /// A compute host: its bus user may only touch its own queues, so the
    /// exchange is declared passively (it must exist).
    Host,
}

/// Open the queue `transport_url` names, publishing on `exchange`.
pub async fn connect(
    transport_url: &str,
    exchange: &str,
    role: BusRole,
) -> QueueResult<Arc<dyn MessageQueue>> {
    match TransportUrl::parse(transport_url).map_err(|e| QueueError::Url(e.0))? {
        TransportUrl::Memory => Ok(Arc::new(memory::MemoryQueue::new())),
        TransportUrl::Rabbit(uris) => Ok(Arc::new(
            rabbitmq::RabbitQueue::connect(uris, exchange, role).await?,
        )),
    }
}

/// AMQP topic matching: words split on `.`, `*` is one word, `#` zero or more.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| go(rest, &k[i..])),
            Some((&w, rest)) => match k.split_first() {
                Some((kw, krest)) => (w == "*" || w == *kw) && go(rest, krest),
                None => false,
            },
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert!(topic_matches("backup.host1", "backup.host1"));
        assert!(!topic_matches("backup.host1", "backup.host2"));
        assert!(topic_matches("backup.*", "backup.host2"));
        assert!(!topic_matches("backup.*", "backup.a.b"));
        assert!(topic_matches("results.#", "results"));
        assert!(topic_matches("results.#", "results.backup.done"));
        assert!(topic_matches("#", "anything.at.all"));
        assert!(!topic_matches("a.*.c", "a.c"));
    }
}
