//! An export on this host: one disk of a backup served read-only over NBD
//! (`export.start`, on the control queue) until its lifetime runs out, the
//! controller stops it (`export.stop`) or the worker shuts down. The
//! message is acknowledged as soon as it is read: an export is not
//! redelivered after a crash (the conductor sees it missing from this
//! host's heartbeat and ends it), and a long-lived export must not hold an
//! unacknowledged delivery. It answers only to its secret NBD name.

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::watch;

use super::{lock, Worker};
use crate::backup::export::BackupExport;
use crate::backup::reader::{ReadLimits, RecordReader};
use crate::execution::previous;
use crate::nbd::server::{serve, Endpoint, Export, Listener};
use crate::queue::Delivery;
use crate::wire::{
    ExportEnded, ExportJob, ExportReady, Relocation, EXPORT_ENDED, EXPORT_READY, EXPORT_START,
};

/// The exports served on this host.
#[derive(Default)]
pub(super) struct Exports {
    /// By id: send `true` to stop one.
    served: std::collections::HashMap<String, watch::Sender<bool>>,
    /// The worker shuts down: no new export starts.
    closed: bool,
}

enum Registered {
    Yes(watch::Receiver<bool>),
    Duplicate,
    No(String),
}

/// A bound export, ready to serve.
struct Bound {
    export: Arc<Export>,
    listener: Listener,
    address: String,
}

