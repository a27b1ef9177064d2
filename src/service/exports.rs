//! Exports: one disk of an available backup served read-only over NBD by
//! an ekko-backup host for a lifetime (`POST /v1/backups/{id}/exports`),
//! to boot from it, copy it or read files from it without restoring it.
//!
//! The controller plans it (disk, host, expiry) and sends `export.start`
//! to the host; the host reports where it listens (`export.ready`) and
//! when it stops (`export.ended`). Every report is checked against the
//! plan: the host that sends it must be the export's, and the URL is built
//! here from the address it reports and the export's own id. The host ends
//! the export by itself when its lifetime runs out; the conductor ends the
//! rows of hosts that fell silent ([`end_overdue`]) or restarted (a
//! heartbeat that leaves the export out, [`reconcile_host`]).

use serde::Deserialize;

pub use crate::db::exports::Export;
use crate::db::exports::{self, ExportStatus};
use crate::db::{backups, hosts, instances, keys, segments, DbConnection, DbError};
use crate::status::BackupStatus;
use crate::wire::{
    ExportEnded, ExportJob, ExportReady, Relocation, StopExport, EXPORT_START, EXPORT_STOP,
};
use crate::Ekko;

use super::convert::record_ref;
use super::jobs::send_control;
use super::reports::checks;
use super::reports::Sender;
use super::restores::disk_record;
use super::{find, marker_error, Caller, Page, ServiceError, ServiceResult};

/// Exports a heartbeat may list (a host serves `[export] max_exports`,
/// 8 by default).
const MAX_LISTED: usize = 256;

/// `POST /v1/backups/{id}/exports`: what a caller may ask for.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateExport {
    /// The disk (device name); optional for one-disk backups.
    #[serde(default)]
    pub disk: Option<String>,
    /// The ekko-backup host that serves it; default: the instance's host
    /// (in public-key mode `[encryption] restore_host`).
    #[serde(default)]
    pub host: Option<String>,
    /// Seconds until it ends by itself (`[export] default_lifetime`).
    #[serde(default)]
    pub lifetime: Option<i64>,
    /// `auto` (default: the first store, the second copy when scrub found
    /// the first damaged), `primary` or `replica` (`[replication]`).
    #[serde(default)]
    pub source: Option<String>,
}

fn refused(why: impl Into<String>) -> ServiceError {
    ServiceError::Refused(why.into())
}

/// A caller asks for an export of a backup they may see.
pub async fn create(
    ekko: &Ekko,
    caller: &Caller<'_>,
    backup_id: &str,
    r: CreateExport,
) -> ServiceResult<Export> {
    let b = super::backups::visible(ekko, caller, backup_id, "ekko:backup:get").await?;
    caller.authorize("ekko:export:create", &b.project_id, None)?;
    let config = &ekko.config.export;
    let max = i64::try_from(config.max_lifetime.max(1)).unwrap_or(i64::MAX);
    let lifetime = r.lifetime.unwrap_or(
        i64::try_from(config.default_lifetime)
            .unwrap_or(3600)
            .min(max),
    );
    if !(1..=max).contains(&lifetime) {
        return Err(ServiceError::Invalid(format!(
            "lifetime must be 1 to {max} seconds, not {lifetime}"
        )));
    }
    if let Some(h) = &r.host {
        crate::ids::HostName::parse(h).map_err(|e| ServiceError::Invalid(e.to_string()))?;
    }
    let source = super::restores::ReadFrom::parse(r.source.as_deref())?;
    super::restores::check_source(ekko, source)?;
    let replica = ekko.replica.clone();
    // A public-key project's backups open only where the master key is.
    let host = match r.host {
        Some(h) => Some(h),
        None => ekko.keyring.default_restore_host(&b.project_id).await?,
    };
    let db = ekko.db()?.clone();
    let bid = b.id.clone();
    let (host, known) = db
        .run(move |c| {
            let host = match host {
                Some(h) => h,
                None => {
                    let instance = backups::get(c, &bid)?.instance_id;
                    instances::get(c, &instance)?.host
                }
            };
            let known = hosts::exists(c, &host)?;
            Ok((host, known))
        })
        .await?;
    if !known {
        return Err(ServiceError::Conflict(format!(
            "export host {host} runs no ekko-backup known to Ekko"
        )));
    }
    let (user, per_host) = (
        caller.user_id().to_string(),
        i64::from(config.max_exports.max(1)),
    );
    let (export, message) = db
        .run(move |c| {
            use diesel::Connection;
            c.transaction(|c| {
                let b = backups::get(c, &b.id)?;
                if b.status != BackupStatus::Available {
                    return Err(DbError::Conflict(format!(
                        "backup {} is {}; only an available backup can be exported",
                        b.id, b.status
                    )));
                }
                let (record, device) = disk_record(c, &b, r.disk.as_deref())?;
                if exports::live_of_host(c, &host)?.len() as i64 >= per_host {
                    return Err(DbError::Conflict(format!(
                        "host {host} serves {per_host} exports already ([export] max_exports)"
                    )));
                }
                let e = Export::starting(&b.project_id, &user, &b.id, &device, &host, lifetime);
                exports::insert(c, &e)?;
                let message = ExportJob {
                    export_id: e.id.clone(),
                    nbd_name: e.nbd_name.clone(),
                    backup_id: b.id.clone(),
                    project_id: b.project_id.clone(),
                    record: record_ref(&record).ok_or_else(|| {
                        DbError::Conflict(format!("backup {} has a corrupt record", b.id))
                    })?,
                    relocations: Relocation::from_rows(&segments::relocations(c, &b.project_id)?),
                    project_key: keys::get(c, &b.project_id)?
                        .map(|row| row.wrapped_key())
                        .transpose()?,
                    expires_at: e.expires_at.and_utc(),
                    second_copy: super::restores::second_copy(
                        c,
                        replica.as_ref(),
                        &b,
                        &record,
                        source,
                    )?,
                };
                Ok((e, message))
            })
        })
        .await?;
    // On the control queue: the job queue's deliveries wait behind the
    // host's running backups.
    if let Err(e) = send_control(ekko, &export.host, EXPORT_START, &message).await {
        let (id, why) = (
            export.id.clone(),
            format!("the message bus refused the export: {e}"),
        );
        let _ = db.run(move |c| exports::end(c, &id, Some(&why))).await;
        return Err(e.into());
    }
    tracing::info!(export = %export.id, backup = %export.backup_id, host = %export.host, lifetime, "export requested");
    Ok(export)
}

