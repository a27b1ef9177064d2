//! The conductor's consumer of the status queue: each report is recorded
//! in its own task (one slow or failing report never delays the others,
//! and heartbeats keep flowing), and its outcome decides what happens to
//! the message ([`disposition`]):
//!
//! * recorded → acknowledged;
//! * unreadable (not an Ekko message, or over `[backup] max_report_size`,
//!   never parsed), or refused as contradicting the catalog →
//!   dead-lettered at once (`<exchange>.status.dead-letters`, with the
//!   reason; a large message is kept as a summary) and counted;
//! * a service Ekko needs is down (catalog, bus) → put back after a pause,
//!   without counting against the message (the outage is not its fault);
//! * anything else → put back after a growing pause, at most
//!   [`MAX_RETRIES`] times, then dead-lettered.
//!
//! A message is retried by putting it back (`nack` with requeue), never by
//! publishing a copy: the broker keeps the publisher's user on it, which
//! is how the conductor knows which host sent it ([`sender_of`]); a copy
//! would carry the conductor's own user and be refused. The tries are
//! counted here, per message ([`Retries`]). Dead-lettering is done by the
//! conductor itself, so the in-process queue and RabbitMQ behave alike and
//! no broker policy is needed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::intake::CatchUp;
use crate::config::EkkoConfig;
use crate::queue::rabbitmq::user_of;
use crate::queue::{Delivery, Envelope, QueueError, TransportUrl, Unreadable, UNREADABLE_KIND};
use crate::service::reports::Sender;
use crate::service::ServiceError;
use crate::Ekko;

pub use crate::wire::DEAD_LETTER_KEY;

/// Retries of one message before it is dead-lettered.
pub const MAX_RETRIES: u32 = 5;
/// Reports recorded at the same time.
pub const CONCURRENCY: usize = 16;
/// Message kind of a dead letter (body: [`DeadLetter`]).
pub const DEAD_LETTER_KIND: &str = "status.dead";
/// A dead letter keeps its message whole up to this size (its serialized
/// bytes), else only what it was: the dead letters stay small however
/// large what was refused.
pub const KEPT_WHOLE: usize = 64 << 10;
/// Messages whose tries are counted at once; past it the stalest go.
const TRACKED: usize = 10_000;

/// What to do with a message once its report was handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    /// Never to be retried: kept aside with why.
    DeadLetter(String),
    /// Put back after `after`; `counts` whether it uses up a retry.
    Retry {
        after: Duration,
        counts: bool,
    },
}

/// The outcome of recording a message of `retries` earlier tries.
pub fn disposition(outcome: &Result<(), ServiceError>, retries: u32) -> Disposition {
    match outcome {
        Ok(()) => Disposition::Ack,
        Err(ServiceError::BadMessage(why)) => Disposition::DeadLetter(format!("unreadable: {why}")),
        Err(ServiceError::Refused(why)) => Disposition::DeadLetter(format!("refused: {why}")),
        Err(ServiceError::Unavailable(_)) => Disposition::Retry {
            after: Duration::from_secs(1),
            counts: false,
        },
        Err(e) if retries >= MAX_RETRIES => {
            Disposition::DeadLetter(format!("failed {} times: {e}", retries + 1))
        }
        Err(_) => Disposition::Retry {
            after: Duration::from_millis(250 << retries.min(6)),
            counts: true,
        },
    }
}

/// A message the conductor set aside, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: String,
    /// The bus user that sent it, if the bus said.
    pub user_id: Option<String>,
    /// The message; over [`KEPT_WHOLE`], its id, kind and time with a body
    /// that only says its size (`{"omitted_bytes": n}`).
    pub message: Envelope,
}

/// The message a dead letter keeps of `envelope` of `bytes` on the wire.
fn kept(envelope: &Envelope, bytes: usize) -> Envelope {
    if bytes <= KEPT_WHOLE {
        return envelope.clone();
    }
    Envelope {
        version: envelope.version,
        id: envelope.id.clone(),
        kind: envelope.kind.clone(),
        sent_at: envelope.sent_at.clone(),
        body: serde_json::json!({ "omitted_bytes": bytes }),
        retries: envelope.retries,
        request_id: envelope.request_id.clone(),
    }
}

