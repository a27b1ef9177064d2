//! Exports: one disk of a backup served read-only over NBD by a host for a
//! lifetime (see `service::exports`).

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::exports;
use super::{now, DbConnection, DbResult, OptionalRow};
pub use crate::status::ExportStatus;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = exports)]
pub struct Export {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub backup_id: String,
    /// The disk's device name in the backup.
    pub device: String,
    pub host: String,
    pub status: ExportStatus,
    /// The export's NBD name: a random secret, the only name it answers
    /// to (the URL carries it; whoever may see the URL may read the disk).
    pub nbd_name: String,
    /// `nbd://ADDRESS:PORT/NAME`, once the host listens.
    pub url: Option<String>,
    /// Clients must upgrade to TLS.
    pub tls: bool,
    /// Seconds, as asked.
    pub lifetime: i64,
    pub expires_at: NaiveDateTime,
    /// When the host reported it listening.
    pub active_at: Option<NaiveDateTime>,
    pub error: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

impl Export {
    pub fn starting(
        project_id: &str,
        user_id: &str,
        backup_id: &str,
        device: &str,
        host: &str,
        lifetime: i64,
    ) -> Export {
        let at = now();
        Export {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: project_id.into(),
            user_id: user_id.into(),
            backup_id: backup_id.into(),
            device: device.into(),
            host: host.into(),
            status: ExportStatus::Starting,
            nbd_name: format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
            url: None,
            tls: false,
            lifetime,
            expires_at: at + chrono::Duration::seconds(lifetime),
            active_at: None,
            error: None,
            created_at: at,
            updated_at: at,
        }
    }
}

pub fn insert(conn: &mut DbConnection, e: &Export) -> DbResult<()> {
    diesel::insert_into(exports::table)
        .values(e)
        .execute(conn)?;
    Ok(())
}

pub fn get(conn: &mut DbConnection, id: &str) -> DbResult<Export> {
    exports::table
        .find(id)
        .select(Export::as_select())
        .first(conn)
        .found(|| format!("export {id}"))
}

/// A page of exports (of a project, of a backup) after `marker`.
pub fn list(
    conn: &mut DbConnection,
    project_id: Option<&str>,
    backup_id: Option<&str>,
    limit: i64,
    marker: Option<&Export>,
    ascending: bool,
) -> DbResult<Vec<Export>> {
    let mut q = exports::table.into_boxed();
    if let Some(p) = project_id {
        q = q.filter(exports::project_id.eq(p.to_string()));
    }
    if let Some(b) = backup_id {
        q = q.filter(exports::backup_id.eq(b.to_string()));
    }
    let marker = marker.map(|m| (m.created_at, m.id.clone()));
    Ok(keyset_page!(q, exports, marker, ascending, limit)
        .select(Export::as_select())
        .load(conn)?)
}

const LIVE: [ExportStatus; 3] = [
    ExportStatus::Starting,
    ExportStatus::Active,
    ExportStatus::Ending,
];

/// The exports a host serves or is about to.
pub fn live_of_host(conn: &mut DbConnection, host: &str) -> DbResult<Vec<Export>> {
    Ok(exports::table
        .filter(exports::host.eq(host))
        .filter(exports::status.eq_any(LIVE))
        .select(Export::as_select())
        .load(conn)?)
}

/// The exports among `ids` that are `host`'s (one query).
pub fn of_host_among(conn: &mut DbConnection, host: &str, ids: &[String]) -> DbResult<Vec<Export>> {
    Ok(exports::table
        .filter(exports::host.eq(host))
        .filter(exports::id.eq_any(ids))
        .select(Export::as_select())
        .load(conn)?)
}

/// Live exports of a backup (it cannot be deleted while one serves it).
pub fn live_of_backup(conn: &mut DbConnection, backup_id: &str) -> DbResult<Vec<Export>> {
    Ok(exports::table
        .filter(exports::backup_id.eq(backup_id))
        .filter(exports::status.eq_any(LIVE))
        .select(Export::as_select())
        .load(conn)?)
}

/// When the oldest live export was asked for: its map and relocations
/// date from then, so segments condemned or moved since must stay.
pub fn oldest_live_start(conn: &mut DbConnection) -> DbResult<Option<NaiveDateTime>> {
    Ok(exports::table
        .filter(exports::status.eq_any(LIVE))
        .select(diesel::dsl::min(exports::created_at))
        .first(conn)?)
}

/// Exports `ending` since before `before` (their host never confirmed).
pub fn ending_before(conn: &mut DbConnection, before: NaiveDateTime) -> DbResult<Vec<Export>> {
    Ok(exports::table
        .filter(exports::status.eq(ExportStatus::Ending))
        .filter(exports::updated_at.lt(before))
        .select(Export::as_select())
        .load(conn)?)
}

/// Live exports whose lifetime ran out before `before`.
pub fn expired(conn: &mut DbConnection, before: NaiveDateTime) -> DbResult<Vec<Export>> {
    Ok(exports::table
        .filter(exports::status.eq_any(LIVE))
        .filter(exports::expires_at.lt(before))
        .select(Export::as_select())
        .load(conn)?)
}

/// Exports still `starting` that were asked for before `before`.
pub fn starting_before(conn: &mut DbConnection, before: NaiveDateTime) -> DbResult<Vec<Export>> {
    Ok(exports::table
        .filter(exports::status.eq(ExportStatus::Starting))
        .filter(exports::created_at.lt(before))
        .select(Export::as_select())
        .load(conn)?)
}

/// The host listens: `starting` becomes `active` with its URL. False when
/// the export is no longer starting (ended, or already active).
pub fn activate(conn: &mut DbConnection, id: &str, url: &str, tls: bool) -> DbResult<bool> {
    let at = now();
    let n = diesel::update(
        exports::table
            .find(id)
            .filter(exports::status.eq(ExportStatus::Starting)),
    )
    .set((
        exports::status.eq(ExportStatus::Active),
        exports::url.eq(url),
        exports::tls.eq(tls),
        exports::active_at.eq(at),
        exports::updated_at.eq(at),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Asked to stop: a starting or active export becomes `ending`. False when
/// it was not starting or active.
pub fn ending(conn: &mut DbConnection, id: &str) -> DbResult<bool> {
    let n = diesel::update(
        exports::table
            .find(id)
            .filter(exports::status.eq_any([ExportStatus::Starting, ExportStatus::Active])),
    )
    .set((
        exports::status.eq(ExportStatus::Ending),
        exports::updated_at.eq(now()),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// End a live export for good (`ended`, or `error` with `why`). False when
/// it had ended already.
pub fn end(conn: &mut DbConnection, id: &str, error: Option<&str>) -> DbResult<bool> {
    let to = match error {
        Some(_) => ExportStatus::Error,
        None => ExportStatus::Ended,
    };
    let n = diesel::update(exports::table.find(id).filter(exports::status.eq_any(LIVE)))
        .set((
            exports::status.eq(to),
            exports::error.eq(error),
            exports::updated_at.eq(now()),
        ))
        .execute(conn)?;
    Ok(n == 1)
}
