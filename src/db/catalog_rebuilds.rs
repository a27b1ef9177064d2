//! A catalog rebuild in progress (`ekko-manage catalog rebuild`): from
//! before it reads the store until its end, the catalog knows only part of
//! the store, and whatever deletes objects by what the catalog does not
//! know (the orphan sweep, garbage collection, retention) would destroy
//! committed backups.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::catalog_rebuilds;
use super::{backups, now, DbConnection, DbError, DbResult};

/// The one row's key: one rebuild at a time.
const ROW: i32 = 1;

/// A rebuild that started and has not finished.
#[derive(Debug, Clone, PartialEq, Queryable)]
pub struct Rebuild {
    pub source: String,
    pub holder: String,
    pub started_at: NaiveDateTime,
}

/// Record that `holder` starts a rebuild from `source` (`primary` or
/// `replica`) into an empty catalog, in one transaction with the check
/// that it is empty. A row whose rebuild committed nothing (it failed or
/// died while reading the store) is taken over; one whose rebuild
/// committed backups means the catalog is partial: refused.
pub fn begin(conn: &mut DbConnection, source: &str, holder: &str) -> DbResult<()> {
    conn.transaction(|c| {
        let committed = backups::any(c)?;
        match unfinished(c)? {
            Some(r) if committed => return Err(DbError::Conflict(interrupted(&r))),
            Some(_) => {
                diesel::delete(catalog_rebuilds::table).execute(c)?;
            }
            None if committed => {
                return Err(DbError::Conflict(
                    "the catalog already records backups; rebuild only into an empty catalog \
                     (run `ekko-manage db sync` on a new database)"
                        .into(),
                ))
            }
            None => {}
        }
        let inserted = diesel::insert_into(catalog_rebuilds::table)
            .values((
                catalog_rebuilds::id.eq(ROW),
                catalog_rebuilds::source.eq(source),
                catalog_rebuilds::holder.eq(holder),
                catalog_rebuilds::started_at.eq(now()),
            ))
            .execute(c);
        if !super::inserted_once(inserted)? {
            return Err(DbError::Conflict(
                "another catalog rebuild started meanwhile: wait for it".into(),
            ));
        }
        Ok(())
    })
}

/// Whether `holder` still has the mark: a rebuild checks it in each of its
/// commits' transactions (the update locks the row until the commit), so
/// one whose mark another rebuild took over (while it was still reading
/// the store, the mark looked abandoned) stops instead of committing
/// beside it.
pub fn holds(conn: &mut DbConnection, holder: &str) -> DbResult<bool> {
    let n = diesel::update(
        catalog_rebuilds::table
            .find(ROW)
            .filter(catalog_rebuilds::holder.eq(holder)),
    )
    .set(catalog_rebuilds::holder.eq(holder))
    .execute(conn)?;
    Ok(n == 1)
}

/// `holder`'s rebuild is complete (or failed before committing anything):
/// its mark goes, never another rebuild's.
pub fn finish(conn: &mut DbConnection, holder: &str) -> DbResult<()> {
    diesel::delete(
        catalog_rebuilds::table
            .find(ROW)
            .filter(catalog_rebuilds::holder.eq(holder)),
    )
    .execute(conn)?;
    Ok(())
}

/// A rebuild that started and has not finished.
pub fn unfinished(conn: &mut DbConnection) -> DbResult<Option<Rebuild>> {
    Ok(catalog_rebuilds::table
        .select((
            catalog_rebuilds::source,
            catalog_rebuilds::holder,
            catalog_rebuilds::started_at,
        ))
        .first(conn)
        .optional()?)
}

/// Refused (a conflict naming the way out) while a rebuild is unfinished:
/// for every step that deletes objects the catalog does not know.
pub fn ensure_none(conn: &mut DbConnection) -> DbResult<()> {
    match unfinished(conn)? {
        None => Ok(()),
        Some(r) => Err(DbError::Conflict(interrupted(&r))),
    }
}

/// What to say of an unfinished rebuild.
pub fn interrupted(r: &Rebuild) -> String {
    let flag = if r.source == "replica" {
        " --from-replica"
    } else {
        ""
    };
    format!(
        "a catalog rebuild from the {} store (by {}) started at {} UTC has not finished: the \
         catalog knows only part of the store, so nothing is deleted meanwhile. If it is still \
         running, wait for it; if it was interrupted, run `ekko-manage catalog rebuild{flag}` \
         again (after recreating the database with `ekko-manage db sync` on an empty one if \
         it had committed backups)",
        r.source,
        r.holder.escape_debug(),
        r.started_at.format("%Y-%m-%d %H:%M:%S"),
    )
}