/// Who sent a report, by its bus user (`[backup] host_bus_users`).
pub fn sender_of(ekko: &Ekko, user_id: Option<&str>) -> Result<Sender, String> {
    let b = &ekko.config.backup;
    if !b.host_bus_users {
        return Ok(Sender::Trusted);
    }
    match user_id.and_then(|u| u.strip_prefix(b.host_bus_user_prefix.as_str())) {
        Some(host) if !host.is_empty() => Ok(Sender::Host(host.to_string())),
        _ => Err(format!(
            "sent by bus user {user_id:?}, not a host's own user ({}<host>)",
            b.host_bus_user_prefix
        )),
    }
}

/// Why the conductor's own bus user looks like one compute hosts hold, if
/// it does (README, "Message bus users"). Whoever holds the controller's
/// user can send any host a job or a cancel and take other hosts'
/// reports off the status queue, so with host bus users the controllers
/// need a user no compute host has: not a host's, and not the one Nova's
/// services share (every nova-compute has that in nova.conf).
pub fn shared_bus_user(config: &EkkoConfig) -> Option<String> {
    let Ok(TransportUrl::Rabbit(uris)) = TransportUrl::parse(&config.default.transport_url) else {
        return None;
    };
    let prefix = &config.backup.host_bus_user_prefix;
    uris.iter()
        .map(|u| user_of(u).unwrap_or_else(|| "guest".into()))
        .find_map(|user| {
            if !prefix.is_empty() && user.starts_with(prefix.as_str()) {
                Some(format!(
                    "the conductor connects as {user}, a compute host's user"
                ))
            } else if matches!(
                user.as_str(),
                "guest" | "stackrabbit" | "openstack" | "nova" | "rabbit" | "rabbitmq"
            ) {
                Some(format!(
                    "the conductor connects as {user:?}, a user OpenStack's services (and so the compute hosts) usually share"
                ))
            } else {
                None
            }
        })
}

/// What the consumer counted since it started.
#[derive(Debug, Default)]
pub struct Counters {
    pub recorded: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub retried: AtomicU64,
}

/// Failed tries per message (by its bus user and id), counted by this
/// conductor; a message another conductor settles is forgotten once idle
/// ([`Retries::forget_idle`]). Several conductors each count their own
/// tries, so a message is tried at most [`MAX_RETRIES`] + 1 times by each.
#[derive(Debug, Default)]
pub struct Retries {
    tries: Mutex<HashMap<TriesKey, (u32, Instant)>>,
}

/// A message, by the bus user that sent it and its id.
type TriesKey = (Option<String>, String);

impl Retries {
    fn lock(&self) -> MutexGuard<'_, HashMap<TriesKey, (u32, Instant)>> {
        self.tries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(delivery: &Delivery) -> TriesKey {
        (delivery.user_id.clone(), delivery.envelope.id.clone())
    }

    /// Earlier failed tries of this message (a copy republished by an
    /// older conductor says how many it made).
    pub fn of(&self, delivery: &Delivery) -> u32 {
        let here = self.lock().get(&Self::key(delivery)).map_or(0, |t| t.0);
        here.max(delivery.envelope.retries)
    }

    /// One more failed try.
    pub fn failed(&self, delivery: &Delivery) {
        let mut tries = self.lock();
        if tries.len() >= TRACKED {
            let oldest = Instant::now() - Duration::from_secs(60);
            tries.retain(|_, (_, at)| *at > oldest);
            if tries.len() >= TRACKED {
                tries.clear();
            }
        }
        let now = Instant::now();
        let entry = tries.entry(Self::key(delivery)).or_insert((0, now));
        *entry = (entry.0 + 1, now);
    }

    /// The message is settled here: nothing more to count.
    pub fn settled(&self, delivery: &Delivery) {
        self.lock().remove(&Self::key(delivery));
    }