/// The export, if `action` is allowed on it; one of another project the
/// caller may not act on is not found (no existence leak).
pub async fn visible(
    ekko: &Ekko,
    caller: &Caller<'_>,
    id: &str,
    action: &str,
) -> ServiceResult<Export> {
    let e = find(ekko, "export", id, exports::get).await?;
    caller.authorize_owned(
        action,
        &e.project_id,
        Some(&e.user_id),
        Some(("export", id)),
    )?;
    Ok(e)
}

pub async fn list(
    ekko: &Ekko,
    caller: &Caller<'_>,
    backup_id: Option<String>,
    all_projects: bool,
    project_id: Option<String>,
    page: Page,
) -> ServiceResult<Vec<Export>> {
    let project = caller.list_scope("export", all_projects, project_id)?;
    ekko.db()?
        .run(move |c| {
            let marker = page.resolve(c, project.as_deref(), exports::get, |e| &e.project_id)?;
            exports::list(
                c,
                project.as_deref(),
                backup_id.as_deref(),
                page.limit,
                marker.as_ref(),
                page.ascending,
            )
        })
        .await
        .map_err(marker_error)
}

/// `DELETE /v1/exports/{id}`: the export becomes `ending` and its host is
/// told to stop (an export that has ended already stays as it is).
pub async fn delete(ekko: &Ekko, caller: &Caller<'_>, id: &str) -> ServiceResult<Export> {
    let e = visible(ekko, caller, id, "ekko:export:delete").await?;
    let eid = e.id.clone();
    let e = ekko
        .db()?
        .run(move |c| {
            exports::ending(c, &eid)?;
            exports::get(c, &eid)
        })
        .await?;
    if e.status.is_live() {
        send_stop(ekko, &e.host, &e.id).await;
    }
    tracing::info!(export = %e.id, by = caller.user_id(), "export stop requested");
    Ok(e)
}

/// Tell a host to stop an export. Best effort: a host that misses it
/// stops at the export's expiry, and its next heartbeat listing an export
/// the catalog ended brings another stop.
async fn send_stop(ekko: &Ekko, host: &str, export_id: &str) {
    let stop = StopExport {
        export_id: export_id.to_string(),
    };
    if let Err(e) = send_control(ekko, host, EXPORT_STOP, &stop).await {
        tracing::warn!(export = export_id, host, error = %e, "export stop not sent to the host");
    }
}

/// The export a report names, checked to be of the host that claims it
/// (and sent it).
fn export_of(
    c: &mut DbConnection,
    id: &str,
    claimed: &str,
    sender: &Sender,
) -> ServiceResult<Export> {
    checks::host_claim(claimed, sender).map_err(refused)?;
    let e = match exports::get(c, id) {
        Ok(e) => e,
        Err(DbError::NotFound(_)) => return Err(refused(format!("no export {id}"))),
        Err(e) => return Err(e.into()),
    };
    if e.host != claimed {
        return Err(refused(format!(
            "host {claimed} reports on export {id} of host {}",
            e.host
        )));
    }
    Ok(e)
}

