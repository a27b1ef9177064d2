//! A catalog rebuild in progress (`ekko-manage catalog rebuild`): from its
//! first commit to its end the catalog knows only part of the store, and
//! whatever deletes objects by what the catalog does not know (the orphan
//! sweep, garbage collection, retention) would destroy committed backups.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::catalog_rebuilds;
use super::{now, DbConnection, DbError, DbResult};

/// Record that a rebuild from `source` (`primary` or `replica`) starts
/// committing.
pub fn begin(conn: &mut DbConnection, source: &str) -> DbResult<()> {
    diesel::insert_into(catalog_rebuilds::table)
        .values((
            catalog_rebuilds::source.eq(source),
            catalog_rebuilds::started_at.eq(now()),
        ))
        .execute(conn)?;
    Ok(())
}

/// The rebuild is complete.
pub fn finish(conn: &mut DbConnection) -> DbResult<()> {
    diesel::delete(catalog_rebuilds::table).execute(conn)?;
    Ok(())
}

/// A rebuild that started and has not finished: (source, started at).
pub fn unfinished(conn: &mut DbConnection) -> DbResult<Option<(String, NaiveDateTime)>> {
    Ok(catalog_rebuilds::table
        .select((catalog_rebuilds::source, catalog_rebuilds::started_at))
        .first(conn)
        .optional()?)
}

/// Refused (a conflict naming the way out) while a rebuild is unfinished:
/// for every step that deletes objects the catalog does not know.
pub fn ensure_none(conn: &mut DbConnection) -> DbResult<()> {
    match unfinished(conn)? {
        None => Ok(()),
        Some((source, at)) => Err(DbError::Conflict(interrupted(&source, at))),
    }
}

/// What to say of an unfinished rebuild.
pub fn interrupted(source: &str, at: NaiveDateTime) -> String {
    format!(
        "a catalog rebuild from the {source} store started at {at} has not finished: the \
         catalog knows only part of the store, so nothing is deleted until it is redone \
         (recreate the database: `ekko-manage db sync` on an empty one, then `ekko-manage \
         catalog rebuild` again)"
    )
}