    /// Forget messages not tried for `idle` (settled by another
    /// conductor, or gone).
    pub fn forget_idle(&self, idle: Duration) {
        let now = Instant::now();
        self.lock()
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < idle);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Record a delivery's report (or find it unreadable).
async fn outcome_of(
    ekko: &Ekko,
    envelope: &Envelope,
    user_id: Option<&str>,
) -> Result<(), ServiceError> {
    if envelope.kind == UNREADABLE_KIND {
        let why = envelope
            .body_as::<Unreadable>(UNREADABLE_KIND)
            .map_or_else(|e| e.to_string(), |u| u.reason);
        return Err(ServiceError::BadMessage(why));
    }
    let sender = sender_of(ekko, user_id).map_err(ServiceError::Refused)?;
    if crate::failpoint::fails_once("conductor.record", &envelope.kind) {
        return Err(ServiceError::Internal(anyhow::anyhow!(
            "error point conductor.record: a transient fault"
        )));
    }
    crate::service::reports::record(ekko, envelope, &sender).await
}

/// Record one delivery and settle it.
pub async fn handle(
    ekko: Ekko,
    delivery: Delivery,
    counters: Arc<Counters>,
    retries: Arc<Retries>,
) {
    // Logged under the request the report follows from (`[DEFAULT]
    // use_json` and journald keep the fields; text shows the span). The
    // sender's id and kind are untrusted: Debug-quoted, never raw.
    let span = tracing::info_span!(
        "report",
        request_id = delivery.envelope.request_id.as_deref().unwrap_or("-"),
        kind = ?delivery.envelope.kind,
        message = ?delivery.envelope.id,
    );
    let request_id = delivery.envelope.request_id.clone();
    let work = handle_report(ekko, delivery, counters, retries);
    crate::telemetry::with_request_id(request_id, tracing::Instrument::instrument(work, span)).await
}

async fn handle_report(
    ekko: Ekko,
    delivery: Delivery,
    counters: Arc<Counters>,
    retries: Arc<Retries>,
) {
    let outcome = outcome_of(&ekko, &delivery.envelope, delivery.user_id.as_deref()).await;
    let tried = retries.of(&delivery);
    let (id, kind) = (&delivery.envelope.id, &delivery.envelope.kind);
    let settled = match disposition(&outcome, tried) {
        Disposition::Ack => {
            counters.recorded.fetch_add(1, Ordering::Relaxed);
            retries.settled(&delivery);
            delivery.ack().await
        }
        Disposition::DeadLetter(reason) => {
            tracing::error!(?id, ?kind, user = ?delivery.user_id, bytes = delivery.bytes, %reason, "status message dead-lettered");
            let bytes = match delivery.bytes {
                0 => delivery.envelope.to_bytes().map_or(usize::MAX, |b| b.len()),
                n => n,
            };
            let letter = DeadLetter {
                reason,
                user_id: delivery.user_id.clone(),
                message: kept(&delivery.envelope, bytes),
            };
            let published = match Envelope::new(DEAD_LETTER_KIND, &letter) {
                Ok(env) => ekko.queue.publish_mandatory(DEAD_LETTER_KEY, &env).await,
                Err(e) => Err(e),
            };
            match published {
                Ok(()) => {
                    counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    retries.settled(&delivery);
                    delivery.ack().await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dead letter not published; the message goes back");
                    if matches!(e, QueueError::Unroutable(_)) {
                        // The dead-letter queue is gone: declare it again.
                        let _ = ekko.topology().declare_status(ekko.queue.as_ref()).await;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    delivery.nack(true).await
                }
            }
        }
        Disposition::Retry { after, counts } => {
            if let Err(e) = &outcome {
                tracing::warn!(?id, ?kind, tries = tried + 1, error = %e, "cannot record the report yet");
            }
            if counts {
                retries.failed(&delivery);
                counters.retried.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(after).await;
            // Put back, as sent (with the sender's user).
            delivery.nack(true).await
        }
    };
    if let Err(e) = settled {
        tracing::warn!(error = %e, "status message not settled; the broker redelivers it");
    }
}

/// What the conductor's housekeeping remembers between ticks.
#[derive(Debug, Default)]
pub struct Housekeeping {
    /// Whether the last tick found the conductor behind.
    behind: bool,
}

impl Housekeeping {
    /// One tick: fail stalled jobs (unless the conductor is behind the
    /// status queue by more than half the stall timeout: their progress
    /// may be waiting in it), start due policies, forget idle retries.
    pub async fn tick(
        &mut self,
        ekko: &Ekko,
        stall: Duration,
        catch_up: &CatchUp,
        retries: &Retries,
    ) {
        let behind = catch_up.behind();
        if behind > stall / 2 {
            if !self.behind {
                tracing::warn!(
                    behind_s = behind.as_secs(),
                    "the conductor is behind the status queue: no job is failed as stalled until it catches up"
                );
            }
            self.behind = true;
        } else {
            if self.behind {
                tracing::info!("the conductor caught up with the status queue");
            }
            self.behind = false;
            if let Err(e) = crate::service::housekeeping::reap_stalled(ekko, stall).await {
                tracing::warn!(error = %e, "stalled-job check failed");
            }
            if let Err(e) = crate::service::exports::end_overdue(ekko, stall).await {
                tracing::warn!(error = %e, "overdue-export check failed");
            }
        }
        if let Err(e) = crate::service::housekeeping::run_due_policies(ekko).await {
            tracing::warn!(error = %e, "scheduler pass failed");
        }
        // Images of failed restores that Glance could not delete before.
        crate::service::images::settle_in_background(ekko, None);
        retries.forget_idle(Duration::from_secs(600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_errors_are_set_aside_and_transient_ones_retried_a_few_times() {
        assert_eq!(disposition(&Ok(()), 0), Disposition::Ack);
        let refused = Err(ServiceError::Refused("forged".into()));
        assert!(
            matches!(disposition(&refused, 0), Disposition::DeadLetter(r) if r.contains("forged"))
        );
        let bad = Err(ServiceError::BadMessage("not JSON".into()));
        assert!(matches!(disposition(&bad, 0), Disposition::DeadLetter(_)));
        let down = Err(ServiceError::Unavailable("catalog down".into()));
        assert_eq!(
            disposition(&down, 99),
            Disposition::Retry {
                after: Duration::from_secs(1),
                counts: false
            },
            "an outage never uses up retries"
        );
        let odd = || Err(ServiceError::Internal(anyhow::anyhow!("deadlock")));
        assert!(matches!(
            disposition(&odd(), 0),
            Disposition::Retry { counts: true, .. }
        ));
        assert!(matches!(
            disposition(&odd(), MAX_RETRIES),
            Disposition::DeadLetter(r) if r.contains("failed 6 times")
        ));
    }

    /// Tries are counted per message and sender, here: the message itself
    /// goes back unchanged (same id, same user, no copy).
    #[tokio::test]
    async fn tries_are_counted_here_per_message() {
        use crate::queue::memory::MemoryQueue;
        use crate::queue::MessageQueue;
        let q = MemoryQueue::new();
        q.declare_queue("s", &["s".to_string()]).await.unwrap();
        let sent = Envelope::new("job.failed", &serde_json::json!({})).unwrap();
        q.publish("s", &sent).await.unwrap();
        let mut c = q.consume("s", 4).await.unwrap();
        let retries = Retries::default();
        for n in 0..3 {
            let d = c.next().await.unwrap();
            assert_eq!(d.envelope, sent, "the same message, not a copy");
            assert_eq!(retries.of(&d), n);
            retries.failed(&d);
            d.nack(true).await.unwrap();
        }
        let d = c.next().await.unwrap();
        assert_eq!(retries.of(&d), 3);
        let mut older = d.envelope.clone();
        older.retries = 7;
        q.publish("s", &older).await.unwrap();
        retries.settled(&d);
        assert!(retries.is_empty());
        d.ack().await.unwrap();
        let d = c.next().await.unwrap();
        assert_eq!(retries.of(&d), 7, "an older conductor's count is kept");
        retries.failed(&d);
        retries.forget_idle(Duration::ZERO);
        assert!(retries.is_empty());
    }

    #[test]
    fn a_large_message_is_kept_as_a_summary() {
        let small = Envelope::new("host.inventory", &serde_json::json!({"host": "h"})).unwrap();
        assert_eq!(kept(&small, 100), small);
        let big = kept(&small, 9 << 20);
        assert_eq!((&big.id, &big.kind), (&small.id, &small.kind));
        assert_eq!(big.body, serde_json::json!({"omitted_bytes": 9 << 20}));
    }

    #[test]
    fn a_controller_on_a_user_hosts_hold_is_named() {
        let with = |url: &str| {
            let mut c = EkkoConfig::default();
            c.default.transport_url = url.into();
            shared_bus_user(&c)
        };
        assert_eq!(with("memory://"), None);
        assert_eq!(with("rabbit://ekko:pw@mq1:5672,ekko:pw@mq2:5672/"), None);
        assert!(with("rabbit://stackrabbit:pw@mq1:5672/").is_some());
        assert!(with("rabbit://mq1:5672/").is_some(), "guest");
        assert!(with("rabbit://ekko:pw@mq1,ekko-host-c1:pw@mq2/")
            .is_some_and(|w| w.contains("compute host")));
    }
}