impl Worker {
    pub(super) async fn handle_export(self: Arc<Self>, delivery: Delivery) {
        let job: ExportJob = match delivery.envelope.body_as(EXPORT_START) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(id = %delivery.envelope.id, error = %e, "rejecting an export this worker cannot read");
                let _ = delivery.nack(false).await;
                return;
            }
        };
        let _ = delivery.ack().await;
        let id = job.export_id.clone();
        // Registered before anything is bound: a stop that arrives while
        // the map loads finds it.
        let mut stop = match self.register_export(&id) {
            Registered::Yes(rx) => rx,
            // Served already (a duplicate message): nothing to report.
            Registered::Duplicate => return,
            Registered::No(why) => return self.export_ended(&id, Some(why)).await,
        };
        let bound = tokio::select! {
            b = self.bind_export(&job) => b,
            _ = stop.wait_for(|s| *s) => Err("stopped before it served".to_string()),
        };
        let bound = match bound {
            Ok(b) => b,
            Err(why) => {
                lock(&self.exports).served.remove(&id);
                return self.export_ended(&id, Some(why)).await;
            }
        };
        let ready = ExportReady {
            export_id: id.clone(),
            host: self.host.clone(),
            address: bound.address.clone(),
            tls: bound.export.tls.is_some(),
        };
        if let Err(e) = self.publish_patiently(EXPORT_READY, &ready).await {
            tracing::error!(export = %id, error = %e, "cannot report the export; ending it");
            lock(&self.exports).served.remove(&id);
            return;
        }
        tracing::info!(export = %id, backup = %job.backup_id, address = %bound.address, tls = ready.tls, expires_at = %job.expires_at, "export serving");
        let left = (job.expires_at - Utc::now()).to_std().unwrap_or_default();
        let ended = async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => tracing::info!(export = %id, "export stopped"),
                _ = tokio::time::sleep(left) => tracing::info!(export = %id, "export lifetime over"),
            }
        };
        let served = serve(bound.export, bound.listener, ended).await;
        lock(&self.exports).served.remove(&job.export_id);
        let error = served
            .err()
            .map(|e| format!("export failed on host {}: {e}", self.host));
        self.export_ended(&job.export_id, error).await;
    }

    /// Take a slot for export `id`. The receiver turns true when it must
    /// stop.
    fn register_export(&self, id: &str) -> Registered {
        let mut exports = lock(&self.exports);
        let max = self.ekko.config.export.max_exports.max(1) as usize;
        if exports.closed {
            return Registered::No(format!("host {} is shutting down", self.host));
        }
        if exports.served.contains_key(id) {
            return Registered::Duplicate;
        }
        if exports.served.len() >= max {
            return Registered::No(format!(
                "host {} serves {max} exports already ([export] max_exports)",
                self.host
            ));
        }
        let (tx, rx) = watch::channel(false);
        exports.served.insert(id.to_string(), tx);
        Registered::Yes(rx)
    }

    /// Stop export `id` if it is served here; true when it was.
    pub(super) fn stop_export(&self, id: &str) -> bool {
        match lock(&self.exports).served.get(id) {
            Some(tx) => tx.send(true).is_ok(),
            None => false,
        }
    }

    /// Stop every export and start no more (the worker shuts down).
    pub(super) fn stop_exports(&self) {
        let mut exports = lock(&self.exports);
        exports.closed = true;
        for tx in exports.served.values() {
            let _ = tx.send(true);
        }
    }

    /// The exports served here, for the heartbeat.
    pub(super) fn served_exports(&self) -> Vec<String> {
        lock(&self.exports).served.keys().cloned().collect()
    }

    async fn export_ended(&self, id: &str, error: Option<String>) {
        if let Some(why) = &error {
            tracing::error!(export = id, error = %why, "export ended with an error");
        }
        let ended = ExportEnded {
            export_id: id.to_string(),
            host: self.host.clone(),
            error,
        };
        if let Err(e) = self.publish_patiently(EXPORT_ENDED, &ended).await {
            tracing::error!(export = id, error = %e, "cannot report the export's end");
        }
    }

    /// Open the record (with the project's keys, which only a host that
    /// holds them has) and bind the export's listener.
    async fn bind_export(&self, job: &ExportJob) -> Result<Bound, String> {
        if job.expires_at <= Utc::now() {
            return Err("its lifetime ran out before it started".into());
        }
        let record = previous(&job.record).ok_or("the backup's record is corrupt")?;
        let keys = self
            .ekko
            .keyring
            .open_job(&job.project_id, job.project_key.as_ref(), None)
            .map_err(|e| e.to_string())?;
        let config = &self.ekko.config.export;
        let tls = config.server_tls()?;
        let container = self.ekko.container(&job.project_id);
        let limits = ReadLimits::from_config(&self.ekko.config.backup);
        // The second copy when the job says to read it first and this host
        // reads that store (same key); the first store otherwise, unless
        // only the second copy was asked for. The second store keeps
        // segments under their own ids: no redirects.
        let second = job.second_copy.as_ref().filter(|c| c.first).map(|copy| {
            let store = self
                .ekko
                .replica
                .as_ref()
                .filter(|r| r.key == copy.store)
                .map(|r| r.store.clone());
            (store, copy.only)
        });
        let reader = match second {
            Some((Some(store), _)) => RecordReader::new(store, &container),
            Some((None, true)) => {
                return Err(format!(
                "host {} does not reach the second store that holds this backup ([replication])",
                self.ekko.config.default.host
            ))
            }
            _ => RecordReader::new(self.ekko.store.clone(), &container)
                .with_relocations(Relocation::map(&job.relocations)),
        }
        .with_keys(keys)
        .with_limits(limits);
        let source = BackupExport::open(Arc::new(reader), &record, config.cache_size.bytes())
            .await
            .map_err(|e| format!("map of backup {}: {e}", job.backup_id))?;
        let listener = self.export_listener(tls.is_some()).await?;
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .ok_or("the export's listener has no port")?;
        if job.nbd_name.len() < 32 {
            return Err("the export has no secret NBD name".into());
        }
        let export = Export::new(&job.nbd_name, Arc::new(source))
            .with_tls(tls)
            .with_secret_name();
        Ok(Bound {
            export: Arc::new(export),
            listener,
            address: self.advertised(port),
        })
    }

    /// A listener on `[export] listen_address`, on a free port of
    /// `port_range` (any free port when unset).
    async fn export_listener(&self, tls: bool) -> Result<Listener, String> {
        let config = &self.ekko.config.export;
        let host = bracketed(&config.listen_address);
        let (first, last) = config.ports()?.unwrap_or((0, 0));
        let mut last_error = String::new();
        for port in first..=last {
            match Listener::bind(&Endpoint::Tcp(format!("{host}:{port}")), tls).await {
                Ok(l) => return Ok(l),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last_error = e.to_string(),
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!("no free port in [export] port_range: {last_error}"))
    }

    /// `ADDRESS:PORT` as clients reach this host.
    fn advertised(&self, port: u16) -> String {
        let config = &self.ekko.config.export;
        let listen = &config.listen_address;
        let wildcard = listen
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
        let host = match (config.advertise_address.as_str(), wildcard) {
            ("", false) => listen.as_str(),
            ("", true) => self.host.as_str(),
            (a, _) => a,
        };
        format!("{}:{port}", bracketed(host))
    }
}

/// An IPv6 address in brackets, as it appears before a port.
fn bracketed(host: &str) -> String {
    match host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{host}]"),
        Err(_) => host.to_string(),
    }
}
