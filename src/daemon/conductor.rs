//! The conductor's consumer of the status queue: each report is recorded
//! in its own task (one slow or failing report never delays the others,
//! and heartbeats keep flowing), and its outcome decides what happens to
//! the message ([`disposition`]):
//!
//! * recorded → acknowledged;
//! * unreadable, or refused as contradicting the catalog → dead-lettered
//!   at once (`<exchange>.status.dead`, with the reason) and counted;
//! * a service Ekko needs is down (catalog, bus) → put back after a pause,
//!   without counting against the message (the outage is not its fault);
//! * anything else → retried after a growing pause, at most
//!   [`MAX_RETRIES`] times, then dead-lettered.
//!
//! Dead-lettering and retries are done by the conductor itself (it
//! republishes), so the in-process queue and RabbitMQ behave alike and no
//! broker policy is needed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::queue::{Delivery, Envelope};
use crate::service::reports::Sender;
use crate::service::ServiceError;
use crate::wire;
use crate::Ekko;

/// Retries of one message before it is dead-lettered.
pub const MAX_RETRIES: u32 = 5;
/// Reports recorded at the same time.
pub const CONCURRENCY: usize = 16;
/// Message kind of a dead letter (body: [`DeadLetter`]).
pub const DEAD_LETTER_KIND: &str = "status.dead";
/// Routing key dead letters are published with.
pub const DEAD_LETTER_KEY: &str = "dead.status";

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
    pub message: Envelope,
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

/// What the consumer counted since it started.
#[derive(Debug, Default)]
pub struct Counters {
    pub recorded: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub retried: AtomicU64,
}

/// Record one delivery and settle it.
pub async fn handle(ekko: Ekko, delivery: Delivery, counters: Arc<Counters>) {
    let envelope = delivery.envelope.clone();
    let outcome = match sender_of(&ekko, delivery.user_id.as_deref()) {
        Ok(sender) => crate::service::reports::record(&ekko, &envelope, &sender).await,
        Err(why) => Err(ServiceError::Refused(why)),
    };
    let disposition = disposition(&outcome, envelope.retries);
    let settled = match disposition {
        Disposition::Ack => {
            counters.recorded.fetch_add(1, Ordering::Relaxed);
            delivery.ack().await
        }
        Disposition::DeadLetter(reason) => {
            tracing::error!(id = %envelope.id, kind = %envelope.kind, user = ?delivery.user_id, %reason, "status message dead-lettered");
            let letter = DeadLetter {
                reason,
                user_id: delivery.user_id.clone(),
                message: envelope,
            };
            match Envelope::new(DEAD_LETTER_KIND, &letter) {
                Ok(env) => match ekko.queue.publish(DEAD_LETTER_KEY, &env).await {
                    Ok(()) => {
                        counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        delivery.ack().await
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "dead letter not published; the message goes back");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        delivery.nack(true).await
                    }
                },
                Err(_) => delivery.nack(false).await,
            }
        }
        Disposition::Retry { after, counts } => {
            if let Err(e) = &outcome {
                tracing::warn!(id = %envelope.id, kind = %envelope.kind, retries = envelope.retries, error = %e, "cannot record the report yet");
            }
            tokio::time::sleep(after).await;
            if counts {
                // Republished with one more retry counted, then taken off:
                // a copy goes to the back of the queue, so the others pass.
                let mut again = envelope.clone();
                again.retries += 1;
                match ekko
                    .queue
                    .publish(&wire::report_routing_key(&again.kind), &again)
                    .await
                {
                    Ok(()) => {
                        counters.retried.fetch_add(1, Ordering::Relaxed);
                        delivery.ack().await
                    }
                    Err(_) => delivery.nack(true).await,
                }
            } else {
                delivery.nack(true).await
            }
        }
    };
    if let Err(e) = settled {
        tracing::warn!(error = %e, "status message not settled; the broker redelivers it");
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
}
