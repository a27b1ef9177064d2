//! RabbitMQ through lapin: a durable topic exchange, durable queues,
//! persistent messages with publisher confirms (mandatory where asked: a
//! message the broker returns as unroutable is a failed publish), manual
//! ack with a prefetch window, and reconnection with exponential back-off
//! (capped) on any connection or channel failure. Messages a dead consumer
//! had not acknowledged are redelivered by the broker to another consumer.
//! A message over a consumer's bound is never parsed, and one that is not
//! an Ekko message is not dropped here: both reach the consumer as
//! [`UNREADABLE_KIND`](super::UNREADABLE_KIND) stand-ins.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::Mutex;

use super::{
    Acker, BusRole, Consumer, Delivery, Envelope, MessageQueue, QueueBounds, QueueError,
    QueueResult,
};

/// How long `publish` keeps retrying through a broker outage.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(120);
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

struct Link {
    connection: Connection,
    /// Publishing channel, in confirm mode.
    channel: Channel,
}

struct Inner {
    uris: Vec<String>,
    exchange: String,
    role: BusRole,
    /// The bus user of the URIs: every message carries it as `user_id`,
    /// which RabbitMQ checks against the connection's user, so a consumer
    /// knows who published.
    user: Option<String>,
    link: Mutex<Option<Link>>,
    /// Queues declared so far, re-declared after a reconnect.
    topology: Mutex<Vec<Declared>>,
}

/// A queue as declared: name, bindings, bounds.
type Declared = (String, Vec<String>, QueueBounds);

/// The queue arguments of `bounds` (overflow: the oldest go first).
fn queue_arguments(bounds: &QueueBounds) -> FieldTable {
    let mut args = FieldTable::default();
    let long = |n: u64| AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX));
    if let Some(n) = bounds.max_length {
        args.insert("x-max-length".into(), long(n.into()));
    }
    if let Some(n) = bounds.max_bytes {
        args.insert("x-max-length-bytes".into(), long(n));
    }
    if let Some(ttl) = bounds.message_ttl {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        args.insert("x-message-ttl".into(), long(ms));
    }
    args
}

#[derive(Clone)]
pub struct RabbitQueue {
    inner: Arc<Inner>,
}

/// The bus user an AMQP URI connects as (percent-decoded), if it names one.
pub fn user_of(uri: &str) -> Option<String> {
    let u = url::Url::parse(uri).ok()?;
    let user: String = url::form_urlencoded::parse(u.username().as_bytes())
        .map(|(k, v)| format!("{k}{v}"))
        .collect();
    Some(user).filter(|u| !u.is_empty())
}