/// `ADDRESS:PORT` as a host may report it: an IP address (IPv6 in
/// brackets) or a host name, and a port that is not 0.
fn check_address(a: &str) -> Result<(), String> {
    if a.parse::<std::net::SocketAddr>()
        .is_ok_and(|s| s.port() != 0)
    {
        return Ok(());
    }
    let bad = || format!("export address {a:?} is not ADDRESS:PORT");
    let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    // As host names go ([DEFAULT] host is advertised when listening on
    // a wildcard address).
    let host_ok = crate::ids::HostName::parse(host).is_ok();
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// `export.ready`: the export becomes active with its URL. A report for
/// an export that was stopped meanwhile stops it again.
pub async fn ready(ekko: &Ekko, r: ExportReady, sender: &Sender) -> ServiceResult<()> {
    check_address(&r.address).map_err(refused)?;
    let sender = sender.clone();
    let (e, activated) = ekko
        .db()?
        .run_as::<_, ServiceError, _>(move |c| {
            let e = export_of(c, &r.export_id, &r.host, &sender)?;
            let url = format!("nbd://{}/{}", r.address, e.nbd_name);
            let activated = exports::activate(c, &e.id, &url, r.tls)?;
            Ok((exports::get(c, &e.id)?, activated))
        })
        .await?;
    if activated {
        tracing::info!(export = %e.id, url = e.url.as_deref().unwrap_or(""), "export active");
    } else if !matches!(e.status, ExportStatus::Active) {
        // Stopped or ended before it listened: it must not serve on.
        send_stop(ekko, &e.host, &e.id).await;
    }
    Ok(())
}

/// `export.ended`: the host serves it no more.
pub async fn ended(ekko: &Ekko, r: ExportEnded, sender: &Sender) -> ServiceResult<()> {
    let error = r.error.as_deref().map(checks::error_text);
    let sender = sender.clone();
    ekko.db()?
        .run_as::<_, ServiceError, _>(move |c| {
            let e = export_of(c, &r.export_id, &r.host, &sender)?;
            if exports::end(c, &e.id, error.as_deref())? {
                tracing::info!(export = %e.id, ?error, "export ended");
            }
            Ok(())
        })
        .await
}

/// A heartbeat's list of the exports a host serves: an active or ending
/// export it leaves out (for two heartbeats) is served no more (its worker
/// restarted, or it stopped) and ends; an export it serves that the
/// catalog has stopped or ended (a stop that was lost) is stopped again.
pub async fn reconcile_host(ekko: &Ekko, host: &str, served: Vec<String>) -> ServiceResult<()> {
    if served.len() > MAX_LISTED || served.iter().any(|id| id.len() > 64) {
        return Err(refused(format!(
            "heartbeat of host {host}: {} exports listed (at most {MAX_LISTED} ids)",
            served.len()
        )));
    }
    let mut served = served;
    served.sort();
    served.dedup();
    let interval = ekko.config.backup.heartbeat_interval.max(1) as i64;
    let settled_before = crate::db::now() - chrono::Duration::seconds(2 * interval);
    let h = host.to_string();
    let stale = ekko
        .db()?
        .run(move |c| {
            for e in exports::live_of_host(c, &h)? {
                let since = match e.status {
                    ExportStatus::Active => e.active_at,
                    ExportStatus::Ending => Some(e.updated_at),
                    _ => None,
                };
                let gone = since.is_some_and(|at| at < settled_before)
                    && served.binary_search(&e.id).is_err();
                if !gone {
                    continue;
                }
                let why = (e.status == ExportStatus::Active)
                    .then(|| format!("host {h} serves it no more (its ekko-backup restarted)"));
                if exports::end(c, &e.id, why.as_deref())? && why.is_some() {
                    tracing::warn!(export = %e.id, host = %h, "export lost by its host");
                }
            }
            let listed = exports::of_host_among(c, &h, &served)?;
            Ok(listed
                .into_iter()
                .filter(|e| !matches!(e.status, ExportStatus::Starting | ExportStatus::Active))
                .map(|e| e.id)
                .collect::<Vec<_>>())
        })
        .await?;
    for id in stale {
        send_stop(ekko, host, &id).await;
    }
    Ok(())
}

/// End the exports whose lifetime ran out a while ago (their host should
/// have ended them: it is down or its report was lost) and those their
/// host never started within `start_timeout`.
pub async fn end_overdue(ekko: &Ekko, start_timeout: std::time::Duration) -> ServiceResult<usize> {
    let now = crate::db::now();
    let grace = chrono::Duration::from_std(start_timeout).unwrap_or(chrono::Duration::minutes(5));
    let (expired_before, started_before) = (now - grace, now - grace);
    let ended = ekko
        .db()?
        .run(move |c| {
            let mut ended = Vec::new();
            for e in exports::expired(c, expired_before)? {
                if exports::end(c, &e.id, None)? {
                    ended.push(e);
                }
            }
            for e in exports::starting_before(c, started_before)? {
                let why = format!(
                    "host {} did not start the export (its ekko-backup is down, or older than exports)",
                    e.host
                );
                if exports::end(c, &e.id, Some(&why))? {
                    ended.push(e);
                }
            }
            // Asked to stop and never confirmed (the host restarted).
            for e in exports::ending_before(c, expired_before)? {
                if exports::end(c, &e.id, None)? {
                    ended.push(e);
                }
            }
            Ok(ended)
        })
        .await?;
    for e in &ended {
        tracing::warn!(export = %e.id, host = %e.host, "export ended by the conductor");
        send_stop(ekko, &e.host, &e.id).await;
    }
    Ok(ended.len())
}
