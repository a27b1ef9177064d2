//! Prometheus metrics (prometheus-client's registry and text exposition).
//! One registry per process; each daemon serves it at `/metrics` on its
//! `[metrics]` listen address (off unless set). Counters count from the
//! process's start; the catalog's gauges (backups and restores by status,
//! heartbeat age per host) are set when the API's metrics are scraped.
//!
//! The same names on different daemons mean the same thing seen from each:
//! `ekko_backup_bytes_total` counts what a worker's backups reported, or
//! what the conductor committed; Prometheus tells them apart by target.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A metric's labels, in order.
pub type Labels = Vec<(&'static str, String)>;

type Counters = Family<Labels, Counter>;
type Gauges = Family<Labels, Gauge>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Request latencies: 1 ms to about 33 s.
fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Job and pass durations: 1 s to about 9 h.
fn job_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// Every metric of a process.
pub struct Metrics {
    registry: Registry,
    /// API requests by `method`, `route` (the path pattern) and `status`.
    pub api_requests: Counters,
    /// API request latency by `method` and `route`.
    pub api_request_seconds: Histograms,
    /// Backups and restores in the catalog by `status` (API, at scrape).
    pub backups: Gauges,
    pub restores: Gauges,
    /// Seconds since each compute `host`'s last heartbeat (API, at scrape).
    pub heartbeat_age_seconds: Gauges,
    /// Bytes of backups by `stage`: `scanned` (the disks' size), `read`,
    /// `new` (not deduplicated), `stored` (compressed, in new segments).
    pub backup_bytes: Counters,
    /// Jobs run on a compute host by `kind` and `outcome`.
    pub job_seconds: Histograms,
    /// Backups committed by the conductor, from start to commit, by `kind`.
    pub backup_seconds: Histograms,
    /// Messages the broker handed over again, by `queue`.
    pub redeliveries: Counters,
    /// Retention passes, and segments by `outcome` (`condemned`,
    /// `deleted`, `compacted`).
    pub retention_pass_seconds: Histogram,
    pub retention_segments: Counters,
    pub retention_bytes_reclaimed: Counter,
    /// Messages waiting, by `queue` (the API's scrapes read the broker).
    pub queue_messages: Gauges,
    /// Replication passes, bytes copied to the second store, backups
    /// replicated.
    pub replication_pass_seconds: Histogram,
    pub replication_bytes: Counter,
    pub replication_backups: Counter,
    /// Token validations by `result` (`hit`, `miss`) of the token cache.
    pub token_cache: Counters,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ekko");
        let m = Metrics {
            api_requests: Counters::default(),
            api_request_seconds: Histograms::new_with_constructor(request_buckets),
            backups: Gauges::default(),
            restores: Gauges::default(),
            heartbeat_age_seconds: Gauges::default(),
            backup_bytes: Counters::default(),
            job_seconds: Histograms::new_with_constructor(job_buckets),
            backup_seconds: Histograms::new_with_constructor(job_buckets),
            redeliveries: Counters::default(),
            retention_pass_seconds: job_buckets(),
            retention_segments: Counters::default(),
            retention_bytes_reclaimed: Counter::default(),
            queue_messages: Gauges::default(),
            replication_pass_seconds: job_buckets(),
            replication_bytes: Counter::default(),
            replication_backups: Counter::default(),
            token_cache: Counters::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "api_requests",
            "API requests by method, route and status",
            m.api_requests.clone(),
        );
        r.register(
            "api_request_duration_seconds",
            "API request latency by method and route",
            m.api_request_seconds.clone(),
        );
        r.register(
            "backups",
            "Backups in the catalog by status",
            m.backups.clone(),
        );
        r.register(
            "restores",
            "Restores in the catalog by status",
            m.restores.clone(),
        );
        r.register(
            "host_heartbeat_age_seconds",
            "Seconds since a compute host's last heartbeat",
            m.heartbeat_age_seconds.clone(),
        );
        r.register(
            "backup_bytes",
            "Bytes of backups by stage (scanned, read, new, stored)",
            m.backup_bytes.clone(),
        );
        r.register(
            "job_duration_seconds",
            "Jobs run on this compute host by kind and outcome",
            m.job_seconds.clone(),
        );
        r.register(
            "backup_commit_duration_seconds",
            "Committed backups, from start to commit, by kind",
            m.backup_seconds.clone(),
        );
        r.register(
            "queue_redeliveries",
            "Messages the broker handed over again, by queue",
            m.redeliveries.clone(),
        );
        r.register(
            "retention_pass_duration_seconds",
            "Retention passes",
            m.retention_pass_seconds.clone(),
        );
        r.register(
            "retention_segments",
            "Segments by retention outcome (condemned, deleted, compacted)",
            m.retention_segments.clone(),
        );
        r.register(
            "retention_reclaimed_bytes",
            "Bytes of segments deleted by retention",
            m.retention_bytes_reclaimed.clone(),
        );
        r.register(
            "queue_messages",
            "Messages waiting in a queue (job, control, status and dead-letter queues)",
            m.queue_messages.clone(),
        );
        r.register(
            "replication_pass_duration_seconds",
            "Replication passes",
            m.replication_pass_seconds.clone(),
        );
        r.register(
            "replication_copied_bytes",
            "Bytes copied to the second store",
            m.replication_bytes.clone(),
        );
        r.register(
            "replication_backups",
            "Backups copied whole to the second store",
            m.replication_backups.clone(),
        );
        r.register(
            "token_cache_lookups",
            "Token validations by token cache result (hit, miss)",
            m.token_cache.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Count one backup's bytes by stage.
    pub fn add_backup_bytes(&self, scanned: i64, read: i64, new: i64, stored: i64) {
        for (stage, n) in [
            ("scanned", scanned),
            ("read", read),
            ("new", new),
            ("stored", stored),
        ] {
            self.backup_bytes
                .get_or_create(&vec![("stage", stage.to_string())])
                .inc_by(n.max(0) as u64);
        }
    }

    /// Observe a job's run on a compute host.
    pub fn job_ended(&self, kind: &str, outcome: &str, took: Duration) {
        self.job_seconds
            .get_or_create(&vec![
                ("kind", kind.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .observe(took.as_secs_f64());
    }
}

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// A label set from pairs.
pub fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_families_with_labels() {
        let m = metrics();
        m.add_backup_bytes(10, 5, 3, 2);
        m.api_requests
            .get_or_create(&labels(&[
                ("method", "GET"),
                ("route", "/v1/backups"),
                ("status", "200"),
            ]))
            .inc();
        m.job_ended("backup", "done", Duration::from_secs(3));
        let text = m.render();
        assert!(
            text.contains("ekko_backup_bytes_total{stage=\"scanned\"}"),
            "{text}"
        );
        assert!(
            text.contains(
                "ekko_api_requests_total{method=\"GET\",route=\"/v1/backups\",status=\"200\"}"
            ),
            "{text}"
        );
        assert!(
            text.contains("ekko_job_duration_seconds_count{kind=\"backup\",outcome=\"done\"}"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ekko_retention_pass_duration_seconds histogram"),
            "{text}"
        );
    }
}