fn unavailable(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

fn next_backoff(d: Duration) -> Duration {
    (d * 2).min(BACKOFF_MAX)
}

impl RabbitQueue {
    /// Connect (trying each host in turn) and declare the exchange.
    pub async fn connect(
        uris: Vec<String>,
        exchange: &str,
        role: BusRole,
    ) -> QueueResult<RabbitQueue> {
        let user = uris.first().and_then(|u| user_of(u));
        let q = RabbitQueue {
            inner: Arc::new(Inner {
                uris,
                exchange: exchange.to_string(),
                role,
                user,
                link: Mutex::new(None),
                topology: Mutex::new(Vec::new()),
            }),
        };
        match q.publish_channel().await {
            Ok(_) => {}
            // A host may start before the controller made the exchange:
            // publishing and consuming retry until it exists.
            Err(e) if role == BusRole::Host => {
                tracing::warn!(error = %e, "message bus not ready yet; retrying in the background");
            }
            Err(e) => return Err(e),
        }
        Ok(q)
    }

    async fn open_connection(&self) -> QueueResult<Connection> {
        let mut last = None;
        for uri in &self.inner.uris {
            let props = ConnectionProperties::default().with_connection_name("ekko".into());
            match Connection::connect(uri, props).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(unavailable(last.map_or_else(
            || "no broker configured".to_string(),
            |e| e.to_string(),
        )))
    }

    /// Declare the exchange and every known queue on a fresh channel.
    async fn declare_topology(&self, channel: &Channel) -> QueueResult<()> {
        channel
            .exchange_declare(
                self.inner.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    // A host may not (re)declare it; it must exist.
                    passive: self.inner.role == BusRole::Host,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let topology = self.inner.topology.lock().await.clone();
        for (queue, bindings, bounds) in topology {
            self.declare_on(channel, &queue, &bindings, &bounds).await?;
        }
        Ok(())
    }

    async fn declare_on(
        &self,
        channel: &Channel,
        queue: &str,
        bindings: &[String],
        bounds: &QueueBounds,
    ) -> QueueResult<()> {
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::durable(),
                queue_arguments(bounds),
            )
            .await
            .map_err(unavailable)?;
        for key in bindings {
            channel
                .queue_bind(
                    queue.into(),
                    self.inner.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// The publishing channel, (re)connecting if the link is down.
    async fn publish_channel(&self) -> QueueResult<Channel> {
        let mut link = self.inner.link.lock().await;
        if let Some(l) = link.as_ref() {
            if l.connection.status().connected() && l.channel.status().connected() {
                return Ok(l.channel.clone());
            }
        }
        *link = None;
        let connection = self.open_connection().await?;
        let channel = connection.create_channel().await.map_err(unavailable)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        self.declare_topology(&channel).await?;
        *link = Some(Link {
            connection,
            channel: channel.clone(),
        });
        Ok(channel)
    }

    /// A new channel on the link (connecting if it is down), for a caller
    /// that closes it: nothing it does can close the publishing channel.
    async fn own_channel(&self) -> QueueResult<Channel> {
        self.publish_channel().await?;
        let link = self.inner.link.lock().await;
        let l = link
            .as_ref()
            .ok_or_else(|| unavailable("no link to the broker"))?;
        l.connection.create_channel().await.map_err(unavailable)
    }

    async fn publish_once(
        &self,
        routing_key: &str,
        payload: &[u8],
        mandatory: bool,
    ) -> QueueResult<()> {
        let channel = self.publish_channel().await?;
        let mut props = BasicProperties::default()
            .with_delivery_mode(2) // persistent
            .with_content_type("application/json".into());
        if let Some(user) = &self.inner.user {
            props = props.with_user_id(user.as_str().into());
        }
        let confirm = channel
            .basic_publish(
                self.inner.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                payload,
                props,
            )
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        match confirm {
            // Unroutable: the broker returns a mandatory message, then
            // confirms it (it has nothing left to lose).
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
                Err(QueueError::Unroutable(routing_key.to_string()))
            }
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Nack(None) | Confirmation::NotRequested => Err(QueueError::Nacked),
        }
    }

    /// Publish, reconnecting through an outage for up to
    /// [`PUBLISH_DEADLINE`]; a nack or a return is final.
    async fn publish_with(
        &self,
        routing_key: &str,
        message: &Envelope,
        mandatory: bool,
    ) -> QueueResult<()> {
        let payload = message.to_bytes()?;
        let deadline = tokio::time::Instant::now() + PUBLISH_DEADLINE;
        let mut backoff = BACKOFF_START;
        loop {
            match self.publish_once(routing_key, &payload, mandatory).await {
                Ok(()) => return Ok(()),
                Err(e @ (QueueError::Nacked | QueueError::Unroutable(_))) => return Err(e),
                Err(e) if tokio::time::Instant::now() + backoff > deadline => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, routing_key, "publish failed, reconnecting");
                    self.reset().await;
                    tokio::time::sleep(backoff).await;
                    backoff = next_backoff(backoff);
                }
            }
        }
    }

    async fn reset(&self) {
        *self.inner.link.lock().await = None;
    }
}

#[async_trait]
impl MessageQueue for RabbitQueue {
    async fn declare_bounded_queue(
        &self,
        queue: &str,
        bindings: &[String],
        bounds: QueueBounds,
    ) -> QueueResult<()> {
        {
            let mut topology = self.inner.topology.lock().await;
            if !topology
                .iter()
                .any(|(q, b, l)| q == queue && b == bindings && *l == bounds)
            {
                topology.push((queue.to_string(), bindings.to_vec(), bounds));
            }
        }
        let channel = self.publish_channel().await?;
        self.declare_on(&channel, queue, bindings, &bounds).await
    }

    async fn publish(&self, routing_key: &str, message: &Envelope) -> QueueResult<()> {
        self.publish_with(routing_key, message, false).await
    }

    async fn publish_mandatory(&self, routing_key: &str, message: &Envelope) -> QueueResult<()> {
        self.publish_with(routing_key, message, true).await
    }

    async fn consume_bounded(
        &self,
        queue: &str,
        prefetch: u16,
        max_bytes: usize,
    ) -> QueueResult<Box<dyn Consumer>> {
        let mut consumer = RabbitConsumer {
            parent: self.clone(),
            queue: queue.to_string(),
            prefetch: prefetch.max(1),
            max_bytes,
            current: None,
        };
        consumer.subscribe().await?;
        Ok(Box::new(consumer))
    }

    async fn ping(&self) -> QueueResult<()> {
        // Opening and closing a channel is a broker round trip that no
        // permission guards (a compute host may publish `status.*` only).
        let channel = self.own_channel().await?;
        channel
            .close(200, "health check".into())
            .await
            .map_err(unavailable)
    }

    async fn depth(&self, queue: &str) -> QueueResult<Option<u64>> {
        // A channel of its own: a passive declare of a missing queue closes
        // the channel it is sent on.
        let channel = self.own_channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(q) => {
                let _ = channel.close(200, "depth".into()).await;
                Ok(Some(u64::from(q.message_count())))
            }
            // NOT-FOUND: no such queue (a host that never started).
            Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404) => {
                Ok(None)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn delete_queue(&self, queue: &str) -> QueueResult<()> {
        self.inner
            .topology
            .lock()
            .await
            .retain(|(q, _, _)| q != queue);
        let channel = self.publish_channel().await?;
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

struct Subscription {
    // Kept so the consumer's own connection lives as long as it does.
    _connection: Connection,
    _channel: Channel,
    stream: lapin::Consumer,
}

/// A consumer on its own connection, so a slow handler never blocks
/// publishing, and a broken link is rebuilt without losing the queue.
struct RabbitConsumer {
    parent: RabbitQueue,
    queue: String,
    prefetch: u16,
    /// Larger messages are handed over unparsed.
    max_bytes: usize,
    current: Option<Subscription>,
}

impl RabbitConsumer {
    async fn subscribe(&mut self) -> QueueResult<()> {
        let connection = self.parent.open_connection().await?;
        let channel = connection.create_channel().await.map_err(unavailable)?;
        self.parent.declare_topology(&channel).await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let stream = channel
            .basic_consume(
                self.queue.as_str().into(),
                format!("ekko-{}", uuid::Uuid::new_v4()).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        self.current = Some(Subscription {
            _connection: connection,
            _channel: channel,
            stream,
        });
        Ok(())
    }
}

#[async_trait]
impl Consumer for RabbitConsumer {
    async fn next(&mut self) -> QueueResult<Delivery> {
        let mut backoff = BACKOFF_START;
        loop {
            if self.current.is_none() {
                if let Err(e) = self.subscribe().await {
                    tracing::warn!(error = %e, queue = %self.queue, "cannot consume, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = next_backoff(backoff);
                    continue;
                }
                backoff = BACKOFF_START;
            }
            let Some(sub) = self.current.as_mut() else {
                continue;
            };
            match sub.stream.next().await {
                Some(Ok(d)) => {
                    let bytes = d.data.len();
                    let envelope = if bytes > self.max_bytes {
                        let why = format!(
                            "{bytes} bytes, over this consumer's bound of {}",
                            self.max_bytes
                        );
                        Envelope::unreadable(why, bytes)
                    } else {
                        Envelope::from_bytes(&d.data)
                            .unwrap_or_else(|e| Envelope::unreadable(e.to_string(), bytes))
                    };
                    if d.redelivered {
                        crate::metrics::metrics()
                            .redeliveries
                            .get_or_create(&crate::metrics::labels(&[("queue", &self.queue)]))
                            .inc();
                    }
                    let user_id = d.properties.user_id().as_ref().map(|u| u.to_string());
                    let acker = RabbitAcker { acker: d.acker };
                    return Ok(Delivery::new(envelope, d.redelivered, Box::new(acker))
                        .with_user_id(user_id)
                        .with_bytes(bytes));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, queue = %self.queue, "consumer link failed, reconnecting");
                    self.current = None;
                }
                None => {
                    tracing::warn!(queue = %self.queue, "consumer cancelled, reconnecting");
                    self.current = None;
                }
            }
        }
    }
}

struct RabbitAcker {
    acker: lapin::Acker,
}

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(self: Box<Self>) -> QueueResult<()> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn nack(self: Box<Self>, requeue: bool) -> QueueResult<()> {
        self.acker
            .nack(BasicNackOptions {
                requeue,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
